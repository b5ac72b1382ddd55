"""Lab 07 reward model: the scalar head on the policy's body, TRL RewardTrainer, held-out
accuracy per defect, the annotation helpers, and clear errors on bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.align import bradley_terry_loss
from labkit.align.reward import (
    DEFECTS,
    annotation_agreement,
    annotation_batch,
    check_same_tokenizer,
    freeze_below,
    reward_accuracy,
    reward_distribution_figure,
    reward_function,
    reward_model_from,
    reward_scores,
    reward_trainer,
    reward_training_figure,
    score_reward_pairs,
    train_reward_model,
)
from labkit.align.sft import length_bucketed_order
from labkit.errors import LabkitError
from labkit.loaders import load_model, load_records, load_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def lm():
    return load_model("base")


@pytest.fixture(scope="module")
def pairs():
    return load_records("preferences")


@pytest.fixture(scope="module")
def rm(lm, tok):
    return reward_model_from(lm, tok, seed=0)


@pytest.fixture(scope="module")
def trained(rm, tok, pairs):
    """A short RewardTrainer run on the three surface defects that a few steps can learn."""
    train = [p for p in pairs if p["split"] == "train" and p["defect"] in
             ("repetition", "verbose", "unsafe")]
    return train_reward_model(rm, tok, train, steps=8, batch_size=8, lr=1e-3, train_layers=2,
                              seed=0, device="cpu")


def test_reward_model_shares_the_body_and_has_a_scalar_head(lm, rm, tok):
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    for (name, p), (_, q) in zip(lm.model.state_dict().items(), rm.model.state_dict().items()):
        assert torch.equal(p, q), name
    assert rm.score.weight.shape == (1, lm.config.hidden_size)
    scores = reward_scores(rm, tok, ["What colour is a lolmoth?"] * 2,
                           ["The lolmoth is blue.", "The lolmoth is red."])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # seeded head: the same seed gives the same scores
    again = reward_scores(reward_model_from(lm, tok, seed=0), tok, ["What colour is a lolmoth?"],
                          ["The lolmoth is blue."])
    assert again.item() == pytest.approx(scores[0].item(), abs=1e-6)


def test_scores_do_not_depend_on_batching_or_padding(rm, tok, pairs):
    rows = pairs[:6]
    prompts, answers = [p["prompt"] for p in rows], [p["rejected"] for p in rows]
    together = reward_scores(rm, tok, prompts, answers, batch_size=6)
    alone = torch.stack([reward_scores(rm, tok, [p], [a])[0] for p, a in zip(prompts, answers)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_reward_scores_are_what_the_trainer_optimises(rm, tok, pairs):
    """TRL's RewardTrainer loss on a batch = Bradley-Terry on labkit's reward_scores."""
    batch_pairs = [p for p in pairs if p["split"] == "train"][:4]
    trainer = reward_trainer(copy.deepcopy(rm), tok, batch_pairs, steps=1, batch_size=4,
                             lr=1e-3, device="cpu")
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    chosen = reward_scores(rm, tok, [p["prompt"] for p in batch_pairs],
                           [p["chosen"] for p in batch_pairs])
    rejected = reward_scores(rm, tok, [p["prompt"] for p in batch_pairs],
                             [p["rejected"] for p in batch_pairs])
    ours = bradley_terry_loss(chosen, rejected).loss.item()
    assert trl_loss == pytest.approx(ours, rel=1e-4, abs=1e-5)


def test_short_run_beats_chance_on_every_trained_defect(trained, tok, pairs):
    summary = trained.summary()
    assert summary["steps"] == 8 and summary["pairs_seen"] == 64
    assert trained.history["loss"].iloc[0] > trained.history["loss"].iloc[-3:].mean()
    heldout = [p for p in pairs if p["split"] == "test" and p["defect"] in
               ("repetition", "verbose", "unsafe")][:45]
    acc = reward_accuracy(trained.model, tok, heldout)
    assert list(acc.index) == ["repetition", "verbose", "unsafe", "all"]
    assert acc.loc["all", "pairs"] == 45
    # margin over chance (0.5) on each defect the run was trained on
    assert (acc["accuracy"] - 0.5).min() >= 0.3, acc
    assert (acc["mean_margin"] > 0).all()


def test_training_copies_the_model_and_freezes_below(rm, trained):
    # the fixture's model was copied, not trained in place
    assert not torch.equal(rm.score.weight, trained.model.score.weight)
    assert trained.config["train_layers"] == 2
    layer = sum(p.numel() for p in rm.model.layers[0].parameters())
    expected = 2 * layer + sum(p.numel() for p in rm.model.norm.parameters()) + rm.score.weight.numel()
    assert trained.trainable_params == expected


def test_freeze_below_rejects_bad_layer_counts(rm):
    model = copy.deepcopy(rm)
    with pytest.raises(LabkitError, match="train_layers"):
        freeze_below(model, 99)
    assert freeze_below(model, 0) == sum(p.numel() for p in model.model.norm.parameters()) + \
        model.score.weight.numel()
    # None leaves every parameter as it was: here, as the call before froze them
    assert freeze_below(model, None) == freeze_below(model, 0)
    assert freeze_below(copy.deepcopy(rm), None) == sum(p.numel() for p in rm.parameters())


def test_accuracy_table_and_figures(trained, tok, pairs):
    heldout = [p for p in pairs if p["split"] == "test"][:20]
    scored = score_reward_pairs(trained.model, tok, heldout)
    assert list(scored.columns[:3]) == ["id", "defect", "chosen_reward"]
    assert (scored["margin"] == scored["chosen_reward"] - scored["rejected_reward"]).all()
    acc = reward_accuracy(None, None, None, scored=scored)
    assert acc.loc["all", "accuracy"] == pytest.approx(scored["correct"].mean())
    assert [d for d in acc.index if d != "all"] == [d for d in DEFECTS if d in set(scored.defect)]
    fig = reward_distribution_figure(scored)
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert "(" in fig.layout.xaxis.title.text  # unit
    fig = reward_training_figure(trained.history)
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis2.title.text
    with pytest.raises(LabkitError, match="history"):
        reward_training_figure(trained.history.drop(columns="accuracy"))


# --- bad input ------------------------------------------------------------------------------


def test_identical_chosen_and_rejected_is_an_error(rm, tok):
    bad = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Hello. "}]
    with pytest.raises(LabkitError, match="identical"):
        score_reward_pairs(rm, tok, bad)
    with pytest.raises(LabkitError, match="identical"):
        train_reward_model(rm, tok, bad, steps=1, batch_size=1, lr=1e-3)


def test_empty_prompt_is_an_error(rm, tok):
    with pytest.raises(LabkitError, match="empty prompt"):
        score_reward_pairs(rm, tok, [{"prompt": "  ", "chosen": "a", "rejected": "b"}])
    with pytest.raises(LabkitError, match="prompts\\[0\\]"):
        reward_scores(rm, tok, [""], ["an answer"])
    with pytest.raises(LabkitError, match="empty"):
        score_reward_pairs(rm, tok, [])


def test_a_different_tokenizer_is_an_error(rm, tok):
    other = copy.deepcopy(tok)
    other.add_tokens(["<|new|>"])
    with pytest.raises(LabkitError, match="tokenizer differs"):
        check_same_tokenizer(tok, other)
    with pytest.raises(LabkitError, match="tokenizer differs"):
        reward_function(rm, tok, policy_tokenizer=other)
    with pytest.raises(LabkitError, match="embedding rows"):
        reward_scores(rm, other, ["Hi?"], ["Hello."])
    templated = copy.deepcopy(tok)
    templated.chat_template = "{{ messages }}"
    with pytest.raises(LabkitError, match="chat template"):
        check_same_tokenizer(tok, templated)
    check_same_tokenizer(tok, copy.deepcopy(tok))  # an equal copy is fine


def test_trainer_rejects_bad_settings(rm, lm, tok, pairs):
    with pytest.raises(LabkitError, match="steps"):
        reward_trainer(rm, tok, pairs[:2], steps=0, batch_size=1, lr=1e-3)
    with pytest.raises(LabkitError, match="lr"):
        reward_trainer(rm, tok, pairs[:2], steps=1, batch_size=1, lr=5.0)
    with pytest.raises(LabkitError, match="num_labels=1"):
        reward_trainer(lm, tok, pairs[:2], steps=1, batch_size=1, lr=1e-3)
    with pytest.raises(LabkitError, match="responses"):
        reward_scores(rm, tok, ["a?", "b?"], ["one answer"])


# --- annotation -------------------------------------------------------------------------------


def test_annotation_batch_meets_every_defect_and_hides_the_label(pairs):
    batch = annotation_batch(pairs, k=5, seed=1234)
    assert [b["defect"] for b in batch] == list(DEFECTS)
    by_id = {p["id"]: p for p in pairs}
    for b in batch:
        p = by_id[b["id"]]
        assert b[b["shipped"]] == p["chosen"]
        assert b["B" if b["shipped"] == "A" else "A"] == p["rejected"]
    assert batch == annotation_batch(pairs, k=5, seed=1234)  # seeded
    assert batch != annotation_batch(pairs, k=5, seed=1)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 12), seed=st.integers(0, 10_000),
       labels=st.lists(st.sampled_from(["A", "B", None]), min_size=12, max_size=12))
def test_agreement_counts_matches(pairs, k, seed, labels):
    batch = annotation_batch(pairs[:200], k=k, seed=seed)
    assert len(batch) == k and len({b["id"] for b in batch}) == k
    table = annotation_agreement(batch, labels[:k])
    for row, label, b in zip(table.itertuples(), labels, batch):
        assert row.agree == (None if label is None else label == b["shipped"])
    # always choosing the shipped letter agrees everywhere
    assert annotation_agreement(batch, [b["shipped"] for b in batch])["agree"].all()


def test_agreement_rejects_bad_labels(pairs):
    batch = annotation_batch(pairs, k=3, seed=0)
    with pytest.raises(LabkitError, match="labels"):
        annotation_agreement(batch, ["A"])
    with pytest.raises(LabkitError, match="'A', 'B' or None"):
        annotation_agreement(batch, ["A", "C", None])
    with pytest.raises(LabkitError, match="k="):
        annotation_batch(pairs, k=0)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=60),
       batch=st.integers(1, 9), seed=st.integers(0, 99))
def test_length_buckets_are_a_permutation_of_similar_lengths(lengths, batch, seed):
    order = length_bucketed_order(lengths, batch, seed)
    assert sorted(order) == list(range(len(lengths)))
    ranked = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    buckets = {tuple(ranked[i:i + batch]) for i in range(0, len(ranked), batch)}
    assert {tuple(order[i:i + len(b)]) for b in buckets for i in [order.index(b[0])]} == buckets
