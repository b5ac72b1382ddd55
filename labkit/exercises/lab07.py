"""Lab 07's exercises: the Bradley-Terry loss, the k3 KL estimator, a GAE advantage, the cost of
the KL leash, and best-of-n's KL."""

from __future__ import annotations

import math

from . import Mistake, exercise

CHOSEN, REJECTED = 1.5, -0.5  # reward-model scores of a pair


def _bradley_terry():
    from ..align.preference_losses import bradley_terry_loss

    return float(bradley_terry_loss([CHOSEN], [REJECTED]).loss)


exercise(
    id="07.bt_loss",
    name="my_bt_loss",
    kind="value",
    prompt=f"the Bradley-Terry loss of a pair scored {CHOSEN} (chosen) and {REJECTED} (rejected): "
           "-log sigmoid(r_chosen - r_rejected), in nats",
    reference=_bradley_terry,
    hint="sigmoid(x) = 1 / (1 + exp(-x)) with x = 1.5 - (-0.5) = 2; the loss is its negative "
         "natural log",
    rtol=1e-4,
    mistakes=[
        Mistake("the difference the wrong way round", math.log1p(math.exp(CHOSEN - REJECTED)),
                "the loss is small when the chosen answer scores higher: use r_chosen - "
                "r_rejected inside the sigmoid"),
        Mistake("the log-likelihood without its minus", -math.log1p(math.exp(REJECTED - CHOSEN)),
                "a loss is the *negative* log-likelihood: it is >= 0 and 0 only for a certain, "
                "right preference"),
        Mistake("a log in base 2", math.log1p(math.exp(REJECTED - CHOSEN)) / math.log(2),
                "the loss is in nats: use the natural log (math.log), as PyTorch does"),
    ],
)

P_POLICY, P_REF = 0.5, 0.25  # the sampled token's probability under the policy and the reference


def _k3():
    import torch

    from ..align.ppo import kl_k3

    return float(kl_k3(torch.log(torch.tensor([P_POLICY])), torch.log(torch.tensor([P_REF]))))


exercise(
    id="07.k3",
    name="my_k3",
    kind="value",
    prompt=f"the k3 estimate of KL(policy || reference) at one sampled token with probability "
           f"{P_POLICY} under the policy and {P_REF} under the reference: "
           "(ref/pi - 1) - log(ref/pi)",
    reference=_k3,
    hint="the ratio is ref / pi = 0.5 here; k3 = (ratio - 1) - log(ratio) is never negative",
    rtol=1e-5,
    mistakes=[
        Mistake("k1", math.log(P_POLICY / P_REF),
                "that is k1 = log(pi / ref): unbiased too, but it goes negative whenever the "
                "reference liked the token more; k3 uses the ratio ref / pi"),
        Mistake("the ratio inverted", (P_POLICY / P_REF - 1) - math.log(P_POLICY / P_REF),
                "k3 puts the *reference* over the policy: ratio = ref / pi = 0.5, not 2"),
    ],
)

REWARDS, GAMMA, LAM = [0.0, 0.0, 1.0], 1.0, 0.95


def _gae_first():
    import torch

    from ..align.ppo import gae

    advantages, _ = gae(torch.tensor([REWARDS]), torch.zeros(1, 3), torch.ones(1, 3),
                        gamma=GAMMA, lam=LAM)
    return float(advantages[0, 0])


exercise(
    id="07.gae",
    name="my_advantage",
    kind="value",
    prompt=f"the GAE advantage of the FIRST token of a 3-token answer with rewards {REWARDS}, a "
           f"value head that says 0 everywhere, gamma = {GAMMA}, lambda = {LAM}",
    reference=_gae_first,
    hint="with zero values every TD error is the reward itself; A_t = sum_k (gamma lambda)^k "
         "delta_{t+k}, so the final reward reaches token 1 two steps later",
    rtol=1e-5,
    mistakes=[
        Mistake("no discount", 1.0,
                "lambda = 0.95 discounts each step back: (gamma lambda)^2 for a reward two "
                "tokens later"),
        Mistake("one step of discount", LAM,
                "token 1 is two steps before the reward: (gamma lambda)^2, not gamma lambda "
                "(that is token 2's advantage)"),
    ],
)

KL_COEF, ANSWER_KL = 2.0, 1.0


def _penalty():
    import torch

    from ..align.ppo import per_token_rewards

    # One 4-token answer whose per-token log-ratios sum to ANSWER_KL nats; score 0.
    logprobs = torch.full((1, 4), -1.0)
    ref = logprobs - ANSWER_KL / 4
    rewards = per_token_rewards(torch.zeros(1), logprobs, ref, KL_COEF, torch.ones(1, 4), "k1")
    return -float(rewards.sum())


exercise(
    id="07.kl_penalty",
    name="my_penalty",
    kind="value",
    prompt=f"with kl_coef = {KL_COEF}, how much reward (reward-model logits) does the KL term take "
           f"from an answer whose KL to the SFT model is {ANSWER_KL} nat?",
    reference=_penalty,
    hint="each token pays -kl_coef * k1_t; over the answer the k1 terms sum to its KL",
    rtol=1e-5,
    mistakes=[
        Mistake("the coefficient divides", ANSWER_KL / KL_COEF,
                "the per-token reward is -kl_coef * KL_t: a larger coefficient is a shorter "
                "leash, so it multiplies"),
        Mistake("the KL without its coefficient", ANSWER_KL,
                "each token pays kl_coef * k1_t: the coefficient scales the nats of KL into "
                "reward-model logits, here twice the KL"),
    ],
)

BON_N = 16


def _bon_kl():
    from ..align.rlhf import best_of_n_kl

    return best_of_n_kl(BON_N)


exercise(
    id="07.bon_kl",
    name="my_bon_kl",
    kind="value",
    prompt=f"the KL (nats) between best-of-{BON_N} sampling and the policy it samples from: "
           "log n - (n - 1) / n",
    reference=_bon_kl,
    hint="math.log is the natural log; (n - 1) / n = 15/16 here",
    rtol=1e-4,
    mistakes=[
        Mistake("log n alone", math.log(BON_N),
                "log n bounds the KL of picking one sample in n; the exact value for best-of-n "
                "subtracts (n - 1) / n"),
        Mistake("a log in base 2", math.log2(BON_N) - (BON_N - 1) / BON_N,
                "KL here is in nats: math.log, not math.log2"),
    ],
)
