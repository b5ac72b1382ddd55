"""Alignment (labs 07 RLHF and 08 DPO): preference losses and the pieces of PPO.

`preference_losses` holds the Bradley-Terry reward-model loss and the DPO family (DPO, IPO,
hinge, KTO, ORPO, SimPO) written from per-sequence log-probs; `ppo` holds the KL estimators,
per-token rewards, GAE, whitening, the clipped policy and value losses, the KL controllers and
`sequence_logprobs`, which turns a causal LM and a batch into the log-probs all of them use.
"""

from .ppo import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    PolicyLoss,
    PPOConfig,
    ValueLoss,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    last_token_index,
    masked_mean,
    per_token_rewards,
    sequence_logprobs,
    whiten,
)
from .preference_losses import (
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    kto_loss,
    mismatched_completions,
    orpo_loss,
    simpo_loss,
)

# Sizes and step counts per scale profile; the SFT, RLHF and DPO labs add their keys here.
SETTINGS = {"cpu": {}, "gpu": {}}

__all__ = [
    "KL_ESTIMATORS",
    "SETTINGS",
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PolicyLoss",
    "PreferenceLoss",
    "ValueLoss",
    "bradley_terry_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "dpo_loss",
    "gae",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kto_loss",
    "last_token_index",
    "masked_mean",
    "mismatched_completions",
    "orpo_loss",
    "per_token_rewards",
    "sequence_logprobs",
    "simpo_loss",
    "whiten",
]
