"""The pipeline explorer, headless: its cached steps keep and drop exactly what labkit's steps
do, a control moves the funnel in place, bad input shows a message and raises nothing."""

from __future__ import annotations

import functools
import itertools

import pytest

from labkit import profile
from labkit.data import (
    Accounting,
    c4_filter,
    exact_dedup,
    extract,
    extract_main_text,
    fineweb_filter,
    fit_quality_scorer,
    gopher_quality,
    gopher_repetition,
    language_filter,
    minhash_dedup,
    pii_scrub,
    quality_score_filter,
    read_warc,
    run_pipeline,
)
from labkit.data.evaluate import record_urls
from labkit.loaders import load_records
from labkit.samples import sample_path
from widgets.pipeline import STEPS, PipelineExplorer, band_options

N_PAGES = 160  # the first records of the crawl: every kind of page occurs among them


@pytest.fixture(scope="module")
def crawl():
    path = sample_path("crawl/crawl.warc.gz")
    source = Accounting()
    pages = list(itertools.islice(read_warc(path, source), N_PAGES))
    main = {p.id: extract_main_text(p.text) for p in pages}
    labels = load_records("crawl_labels")
    label_of = {label["url"]: label for label in labels}
    good = [p for p in pages if label_of[p.metadata["url"]]["keep"] and main[p.id]]
    scorer = fit_quality_scorer([main[p.id] for p in good],
                                [label_of[p.metadata["url"]]["edu_score"] for p in good])
    return {"pages": pages, "main": main, "labels": labels, "scorer": scorer,
            "source": source, "urls": record_urls(path)}


@pytest.fixture
def explorer(crawl):
    return PipelineExplorer(crawl["pages"], crawl["labels"], scorer=crawl["scorer"],
                            main_text=crawl["main"], source=crawl["source"], urls=crawl["urls"],
                            settings=profile("cpu").settings("data"))


def real_pipeline(crawl, params):
    """The same run with labkit's own steps."""
    available = {
        "language_filter": functools.partial(language_filter,
                                             min_probability=params["min_language"]),
        "gopher_repetition": gopher_repetition,
        "gopher_quality": functools.partial(gopher_quality, min_doc_words=params["min_words"],
                                            max_doc_words=params["max_words"],
                                            min_stop_words=params["min_stop_words"]),
        "c4_filter": c4_filter, "fineweb_filter": fineweb_filter, "exact_dedup": exact_dedup,
        "minhash_dedup": functools.partial(minhash_dedup, bands=params["bands_rows"][0],
                                           rows=params["bands_rows"][1]),
        "quality_score_filter": functools.partial(quality_score_filter, model=crawl["scorer"],
                                                  threshold=params["edu_threshold"]),
        "pii_scrub": pii_scrub,
    }
    main = crawl["main"]
    steps = [functools.partial(extract, extractor=lambda html, m={p.text: main[p.id] for p in
                                                                   crawl["pages"]}: m[html])]
    steps += [available[s] for s in STEPS if s in params["steps"]]
    accounting = Accounting()
    accounting.register("read_warc")
    for field in ("entered", "passed"):
        getattr(accounting, field)["read_warc"] = getattr(crawl["source"], field)["read_warc"]
    accounting.drops.extend(crawl["source"].drops)
    return run_pipeline(steps, crawl["pages"], accounting)


CHANGES = [
    {},
    {"min_words": 20, "min_stop_words": 1, "min_language": 0.5},
    {"steps": tuple(s for s in STEPS if s != "gopher_repetition"), "min_words": 10,
     "bands_rows": (28, 4), "edu_threshold": 2.0},
    {"steps": ("language_filter", "exact_dedup", "minhash_dedup", "pii_scrub"),
     "bands_rows": (56, 2), "max_words": 60},
]


@pytest.mark.parametrize("change", CHANGES)
def test_cached_steps_match_labkit_steps(crawl, explorer, change):
    params = {**explorer.params(), **change}
    kept, table, _ = explorer.run(params)
    real_kept, real_table = real_pipeline(crawl, params)
    assert table.equals(real_table)
    assert [(d.id, d.text) for d in kept] == [(d.id, d.text) for d in real_kept]
    assert table["step"].tolist()[:2] == ["read_warc", "extract"]


