"""Solutions to lab 08's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math

beta = 0.1
chosen_reward = beta * (-12.0 - -14.0)  # +0.2
rejected_reward = beta * (-20.0 - -16.0)  # -0.4
my_dpo_loss = -math.log(1 / (1 + math.exp(-(chosen_reward - rejected_reward))))


def my_preference_accuracy(chosen, rejected, ref_chosen, ref_rejected, beta):
    wins = [beta * (c - rc) > beta * (r - rr)  # strict: a tie is no preference
            for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    return sum(wins) / len(wins)


my_frozen_gb = 7e9 * 2 / 1e9  # one frozen reference in bf16
