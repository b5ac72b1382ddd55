"""Solutions to lab 04's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import math

import torch

# 1. bf16 stores 7 mantissa bits: between 1 and 2 its numbers are 2^-7 apart.
bf16_ulp_at_one = 2.0**-7

# 2. fp16 flushes |g| < 2^-25 (half its smallest subnormal) to zero.
flushed_share = math.erf(2.0**-25 / (1e-6 * math.sqrt(2)))

# 3. 2^-14 / 1e-9 = 61035 -> the next power of two.
smallest_scale = 2.0 ** math.ceil(math.log2(2.0**-14 / 1e-9))


# 4. Let torch do the addition in bf16 (or: abs(update) > ulp(weight, "bf16") / 2).
def update_survives(weight, update):
    w = torch.tensor(weight, dtype=torch.bfloat16)
    return bool(w + torch.tensor(update, dtype=torch.bfloat16) != w)
