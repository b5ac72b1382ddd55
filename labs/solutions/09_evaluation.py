"""Solutions to lab 09's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math


def my_perplexity(nlls):
    return math.exp(sum(nlls) / len(nlls))  # nats in, so e ** (mean NLL)


my_perfect_perplexity = 1.0  # every NLL is -ln 1 = 0, and exp(0) = 1


def my_bits_per_byte(total_nll, n_bytes):
    return total_nll / math.log(2) / n_bytes


def my_pass_at_k(n, c, k):
    if n - c < k:  # every set of k samples holds a passing one
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


acc_norm_pick = "orange"  # -2.6 / 6 = -0.43 per character beats -2.0 / 3 = -0.67

honest_column = "acc (clean items)"
