"""Lab 08's exercises: the DPO loss by hand, preference accuracy from implicit rewards, and the
memory a DPO pipeline keeps frozen."""

from __future__ import annotations

import math

from . import Mistake, exercise

# Summed answer log-probs (nats): the policy and the reference on one pair.
POLICY, REF, BETA = {"chosen": -12.0, "rejected": -20.0}, {"chosen": -14.0, "rejected": -16.0}, 0.1


def _nll_of_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def _dpo():
    from ..align.preference_losses import dpo_loss

    return float(dpo_loss([POLICY["chosen"]], [POLICY["rejected"]], [REF["chosen"]],
                          [REF["rejected"]], beta=BETA).loss)


_h = (POLICY["chosen"] - REF["chosen"]) - (POLICY["rejected"] - REF["rejected"])

exercise(
    id="08.dpo_loss",
    name="my_dpo_loss",
    kind="value",
    prompt="the DPO loss of one pair, beta = 0.1: the policy gives the chosen answer log-prob "
           "-12.0 and the rejected one -20.0; the reference gave them -14.0 and -16.0",
    reference=_dpo,
    hint="implicit rewards beta * (log pi - log ref): +0.2 for the chosen, -0.4 for the "
         "rejected; the loss is -log sigmoid(chosen reward - rejected reward)",
    rtol=1e-4,
    mistakes=[
        Mistake("beta left out", _nll_of_sigmoid(_h),
                "the log-ratio gap (6 nats) is scaled by beta = 0.1 before the sigmoid: "
                "beta is the leash that DPO inherits from the KL penalty"),
        Mistake("the reference left out",
                _nll_of_sigmoid(BETA * (POLICY["chosen"] - POLICY["rejected"])),
                "the implicit reward is beta * log(pi / ref): subtract the reference's "
                "log-probs, or the loss rewards answers the reference already liked"),
        Mistake("the margin the wrong way round", _nll_of_sigmoid(-BETA * _h),
                "the loss is small when the chosen answer's reward is the larger one: "
                "sigmoid(r_chosen - r_rejected)"),
    ],
)


def _accuracy(chosen, rejected, ref_chosen, ref_rejected, beta):
    wins = [beta * (c - rc) > beta * (r - rr)
            for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    return sum(wins) / len(wins)


def _accuracy_ties_win(chosen, rejected, ref_chosen, ref_rejected, beta):
    wins = [c - rc >= r - rr for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    return sum(wins) / len(wins)


def _accuracy_without_reference(chosen, rejected, ref_chosen, ref_rejected, beta):
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def _accuracy_cases():
    return [
        ([-12.0, -30.0, -8.0], [-20.0, -25.0, -9.0], [-14.0, -28.0, -8.0], [-16.0, -26.0, -10.0],
         0.1),
        ([-5.0, -6.0], [-7.0, -6.0], [-5.0, -6.0], [-7.0, -6.0], 0.5),  # policy = reference: ties
        ([-40.0, -10.0, -22.0, -3.0], [-35.0, -12.0, -30.0, -2.0],
         [-45.0, -9.0, -20.0, -3.5], [-30.0, -13.0, -29.0, -1.0], 0.1),
    ]


exercise(
    id="08.accuracy",
    name="my_preference_accuracy",
    kind="function",
    prompt="my_preference_accuracy(chosen, rejected, ref_chosen, ref_rejected, beta): the share "
           "of pairs whose chosen answer gets the higher implicit reward beta * (log pi - log "
           "ref); a tie counts as a miss",
    reference=_accuracy,
    cases=_accuracy_cases,
    hint="per pair, compare beta * (chosen - ref_chosen) with beta * (rejected - ref_rejected); "
         "count strict wins and divide by the number of pairs",
    mistakes=[
        Mistake("ties counted as wins", _accuracy_ties_win,
                "before any training policy = reference and every implicit reward is 0: a tie "
                "is no preference, so it must count as a miss (or every untrained model scores "
                "100%)"),
        Mistake("the reference left out", _accuracy_without_reference,
                "that compares raw log-probs, the SFT model's own likelihood preference; DPO's "
                "reward is the log-prob *change* from the reference"),
    ],
)

PARAMS_7B = 7e9


exercise(
    id="08.frozen_gb",
    name="my_frozen_gb",
    kind="value",
    prompt="aligning a 7B model with DPO in bf16, full fine-tuning (no LoRA): how many GB do the "
           "FROZEN models take (2 bytes per parameter), next to the trained policy's 112 GB?",
    reference=lambda: 1 * PARAMS_7B * 2 / 1e9,
    hint="DPO keeps one frozen model, the reference; the policy is the one being trained",
    rtol=1e-3,
    mistakes=[
        Mistake("PPO's frozen models", 2 * PARAMS_7B * 2 / 1e9,
                "two frozen models (reference and reward model) is RLHF with PPO; DPO has no "
                "reward model"),
        Mistake("no frozen model", 0,
                "that is ORPO or SimPO (no reference) or DPO with LoRA (the reference is the "
                "policy with its adapter off); full fine-tuning DPO keeps a frozen copy"),
        Mistake("the reference at 16 bytes per parameter", PARAMS_7B * 16 / 1e9,
                "16 bytes per parameter is what *training* costs (weights, master copy, "
                "gradients, AdamW); a frozen model only holds its bf16 weights"),
    ],
)
