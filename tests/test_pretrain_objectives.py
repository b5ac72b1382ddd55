"""The causal mask and BERT's 80/10/10 corruption, checked against the models and by counting."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.models import ModelShape, build_causal_lm
from labkit.pretrain.objectives import (
    KEPT,
    MASKED,
    RANDOM,
    UNCHANGED,
    causal_lm_labels,
    causal_mask,
    causal_mask_figure,
    corruption_kinds,
    mlm_corruption_figure,
    mlm_mask,
)

V, MASK_ID, CLS, SEP, PAD = 1000, 4, 1, 2, 0
SPECIAL = [PAD, CLS, SEP, 3]


def test_causal_mask_is_lower_triangular():
    assert causal_mask(3).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    assert causal_mask(7).sum().item() == 7 * 8 // 2
    with pytest.raises(LabkitError, match="n=0"):
        causal_mask(0)


def test_causal_mask_matches_the_attention_a_llama_computes():
    model = build_causal_lm(50, ModelShape(32, 1, 2, max_len=16), attn_implementation="eager")
    ids = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(0))
    attentions = model(ids, output_attentions=True).attentions[0][0]  # (heads, query, key)
    for head in attentions:
        assert torch.equal(head > 0, causal_mask(9))


def test_causal_labels_are_the_inputs_with_padding_ignored():
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    assert causal_lm_labels(ids, pad_token_id=0).tolist() == [[5, 6, 7, -100, -100]]
    mask = torch.tensor([[1, 1, 0, 0, 0]])
    assert causal_lm_labels(ids, attention_mask=mask).tolist() == [[5, 6, -100, -100, -100]]
    assert causal_lm_labels(ids).tolist() == ids.tolist()  # packed blocks: every token counts


@pytest.fixture(scope="module")
def big_draw():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (256, 512), generator=g)
    ids[:, 0], ids[:, -1], ids[::7, 100:110] = CLS, SEP, PAD
    corrupted, labels, chosen = mlm_mask(ids, V, MASK_ID, SPECIAL, p=0.15, generator=g)
    return ids, corrupted, labels, chosen


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_mlm_statistics_are_15_percent_then_80_10_10(big_draw):
    ids, corrupted, _, chosen = big_draw
    eligible = ~torch.isin(ids, torch.tensor(SPECIAL))
    n_chosen, n_eligible = int(chosen.sum()), int(eligible.sum())
    assert within_binomial(n_chosen, n_eligible, 0.15)
    kinds = corruption_kinds(ids, corrupted, chosen, MASK_ID)
    # A random draw equal to the original token (prob ~1/995) reads as unchanged.
    p_same = 1 / (V - len(SPECIAL))
    expected = {MASKED: 0.8, RANDOM: 0.1 * (1 - p_same), UNCHANGED: 0.1 + 0.1 * p_same}
    for kind, p in expected.items():
        assert within_binomial(int((kinds == kind).sum()), n_chosen, p), kind
    assert int((kinds == KEPT).sum()) == ids.numel() - n_chosen


def test_mlm_loss_positions_are_exactly_the_chosen_ones(big_draw):
    ids, corrupted, labels, chosen = big_draw
    assert torch.equal(labels != -100, chosen)
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])  # nothing else is touched
    assert not chosen[torch.isin(ids, torch.tensor(SPECIAL))].any()  # specials never chosen
    random_ids = corrupted[chosen & (corrupted != MASK_ID) & (corrupted != ids)]
    assert not torch.isin(random_ids, torch.tensor(SPECIAL + [MASK_ID])).any()


def test_mlm_mask_is_deterministic_given_the_generator():
    ids = torch.randint(5, V, (4, 64), generator=torch.Generator().manual_seed(1))
    a = mlm_mask(ids, V, MASK_ID, SPECIAL, generator=torch.Generator().manual_seed(7))
    b = mlm_mask(ids, V, MASK_ID, SPECIAL, generator=torch.Generator().manual_seed(7))
    c = mlm_mask(ids, V, MASK_ID, SPECIAL, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 4), cols=st.integers(1, 40), p=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_mlm_mask_invariants(rows, cols, p, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (rows, cols), generator=g)
    corrupted, labels, chosen = mlm_mask(ids, 30, MASK_ID, [0, 1], p=p, generator=g)
    assert corrupted.shape == labels.shape == chosen.shape == ids.shape
    assert torch.equal(labels != -100, chosen)
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    assert not chosen[(ids == 0) | (ids == 1) | (ids == MASK_ID)].any()
    assert int(corrupted.max()) < 30 and int(corrupted.min()) >= 0


def test_mlm_mask_rejects_bad_input():
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(LabkitError, match=r"p=1.5"):
        mlm_mask(ids, V, MASK_ID, p=1.5)
    with pytest.raises(LabkitError, match=r"mask_token_id=1000"):
        mlm_mask(ids, V, 1000)
    with pytest.raises(LabkitError, match=r"id 7 >= vocab_size=7"):
        mlm_mask(ids, 7, MASK_ID)


def test_figures_have_titles_and_token_axes():
    tokens = ["the", "cat", "sat", "the"]
    fig = causal_mask_figure(tokens)
    assert "Causal" in fig.layout.title.text and fig.layout.xaxis.title.text
    assert list(fig.data[0].x) == ["0:the", "1:cat", "2:sat", "3:the"]
    assert list(fig.data[0].z[0]) == [1, 0, 0, 0]
    fig = mlm_corruption_figure(
        tokens, ["the", "[MASK]", "dog", "the"], [KEPT, MASKED, RANDOM, KEPT]
    )
    assert "Masked" in fig.layout.title.text and fig.layout.xaxis.title.text
    assert list(fig.data[0].text[2]) == ["", "cat", "sat", ""]  # only chosen positions have a label
    with pytest.raises(LabkitError, match="same length"):
        mlm_corruption_figure(tokens, tokens[:2], [0, 0])
