"""Lab 09's exercises: perplexity from token NLLs, what perfect prediction scores, bits per
byte, the unbiased pass@k, acc vs acc_norm, and which leaderboard column measures knowledge."""

from __future__ import annotations

import math

import numpy as np

from ..evaluation.passk import naive_pass_at_k, pass_at_k
from . import Mistake, exercise


def _perplexity(nlls):
    return float(np.exp(np.mean(np.asarray(nlls, dtype=float))))


exercise(
    id="09.perplexity",
    name="my_perplexity",
    kind="function",
    prompt="perplexity = exp(mean token NLL), the NLLs in nats",
    reference=_perplexity,
    cases=lambda: [([1.0, 2.0, 3.0],), ([0.0],), ([0.0, 0.0, 0.0],),
                   ([math.log(3208)] * 5,), ([0.05, 0.9, 0.01, 2.4, 0.3, 0.0, 1.1],)],
    hint="average the NLLs first, then exponentiate (math.exp): the NLLs are natural logs",
    mistakes=[
        Mistake("perplexity in base 2", lambda nlls: 2.0 ** (sum(nlls) / len(nlls)),
                "the NLLs are in nats (natural logs), so perplexity is e ** mean, not 2 ** mean; "
                "2 ** mean is right only for NLLs in bits"),
        Mistake("the mean of per-token perplexities",
                lambda nlls: sum(math.exp(x) for x in nlls) / len(nlls),
                "exp of each NLL, then the mean, overweights the surprising tokens (Jensen): "
                "perplexity is exp of the mean NLL, the geometric mean of 1/p"),
        Mistake("exp of the summed NLL", lambda nlls: math.exp(sum(nlls)),
                "exp(sum) is 1 / p(whole text), which grows with the text's length: divide the "
                "sum by the number of tokens first"),
    ],
)

exercise(
    id="09.perfect",
    name="my_perfect_perplexity",
    kind="value",
    prompt="a model gives every next token of a text probability 1: what is its perplexity?",
    reference=lambda: _perplexity([-math.log(1.0)] * 10),
    hint="each token's NLL is -ln p = -ln 1; perplexity is exp of their mean",
    mistakes=[Mistake("zero", 0.0,
                      "the NLL of a certain prediction is 0, but perplexity is exp(0) = 1: one "
                      "equally likely choice per token, the lowest perplexity there is")],
)


def _nats_per_byte(total_nll, n_bytes):
    return total_nll / n_bytes


def _times_ln2(total_nll, n_bytes):
    return total_nll * math.log(2) / n_bytes


exercise(
    id="09.bits_per_byte",
    name="my_bits_per_byte",
    kind="function",
    prompt="bits per byte = total NLL (nats) / ln 2 / UTF-8 bytes of the text",
    reference=lambda total_nll, n_bytes: total_nll / math.log(2) / n_bytes,
    cases=lambda: [(100.0, 50), (math.log(2), 1), (0.0, 7), (2465.3, 5120), (1e4, 33)],
    hint="a nat is 1 / ln 2 = 1.44 bits: divide the total NLL by math.log(2), then by the bytes",
    mistakes=[
        Mistake("nats per byte", _nats_per_byte,
                "the NLLs are in nats: convert to bits by dividing by ln 2 (one nat = 1.44 bits)"),
        Mistake("multiplying by ln 2", _times_ln2,
                "bits = nats / ln 2, not nats * ln 2: a bit is the smaller unit, so there are "
                "more bits than nats"),
    ],
)


def _none_pass(n, c, k):  # the complement: the chance that all k samples fail
    return 1.0 - pass_at_k(n, c, k)


exercise(
    id="09.pass_at_k",
    name="my_pass_at_k",
    kind="function",
    prompt="unbiased pass@k = 1 - C(n-c, k) / C(n, k), in the stable product form "
           "1 - prod_{i=n-c+1..n} (1 - k/i), and 1 when n - c < k",
    reference=pass_at_k,
    cases=lambda: [(5, 1, 5), (5, 0, 1), (10, 3, 1), (10, 3, 5), (200, 7, 100), (20, 19, 2),
                   (20, 2, 10)],
    hint="math.comb works for small n; the product over i = n-c+1 .. n of (1 - k/i) never "
         "overflows",
    mistakes=[
        Mistake("the naive plug-in estimate", naive_pass_at_k,
                "1 - (1 - c/n)^k treats the n samples as if drawn with replacement and is biased "
                "low: with n = 5, c = 1, every set of 5 samples holds the passing one, so "
                "pass@5 = 1, not 0.67"),
        Mistake("pass@1 for every k", lambda n, c, k: c / n,
                "c/n is pass@1 only: with k tries the chance that one of them passes is higher"),
        Mistake("the chance that all k fail", _none_pass,
                "C(n-c, k) / C(n, k) is the chance that k samples drawn from the n all fail: "
                "pass@k is 1 minus that"),
    ],
)

ACC_NORM_CHOICES = {"red": -2.0, "orange": -2.6}  # summed log-prob of each choice (nats)

exercise(
    id="09.acc_norm",
    name="acc_norm_pick",
    kind="choice",
    prompt="which choice does acc_norm pick: 'red' (summed log-prob -2.0) or 'orange' (-2.6)?",
    reference=lambda: max(ACC_NORM_CHOICES, key=lambda c: ACC_NORM_CHOICES[c] / len(c)),
    options=tuple(ACC_NORM_CHOICES),
    explanation="per character: red -2.0 / 3 = -0.67, orange -2.6 / 6 = -0.43 nats; acc would "
                "pick red",
    mistakes=[Mistake("acc's pick", "red",
                      "'red' has the higher *summed* log-prob, which is what acc compares; "
                      "acc_norm first divides each sum by the choice's length in characters")],
)

BOARD_COLUMNS = ("held-out bits/byte", "held-out perplexity", "acc", "acc_norm", "acc (clean items)",
                 "pass@1")

exercise(
    id="09.honest_column",
    name="honest_column",
    kind="choice",
    prompt="which leaderboard column tells whether the leaked fine-tune improved the model's "
           "knowledge?",
    reference=lambda: "acc (clean items)",
    options=BOARD_COLUMNS,
    explanation="only the items the detector did not find in the training data measure "
                "knowledge, not memory (and even they carry the format the leak taught)",
    mistakes=[Mistake("the whole-test accuracy", "acc",
                      "acc over all items mixes in the leaked questions the model has seen with "
                      "their answers: it measures memory as much as knowledge")],
)
