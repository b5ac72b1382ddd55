"""Lab 04's exercises: bf16's spacing at 1, the share of gradients fp16 flushes to zero, the loss
scale a tiny gradient needs, and when an update survives being added to a bf16 weight."""

from __future__ import annotations

import math

from ..precision.formats import cast, fp16_underflow_share_analytic, ulp
from . import Mistake, exercise

exercise(
    id="04.bf16_ulp",
    name="bf16_ulp_at_one",
    kind="value",
    prompt="the spacing (ulp) of bf16 numbers between 1 and 2",
    reference=lambda: ulp(1.0, "bf16"),
    hint="between 1 and 2 the spacing is 2 to the power of minus the stored mantissa bits",
    mistakes=[
        Mistake("fp16's spacing", 2.0**-10,
                "2^-10 is fp16's spacing (10 stored mantissa bits); bf16 stores 7"),
        Mistake("the implicit bit counted", 2.0**-8,
                "bf16 has 8 bits of precision, but the leading 1 is implicit: 7 are stored, "
                "and the spacing between 1 and 2 is 2^-7"),
        Mistake("fp32's spacing", 2.0**-23, "2^-23 is fp32's spacing (23 stored mantissa bits)"),
    ],
)

SIGMA = 1e-6


def _share_below(threshold: float) -> float:
    return math.erf(threshold / (SIGMA * math.sqrt(2)))


exercise(
    id="04.flush_share",
    name="flushed_share",
    kind="value",
    prompt="the share of N(0, sigma=1e-6) gradients that fp16 flushes to zero (|g| < 2^-25)",
    reference=lambda: fp16_underflow_share_analytic(SIGMA)["flush_to_zero"],
    hint="P(|g| < t) = erf(t / (sigma * sqrt(2))) with t = 2^-25, half of fp16's smallest "
         "subnormal",
    mistakes=[
        Mistake("the smallest subnormal as the threshold", _share_below(2.0**-24),
                "values between 2^-25 and 2^-24 round up to the smallest subnormal; only those "
                "below half of it, 2^-25, become 0"),
        Mistake("the smallest normal as the threshold", _share_below(2.0**-14),
                "below 2^-14 fp16 goes subnormal (fewer bits), not zero: the flush threshold "
                "is 2^-25"),
        Mistake("one sign only", _share_below(2.0**-25) / 2,
                "erf(t / (sigma sqrt 2)) already counts both signs: P(-t < g < t)"),
    ],
)

TINY_GRADIENT = 1e-9
FP16_MIN_NORMAL = 2.0**-14


exercise(
    id="04.loss_scale",
    name="smallest_scale",
    kind="value",
    prompt="the smallest power of two S with 1e-9 x S >= 2^-14 (fp16's smallest normal)",
    reference=lambda: 2.0 ** math.ceil(math.log2(FP16_MIN_NORMAL / TINY_GRADIENT)),
    hint="log2(2^-14 / 1e-9) is about 15.9: round up to the next power of two",
    mistakes=[
        Mistake("rounded down", 2.0**15,
                "1e-9 x 2^15 = 3.3e-5 is still below 2^-14 = 6.1e-5: subnormal; round up"),
        Mistake("the smallest subnormal as the target", 2.0 ** math.ceil(math.log2(2.0**-24 / 1e-9)),
                "64 only keeps the gradient from flushing to zero; it stays subnormal, with "
                "fewer mantissa bits: lift it to 2^-14"),
    ],
)


def _survives_in_bf16(weight, update):
    """Reference: torch adds the two in bf16 (each first stored in bf16, as an optimizer
    holding bf16 weights would)."""
    import torch

    w, u = cast(torch.tensor([float(weight)]), "bf16"), cast(torch.tensor([float(update)]), "bf16")
    return bool((w + u != w).item())


def _whole_ulp(weight, update):
    return abs(update) >= ulp(weight, "bf16")


def _in_python_floats(weight, update):
    return weight + update != weight


exercise(
    id="04.update_survives",
    name="update_survives",
    kind="function",
    prompt="True when adding `update` to a weight stored in bf16 changes the weight",
    reference=_survives_in_bf16,
    cases=lambda: [(1.0, 1e-4), (1.0, 0.004), (1.0, 0.003), (1.0, 0.0078), (0.01, 1e-4),
                   (256.0, 0.9), (256.0, 1.5), (-3.0, 0.01), (-3.0, 0.005), (1e-3, 1e-4)],
    hint="an update survives when it is more than half the bf16 spacing around the weight "
         "(labkit.precision.ulp(weight, 'bf16')), or let torch add the two in bf16",
    mistakes=[
        Mistake("a whole ulp as the threshold", _whole_ulp,
                "round to nearest moves the weight once the update passes half an ulp, not a "
                "whole one: 0.004 changes 1.0 in bf16 (half an ulp there is 0.0039)"),
        Mistake("the sum in Python floats", _in_python_floats,
                "Python floats are fp64: every one of these updates survives there; the "
                "question is about the weight stored in bf16"),
    ],
)
