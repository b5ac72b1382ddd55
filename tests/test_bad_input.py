"""Every public function of the stage packages refuses bad input at its boundary.

CASES holds, for every callable a stage package exports (its `__all__`), one or more bad calls:
the argument that is wrong, a kind of bad value (wrong type, zero, negative, nan, inf, empty,
another shape) and the call with that value in place. A bad call must raise a LabkitError whose
message names the argument: never a deep exception (ZeroDivisionError, KeyError, IndexError,
AttributeError, a torch RuntimeError) and never a silent result. Each case runs its fixed bad
values, and hypothesis draws more from the kind's strategy. `test_every_export_has_a_case`
fails when a new public function arrives without a case (or a reason in NO_USER_DATA).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import align as A
from labkit import data as D
from labkit import evaluation as E
from labkit import parallel as Par
from labkit import precision as Pr
from labkit import pretrain as P
from labkit import quant as Q
from labkit import schedules as S
from labkit.errors import LabkitError

STAGES = ("data", "pretrain", "parallel", "precision", "schedules", "align", "evaluation", "quant")
NAN, INF = math.nan, math.inf


# --- kinds of bad values ------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    values: tuple  # always tried
    draw: st.SearchStrategy  # hypothesis draws more of the same kind


_not_int = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(),
                     st.text(max_size=3), st.booleans())
POSINT = Kind((0, -1, 2.5, NAN, "3", None, True), st.one_of(st.integers(max_value=0), _not_int))
NONNEG = Kind((-1, 0.5, NAN, "0", None), st.one_of(st.integers(max_value=-1), _not_int))
INT = Kind((2.5, NAN, "1", None), _not_int)
_not_pos = st.one_of(st.floats(max_value=0.0), st.integers(max_value=0),
                     st.sampled_from([NAN, INF, -INF, None, "1"]))
POS = Kind((0, -1.0, NAN, INF, None, "1"), _not_pos)
NONNEG_NUM = Kind((-1.0, NAN, INF, None), st.one_of(st.floats(max_value=-1e-12),
                                                    st.sampled_from([NAN, INF, None])))
FINITE = Kind((NAN, INF, -INF, None, "x"), st.sampled_from([NAN, INF, -INF, None, "x", [1.0]]))
FRACTION = Kind((-0.1, 1.5, NAN, None), st.one_of(
    st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), st.sampled_from([NAN, None])))
NAME = Kind(("no-such-name", "", None, 3), st.one_of(
    st.text(min_size=1, max_size=8).filter(lambda s: s.startswith("zz")), st.none(),
    st.integers()))
TEXT = Kind((None, 3, b"bytes", ["a"]), st.one_of(st.none(), st.integers(), st.binary(min_size=1),
                                                  st.lists(st.text(), min_size=1)))
TEXTS = Kind(("one string", None, 3, [], [1, 2]), st.one_of(
    st.text(min_size=1), st.none(), st.integers(), st.just([]),
    st.lists(st.integers(), min_size=1, max_size=3)))
TENSOR = Kind((None, [1.0, 2.0], "x", 3), st.one_of(st.none(), st.text(), st.integers(),
                                                   st.lists(st.floats(), max_size=3)))
PATH = Kind(("/nonexistent/x.bin", None, 3), st.one_of(st.none(), st.integers(),
                                                       st.just("/nonexistent/dir/file")))
OBJ = Kind((None, 3, "x"), st.one_of(st.none(), st.integers(), st.text(max_size=3)))
FUNC = Kind((None, 3, "f"), st.one_of(st.none(), st.integers(), st.text(max_size=3)))


def exactly(*values) -> Kind:
    """Specific bad values (a shape mismatch, a typo): tried as given, drawn from the same set."""
    return Kind(values, st.sampled_from(values))


@dataclass(frozen=True)
class Bad:
    arg: str  # the argument a refusal must name
    kind: Kind
    call: Callable  # call(ctx, bad_value)


# --- shared inputs --------------------------------------------------------------------------------
class Ctx:
    """Valid inputs the bad calls are built around; built once, on first use."""

    @functools.cached_property
    def tok(self):
        from labkit.loaders import load_tokenizer

        return load_tokenizer()

    @functools.cached_property
    def lm(self):
        from labkit.models import ModelShape, build_causal_lm

        tok = self.tok
        return build_causal_lm(len(tok), ModelShape(d_model=16, n_layer=1, n_head=2, max_len=64),
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)

    @property
    def acc(self):
        return D.Accounting()

    @property
    def docs(self):
        return [D.Document("a", "The cat sat on the mat. " * 20), D.Document("b", "Hello there.")]

    @property
    def ids(self):
        return torch.arange(200) % 50

    @property
    def warc(self):
        from labkit.samples import sample_path

        return sample_path("crawl/crawl.warc.gz")

    @functools.cached_property
    def sig(self):
        return D.minhash_signatures(["the cat sat on the mat today", "a dog ran"], num_perm=16)


C = Ctx()


def first(result):
    """Consume a lazy result (a step's generator) so its checks run."""
    return list(result) if isinstance(result, Iterator) else result


# --- the cases ------------------------------------------------------------------------------------
CASES: dict[str, list[Bad]] = {}


def case(name: str, *bads: Bad) -> None:
    CASES.setdefault(name, []).extend(bads)


# data ---------------------------------------------------------------------------------------------
case("data.BPETokenizer",
     Bad("merges", exactly(None, "ab", [(1,)], [(1, 2), ("a", "b")], [(256, 1)]),
         lambda c, v: D.BPETokenizer(v)),
     Bad("pattern", exactly("gpt-4", 3), lambda c, v: D.BPETokenizer([], v)),
     Bad("ids", exactly([999999], [-1], ["a"], None), lambda c, v: D.BPETokenizer([]).decode(v)),
     Bad("text", TEXT, lambda c, v: D.BPETokenizer([]).encode(v)))
case("data.Document",
     Bad("id", exactly(None, 3.5), lambda c, v: D.Document(v, "text")),
     Bad("text", TEXT, lambda c, v: D.Document("a", v)),
     Bad("metadata", exactly(None, [1], "x"), lambda c, v: D.Document("a", "t", v)))
case("data.batch_step", Bad("step", FUNC, lambda c, v: D.batch_step(v)))
case("data.step_name", Bad("step", FUNC, lambda c, v: D.step_name(v)))
case("data.bytes_per_token",
     Bad("tokenizer", OBJ, lambda c, v: D.bytes_per_token(v, ["some text"])),
     Bad("texts", exactly(None, 3, [1, 2], []), lambda c, v: D.bytes_per_token(D.BPETokenizer([]), v)))
case("data.c4_clean",
     Bad("text", TEXT, lambda c, v: D.c4_clean(v)),
     Bad("min_words_per_line", NONNEG, lambda c, v: D.c4_clean("A b c.", min_words_per_line=v)),
     Bad("max_word_length", POSINT, lambda c, v: D.c4_clean("A b c.", max_word_length=v)),
     Bad("min_num_sentences", NONNEG, lambda c, v: D.c4_clean("A b c.", min_num_sentences=v)))
for _step in ("c4_filter", "fineweb_filter", "gopher_quality", "gopher_repetition", "pii_scrub",
              "exact_dedup", "extract", "language_filter", "minhash_dedup"):
    _fn = getattr(D, _step)
    case(f"data.{_step}",
         Bad("docs", exactly("a string", None, 3, ["not a document"]),
             lambda c, v, f=_fn: first(f(v, c.acc))),
         Bad("accounting", exactly(None, "acc", {}), lambda c, v, f=_fn: first(f(c.docs, v))))
for _step in ("c4_filter", "fineweb_filter", "gopher_quality", "gopher_repetition", "pii_scrub"):
    _fn = getattr(D, _step)
    case(f"data.{_step}", Bad("bogus", exactly(1), lambda c, v, f=_fn: first(f(c.docs, c.acc, bogus=v))))
case("data.fineweb_reason",
     Bad("text", TEXT, lambda c, v: D.fineweb_reason(v)),
     Bad("line_punct_thr", FRACTION, lambda c, v: D.fineweb_reason("a.\nb", line_punct_thr=v)),
     Bad("short_line_length", NONNEG, lambda c, v: D.fineweb_reason("a.\nb", short_line_length=v)))
case("data.gopher_quality_reason",
     Bad("text", TEXT, lambda c, v: D.gopher_quality_reason(v)),
     Bad("min_doc_words", exactly(-1, 2.5, NAN, "5"), lambda c, v: D.gopher_quality_reason("a b", min_doc_words=v)),
     Bad("max_symbol_word_ratio", exactly(-0.1, NAN, INF, "x"),
         lambda c, v: D.gopher_quality_reason("a b", max_symbol_word_ratio=v)))
case("data.gopher_repetition_reason",
     Bad("text", TEXT, lambda c, v: D.gopher_repetition_reason(v)),
     Bad("dup_line_frac", exactly(-0.5, 1.5, NAN, "x"), lambda c, v: D.gopher_repetition_reason("a\nb", dup_line_frac=v)),
     Bad("top_n_grams", exactly(((0, 0.2),), ((2, NAN),), (2, 0.2), "x"),
         lambda c, v: D.gopher_repetition_reason("a b c d", top_n_grams=v)),
     Bad("dup_n_grams", exactly(((-1, 0.1),), ((5, -0.1),)),
         lambda c, v: D.gopher_repetition_reason("a b c d", dup_n_grams=v)))
case("data.jaccard",
     Bad("n", POSINT, lambda c, v: D.jaccard("a b c", "d e f", n=v)),
     Bad("a", TEXT, lambda c, v: D.jaccard(v, "d e f")),
     Bad("b", TEXT, lambda c, v: D.jaccard("a b", v)))
case("data.ngram_set",
     Bad("n", POSINT, lambda c, v: D.ngram_set("a b c", n=v)),
     Bad("text", TEXT, lambda c, v: D.ngram_set(v)))
case("data.normalise_text", Bad("text", TEXT, lambda c, v: D.normalise_text(v)))
case("data.detect_language", Bad("text", TEXT, lambda c, v: D.detect_language(v)))
case("data.extract_main_text", Bad("html", TEXT, lambda c, v: D.extract_main_text(v)))
case("data.naive_strip_tags", Bad("html", TEXT, lambda c, v: D.naive_strip_tags(v)))
case("data.scrub_pii",
     Bad("text", TEXT, lambda c, v: D.scrub_pii(v)),
     Bad("email_placeholder", exactly(None, 3), lambda c, v: D.scrub_pii("a@b.com", email_placeholder=v)))
case("data.extract", Bad("extractor", FUNC, lambda c, v: first(D.extract(c.docs, c.acc, v))))
case("data.language_filter",
     Bad("languages", exactly("en", None, [], [3]), lambda c, v: first(D.language_filter(c.docs, c.acc, v))),
     Bad("min_probability", FINITE, lambda c, v: first(D.language_filter(c.docs, c.acc, ("en",), v))))
case("data.keep_if",
     Bad("docs", exactly("a string", None), lambda c, v: first(D.keep_if(v, c.acc, "s", lambda d: None))),
     Bad("accounting", exactly(None, 3), lambda c, v: first(D.keep_if(c.docs, v, "s", lambda d: "x"))),
     Bad("step", exactly(None, "", 3), lambda c, v: first(D.keep_if(c.docs, c.acc, v, lambda d: None))),
     Bad("reason_of", FUNC, lambda c, v: first(D.keep_if(c.docs, c.acc, "s", v))))
case("data.run_pipeline",
     Bad("docs", exactly("a string", None, 3, ["text"]), lambda c, v: D.run_pipeline([D.exact_dedup], v)),
     Bad("steps", exactly(None, D.exact_dedup, [3], "x"), lambda c, v: D.run_pipeline(v, c.docs)),
     Bad("accounting", exactly(3, "x"), lambda c, v: D.run_pipeline([D.exact_dedup], c.docs, v)))
case("data.funnel_figure",
     Bad("table", exactly(None, pd.DataFrame(), pd.DataFrame({"x": [1]})), lambda c, v: D.funnel_figure(v)))
case("data.minhash_dedup",
     Bad("num_perm", POSINT, lambda c, v: first(D.minhash_dedup(c.docs, c.acc, num_perm=v))),
     Bad("bands", exactly(0, -1, 3, 2.5, None), lambda c, v: first(D.minhash_dedup(c.docs, c.acc, bands=v))),
     Bad("n", POSINT, lambda c, v: first(D.minhash_dedup(c.docs, c.acc, n=v))),
     Bad("family", NAME, lambda c, v: first(D.minhash_dedup(c.docs, c.acc, family=v))))
case("data.minhash_parameters",
     Bad("num_perm", POSINT, lambda c, v: D.minhash_parameters(v)),
     Bad("seed", INT, lambda c, v: D.minhash_parameters(8, v)),
     Bad("family", NAME, lambda c, v: D.minhash_parameters(8, 1, v)))
case("data.minhash_signatures",
     Bad("texts", exactly("one string", None, 3, [3]), lambda c, v: D.minhash_signatures(v, num_perm=8)),
     Bad("num_perm", POSINT, lambda c, v: D.minhash_signatures(["a b"], num_perm=v)),
     Bad("n", POSINT, lambda c, v: D.minhash_signatures(["a b"], num_perm=8, n=v)),
     Bad("block", POSINT, lambda c, v: D.minhash_signatures(["a b"], num_perm=8, block=v)))
case("data.shingle_hashes",
     Bad("words", exactly("a string", None, [1, 2]), lambda c, v: D.shingle_hashes(v)),
     Bad("n", POSINT, lambda c, v: D.shingle_hashes(["a", "b"], n=v)))
case("data.corpus_shingle_hashes",
     Bad("word_lists", exactly("abc", None, ["abc"], [[1]]), lambda c, v: D.corpus_shingle_hashes(v)),
     Bad("n", POSINT, lambda c, v: D.corpus_shingle_hashes([["a", "b"]], n=v)))
case("data.estimated_jaccard",
     Bad("sig_b", exactly(np.zeros((2, 8), np.uint64), None, np.zeros(3)),
         lambda c, v: D.estimated_jaccard(c.sig, v)),
     Bad("sig_a", exactly(None, "x"), lambda c, v: D.estimated_jaccard(v, c.sig)))
case("data.lsh_collides",
     Bad("bands", exactly(0, 3, -4, None), lambda c, v: D.lsh_collides(c.sig[0], c.sig[1], bands=v, rows=4)),
     Bad("sig_b", exactly(np.zeros(8, np.uint64), None), lambda c, v: D.lsh_collides(c.sig[0], v, 4, 4)))
case("data.near_duplicate_clusters",
     Bad("bands", exactly(0, 3, -4, None), lambda c, v: D.near_duplicate_clusters(c.sig, bands=v, rows=4)),
     Bad("signatures", exactly(None, np.zeros(8), [[1, 2]]), lambda c, v: D.near_duplicate_clusters(v, 4, 4)))
case("data.candidate_probability",
     Bad("s", exactly(-0.5, 1.5, NAN, "x", [0.5, 2.0]), lambda c, v: D.candidate_probability(v)),
     Bad("bands", POSINT, lambda c, v: D.candidate_probability(0.5, bands=v)),
     Bad("rows", POSINT, lambda c, v: D.candidate_probability(0.5, rows=v)))
case("data.s_curve_figure",
     Bad("bands", POSINT, lambda c, v: D.s_curve_figure(bands=v)),
     Bad("rows", POSINT, lambda c, v: D.s_curve_figure(rows=v)),
     Bad("measured", exactly("x", pd.DataFrame({"x": [1]})), lambda c, v: D.s_curve_figure(measured=v)))
case("data.detection_by_similarity",
     Bad("detected", exactly([True], [True, False, True]), lambda c, v: D.detection_by_similarity([0.1, 0.5], v)),
     Bad("similarity", exactly([NAN, 0.5], [-1.0, 0.5], "x"), lambda c, v: D.detection_by_similarity(v, [True, False])),
     Bad("bins", exactly([0.5], [1.0, 0.0], [0, NAN]), lambda c, v: D.detection_by_similarity([0.1, 0.5], [True, False], v)))
case("data.mutate_words",
     Bad("fraction", FRACTION, lambda c, v: D.mutate_words("a b c", v)),
     Bad("text", TEXT, lambda c, v: D.mutate_words(v, 0.5)))
for _h in ("universal_hash", "multiply_shift_hash"):
    _fn = getattr(D, _h)
    case(f"data.{_h}",
         Bad("x", exactly(None, [1, 2], np.zeros((2, 2), np.uint64), np.array([1.5])),
             lambda c, v, h=_fn: h(v, np.ones(3, np.uint64), np.ones(3, np.uint64))),
         Bad("b", exactly(np.ones(2, np.uint64), None),
             lambda c, v, h=_fn: h(np.ones(4, np.uint64), np.ones(3, np.uint64), v)))
for _t in ("train_bpe", "naive_train_bpe"):
    _fn = getattr(D, _t)
    case(f"data.{_t}",
         Bad("vocab_size", exactly(0, 255, 256.5, NAN, None, "300", True), lambda c, v, t=_fn: t(["ab"], v)),
         Bad("pattern", exactly("gpt-4", "GPT4", 3, "(unclosed"), lambda c, v, t=_fn: t(["ab ab"], 300, pattern=v)),
         Bad("texts", exactly(None, 3, [1, 2], [None]), lambda c, v, t=_fn: t(v, 300)))
case("data.train_hf_bpe",
     Bad("vocab_size", exactly(0, -5, 2.5, None, "300"), lambda c, v: D.train_hf_bpe(["ab"], v)),
     Bad("texts", exactly(None, 3, [1, 2]), lambda c, v: D.train_hf_bpe(v, 300)))
case("data.split_chunks",
     Bad("pattern", exactly("gpt-4", 3, "(unclosed"), lambda c, v: D.split_chunks("a b", v)),
     Bad("text", TEXT, lambda c, v: D.split_chunks(v, "gpt4")))
case("data.fit_quality_scorer",
     Bad("scores", exactly([1.0], [1.0, NAN], [1.0, "x"], None), lambda c, v: D.fit_quality_scorer(["a", "b"], v)),
     Bad("texts", exactly("ab", None, [1, 2]), lambda c, v: D.fit_quality_scorer(v, [1.0, 2.0])),
     Bad("alpha", NONNEG_NUM, lambda c, v: D.fit_quality_scorer(["a", "b"], [1.0, 2.0], alpha=v)),
     Bad("n_features", POSINT, lambda c, v: D.fit_quality_scorer(["a", "b"], [1.0, 2.0], n_features=v)))
case("data.predict_scores",
     Bad("model", OBJ, lambda c, v: D.predict_scores(v, ["a"])),
     Bad("texts", exactly("a string", None, [1]), lambda c, v: D.predict_scores(
         D.fit_quality_scorer(["a b", "c d"], [1.0, 2.0], n_features=64), v)))
case("data.quality_score_filter",
     Bad("model", OBJ, lambda c, v: first(D.quality_score_filter(c.docs, c.acc, v))),
     Bad("threshold", FINITE, lambda c, v: first(D.quality_score_filter(
         c.docs, c.acc, D.fit_quality_scorer(["a b", "c d"], [1.0, 2.0], n_features=64), v))))
case("data.precision_recall",
     Bad("good", exactly([True], None, [True, False, True]), lambda c, v: D.precision_recall([True, False], v)),
     Bad("kept", exactly(None, 3), lambda c, v: D.precision_recall(v, [True])))
case("data.read_warc",
     Bad("paths", exactly("/etc/hostname", "/nonexistent.warc", None, 3, []), lambda c, v: first(D.read_warc(v))),
     Bad("max_payload_bytes", POSINT, lambda c, v: first(D.read_warc(c.warc, max_payload_bytes=v))),
     Bad("accounting", exactly("acc", 3), lambda c, v: first(D.read_warc(c.warc, v))))
case("data.write_warc",
     Bad("path", exactly(None, 3, "/nonexistent/dir/x.warc.gz"), lambda c, v: D.write_warc(v, [])),
     Bad("records", exactly("abc", None, [{"body": "x"}], [3]),
         lambda c, v: D.write_warc(Path("/tmp/labkit_bad_input.warc.gz"), v)))
case("data.decode_html",
     Bad("payload", exactly(None, "text", 3), lambda c, v: D.decode_html(v)),
     Bad("declared", exactly(3, b"utf-8"), lambda c, v: D.decode_html(b"abc", v)))


# pretrain -----------------------------------------------------------------------------------------
def _batch(c, **change):
    ids = (torch.arange(32) % 50).view(2, 16)
    return {"input_ids": ids, "labels": ids.clone(), **change}


LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
case("pretrain.LossLaw",
     Bad("E", FINITE, lambda c, v: P.LossLaw(**{**LAW, "E": v})),
     Bad("alpha", POS, lambda c, v: P.LossLaw(**{**LAW, "alpha": v})),
     Bad("A", POS, lambda c, v: P.LossLaw(**{**LAW, "A": v})))
case("pretrain.PowerLawFit",
     Bad("a", POS, lambda c, v: P.PowerLawFit(v, 0.5)),
     Bad("b", FINITE, lambda c, v: P.PowerLawFit(2.0, v)),
     Bad("c", NONNEG_NUM, lambda c, v: P.PowerLawFit(2.0, 0.5, v)))
case("pretrain.RandomBlocks",
     Bad("stream", exactly(None, "x", np.zeros((4, 50), np.int64), np.ones(50) * 0.5, np.array([-1] * 50)),
         lambda c, v: P.RandomBlocks(v, 8, 2)),
     Bad("seq_len", POSINT, lambda c, v: P.RandomBlocks(c.ids, v, 2)),
     Bad("batch_size", POSINT, lambda c, v: P.RandomBlocks(c.ids, 8, v)),
     Bad("seed", INT, lambda c, v: P.RandomBlocks(c.ids, 8, 2, seed=v)),
     Bad("device", exactly("nope", 3, None), lambda c, v: P.RandomBlocks(c.ids, 8, 2, device=v)))
case("pretrain.MaskedBlocks",
     Bad("blocks", OBJ, lambda c, v: P.MaskedBlocks(v, 50, 3)),
     Bad("vocab_size", POSINT, lambda c, v: P.MaskedBlocks(P.RandomBlocks(c.ids, 8, 2), v, 3)),
     Bad("mask_token_id", exactly(50, -1, 2.5, None), lambda c, v: P.MaskedBlocks(P.RandomBlocks(c.ids, 8, 2), 50, v)),
     Bad("p", exactly(0.0, 1.0, -0.1, NAN, None), lambda c, v: P.MaskedBlocks(P.RandomBlocks(c.ids, 8, 2), 50, 3, p=v)),
     Bad("special_ids", exactly("x", [2.5], None, [99]), lambda c, v: P.MaskedBlocks(P.RandomBlocks(c.ids, 8, 2), 50, 3, v)))
case("pretrain.TrainConfig",
     Bad("steps", POSINT, lambda c, v: P.TrainConfig(steps=v)),
     Bad("lr", POS, lambda c, v: P.TrainConfig(lr=v)),
     Bad("warmup_steps", NONNEG, lambda c, v: P.TrainConfig(warmup_steps=v)),
     Bad("min_lr_ratio", FRACTION, lambda c, v: P.TrainConfig(min_lr_ratio=v)),
     Bad("weight_decay", NONNEG_NUM, lambda c, v: P.TrainConfig(weight_decay=v)),
     Bad("betas", exactly((1.5, 0.9), (0.9,), None, "x", (0.9, NAN)), lambda c, v: P.TrainConfig(betas=v)),
     Bad("grad_accum", POSINT, lambda c, v: P.TrainConfig(grad_accum=v)),
     Bad("grad_clip", exactly(0.0, -1.0, NAN, "1"), lambda c, v: P.TrainConfig(grad_clip=v)),
     Bad("dtype", exactly("fp8", 3, torch.int64), lambda c, v: P.TrainConfig(dtype=v)),
     Bad("objective", NAME, lambda c, v: P.TrainConfig(objective=v)),
     Bad("log_every", POSINT, lambda c, v: P.TrainConfig(log_every=v)),
     Bad("eval_every", NONNEG, lambda c, v: P.TrainConfig(eval_every=v)),
     Bad("checkpoint_every", NONNEG, lambda c, v: P.TrainConfig(checkpoint_every=v)),
     Bad("schedule", exactly(3, "cosine"), lambda c, v: P.TrainConfig(schedule=v)),
     Bad("peak_flops", exactly(0.0, -1.0, NAN, "x"), lambda c, v: P.TrainConfig(peak_flops=v)),
     Bad("seed", INT, lambda c, v: P.TrainConfig(seed=v)))
case("pretrain.causal_lm_labels",
     Bad("input_ids", exactly(None, [1, 2], torch.ones(2, 3)), lambda c, v: P.causal_lm_labels(v)),
     Bad("attention_mask", exactly(torch.ones(2, 5), torch.ones(3), [1, 1]),
         lambda c, v: P.causal_lm_labels(torch.ones(2, 4, dtype=torch.long), attention_mask=v)),
     Bad("pad_token_id", exactly("x", 2.5), lambda c, v: P.causal_lm_labels(torch.ones(2, 4, dtype=torch.long), v)))
case("pretrain.causal_mask", Bad("n", POSINT, lambda c, v: P.causal_mask(v)))
case("pretrain.causal_mask_figure", Bad("tokens", exactly("abc", None, [1, 2], []), lambda c, v: P.causal_mask_figure(v)))
case("pretrain.check_batch",
     Bad("model", OBJ, lambda c, v: P.check_batch(v, _batch(c))),
     Bad("batch", exactly(None, {}, "x"), lambda c, v: P.check_batch(c.lm, v)),
     Bad("labels", exactly(torch.zeros(2, 15, dtype=torch.long), torch.ones(2, 16), [[1]]),
         lambda c, v: P.check_batch(c.lm, _batch(c, labels=v))),
     Bad("input_ids", exactly(torch.ones(2, 16), None, torch.zeros(16, dtype=torch.long)),
         lambda c, v: P.check_batch(c.lm, _batch(c, input_ids=v))))
case("pretrain.chinchilla_loss",
     Bad("n_params", POS, lambda c, v: P.chinchilla_loss(v, 1e9)),
     Bad("n_tokens", POS, lambda c, v: P.chinchilla_loss(1e9, v)),
     Bad("law", OBJ, lambda c, v: P.chinchilla_loss(1e9, 1e9, v)))
case("pretrain.compute_optimal",
     Bad("flops", POS, lambda c, v: P.compute_optimal(v)),
     Bad("law", OBJ, lambda c, v: P.compute_optimal(1e20, v)))
for _f in ("compute_optimal_table", "isoflop_figure"):
    _fn = getattr(P, _f)
    case(f"pretrain.{_f}",
         Bad("budgets", exactly([], [NAN], [-1.0], "x", None, 1e20), lambda c, v, f=_fn: f(v)),
         Bad("law", OBJ, lambda c, v, f=_fn: f([1e20], v)))
case("pretrain.continue_text",
     Bad("model", OBJ, lambda c, v: P.continue_text(v, c.tok, "The")),
     Bad("tokenizer", OBJ, lambda c, v: P.continue_text(c.lm, v, "The")),
     Bad("prompt", TEXT, lambda c, v: P.continue_text(c.lm, c.tok, v)),
     Bad("max_new_tokens", POSINT, lambda c, v: P.continue_text(c.lm, c.tok, "The", v)),
     Bad("top_k", exactly(0, -1, 2.5, "5"), lambda c, v: P.continue_text(c.lm, c.tok, "The", 2, top_k=v)),
     Bad("temperature", POS, lambda c, v: P.continue_text(c.lm, c.tok, "The", 2, top_k=5, temperature=v)),
     Bad("seed", INT, lambda c, v: P.continue_text(c.lm, c.tok, "The", 2, seed=v)))
case("pretrain.corruption_kinds",
     Bad("corrupted_ids", exactly(torch.zeros(5, dtype=torch.long), None),
         lambda c, v: P.corruption_kinds(torch.zeros(4, dtype=torch.long), v, torch.zeros(4, dtype=torch.bool), 3)),
     Bad("chosen", exactly(torch.zeros(3, dtype=torch.bool), None),
         lambda c, v: P.corruption_kinds(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), v, 3)),
     Bad("mask_token_id", INT, lambda c, v: P.corruption_kinds(
         torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool), v)))
