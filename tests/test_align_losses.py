"""Preference losses: each equals its formula on hand-made numbers and TRL 1.16's own code.

TRL computes these losses inside trainer methods. The cross-checks call those real methods on a
trainer made with `object.__new__` (no dataset, no optimizer) and, where the method runs the
model itself, a stand-in model whose per-token log-prob is a fixed number per token id:
  DPO sigmoid/ipo/hinge  DPOTrainer._compute_loss          trl/trainer/dpo_trainer.py
  KTO                    KTOTrainer._compute_loss          trl/trainer/kto_trainer.py
  ORPO                   ORPOTrainer.get_batch_loss_metrics trl/experimental/orpo/orpo_trainer.py
  SimPO                  CPOTrainer.get_batch_loss_metrics  trl/experimental/cpo/cpo_trainer.py
  Bradley-Terry          RewardTrainer.compute_loss         trl/trainer/reward_trainer.py
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.align import (
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    kto_loss,
    mismatched_completions,
    orpo_loss,
    sequence_logprobs,
    simpo_loss,
)
from labkit.errors import LabkitError
from labkit.models import ModelShape, build_causal_lm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental warns on import
    from trl import DPOTrainer, KTOTrainer, RewardTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer
    from trl.trainer.utils import add_fused_lm_head

TOL = 1e-6
F64 = torch.float64


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# --- the formulas on hand-made numbers -------------------------------------------------------
# One pair: policy log-probs chosen -5, rejected -7; reference -6 and -6.
# Log-ratios: chosen +1, rejected -1, so h = 2.
PAIR = dict(
    policy_chosen_logps=[-5.0],
    policy_rejected_logps=[-7.0],
    ref_chosen_logps=[-6.0],
    ref_rejected_logps=[-6.0],
)


def test_bradley_terry_equals_formula_on_fixed_rewards():
    r_chosen, r_rejected = [2.0, -1.0, 0.5], [1.0, 0.5, 0.5]
    result = bradley_terry_loss(r_chosen, r_rejected)
    expected = [-log_sigmoid(c - r) for c, r in zip(r_chosen, r_rejected, strict=True)]
    assert result.losses.tolist() == pytest.approx(expected, abs=TOL)
    assert result.loss.item() == pytest.approx(sum(expected) / 3, abs=TOL)
    assert result.loss.item() == pytest.approx(0.9026, abs=1e-4)  # (0.3133 + 1.7014 + 0.6931) / 3
    assert result.accuracy == pytest.approx(1 / 3)
    with_margin = bradley_terry_loss(r_chosen, r_rejected, margin=[0.5, 0.0, 0.0])
    assert with_margin.losses[0].item() == pytest.approx(-log_sigmoid(0.5), abs=TOL)


def test_dpo_equals_formula():
    result = dpo_loss(**PAIR, beta=0.1)
    assert result.loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=TOL)
    assert result.chosen_rewards.item() == pytest.approx(0.1, abs=TOL)
    assert result.rejected_rewards.item() == pytest.approx(-0.1, abs=TOL)
    assert result.margins.item() == pytest.approx(0.2, abs=TOL)


def test_implicit_rewards_are_beta_log_ratio():
    rewards = implicit_rewards([-5.0, -9.0], [-6.0, -8.0], beta=0.5)
    assert rewards.tolist() == pytest.approx([0.5, -0.5], abs=TOL)


def test_ipo_equals_formula_with_and_without_length_normalisation():
    paper = ipo_loss(**PAIR, beta=0.1)
    assert paper.loss.item() == pytest.approx((2 - 1 / 0.2) ** 2, abs=TOL)  # 9.0
    # TRL's form: each log-ratio divided by its response length (2 and 4 tokens).
    trl_form = ipo_loss(**PAIR, beta=0.1, chosen_lengths=[2], rejected_lengths=[4])
    assert trl_form.loss.item() == pytest.approx((1 / 2 + 1 / 4 - 5) ** 2, abs=TOL)
    assert trl_form.chosen_rewards.item() == pytest.approx(0.1, abs=TOL)


def test_hinge_equals_formula_and_stops_at_margin():
    assert hinge_loss(**PAIR, beta=0.1).loss.item() == pytest.approx(1 - 0.1 * 2, abs=TOL)
    assert hinge_loss(**PAIR, beta=1.0).loss.item() == 0.0  # gap 2 is past 1/beta


def test_kto_equals_formula():
    beta = 0.1
    ratios = [1.0, -1.0, 0.5]  # policy - ref for each response
    kl_diffs = [0.5, 0.5, 0.3]  # policy - ref on the mismatched pairs
    result = kto_loss(
        policy_logps=[-5.0, -7.0, -4.0],
        ref_logps=[-6.0, -6.0, -4.5],
        desirable=[True, False, True],
        policy_kl_logps=[-8.0, -9.0, -10.0],
        ref_kl_logps=[-8.5, -9.5, -10.3],
        beta=beta,
    )
    z = sum(kl_diffs) / 3
    expected = [
        1 - sigmoid(beta * (ratios[0] - z)),
        1 - sigmoid(beta * (ratios[2] - z)),
        1 - sigmoid(beta * (z - ratios[1])),
    ]
    assert result.kl.item() == pytest.approx(z, abs=TOL)
    assert result.losses.tolist() == pytest.approx(expected, abs=TOL)
    assert result.loss.item() == pytest.approx(sum(expected) / 3, abs=TOL)
    assert result.chosen_rewards.tolist() == pytest.approx([0.1, 0.05], abs=TOL)
    assert result.rejected_rewards.tolist() == pytest.approx([-0.1], abs=TOL)


def test_kto_kl_baseline_is_clamped_at_zero():
    result = kto_loss([-5.0, -7.0], [-6.0, -6.0], [True, False], [-9.0, -9.0], [-8.0, -8.0])
    assert result.kl.item() == 0.0
    assert result.losses[0].item() == pytest.approx(1 - sigmoid(0.1 * 1.0), abs=TOL)


def test_mismatched_completions_rotate_by_one():
    assert mismatched_completions(["a", "b", "c"]) == ["c", "a", "b"]
    with pytest.raises(LabkitError):
        mismatched_completions(["a"])


def test_orpo_equals_formula():
    # chosen: 4 tokens summing to -2 (mean -0.5); rejected: 3 tokens summing to -6 (mean -2)
    result = orpo_loss([-2.0], [-6.0], [4], [3], beta=0.1)

    def log_odds(mean_logp):
        return mean_logp - math.log(1 - math.exp(mean_logp))

    nll = 2.0 / 4
    expected = nll - 0.1 * log_sigmoid(log_odds(-0.5) - log_odds(-2.0))
    assert result.loss.item() == pytest.approx(expected, abs=TOL)
    assert result.chosen_rewards.item() == pytest.approx(0.1 * -0.5, abs=TOL)
    given_nll = orpo_loss([-2.0], [-6.0], [4], [3], beta=0.1, chosen_nll=1.25)
    assert given_nll.loss.item() == pytest.approx(expected - nll + 1.25, abs=TOL)


def test_simpo_equals_formula():
    result = simpo_loss([-2.0], [-6.0], [4], [3], beta=2.0, gamma=1.0)
    assert result.loss.item() == pytest.approx(-log_sigmoid(2.0 * (-0.5 + 2.0) - 1.0), abs=TOL)
    assert result.rejected_rewards.item() == pytest.approx(2.0 * -2.0, abs=TOL)


def test_gradient_flows_to_policy_logps():
    chosen = torch.tensor([-5.0], requires_grad=True)
    dpo_loss(chosen, [-7.0], [-6.0], [-6.0], beta=0.1).loss.backward()
    # d/dx -log sigmoid(beta * h) = -beta * (1 - sigmoid(beta * h))
    assert chosen.grad.item() == pytest.approx(-0.1 * (1 - sigmoid(0.2)), abs=TOL)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_beta_is_rejected(beta):
    with pytest.raises(LabkitError, match="beta"):
        dpo_loss(**PAIR, beta=beta)


def test_shape_mismatch_empty_batch_and_positive_logps_are_rejected():
    with pytest.raises(LabkitError, match="shape"):
        dpo_loss([-1.0, -2.0], [-1.0], [-1.0, -2.0], [-1.0, -2.0])
    with pytest.raises(LabkitError, match="empty"):
        dpo_loss([], [], [], [])
    with pytest.raises(LabkitError, match="1-D"):
        dpo_loss([[-1.0]], [[-1.0]], [[-1.0]], [[-1.0]])
    with pytest.raises(LabkitError, match="<= 0"):
        dpo_loss([0.5], [-1.0], [-1.0], [-1.0])
    with pytest.raises(LabkitError, match="shape"):
        bradley_terry_loss([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(LabkitError, match="lengths"):
        simpo_loss([-2.0], [-3.0], [0], [3])
    with pytest.raises(LabkitError, match="both"):
        ipo_loss(**PAIR, chosen_lengths=[2])
    with pytest.raises(LabkitError, match="at least 2"):
        kto_loss([-1.0], [-1.0], [True], [-1.0], [-1.0])
    with pytest.raises(LabkitError, match="desirable"):
        kto_loss([-1.0, -2.0], [-1.0, -2.0], [True], [-1.0, -2.0], [-1.0, -2.0])
    with pytest.raises(LabkitError, match="gamma"):
        simpo_loss([-2.0], [-3.0], [2], [3], gamma=-1.0)


# --- cross-checks against TRL 1.16 -----------------------------------------------------------


class FakeAccelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


class TokenLogprobModel(torch.nn.Module):
    """Stands in for a model with TRL's fused LM head: log p(token) is a fixed number per id."""

    def __init__(self, token_logps):
        super().__init__()
        self.token_logps = token_logps

    def forward(self, input_ids, attention_mask=None, labels=None, fused_lm_head=True, **_):
        labels = labels[:, 1:]
        mask = labels != -100
        log_probs = self.token_logps[labels.clamp(min=0)] * mask
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=mask & False
        )


