"""Preference losses, from per-sequence log-probabilities.

Every loss here takes the *summed* log-probability of each response (sum over its tokens of
log p(token | prefix)), as `sequence_logprobs(...).sum(-1)` gives it. Losses that work per token
(IPO as TRL runs it, ORPO, SimPO) also take the response lengths and average themselves, so one
input convention serves them all. Each returns a `PreferenceLoss`: the batch loss to call
`backward()` on, the per-example losses, and the (detached) rewards each method implies.

The formulas follow the papers and are cross-checked in tests against TRL 1.16:
DPO/IPO/hinge in `trl/trainer/dpo_trainer.py`, KTO in `trl/trainer/kto_trainer.py`,
ORPO in `trl/experimental/orpo/orpo_trainer.py`, SimPO in `trl/experimental/cpo/cpo_trainer.py`,
Bradley-Terry in `trl/trainer/reward_trainer.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F

from .. import validate
from ..errors import LabkitError


@dataclass(frozen=True)
class PreferenceLoss:
    loss: torch.Tensor  # scalar: the mean over the batch
    losses: torch.Tensor  # one per example (for KTO: desirable ones first, then undesirable)
    chosen_rewards: torch.Tensor  # what the method treats as the reward of each chosen response
    rejected_rewards: torch.Tensor
    kl: torch.Tensor | None = None  # KTO only: the batch KL baseline

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        """Fraction of pairs whose chosen response gets the higher reward."""
        if self.chosen_rewards.shape != self.rejected_rewards.shape:
            raise LabkitError("accuracy needs paired rewards; KTO's examples are unpaired")
        return (self.chosen_rewards > self.rejected_rewards).float().mean().item()


# --- the losses ------------------------------------------------------------------------------


def bradley_terry_loss(r_chosen, r_rejected, margin=None) -> PreferenceLoss:
    """Reward-model loss: -log sigmoid(r_chosen - r_rejected [- margin]).

    P(chosen beats rejected) = sigmoid(r_chosen - r_rejected) is the Bradley-Terry model; its
    negative log-likelihood trains the reward model. The optional margin (per pair) asks for a
    wider gap where annotators were more certain, as in Llama 2 and TRL's RewardTrainer.
    """
    r_chosen, r_rejected = _paired("r_chosen", r_chosen, "r_rejected", r_rejected, logprobs=False)
    validate.tensor(r_chosen, "r_chosen", finite=True), validate.tensor(r_rejected, "r_rejected", finite=True)
    gap = r_chosen - r_rejected
    if margin is not None:
        gap = gap - _like("margin", margin, r_chosen)
    losses = -F.logsigmoid(gap)
    return PreferenceLoss(losses.mean(), losses, r_chosen.detach(), r_rejected.detach())


def implicit_rewards(policy_logps, ref_logps, beta: float = 0.1) -> torch.Tensor:
    """DPO's implicit reward of a response: beta * (log pi(y|x) - log ref(y|x))."""
    _check_beta(beta)
    policy_logps, ref_logps = _paired("policy_logps", policy_logps, "ref_logps", ref_logps)
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float = 0.1,
) -> PreferenceLoss:
    """DPO: -log sigmoid(beta * h), h = chosen log-ratio - rejected log-ratio (Rafailov 2023).

    It is the Bradley-Terry loss with the implicit rewards beta * log(pi/ref) in place of a
    reward model: one trainable model instead of policy + reward model + value model.
    """
    h, chosen, rejected = _log_ratio_gap(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = -F.logsigmoid(beta * h)
    return PreferenceLoss(losses.mean(), losses, chosen, rejected)


def ipo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float = 0.1,
    chosen_lengths=None,
    rejected_lengths=None,
) -> PreferenceLoss:
    """IPO: (h - 1/(2*beta))^2, a squared loss that stops pushing once the gap reaches 1/(2 beta).

    DPO's log-sigmoid keeps rewarding an ever larger gap (the paper's over-fitting argument);
    IPO regresses the gap to a target instead. Pass the response lengths to use TRL's form,
    which divides each log-ratio by its response length first; without lengths this is the
    paper's Eq. 17 on summed log-ratios.
    """
    _check_beta(beta)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    chosen, rejected = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise LabkitError("ipo_loss: pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        chosen_ratio = chosen_ratio / _lengths("chosen_lengths", chosen_lengths, chosen_ratio)
        rejected_ratio = rejected_ratio / _lengths(
            "rejected_lengths", rejected_lengths, chosen_ratio
        )
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses.mean(), losses, chosen, rejected)