case("pretrain.eval_loss",
     Bad("model", OBJ, lambda c, v: P.eval_loss(v, [_batch(c)])),
     Bad("batches", exactly(None, "x", [], [{"x": 1}], _batch(None)), lambda c, v: P.eval_loss(c.lm, v)),
     Bad("objective", NAME, lambda c, v: P.eval_loss(c.lm, [_batch(c)], v)),
     Bad("dtype", exactly("fp8", 3), lambda c, v: P.eval_loss(c.lm, [_batch(c)], dtype=v)))
case("pretrain.fill_blanks",
     Bad("model", OBJ, lambda c, v: P.fill_blanks(v, c.tok, "a <|mask|> b")),
     Bad("tokenizer", OBJ, lambda c, v: P.fill_blanks(c.lm, v, "a <|mask|> b")),
     Bad("text", TEXT, lambda c, v: P.fill_blanks(c.lm, c.tok, v)),
     Bad("top_k", exactly(0, -1, 2.5, 10**6), lambda c, v: P.fill_blanks(c.lm, c.tok, "a <|mask|> b", v)))
case("pretrain.fit_power_law",
     Bad("loss", exactly([1.0, 2.0], [1.0, NAN, 2.0], [1.0, -1.0, 2.0], None), lambda c, v: P.fit_power_law([1.0, 10.0, 100.0], v)),
     Bad("compute", exactly([1.0, 0.0, 2.0], "x", None), lambda c, v: P.fit_power_law(v, [3.0, 2.0, 1.5])))
case("pretrain.fixed_batches",
     Bad("get_batch", FUNC, lambda c, v: P.fixed_batches(v, 2)),
     Bad("n", POSINT, lambda c, v: P.fixed_batches(lambda: _batch(c), v)))
case("pretrain.flops_per_token",
     Bad("model", OBJ, lambda c, v: P.flops_per_token(v, 16)),
     Bad("seq_len", POSINT, lambda c, v: P.flops_per_token(c.lm, v)))
case("pretrain.load_checkpoint",
     Bad("directory", exactly(None, 3, "/nonexistent/ckpt"), lambda c, v: P.load_checkpoint(v, c.lm, None, None, None)),
     Bad("model", OBJ, lambda c, v: P.load_checkpoint("/tmp", v, None, None, None)))
case("pretrain.save_checkpoint",
     Bad("directory", exactly(None, 3), lambda c, v: P.save_checkpoint(v, c.lm, None, None, None, 1, [], P.TrainConfig())),
     Bad("model", OBJ, lambda c, v: P.save_checkpoint("/tmp/labkit_bad_ckpt", v, None, None, None, 1, [], P.TrainConfig())),
     Bad("config", exactly(None, {}), lambda c, v: P.save_checkpoint("/tmp/labkit_bad_ckpt", c.lm, None, None, None, 1, [], v)))
case("pretrain.measure_peak_flops",
     Bad("device", exactly("nope", 3, None), lambda c, v: P.measure_peak_flops(v, n=8, repeats=1)),
     Bad("dtype", exactly("fp32", None, torch.int64), lambda c, v: P.measure_peak_flops("cpu", v, n=8, repeats=1)),
     Bad("n", POSINT, lambda c, v: P.measure_peak_flops("cpu", n=v, repeats=1)),
     Bad("repeats", POSINT, lambda c, v: P.measure_peak_flops("cpu", n=8, repeats=v)))
case("pretrain.mlm_corruption_figure",
     Bad("corrupted_tokens", exactly(["a"], None, "ab"), lambda c, v: P.mlm_corruption_figure(["a", "b"], v, [0, 1])),
     Bad("kinds", exactly([0, 7], [0, -1], [0], None), lambda c, v: P.mlm_corruption_figure(["a", "b"], ["a", "c"], v)),
     Bad("tokens", exactly("ab", None), lambda c, v: P.mlm_corruption_figure(v, ["a", "b"], [0, 1])))
case("pretrain.mlm_generate_left_to_right",
     Bad("model", OBJ, lambda c, v: P.mlm_generate_left_to_right(v, c.tok, "The")),
     Bad("tokenizer", OBJ, lambda c, v: P.mlm_generate_left_to_right(c.lm, v, "The")),
     Bad("prompt", TEXT, lambda c, v: P.mlm_generate_left_to_right(c.lm, c.tok, v)),
     Bad("max_new_tokens", POSINT, lambda c, v: P.mlm_generate_left_to_right(c.lm, c.tok, "The", v)))
case("pretrain.mlm_mask",
     Bad("input_ids", exactly(None, torch.ones(4), [1, 2], torch.full((4,), -3)), lambda c, v: P.mlm_mask(v, 50, 3)),
     Bad("vocab_size", POSINT, lambda c, v: P.mlm_mask(torch.zeros(4, dtype=torch.long), v, 3)),
     Bad("mask_token_id", exactly(50, -1, 2.5, None), lambda c, v: P.mlm_mask(torch.zeros(4, dtype=torch.long), 50, v)),
     Bad("p", exactly(0.0, 1.0, -0.5, NAN, None, "x"), lambda c, v: P.mlm_mask(torch.zeros(4, dtype=torch.long), 50, 3, p=v)),
     Bad("special_ids", exactly("x", [2.5], None), lambda c, v: P.mlm_mask(torch.zeros(4, dtype=torch.long), 50, 3, v)),
     Bad("generator", exactly(3, "g"), lambda c, v: P.mlm_mask(torch.zeros(4, dtype=torch.long), 50, 3, generator=v)))
case("pretrain.pack_blocks",
     Bad("seq_len", POSINT, lambda c, v: P.pack_blocks(c.ids, v)),
     Bad("stream", exactly(None, "abc", torch.rand(100), np.zeros((10, 10), np.int64), np.array([-1] * 20)),
         lambda c, v: P.pack_blocks(v, 8)))
case("pretrain.pack_documents",
     Bad("documents", exactly("abc", None, [[1.5]], [[-1]], [3], [["a"]]), lambda c, v: P.pack_documents(v, 0)),
     Bad("eos_id", exactly(-1, 2.5, None, "0"), lambda c, v: P.pack_documents([[1, 2]], v)),
     Bad("dtype", exactly("float32", "nope", np.int8, 3), lambda c, v: P.pack_documents([[1, 300]], 0, v)))