def bare_trainer(cls, **attributes):
    """A TRL trainer with only the attributes its loss method reads."""
    trainer = object.__new__(cls)
    trainer.accelerator = FakeAccelerator()
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    trainer.aux_loss_enabled = False
    for name, value in attributes.items():
        setattr(trainer, name, value)
    return trainer


VOCAB, PROMPT, RESPONSE = 50, 3, 6


def random_batch(seed: int, rows: int):
    """Token ids, a completion mask with random response lengths, and per-token log-probs."""
    g = torch.Generator().manual_seed(seed)
    token_logps = -3 * torch.rand(VOCAB, generator=g, dtype=F64) - 1e-3
    input_ids = torch.randint(0, VOCAB, (rows, PROMPT + RESPONSE), generator=g)
    lengths = torch.randint(1, RESPONSE + 1, (rows,), generator=g)
    completion_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        completion_mask[row, PROMPT : PROMPT + length] = 1
    summed = (token_logps[input_ids] * completion_mask).sum(dim=1)
    return g, TokenLogprobModel(token_logps), input_ids, completion_mask, lengths, summed


def trl_dpo(loss_type, beta, model, inputs):
    trainer = bare_trainer(
        DPOTrainer,
        model=model,
        beta=beta,
        loss_types=[loss_type],
        loss_weights=[1.0],
        f_divergence_type="reverse_kl",
        ld_alpha=None,
        precompute_ref_logps=True,
        use_weighting=False,
        label_smoothing=0.0,
    )
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, trainer._metrics["train" if model.training else "eval"]