def test_controls_are_labelled_with_units(explorer):
    for control in explorer.controls:
        assert control.description
    for control in (explorer.min_language, explorer.min_words, explorer.max_words,
                    explorer.min_stop_words, explorer.bands_rows, explorer.edu_threshold):
        assert "(" in control.description, control.description  # the unit


def test_a_control_moves_the_funnel_in_place(explorer):
    figure_id = id(explorer.figure)
    before = list(explorer.figure.data[0].x)
    records_read = N_PAGES + len(explorer.source.drops)  # warcinfo and non-HTML records too
    assert before[0] == records_read
    explorer.toggles["gopher_repetition"].value = False
    explorer.min_words.value = 10
    explorer.min_alpha.value = 0.6
    after = list(explorer.figure.data[0].x)
    assert id(explorer.figure) == figure_id
    assert after != before and after[-1] > before[-1]  # looser rules keep more
    assert len(after) == len(before) - 1  # one step fewer in the funnel
    assert "after gopher_repetition" not in explorer.figure.data[0].y
    assert explorer.status.startswith(f"kept {after[-1]} of {records_read} records")
    rows = explorer.precision_recall.set_index("step")
    assert "gopher_repetition" not in rows.index
    table = explorer.table.set_index("step")
    assert rows.loc["language_filter", "dropped"] == table.loc["language_filter", "dropped"]
    assert 0 <= rows.loc["language_filter", "precision"] <= 1
    assert "precision" in explorer.scores_html.value and "gopher_quality" in (
        explorer.examples_html.value)


def test_minhash_bands_follow_the_dropdown(explorer):
    assert explorer.bands_rows.value == (14, 8)
    labels = [label for label, _ in band_options(112)]
    assert "14 x 8  (s* = 0.72)" in labels and len(labels) == 10  # the divisors of 112
    explorer.bands_rows.value = (56, 2)  # a low threshold: more pages look alike
    loose = explorer.table.set_index("step").loc["minhash_dedup", "dropped"]
    explorer.bands_rows.value = (1, 112)
    strict = explorer.table.set_index("step").loc["minhash_dedup", "dropped"]
    assert loose >= strict


def test_bad_input_shows_a_message_and_keeps_the_figure(explorer):
    before = list(explorer.figure.data[0].x)
    explorer.max_words.value = 10  # below the 50-word minimum
    assert "max words = 10 is below min words = 50" in explorer.message.value
    assert list(explorer.figure.data[0].x) == before
    assert explorer.update() is False
    explorer.max_words.value = 100_000
    assert explorer.update() is True


def test_naive_extractor_and_missing_scorer(crawl):
    e = PipelineExplorer(crawl["pages"], crawl["labels"], main_text=crawl["main"],
                         settings=profile("cpu").settings("data"))
    toggle = e.toggles["quality_score_filter"]
    assert toggle.disabled and not toggle.value and "no scorer" in toggle.description
    main_table = e.table.set_index("step")
    e.extractor.value = "naive"
    assert e.status.startswith("kept"), e.status
    naive_table = e.table.set_index("step")
    assert naive_table.loc["extract", "kept"] == N_PAGES  # every page has visible words
    # menus, banners and footers: punctuation-heavy words fail the Gopher alpha rule, and the
    # random boilerplate around mirrored articles hides them from MinHash
    alpha = "gopher_below_alpha_threshold"
    assert (naive_table.loc["gopher_quality", "reasons"][alpha]
            > main_table.loc["gopher_quality", "reasons"][alpha])
    assert (naive_table.loc["minhash_dedup", "dropped"]
            < main_table.loc["minhash_dedup", "dropped"])
    toggle.value = True  # not possible without a scorer: a message, no traceback
    assert "needs a scorer" in e.message.value


def test_no_labels_no_precision_recall(crawl):
    e = PipelineExplorer(crawl["pages"][:40], main_text=crawl["main"],
                         settings=profile("cpu").settings("data"))
    assert e.precision_recall is None and "no labels" in e.scores_html.value
    assert e.table["step"].iloc[0] == "extract"
