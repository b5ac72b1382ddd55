"""Solutions to lab 02's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

import torch.nn.functional as F

# [MASK] never appears at fine-tuning time: the model must also build good features for the
# tokens it sees, and cannot trust that a visible token is the original one.
my_reason = "b"


def my_causal_loss(logits, input_ids):
    # position i predicts token i+1: drop the last position's logits and the first label
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())


def my_training_flops(n_params, n_tokens):
    return 6 * n_params * n_tokens  # 2ND forward + 4ND backward


my_gpt3_tokens_per_param = 300e9 / 175e9