betas = st.floats(min_value=0.01, max_value=2.0)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=seeds,
    pairs=st.integers(1, 6),
    beta=betas,
    loss_type=st.sampled_from(["sigmoid", "ipo", "hinge"]),
)
def test_dpo_family_matches_trl_dpo_trainer(seed, pairs, beta, loss_type):
    g, model, input_ids, completion_mask, lengths, summed = random_batch(seed, 2 * pairs)
    ref = summed + torch.randn(2 * pairs, generator=g, dtype=F64)
    ref = ref.clamp(max=0)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        completion_mask=completion_mask,
        ref_chosen_logps=ref[:pairs],
        ref_rejected_logps=ref[pairs:],
    )
    trl_loss, metrics = trl_dpo(loss_type, beta, model, inputs)

    args = (summed[:pairs], summed[pairs:], ref[:pairs], ref[pairs:])
    if loss_type == "sigmoid":
        ours = dpo_loss(*args, beta=beta)
    elif loss_type == "hinge":
        ours = hinge_loss(*args, beta=beta)
    else:  # TRL's IPO divides each log-ratio by the response length
        ours = ipo_loss(
            *args, beta=beta, chosen_lengths=lengths[:pairs], rejected_lengths=lengths[pairs:]
        )
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=TOL)
    assert ours.rejected_rewards.mean().item() == pytest.approx(
        metrics["rewards/rejected"][0], abs=TOL
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=seeds,
    rows=st.integers(2, 7),
    beta=betas,
    weights=st.tuples(st.floats(0.5, 2.0), st.floats(0.5, 2.0)),
)
def test_kto_matches_trl_kto_trainer(seed, rows, beta, weights):
    g, model, input_ids, completion_mask, _, summed = random_batch(seed, rows)
    desirable = torch.rand(rows, generator=g) < 0.5
    # KL pairs as TRL builds them: prompt i with the completion of example i-1.
    prompts, completions = input_ids[:, :PROMPT], input_ids[:, PROMPT:]
    kl_input_ids = torch.cat([prompts, torch.stack(mismatched_completions(completions))], dim=1)
    kl_completion_mask = torch.cat(
        [
            completion_mask[:, :PROMPT],
            torch.stack(mismatched_completions(completion_mask[:, PROMPT:])),
        ],
        dim=1,
    )
    policy_kl = (model.token_logps[kl_input_ids] * kl_completion_mask).sum(dim=1)
    ref = (summed + torch.randn(rows, generator=g, dtype=F64)).clamp(max=0)
    ref_kl = (policy_kl + torch.randn(rows, generator=g, dtype=F64)).clamp(max=0)
    batch = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        completion_mask=completion_mask,
        KL_input_ids=kl_input_ids,
        KL_attention_mask=torch.ones_like(kl_input_ids),
        KL_completion_mask=kl_completion_mask,
        label=desirable,
        ref_logps=ref,
        ref_KL_logps=ref_kl,
    )
    trainer = bare_trainer(
        KTOTrainer,
        model=model,
        beta=beta,
        loss_type="kto",
        calculate_KL=True,
        precompute_ref_logps=True,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )
    trl_loss = trainer._compute_loss(model, batch, return_outputs=False)

    ours = kto_loss(
        summed,
        ref,
        desirable,
        policy_kl,
        ref_kl,
        beta=beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert ours.kl.item() == pytest.approx(trainer._metrics["train"]["kl"][0], abs=TOL)
    if desirable.any():
        assert ours.chosen_rewards.mean().item() == pytest.approx(
            trainer._metrics["train"]["rewards/chosen"][0], abs=TOL
        )


def trl_length_averages(seed: int, pairs: int):
    """Random logits and labels; TRL's own summed and per-token-averaged log-probs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * pairs, PROMPT + RESPONSE, VOCAB, generator=g, dtype=F64)
    labels = torch.randint(0, VOCAB, (2 * pairs, PROMPT + RESPONSE), generator=g)
    labels[:, :PROMPT] = -100
    for row in range(2 * pairs):  # random response lengths: the tail is padding
        labels[row, PROMPT + int(torch.randint(1, RESPONSE + 1, (1,), generator=g)) :] = -100
    summed = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    averaged = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    lengths = (labels[:, 1:] != -100).sum(dim=1)
    return g, summed, averaged, lengths


def forward_returning(chosen_avg, rejected_avg, nll):
    """Replaces a trainer's concatenated_forward: the log-probs are given, the logits unused."""
    logits = torch.zeros(len(chosen_avg), 2, 3)
    return lambda model, batch: (chosen_avg, rejected_avg, logits, logits, nll)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=seeds, pairs=st.integers(1, 6), beta=betas)
