"""Lab 11's exercises: the compute of a training run (6ND), which stages a changed knob
re-runs, and the confidence interval of an accuracy."""

from __future__ import annotations

import math

from ..pipeline.report import wilson_interval
from . import Mistake, exercise


def training_flops(n_params, n_tokens):
    """6ND: 2 FLOPs per weight per token forward, 4 backward (Kaplan et al. 2020)."""
    return 6.0 * n_params * n_tokens


exercise(
    id="11.training_flops",
    name="my_training_flops",
    kind="function",
    prompt="the FLOPs to train N parameters on D tokens: 2N per token forward, 4N backward",
    reference=training_flops,
    cases=lambda: [(1_000_000, 800_000), (3_272_640, 5_734_400), (124_000_000, 10**9),
                   (7e9, 2e12), (1, 1)],
    hint="each weight does one multiply-add (2 FLOPs) per token forward, twice that backward",
    mistakes=[
        Mistake("the forward pass only", lambda n, d: 2.0 * n * d,
                "2ND is inference on D tokens; training also runs the backward pass, which "
                "costs about twice the forward (gradients for activations and for weights)"),
        Mistake("the cost of one token", lambda n, d: 6.0 * n,
                "6N is per training token: multiply by the D tokens the run reads"),
    ],
)

RERUN_OPTIONS = ("dpo", "dpo, evaluate, quantize", "sft, dpo, evaluate, quantize",
                 "every stage")

exercise(
    id="11.rerun",
    name="my_rerun",
    kind="choice",
    prompt="you change dpo.beta and run the same config again: which stages run?",
    reference=lambda: "dpo, evaluate, quantize",
    options=RERUN_OPTIONS,
    explanation="a stage's key hashes its config and the outputs of the stages it reads: beta "
                "changes the DPO model, and evaluate and quantize read that model; data, "
                "tokenizer, pretrain, sft and the shipped yardstick read nothing that changed",
    mistakes=[
        Mistake("DPO alone", "dpo",
                "evaluation and quantization read the DPO model: a new model means new inputs, "
                "so their keys change too"),
        Mistake("the SFT stage too", "sft, dpo, evaluate, quantize",
                "SFT runs before DPO and reads nothing of it: its key (its config and the base "
                "model's hash) is unchanged, so it is skipped"),
        Mistake("everything", "every stage",
                "only stages downstream of the change re-run; that is what the keys are for"),
    ],
)


def _wald(correct, n):
    p = correct / n
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    return (p - half, p + half)


def _wald_clipped(correct, n):
    low, high = _wald(correct, n)
    return (max(0.0, low), min(1.0, high))


exercise(
    id="11.wilson",
    name="my_wilson_interval",
    kind="function",
    prompt="the 95% Wilson interval of correct/n: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) "
           "/ (1 + z^2/n), z = 1.96",
    reference=lambda correct, n: wilson_interval(correct, n),
    cases=lambda: [(120, 399), (100, 399), (0, 20), (20, 20), (7, 10), (1, 10), (261, 399), (1, 1)],
    hint="return (low, high); centre and half width are both divided by 1 + z^2/n",
    mistakes=[
        Mistake("the normal (Wald) interval", _wald,
                "p +- 1.96 sqrt(p(1-p)/n) collapses to a single point at 0 or n correct and "
                "can leave [0, 1]; Wilson's interval does neither"),
        Mistake("the Wald interval clipped to [0, 1]", _wald_clipped,
                "clipping hides the problem but keeps the zero width at 0 or n correct: 0 of "
                "20 right does not prove the accuracy is exactly 0"),
    ],
    rtol=1e-6, atol=1e-9,
)
