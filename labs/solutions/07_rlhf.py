"""Solutions to lab 07's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math

my_bt_loss = -math.log(1 / (1 + math.exp(-(1.5 - -0.5))))  # = log(1 + exp(-2))

ratio = 0.25 / 0.5  # reference over policy
my_k3 = (ratio - 1) - math.log(ratio)

my_advantage = (1.0 * 0.95) ** 2 * 1.0  # the final reward, two steps back

my_penalty = 2.0 * 1.0  # kl_coef times the answer's KL: the per-token k1 terms sum to it

my_bon_kl = math.log(16) - 15 / 16