case("pretrain.power_law_figure",
     Bad("loss", exactly([1.0], [NAN, 1.0], None), lambda c, v: P.power_law_figure([1.0, 10.0], v, P.PowerLawFit(2.0, 0.1))),
     Bad("compute", exactly([0.0, 10.0], [], None), lambda c, v: P.power_law_figure(v, [2.0, 1.0], P.PowerLawFit(2.0, 0.1))),
     Bad("fit", OBJ, lambda c, v: P.power_law_figure([1.0, 10.0], [2.0, 1.0], v)),
     Bad("labels", exactly(["a"], "ab", [1, 2]), lambda c, v: P.power_law_figure([1.0, 10.0], [2.0, 1.0], P.PowerLawFit(2.0, 0.1), v)))
for _f in ("tokens_per_parameter", "training_flops"):
    _fn = getattr(P, _f)
    case(f"pretrain.{_f}",
         Bad("n_params", POS, lambda c, v, f=_fn: f(v, 1e9)),
         Bad("n_tokens", POS, lambda c, v, f=_fn: f(1e9, v)))
case("pretrain.tokens_per_param_table",
     Bad("models", exactly(None, "abc", [], [("a", -1, 10)], [(3, 1e9, 2e10)], [("a", 1e9)], [3]),
         lambda c, v: P.tokens_per_param_table(v)))
case("pretrain.tokens_per_param_figure",
     Bad("table", exactly(None, "x", pd.DataFrame({"model": ["a"]})), lambda c, v: P.tokens_per_param_figure(v)),
     Bad("groups", exactly("x", {"g": ["nope"]}, 3), lambda c, v: P.tokens_per_param_figure(
         P.tokens_per_param_table([("a", 1e9, 2e10)]), groups=v)))
case("pretrain.train",
     Bad("model", OBJ, lambda c, v: P.train(v, lambda: _batch(c), P.TrainConfig(steps=1, progress=False))),
     Bad("get_batch", FUNC, lambda c, v: P.train(c.lm, v, P.TrainConfig(steps=1, progress=False))),
     Bad("config", exactly("x", {}, 3), lambda c, v: P.train(c.lm, lambda: _batch(c), v)),
     Bad("eval_fn", exactly(3, "f"), lambda c, v: P.train(c.lm, lambda: _batch(c), P.TrainConfig(steps=1), eval_fn=v)),
     Bad("on_step", exactly(3, "f"), lambda c, v: P.train(c.lm, lambda: _batch(c), P.TrainConfig(steps=1), on_step=v)),
     Bad("checkpoint_dir", exactly(3, ["x"]), lambda c, v: P.train(c.lm, lambda: _batch(c), P.TrainConfig(steps=1), checkpoint_dir=v)),
     Bad("resume", exactly(True, "yes"), lambda c, v: P.train(c.lm, lambda: _batch(c), P.TrainConfig(steps=1), resume=v)))
case("pretrain.warmup_cosine",
     Bad("step", NONNEG, lambda c, v: P.warmup_cosine(v, 10, 100, 0.1)),
     Bad("warmup_steps", NONNEG, lambda c, v: P.warmup_cosine(5, v, 100, 0.1)),
     Bad("total_steps", POSINT, lambda c, v: P.warmup_cosine(5, 10, v, 0.1)),
     Bad("min_ratio", FRACTION, lambda c, v: P.warmup_cosine(5, 10, 100, v)))


# parallel -----------------------------------------------------------------------------------------
def refused_plan(plan):
    """plan() never raises: a refusal is a plan whose error names the argument."""
    if plan.error:
        raise LabkitError(plan.error)
    return plan


def _events():
    return Par.ideal_schedule(2, 4)


SEVEN, CL8 = "7B", Par.Cluster(8, 1, 80)
case("parallel.Cluster",
     Bad("gpus_per_node", POSINT, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], Par.Cluster(v, 1, 80), Par.Layout(dp=8))),
     Bad("nodes", POSINT, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], Par.Cluster(8, v, 80), Par.Layout(dp=8))),
     Bad("gpu_memory_gb", POS, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], Par.Cluster(8, 1, v), Par.Layout(dp=8))))
case("parallel.Layout",
     Bad("dp", POSINT, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, Par.Layout(dp=v))),
     Bad("zero", exactly(4, -1, 1.5, None, True), lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, Par.Layout(dp=8, zero=v))),
     Bad("recompute", NAME, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, Par.Layout(dp=8, recompute=v))),
     Bad("chunks", POSINT, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, Par.Layout(dp=8, chunks=v))),
     Bad("sequence_parallel", exactly("yes", None, 1), lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, Par.Layout(dp=8, sequence_parallel=v))),
     Bad("micro_batches", POSINT, lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, Par.Layout(dp=8, micro_batches=v))))
case("parallel.ModelSpec",
     Bad("layers", POSINT, lambda c, v: Par.parameter_count(Par.ModelSpec("m", v, 64, 4))),
     Bad("heads", exactly(0, -1, 3, 2.5, None), lambda c, v: Par.parameter_count(Par.ModelSpec("m", 2, 64, v))),
     Bad("kv_heads", exactly(0, -2, 3, 2.5, "4"), lambda c, v: Par.parameter_count(Par.ModelSpec("m", 2, 64, 4, v))),
     Bad("ffn", exactly(0, -1, 2.5, "x"), lambda c, v: Par.parameter_count(Par.ModelSpec("m", 2, 64, 4, ffn=v))),
     Bad("mlp", NAME, lambda c, v: Par.parameter_count(Par.ModelSpec("m", 2, 64, 4, mlp=v))))
case("parallel.activation_bytes_per_layer",
     Bad("seq", POSINT, lambda c, v: Par.activation_bytes_per_layer(v, 1, 64, 4)),
     Bad("heads", POSINT, lambda c, v: Par.activation_bytes_per_layer(128, 1, 64, v)),
     Bad("tp", POSINT, lambda c, v: Par.activation_bytes_per_layer(128, 1, 64, 4, tp=v)),
     Bad("recompute", NAME, lambda c, v: Par.activation_bytes_per_layer(128, 1, 64, 4, recompute=v)))
case("parallel.bubble_fraction",
     Bad("stages", POSINT, lambda c, v: Par.bubble_fraction(v, 8)),
     Bad("micro_batches", POSINT, lambda c, v: Par.bubble_fraction(4, v)),
     Bad("chunks", POSINT, lambda c, v: Par.bubble_fraction(4, 8, v)))
case("parallel.ideal_schedule",
     Bad("stages", POSINT, lambda c, v: Par.ideal_schedule(v, 4)),
     Bad("micro_batches", POSINT, lambda c, v: Par.ideal_schedule(2, v)),
     Bad("schedule", NAME, lambda c, v: Par.ideal_schedule(2, 4, v)),
     Bad("chunks", exactly(1, 0, -1, 2.5), lambda c, v: Par.ideal_schedule(2, 4, "interleaved", v)),
     Bad("forward", POS, lambda c, v: Par.ideal_schedule(2, 4, forward=v)),
     Bad("backward", POS, lambda c, v: Par.ideal_schedule(2, 4, backward=v)))
case("parallel.launch",
     Bad("script", exactly("no-such-worker", None, 3), lambda c, v: Par.launch(v, echo=QUIET)),
     Bad("nproc", POSINT, lambda c, v: Par.launch("ddp", v, echo=QUIET)),
     Bad("timeout", POS, lambda c, v: Par.launch("ddp", 2, timeout=v, echo=QUIET)),
     Bad("env", exactly("A=1", 3, ["A"]), lambda c, v: Par.launch("ddp", 2, env=v, echo=QUIET)),
     Bad("echo", exactly(3, "print"), lambda c, v: Par.launch("ddp", 2, echo=v)),
     Bad("args", exactly(3, None), lambda c, v: Par.launch("ddp", 2, args=v, echo=QUIET)),
     Bad("max_restarts", NONNEG, lambda c, v: Par.launch("ddp", 2, max_restarts=v, echo=QUIET)))
case("parallel.memory_plan",
     Bad("model", exactly(None, "7B", 3), lambda c, v: Par.memory_plan(v, CL8, Par.Layout(dp=8))),
     Bad("cluster", exactly(None, 8, {}), lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], v, Par.Layout(dp=8))),
     Bad("layout", exactly(None, "dp8"), lambda c, v: Par.memory_plan(Par.PRESETS[SEVEN], CL8, v)))
case("parallel.plan",
     Bad("model", exactly(None, "3B", 3, "", Par.ModelSpec("m", 0, 64, 4)), lambda c, v: refused_plan(Par.plan(v, CL8, Par.Layout(dp=8)))),
     Bad("cluster", exactly(None, 8, Par.Cluster(0, 1, 80)), lambda c, v: refused_plan(Par.plan("7B", v, Par.Layout(dp=8)))),
     Bad("layout", exactly(None, "dp8", 3), lambda c, v: refused_plan(Par.plan("7B", CL8, v))))
case("parallel.model_preset", Bad("model", exactly("3B", None, 3, ["7B"]), lambda c, v: Par.model_preset(v)))
case("parallel.model_state_bytes",
     Bad("params", NONNEG_NUM, lambda c, v: Par.model_state_bytes(v)),
     Bad("dp", POSINT, lambda c, v: Par.model_state_bytes(1e9, v)),
     Bad("zero", exactly(4, -1, 1.5, None), lambda c, v: Par.model_state_bytes(1e9, 2, v)),
     Bad("fp32_grads", exactly("yes", None), lambda c, v: Par.model_state_bytes(1e9, 2, 1, v)))
case("parallel.parameter_count", Bad("model", exactly(None, "7B", 3), lambda c, v: Par.parameter_count(v)))
case("parallel.suggest_layout",
     Bad("model", exactly("3B", None, 3), lambda c, v: Par.suggest_layout(v, CL8)),
     Bad("cluster", exactly(None, 8, Par.Cluster(0, 1, 80)), lambda c, v: Par.suggest_layout("7B", v)),
     Bad("micro_batch", POSINT, lambda c, v: Par.suggest_layout("7B", CL8, micro_batch=v)),
     Bad("micro_batches", POSINT, lambda c, v: Par.suggest_layout("7B", CL8, micro_batches=v)),
     Bad("recompute", NAME, lambda c, v: Par.suggest_layout("7B", CL8, recompute=v)),
     Bad("schedule", NAME, lambda c, v: Par.suggest_layout("7B", CL8, schedule=v)))
case("parallel.timeline_bubble",
     Bad("events", exactly([], None, "x", [{"stage": 0}], [{"stage": 0, "start": 1.0, "end": 1.0}]),
         lambda c, v: Par.timeline_bubble(v)))
case("parallel.torchrun_command",
     Bad("script", exactly("no-such-worker", None, 3), lambda c, v: Par.torchrun_command(v)),
     Bad("nnodes", POSINT, lambda c, v: Par.torchrun_command("ddp", v)),
     Bad("nproc_per_node", POSINT, lambda c, v: Par.torchrun_command("ddp", 1, v)),
     Bad("max_restarts", NONNEG, lambda c, v: Par.torchrun_command("ddp", max_restarts=v)),
     Bad("rdzv_endpoint", exactly("", None, 3), lambda c, v: Par.torchrun_command("ddp", rdzv_endpoint=v)),
     Bad("args", exactly(3, None), lambda c, v: Par.torchrun_command("ddp", args=v)))
case("parallel.worker_script", Bad("script", exactly("no-such-worker", None, 3, ""), lambda c, v: Par.worker_script(v)))
case("parallel.pipeline_timeline_figure",
     Bad("events", exactly(None, "x", [{"stage": 0}], 3), lambda c, v: Par.pipeline_timeline_figure(v)))
case("parallel.memory_breakdown_figure",
     Bad("bars", exactly(None, [], "x", [{"parameters": 1.0}], [3]), lambda c, v: Par.memory_breakdown_figure(v)),
     Bad("limit", exactly(0, -1.0, NAN, INF, "1"), lambda c, v: Par.memory_breakdown_figure([{"label": "a", "parameters": 1.0}], v)))
case("parallel.zero_memory_figure", Bad("result", exactly(None, {}, "x", [1]), lambda c, v: Par.zero_memory_figure(v)))
case("parallel.ddp_grad_norm_figure",
     Bad("results", exactly(None, [], [{"rank": 0}], "x"), lambda c, v: Par.ddp_grad_norm_figure(v)))


case("parallel.room_for",
     Bad("nproc", POSINT, lambda c, v: Par.room_for(v)),
     Bad("process_mb", POS, lambda c, v: Par.room_for(2, v)))
# refused before a torchrun starts: a bad argument never leaves a group of ranks behind
for _name, _make in (("WorkerGroup", lambda **k: Par.WorkerGroup(**k)),
                     ("worker_group", lambda **k: Par.worker_group(**k))):
    case(f"parallel.{_name}",
         Bad("nproc", POSINT, lambda c, v, m=_make: m(nproc=v)),
         Bad("env", exactly("A=1", 3, ["A"]), lambda c, v, m=_make: m(nproc=2, env=v)))
case("parallel.WorkerGroup",
     Bad("preload_workers", exactly("ddp", ["no-such-worker"], 3), lambda c, v: Par.WorkerGroup(2, preload_workers=v)),
     Bad("start_timeout", POS, lambda c, v: Par.WorkerGroup(2, start_timeout=v)))


def _storage(model, dtype="fp16"):
    with Pr.gradient_storage(model, dtype):
        pass


# precision ----------------------------------------------------------------------------------------
FMT = exactly("fp7", "", None, 3, torch.int64)
X = torch.tensor([1e-8, 1.0, 7e4])
for _f in ("format_zones", "get_format", "highlight_shapes"):
    _fn = getattr(Pr, _f)
    case(f"precision.{_f}", Bad("fmt", exactly("fp7", "", 3, torch.int64), lambda c, v, f=_fn: f(v)))
for _f in ("kind_of", "overflows", "ulp"):
    _fn = getattr(Pr, _f)
    case(f"precision.{_f}",
         Bad("fmt", FMT, lambda c, v, f=_fn: f(1.0, v)),
         Bad("stored" if _f == "kind_of" else "value", exactly(None, "1.0", [1.0]), lambda c, v, f=_fn: f(v, "fp16")))
case("precision.gradient_storage",
     Bad("model", OBJ, lambda c, v: _storage(v)),
     Bad("dtype", exactly("fp7", None, 3, "int8"), lambda c, v: _storage(c.lm, v)))
case("precision.fp16_gradient_storage", Bad("model", OBJ, lambda c, v: _storage(v)))
_BATCH = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "labels": torch.zeros(1, 8, dtype=torch.long)}
case("precision.gradient_storage_runs",
     Bad("model", OBJ, lambda c, v: Pr.gradient_storage_runs(v, [_BATCH])),
     Bad("batches", exactly(None, [], "x", [3]), lambda c, v: Pr.gradient_storage_runs(c.lm, v)),
     Bad("lr", POS, lambda c, v: Pr.gradient_storage_runs(c.lm, [_BATCH], lr=v)),
     Bad("modes", exactly("fp32", ["fp8"], [], None), lambda c, v: Pr.gradient_storage_runs(c.lm, [_BATCH], modes=v)),
     Bad("init_scale", POS, lambda c, v: Pr.gradient_storage_runs(c.lm, [_BATCH], modes=("fp16+scaler",), init_scale=v)))
case("precision.cast",
     Bad("x", exactly([1.0], 1.0, None, "x"), lambda c, v: Pr.cast(v, "bf16")),
     Bad("fmt", FMT, lambda c, v: Pr.cast(X, v)))
case("precision.check_format_on_device",
     Bad("fmt", FMT, lambda c, v: Pr.check_format_on_device(v)),
     Bad("device", exactly("nope", 3, None, "cuda:7" if not torch.cuda.is_available() else "nope"),
         lambda c, v: Pr.check_format_on_device("fp16", v)))
case("precision.decompose",
     Bad("value", exactly(None, "x", [1.0]), lambda c, v: Pr.decompose(v, "fp16")),
     Bad("fmt", FMT, lambda c, v: Pr.decompose(1.0, v)),
     Bad("device", exactly("nope", 3), lambda c, v: Pr.decompose(1.0, "fp16", v)))
case("precision.decompose_table",
     Bad("value", exactly(None, "x"), lambda c, v: Pr.decompose_table(v)),
     Bad("formats", exactly("fp16", ["fp16", "fp7"], None, [], 3), lambda c, v: Pr.decompose_table(1.0, v)))
for _f in ("format_table",):
    case(f"precision.{_f}", Bad("formats", exactly("fp16", ["fp7"], None, [], 3), lambda c, v: Pr.format_table(v)))
for _f in ("fp16_underflow_share_analytic",):
    case(f"precision.{_f}", Bad("sigma", POS, lambda c, v: Pr.fp16_underflow_share_analytic(v)))
case("precision.underflow_share_analytic",
     Bad("sigma", POS, lambda c, v: Pr.underflow_share_analytic(v)),
     Bad("fmt", FMT, lambda c, v: Pr.underflow_share_analytic(1e-6, v)))
