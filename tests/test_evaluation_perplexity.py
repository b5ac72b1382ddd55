"""Perplexity: known distributions, disjoint vs strided windows, and the HF recipe cross-check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.evaluation import (
    bits_per_byte,
    disjoint_windows,
    perplexity,
    stride_figure,
    stride_sweep,
    strided_windows,
)
from labkit.models import ModelShape, build_causal_lm

CORPUS = [
    "The river Vella flows north through the valley of Zorn, past the mills and the old bridge.",
    "In the market of Zorn, traders sell salt, copper and wool; the copper comes from the hills.",
    "Question: Which way does the river flow?\nAnswer: north, through the valley.",
    "def add(a, b):\n    return a + b\n",
]
TEXT = " ".join(CORPUS * 3)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_causal_lm(len(tokenizer), ModelShape(d_model=32, n_layer=2, n_head=2, max_len=64))


class FixedDistributionLM(torch.nn.Module):
    """Predicts the same next-token distribution (given as logits) at every position."""

    def __init__(self, logits: torch.Tensor, max_len: int = 64):
        super().__init__()
        self.register_buffer("fixed", logits)
        self.config = SimpleNamespace(max_position_embeddings=max_len)

    def forward(self, input_ids):
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.fixed.expand(batch, length, -1).clone())


def test_uniform_logits_give_vocab_size(tokenizer, model):
    vocab = len(tokenizer)
    zeroed = build_causal_lm(vocab, ModelShape(d_model=32, n_layer=2, n_head=2, max_len=64))
    with torch.no_grad():
        zeroed.lm_head.weight.zero_()  # tied to the embeddings: every logit is exactly 0
    for lm in (zeroed, FixedDistributionLM(torch.zeros(vocab))):
        for stride in (None, 16):
            result = perplexity(lm, tokenizer, TEXT, window=32, stride=stride)
            assert result.perplexity == pytest.approx(vocab, rel=1e-5)
            expected_bpb = result.n_tokens * math.log2(vocab) / len(TEXT.encode())
            assert result.bits_per_byte == pytest.approx(expected_bpb, rel=1e-5)


def test_known_unigram_distribution(tokenizer):
    vocab = len(tokenizer)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=gen) * 2
    logp = torch.log_softmax(logits, dim=-1).double()
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    expected = math.exp(-logp[ids].mean().item())
    result = perplexity(FixedDistributionLM(logits), tokenizer, TEXT, window=40, stride=8)
    assert result.n_tokens == len(ids)  # every token scored exactly once
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_stride_equal_window_is_disjoint_exactly(tokenizer, model):
    disjoint = perplexity(model, tokenizer, TEXT, window=24)
    strided = perplexity(model, tokenizer, TEXT, window=24, stride=24)
    assert np.array_equal(disjoint.nll, strided.nll)
    assert disjoint.forward_tokens == strided.forward_tokens
    assert disjoint.perplexity == strided.perplexity


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.data())
def test_window_plans_score_every_token_once(n, window, data):
    stride = data.draw(st.integers(1, window))
    assert strided_windows(n, window, window) == disjoint_windows(n, window)
    for plan in (disjoint_windows(n, window), strided_windows(n, window, stride)):
        scored = []
        for begin, end, n_new in plan:
            assert 0 <= begin < end <= n and end - begin <= window and 1 <= n_new <= end - begin
            scored.extend(range(end - n_new, end))
        assert scored == list(range(n))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=200), st.integers(1, 40))
def test_disjoint_windows_match_lm_eval_rolling(tokens, window):
    from lm_eval.utils import get_rolling_token_windows

    prefix = 999
    stream = [prefix, *tokens]
    ours = [
        (stream[b:e], stream[b + 1 : e + 1]) for b, e, _ in disjoint_windows(len(tokens), window)
    ]
    theirs = [(list(a), list(b)) for a, b in get_rolling_token_windows(tokens, prefix, window, 1)]
    # the same predicted chunks, and the same inputs for every full window
    assert [pred for _, pred in ours] == [pred for _, pred in theirs]
    assert ours[:-1] == theirs[:-1]
    # lm-eval hands a final partial chunk a full window of context: ours is its suffix
    (ours_input, _), (their_input, _) = ours[-1], theirs[-1]
    assert their_input[len(their_input) - len(ours_input) :] == ours_input
    assert len(their_input) == min(window, len(tokens))


def test_strided_matches_hf_recipe(tokenizer, model):
    """The Hugging Face perplexity recipe (labels -100 outside the new tokens, model loss)."""
    window, stride = 24, 8
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    stream = torch.tensor([[tokenizer.bos_token_id, *ids]])
    seq_len = stream.size(1)
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    # HF's window counts the token whose prediction is not scored: it is ours + 1.
    for begin in range(0, seq_len, stride):
        end = min(begin + window + 1, seq_len)
        trg_len = end - prev_end
        input_ids = stream[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        valid = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss.item() * valid
        n_scored += valid
        prev_end = end
        if end == seq_len:
            break
    ours = perplexity(model, tokenizer, TEXT, window=window, stride=stride)
    assert n_scored == ours.n_tokens
    assert ours.total_nll == pytest.approx(nll_sum, rel=1e-5)


# Snapshot of the seeded random model on TEXT (window 32, stride 16), measured with torch 2.13
# on CPU: a random init is nearly uniform, so this sits just below the vocabulary size, 320.
REFERENCE_PPL = 319.30219


def test_random_model_reference_value(tokenizer, model):
    result = perplexity(model, tokenizer, TEXT, window=32, stride=16)
    assert result.n_tokens == len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert result.perplexity == pytest.approx(REFERENCE_PPL, rel=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_documents_share_padded_batches_and_score_as_alone(tokenizer, model, batch_size):
    """Several documents' windows go into shared right-padded batches (longest first): each
    document's token NLLs are those of scoring it alone, in its own order."""
    docs = [TEXT, CORPUS[0], CORPUS[2], CORPUS[3], TEXT[:150]]
    together = perplexity(model, tokenizer, docs, window=32, stride=16, batch_size=batch_size)
    alone = [perplexity(model, tokenizer, d, window=32, stride=16, batch_size=1) for d in docs]
    np.testing.assert_allclose(together.nll, np.concatenate([a.nll for a in alone]), rtol=1e-5,
                               atol=1e-5)  # float32 rounding of a different batch shape only
    assert together.context.tolist() == np.concatenate([a.context for a in alone]).tolist()
    assert together.n_tokens == sum(a.n_tokens for a in alone)
    assert together.forward_tokens == sum(a.forward_tokens for a in alone)


