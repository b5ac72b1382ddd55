"""The pieces of PPO for language models, as in InstructGPT and TRL's former PPOTrainer.

One PPO iteration: sample responses from the policy (rollout), score them with the reward
model, turn score and KL-to-reference into per-token rewards, estimate advantages with GAE,
then take a few epochs of clipped policy and value updates on that batch.

Tensors are (batch, tokens) and aligned with the input ids: column t belongs to token t. A
`mask` is 1 on the response tokens (one contiguous run per row) and 0 on prompt and padding,
so every quantity here is computed over response tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import validate
from ..errors import LabkitError
from ..validate import (
    finite,
    flag,
    fraction,
    nonnegative,
    positive,
    positive_int,
    tensors,
)

_float = tensors("float")


def _pair_like(a, b, name_a: str, name_b: str) -> None:
    _float(a, name_a), _float(b, name_b)
    validate.same_shape(a, b, name_a, name_b)

# --- KL to the reference model, per token ----------------------------------------------------
# Each estimates KL(pi || ref) from the one token that was sampled from pi (Schulman 2020,
# "Approximating KL divergence"). E[k1] = E[k3] = KL exactly; k1 is noisy and goes negative on
# single tokens, k3 never does; k2 has low variance but is biased.


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log(pi/ref): unbiased, but negative whenever ref likes the token more than pi."""
    _pair_like(logprobs, ref_logprobs, "logprobs", "ref_logprobs")
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * log(pi/ref)^2: never negative, biased (TRL's former "mse" penalty)."""
    _pair_like(logprobs, ref_logprobs, "logprobs", "ref_logprobs")
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (ref/pi - 1) - log(ref/pi): unbiased and never negative, since x - 1 >= log x."""
    _pair_like(logprobs, ref_logprobs, "logprobs", "ref_logprobs")
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# --- rewards and advantages ------------------------------------------------------------------


def per_token_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kl_coef: float,
    mask: torch.Tensor,
    estimator: str = "k1",
) -> torch.Tensor:
    """-kl_coef * KL on every response token, plus the reward model's score on the last one.

    The KL penalty is the leash that keeps the policy near the reference (SFT) model, which
    is what stops it from drifting into text the reward model scores wrongly.
    """
    kl = _kl_estimator(estimator)(logprobs, ref_logprobs)
    _check_mask(mask, kl)
    nonnegative(kl_coef, "kl_coef")
    if not torch.is_tensor(score) and not isinstance(score, (list, tuple)):
        raise LabkitError(f"score must be a tensor with one reward per row, got {type(score).__name__}")
    score = torch.as_tensor(score, dtype=kl.dtype, device=kl.device)
    if score.shape != (len(kl),):
        raise LabkitError(
            f"score has shape {tuple(score.shape)}; expected ({len(kl)},), one per row"
        )
    rewards = -kl_coef * kl * mask
    rows = torch.arange(len(rewards), device=rewards.device)
    rewards[rows, last_token_index(mask)] += score
    return rewards


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of the last 1 in each row of a 0/1 mask."""
    _check_mask(mask, mask)
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.long()).argmax(dim=1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman 2016): advantages and returns per token.

    delta_t = r_t + gamma * V_{t+1} - V_t          (one-step surprise)
    A_t     = delta_t + gamma * lam * A_{t+1}      (lam blends 1-step (0) and Monte Carlo (1))
    Returns A_t + V_t are the value head's regression targets.
    """
    _float(rewards, "rewards"), _check_mask(mask, rewards)
    _pair_like(rewards, values, "rewards", "values")
    fraction(gamma, "gamma"), fraction(lam, "lam")
    # Zeroing values and rewards past the response makes the episode end at its last token.
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    returns = advantages + values
    return advantages * mask, returns * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the entries `mask` weights (0/1, or non-negative weights)."""
    _float(values, "values"), tensors()(mask, "mask")
    validate.same_shape(values, mask, "values", "mask")
    if (mask < 0).any() or not mask.sum() > 0:
        raise LabkitError("mask must be 0/1 (or weights >= 0) with at least one nonzero entry; "
                          "a mean over nothing is nan")
    return (values * mask).sum() / mask.sum()


def whiten(
    values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True
) -> torch.Tensor:
    """Normalise to zero mean, unit variance over the masked entries (TRL's masked_whiten).

    Whitened advantages keep the step size independent of the reward scale; shift_mean=False
    (used for rewards) rescales but keeps the mean. The variance is the unbiased one.
    """
    _float(values, "values"), flag(shift_mean, "shift_mean")
    mask = torch.ones_like(values) if mask is None else mask
    tensors()(mask, "mask"), validate.same_shape(values, mask, "values", "mask")
    if mask.sum() < 2:
        raise LabkitError(f"whiten needs a mask with at least 2 masked-in values, got {int(mask.sum())}")
    mean = masked_mean(values, mask)
    n = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask) * n / (n - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


# --- the two clipped losses ------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: float  # share of tokens where the clipped term was the one used
    approx_kl: float  # 0.5 * mean (log new/old)^2: how far this update moved the policy


@dataclass(frozen=True)
class ValueLoss:
    loss: torch.Tensor
    clip_fraction: float


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> PolicyLoss:
    """PPO's clipped surrogate: mean of max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps)).

    Taking the worse (larger) loss of the two means a token stops pulling the policy once its
    ratio has moved past 1 +/- eps in the direction its advantage asks for.
    """
    _check_clip("cliprange", cliprange)
    _pair_like(logprobs, old_logprobs, "logprobs", "old_logprobs")
    _pair_like(logprobs, advantages, "logprobs", "advantages"), _check_mask(mask, logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask).item()
    approx_kl = 0.5 * masked_mean(log_ratio.detach() ** 2, mask).item()
    return PolicyLoss(loss, clip_fraction, approx_kl)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> ValueLoss:
    """0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped within old V +/- eps."""
    _check_clip("cliprange_value", cliprange_value)
    _pair_like(values, old_values, "values", "old_values")
    _pair_like(values, returns, "values", "returns"), _check_mask(mask, values)
    clipped_values = old_values + torch.clamp(
        values - old_values, -cliprange_value, cliprange_value
    )
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask).item()
    return ValueLoss(loss, clip_fraction)