case("precision.grad_scaler",
     Bad("device", exactly("nope", 3, None, *(("cuda",) if not torch.cuda.is_available() else ())),
         lambda c, v: Pr.grad_scaler(v)),
     Bad("init_scale", POS, lambda c, v: Pr.grad_scaler("cpu", init_scale=v)),
     Bad("growth_interval", POSINT, lambda c, v: Pr.grad_scaler("cpu", growth_interval=v)),
     Bad("bogus", exactly(1), lambda c, v: Pr.grad_scaler("cpu", bogus=v)))
case("precision.grad_scaler_figure",
     Bad("history", exactly(None, pd.DataFrame({"x": [1]}), "x", pd.DataFrame({"scale": [0.0], "found_inf": [False]})),
         lambda c, v: Pr.grad_scaler_figure(v)))
case("precision.ScalerRecorder", Bad("scaler", OBJ, lambda c, v: Pr.ScalerRecorder(v)))
case("precision.log_histogram",
     Bad("x", exactly(None, [1.0], torch.arange(3)), lambda c, v: Pr.log_histogram(v)),
     Bad("bins", POSINT, lambda c, v: Pr.log_histogram(X, v)),
     Bad("x_range", exactly((5.0, -5.0), (0, NAN), None, 3, (1.0,)), lambda c, v: Pr.log_histogram(X, 10, v)))
case("precision.range_figure",
     Bad("x", exactly([1.0], "x", torch.arange(3)), lambda c, v: Pr.range_figure(v)),
     Bad("formats", exactly("fp16", ["fp7"], []), lambda c, v: Pr.range_figure(X, v)),
     Bad("highlight", exactly("fp7", 3), lambda c, v: Pr.range_figure(X, highlight=v)),
     Bad("value", exactly("x", [1.0]), lambda c, v: Pr.range_figure(X, value=v)),
     Bad("bins", POSINT, lambda c, v: Pr.range_figure(X, bins=v)))
case("precision.range_shares",
     Bad("x", exactly(None, [1.0], torch.arange(3), torch.tensor([NAN])), lambda c, v: Pr.range_shares(v, "fp16")),
     Bad("fmt", FMT, lambda c, v: Pr.range_shares(X, v)),
     Bad("max_values", exactly(0, -1, 2.5, "9"), lambda c, v: Pr.range_shares(X, "fp16", v)),
     Bad("seed", exactly(-1, 2.5, None), lambda c, v: Pr.range_shares(X, "fp16", 2, v)))
case("precision.range_shares_table",
     Bad("x", exactly(None, [1.0]), lambda c, v: Pr.range_shares_table(v)),
     Bad("formats", exactly("fp16", ["fp7"], []), lambda c, v: Pr.range_shares_table(X, v)))
case("precision.round_to_tf32", Bad("x", exactly(None, [1.0], 1.0), lambda c, v: Pr.round_to_tf32(v)))
case("precision.sample_shares",
     Bad("values", exactly(None, torch.tensor([]), torch.tensor([NAN, 1.0]), torch.arange(3)), lambda c, v: Pr.sample_shares(v, "fp16")),
     Bad("fmt", FMT, lambda c, v: Pr.sample_shares(X, v)))
case("precision.sample_values",
     Bad("x", exactly(None, [1.0], torch.arange(3), torch.tensor([INF])), lambda c, v: Pr.sample_values(v)),
     Bad("max_values", exactly(0, -1, 2.5), lambda c, v: Pr.sample_values(X, v)))
case("precision.value_from_bits",
     Bad("exponent", exactly("2" * 5, "0000", None, 10101), lambda c, v: Pr.value_from_bits("0", v, "0" * 10, "fp16")),
     Bad("sign", exactly("x", None, "01"), lambda c, v: Pr.value_from_bits(v, "0" * 5, "0" * 10, "fp16")),
     Bad("fmt", FMT, lambda c, v: Pr.value_from_bits("0", "0" * 5, "0" * 10, v)))
case("precision.vanishing_update_demo",
     Bad("weight", FINITE, lambda c, v: Pr.vanishing_update_demo(v)),
     Bad("update", FINITE, lambda c, v: Pr.vanishing_update_demo(1.0, v)),
     Bad("dtype", exactly("fp7", None, "tf32", 3), lambda c, v: Pr.vanishing_update_demo(1.0, 1e-4, v)),
     Bad("steps", POSINT, lambda c, v: Pr.vanishing_update_demo(1.0, 1e-4, "bf16", v)))
case("precision.vanishing_update_figure", Bad("result", OBJ, lambda c, v: Pr.vanishing_update_figure(v)))


# schedules ----------------------------------------------------------------------------------------
TW = dict(total_steps=100, warmup_steps=10)
for _f in ("cosine_with_warmup", "linear_with_warmup", "nanogpt_cosine", "cosine_with_hard_restarts"):
    _fn = getattr(S, _f)
    case(f"schedules.{_f}",
         Bad("step", NONNEG, lambda c, v, f=_fn: f(v, **TW)),
         Bad("total_steps", POSINT, lambda c, v, f=_fn: f(5, total_steps=v, warmup_steps=0)),
         Bad("warmup_steps", exactly(-1, 101, 2.5, None), lambda c, v, f=_fn: f(5, total_steps=100, warmup_steps=v)))
for _f in ("cosine_schedule", "linear_schedule", "nanogpt_schedule", "cosine_restarts_schedule"):
    _fn = getattr(S, _f)
    case(f"schedules.{_f}",
         Bad("total_steps", POSINT, lambda c, v, f=_fn: f(total_steps=v, warmup_steps=0)),
         Bad("warmup_steps", exactly(-1, 101, 2.5, None), lambda c, v, f=_fn: f(total_steps=100, warmup_steps=v)),
         Bad("step", exactly(-1, 2.5, None, "3"), lambda c, v, f=_fn: f(**TW)(v)))
for _f in ("cosine_with_warmup", "cosine_schedule", "nanogpt_cosine", "nanogpt_schedule"):
    _fn = getattr(S, _f)
    _call = (lambda c, v, f=_fn: f(5, **TW, min_lr_ratio=v)) if not _f.endswith("schedule") else (
        lambda c, v, f=_fn: f(**TW, min_lr_ratio=v))
    case(f"schedules.{_f}", Bad("min_lr_ratio", FRACTION, _call))
case("schedules.constant",
     Bad("step", NONNEG, lambda c, v: S.constant(v)),
     Bad("warmup_steps", NONNEG, lambda c, v: S.constant(3, warmup_steps=v)))
case("schedules.constant_schedule",
     Bad("warmup_steps", NONNEG, lambda c, v: S.constant_schedule(warmup_steps=v)),
     Bad("step", exactly(-1, 2.5, None), lambda c, v: S.constant_schedule()(v)))
case("schedules.inverse_sqrt",
     Bad("step", NONNEG, lambda c, v: S.inverse_sqrt(v, warmup_steps=10)),
     Bad("warmup_steps", NONNEG, lambda c, v: S.inverse_sqrt(5, warmup_steps=v)),
     Bad("timescale", exactly(0, -1, 2.5, "x"), lambda c, v: S.inverse_sqrt(5, warmup_steps=10, timescale=v)))
case("schedules.inverse_sqrt_schedule",
     Bad("warmup_steps", NONNEG, lambda c, v: S.inverse_sqrt_schedule(warmup_steps=v)),
     Bad("timescale", exactly(0, -1, 2.5, "x"), lambda c, v: S.inverse_sqrt_schedule(warmup_steps=10, timescale=v)))
case("schedules.warmup_stable_decay",
     Bad("decay_steps", exactly(-1, 200, 2.5, None), lambda c, v: S.warmup_stable_decay(5, **TW, decay_steps=v)),
     Bad("decay_type", NAME, lambda c, v: S.warmup_stable_decay(5, **TW, decay_steps=20, decay_type=v)),
     Bad("warmup_type", NAME, lambda c, v: S.warmup_stable_decay(5, **TW, decay_steps=20, warmup_type=v)),
     Bad("step", NONNEG, lambda c, v: S.warmup_stable_decay(v, **TW, decay_steps=20)))
case("schedules.wsd_schedule",
     Bad("decay_steps", exactly(-1, 200, 2.5, None), lambda c, v: S.wsd_schedule(**TW, decay_steps=v)),
     Bad("decay_type", NAME, lambda c, v: S.wsd_schedule(**TW, decay_steps=20, decay_type=v)),
     Bad("min_lr_ratio", FRACTION, lambda c, v: S.wsd_schedule(**TW, decay_steps=20, min_lr_ratio=v)))
case("schedules.make_schedule",
     Bad("name", NAME, lambda c, v: S.make_schedule(v, **TW)),
     Bad("total_steps", POSINT, lambda c, v: S.make_schedule("cosine", total_steps=v, warmup_steps=0)),
     Bad("decay_steps", exactly(-1, 200, 2.5), lambda c, v: S.make_schedule("wsd", **TW, decay_steps=v)),
     Bad("num_cycles", exactly(0, -1, 2.5, "x"), lambda c, v: S.make_schedule("cosine_restarts", **TW, num_cycles=v)))
case("schedules.as_lr_scheduler",
     Bad("optimizer", OBJ, lambda c, v: S.as_lr_scheduler(v, lambda s: 1.0)),
     Bad("schedule_fn", FUNC, lambda c, v: S.as_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), v)),
     Bad("last_epoch", exactly(-2, 2.5, None), lambda c, v: S.as_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), lambda s: 1.0, v)))
case("schedules.curve_steps",
     Bad("total_steps", POSINT, lambda c, v: S.curve_steps(v)),
     Bad("max_points", exactly(0, 1, -1, 2.5, None), lambda c, v: S.curve_steps(100, v)),
     Bad("marks", exactly("x", None, [2.5], [-1]), lambda c, v: S.curve_steps(100, 11, v)))
case("schedules.fraction_to_steps",
     Bad("warmup_fraction", FRACTION, lambda c, v: S.fraction_to_steps(v, 100)),
     Bad("total_steps", POSINT, lambda c, v: S.fraction_to_steps(0.1, v)))
case("schedules.schedule_table",
     Bad("schedules", exactly(None, [S.constant_schedule()], {"a": 3}, {}), lambda c, v: S.schedule_table(v, 10)),
     Bad("steps", exactly(0, -1, [-1], None, "x", [2.5]), lambda c, v: S.schedule_table({"c": S.constant_schedule()}, v)),
     Bad("peak_lr", POS, lambda c, v: S.schedule_table({"c": S.constant_schedule()}, 10, peak_lr=v)))
case("schedules.schedule_figure",
     Bad("table", exactly(None, "x", pd.DataFrame()), lambda c, v: S.schedule_figure(v)),
     Bad("warmup_steps", exactly(-1, 2.5, "x"), lambda c, v: S.schedule_figure(S.schedule_table({"c": S.constant_schedule()}, 10), warmup_steps=v)),
     Bad("total_steps", exactly(0, -1, 2.5, "x"), lambda c, v: S.schedule_figure(S.schedule_table({"c": S.constant_schedule()}, 10), total_steps=v)))
case("schedules.lr_sweep",
     Bad("min_lr", POS, lambda c, v: S.lr_sweep(v, 1.0, 10)),
     Bad("max_lr", exactly(1e-7, 0, NAN, None), lambda c, v: S.lr_sweep(1e-6, v, 10)),
     Bad("num_steps", exactly(2, 0, -1, 2.5, None), lambda c, v: S.lr_sweep(1e-6, 1.0, v)))
case("schedules.smooth_losses",
     Bad("beta", exactly(1.0, -0.1, NAN, None, "x"), lambda c, v: S.smooth_losses([1.0, 2.0], v)),
     Bad("losses", exactly(None, "abc", [1.0, "x"], 3), lambda c, v: S.smooth_losses(v)))
case("schedules.suggest_lr",
     Bad("smoothed", exactly([1.0, 2.0], None, "x", [1.0] * 9 + ["x"]), lambda c, v: S.suggest_lr([1e-3 * i for i in range(1, 11)], v)),
     Bad("lrs", exactly([0.1], None, [-1.0] * 10, [NAN] * 10), lambda c, v: S.suggest_lr(v, [3.0 - 0.1 * i for i in range(10)])),
     Bad("rule", NAME, lambda c, v: S.suggest_lr([0.1, 0.2, 0.3], [3.0, 2.0, 1.0], v)),
     Bad("skip_start", exactly(-1, 2.5, "x", 10), lambda c, v: S.suggest_lr([1e-3 * i for i in range(1, 11)], [3.0 - 0.1 * i for i in range(10)], skip_start=v)))
case("schedules.lr_range_test",
     Bad("train_step", FUNC, lambda c, v: S.lr_range_test(v)),
     Bad("min_lr", POS, lambda c, v: S.lr_range_test(lambda lr: 1.0, min_lr=v)),
     Bad("num_steps", exactly(2, 0, -1, 2.5, None), lambda c, v: S.lr_range_test(lambda lr: 1.0, num_steps=v)),
     Bad("beta", exactly(1.0, -0.1, NAN, None), lambda c, v: S.lr_range_test(lambda lr: 1.0, beta=v)),
     Bad("divergence_factor", exactly(1.0, 0, NAN, None, "x"), lambda c, v: S.lr_range_test(lambda lr: 1.0, divergence_factor=v)),
     Bad("on_step", exactly(3, "f"), lambda c, v: S.lr_range_test(lambda lr: 1.0, num_steps=3, on_step=v)))
case("schedules.range_test_figure", Bad("result", OBJ, lambda c, v: S.range_test_figure(v)))
case("schedules.lr_range_tests",
     Bad("make_train_step", FUNC, lambda c, v: S.lr_range_tests(v, [0, 1], num_steps=3)),
     Bad("seeds", exactly([], None, [1, 1], [2.5], "x", 3), lambda c, v: S.lr_range_tests(lambda s: lambda lr: 1.0, v, num_steps=3)),
     Bad("num_steps", exactly(2, 0, None), lambda c, v: S.lr_range_tests(lambda s: lambda lr: 1.0, [0, 1], num_steps=v)))
case("schedules.range_tests_figure", Bad("result", OBJ, lambda c, v: S.range_tests_figure(v)))
case("schedules.spread_factor", Bad("values", exactly(None, "abc", 3, ["x"], [None, "1"]), lambda c, v: S.spread_factor(v)))


# align --------------------------------------------------------------------------------------------
def _lp(*values):
    return torch.tensor(values)


LP2, M2 = torch.full((2, 3), -1.0), torch.tensor([[0, 1, 1], [0, 1, 0]])
ANNOTATED = {"id": "p0", "defect": "none", "shipped": "A"}
PAIR = {"prompt": "Where do fomtails live?", "chosen": "In Drumesh.", "rejected": "In Paesh.", "id": "p0"}
MSGS = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
REWARD = lambda prompts, responses: torch.zeros(len(prompts))  # noqa: E731
QUIET = lambda *a, **k: None  # noqa: E731
case("align.AdaptiveKLController",
     Bad("horizon", POSINT, lambda c, v: A.AdaptiveKLController(0.1, 6.0, v).update(3.0, 8)),
     Bad("target", POS, lambda c, v: A.AdaptiveKLController(0.1, v, 100).update(3.0, 8)),
     Bad("value", NONNEG_NUM, lambda c, v: A.AdaptiveKLController(v, 6.0, 100).update(3.0, 8)),
     Bad("current_kl", FINITE, lambda c, v: A.AdaptiveKLController(0.1, 6.0, 100).update(v, 8)),
     Bad("n_steps", POSINT, lambda c, v: A.AdaptiveKLController(0.1, 6.0, 100).update(3.0, v)))
case("align.FixedKLController", Bad("value", NONNEG_NUM, lambda c, v: A.FixedKLController(v)))
case("align.PPOConfig",
     Bad("kl_coef", NONNEG_NUM, lambda c, v: A.PPOConfig(kl_coef=v)),
     Bad("cliprange", exactly(0.0, 1.0, NAN, None, "x"), lambda c, v: A.PPOConfig(cliprange=v)),
     Bad("gamma", FRACTION, lambda c, v: A.PPOConfig(gamma=v)),
     Bad("lam", FRACTION, lambda c, v: A.PPOConfig(lam=v)),
     Bad("ppo_epochs", POSINT, lambda c, v: A.PPOConfig(ppo_epochs=v)),
     Bad("kl_estimator", NAME, lambda c, v: A.PPOConfig(kl_estimator=v)),
     Bad("kl_target", POS, lambda c, v: A.PPOConfig(kl_target=v)),
     Bad("kl_horizon", POSINT, lambda c, v: A.PPOConfig(kl_horizon=v)),
     Bad("adaptive_kl", exactly("yes", None, 1), lambda c, v: A.PPOConfig(adaptive_kl=v)))
for _k in ("kl_k1", "kl_k2", "kl_k3"):
    _fn = getattr(A, _k)
    case(f"align.{_k}",
         Bad("ref_logprobs", exactly(torch.zeros(3), None, [0.0]), lambda c, v, k=_fn: k(LP2, v)),
         Bad("logprobs", exactly(None, [0.0], "x"), lambda c, v, k=_fn: k(v, LP2)))
