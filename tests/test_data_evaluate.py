"""Per-step precision/recall against ground-truth labels, and the join by URL."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.data import Accounting, Document, read_warc, write_warc
from labkit.data.evaluate import (
    STEP_TARGETS,
    label_outcomes,
    pii_outcomes,
    pipeline_precision_recall,
    record_urls,
    step_precision_recall,
)
from labkit.errors import LabkitError
from labkit.loaders import load_records
from labkit.samples import sample_path


def label(url, kind, keep, language="en", edu=3):
    return {"url": url, "kind": kind, "keep": keep, "language": language, "edu_score": edu}


LABELS = [
    label("u/pdf", "non_html", False, language=""),
    label("u/fr", "non_english", False, language="fr"),
    label("u/clean1", "clean", True, edu=4),
    label("u/clean2", "clean", True, edu=1),
    label("u/clean3", "clean", True, edu=3),
    label("u/spam", "spam", False, edu=0),
    label("u/lorem", "lorem", False, language="la", edu=0),
    label("u/copy", "exact_dup", False, edu=0),
    label("u/mirror", "near_dup", False, edu=0),
]
STEPS = ["read_warc", "language_filter", "gopher_quality", "exact_dedup", "minhash_dedup",
         "quality_score_filter"]


def crafted_outcomes():
    urls = {f"id-{lab['url']}": lab["url"] for lab in LABELS}
    acc = Accounting()
    for doc_id, step, reason in [
        ("id-u/pdf", "read_warc", "non_html:application/pdf"),
        ("id-u/fr", "language_filter", "other_language:fr"),
        ("id-u/clean1", "language_filter", "low_language_score"),  # a wrong drop
        ("id-u/spam", "gopher_quality", "gopher_too_few_stop_words"),
        ("id-u/copy", "gopher_quality", "gopher_short_doc"),  # right drop, other reason class
        ("id-u/clean2", "quality_score_filter", "low_edu_score"),  # right: teacher grade 1
    ]:
        acc.drop(doc_id, step, reason)
    kept = [Document("id-u/clean3", "x"), Document("id-u/lorem", "x"),
            Document("id-u/mirror", "x")]
    return label_outcomes(LABELS, acc, kept, urls)


def test_label_outcomes_join_by_url_and_fold_reasons():
    outcomes = crafted_outcomes()
    row = outcomes.set_index("url")
    assert row.loc["u/pdf", "status"] == "dropped" and row.loc["u/pdf", "reason"] == "non_html"
    assert row.loc["u/fr", "reason"] == "other_language"
    assert row.loc["u/clean3", "status"] == "kept" and row.loc["u/clean3", "step"] == ""
    assert (outcomes["status"] != "unseen").all()
    assert list(outcomes.columns) == ["url", "kind", "keep", "language", "edu_score", "status",
                                      "step", "reason"]


def test_step_precision_recall_by_hand():
    table = step_precision_recall(crafted_outcomes(), STEPS, edu_threshold=3).set_index("step")
    assert table.loc["read_warc", ["dropped", "correct", "class_in", "caught"]].tolist() == [
        1, 1, 1, 1]
    # language: dropped fr (right) and clean1 (wrong); class = fr and lorem (la), one caught
    lang = table.loc["language_filter"]
    assert (lang.dropped, lang.correct, lang.class_in, lang.caught) == (2, 1, 2, 1)
    assert lang.precision == 0.5 and lang.recall == 0.5
    assert lang.dropped_kinds == {"clean": 1, "non_english": 1}
    # gopher: both drops right; its class reaching it: spam and lorem (lorem kept: missed)
    gq = table.loc["gopher_quality"]
    assert (gq.dropped, gq.correct, gq.class_in, gq.caught) == (2, 2, 2, 1)
    # exact dedup: the copy was dropped earlier, so nothing of its class reached it
    assert table.loc["exact_dedup", "class_in"] == 0
    assert math.isnan(table.loc["exact_dedup", "recall"])
    assert math.isnan(table.loc["exact_dedup", "precision"])
    # MinHash: the mirror reached it and was kept: recall 0
    assert table.loc["minhash_dedup", ["class_in", "caught", "recall"]].tolist() == [1, 0, 0.0]
    # score filter: clean2 (grade 1) right; reaching it with grade < 3: clean2, lorem, mirror
    score = table.loc["quality_score_filter"]
    assert (score.dropped, score.correct, score.class_in, score.caught) == (1, 1, 3, 1)


def test_pipeline_precision_recall_and_edu_threshold():
    outcomes = crafted_outcomes()
    plain = pipeline_precision_recall(outcomes)  # kept: clean3 (good), lorem, mirror (bad)
    assert (plain["tp"], plain["fp"], plain["fn"]) == (1, 2, 2)  # missed clean1, clean2
    graded = pipeline_precision_recall(outcomes, edu_threshold=3)  # clean2 no longer good
    assert (graded["tp"], graded["fp"], graded["fn"]) == (1, 2, 1)


def test_unseen_records_are_left_out():
    acc = Accounting()
    acc.drop("a", "read_warc", "non_html:image/png")
    outcomes = label_outcomes(LABELS[:3], acc, [], {"a": "u/pdf"})
    assert outcomes["status"].tolist() == ["dropped", "unseen", "unseen"]
    table = step_precision_recall(outcomes, ["read_warc", "language_filter"])
    assert table["class_in"].tolist() == [1, 0]  # the unseen French page counts nowhere


def test_record_urls_joins_drops_that_never_became_documents(tmp_path):
    path = write_warc(tmp_path / "t.warc.gz", [
        {"url": "https://a.example/page", "body": "<html><p>Hello there.</p></html>"},
        {"url": "https://a.example/file.pdf", "body": b"%PDF-1.4", "content_type":
         "application/pdf"},
        {"url": "https://a.example/req", "record_type": "request"},
    ])
    urls = record_urls(path)
    acc = Accounting()
    docs = list(read_warc(path, acc))
    assert sorted(urls.values()) == ["https://a.example/file.pdf", "https://a.example/page",
                                     "https://a.example/req"]
    assert {urls[doc_id] for doc_id, _, _ in acc.drops} == {"https://a.example/file.pdf",
                                                           "https://a.example/req"}
    labels = [label("https://a.example/page", "clean", True),
              label("https://a.example/file.pdf", "non_html", False, language="")]
    outcomes = label_outcomes(labels, acc, docs, urls)
    assert outcomes["status"].tolist() == ["kept", "dropped"]
    with pytest.raises(LabkitError, match="not a file"):
        record_urls(tmp_path / "missing.warc.gz")


def test_the_crawl_reader_drops_exactly_the_non_html_records():
    path = sample_path("crawl/crawl.warc.gz")
    labels = load_records("crawl_labels")
    acc = Accounting()
    docs = list(read_warc(path, acc))
    outcomes = label_outcomes(labels, acc, docs, record_urls(path))
    assert (outcomes["status"] != "unseen").all() and len(outcomes) == len(labels)
    non_html = sum(label["kind"] == "non_html" for label in labels)
    row = step_precision_recall(outcomes, ["read_warc"]).iloc[0]
    assert non_html > 0
    assert (row.dropped, row.precision, row.class_in, row.recall) == (non_html, 1.0, non_html, 1.0)


def test_pii_outcomes_counts_what_is_left():
    labels = [{"url": "u/1", "pii": [
        {"type": "email", "value": "a@b.org", "public": True},
        {"type": "ip", "value": "8.8.8.8", "public": True},
        {"type": "ip", "value": "10.0.0.1", "public": False}]}]
    doc = Document("d1", "mail <EMAIL>, dns <IP>, printer 10.0.0.1", {"url": "u/1"})
    table = pii_outcomes([doc], labels)
    assert table.values.tolist() == [["email", "public", 1, 0], ["ip", "private", 1, 1],
                                     ["ip", "public", 1, 0]]


KINDS = ["clean", "spam", "short", "exact_dup", "near_dup", "non_english", "non_html"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 5),
                          st.integers(-1, len(STEPS) - 1)), min_size=1, max_size=40))
def test_counts_are_consistent(records):
    labels, acc, kept = [], Accounting(), []
    for i, (kind, edu, where) in enumerate(records):
        labels.append(label(f"u{i}", kind, kind == "clean",
                            language="fr" if kind == "non_english" else "en", edu=edu))
        if where < 0:
            kept.append(Document(f"d{i}", ""))
        else:
            acc.drop(f"d{i}", STEPS[where], "some_reason:detail")
    urls = {f"d{i}": f"u{i}" for i in range(len(records))}
    table = step_precision_recall(label_outcomes(labels, acc, kept, urls), STEPS)
    assert table["dropped"].sum() == sum(where >= 0 for _, _, where in records)
    assert (table["correct"] <= table["dropped"]).all()
    assert (table["caught"] <= table["class_in"]).all()
    assert (table["caught"] <= table["dropped"]).all()
    for row in table.itertuples():
        assert sum(row.dropped_kinds.values()) == row.dropped
        assert math.isnan(row.precision) or 0 <= row.precision <= 1
        assert (row.step in STEP_TARGETS) or row.class_in == 0
    # the reader's class can only shrink downstream: a record reaches step i only if not
    # dropped earlier
    reached_first = sum(kind == "non_html" for kind, _, _ in records)
    assert table.iloc[0]["class_in"] == reached_first
