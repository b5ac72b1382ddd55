"""Solutions to lab 00's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math


def my_softmax(logits, temperature):
    top = max(logits)  # subtracting the largest logit changes nothing but avoids overflow
    weights = [math.exp((z - top) / temperature) for z in logits]
    total = sum(weights)
    return [w / total for w in weights]


def my_entropy_bits(probs):
    return -sum(p * math.log2(p) for p in probs if p > 0)


flattest_temperature = 4.0