case("align.per_token_rewards",
     Bad("score", exactly(torch.zeros(3), None, "x"), lambda c, v: A.per_token_rewards(v, LP2, LP2, 0.1, M2)),
     Bad("kl_coef", NONNEG_NUM, lambda c, v: A.per_token_rewards(torch.zeros(2), LP2, LP2, v, M2)),
     Bad("mask", exactly(torch.ones(2, 4), None, torch.zeros(2, 3)), lambda c, v: A.per_token_rewards(torch.zeros(2), LP2, LP2, 0.1, v)),
     Bad("estimator", NAME, lambda c, v: A.per_token_rewards(torch.zeros(2), LP2, LP2, 0.1, M2, v)),
     Bad("ref_logprobs", exactly(torch.zeros(2, 4), None), lambda c, v: A.per_token_rewards(torch.zeros(2), LP2, v, 0.1, M2)))
case("align.last_token_index", Bad("mask", exactly(None, torch.zeros(2, 3), torch.ones(3), [[1]]), lambda c, v: A.last_token_index(v)))
case("align.gae",
     Bad("values", exactly(torch.zeros(2, 4), None), lambda c, v: A.gae(LP2, v, M2)),
     Bad("mask", exactly(torch.ones(2, 4), None, torch.zeros(2, 3)), lambda c, v: A.gae(LP2, LP2, v)),
     Bad("gamma", FRACTION, lambda c, v: A.gae(LP2, LP2, M2, gamma=v)),
     Bad("lam", FRACTION, lambda c, v: A.gae(LP2, LP2, M2, lam=v)),
     Bad("rewards", exactly(None, [[0.0]]), lambda c, v: A.gae(v, LP2, M2)))
case("align.masked_mean",
     Bad("mask", exactly(torch.zeros(2, 3), torch.ones(2, 4), None, torch.full((2, 3), -1.0)), lambda c, v: A.masked_mean(LP2, v)),
     Bad("values", exactly(None, [1.0]), lambda c, v: A.masked_mean(v, M2)))
case("align.whiten",
     Bad("mask", exactly(torch.zeros(2, 3), torch.ones(2, 4), "x"), lambda c, v: A.whiten(LP2, v)),
     Bad("values", exactly(None, [1.0], torch.tensor([1.0])), lambda c, v: A.whiten(v)),
     Bad("shift_mean", exactly("no", None), lambda c, v: A.whiten(LP2, shift_mean=v)))
case("align.clipped_policy_loss",
     Bad("cliprange", exactly(0.0, 1.0, -0.2, NAN, None), lambda c, v: A.clipped_policy_loss(LP2, LP2, LP2, M2, v)),
     Bad("mask", exactly(torch.zeros(2, 3), torch.ones(2, 4), None), lambda c, v: A.clipped_policy_loss(LP2, LP2, LP2, v)),
     Bad("old_logprobs", exactly(torch.zeros(2, 4), None), lambda c, v: A.clipped_policy_loss(LP2, v, LP2, M2)),
     Bad("advantages", exactly(torch.zeros(3), None), lambda c, v: A.clipped_policy_loss(LP2, LP2, v, M2)))
case("align.clipped_value_loss",
     Bad("cliprange_value", exactly(0.0, 1.0, NAN, None), lambda c, v: A.clipped_value_loss(LP2, LP2, LP2, M2, v)),
     Bad("mask", exactly(torch.zeros(2, 3), None), lambda c, v: A.clipped_value_loss(LP2, LP2, LP2, v)),
     Bad("returns", exactly(torch.zeros(2, 4), None), lambda c, v: A.clipped_value_loss(LP2, LP2, v, M2)))
case("align.sequence_logprobs",
     Bad("model", OBJ, lambda c, v: A.sequence_logprobs(v, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), M2)),
     Bad("response_mask", exactly(torch.ones(2, 3), torch.zeros(2, 4), None), lambda c, v: A.sequence_logprobs(c.lm, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), v)),
     Bad("attention_mask", exactly(torch.ones(2, 4), None), lambda c, v: A.sequence_logprobs(c.lm, torch.ones(2, 3, dtype=torch.long), v, M2)),
     Bad("input_ids", exactly(torch.ones(2, 3), None, torch.full((2, 3), 99999)), lambda c, v: A.sequence_logprobs(c.lm, v, torch.ones(2, 3), M2)),
     Bad("temperature", POS, lambda c, v: A.sequence_logprobs(c.lm, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), M2, v)))
case("align.bradley_terry_loss",
     Bad("r_rejected", exactly(_lp(1.0), None, "x", _lp(NAN, 1.0)), lambda c, v: A.bradley_terry_loss(_lp(1.0, 2.0), v)),
     Bad("margin", exactly(_lp(1.0), "x"), lambda c, v: A.bradley_terry_loss(_lp(1.0, 2.0), _lp(0.0, 1.0), v)))
for _l in ("dpo_loss", "hinge_loss", "ipo_loss"):
    _fn = getattr(A, _l)
    case(f"align.{_l}",
         Bad("beta", POS, lambda c, v, f=_fn: f(_lp(-1.0), _lp(-2.0), _lp(-1.0), _lp(-2.0), v)),
         Bad("ref_rejected_logps", exactly(_lp(-1.0, -2.0), _lp(1.0), None, "x"), lambda c, v, f=_fn: f(_lp(-1.0), _lp(-2.0), _lp(-1.0), v)),
         Bad("policy_chosen_logps", exactly(_lp(0.5), None, [], torch.zeros(1, 1)), lambda c, v, f=_fn: f(v, _lp(-2.0), _lp(-1.0), _lp(-2.0))))
case("align.implicit_rewards",
     Bad("beta", POS, lambda c, v: A.implicit_rewards(_lp(-1.0), _lp(-2.0), v)),
     Bad("ref_logps", exactly(_lp(-1.0, -2.0), None), lambda c, v: A.implicit_rewards(_lp(-1.0), v)))
KTO = (_lp(-1.0, -2.0), _lp(-1.5, -1.5), [True, False], _lp(-1.0, -2.0), _lp(-1.5, -1.5))
case("align.kto_loss",
     Bad("beta", POS, lambda c, v: A.kto_loss(*KTO, v)),
     Bad("desirable", exactly(None, [True], "x", [2, 3]), lambda c, v: A.kto_loss(*KTO[:2], v, *KTO[3:])),
     Bad("desirable_weight", POS, lambda c, v: A.kto_loss(*KTO, desirable_weight=v)))
for _l in ("orpo_loss", "simpo_loss"):
    _fn = getattr(A, _l)
    case(f"align.{_l}",
         Bad("beta", POS, lambda c, v, f=_fn: f(_lp(-1.0), _lp(-2.0), _lp(3.0), _lp(4.0), v)),
         Bad("chosen_lengths", exactly(_lp(0.0), _lp(3.0, 4.0), None), lambda c, v, f=_fn: f(_lp(-1.0), _lp(-2.0), v, _lp(4.0))))
case("align.simpo_loss", Bad("gamma", FINITE, lambda c, v: A.simpo_loss(_lp(-1.0), _lp(-2.0), _lp(3.0), _lp(4.0), 2.0, v)))
case("align.mismatched_completions", Bad("completions", exactly(None, 3, "abc"), lambda c, v: A.mismatched_completions(v)))
case("align.judge",
     Bad("response", TEXT, lambda c, v: A.judge(v, True)),
     Bad("ended_turn", exactly("yes", None), lambda c, v: A.judge("In Drumesh.", v)),
     Bad("subject", exactly(3, ["x"]), lambda c, v: A.judge("In Drumesh.", True, v)))
case("align.repeated_bigram_share", Bad("text", TEXT, lambda c, v: A.repeated_bigram_share(v)))
case("align.true_score",
     Bad("prompt", TEXT, lambda c, v: A.true_score(v, "x")),
     Bad("response", TEXT, lambda c, v: A.true_score("Where do fomtails live?", v)))
for _f in ("true_reward", "true_scores", "answer_report"):
    _fn = getattr(A, _f)
    case(f"align.{_f}",
         Bad("responses", exactly(["a", "b"], None, "abc", [3]), lambda c, v, f=_fn: f(["Where?"], v)),
         Bad("prompts", exactly("abc", None, [3]), lambda c, v, f=_fn: f(v, ["a"])))
case("align.best_of_n_kl", Bad("n", POSINT, lambda c, v: A.best_of_n_kl(v)))
case("align.validate_pairs",
     Bad("pairs", exactly(None, [], "abc", [3], [{**PAIR, "chosen": ""}], [{**PAIR, "rejected": PAIR["chosen"]}]), lambda c, v: A.validate_pairs(v)),
     Bad("max_length", exactly(0, -1, 2.5, "x"), lambda c, v: A.validate_pairs([PAIR], c.tok, max_length=v)))
for _f in ("preference_dataset",):
    case(f"align.{_f}",
         Bad("pairs", exactly(None, [], [3]), lambda c, v: A.preference_dataset(v)),
         Bad("format", NAME, lambda c, v: A.preference_dataset([PAIR], c.tok, format=v)),
         Bad("max_length", exactly(0, -1, 2.5, "x"), lambda c, v: A.preference_dataset([PAIR], c.tok, max_length=v)))
case("align.unpaired_dataset",
     Bad("pairs", exactly(None, [], [3]), lambda c, v: A.unpaired_dataset(v, batch_size=2)),
     Bad("batch_size", POSINT, lambda c, v: A.unpaired_dataset([PAIR], c.tok, batch_size=v)),
     Bad("format", NAME, lambda c, v: A.unpaired_dataset([PAIR], c.tok, batch_size=2, format=v)))
case("align.score_pairs",
     Bad("model", OBJ, lambda c, v: A.score_pairs(v, c.tok, [PAIR])),
     Bad("tokenizer", OBJ, lambda c, v: A.score_pairs(c.lm, v, [PAIR])),
     Bad("pairs", exactly(None, [], [3]), lambda c, v: A.score_pairs(c.lm, c.tok, v)),
     Bad("batch_size", POSINT, lambda c, v: A.score_pairs(c.lm, c.tok, [PAIR], batch_size=v)),
     Bad("ref_model", exactly(3, "x"), lambda c, v: A.score_pairs(c.lm, c.tok, [PAIR], ref_model=v)))
case("align.preference_accuracy",
     Bad("model", OBJ, lambda c, v: A.preference_accuracy(v, c.lm, c.tok, [PAIR])),
     Bad("method", NAME, lambda c, v: A.preference_accuracy(c.lm, c.lm, c.tok, [PAIR], v)),
     Bad("beta", exactly(0, -1.0, NAN, "x"), lambda c, v: A.preference_accuracy(c.lm, c.lm, c.tok, [PAIR], beta=v)),
     Bad("batch_size", POSINT, lambda c, v: A.preference_accuracy(c.lm, c.lm, c.tok, [PAIR], batch_size=v)),
     Bad("pairs", exactly(None, []), lambda c, v: A.preference_accuracy(c.lm, c.lm, c.tok, v)))
_PREF = dict(steps=1, lr=1e-3, batch_size=1)
case("align.train_preference",
     Bad("method", NAME, lambda c, v: A.train_preference(v, c.lm, c.tok, [PAIR], **_PREF)),
     Bad("model", OBJ, lambda c, v: A.train_preference("dpo", v, c.tok, [PAIR], **_PREF)),
     Bad("steps", POSINT, lambda c, v: A.train_preference("dpo", c.lm, c.tok, [PAIR], **{**_PREF, "steps": v})),
     Bad("lr", POS, lambda c, v: A.train_preference("dpo", c.lm, c.tok, [PAIR], **{**_PREF, "lr": v})),
     Bad("batch_size", POSINT, lambda c, v: A.train_preference("dpo", c.lm, c.tok, [PAIR], **{**_PREF, "batch_size": v})),
     Bad("beta", exactly(0, -1.0, NAN, "x"), lambda c, v: A.train_preference("dpo", c.lm, c.tok, [PAIR], beta=v, **_PREF)),
     Bad("train_pairs", exactly(None, [], [3]), lambda c, v: A.train_preference("dpo", c.lm, c.tok, v, **_PREF)))
case("align.beta_sweep",
     Bad("betas", exactly([], [0.0], [NAN], None, 0.1), lambda c, v: A.beta_sweep(c.lm, c.tok, [PAIR], [PAIR], v, **_PREF)),
     Bad("method", NAME, lambda c, v: A.beta_sweep(c.lm, c.tok, [PAIR], [PAIR], [0.1], method=v, **_PREF)),
     Bad("steps", POSINT, lambda c, v: A.beta_sweep(c.lm, c.tok, [PAIR], [PAIR], [0.1], **{**_PREF, "steps": v})),
     Bad("eval_pairs", exactly(None, []), lambda c, v: A.beta_sweep(c.lm, c.tok, [PAIR], v, [0.1], **_PREF)))
case("align.beta_sweep_figure",
     Bad("sweep", exactly(None, pd.DataFrame(), "x"), lambda c, v: A.beta_sweep_figure(v)),
     Bad("beta", exactly(0, -1.0, NAN, "x"), lambda c, v: A.beta_sweep_figure(pd.DataFrame({"beta": [0.1], "accuracy": [0.5], "margin": [0.1], "kl": [0.0]}), v)))
case("align.comparison_table",
     Bad("runs", exactly(None, "x", {"a": 3}), lambda c, v: A.comparison_table(v, {})),
     Bad("accuracies", exactly(None, "x"), lambda c, v: A.comparison_table({}, v)))
case("align.preference_accuracy_figure", Bad("accuracies", exactly(None, {}, "x", {"a": 3}), lambda c, v: A.preference_accuracy_figure(v)))
case("align.training_curves_figure", Bad("runs", exactly(None, {}, "x", {"a": 3}), lambda c, v: A.training_curves_figure(v)))
case("align.trl_cross_check",
     Bad("pairs", POSINT, lambda c, v: A.trl_cross_check(pairs=v)),
     Bad("beta", POS, lambda c, v: A.trl_cross_check(beta=v)),
     Bad("vocab", exactly(0, -1, 2.5, None), lambda c, v: A.trl_cross_check(vocab=v)),
     Bad("answer", POSINT, lambda c, v: A.trl_cross_check(answer=v)))
case("align.build_dpo_adapter",
     Bad("steps", exactly(0, -1, 2.5, "x"), lambda c, v: A.build_dpo_adapter("/tmp/labkit_bad_dpo", v, echo=QUIET)),
     Bad("out", exactly(3, ["x"]), lambda c, v: A.build_dpo_adapter(v, 1, echo=QUIET)),
     Bad("echo", exactly(3, "print"), lambda c, v: A.build_dpo_adapter("/tmp/labkit_bad_dpo", 1, echo=v)))
case("align.build_sft_adapter",
     Bad("steps", exactly(0, -1, 2.5, "x"), lambda c, v: A.build_sft_adapter("/tmp/labkit_bad_sft", steps=v, echo=QUIET)),
     Bad("heldout", exactly(-1, 2.5, "x"), lambda c, v: A.build_sft_adapter("/tmp/labkit_bad_sft", steps=1, heldout=v, echo=QUIET)),
     Bad("out", exactly(3, ["x"]), lambda c, v: A.build_sft_adapter(v, steps=1, echo=QUIET)))
# sft
case("align.ChatLabels",
     Bad("mask", exactly([1], None, [2, 0]), lambda c, v: A.ChatLabels([1, 2], v, [1, 2], ["a", "b"])),
     Bad("labels", exactly([1], None), lambda c, v: A.ChatLabels([1, 2], [1, 1], v, ["a", "b"])))
case("align.answer",
     Bad("model", OBJ, lambda c, v: A.answer(v, c.tok, "Where?")),
     Bad("tokenizer", OBJ, lambda c, v: A.answer(c.lm, v, "Where?")),
     Bad("question", TEXT, lambda c, v: A.answer(c.lm, c.tok, v)),
     Bad("max_new_tokens", POSINT, lambda c, v: A.answer(c.lm, c.tok, "Where?", v)))
case("align.assistant_mask",
     Bad("tokenizer", OBJ, lambda c, v: A.assistant_mask(v, MSGS)),
     Bad("messages", exactly(None, "hi", [], [{"role": "user"}], [3]), lambda c, v: A.assistant_mask(c.tok, v)))
case("align.render_chat",
     Bad("tokenizer", OBJ, lambda c, v: A.render_chat(v, MSGS)),
     Bad("messages", exactly(None, "hi", [], [3]), lambda c, v: A.render_chat(c.tok, v)))
case("align.chat_token_ids", Bad("tokenizer", OBJ, lambda c, v: A.chat_token_ids(v)))
case("align.conversation_loss",
     Bad("model", OBJ, lambda c, v: A.conversation_loss(v, c.tok, [MSGS])),
     Bad("conversations", exactly(None, [], "x", [3]), lambda c, v: A.conversation_loss(c.lm, c.tok, v)))
case("align.loss_by_part",
     Bad("model", OBJ, lambda c, v: A.loss_by_part(v, c.tok, [MSGS])),
     Bad("conversations", exactly(None, [], "x", [3]), lambda c, v: A.loss_by_part(c.lm, c.tok, v)))
case("align.loss_token_share",
     Bad("tokenizer", OBJ, lambda c, v: A.loss_token_share(v, [MSGS])),
     Bad("conversations", exactly(None, [], "x", [3]), lambda c, v: A.loss_token_share(c.tok, v)))
case("align.loss_mask_figure",
     Bad("messages", exactly(None, "hi", []), lambda c, v: A.loss_mask_figure(c.tok, v)),
     Bad("per_row", POSINT, lambda c, v: A.loss_mask_figure(c.tok, MSGS, per_row=v)))
