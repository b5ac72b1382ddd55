"""Lab 00's exercises: softmax with a temperature, entropy, and what T does."""

from __future__ import annotations

import math

from ..sampling import entropy_bits, softmax_with_temperature
from . import Mistake, exercise


def _naive_softmax(logits, temperature):  # no max subtracted: exp(1000) overflows
    weights = [math.exp(z / temperature) for z in logits]
    return [w / sum(weights) for w in weights]


def _times_temperature(logits, temperature):  # multiplies by T instead of dividing
    top = max(logits)
    weights = [math.exp((z - top) * temperature) for z in logits]
    return [w / sum(weights) for w in weights]


def _no_temperature(logits, temperature):
    return softmax_with_temperature(logits, 1.0)


exercise(
    id="00.softmax",
    name="my_softmax",
    kind="function",
    prompt="p_i = exp(z_i / T) / sum_j exp(z_j / T), with the largest logit subtracted first",
    reference=softmax_with_temperature,
    cases=lambda: [([1.0, 2.0, 3.0], 1.0), ([1.0, 2.0, 3.0], 0.5), ([0.0, 0.0], 2.0),
                   ([1000.0, 999.0], 0.5), ([4.0, 2.5, 2.0, 1.0, 0.5], 3.0)],
    hint="subtract max(logits) before exp: exp(1000) overflows, exp(0) does not",
    mistakes=[
        Mistake("a softmax without the max subtracted", _naive_softmax,
                "exp(1000 / T) overflows to inf (a Python OverflowError, or nan in torch): "
                "subtract the largest logit first, which leaves every probability unchanged"),
        Mistake("multiplying by T", _times_temperature,
                "the temperature divides the logits: T < 1 sharpens, T > 1 flattens"),
        Mistake("a softmax that ignores T", _no_temperature,
                "the temperature is missing: divide each logit by T before exp"),
    ],
)


def _entropy_nats(probs):
    return -sum(p * math.log(p) for p in probs if p > 0)


exercise(
    id="00.entropy",
    name="my_entropy_bits",
    kind="function",
    prompt="the entropy of a distribution in bits: -sum p_i log2 p_i (terms with p_i = 0 add 0)",
    reference=entropy_bits,
    cases=lambda: [([0.5, 0.5],), ([1.0, 0.0],), ([0.25] * 4,), ([0.7, 0.2, 0.1],),
                   (softmax_with_temperature([4.0, 2.5, 2.0, 1.0, 0.5], 2.0),)],
    hint="use math.log2, and skip zero probabilities (0 log 0 is taken as 0)",
    mistakes=[
        Mistake("entropy in nats", _entropy_nats,
                "math.log is the natural log (nats); bits need math.log2 (1 bit = ln 2 nats)"),
    ],
)

exercise(
    id="00.temperature",
    name="flattest_temperature",
    kind="choice",
    prompt="which temperature gives the flattest distribution over the five tokens above?",
    reference=lambda: max((0.25, 0.5, 1.0, 2.0, 4.0), key=lambda t: entropy_bits(
        softmax_with_temperature([4.0, 2.5, 2.0, 1.0, 0.5], t))),
    options=(0.25, 0.5, 1.0, 2.0, 4.0),
    explanation="dividing the logits by a large T shrinks their differences, so the "
                "probabilities move toward uniform (entropy toward log2 5 = 2.32 bits)",
    mistakes=[Mistake("the sharpest one", 0.25,
                      "T < 1 multiplies the differences between logits: the top token takes "
                      "almost everything (the distribution sharpens); flat needs a large T")],
)
