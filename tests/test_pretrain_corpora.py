"""Lab 02's data-quality experiment: the content-addressed cache, the packed token streams, the
three crawl corpora, the equal-compute runs and the statistics drawn from them."""

from __future__ import annotations

import gzip
import math
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import LabkitError
from labkit.models import ModelShape, build_causal_lm
from labkit.pretrain import causal_lm_labels, eval_loss, pack_documents
from labkit.pretrain.cache import (
    CACHE_ENV,
    cache_dir,
    cached_array,
    cached_json,
    content_key,
    source_of,
)
from labkit.pretrain.corpora import (
    ARMS,
    CLEAN,
    PIPELINE,
    RAW,
    Page,
    corpus_table,
    crawl_corpora,
    kinds_table,
    pack_texts,
    paired_gaps,
    quality_summary,
    train_on_corpora,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- the cache ---------------------------------------------------------------------------------


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "labkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir().parts[-2:] == (".cache", "labkit")


@given(st.lists(st.text(max_size=5), min_size=1, max_size=4))
@settings(max_examples=60, deadline=None)
def test_content_key_is_framed(parts):
    # joining the parts differently must change the key: ("ab", "c") is not ("a", "bc")
    key = content_key(*parts)
    assert key == content_key(*parts)
    assert key != content_key("".join(parts) + "x")
    if len(parts) >= 2 and parts[0]:
        moved = [parts[0][:-1], parts[0][-1] + parts[1], *parts[2:]]
        assert content_key(*moved) != key


def test_content_key_reads_files_and_names_a_missing_one(tmp_path):
    f = tmp_path / "input.bin"
    f.write_bytes(b"one")
    before = content_key(f, {"n": 1})
    f.write_bytes(b"two")
    assert content_key(f, {"n": 1}) != before  # the file's bytes, not its name
    assert content_key(f, {"n": 2}) != content_key(f, {"n": 1})
    with pytest.raises(LabkitError, match="cannot hash"):
        content_key(tmp_path / "missing.bin")


def test_source_of_hashes_code_and_changes_with_it(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (package / "b.py").write_text("y = 2\n")
    before = content_key(source_of(package))
    (package / "b.py").write_text("y = 3\n")
    assert content_key(source_of(package)) != before
    with pytest.raises(LabkitError, match="no Python source"):
        source_of(tmp_path / "nothing-here")


def test_cached_json_computes_once_then_reads(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"pages": ["a", "b"], "n": 2}

    assert cached_json("demo", "k1", compute) == {"pages": ["a", "b"], "n": 2}
    assert cached_json("demo", "k1", compute) == {"pages": ["a", "b"], "n": 2}
    assert len(calls) == 1  # the second call read the entry
    cached_json("demo", "k2", compute)  # another key: computed again
    assert len(calls) == 2
    assert len(list(cache.glob("demo-*.json.gz"))) == 2


def test_a_corrupt_entry_is_recomputed_and_replaced(cache):
    cached_json("demo", "key", lambda: [1, 2, 3])
    (entry,) = cache.glob("demo-*.json.gz")
    entry.write_bytes(b"not gzip")
    assert cached_json("demo", "key", lambda: [4]) == [4]
    assert gzip.decompress(entry.read_bytes()) == b"[4]"


def test_an_unwritable_cache_only_costs_the_computation(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    assert cached_json("demo", "key", lambda: {"ok": True}) == {"ok": True}
    np.testing.assert_array_equal(cached_array("demo", "key", lambda: np.arange(3)), [0, 1, 2])


def test_cached_array_round_trips_without_pickle(cache):
    value = np.arange(10, dtype=np.uint16)
    assert cached_array("arr", "key", lambda: value).dtype == np.uint16
    again = cached_array("arr", "key", lambda: pytest.fail("should be read from the cache"))
    np.testing.assert_array_equal(again, value)
    assert again.dtype == np.uint16
    with pytest.raises(LabkitError, match="cache entry name"):
        cached_array("../escape", "key", lambda: value)


# -- packed token streams ----------------------------------------------------------------------


def test_pack_texts_is_the_labs_tokenise_and_pack(cache):
    from labkit.loaders import load_tokenizer

    tok = load_tokenizer()
    texts = ["The capital of Thidaiora is Molholm.", "def add(x):\n    return x + 1", "Q: ?"]
    expected = pack_documents(tok(texts, add_special_tokens=False)["input_ids"], tok.eos_token_id)
    first = pack_texts(tok, texts)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(pack_texts(tok, texts), expected)  # from the cache
    assert len(list(cache.glob("packed-tokens-*.npy"))) == 1
    np.testing.assert_array_equal(pack_texts(tok, texts, cache=False), expected)
    assert not np.array_equal(pack_texts(tok, texts[:2]), expected)  # other texts, other entry
    with pytest.raises(LabkitError, match="list of strings"):
        pack_texts(tok, "one string")


# -- the runs and their statistics --------------------------------------------------------------

V, SEQ = 29, 8


def _tiny_runs(steps=6, seeds=(1, 2)):
    rng = np.random.default_rng(0)
    learnable = np.tile(np.arange(V), 40)  # a pattern: a model can learn the next token
    noise = rng.integers(0, V, learnable.size)  # uniform noise: nothing to learn
    held = np.tile(np.arange(V), 4)[: 2 * SEQ * 2].reshape(-1, SEQ)
    import torch

    held = torch.as_tensor(held)
    batches = [{"input_ids": b, "labels": causal_lm_labels(b)} for b in held.split(2)]
    shape = ModelShape(d_model=16, n_layer=1, n_head=2, max_len=SEQ)
    return train_on_corpora(
        {"learnable": learnable, "noise": noise}, seeds=seeds, steps=steps, batch_size=4,
        seq_len=SEQ, lr=3e-2, make_model=lambda seed: build_causal_lm(V, shape, seed=seed),
        eval_fn=lambda m: eval_loss(m, batches))


def test_runs_at_equal_compute_are_reproducible_and_see_their_corpus():
    runs = _tiny_runs()
    assert list(runs.columns) == ["corpus", "seed", "corpus tokens", "training tokens",
                                  "held-out loss"]
    assert len(runs) == 4 and set(runs["training tokens"]) == {6 * 4 * SEQ}
    assert runs["held-out loss"].tolist() == _tiny_runs()["held-out loss"].tolist()
    # trained on the pattern, the model scores the patterned held-out text better than the
    # model trained on noise, in every seed
    gaps = paired_gaps(runs, "noise", "learnable")
    assert len(gaps) == 2 and min(gaps) > 0
    with pytest.raises(LabkitError, match="seeds"):
        train_on_corpora({"a": np.arange(50)}, seeds=[1, 1], steps=1, batch_size=1, seq_len=4,
                         lr=1e-3, make_model=None, eval_fn=None)


def test_summary_and_paired_gaps_by_hand():
    runs = pd.DataFrame({"corpus": ["a", "a", "b", "b"], "seed": [1, 2, 1, 2],
                         "held-out loss": [3.0, 3.5, 2.0, 3.0]})
    summary = quality_summary(runs)
    assert summary.loc["a", "mean"] == 3.25 and summary.loc["b", "max"] == 3.0
    assert summary.loc["a", "std"] == pytest.approx(math.sqrt(0.125))
    assert summary.loc["a", "seeds"] == 2
    assert paired_gaps(runs, "a", "b") == [1.0, 0.5]  # seed by seed, not mean against mean
    with pytest.raises(LabkitError, match="no runs for corpus 'c'"):
        paired_gaps(runs, "a", "c")


def test_corpus_and_kinds_tables():
    pages = {"x": [Page("aaaa", "clean", True, ("code",)), Page("bb", "spam", False, ())],
             "y": [Page("cc", "clean", True, ("story",))]}
    table = corpus_table(pages, {"x": np.arange(7), "y": np.arange(3)})
    assert table.loc["x", "pages"] == 2 and table.loc["x", "tokens"] == 7
    assert table.loc["x", "pages to drop (labels)"] == 0.5
    assert table.loc["x", "their share of the text"] == pytest.approx(2 / 6)
    assert table.loc["x", "pages with code"] == 0.5 and table.loc["y", "pages with code"] == 0
    kinds = kinds_table(pages)
    assert kinds.loc["spam", "x"] == 1 and kinds.loc["spam", "y"] == 0


# -- the corpora themselves (runs lab 01's pipeline once: ~15 s cold) ---------------------------


@pytest.mark.slow
def test_crawl_corpora_are_lab_01s_and_cached(cache):
    corpora = crawl_corpora()
    assert list(corpora) == list(ARMS)
    raw, pipeline, clean = (corpora[a] for a in (RAW, PIPELINE, CLEAN))
    # raw: every HTML page of the crawl; the pipeline's and the clean pages are subsets of it
    assert len(raw) > 1000 and {p.kind for p in raw} >= {"spam", "gibberish", "exact_dup"}
    assert len(pipeline) < len(raw) / 2
    assert all(p.keep for p in clean)  # only pages the labels keep
    assert not {"spam", "gibberish", "lorem", "non_english", "exact_dup"} & {p.kind for p in pipeline}
    # the clean arm is cut to the pipeline's size in characters (within one page)
    size = sum(len(p.text) for p in pipeline)
    clean_size = sum(len(p.text) for p in clean)
    assert size <= clean_size <= size + max(len(p.text) for p in clean)
    # PII is scrubbed in both cleaned arms
    assert not any("@" in p.text and p.kind == "pii" and "<EMAIL>" not in p.text
                   for p in clean + pipeline)
    (entry,) = cache.glob("lab02-crawl-corpora-*.json.gz")
    stamp = os.stat(entry).st_mtime_ns
    assert crawl_corpora() == corpora  # read back, not rebuilt
    assert os.stat(entry).st_mtime_ns == stamp


# --- benchmarks/bench_data_quality.py: lab 02's data-quality runs at longer training -----------

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_data_quality.py")


def test_unigram_baseline_is_log_vocab_for_flat_counts_and_lowest_on_its_own_text():
    from labkit.pretrain.data import unigram_cross_entropy as unigram_loss

    vocab = 8
    flat = np.arange(vocab).repeat(100)
    assert unigram_loss(flat, flat, vocab) == pytest.approx(math.log(vocab))
    skewed = np.array([0] * 90 + [1] * 10)
    # the frequencies of a text predict that text better than another text's frequencies do
    assert unigram_loss(skewed, skewed, vocab) < unigram_loss(flat, skewed, vocab)


def test_bench_data_quality_runs_and_refuses_bad_arguments():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, BENCH, "--steps", "2", "--seeds", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 steps (1,024 training tokens per run" in done.stdout
    assert "clean wins" in done.stdout and "below its unigram" in done.stdout
    bad = subprocess.run([sys.executable, BENCH, "--seeds", "0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--seeds must be whole numbers >= 1" in bad.stderr