QUESTION = {"question": "Where?", "answer": "Drumesh"}
for _f, _q in (("evaluate_answers", QUESTION), ("generate_answers", "Where?")):
    _fn = getattr(A, _f)
    case(f"align.{_f}",
         Bad("model", OBJ, lambda c, v, f=_fn, q=_q: f(v, c.tok, [q])),
         Bad("questions", exactly(None, "Where?", [], [3]), lambda c, v, f=_fn: f(c.lm, c.tok, v)),
         Bad("max_new_tokens", POSINT, lambda c, v, f=_fn, q=_q: f(c.lm, c.tok, [q], max_new_tokens=v)),
         Bad("batch_size", POSINT, lambda c, v, f=_fn, q=_q: f(c.lm, c.tok, [q], batch_size=v)))
case("align.lora_config",
     Bad("lora", exactly(3, "x", {"r": 0}, {"bogus": 1}), lambda c, v: A.lora_config(v)),
     Bad("chat_tokens", exactly("x", [2.5], 3), lambda c, v: A.lora_config(True, v)))
case("align.merge_lora", Bad("model", OBJ, lambda c, v: A.merge_lora(v)))
case("align.sft_train",
     Bad("model", OBJ, lambda c, v: A.sft_train(v, c.tok, [MSGS], steps=1, lr=1e-3, batch_size=1)),
     Bad("dataset", exactly(None, [], "x", [3]), lambda c, v: A.sft_train(c.lm, c.tok, v, steps=1, lr=1e-3, batch_size=1)),
     Bad("steps", POSINT, lambda c, v: A.sft_train(c.lm, c.tok, [MSGS], steps=v, lr=1e-3, batch_size=1)),
     Bad("lr", POS, lambda c, v: A.sft_train(c.lm, c.tok, [MSGS], steps=1, lr=v, batch_size=1)),
     Bad("batch_size", POSINT, lambda c, v: A.sft_train(c.lm, c.tok, [MSGS], steps=1, lr=1e-3, batch_size=v)),
     Bad("max_length", POSINT, lambda c, v: A.sft_train(c.lm, c.tok, [MSGS], steps=1, lr=1e-3, batch_size=1, max_length=v)),
     Bad("warmup_steps", NONNEG, lambda c, v: A.sft_train(c.lm, c.tok, [MSGS], steps=1, lr=1e-3, batch_size=1, warmup_steps=v)))
case("align.accuracy_figure", Bad("summary", exactly(None, pd.DataFrame(), "x"), lambda c, v: A.accuracy_figure(v)))
case("align.loss_curves_figure", Bad("runs", exactly(None, {}, "x", {"a": 3}), lambda c, v: A.loss_curves_figure(v)))
case("align.parameter_table", Bad("runs", exactly(None, "x", {"a": 3}), lambda c, v: A.parameter_table(v)))
case("align.side_by_side",
     Bad("frames", exactly(None, {}, "x", {"a": 3}), lambda c, v: A.side_by_side(v)),
     Bad("n", POSINT, lambda c, v: A.side_by_side({"a": pd.DataFrame({"question": ["q"], "expected": ["a"], "response": ["b"]})}, v)))
case("align.compact_summary", Bad("summary", exactly(None, "x", pd.DataFrame({"exact_match": [1.0]})), lambda c, v: A.compact_summary(v)))
case("align.judge_breakdown",
     Bad("prompts", exactly(None, "one prompt", [3]), lambda c, v: A.judge_breakdown(v, {"p": ["a"]})),
     Bad("responses", exactly(None, {"p": "not a list"}, {"p": ["a", "b"]}, "x"), lambda c, v: A.judge_breakdown(["Who?"], v)))
case("align.summarize_answers", Bad("frames", exactly(None, {}, "x", {"a": 3}), lambda c, v: A.summarize_answers(v)))
# reward
case("align.annotation_agreement",
     Bad("labels", exactly(["A"], None, ["maybe", "A"]), lambda c, v: A.annotation_agreement([ANNOTATED, ANNOTATED], v)),
     Bad("batch", exactly(None, "x", [3], [{"id": 1}]), lambda c, v: A.annotation_agreement(v, ["A"])))
case("align.annotation_batch",
     Bad("pairs", exactly(None, [], [3]), lambda c, v: A.annotation_batch(v)),
     Bad("k", POSINT, lambda c, v: A.annotation_batch([PAIR], v)),
     Bad("seed", INT, lambda c, v: A.annotation_batch([PAIR], 1, v)))
case("align.check_same_tokenizer",
     Bad("policy_tokenizer", OBJ, lambda c, v: A.check_same_tokenizer(v, c.tok)),
     Bad("reward_tokenizer", OBJ, lambda c, v: A.check_same_tokenizer(c.tok, v)))
case("align.reward_accuracy",
     Bad("model", OBJ, lambda c, v: A.reward_accuracy(v, c.tok, [PAIR])),
     Bad("pairs", exactly(None, [], [3]), lambda c, v: A.reward_accuracy(c.lm, c.tok, v)),
     Bad("scored", exactly("x", pd.DataFrame()), lambda c, v: A.reward_accuracy(c.lm, c.tok, [PAIR], scored=v)))
case("align.reward_distribution_figure", Bad("scored", exactly(None, pd.DataFrame(), "x"), lambda c, v: A.reward_distribution_figure(v)))
case("align.reward_function",
     Bad("model", OBJ, lambda c, v: A.reward_function(v, c.tok)),
     Bad("tokenizer", OBJ, lambda c, v: A.reward_function(c.lm, v)),
     Bad("batch_size", POSINT, lambda c, v: A.reward_function(c.lm, c.tok, batch_size=v)))
case("align.reward_model_from",
     Bad("lm", OBJ, lambda c, v: A.reward_model_from(v, c.tok)),
     Bad("tokenizer", OBJ, lambda c, v: A.reward_model_from(c.lm, v)),
     Bad("seed", INT, lambda c, v: A.reward_model_from(c.lm, c.tok, seed=v)))
case("align.reward_scores",
     Bad("model", OBJ, lambda c, v: A.reward_scores(v, c.tok, ["q"], ["a"])),
     Bad("responses", exactly(["a", "b"], None, "a", [3]), lambda c, v: A.reward_scores(c.lm, c.tok, ["q"], v)),
     Bad("batch_size", POSINT, lambda c, v: A.reward_scores(c.lm, c.tok, ["q"], ["a"], batch_size=v)))
case("align.reward_training_figure", Bad("history", exactly(None, pd.DataFrame(), "x"), lambda c, v: A.reward_training_figure(v)))
case("align.score_reward_pairs",
     Bad("model", OBJ, lambda c, v: A.score_reward_pairs(v, c.tok, [PAIR])),
     Bad("pairs", exactly(None, [], [3]), lambda c, v: A.score_reward_pairs(c.lm, c.tok, v)))
_RM = dict(steps=1, batch_size=1, lr=1e-3)
case("align.train_reward_model",
     Bad("model", OBJ, lambda c, v: A.train_reward_model(v, c.tok, [PAIR], **_RM)),
     Bad("pairs", exactly(None, [], [3]), lambda c, v: A.train_reward_model(c.lm, c.tok, v, **_RM)),
     Bad("steps", POSINT, lambda c, v: A.train_reward_model(c.lm, c.tok, [PAIR], **{**_RM, "steps": v})),
     Bad("lr", POS, lambda c, v: A.train_reward_model(c.lm, c.tok, [PAIR], **{**_RM, "lr": v})),
     Bad("batch_size", POSINT, lambda c, v: A.train_reward_model(c.lm, c.tok, [PAIR], **{**_RM, "batch_size": v})),
     Bad("train_layers", exactly(0, -1, 2.5, "x"), lambda c, v: A.train_reward_model(c.lm, c.tok, [PAIR], train_layers=v, **_RM)))
# rlhf
_GEN = dict(max_new_tokens=2)
case("align.PolicyWithValue", Bad("lm", OBJ, lambda c, v: A.PolicyWithValue(v)))
case("align.sample_responses",
     Bad("model", OBJ, lambda c, v: A.sample_responses(v, c.tok, ["Where?"], **_GEN)),
     Bad("prompts", exactly(None, "Where?", [], [3]), lambda c, v: A.sample_responses(c.lm, c.tok, v, **_GEN)),
     Bad("max_new_tokens", POSINT, lambda c, v: A.sample_responses(c.lm, c.tok, ["Where?"], max_new_tokens=v)),
     Bad("temperature", POS, lambda c, v: A.sample_responses(c.lm, c.tok, ["Where?"], temperature=v, **_GEN)),
     Bad("seed", INT, lambda c, v: A.sample_responses(c.lm, c.tok, ["Where?"], seed=v, **_GEN)))
case("align.best_of_n",
     Bad("n", POSINT, lambda c, v: A.best_of_n(c.lm, c.tok, ["Where?"], REWARD, n=v, **_GEN)),
     Bad("reward_fn", FUNC, lambda c, v: A.best_of_n(c.lm, c.tok, ["Where?"], v, n=2, **_GEN)),
     Bad("prompts", exactly(None, "Where?", []), lambda c, v: A.best_of_n(c.lm, c.tok, v, REWARD, n=2, **_GEN)),
     Bad("max_new_tokens", POSINT, lambda c, v: A.best_of_n(c.lm, c.tok, ["Where?"], REWARD, n=2, max_new_tokens=v)),
     Bad("policy", OBJ, lambda c, v: A.best_of_n(v, c.tok, ["Where?"], REWARD, n=2, **_GEN)))
case("align.best_of_n_sweep",
     Bad("ns", exactly(None, [], [0], [2.5], 4), lambda c, v: A.best_of_n_sweep(c.lm, c.tok, ["Where?"], REWARD, ns=v, **_GEN)),
     Bad("reward_fn", FUNC, lambda c, v: A.best_of_n_sweep(c.lm, c.tok, ["Where?"], v, ns=[1], **_GEN)))
case("align.compare_policies",
     Bad("policies", exactly(None, {}, "x", {"a": 3}), lambda c, v: A.compare_policies(v, c.lm, c.tok, ["Where?"], REWARD, **_GEN)),
     Bad("reference", OBJ, lambda c, v: A.compare_policies({"a": c.lm}, v, c.tok, ["Where?"], REWARD, **_GEN)),
     Bad("max_new_tokens", POSINT, lambda c, v: A.compare_policies({"a": c.lm}, c.lm, c.tok, ["Where?"], REWARD, max_new_tokens=v)))
case("align.evaluate_policy",
     Bad("policy", OBJ, lambda c, v: A.evaluate_policy(v, c.lm, c.tok, ["Where?"], REWARD, **_GEN)),
     Bad("reward_fn", FUNC, lambda c, v: A.evaluate_policy(c.lm, c.lm, c.tok, ["Where?"], v, **_GEN)),
     Bad("true_fn", exactly(3, "f"), lambda c, v: A.evaluate_policy(c.lm, c.lm, c.tok, ["Where?"], REWARD, true_fn=v, **_GEN)))
case("align.comparison_figure", Bad("table", exactly(None, pd.DataFrame(), "x"), lambda c, v: A.comparison_figure(v)))
case("align.ppo_curves_figure", Bad("runs", exactly(None, {}, "x", pd.DataFrame(), {"a": 3}), lambda c, v: A.ppo_curves_figure(v)))
_PPO = dict(iterations=1, batch_size=1, max_new_tokens=2, lr=1e-4)
case("align.ppo_train",
     Bad("policy", OBJ, lambda c, v: A.ppo_train(v, c.lm, c.tok, ["Where?"], REWARD, **_PPO)),
     Bad("reward_fn", FUNC, lambda c, v: A.ppo_train(c.lm, c.lm, c.tok, ["Where?"], v, **_PPO)),
     Bad("iterations", POSINT, lambda c, v: A.ppo_train(c.lm, c.lm, c.tok, ["Where?"], REWARD, **{**_PPO, "iterations": v})),
     Bad("batch_size", POSINT, lambda c, v: A.ppo_train(c.lm, c.lm, c.tok, ["Where?"], REWARD, **{**_PPO, "batch_size": v})),
     Bad("lr", POS, lambda c, v: A.ppo_train(c.lm, c.lm, c.tok, ["Where?"], REWARD, **{**_PPO, "lr": v})),
     Bad("config", exactly("x", 3, {}), lambda c, v: A.ppo_train(c.lm, c.lm, c.tok, ["Where?"], REWARD, config=v, **_PPO)),
     Bad("value_lr", exactly(0, -1.0, NAN, "x"), lambda c, v: A.ppo_train(c.lm, c.lm, c.tok, ["Where?"], REWARD, value_lr=v, **_PPO)))
_LIB = dict(steps=1, batch_size=2, num_generations=2, max_new_tokens=2, lr=1e-4, kl_coef=0.1)
case("align.library_route",
     Bad("policy", OBJ, lambda c, v: A.library_route(v, c.lm, c.tok, ["Where?"], **_LIB)),
     Bad("steps", POSINT, lambda c, v: A.library_route(c.lm, c.lm, c.tok, ["Where?"], **{**_LIB, "steps": v})),
     Bad("num_generations", exactly(0, 1, -1, 2.5), lambda c, v: A.library_route(c.lm, c.lm, c.tok, ["Where?"], **{**_LIB, "num_generations": v})),
     Bad("kl_coef", NONNEG_NUM, lambda c, v: A.library_route(c.lm, c.lm, c.tok, ["Where?"], **{**_LIB, "kl_coef": v})),
     Bad("lr", POS, lambda c, v: A.library_route(c.lm, c.lm, c.tok, ["Where?"], **{**_LIB, "lr": v})))


# evaluation -------------------------------------------------------------------------------------
ITEM = {"id": "q1", "question": "Where do fomtails live?", "choices": ["Drumesh", "Paesh"], "answer": 0}
TASK = {"task_id": "t1", "prompt": "def f():\n", "entry_point": "f", "test": "def check(f):\n    pass\n"}
SCORES = pd.DataFrame({"id": ["q1"], "subject": ["all"], "acc": [1.0], "acc_norm": [1.0]})
REPORT = pd.DataFrame({"id": ["q1"], "contaminated": [False]})
for _f in ("pass_at_k", "naive_pass_at_k"):
    _fn = getattr(E, _f)
    case(f"evaluation.{_f}",
         Bad("n", POSINT, lambda c, v, f=_fn: f(v, 0, 1)),
         Bad("c", exactly(-1, 6, 2.5, None), lambda c, v, f=_fn: f(5, v, 1)),
         Bad("k", exactly(0, 6, 2.5, None), lambda c, v, f=_fn: f(5, 2, v)))
for _f in ("mean_pass_at_k", "mean_naive_pass_at_k"):
    _fn = getattr(E, _f)
    case(f"evaluation.{_f}",
         Bad("counts", exactly([], None, "ab", [3], [(5, 6)]), lambda c, v, f=_fn: f(v, 1)),
         Bad("k", exactly(0, 6, None), lambda c, v, f=_fn: f([(5, 2)], v)))
case("evaluation.pass_at_k_table",
     Bad("results", exactly(None, "x", pd.DataFrame({"x": [1]}), pd.DataFrame({"task_id": [], "passed": []})), lambda c, v: E.pass_at_k_table(v)),
     Bad("ks", exactly([0], [99], "5", None, [2.5]), lambda c, v: E.pass_at_k_table(pd.DataFrame({"task_id": ["a", "a"], "passed": [True, False]}), v)))
case("evaluation.bits_per_byte",
     Bad("n_bytes", exactly(0, -1, 2.5, None), lambda c, v: E.bits_per_byte(10.0, v)),
     Bad("total_nll", NONNEG_NUM, lambda c, v: E.bits_per_byte(v, 10)))
case("evaluation.disjoint_windows",
     Bad("window", POSINT, lambda c, v: E.disjoint_windows(100, v)),
     Bad("n_tokens", NONNEG, lambda c, v: E.disjoint_windows(v, 10)))
case("evaluation.strided_windows",
     Bad("stride", exactly(0, -1, 2.5, None, 65), lambda c, v: E.strided_windows(100, 64, v)),
     Bad("window", POSINT, lambda c, v: E.strided_windows(100, v, 8)),
     Bad("n_tokens", NONNEG, lambda c, v: E.strided_windows(v, 64, 8)))
case("evaluation.perplexity",
     Bad("model", OBJ, lambda c, v: E.perplexity(v, c.tok, "The cat.")),
     Bad("tokenizer", OBJ, lambda c, v: E.perplexity(c.lm, v, "The cat.")),
     Bad("texts", exactly(None, "", [], [3], 3), lambda c, v: E.perplexity(c.lm, c.tok, v)),
     Bad("window", exactly(0, -1, 2.5, 10**6), lambda c, v: E.perplexity(c.lm, c.tok, "The cat.", v)),
     Bad("stride", exactly(0, -1, 2.5, 100), lambda c, v: E.perplexity(c.lm, c.tok, "The cat.", 16, v)),
     Bad("batch_size", POSINT, lambda c, v: E.perplexity(c.lm, c.tok, "The cat.", batch_size=v)))
case("evaluation.stride_sweep",
     Bad("strides", exactly([], None, [0], [2.5]), lambda c, v: E.stride_sweep(c.lm, c.tok, "The cat sat.", 16, v)),
     Bad("window", POSINT, lambda c, v: E.stride_sweep(c.lm, c.tok, "The cat sat.", v, [4])))
