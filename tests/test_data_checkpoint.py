"""Lab 01's checkpoint: `run_part_one` rebuilds what Part 2 starts from, exactly as Part 1's
cells compute it; and the lab's "Your own crawl" cell runs labkit.yourmodel's code."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import nbformat
import pytest

import labkit
from labkit.data import (
    Accounting,
    c4_filter,
    detect_language,
    exact_dedup,
    extract,
    extract_main_text,
    fineweb_filter,
    gopher_quality,
    gopher_repetition,
    language_filter,
    minhash_dedup,
    read_warc,
    run_pipeline,
)
from labkit.data.checkpoint import run_part_one
from labkit.data.scale import split_warc
from labkit.errors import LabkitError
from labkit.yourmodel import CELLS

CFG = labkit.profile().settings("data")
LAB = Path(__file__).resolve().parents[1] / "labs" / "01_data_pipeline.ipynb"


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """An eighth of the shipped crawl (143 records): every kind of page, in seconds."""
    return split_warc(labkit.sample_path("crawl/crawl.warc.gz"),
                      tmp_path_factory.mktemp("crawl"), 8)[0]


def test_part_one_is_the_lab_s_part_one(shard):
    part = run_part_one(shard, CFG)
    # Part 1's cells, one step at a time, on one Accounting
    accounting = Accounting()
    pages = list(read_warc(shard, accounting))
    text = {p.text: extract_main_text(p.text) for p in pages}.__getitem__
    extracted, _ = run_pipeline([functools.partial(extract, extractor=text)], pages, accounting)
    english, _ = run_pipeline([functools.partial(
        language_filter, languages=CFG.languages, min_probability=CFG.min_language_score)],
        extracted, accounting)
    good, _ = run_pipeline([gopher_repetition, gopher_quality, c4_filter, fineweb_filter],
                           english, accounting)
    near = functools.partial(minhash_dedup, num_perm=CFG.num_perm, bands=CFG.bands,
                             rows=CFG.rows, seed=CFG.minhash_seed, n=CFG.ngram)
    unique, table = run_pipeline([exact_dedup, near], good, accounting)
    assert part.accounting.table().equals(table)
    assert list(table["step"]) == ["read_warc", "extract", "language_filter",
                                   "gopher_repetition", "gopher_quality", "c4_filter",
                                   "fineweb_filter", "exact_dedup", "minhash_dedup"]
    assert part.minhash_step.keywords == near.keywords
    assert part.accounting.drops == accounting.drops
    for ours, theirs in ((part.pages, pages), (part.extracted, extracted),
                         (part.english, english), (part.good, good), (part.unique, unique)):
        assert [(d.id, d.text) for d in ours] == [(d.id, d.text) for d in theirs]
    assert 0 < len(part.unique) < len(part.good) < len(part.english) < len(part.extracted)
    assert all(part.main_text(p.text) == text(p.text) for p in pages)
    assert part.language_of == {d.id: detect_language(d.text) for d in extracted}


def test_part_one_refuses_a_missing_crawl(tmp_path):
    with pytest.raises(LabkitError, match="warc_path"):
        run_part_one(tmp_path / "nothing.warc.gz", CFG)


def _cell(cell_id: str) -> str:
    nb = nbformat.read(LAB, as_version=4)
    return next(c.source for c in nb.cells if c.get("id") == cell_id)


def test_the_checkpoint_cell_rebuilds_every_name_part_two_uses():
    source = _cell("checkpoint")
    assert "run_part_one(warc_path, cfg)" in source
    assigned = {t.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                for target in node.targets
                for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                if isinstance(t, ast.Name)}
    assert {"accounting", "pages", "main_text", "extracted", "language_of", "english", "good",
            "minhash_step", "unique"} <= assigned


def test_own_crawl_cell_is_labkit_yourmodel_s_code_and_off_by_default():
    source = _cell("own-crawl")
    tree = ast.parse(source)
    first, guard = tree.body[0], tree.body[-1]
    assert ast.unparse(first) == "RUN_OWN_CRAWL = False"
    assert isinstance(guard, ast.If) and ast.unparse(guard.test) == "RUN_OWN_CRAWL"
    body = ast.unparse(ast.Module(body=guard.body, type_ignores=[]))
    assert body == ast.unparse(ast.parse(CELLS["01"].source()))  # the tested code, unchanged
    compile(source, "own-crawl", "exec")