# --- configuration and the KL coefficient ----------------------------------------------------


@dataclass
class FixedKLController:
    value: float

    def __post_init__(self):
        nonnegative(self.value, "value")

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: nudge kl_coef so the measured KL tracks a target.

    The proportional error is clipped to +/-20%, and `horizon` (in episodes) sets how slowly the
    coefficient follows: after `horizon` episodes at +20% error it has grown by about e^0.2.
    """

    value: float
    target: float
    horizon: int

    def __post_init__(self):
        nonnegative(self.value, "value"), positive(self.target, "target")
        positive_int(self.horizon, "horizon")

    def update(self, current_kl: float, n_steps: int) -> float:
        finite(current_kl, "current_kl"), positive_int(n_steps, "n_steps")
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


@dataclass(frozen=True)
class PPOConfig:
    kl_coef: float = 0.05  # initial value when adaptive_kl
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 4
    kl_estimator: str = "k1"
    whiten_advantages: bool = True
    adaptive_kl: bool = False
    kl_target: float = 6.0  # nats per response (Ziegler et al.)
    kl_horizon: int = 10_000  # episodes

    def __post_init__(self):
        _check_clip("cliprange", self.cliprange)
        _check_clip("cliprange_value", self.cliprange_value)
        _kl_estimator(self.kl_estimator)
        nonnegative(self.kl_coef, "kl_coef"), nonnegative(self.vf_coef, "vf_coef")
        fraction(self.gamma, "gamma"), fraction(self.lam, "lam"), positive(self.kl_target, "kl_target")
        positive_int(self.ppo_epochs, "ppo_epochs"), positive_int(self.kl_horizon, "kl_horizon")
        flag(self.whiten_advantages, "whiten_advantages"), flag(self.adaptive_kl, "adaptive_kl")

    def kl_controller(self) -> FixedKLController | AdaptiveKLController:
        if self.adaptive_kl:
            return AdaptiveKLController(self.kl_coef, self.kl_target, self.kl_horizon)
        return FixedKLController(self.kl_coef)


# --- log-probs of responses under a causal LM ------------------------------------------------


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(token_t | tokens_<t) for each response token, 0 elsewhere; shape of input_ids.

    Positions count only attended tokens, as `generate` counts them when it samples a
    left-padded rollout, so padding never shifts a model with absolute positions (rotary ones,
    like Llama's, only see relative positions anyway). Sum over the last dimension for the
    per-sequence log-probs that the preference losses take.
    """
    validate.function(model, "model")  # a causal LM, or anything called like one
    tensors("int", ndim=2)(input_ids, "input_ids"), tensors(ndim=2)(attention_mask, "attention_mask")
    validate.same_shape(input_ids, attention_mask, "input_ids", "attention_mask")
    _check_mask(response_mask, input_ids, "response_mask")
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    vocab = embeddings.num_embeddings if embeddings is not None else float("inf")
    if input_ids.numel() and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < vocab:
        raise LabkitError(f"input_ids hold ids outside the model's vocabulary [0, {vocab})")
    if response_mask[:, 0].any():
        raise LabkitError("response_mask[:, 0] must be 0: the first token has no prediction")
    if (response_mask.bool() & ~attention_mask.bool()).any():
        raise LabkitError("response_mask marks tokens that attention_mask hides")
    positive(temperature, "temperature")
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).logits
    next_token_logprobs = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    logprobs = next_token_logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logprobs, (1, 0)) * response_mask


# --- input checks ----------------------------------------------------------------------------


def _kl_estimator(name: str):
    if not isinstance(name, str) or name not in KL_ESTIMATORS:
        raise LabkitError(f"kl_estimator={name!r} is unknown; valid: {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name]


def _check_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> None:
    tensors()(mask, name)
    if mask.shape != like.shape or mask.ndim != 2:
        raise LabkitError(
            f"{name} has shape {tuple(mask.shape)}; expected (batch, tokens) = {tuple(like.shape)}"
        )
    if mask.numel() == 0:
        raise LabkitError(f"the batch is empty; pass at least one sequence ({name} has no rows)")
    if not mask.sum(dim=1).all():
        raise LabkitError(f"a row of the {name} has no response token; every sequence needs one")
    if ((mask != 0) & (mask != 1)).any():
        raise LabkitError(f"{name} must hold only 0 and 1 (1 on response tokens)")


def _check_clip(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise LabkitError(f"{name}={value!r} is invalid; it must be in (0, 1) (reference: 0.2)")
