"""Lab 05's exercises: warmup + cosine by hand, the range test's smoothing, a peak LR carried
to a wider model, and which LR of the range test to train with."""

from __future__ import annotations

import math

from ..schedules.range_test import smooth_losses
from . import Mistake, exercise


def transformers_warmup_cosine(step, warmup_steps, total_steps):
    """The multiplier of transformers' get_cosine_schedule_with_warmup, asked of transformers."""
    import torch
    from transformers import optimization as hf

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = hf.get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    return scheduler.lr_lambdas[0](step)


def _cosine_after(step, warmup_steps, total_steps, progress):
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _progress_from_zero(step, warmup_steps, total_steps):
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return _cosine_after(step, warmup_steps, total_steps, step / total_steps)


def _clamped_after_the_end(step, warmup_steps, total_steps):
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return _cosine_after(step, warmup_steps, total_steps, progress)


def _warmup_off_by_one(step, warmup_steps, total_steps):
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return _cosine_after(step, warmup_steps, total_steps, progress)


exercise(
    id="05.warmup_cosine",
    name="my_warmup_cosine",
    kind="function",
    prompt="t/W while t < W, then max(0, (1 + cos(pi p)) / 2) with p = (t - W) / (T - W)",
    reference=transformers_warmup_cosine,
    cases=lambda: [(0, 10, 100), (5, 10, 100), (10, 10, 100), (55, 10, 100), (100, 10, 100),
                   (0, 0, 50), (25, 0, 50), (130, 10, 100), (3, 4, 8)],
    hint="p counts from the end of the warmup; after the last step transformers does not clamp p, "
         "so the cosine turns back up",
    mistakes=[
        Mistake("progress counted from step 0", _progress_from_zero,
                "p runs from 0 at the end of the warmup to 1 at the last step: "
                "p = (t - W) / (T - W), not t / T, or the cosine starts below the peak"),
        Mistake("p clamped at the last step", _clamped_after_the_end,
                "transformers does not clamp p after the last step: past T the half cosine "
                "continues and the multiplier climbs back up (lab 05 section 1 shows it)"),
        Mistake("a warmup one step ahead", _warmup_off_by_one,
                "the warmup multiplier at step t is t / W: 0 at the first step, as transformers "
                "writes it ((t + 1) / (W + 1) is nanoGPT's variant, a different schedule)"),
    ],
)


def _no_bias_correction(losses, beta):
    avg, out = 0.0, []
    for loss in losses:
        avg = beta * avg + (1 - beta) * loss
        out.append(avg)
    return out


def _weights_swapped(losses, beta):
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = (1 - beta) * avg + beta * loss
        out.append(avg / (1 - (1 - beta) ** (i + 1)))
    return out


exercise(
    id="05.smooth",
    name="my_smooth",
    kind="function",
    prompt="the range test's smoother: a = beta a + (1 - beta) loss (a starts at 0), "
           "reported as a / (1 - beta^(i+1)) at the i-th loss (0-based)",
    reference=smooth_losses,
    cases=lambda: [([2.0, 2.0, 2.0], 0.9), ([1.0, 3.0], 0.9), ([8.0, 7.5, 7.9, 6.0, 6.5], 0.9),
                   ([5.0, 4.0, 3.0, 9.0], 0.5), ([3.0, 1.0, 2.0], 0.0),
                   ([float(i % 7) for i in range(30)], 0.98)],
    hint="keep the running average a from 0 and divide each reported value by 1 - beta^(i+1), "
         "the total weight the average has given to losses so far",
    mistakes=[
        Mistake("a moving average without the bias correction", _no_bias_correction,
                "the average starts at 0, so its first values are pulled toward 0: divide by "
                "1 - beta^(i+1) (with beta = 0.9 the first value is 10x too small otherwise)"),
        Mistake("beta on the new loss", _weights_swapped,
                "beta weighs the *past* average (a = beta a + (1 - beta) loss): with beta = 0.9 "
                "each new loss moves the average by a tenth of the way"),
    ],
)

TINY_WIDTH, TINY_PEAK, WIDE_WIDTH = 64, 1e-2, 4096

exercise(
    id="05.wide_peak",
    name="my_wide_peak",
    kind="value",
    prompt=f"the tiny GPT (d_model {TINY_WIDTH}) trains well at peak {TINY_PEAK:g}; if the best "
           f"Adam rate scales as 1/d_model, what peak for d_model {WIDE_WIDTH}?",
    reference=lambda: TINY_PEAK * TINY_WIDTH / WIDE_WIDTH,
    hint="1/d scaling: multiply the peak by (old width / new width)",
    rtol=1e-3,
    mistakes=[
        Mistake("scaling the wrong way", TINY_PEAK * WIDE_WIDTH / TINY_WIDTH,
                "a wider layer sums more updates into each output, so its stable rate is "
                "*smaller*: multiply by 64 / 4096, not by 4096 / 64"),
        Mistake("square-root scaling", TINY_PEAK * math.sqrt(TINY_WIDTH / WIDE_WIDTH),
                "that is the 1/sqrt(d) rule (of the initial weights' scale); the question assumes "
                "the stable Adam rate falls as 1/d, the muP rule for hidden matrices"),
    ],
)

PEAK_OPTIONS = ("eta_star", "eta_star / 10", "the largest LR tested")

exercise(
    id="05.peak_choice",
    name="my_peak_choice",
    kind="choice",
    prompt="the range test's smoothed loss is lowest at eta_star: which peak do you train with?",
    reference=lambda: "eta_star / 10",
    options=PEAK_OPTIONS,
    explanation="at the minimum the loss has already stopped improving as the LR rises: a run "
                "held there for thousands of steps is on the edge; a tenth of it (about where "
                "the loss falls fastest) leaves a margin (fastai's rule)",
    mistakes=[
        Mistake("the minimum itself", "eta_star",
                "the lowest loss of the sweep comes at a rate where the loss has stopped "
                "falling: a long run at that rate sits on the edge of divergence; take a tenth"),
        Mistake("the largest LR tested", "the largest LR tested",
                "the last rates of the sweep are where the loss stalls or blows up: the sweep "
                "goes past any usable peak on purpose"),
    ],
)
