"""Solutions to lab 05's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math


def my_warmup_cosine(step, warmup_steps, total_steps):
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # not clamped at 1
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def my_smooth(losses, beta):
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (i + 1)))  # undo the pull toward the start at 0
    return smoothed


my_wide_peak = 1e-2 * 64 / 4096  # 1/d scaling from d_model 64 to 4096

my_peak_choice = "eta_star / 10"
