"""Documents, steps and the accounting: nothing vanishes unexplained."""

from __future__ import annotations

import functools
import json

import pytest

from labkit.data import (
    Accounting,
    Document,
    batch_step,
    funnel_figure,
    gopher_quality,
    keep_if,
    run_pipeline,
    step_name,
)


def no_digits(docs, accounting):
    return keep_if(docs, accounting, "no_digits",
                   lambda d: "has_digit" if any(c.isdigit() for c in d.text) else None)


def shout(docs, accounting):
    for doc in docs:
        yield doc.updated(text=doc.text.upper(), shouted=True)


def min_length(docs, accounting, n=3):
    for doc in docs:
        if len(doc.text) >= n:
            yield doc
        else:
            accounting.drop(doc.id, "min_length", f"shorter_than:{n}")


def leaky(docs, accounting):  # a buggy step: drops without saying why
    for doc in docs:
        if doc.id != "b":
            yield doc


DOCS = [Document("a", "abc"), Document("b", "b2"), Document("c", "x"), Document("d", "done")]


def test_run_pipeline_table_and_kept_documents():
    accounting = Accounting()
    steps = [no_digits, shout, functools.partial(min_length, n=4)]
    kept, table = run_pipeline(steps, DOCS, accounting)
    assert [(d.id, d.text, d.metadata) for d in kept] == [("d", "DONE", {"shouted": True})]
    assert table[["step", "in", "kept", "dropped"]].values.tolist() == [
        ["no_digits", 4, 3, 1], ["shout", 3, 3, 0], ["min_length", 3, 1, 2]]
    assert table["reasons"].tolist() == [{"has_digit": 1}, {}, {"shorter_than": 2}]
    assert accounting.reasons().values.tolist() == [["no_digits", "has_digit", 1],
                                                    ["min_length", "shorter_than", 2]]
    assert DOCS[3].text == "done" and DOCS[3].metadata == {}


def test_a_step_that_loses_documents_silently_is_caught():
    with pytest.raises(AssertionError, match="leaky: 4 in != 3 kept \\+ 0 dropped"):
        run_pipeline([leaky], DOCS)


def test_step_names_and_empty_input():
    assert step_name(functools.partial(functools.partial(min_length, n=1))) == "min_length"
    kept, table = run_pipeline([no_digits, shout], [])
    assert kept == [] and table["in"].tolist() == [0, 0]


def test_funnel_figure_is_titled():
    _, table = run_pipeline([no_digits, functools.partial(min_length, n=4)], DOCS)
    fig = funnel_figure(table)
    assert list(fig.data[0].x) == [4, 3, 1]
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_steps_run_under_datasets_map_with_the_accounting_in_a_column():
    from datasets import Dataset

    rows = {"id": [d.id for d in DOCS], "text": [d.text for d in DOCS]}
    ds = Dataset.from_dict(rows)
    for step in (no_digits, shout, functools.partial(min_length, n=4)):
        ds = ds.map(batch_step(step), batched=True, batch_size=3)
    dropped = dict(zip(ds["id"], ds["dropped"]))
    assert dropped == {"a": "min_length: shorter_than:4", "b": "no_digits: has_digit",
                       "c": "min_length: shorter_than:4", "d": ""}
    survivor = ds.filter(lambda row: not row["dropped"])
    assert survivor["text"] == ["DONE"] and json.loads(survivor["metadata"][0]) == {"shouted": True}
    # the same answer as run_pipeline over the plain list
    kept, _ = run_pipeline([no_digits, shout, functools.partial(min_length, n=4)], DOCS)
    assert [d.text for d in kept] == survivor["text"]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_profile_settings(name):
    import labkit

    settings = labkit.profile(name).settings("data")
    assert settings.bands * settings.rows == settings.num_perm == 112
    assert settings.min_language_score == 0.65 and settings.edu_threshold == 3.0
    assert settings.bpe_vocab_size > 256


def test_real_filter_step_under_batch_step():
    fn = batch_step(gopher_quality)
    out = fn({"id": ["x"], "text": ["too short"]})
    assert out["dropped"] == ["gopher_quality: gopher_short_doc"]
