"""PPO pieces against hand-computed values: KL estimators, per-token rewards, GAE, whitening,
the clipped policy and value losses, the KL controllers and sequence_logprobs.

TRL 1.16 no longer ships PPOTrainer (nor its masked_whiten), so these are pinned to values
written out by hand from InstructGPT / TRL's former PPOTrainer formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.align import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    PPOConfig,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    last_token_index,
    per_token_rewards,
    sequence_logprobs,
    whiten,
)
from labkit.errors import LabkitError
from labkit.models import ModelShape, build_causal_lm

TOL = 1e-6
F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


# --- KL estimators ----------------------------------------------------------------------------


def test_kl_estimator_values_and_signs_per_token():
    pi, ref = t([0.5, 0.3, 0.2]), t([0.2, 0.3, 0.5])
    k1, k2, k3 = (kl(pi.log(), ref.log()) for kl in (kl_k1, kl_k2, kl_k3))
    assert k1.tolist() == pytest.approx([math.log(2.5), 0.0, math.log(0.4)], abs=TOL)
    assert k1[2] < 0  # ref likes this token more than pi: k1 is negative
    assert k2.tolist() == pytest.approx([0.5 * math.log(2.5) ** 2, 0.0, 0.5 * math.log(0.4) ** 2])
    expected_k3 = [
        (r / p - 1) - math.log(r / p) for p, r in zip([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], strict=True)
    ]
    assert k3.tolist() == pytest.approx(expected_k3, abs=TOL)
    assert (k3 >= 0).all() and k3[1] == 0  # zero exactly where pi == ref


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(-30, 0), st.floats(-30, 0)), min_size=1, max_size=20))
def test_k2_and_k3_are_never_negative(pairs):
    logprobs, ref_logprobs = t([p for p, _ in pairs]), t([r for _, r in pairs])
    assert (kl_k3(logprobs, ref_logprobs) >= 0).all()
    assert (kl_k2(logprobs, ref_logprobs) >= 0).all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), categories=st.integers(2, 8), spread=st.floats(0.1, 1.5))
def test_k1_and_k3_average_to_the_kl_on_samples_from_pi(seed, categories, spread):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.log_softmax(spread * torch.randn(categories, generator=g, dtype=F64), dim=0)
    log_ref = torch.log_softmax(spread * torch.randn(categories, generator=g, dtype=F64), dim=0)
    exact_kl = (log_pi.exp() * (log_pi - log_ref)).sum().item()

    samples = torch.multinomial(log_pi.exp(), 40_000, replacement=True, generator=g)
    for estimator in (kl_k1, kl_k3):
        k = estimator(log_pi[samples], log_ref[samples])
        standard_error = k.std().item() / math.sqrt(len(k))
        assert abs(k.mean().item() - exact_kl) < 5 * standard_error + 1e-9


def test_k1_is_negative_on_some_samples_while_k3_never_is():
    g = torch.Generator().manual_seed(0)
    log_pi, log_ref = t([0.5, 0.3, 0.2]).log(), t([0.2, 0.3, 0.5]).log()
    samples = torch.multinomial(log_pi.exp(), 2_000, replacement=True, generator=g)
    assert (kl_k1(log_pi[samples], log_ref[samples]) < 0).any()
    assert (kl_k3(log_pi[samples], log_ref[samples]) >= 0).all()
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


# --- per-token rewards ------------------------------------------------------------------------


def test_per_token_rewards_put_the_score_on_the_last_response_token():
    logprobs = t([[0.0, -1.0, -2.0, -0.5, 0.0], [0.0, 0.0, -1.5, -0.2, -3.0]])
    ref_logprobs = t([[0.0, -1.5, -1.0, -0.5, 0.0], [0.0, 0.0, -1.0, -0.7, -2.0]])
    mask = t([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])  # row 0 is right-padded, row 1 is not
    rewards = per_token_rewards(t([2.0, -1.0]), logprobs, ref_logprobs, kl_coef=0.05, mask=mask)
    expected = [
        [0.0, -0.05 * 0.5, -0.05 * -1.0, -0.05 * 0.0 + 2.0, 0.0],
        [0.0, 0.0, -0.05 * -0.5, -0.05 * 0.5, -0.05 * -1.0 - 1.0],
    ]
    assert rewards.tolist() == [pytest.approx(row, abs=TOL) for row in expected]
    assert last_token_index(mask).tolist() == [3, 4]

    with_k3 = per_token_rewards(t([0.0, 0.0]), logprobs, ref_logprobs, 0.1, mask, estimator="k3")
    assert with_k3[0, 1].item() == pytest.approx(-0.1 * (math.exp(-0.5) - 1 + 0.5), abs=TOL)


def test_per_token_rewards_reject_bad_input():
    lp = torch.zeros(2, 4)
    with pytest.raises(LabkitError, match="no response token"):
        per_token_rewards(torch.zeros(2), lp, lp, 0.05, torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]]))
    with pytest.raises(LabkitError, match="shape"):
        per_token_rewards(torch.zeros(2), lp, lp, 0.05, torch.ones(2, 3))
    with pytest.raises(LabkitError, match="estimator"):
        per_token_rewards(torch.zeros(2), lp, lp, 0.05, torch.ones(2, 4), estimator="k4")
    with pytest.raises(LabkitError, match="score"):
        per_token_rewards(torch.zeros(3), lp, lp, 0.05, torch.ones(2, 4))
    with pytest.raises(LabkitError, match="kl_coef"):
        per_token_rewards(torch.zeros(2), lp, lp, -0.1, torch.ones(2, 4))


# --- GAE --------------------------------------------------------------------------------------


def test_gae_equals_the_recursion_written_out():
    gamma, lam = 0.9, 0.8
    r = [0.1, -0.2, 0.3, 1.0]
    v = [0.5, 0.4, 0.6, 0.2]
    # delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0), A_t = delta_t +
    # gamma * lam * A_{t+1}, computed backwards from the end of the response.
    a3 = r[3] + gamma * 0.0 - v[3]
    a2 = (r[2] + gamma * v[3] - v[2]) + gamma * lam * a3
    a1 = (r[1] + gamma * v[2] - v[1]) + gamma * lam * a2
    a0 = (r[0] + gamma * v[1] - v[0]) + gamma * lam * a1
    expected = [a0, a1, a2, a3]
    assert expected == pytest.approx([0.1531904, 0.26832, 0.456, 0.8], abs=1e-12)

    advantages, returns = gae(t([r]), t([v]), torch.ones(1, 4, dtype=F64), gamma=gamma, lam=lam)
    assert advantages[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert returns[0].tolist() == pytest.approx(
        [a + b for a, b in zip(expected, v, strict=True)], abs=1e-12
    )


def test_gae_ignores_prompt_and_padding_positions():
    gamma, lam = 0.9, 0.8
    r, v = [0.1, -0.2, 0.3, 1.0], [0.5, 0.4, 0.6, 0.2]
    # Two prompt tokens before and two padding tokens after, holding junk that must not leak in.
    rewards, values = t([[7.0, 7.0, *r, 9.0, 9.0]]), t([[3.0, 3.0, *v, 5.0, 5.0]])
    mask = t([[0, 0, 1, 1, 1, 1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    alone, alone_returns = gae(t([r]), t([v]), torch.ones(1, 4, dtype=F64), gamma, lam)
    assert advantages[0, 2:6].tolist() == pytest.approx(alone[0].tolist(), abs=1e-12)
    assert returns[0, 2:6].tolist() == pytest.approx(alone_returns[0].tolist(), abs=1e-12)
    assert advantages[0, [0, 1, 6, 7]].abs().sum() == 0


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    r, v = t([[0.1, -0.2, 0.3, 1.0]]), t([[0.5, 0.4, 0.6, 0.2]])
    advantages, returns = gae(r, v, torch.ones_like(r), gamma=1.0, lam=1.0)
    reward_to_go = r.flip(1).cumsum(1).flip(1)
    assert torch.allclose(advantages, reward_to_go - v)
    assert torch.allclose(returns, reward_to_go)


# --- whitening --------------------------------------------------------------------------------


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    g = torch.Generator().manual_seed(0)
    values = 3 + 2 * torch.randn(3, 6, generator=g, dtype=F64)
    mask = t([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    chosen = values[mask.bool()]
    whitened = whiten(values, mask)
    assert whitened[mask.bool()].tolist() == pytest.approx(
        ((chosen - chosen.mean()) / torch.sqrt(chosen.var() + 1e-8)).tolist(), abs=1e-12
    )
    assert whitened[mask.bool()].mean().item() == pytest.approx(0.0, abs=1e-12)
    assert whitened[mask.bool()].var().item() == pytest.approx(1.0, abs=1e-6)
    assert whitened[~mask.bool()].abs().sum() == 0
    kept_mean = whiten(values, mask, shift_mean=False)
    assert kept_mean[mask.bool()].mean().item() == pytest.approx(chosen.mean().item(), abs=1e-12)
    with pytest.raises(LabkitError, match="at least 2"):
        whiten(values, torch.zeros_like(values))


# --- the clipped losses -----------------------------------------------------------------------

# (ratio, advantage, loss = max(-A * ratio, -A * clip(ratio, 0.8, 1.2)), clipped term used?)
POLICY_CASES = [
    (0.8, 2.0, -1.6, None),  # at the boundary both terms agree
    (1.2, 2.0, -2.4, None),
    (1.5, 2.0, -2.4, True),  # good action already made 1.5x likelier: no further push
    (0.5, 2.0, -1.0, False),  # good action made less likely: the unclipped term still pulls back
    (0.8, -2.0, 1.6, None),
    (1.2, -2.0, 2.4, None),
    (0.5, -2.0, 1.6, True),  # bad action already halved: no further push
    (1.5, -2.0, 3.0, False),  # bad action made likelier: the unclipped term still pulls back
]


@pytest.mark.parametrize("ratio, advantage, expected, clipped", POLICY_CASES)
def test_clipped_policy_loss_at_and_beyond_the_clip_boundaries(ratio, advantage, expected, clipped):
    logprobs = torch.tensor([[math.log(ratio)]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    result = clipped_policy_loss(logprobs, old, t([[advantage]]), torch.ones(1, 1), cliprange=0.2)
    assert result.loss.item() == pytest.approx(expected, abs=1e-12)
    assert result.approx_kl == pytest.approx(0.5 * math.log(ratio) ** 2, abs=1e-12)
    if clipped is None:
        return  # exactly on the boundary, which term "wins" is rounding
    result.loss.backward()
    assert result.clip_fraction == (1.0 if clipped else 0.0)
    # d(-A * exp(logp - old))/dlogp = -A * ratio when unclipped; 0 once clipped
    assert logprobs.grad.item() == pytest.approx(0.0 if clipped else -advantage * ratio, abs=1e-12)


def test_clipped_policy_loss_averages_over_response_tokens_only():
    logprobs = torch.log(t([[1.5, 0.5, 100.0]]))  # the third token is padding
    advantages = t([[2.0, 2.0, 2.0]])
    result = clipped_policy_loss(logprobs, torch.zeros_like(logprobs), advantages, t([[1, 1, 0]]))
    assert result.loss.item() == pytest.approx((-2.4 - 1.0) / 2, abs=1e-12)
    assert result.clip_fraction == pytest.approx(0.5)


@pytest.mark.parametrize(
    "new_value, ret, expected, clip_fraction",
    [
        (1.5, 2.0, 0.5 * (1.2 - 2.0) ** 2, 1.0),  # moved 0.5 toward the return: clipped error used
        (1.5, 1.0, 0.5 * (1.5 - 1.0) ** 2, 0.0),  # moved away from the return: unclipped is worse
        (1.1, 2.0, 0.5 * (1.1 - 2.0) ** 2, 0.0),  # inside the clip range: plain squared error
        (0.5, 0.0, 0.5 * (0.8 - 0.0) ** 2, 1.0),  # the same on the downside
    ],
)
def test_clipped_value_loss(new_value, ret, expected, clip_fraction):
    result = clipped_value_loss(
        t([[new_value]]), t([[1.0]]), t([[ret]]), torch.ones(1, 1), cliprange_value=0.2
    )
    assert result.loss.item() == pytest.approx(expected, abs=1e-12)
    assert result.clip_fraction == clip_fraction


def test_bad_clip_ranges_are_rejected():
    x = torch.zeros(1, 1)
    with pytest.raises(LabkitError, match="cliprange"):
        clipped_policy_loss(x, x, x, torch.ones(1, 1), cliprange=0.0)
    with pytest.raises(LabkitError, match="cliprange_value"):
        clipped_value_loss(x, x, x, torch.ones(1, 1), cliprange_value=1.5)


# --- config and KL controllers ----------------------------------------------------------------


def test_ppo_config_defaults_are_the_reference_ones():
    config = PPOConfig()
    assert (config.kl_coef, config.cliprange, config.cliprange_value, config.vf_coef) == (
        0.05,
        0.2,
        0.2,
        0.1,
    )
    assert (config.gamma, config.lam, config.ppo_epochs) == (1.0, 0.95, 4)
    assert isinstance(config.kl_controller(), FixedKLController)
    assert config.kl_controller().update(current_kl=100.0, n_steps=64) == 0.05
    adaptive = PPOConfig(adaptive_kl=True).kl_controller()
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.target, adaptive.horizon) == (6.0, 10_000)


@pytest.mark.parametrize(
    "field, value",
    [
        ("kl_coef", -0.1),
        ("cliprange", 0.0),
        ("gamma", 1.5),
        ("lam", -0.1),
        ("ppo_epochs", 0),
        ("kl_estimator", "k9"),
        ("kl_target", 0.0),
        ("vf_coef", -1.0),
    ],
)
def test_ppo_config_rejects_out_of_range_values(field, value):
    with pytest.raises(LabkitError, match=field):
        PPOConfig(**{field: value})


def test_adaptive_kl_controller_follows_ziegler():
    controller = AdaptiveKLController(value=0.05, target=6.0, horizon=10_000)
    # KL 12 is 100% over target: the error is clipped to +20%.
    assert controller.update(12.0, n_steps=256) == pytest.approx(0.05 * (1 + 0.2 * 256 / 10_000))
    before = controller.value
    assert controller.update(6.0, n_steps=256) == pytest.approx(before)  # on target: unchanged
    assert controller.update(5.4, n_steps=100) == pytest.approx(before * (1 - 0.1 * 100 / 10_000))
    before = controller.value
    # KL 0 is 100% under target: the error is clipped to -20%.
    assert controller.update(0.0, n_steps=100) == pytest.approx(before * (1 - 0.2 * 100 / 10_000))


# --- sequence_logprobs ------------------------------------------------------------------------

VOCAB = 40


@pytest.fixture(scope="module")
def tiny_llama():
    shape = ModelShape(d_model=32, n_layer=2, n_head=2, max_len=32)
    return build_causal_lm(VOCAB, shape, seed=0).eval()


def test_sequence_logprobs_equals_a_manual_log_softmax_gather(tiny_llama):
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, VOCAB, (2, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    response_mask = torch.zeros_like(input_ids)
    response_mask[0, 4:] = 1
    response_mask[1, 3:7] = 1
    with torch.no_grad():
        result = sequence_logprobs(tiny_llama, input_ids, attention_mask, response_mask)
        logits = tiny_llama(input_ids).logits
    for b in range(2):
        for pos in range(9):
            expected = 0.0
            if response_mask[b, pos]:
                expected = torch.log_softmax(logits[b, pos - 1], dim=-1)[input_ids[b, pos]].item()
            assert result[b, pos].item() == pytest.approx(expected, abs=TOL)


def test_sequence_logprobs_is_unchanged_by_left_padding(tiny_llama):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (1, 7), generator=g)
    response = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    padded_attention = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    padded_response = torch.cat([torch.zeros(1, 3, dtype=torch.long), response], dim=1)
    seen = {}

    def spy(**inputs):  # records what the model is called with
        seen.update(inputs)
        return tiny_llama(**inputs)

    with torch.no_grad():
        plain = sequence_logprobs(tiny_llama, ids, torch.ones_like(ids), response)
        padded = sequence_logprobs(spy, padded_ids, padded_attention, padded_response)
    assert padded[0, 3:].tolist() == pytest.approx(plain[0].tolist(), abs=1e-5)
    assert plain.sum().item() < 0
    # Positions count attended tokens only, as generate() counts them for a left-padded prompt.
    assert seen["position_ids"][0, 3:].tolist() == list(range(7))


def test_sequence_logprobs_rejects_bad_masks(tiny_llama):
    ids = torch.ones(1, 5, dtype=torch.long)
    ones = torch.ones_like(ids)
    with pytest.raises(LabkitError, match="first token"):
        sequence_logprobs(tiny_llama, ids, ones, ones)
    with pytest.raises(LabkitError, match="attention_mask"):
        sequence_logprobs(
            tiny_llama, ids, torch.tensor([[1, 1, 1, 0, 0]]), torch.tensor([[0, 0, 1, 1, 1]])
        )
    with pytest.raises(LabkitError, match="temperature"):
        sequence_logprobs(tiny_llama, ids, ones, torch.tensor([[0, 0, 1, 1, 1]]), temperature=0)
