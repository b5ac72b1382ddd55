"""Solutions to lab 06's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""


def my_labels(input_ids, mask):
    # The model shifts the labels itself; -100 is cross-entropy's ignore_index.
    return [token if m else -100 for token, m in zip(input_ids, mask)]


def my_masked_loss(token_losses, labels):
    kept = [loss for loss, label in zip(token_losses, labels) if label != -100]
    return sum(kept) / len(kept)  # a mean over the tokens that carry loss only


# r * (d_in + d_out) per projection: four d x d attention projections, gate and up (d -> ff),
# down (ff -> d), in each of 32 layers.
my_lora_count = 32 * 16 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))

my_failing_rule = "complete"  # no sentence end: a truncated answer
