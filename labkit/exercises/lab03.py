"""Lab 03's exercises: what an all-reduce sends, what ZeRO-3 leaves per GPU, the pipeline bubble
and how many micro-batches hide it, and the activation memory of one transformer layer."""

from __future__ import annotations

from ..parallel.planner import activation_bytes_per_layer, bubble_fraction, model_state_bytes
from . import Mistake, exercise

GB = 1e9
P7B, GPUS = 7e9, 8


def _ring_allreduce_gb(n: int, buffer_bytes: float) -> float:
    # reduce-scatter then all-gather: each sends (N-1)/N of the buffer twice
    return 2 * (n - 1) / n * buffer_bytes / GB


exercise(
    id="03.allreduce",
    name="sent_gb",
    kind="value",
    prompt="GB each of 8 GPUs sends per step in a ring all-reduce of a 7B model's bf16 gradients",
    reference=lambda: _ring_allreduce_gb(GPUS, 2 * P7B),
    hint="the buffer is 2 bytes x 7e9 parameters; a ring all-reduce sends 2(N-1)/N of it",
    mistakes=[
        Mistake("one pass of the ring", (GPUS - 1) / GPUS * 2 * P7B / GB,
                "(N-1)/N of the buffer is the reduce-scatter alone; the all-gather that hands "
                "every GPU the summed result sends as much again: 2(N-1)/N"),
        Mistake("fp32 gradients", _ring_allreduce_gb(GPUS, 4 * P7B),
                "the gradients here are bf16, 2 bytes per parameter, not 4"),
        Mistake("the buffer sent once", 2 * P7B / GB,
                "a ring all-reduce does not send the whole buffer once: each GPU sends "
                "2(N-1)/N of it, close to twice the buffer for large N"),
    ],
)

exercise(
    id="03.zero3",
    name="zero3_gb",
    kind="value",
    prompt="GB of model states per GPU for a 7B model under ZeRO-3 on 8 GPUs (16 bytes/param)",
    reference=lambda: sum(model_state_bytes(P7B, dp=GPUS, zero=3).values()) / GB,
    hint="ZeRO-3 shards all 16 bytes per parameter (weights, gradients, optimizer) over N",
    mistakes=[
        Mistake("ZeRO-1", sum(model_state_bytes(P7B, dp=GPUS, zero=1).values()) / GB,
                "2P + 2P + 12P/N shards only the optimizer state: that is ZeRO-1"),
        Mistake("ZeRO-2", sum(model_state_bytes(P7B, dp=GPUS, zero=2).values()) / GB,
                "2P + (2P + 12P)/N keeps the weights whole: that is ZeRO-2"),
        Mistake("no sharding", 16 * P7B / GB,
                "112 GB is what every rank of plain DDP holds; ZeRO-3 divides it by N"),
    ],
)


def _idle_over_busy(p, m):
    return (p - 1) / m


def _busy_share(p, m):
    return m / (m + p - 1)


exercise(
    id="03.bubble",
    name="my_bubble",
    kind="function",
    prompt="the idle fraction of a GPipe/1F1B step with p stages and m micro-batches",
    reference=bubble_fraction,
    cases=lambda: [(4, 8), (2, 4), (8, 64), (1, 5), (16, 3), (4, 1)],
    hint="a stage is busy for m of the m + p - 1 slots of a step and idle for the other p - 1",
    mistakes=[
        Mistake("idle time over busy time", _idle_over_busy,
                "(p-1)/m divides the idle slots by the busy ones; the fraction of the step is "
                "idle / all slots = (p-1)/(m+p-1)"),
        Mistake("the busy fraction", _busy_share,
                "m/(m+p-1) is the share a stage works; the bubble is the rest, (p-1)/(m+p-1)"),
    ],
)

exercise(
    id="03.smallest_m",
    name="smallest_m",
    kind="value",
    prompt="the smallest number of micro-batches m that keeps the bubble under 10% with 8 stages",
    reference=lambda: min(m for m in range(1, 10_000) if bubble_fraction(8, m) < 0.1),
    hint="solve (p-1)/(m+p-1) < 0.1 for m with p = 8, then take the next whole number",
    mistakes=[
        Mistake("a bubble of exactly 10%", 63,
                "at m = 63 the bubble is 7/70 = 10% exactly: under 10% needs one more"),
        Mistake("the bubble as (p-1)/m", 71,
                "(p-1)/m < 0.1 gives m > 70; the bubble divides by the whole step, m + p - 1 "
                "slots"),
    ],
)


def _no_attention_term(s, b, h, a):
    return s * b * h * 34


def _attention_without_heads(s, b, h, a):
    return s * b * h * (34 + 5 * s / h)


def _in_two_byte_units(s, b, h, a):
    return 2 * s * b * h * (34 + 5 * a * s / h)


exercise(
    id="03.activations",
    name="my_activation_bytes",
    kind="function",
    prompt="bytes one transformer layer keeps for backward: s*b*h*(34 + 5*a*s/h) (Korthikanti)",
    reference=activation_bytes_per_layer,
    cases=lambda: [(2048, 1, 4096, 32), (8192, 1, 8192, 64), (128, 4, 256, 4),
                   (4096, 2, 5120, 40), (32, 8, 64, 4)],
    hint="s = sequence length, b = micro-batch size, h = hidden size, a = attention heads; "
         "the 5*a*s/h term is the attention matrices, which grow with s squared",
    mistakes=[
        Mistake("the attention term left out", _no_attention_term,
                "s*b*h*34 leaves out the a x s x s attention scores, softmax and dropout mask "
                "(the 5*a*s/h term): that is what selective recomputation drops, not what a "
                "layer stores without it"),
        Mistake("the attention term without the heads", _attention_without_heads,
                "every head has its own s x s attention matrix: the term is 5*a*s/h"),
        Mistake("the bytes doubled", _in_two_byte_units,
                "the formula already counts bytes (16-bit activations, 1-byte dropout masks): "
                "no factor 2 on top"),
    ],
)