def test_sweep_compute_and_context(tokenizer, model):
    sweep = stride_sweep(model, tokenizer, [TEXT, CORPUS[0]], window=32, strides=[32, 8, 16])
    assert sweep["stride"].tolist() == [8, 16, 32]
    assert sweep["forward_tokens"].is_monotonic_decreasing
    assert sweep["mean_context"].is_monotonic_decreasing
    assert sweep["tokens"].nunique() == 1  # every stride scores the same tokens
    fig = stride_figure(sweep)
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "stride (tokens)"
    assert fig.layout.yaxis.title.text and fig.layout.yaxis2.title.text


def test_bad_input(tokenizer, model):
    with pytest.raises(LabkitError, match="window=100"):
        perplexity(model, tokenizer, TEXT, window=100)  # the model takes 64
    with pytest.raises(LabkitError, match="stride=40"):
        perplexity(model, tokenizer, TEXT, window=32, stride=40)
    with pytest.raises(LabkitError, match="stride=0"):
        perplexity(model, tokenizer, TEXT, window=32, stride=0)
    with pytest.raises(LabkitError, match="non-empty"):
        perplexity(model, tokenizer, "")
    with pytest.raises(LabkitError, match="n_bytes"):
        bits_per_byte(1.0, 0)


def test_profile_settings():
    import labkit

    for name in ("cpu", "gpu"):
        settings_ = labkit.profile(name).settings("evaluation")
        assert settings_.window in settings_.strides
        assert max(settings_.ks) <= settings_.n_samples
