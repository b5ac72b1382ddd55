"""Solutions to lab 11's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math


def my_training_flops(n_params, n_tokens):
    return 6.0 * n_params * n_tokens  # 2N forward + 4N backward, per token


my_rerun = "dpo, evaluate, quantize"


def my_wilson_interval(correct, n, z=1.96):
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends at 0 or n correct
    high = 1.0 if correct == n else min(1.0, centre + half)
    return (low, high)