def hinge_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float = 0.1,
) -> PreferenceLoss:
    """Hinge (SLiC-style): max(0, 1 - beta * h); zero loss once the gap passes 1/beta."""
    h, chosen, rejected = _log_ratio_gap(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = torch.relu(1 - beta * h)
    return PreferenceLoss(losses.mean(), losses, chosen, rejected)


def kto_loss(
    policy_logps,
    ref_logps,
    desirable,
    policy_kl_logps,
    ref_kl_logps,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLoss:
    """KTO: single responses labelled good or bad, each compared to a batch KL baseline z.

    desirable:   1 - sigmoid(beta * (log-ratio - z))
    undesirable: 1 - sigmoid(beta * (z - log-ratio))
    z = max(0, mean over the batch of log pi(y'|x) - log ref(y'|x)), computed without gradient
    on *mismatched* pairs (each prompt with another example's response, see
    `mismatched_completions`), as TRL's KTOTrainer does. That needs a batch of at least 2.
    """
    _check_beta(beta)
    for name, weight in (
        ("desirable_weight", desirable_weight),
        ("undesirable_weight", undesirable_weight),
    ):
        validate.positive(weight, name)
    policy_logps, ref_logps = _paired("policy_logps", policy_logps, "ref_logps", ref_logps)
    policy_kl_logps, ref_kl_logps = _paired(
        "policy_kl_logps", policy_kl_logps, "ref_kl_logps", ref_kl_logps
    )
    if len(policy_kl_logps) < 2:
        raise LabkitError(
            f"kto_loss: the KL baseline needs a batch of at least 2 mismatched pairs, "
            f"got {len(policy_kl_logps)}"
        )
    flags = desirable.tolist() if torch.is_tensor(desirable) else desirable
    if not isinstance(flags, (list, tuple)) or any(not isinstance(f, bool) and f not in (0, 1)
                                                   for f in flags):
        raise LabkitError(f"kto_loss: desirable must be one True/False flag per response, got {desirable!r}"[:200])
    good = torch.as_tensor(flags, dtype=torch.bool, device=policy_logps.device)
    if good.shape != policy_logps.shape:
        raise LabkitError(
            f"kto_loss: desirable has shape {tuple(good.shape)}, expected "
            f"{tuple(policy_logps.shape)} (one flag per response)"
        )
    kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    log_ratios = policy_logps - ref_logps
    chosen_losses = 1 - torch.sigmoid(beta * (log_ratios[good] - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - log_ratios[~good]))
    losses = torch.cat([desirable_weight * chosen_losses, undesirable_weight * rejected_losses])
    rewards = beta * log_ratios.detach()
    return PreferenceLoss(losses.mean(), losses, rewards[good], rewards[~good], kl=kl)


def mismatched_completions(completions: Sequence) -> list:
    """KTO's KL pairs: rotate completions by one, so prompt i meets completion i-1.

    (x_1, y_1), ..., (x_n, y_n) -> (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}), as TRL's
    KTOTrainer builds them within each batch.
    """
    completions = validate.items(completions, "completions", empty=True)
    if len(completions) < 2:
        raise LabkitError(
            f"mismatched_completions needs at least 2 completions, got {len(completions)}"
        )
    return [completions[-1], *completions[:-1]]


def orpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    chosen_lengths,
    rejected_lengths,
    beta: float = 0.1,
    chosen_nll=None,
) -> PreferenceLoss:
    """ORPO: NLL(chosen) - beta * log sigmoid(log odds(chosen) - log odds(rejected)).

    odds(y) = p / (1 - p) with p = exp(mean log-prob), the geometric-mean per-token probability
    of the response; no reference model. The NLL defaults to the token-mean negative log-likelihood of
    the chosen responses; TRL's ORPOTrainer computes it over prompt *and* response tokens, so pass
    that value as `chosen_nll` to reproduce TRL exactly. Rewards are beta * mean log-prob.
    """
    _check_beta(beta)
    policy_chosen_logps = _tensor("policy_chosen_logps", policy_chosen_logps)
    chosen_lengths = _lengths("chosen_lengths", chosen_lengths, policy_chosen_logps)
    chosen, rejected = _average_logps(
        policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths
    )
    if not (chosen < 0).all() or not (rejected < 0).all():
        raise LabkitError(
            "orpo_loss: average log-probs must be < 0 (a probability of 1 has no odds)"
        )
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    if chosen_nll is None:
        chosen_nll = -policy_chosen_logps.sum() / chosen_lengths.sum()
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return PreferenceLoss(losses.mean(), losses, beta * chosen.detach(), beta * rejected.detach())


def simpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    chosen_lengths,
    rejected_lengths,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> PreferenceLoss:
    """SimPO: -log sigmoid(beta * (mean logp(chosen) - mean logp(rejected) - gamma / beta)).

    The reward is the length-normalised log-prob itself (no reference model), and gamma asks for
    a target margin. Defaults are in the paper's range (beta 2-2.5, gamma/beta about 0.5); TRL's
    CPOConfig defaults are beta=0.1, simpo_gamma=0.5. TRL's CPO trainer with loss_type="simpo"
    adds an NLL term unless cpo_alpha=0; this is the pure SimPO loss.
    """
    _check_beta(beta)
    validate.nonnegative(gamma, "gamma (the target margin)")
    chosen, rejected = _average_logps(
        policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths
    )
    losses = -F.logsigmoid(beta * (chosen - rejected - gamma / beta))
    return PreferenceLoss(losses.mean(), losses, beta * chosen.detach(), beta * rejected.detach())


# --- shared pieces ---------------------------------------------------------------------------


def _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """log pi/ref for the chosen and the rejected responses, after checking the four inputs."""
    policy_chosen, policy_rejected = _paired(
        "policy_chosen_logps", policy_chosen, "policy_rejected_logps", policy_rejected
    )
    ref_chosen = _like("ref_chosen_logps", ref_chosen, policy_chosen, logprobs=True)
    ref_rejected = _like("ref_rejected_logps", ref_rejected, policy_chosen, logprobs=True)
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


def _log_ratio_gap(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """h = (log pi/ref)(chosen) - (log pi/ref)(rejected), and the implicit rewards."""
    _check_beta(beta)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected
    )
    h = chosen_ratio - rejected_ratio
    return h, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _average_logps(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths):
    policy_chosen, policy_rejected = _paired(
        "policy_chosen_logps", policy_chosen, "policy_rejected_logps", policy_rejected
    )
    chosen_lengths = _lengths("chosen_lengths", chosen_lengths, policy_chosen)
    rejected_lengths = _lengths("rejected_lengths", rejected_lengths, policy_chosen)
    return policy_chosen / chosen_lengths, policy_rejected / rejected_lengths


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


def _check_beta(beta) -> None:
    if isinstance(beta, bool) or not isinstance(beta, Real) or not 0 < beta < math.inf:
        raise LabkitError(f"beta={beta!r} is invalid; it must be a number > 0 (typical: 0.1)")


def _tensor(name, values) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(values, dtype=torch.get_default_dtype())
        except (TypeError, ValueError) as exc:
            raise LabkitError(
                f"{name} must be a 1-D tensor of numbers, got {type(values).__name__}"
            ) from exc
    if values.ndim != 1:
        raise LabkitError(
            f"{name} has shape {tuple(values.shape)}; expected 1-D (one per sequence)"
        )
    if values.numel() == 0:
        raise LabkitError(f"{name} is empty; a loss needs at least one example")
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    return values


def _paired(name_a, a, name_b, b, logprobs: bool = True):
    a = _tensor(name_a, a)
    b = _like(name_b, b, a, logprobs)
    if logprobs:
        _check_logprobs(name_a, a)
    return a, b


def _like(name, values, reference: torch.Tensor, logprobs: bool = False) -> torch.Tensor:
    values = _tensor(name, values).to(reference.device)
    if values.shape != reference.shape:
        raise LabkitError(
            f"{name} has shape {tuple(values.shape)}, expected {tuple(reference.shape)} "
            "(one value per example, like the first input)"
        )
    if logprobs:
        _check_logprobs(name, values)
    return values


def _check_logprobs(name, values: torch.Tensor) -> None:
    if (values > 0).any():
        raise LabkitError(
            f"{name} has a value {values.max().item():.4g} > 0; log-probabilities must be <= 0"
        )


def _lengths(name, lengths, reference: torch.Tensor) -> torch.Tensor:
    lengths = _like(name, lengths, reference).to(reference.dtype)
    if not (lengths > 0).all():
        raise LabkitError(
            f"{name} has a value {lengths.min().item():g}; lengths must be >= 1 token"
        )
    return lengths