case("evaluation.stride_figure", Bad("sweep", exactly(None, pd.DataFrame(), "x"), lambda c, v: E.stride_figure(v)))
case("evaluation.word_ngrams",
     Bad("n", POSINT, lambda c, v: E.word_ngrams("a b c", v)),
     Bad("text", TEXT, lambda c, v: E.word_ngrams(v, 2)))
case("evaluation.build_ngram_index",
     Bad("corpus", exactly([], None, [3], "abc"), lambda c, v: E.build_ngram_index(v, 2)),
     Bad("n", POSINT, lambda c, v: E.build_ngram_index(["a b c"], v)))
case("evaluation.find_leaks",
     Bad("items", exactly([], None, "x"), lambda c, v: E.find_leaks(v, E.build_ngram_index(["a b c"], 2))),
     Bad("index", OBJ, lambda c, v: E.find_leaks([ITEM], v)),
     Bad("text_of", exactly(3, "f"), lambda c, v: E.find_leaks([ITEM], E.build_ngram_index(["a b c"], 2), v)))
case("evaluation.item_text", Bad("item", exactly({}, None, "x", {"question": 3}), lambda c, v: E.item_text(v)))
case("evaluation.clean_subset",
     Bad("report", exactly(None, pd.DataFrame(), REPORT.iloc[:0]), lambda c, v: E.clean_subset([ITEM], v)),
     Bad("items", exactly(None, "x", [ITEM, ITEM]), lambda c, v: E.clean_subset(v, REPORT)))
case("evaluation.clean_vs_contaminated",
     Bad("metric", exactly("accuracy", None), lambda c, v: E.clean_vs_contaminated(SCORES, REPORT, v)),
     Bad("scores", exactly(None, "x", SCORES.assign(id=["q9"])), lambda c, v: E.clean_vs_contaminated(v, REPORT)),
     Bad("report", exactly(None, "x"), lambda c, v: E.clean_vs_contaminated(SCORES, v)))
case("evaluation.validate_items",
     Bad("items", exactly([], None, "abc", [3], [{**ITEM, "answer": 5}], [{**ITEM, "choices": ["one"]}]), lambda c, v: E.validate_items(v)))
case("evaluation.read_jsonl", Bad("path", exactly("/nonexistent.jsonl", None, 3, "/etc/hostname"), lambda c, v: E.read_jsonl(v)))
case("evaluation.load_items", Bad("path", exactly("/nonexistent.jsonl", None, 3, "/etc/hostname"), lambda c, v: E.load_items(v)))
case("evaluation.render_prompt",
     Bad("template", exactly("{{ ''.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}", "{{ missing_field }}",
                             "{% if %}", None, 3), lambda c, v: E.render_prompt(ITEM, v)),
     Bad("item", exactly(None, "x", [1]), lambda c, v: E.render_prompt(v)))
case("evaluation.encode_pair",
     Bad("continuation", exactly("", None, 3), lambda c, v: E.encode_pair(c.tok, "Q: x", v)),
     Bad("context", exactly("   ", None, 3), lambda c, v: E.encode_pair(c.tok, v, " y")),
     Bad("tokenizer", OBJ, lambda c, v: E.encode_pair(v, "Q: x", " y")))
case("evaluation.choice_logprobs",
     Bad("choices", exactly([], "ab", None, [3]), lambda c, v: E.choice_logprobs(c.lm, c.tok, "Q: x", v)),
     Bad("model", OBJ, lambda c, v: E.choice_logprobs(v, c.tok, "Q: x", ["a"])),
     Bad("context", exactly(None, 3), lambda c, v: E.choice_logprobs(c.lm, c.tok, v, ["a"])))
case("evaluation.score_items",
     Bad("items", exactly([], None, [3]), lambda c, v: E.score_items(c.lm, c.tok, v)),
     Bad("scoring", NAME, lambda c, v: E.score_items(c.lm, c.tok, [ITEM], scoring=v)),
     Bad("template", exactly("{{ ''.__class__.__mro__ }}", 3), lambda c, v: E.score_items(c.lm, c.tok, [ITEM], v)),
     Bad("progress", exactly(3, "f"), lambda c, v: E.score_items(c.lm, c.tok, [ITEM], progress=v)),
     Bad("model", OBJ, lambda c, v: E.score_items(v, c.tok, [ITEM])))
case("evaluation.accuracy_by_subject", Bad("scores", exactly(SCORES.iloc[:0], None, "x", pd.DataFrame({"x": [1]})), lambda c, v: E.accuracy_by_subject(v)))
case("evaluation.choice_scores_figure",
     Bad("logprobs", exactly([1.0], None, ["x", "y"], [NAN, 1.0]), lambda c, v: E.choice_scores_figure(ITEM, v)),
     Bad("item", exactly(None, {}, {**ITEM, "answer": 9}), lambda c, v: E.choice_scores_figure(v, [-1.0, -2.0])))
case("evaluation.write_mc_task",
     Bad("name", exactly("", "9bad", None, "a b"), lambda c, v: E.write_mc_task("/tmp/labkit_bad_task", v, "/nonexistent.jsonl")),
     Bad("data_files", exactly("/nonexistent.jsonl", None, 3), lambda c, v: E.write_mc_task("/tmp/labkit_bad_task", "t", v)),
     Bad("split", exactly("train", None), lambda c, v: E.write_mc_task("/tmp/labkit_bad_task", "t", {"test": "/x.jsonl"}, v)),
     Bad("task_dir", exactly(None, 3), lambda c, v: E.write_mc_task(v, "t", "/nonexistent.jsonl")))
case("evaluation.run_lm_eval",
     Bad("model_dir", exactly("/nonexistent", None, 3), lambda c, v: E.run_lm_eval(v, "/tmp", ["t"])),
     Bad("limit", exactly(0, -1, 2.5, "x"), lambda c, v: E.run_lm_eval("/nonexistent", "/tmp", ["t"], v)),
     Bad("batch_size", POSINT, lambda c, v: E.run_lm_eval("/nonexistent", "/tmp", ["t"], batch_size=v)),
     Bad("device", exactly("nope", 3), lambda c, v: E.run_lm_eval("/nonexistent", "/tmp", ["t"], device=v)))
# the sandbox's inputs (labkit/evaluation/sandbox.py; its limits are the sandbox's own work)
case("evaluation.SandboxLimits",
     Bad("memory_mb", exactly(-1, 0, 2.5, None), lambda c, v: E.SandboxLimits(memory_mb=v)),
     Bad("max_processes", exactly(0, -1, None), lambda c, v: E.SandboxLimits(max_processes=v)),
     Bad("run_as", exactly("", 3), lambda c, v: E.SandboxLimits(run_as=v)))
case("evaluation.check_program",
     Bad("program", exactly(None, 3, b"print(1)"), lambda c, v: E.check_program(v)),
     Bad("timeout", POS, lambda c, v: E.check_program("pass", v)),
     Bad("limits", exactly("x", {}, 3), lambda c, v: E.check_program("pass", 1.0, v)))
case("evaluation.evaluate_distinct",
     Bad("tasks", exactly([], None, [3]), lambda c, v: E.evaluate_distinct(v, {"t1": ["    return 1"]})),
     Bad("completions", exactly(None, "x", {"t1": "    return 1"}, {"t1": [3]}, {"t9": ["pass"]}), lambda c, v: E.evaluate_distinct([TASK], v)),
     Bad("workers", POSINT, lambda c, v: E.evaluate_distinct([TASK], {"t1": ["    return 1"]}, workers=v)),
     Bad("timeout", POS, lambda c, v: E.evaluate_distinct([TASK], {"t1": ["    return 1"]}, v)))
case("evaluation.evaluate_completions",
     Bad("tasks", exactly([], None, [3]), lambda c, v: E.evaluate_completions(v, {"t1": ["    return 1"]})),
     Bad("completions", exactly(None, "x", {"t1": "    return 1"}, {"t1": [3]}), lambda c, v: E.evaluate_completions([TASK], v)),
     Bad("workers", POSINT, lambda c, v: E.evaluate_completions([TASK], {"t1": ["    return 1"]}, workers=v)),
     Bad("timeout", POS, lambda c, v: E.evaluate_completions([TASK], {"t1": ["    return 1"]}, v)))
case("evaluation.humaneval_program",
     Bad("task", exactly({}, None, "x"), lambda c, v: E.humaneval_program(v, "    return 1")),
     Bad("completion", exactly(None, 3), lambda c, v: E.humaneval_program(TASK, v)))
case("evaluation.load_code_tasks", Bad("path", exactly("/nonexistent.jsonl", None, "/etc/hostname"), lambda c, v: E.load_code_tasks(v)))
case("evaluation.sandbox_report", Bad("limits", exactly("x", {}, 3), lambda c, v: E.sandbox_report(v)))
case("evaluation.drops_privileges", Bad("limits", exactly("x", {}, 3), lambda c, v: E.drops_privileges(v)))
case("evaluation.sandbox_processes",
     Bad("session", exactly(None, "x", -1, 2.5), lambda c, v: E.sandbox_processes(v)),
     Bad("marker", exactly(None, 3), lambda c, v: E.sandbox_processes(1, v)))

# quant --------------------------------------------------------------------------------------------
W = torch.randn(8, 64)
for _f in ("absmax_quantize", "zeropoint_quantize", "quantize", "fake_quantize"):
    _fn = getattr(Q, _f)
    case(f"quant.{_f}",
         Bad("bits", exactly(0, 1, 9, 2.5, None, "4"), lambda c, v, f=_fn: f(W, bits=v)),
         Bad("weight", exactly(None, [1.0], torch.tensor([[NAN, 1.0]]), torch.ones(2, 2, 2)), lambda c, v, f=_fn: f(v)),
         Bad("granularity", NAME, lambda c, v, f=_fn: f(W, granularity=v)),
         Bad("group_size", exactly(0, -1, 7, 2.5, None), lambda c, v, f=_fn: f(W, granularity="group", group_size=v)))
for _f in ("quantize", "fake_quantize"):
    _fn = getattr(Q, _f)
    case(f"quant.{_f}", Bad("scheme", NAME, lambda c, v, f=_fn: f(W, scheme=v)))
case("quant.dequantize", Bad("qt", OBJ, lambda c, v: Q.dequantize(v)))
case("quant.reconstruction_errors",
     Bad("bits_list", exactly([1], [], None, [2.5]), lambda c, v: Q.reconstruction_errors(W, v)),
     Bad("schemes", exactly(["nope"], "absmax", []), lambda c, v: Q.reconstruction_errors(W, schemes=v)),
     Bad("group_size", exactly(0, 7, None), lambda c, v: Q.reconstruction_errors(W, group_size=v)),
     Bad("weight", exactly(None, torch.tensor([[INF]])), lambda c, v: Q.reconstruction_errors(v)))
case("quant.QuantizedTensor",
     Bad("bits", exactly(0, 1, 9, None), lambda c, v: Q.dequantize(Q.QuantizedTensor(torch.zeros(2, 2), torch.ones(2, 1), None, v, "absmax", "channel", None, (2, 2)))),
     Bad("scheme", NAME, lambda c, v: Q.dequantize(Q.QuantizedTensor(torch.zeros(2, 2), torch.ones(2, 1), None, 8, v, "channel", None, (2, 2)))))
case("quant.nf4_quantize",
     Bad("blocksize", exactly(0, -1, 3, 2.5, None), lambda c, v: Q.nf4_quantize(W, v)),
     Bad("weight", exactly(None, torch.tensor([NAN] * 64), [1.0]), lambda c, v: Q.nf4_quantize(v)))
case("quant.nf4_dequantize", Bad("t", OBJ, lambda c, v: Q.nf4_dequantize(v)))
case("quant.int8_quantize_weight", Bad("weight", exactly(None, torch.tensor([[NAN]]), torch.ones(3)), lambda c, v: Q.int8_quantize_weight(v)))
case("quant.llm_int8_matmul",
     Bad("x", exactly(None, torch.ones(2, 5), torch.tensor([[NAN] * 64])), lambda c, v: Q.llm_int8_matmul(v, Q.int8_quantize_weight(W))),
     Bad("weight", OBJ, lambda c, v: Q.llm_int8_matmul(torch.ones(2, 64), v)),
     Bad("threshold", exactly(-1.0, NAN, None, "x"), lambda c, v: Q.llm_int8_matmul(torch.ones(2, 64), Q.int8_quantize_weight(W), threshold=v)))
case("quant.outlier_columns",
     Bad("x", exactly(None, [1.0], torch.tensor([[NAN]])), lambda c, v: Q.outlier_columns(v)),
     Bad("threshold", exactly(-1.0, NAN, None), lambda c, v: Q.outlier_columns(torch.ones(2, 4), v)))
case("quant.input_stats", Bad("x", exactly(None, [1.0], torch.ones(0, 4), torch.tensor([[NAN]])), lambda c, v: Q.input_stats(v)))
case("quant.output_error",
     Bad("w_hat", exactly(torch.ones(8, 63), None), lambda c, v: Q.output_error(W, v, torch.eye(64))),
     Bad("hessian", exactly(torch.eye(3), None, torch.full((64, 64), NAN)), lambda c, v: Q.output_error(W, W, v)))
case("quant.rtn_quantize_weight",
     Bad("bits", exactly(0, 9, None), lambda c, v: Q.rtn_quantize_weight(W, v)),
     Bad("scheme", NAME, lambda c, v: Q.rtn_quantize_weight(W, scheme=v)),
     Bad("group_size", exactly(0, 7, -1), lambda c, v: Q.rtn_quantize_weight(W, group_size=v)))
case("quant.gptq_quantize_weight",
     Bad("hessian", exactly(torch.eye(3), None, torch.full((64, 64), NAN)), lambda c, v: Q.gptq_quantize_weight(W, v)),
     Bad("bits", exactly(0, 9, None), lambda c, v: Q.gptq_quantize_weight(W, torch.eye(64), v)),
     Bad("damp", exactly(-0.1, NAN, None), lambda c, v: Q.gptq_quantize_weight(W, torch.eye(64), damp=v)),
     Bad("block_size", exactly(0, -1, 2.5, None), lambda c, v: Q.gptq_quantize_weight(W, torch.eye(64), block_size=v)))
case("quant.awq_search",
     Bad("stats", OBJ, lambda c, v: Q.awq_search(W, v)),
     Bad("n_grid", exactly(0, -1, 2.5, None), lambda c, v: Q.awq_search(W, Q.input_stats(torch.ones(4, 64)), n_grid=v)))
CALIB = torch.ones(2, 8, dtype=torch.long)
case("quant.quantize_model",
     Bad("model", OBJ, lambda c, v: Q.quantize_model(v, "rtn")),
     Bad("scheme", NAME, lambda c, v: Q.quantize_model(c.lm, v)),
     Bad("bits", exactly(0, 9, None), lambda c, v: Q.quantize_model(c.lm, "rtn", v)),
     Bad("calib", exactly(None, "x", torch.ones(2, 8)), lambda c, v: Q.quantize_model(c.lm, "gptq", 4, calib=v)))
for _f in ("gptq_quantize_model", "awq_quantize_model"):
    _fn = getattr(Q, _f)
    case(f"quant.{_f}",
         Bad("model", OBJ, lambda c, v, f=_fn: f(v, CALIB)),
         Bad("calib", exactly(None, "x", torch.ones(2, 8)), lambda c, v, f=_fn: f(c.lm, v)),
         Bad("bits", exactly(0, 9, None), lambda c, v, f=_fn: f(c.lm, CALIB, v)))
case("quant.QuantLinear",
     Bad("method", NAME, lambda c, v: Q.QuantLinear(4, 4, v)),
     Bad("in_features", POSINT, lambda c, v: Q.QuantLinear(v, 4, "rtn")))
case("quant.stored_bytes", Bad("module", OBJ, lambda c, v: Q.stored_bytes(v)))
case("quant.linear_stored_bytes", Bad("model", OBJ, lambda c, v: Q.linear_stored_bytes(v)))
case("quant.valid_group_sizes",
     Bad("model", OBJ, lambda c, v: Q.valid_group_sizes(v)),
     Bad("candidates", exactly([0], None, "x", [2.5]), lambda c, v: Q.valid_group_sizes(c.lm, v)))
case("quant.load_bnb_model",
     Bad("mode", NAME, lambda c, v: Q.load_bnb_model("/nonexistent", v)),
     Bad("path", exactly("/nonexistent", None, 3), lambda c, v: Q.load_bnb_model(v)))
case("quant.weight_bytes",
     Bad("n_params", POSINT, lambda c, v: Q.weight_bytes(v)),
     Bad("precision", NAME, lambda c, v: Q.weight_bytes(10**9, v)),
     Bad("group_size", POSINT, lambda c, v: Q.weight_bytes(10**9, "int4", v)))
case("quant.kv_cache_bytes",
     Bad("n_layers", POSINT, lambda c, v: Q.kv_cache_bytes(v, 8, 128, 4096)),
     Bad("context", POSINT, lambda c, v: Q.kv_cache_bytes(32, 8, 128, v)),
     Bad("bytes_per_value", POS, lambda c, v: Q.kv_cache_bytes(32, 8, 128, 4096, 1, v)))
