"""Deduplication: normalisation, exact MinHash arithmetic (both hash families), estimates, the LSH
S-curve, clusters."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.data import (
    Accounting,
    Document,
    candidate_probability,
    corpus_shingle_hashes,
    detection_by_similarity,
    estimated_jaccard,
    exact_dedup,
    jaccard,
    lsh_collides,
    minhash_dedup,
    minhash_parameters,
    minhash_signatures,
    multiply_shift_hash,
    mutate_words,
    near_duplicate_clusters,
    ngram_set,
    normalise_text,
    run_pipeline,
    s_curve_figure,
    shingle_hashes,
    universal_hash,
)
from labkit.data.dedup import _mod_p
from labkit.errors import LabkitError

P = (1 << 61) - 1
VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze")
         for b in ("bar", "cel", "dor", "fin", "gul", "han", "jet", "kos", "lim", "mar")]


def random_text(rng: np.random.Generator, n_words: int = 300) -> str:
    return " ".join(rng.choice(VOCAB, size=n_words))


def planted_pairs(n_pairs: int, max_fraction: float, seed: int):
    """(originals, mutated copies, exact 5-gram Jaccard of each pair)."""
    rng = np.random.default_rng(seed)
    originals = [random_text(rng) for _ in range(n_pairs)]
    fractions = rng.uniform(0, max_fraction, size=n_pairs)
    copies = [mutate_words(t, f, seed=i) for i, (t, f) in enumerate(zip(originals, fractions))]
    return originals, copies, np.array([jaccard(a, b) for a, b in zip(originals, copies)])


def test_normalise_text():
    assert normalise_text("Héllo, Wörld! It's 2024 — café-au-lait 3.14") == (
        "hello world its 0000 cafeaulait 000")
    assert normalise_text("  \n\t ") == ""


def test_ngram_set_and_jaccard():
    assert ngram_set("a b c d e f", 5) == {("a", "b", "c", "d", "e"), ("b", "c", "d", "e", "f")}
    assert ngram_set("Just three words", 5) == {("just", "three", "words")}
    assert jaccard("a b c d e f", "A, b c d e f!") == 1.0
    assert jaccard("a b c d e f", "a b c d e g") == pytest.approx(1 / 3)


@settings(max_examples=100, deadline=None)
@given(x=st.integers(0, P - 1), a=st.integers(1, P - 1), b=st.integers(0, P - 1))
def test_universal_hash_is_exact(x, a, b):
    x_, a_, b_ = (np.array([v], np.uint64) for v in (x, a, b))
    got = universal_hash(x_, a_, b_)
    assert int(got[0, 0]) == (a * x + b) % P


@settings(max_examples=100, deadline=None)
@given(v=st.integers(0, 2**64 - 1))
def test_mod_p_folds_any_uint64(v):
    assert int(_mod_p(np.array([v], np.uint64))[0]) == v % P


def test_universal_hash_at_the_edges():
    edges = np.array([0, 1, 2**31 - 1, 2**31, 2**32, P - 2, P - 1], np.uint64)
    a = np.array([1, 2**31, P - 1, 12345678901234567], np.uint64)
    b = np.array([0, P - 1, 7, 2**60], np.uint64)
    expected = [[(int(ai) * int(x) + int(bi)) % P for ai, bi in zip(a, b)] for x in edges]
    assert universal_hash(edges, a, b).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(x=st.integers(0, 2**32 - 1), a=st.integers(0, 2**64 - 1), b=st.integers(0, 2**64 - 1))
def test_multiply_shift_is_exact_mod_2_64(x, a, b):
    got = multiply_shift_hash(*(np.array([v], np.uint64) for v in (x, a, b)))
    assert int(got[0, 0]) == (a * x + b) % 2**64


WORD = st.sampled_from(["a", "b", "cat", "dog", "the", "é", ""]).filter(bool)


@settings(max_examples=100, deadline=None)
@given(docs=st.lists(st.lists(WORD, max_size=12), max_size=8), n=st.integers(1, 6))
def test_corpus_shingles_equal_each_document_alone(docs, n):
    hashes, owner = corpus_shingle_hashes(docs, n)
    assert owner.tolist() == [d for d, words in enumerate(docs)
                              for _ in range(max(len(words) - n + 1, 1))]
    expected = [shingle_hashes(words, n) for words in docs]
    assert hashes.tolist() == (np.concatenate(expected).tolist() if docs else [])


@pytest.mark.parametrize("family, bound", [("multiply_shift", 2**32), ("mersenne61", P)])
def test_signatures_shape_determinism_and_range(family, bound):
    texts = ["the cat sat on the mat today", "", "one two"]
    sig = minhash_signatures(texts, num_perm=16, seed=3, family=family)
    assert sig.shape == (3, 16) and sig.dtype == np.uint64 and (sig < np.uint64(bound)).all()
    assert (sig == minhash_signatures(texts, num_perm=16, seed=3, family=family)).all()
    assert not (sig == minhash_signatures(texts, num_perm=16, seed=4, family=family)).all()
    # the same text in other documents' company gets the same signature
    assert (minhash_signatures(texts[:1], num_perm=16, seed=3, family=family)[0] == sig[0]).all()
    assert minhash_signatures([], num_perm=16).shape == (0, 16)
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    assert (minhash_signatures(docs, num_perm=16, seed=3, family=family) == sig).all()
    with pytest.raises(LabkitError, match="num_perm=0"):
        minhash_signatures(texts, num_perm=0)


def test_a_signature_entry_is_the_minimum_over_the_shingles():
    words = normalise_text("the quick brown fox jumps over the lazy dog again and again").split()
    x = shingle_hashes(words)
    a, b = minhash_parameters(8, seed=5)
    expected = [min(((int(ai) * (int(v) >> 32) + int(bi)) % 2**64) >> 32 for v in x)
                for ai, bi in zip(a, b)]
    assert minhash_signatures([" ".join(words)], num_perm=8, seed=5)[0].tolist() == expected
    a, b = minhash_parameters(8, seed=5, family="mersenne61")
    expected = [min((int(ai) * (int(v) % P) + int(bi)) % P for v in x) for ai, bi in zip(a, b)]
    got = minhash_signatures([" ".join(words)], num_perm=8, seed=5, family="mersenne61")
    assert got[0].tolist() == expected


def test_unknown_hash_family_is_refused():
    with pytest.raises(LabkitError, match="valid: multiply_shift, mersenne61"):
        minhash_signatures(["some text"], family="sha1")


@pytest.mark.parametrize("family", ["multiply_shift", "mersenne61"])
def test_signature_estimates_match_exact_jaccard_within_binomial_tolerance(family):
    originals, copies, exact = planted_pairs(200, 0.12, seed=1)
    sig = minhash_signatures(originals + copies, family=family)
    estimate = estimated_jaccard(sig[:200], sig[200:])
    sigma = np.sqrt(exact * (1 - exact) / 112)
    assert exact.min() < 0.3 and exact.max() > 0.95  # the pairs span the range
    assert (np.abs(estimate - exact) <= 4 * sigma + 1e-12).all()
    assert abs((estimate - exact).mean()) < 3 * np.sqrt((sigma**2).mean() / 200)


def test_estimates_agree_with_datasketch():
    originals, copies, exact = planted_pairs(150, 0.12, seed=2)

    def datasketch_signature(text):
        words = normalise_text(text).split()
        shingles = [" ".join(words[i:i + 5]).encode() for i in range(len(words) - 4)]
        m = MinHash(num_perm=112, seed=1, scheme="affine64")  # datasketch 2.0: pin the scheme
        m.update_batch(shingles)
        return m

    theirs = np.array([datasketch_signature(a).jaccard(datasketch_signature(b))
                       for a, b in zip(originals, copies)])
    sig = minhash_signatures(originals + copies)
    ours = estimated_jaccard(sig[:150], sig[150:])
    sigma = np.sqrt(exact * (1 - exact) / 112)
    assert (np.abs(theirs - exact) <= 4 * sigma + 1e-12).all()
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95
    assert abs(ours.mean() - theirs.mean()) < 0.01


def test_candidate_probability_reference_values():
    s = [0.6, 0.7, 0.75, 0.8, 0.85]
    assert candidate_probability(s, 14, 8) == pytest.approx([0.21, 0.57, 0.77, 0.92, 0.99],
                                                            abs=0.01)
    assert candidate_probability(1.0) == 1.0 and candidate_probability(0.0) == 0.0


@pytest.mark.parametrize("family", ["multiply_shift", "mersenne61"])
def test_detection_per_bin_follows_the_s_curve(family):
    originals, copies, exact = planted_pairs(600, 0.1, seed=3)
    sig = minhash_signatures(originals + copies, family=family)
    detected = lsh_collides(sig[:600], sig[600:], bands=14, rows=8)
    table = detection_by_similarity(exact, detected, bins=np.linspace(0.4, 1.0, 13))
    assert table["pairs"].sum() == (exact >= 0.4).sum() and len(table) >= 10
    theory = table["theory"]
    tolerance = 3 * np.sqrt(table["pairs"] * theory * (1 - theory)) + 1
    assert (np.abs(table["detected"] - table["pairs"] * theory) <= tolerance).all()
    fig = s_curve_figure(14, 8, table)
    assert len(fig.data) == 2 and fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_union_find_joins_chains_of_band_collisions():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 9, 9], [5, 6, 7, 8]], np.uint64)
    assert near_duplicate_clusters(sig, bands=2, rows=2).tolist() == [0, 0, 0, 3]
    with pytest.raises(LabkitError, match="bands"):
        near_duplicate_clusters(sig, bands=3, rows=2)


def test_minhash_dedup_keeps_one_document_per_cluster():
    rng = np.random.default_rng(4)
    a, b, c = (random_text(rng) for _ in range(3))
    docs = [Document("a", a), Document("b", b), Document("a2", mutate_words(a, 0.01, seed=1)),
            Document("c", c), Document("b2", mutate_words(b, 0.01, seed=2)),
            Document("a3", a.upper())]
    accounting = Accounting()
    kept, table = run_pipeline([minhash_dedup], docs, accounting)
    assert [d.id for d in kept] == ["a", "b", "c"]
    assert sorted(accounting.drops) == [
        ("a2", "minhash_dedup", "near_duplicate_of:a"),
        ("a3", "minhash_dedup", "near_duplicate_of:a"),
        ("b2", "minhash_dedup", "near_duplicate_of:b"),
    ]
    assert table.iloc[0]["reasons"] == {"near_duplicate_of": 3}
    with pytest.raises(LabkitError, match="bands \\* rows"):
        list(minhash_dedup(docs, Accounting(), num_perm=100))


def test_exact_dedup_uses_the_normalised_text():
    docs = [Document("a", "Hello, World! 42"), Document("b", "hello world 17"),
            Document("c", "Hello there")]
    accounting = Accounting()
    kept = list(exact_dedup(docs, accounting))
    assert [d.id for d in kept] == ["a", "c"]
    assert accounting.drops == [("b", "exact_dedup", "exact_duplicate_of:a")]