def test_orpo_matches_trl_orpo_trainer(seed, pairs, beta):
    g, summed, averaged, lengths = trl_length_averages(seed, pairs)
    nll = torch.rand((), generator=g, dtype=F64) * 3  # TRL's NLL covers prompt tokens too
    trainer = bare_trainer(ORPOTrainer, beta=beta)
    trainer.concatenated_forward = forward_returning(averaged[:pairs], averaged[pairs:], nll)
    trl_loss, metrics = trainer.get_batch_loss_metrics(None, batch={})

    ours = orpo_loss(
        summed[:pairs], summed[pairs:], lengths[:pairs], lengths[pairs:], beta=beta, chosen_nll=nll
    )
    # TRL's odds_ratio_loss casts to float32, so agreement is to float32 precision.
    f32 = dict(abs=TOL, rel=1e-6)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), **f32)
    assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], **f32)
    assert ours.margins.mean().item() == pytest.approx(metrics["rewards/margins"], **f32)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=seeds, pairs=st.integers(1, 6), beta=betas, gamma=st.floats(0.0, 2.0))
def test_simpo_matches_trl_cpo_trainer(seed, pairs, beta, gamma):
    _, summed, averaged, lengths = trl_length_averages(seed, pairs)
    trainer = bare_trainer(
        CPOTrainer,
        beta=beta,
        loss_type="simpo",
        simpo_gamma=gamma,
        cpo_alpha=0.0,
        alpha=0.0,
        label_smoothing=0.0,
    )
    nll = torch.tensor(0.0, dtype=F64)  # what TRL's forward gives when cpo_alpha == 0
    trainer.concatenated_forward = forward_returning(averaged[:pairs], averaged[pairs:], nll)
    trl_loss, metrics = trainer.get_batch_loss_metrics(None, batch={})

    ours = simpo_loss(
        summed[:pairs], summed[pairs:], lengths[:pairs], lengths[pairs:], beta=beta, gamma=gamma
    )
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
    assert ours.rejected_rewards.mean().item() == pytest.approx(
        metrics["rewards/rejected"], abs=TOL
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=seeds, pairs=st.integers(1, 6), with_margin=st.booleans())
def test_bradley_terry_matches_trl_reward_trainer(seed, pairs, with_margin):
    g = torch.Generator().manual_seed(seed)
    rewards = 3 * torch.randn(2 * pairs, 1, generator=g, dtype=F64)
    margin = torch.rand(pairs, generator=g, dtype=F64) if with_margin else None
    model = torch.nn.Module()
    model.forward = lambda **inputs: SimpleNamespace(logits=rewards)
    trainer = bare_trainer(
        RewardTrainer, model=model, args=SimpleNamespace(center_rewards_coefficient=None)
    )
    inputs = {"attention_mask": torch.ones(2 * pairs, 4, dtype=torch.long)}
    if with_margin:
        inputs["margin"] = margin
    trl_loss = trainer.compute_loss(model, inputs)

    ours = bradley_terry_loss(rewards[:pairs, 0], rewards[pairs:, 0], margin=margin)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=TOL)


def test_dpo_on_a_real_tiny_llama_matches_trl_end_to_end():
    """TRL's fused LM head and labkit's sequence_logprobs agree, and so do the DPO losses."""
    model = (
        build_causal_lm(VOCAB, ModelShape(d_model=32, n_layer=2, n_head=2, max_len=32), seed=3)
        .double()
        .eval()
    )
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    pairs = 3
    g, _, input_ids, completion_mask, _, _ = random_batch(7, 2 * pairs)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:, PROMPT:] = completion_mask[:, PROMPT:]  # right padding after the response
    ref = -20 * torch.rand(2 * pairs, generator=g, dtype=F64)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        ref_chosen_logps=ref[:pairs],
        ref_rejected_logps=ref[pairs:],
    )
    with torch.no_grad():
        trl_loss, metrics = trl_dpo("sigmoid", 0.1, model, inputs)
        logps = sequence_logprobs(model, input_ids, attention_mask, completion_mask).sum(dim=1)

    assert logps[:pairs].mean().item() == pytest.approx(metrics["logps/chosen"][0], abs=TOL)
    ours = dpo_loss(logps[:pairs], logps[pairs:], ref[:pairs], ref[pairs:], beta=0.1)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=TOL)