case("quant.serving_memory",
     Bad("model", exactly("3B", None, 3), lambda c, v: Q.serving_memory(v)),
     Bad("precision", NAME, lambda c, v: Q.serving_memory("7B", v)),
     Bad("context", POSINT, lambda c, v: Q.serving_memory("7B", context=v)),
     Bad("kv_bytes", POS, lambda c, v: Q.serving_memory("7B", kv_bytes=v)))
case("quant.gpu_fit_table",
     Bad("model", exactly("3B", None, 3), lambda c, v: Q.gpu_fit_table(v)),
     Bad("precisions", exactly(["fp7"], [], None, "fp16"), lambda c, v: Q.gpu_fit_table("7B", precisions=v)),
     Bad("headroom", exactly(0, 1.5, -0.1, NAN, None), lambda c, v: Q.gpu_fit_table("7B", headroom=v)),
     Bad("batch", POSINT, lambda c, v: Q.gpu_fit_table("7B", batch=v)))


# --- names that take no user data --------------------------------------------------------------
NO_USER_DATA = {
    "data.Accounting": "an empty accumulator; steps fill it",
    "pretrain.FilledBlanks": "a result record fill_blanks returns",
    "parallel.LaunchResult": "a result record launch returns",
    "parallel.MemoryPlan": "a result record memory_plan returns (plan() carries errors in it)",
    "parallel.PlanError": "an exception type",
    "parallel.WorkerFailed": "an exception type, raised with a LaunchResult",
    "precision.Decomposition": "a result record decompose returns",
    "precision.Format": "a format as torch reports it; get_format builds it",
    "precision.RangeShares": "a result record range_shares returns",
    "precision.VanishingUpdate": "a result record vanishing_update_demo returns",
    "precision.available_formats": "takes no arguments",
    "schedules.RangeTest": "a result record lr_range_test returns",
    "schedules.RangeTests": "a result record lr_range_tests returns",
    "align.PairScores": "a result record score_pairs returns",
    "align.PolicyLoss": "a result record clipped_policy_loss returns",
    "align.PreferenceLoss": "a result record the preference losses return",
    "align.PreferenceRun": "a result record train_preference returns",
    "align.SFTRun": "a result record sft_train returns",
    "align.ValueLoss": "a result record clipped_value_loss returns",
    "align.RewardRun": "a result record train_reward_model returns",
    "align.BestOfN": "a result record best_of_n returns",
    "align.LibraryRun": "a result record library_route returns",
    "align.PPORun": "a result record ppo_train returns",
    "align.Rollout": "a result record sample_responses returns",
    "evaluation.LmEvalRun": "a result record run_lm_eval returns",
    "evaluation.NgramIndex": "a result record build_ngram_index returns",
    "evaluation.PerplexityResult": "a result record perplexity returns",
    "evaluation.SandboxResult": "a result record check_program returns",
    "evaluation.SandboxReport": "a result record sandbox_report returns",
    "evaluation.offline_hubs": "a context manager without arguments",
}


# --- the sweep ------------------------------------------------------------------------------------
def _exports() -> dict[str, object]:
    out = {}
    for stage in STAGES:
        module = importlib.import_module(f"labkit.{stage}")
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                out[f"{stage}.{name}"] = obj
    return out


# words a message may use for an argument instead of its name ("unknown format 'fp7'")
SYNONYMS = {"fmt": ("format",), "x": ("input",), "hessian": ("Hessian",), "kv_bytes": ("bytes_per_value",), "path": ("file", "folder"), "pairs": ("pair",), "train_pairs": ("pair", "pairs"),
            "eval_pairs": ("pair", "pairs"), "messages": ("conversation",),
            "conversations": ("conversation",), "dataset": ("conversation",),
            "betas": ("beta",), "estimator": ("kl_estimator",), "items": ("item",),
            "corpus": ("corpus document",), "tasks": ("task",),
            "data_files": ("file",), "precisions": ("precision",)}

DEEP = (ZeroDivisionError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError,
        OverflowError, ArithmeticError, LookupError, NotImplementedError, OSError)


def check_refused(name: str, bad: Bad, value) -> None:
    """The bad call raises a LabkitError naming the argument; anything else fails the test."""
    try:
        result = bad.call(C, value)
    except LabkitError as exc:
        words = (bad.arg, *SYNONYMS.get(bad.arg, ()))
        named = any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])", str(exc))
                    for w in words)
        assert named, f"{name}({bad.arg}={value!r}): the message does not name {bad.arg!r}: {exc}"
        return
    except Exception as exc:
        kind = "deep" if isinstance(exc, DEEP) else "not a LabkitError"
        raise AssertionError(
            f"{name}({bad.arg}={value!r}): {kind}: {type(exc).__name__}: {exc}"[:400]) from exc
    raise AssertionError(f"{name}({bad.arg}={value!r}): silent result {result!r}"[:400])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Public functions whose bad-input checks belong to another piece of work in progress (the OS
# sandbox of issue 20 section 1 owns labkit/evaluation/sandbox.py): their cases run and report,
# as expected failures, until that work lands.
PENDING: dict[str, str] = {}


def _names():
    return [pytest.param(name, marks=pytest.mark.xfail(reason=PENDING[name], strict=False))
            if name in PENDING else name for name in sorted(CASES)]


def test_every_export_has_a_case():
    exports = _exports()
    missing = sorted(set(exports) - set(CASES) - set(NO_USER_DATA))
    assert not missing, f"public callables without a bad-input case: {missing}"
    stale = sorted((set(CASES) | set(NO_USER_DATA) | set(PENDING)) - set(exports))
    assert not stale, f"cases for names no package exports: {stale}"
    assert not set(CASES) & set(NO_USER_DATA)
    assert set(PENDING) <= set(CASES)


@pytest.mark.parametrize("name", _names())
def test_fixed_bad_values_are_refused(name):
    for bad in CASES[name]:
        for value in bad.kind.values:
            check_refused(name, bad, value)


@pytest.mark.parametrize("name", _names())
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_drawn_bad_values_are_refused(name, data):
    bad = data.draw(st.sampled_from(CASES[name]), label="case")
    value = data.draw(bad.kind.draw, label=bad.arg)
    check_refused(name, bad, value)


def count_calls() -> tuple[int, int]:
    """(functions covered, fixed bad calls): the numbers the closing note reports."""
    return len(CASES), sum(len(b.kind.values) for bads in CASES.values() for b in bads)


# arguments a case names that are not parameters of the exported callable: arguments of a
# method or a returned function it calls, keys of a dict argument, or the word the message uses
EXTRA_ARGS = {
    "data.BPETokenizer": ("ids", "text"),  # decode(ids), encode(text)
    "pretrain.check_batch": ("labels", "input_ids"),  # keys of the batch
    "parallel.model_preset": ("model",),  # its name is what plan(model=...) takes
    "parallel.parameter_count": ("model",),
    "parallel.worker_script": ("script",),  # what launch(script=...) takes
    "schedules.cosine_schedule": ("step",),  # the returned schedule's argument
    "schedules.linear_schedule": ("step",),
    "schedules.nanogpt_schedule": ("step",),
    "schedules.cosine_restarts_schedule": ("step",),
    "schedules.constant_schedule": ("step",),
    "schedules.fraction_to_steps": ("warmup_fraction",),  # the default of its `name`
    "align.AdaptiveKLController": ("current_kl", "n_steps"),  # update(current_kl, n_steps)
    **{f"quant.{f}": ("weight",) for f in (  # the default of their `name`
        "absmax_quantize", "zeropoint_quantize", "quantize", "fake_quantize",
        "reconstruction_errors", "nf4_quantize", "int8_quantize_weight")},
}


def test_cases_name_real_arguments():
    """A case's argument is a parameter of the function (or listed in EXTRA_ARGS), so a
    renamed parameter cannot leave a case testing nothing."""
    exports = _exports()
    for name, bads in CASES.items():
        try:
            params = inspect.signature(exports[name]).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        for bad in bads:
            assert bad.arg in params or bad.arg in EXTRA_ARGS.get(name, ()), (name, bad.arg)


# --- the issue's silent results, now correct results --------------------------------------------
@settings(max_examples=200, deadline=None)
@given(step=st.integers(0, 10_000), warmup=st.integers(0, 500), total=st.integers(1, 500),
       min_ratio=st.floats(0, 1))
def test_warmup_cosine_never_exceeds_the_peak(step, warmup, total, min_ratio):
    """warmup_cosine(50, warmup_steps=10, total_steps=10) was 4.64: a multiplier past the peak."""
    value = P.warmup_cosine(step, warmup, total, min_ratio)
    assert 0.0 <= value <= 1.0 + 1e-12


_junk = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=4), st.just([]),
                  st.builds(Par.Cluster, st.integers(-2, 9), st.integers(-2, 3), st.floats()),
                  st.builds(Par.Layout, st.integers(-2, 9), st.integers(-2, 9), st.integers(-2, 9)))


@settings(max_examples=150, deadline=None)
@given(model=st.one_of(_junk, st.sampled_from(sorted(Par.PRESETS))), cluster=_junk, layout=_junk)
def test_plan_never_raises(model, cluster, layout):
    """plan() is documented never to raise (widgets show .error): junk of any type comes back
    as a plan whose error says what is wrong, and whose properties still answer."""
    result = Par.plan(model, cluster, layout)
    assert isinstance(result, Par.MemoryPlan)
    assert isinstance(result.summary(), str) and isinstance(result.gpus, int)
    if result.error is None:
        assert result.total_gb > 0


def test_plan_13b_with_no_layout_names_the_layout():
    result = Par.plan("13B", Par.Cluster(), None)
    assert result.error and "layout" in result.error and not result.fits


@settings(max_examples=100, deadline=None)
@given(n=st.integers(-3, 0), a=st.text(min_size=1), b=st.text(min_size=1))
def test_jaccard_refuses_a_gram_size_below_one(n, a, b):
    """jaccard(a, b, n=0) was 1.0 for any two strings."""
    with pytest.raises(LabkitError, match="n="):
        D.jaccard(a, b, n)


def test_pack_blocks_refuses_float_tokens_instead_of_truncating():
    with pytest.raises(LabkitError, match="stream"):
        P.pack_blocks(torch.rand(100), 8)
    assert P.pack_blocks(torch.arange(17), 8).tolist() == [list(range(8)), list(range(8, 16))]


def test_misspelt_pattern_is_refused_not_encoded_to_nothing():
    with pytest.raises(LabkitError, match="gpt-4"):
        D.train_bpe(["hello hello world"], 260, pattern="gpt-4")
    tok = D.train_bpe(["hello hello world"], 260, pattern="gpt4")
    assert tok.encode("hello") and tok.decode(tok.encode("hello world")) == "hello world"


def test_run_pipeline_refuses_a_string_of_documents():
    with pytest.raises(LabkitError, match="docs"):
        D.run_pipeline([D.exact_dedup], "a string")


def test_masked_mean_refuses_an_empty_mask_instead_of_nan():
    with pytest.raises(LabkitError, match="mask"):
        A.masked_mean(torch.ones(2, 3), torch.zeros(2, 3))
    assert A.masked_mean(torch.tensor([[1.0, 3.0]]), torch.tensor([[1, 1]])).item() == 2.0


# --- part 4: templates are sandboxed, quantized models load from safetensors --------------------
@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ question.__class__.__base__ }}",
])
def test_templates_cannot_reach_python_internals(template):
    with pytest.raises(LabkitError, match="template"):
        E.render_prompt(ITEM, template)


def test_templates_still_render_the_lab_prompts():
    from labkit.evaluation.multiple_choice import LETTER_TEMPLATE, MMLU_DESCRIPTION

    assert E.render_prompt(ITEM) == "Question: Where do fomtails live?\nAnswer:"
    letters = E.render_prompt({**ITEM, "subject": "world_facts"}, MMLU_DESCRIPTION + LETTER_TEMPLATE)
    assert letters.startswith("The following are multiple choice questions (with answers) about "
                              "world facts.") and "A. Drumesh\nB. Paesh\nAnswer:" in letters


def test_load_bnb_model_asks_for_safetensors(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    (tmp_path / "config.json").write_text("{}")
    seen = {}

    class Stop(Exception):
        pass

    def from_pretrained(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(Stop):
        Q.load_bnb_model(tmp_path, "int8", device="cpu")
    assert seen.get("use_safetensors") is True and seen.get("trust_remote_code") is False


# --- the CLI: bad arguments, --version, build-samples that keeps edits, run-labs that stops ------
def _labkit(*args, **kwargs):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_version():
    import labkit

    done = _labkit("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"labkit {labkit.__version__}"


@pytest.mark.parametrize("args, message", [
    (("run-labs", "--only", ""), "--only names no lab"),
    (("run-labs", "--only", ","), "--only names no lab"),
    (("run-labs", "--only", "01", "--cell-timeout", "0"), "--cell-timeout: 0 seconds"),
    (("run-labs", "--only", "01", "--cell-timeout", "-3"), "--cell-timeout: -3 seconds"),
    (("run-labs", "--only", "01", "--cell-timeout", "1.5"), "not a whole number"),
    (("run-labs", "--only", "01", "--labs-dir", "/nonexistent/labs"), "/nonexistent/labs"),
    (("build-samples", "--check", "--out", "/nonexistent/data"), "/nonexistent/data"),
])
def test_cli_refuses_bad_arguments_at_once(args, message):
    import time

    start = time.perf_counter()
    done = _labkit(*args)
    assert done.returncode == 2, done
    assert message in done.stderr
    assert time.perf_counter() - start < 60  # refused before any lab or build ran


def test_run_labs_library_refuses_an_empty_name_and_a_bad_timeout(tmp_path):
    from labkit.runner import find_labs, run_labs

    (tmp_path / "00_x.ipynb").write_text("{}")
    with pytest.raises(LabkitError, match="empty lab"):
        find_labs([""], tmp_path)
    for timeout in (0, -1, 2.5, None):
        with pytest.raises(LabkitError, match="cell_timeout"):
            run_labs(["00"], cell_timeout=timeout, directory=tmp_path)


def _copy_samples(tmp_path) -> Path:
    """A data_samples folder to build into: the manifest and the data files (not the models)."""
    import shutil

    from labkit.samples import data_dir
    from labkit.world.build import BUILD_COMMAND

    out = tmp_path / "samples"
    manifest = json.loads((data_dir() / "MANIFEST.json").read_text())
    for rel, entry in manifest["files"].items():
        if entry.get("command") == BUILD_COMMAND:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data_dir() / rel, out / rel)
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    return out


def test_build_samples_refuses_to_overwrite_an_edited_file(tmp_path):
    out = _copy_samples(tmp_path)
    edited = out / "benchmarks" / "knowledge_mc.jsonl"
    edited.write_text(edited.read_text() + '{"id": "mine"}\n')
    before = edited.read_bytes()
    done = _labkit("build-samples", "--out", str(out))
    assert done.returncode == 2
    assert "benchmarks/knowledge_mc.jsonl" in done.stderr and "--force" in done.stderr
    assert edited.read_bytes() == before


def test_build_samples_writes_only_its_files_and_overwrites_edits_when_forced(tmp_path, monkeypatch):
    """generate() stubbed (the real one takes minutes): what build_samples does around it."""
    from labkit.world import build

    out = _copy_samples(tmp_path)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    names = sorted(build._built_by_us(manifest))
    original = {rel: (out / rel).read_bytes() for rel in names}

    def fake_generate(target: Path, seed: int = 7) -> list[str]:
        for rel in names:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(original[rel] if rel != names[0] else b"new\n")
        return names

    monkeypatch.setattr(build, "generate", fake_generate)
    notes = out / "tokenizer" / "my_notes.txt"
    notes.write_text("mine")
    edited = out / names[1]
    edited.write_bytes(b"edited by hand\n")
    with pytest.raises(LabkitError, match=re.escape(names[1])):
        build.build_samples(out)
    assert edited.read_bytes() == b"edited by hand\n"
    build.build_samples(out, force=True)
    assert edited.read_bytes() == original[names[1]]
    assert (out / names[0]).read_bytes() == b"new\n"
    assert notes.read_text() == "mine"  # --out never deletes what it did not write
    rebuilt = json.loads((out / "MANIFEST.json").read_text())
    assert rebuilt["files"][names[0]]["sha256"] == build.sha256(out / names[0])
    build.build_samples(out)  # its own output is no conflict


def _sleepy_lab(directory: Path) -> Path:
    import nbformat

    directory.mkdir(parents=True, exist_ok=True)
    pids = directory / "pids.txt"
    code = ("import os, subprocess, time\n"
            "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
            "time.sleep(300)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, directory / "00_sleepy.ipynb")
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])
def test_run_labs_stops_on_a_signal_and_kills_what_it_started(tmp_path, signum, code):
    import os
    import subprocess
    import sys
    import time

    import psutil

    pids = _sleepy_lab(tmp_path / "labs")
    proc = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run-labs", "--labs-dir",
                             str(tmp_path / "labs")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not pids.exists() or not pids.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "the lab never started"
            time.sleep(0.2)
        kernel, child = map(int, pids.read_text().split())
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (out, err)
    assert f"stopped by {'SIGINT' if signum == 2 else 'SIGTERM'} during 00_sleepy.ipynb" in err
    assert "running 00_sleepy.ipynb" in out and "ok in" not in out and "error in" not in out
    time.sleep(0.5)
    for pid in (kernel, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
