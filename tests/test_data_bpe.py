"""Byte-level BPE: the check case, round trips, fast == naive merges, and HF tokenizers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.data import (
    BPETokenizer,
    bytes_per_token,
    naive_train_bpe,
    split_chunks,
    train_bpe,
    train_hf_bpe,
)
from labkit.errors import LabkitError

_RNG = random.Random(0)
_SYLLABLES = ["ta", "ri", "mon", "ke", "lu", "pra", "dos", "vi", "ne", "sha", "tor", "il"]
WORDS = ["the", "of", "and", "to"] + ["".join(_RNG.choices(_SYLLABLES, k=_RNG.randint(1, 4)))
                                      for _ in range(300)]
CORPUS = " ".join(_RNG.choice(WORDS) for _ in range(4000)) + (
    "\nNumbers 12345 and 2024, punctuation!? Café naïve 日本語のテキスト 🙂🚀 it's we'll\n")


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return train_bpe(CORPUS, 400, pattern="gpt4")


def test_check_case_from_minbpe():
    for train in (train_bpe, naive_train_bpe):
        tok = train("aaabdaaabac", 256 + 3, pattern=None)
        assert tok.merges == [(97, 97), (97, 98), (256, 257)]
        assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
        assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def test_pre_tokenisation_patterns():
    text = "Hello world's 12345 tokens!!\n\n  end"
    assert split_chunks(text, "gpt2") == ["Hello", " world", "'s", " 12345", " tokens", "!!",
                                          "\n\n ", " end"]
    assert split_chunks(text, "gpt4") == ["Hello", " world", "'s", " ", "123", "45", " tokens",
                                          "!!\n\n", " ", " end"]
    assert split_chunks(text, None) == [text] and split_chunks("", None) == []


def test_gpt2_pattern_splits_like_hf_byte_level():
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    text = CORPUS[-120:] + " 3.14159 x  y\t\tz"
    theirs = [piece.replace("Ġ", " ").replace("Ċ", "\n").replace("ĉ", "\t")
              for piece, _ in byte_level.pre_tokenize_str(text)]
    ours = split_chunks(text, "gpt2")
    assert len(ours) == len(theirs)
    assert [c for c in ours if c.isascii()] == [c for c in theirs if c.isascii()]


@pytest.mark.parametrize("text", ["", "🙂🚀👩‍👩‍👧", "日本語のテキストです。", "naïve café", "a\n\tb  c",
                                  CORPUS])
def test_decode_encode_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("utf-8", errors="replace"))))
def test_round_trip_property(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet="ab c\nd'1é", max_size=80),
    n_merges=st.integers(0, 25),
    pattern=st.sampled_from(["gpt2", "gpt4", None]),
)
def test_fast_trainer_merges_equal_naive_merges(text, n_merges, pattern):
    fast = train_bpe(text, 256 + n_merges, pattern)
    naive = naive_train_bpe(text, 256 + n_merges, pattern)
    assert fast.merges == naive.merges
    assert fast.encode(text) == naive.encode(text)


def test_fast_equals_naive_on_a_real_corpus(tokenizer):
    naive = naive_train_bpe(CORPUS[:6000], 360, "gpt4")
    assert train_bpe(CORPUS[:6000], 360, "gpt4").merges == naive.merges
    assert len(tokenizer.merges) == 400 - 256
    assert tokenizer.vocab[tokenizer.merges[0][0]] + tokenizer.vocab[tokenizer.merges[0][1]] == (
        tokenizer.vocab[256])


def test_hf_tokenizers_compresses_alike(tokenizer):
    hf = train_hf_bpe(CORPUS, 400)
    assert hf.get_vocab_size() <= 400
    assert hf.decode(hf.encode(CORPUS).ids) == CORPUS
    ours, theirs = bytes_per_token(tokenizer, CORPUS), bytes_per_token(hf, CORPUS)
    assert ours > 3.0 and theirs > 3.0  # both learned the word list
    assert ours == pytest.approx(theirs, rel=0.1)
    assert bytes_per_token(train_bpe(CORPUS, 256), CORPUS) == 1.0  # no merges: one byte each


def test_bad_vocab_size():
    with pytest.raises(LabkitError, match="vocab_size"):
        train_bpe("abc", 100)
