"""Lab 10's exercises: absmax int8 by hand, the bytes a 4-bit layer really stores, the KV cache
of Llama-2-7B, and which configuration of a trade-off table is the smallest within a tolerance."""

from __future__ import annotations

import torch

from . import Mistake, exercise


def _absmax_reference(w):
    from ..quant import absmax_quantize

    return absmax_quantize(w, 8, "tensor").codes


def _absmax_cases():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 16, generator=g) * 0.05,), (torch.zeros(4, 4),),
            (torch.tensor([[-3.0, 1.5, 0.0, 3.0]]),), (torch.tensor([[0.2, -0.9], [0.45, 0.1]]),),
            (torch.randn(3, 64, generator=g),)]


def _safe(scale):
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _truncated(w):
    return (w / _safe(w.abs().max() / 127)).to(torch.int8)


def _over_128(w):
    return torch.round(w / _safe(w.abs().max() / 128)).clamp(-128, 127).to(torch.int8)


def _per_row(w):
    scale = _safe(w.abs().amax(dim=-1, keepdim=True) / 127)
    return torch.round(w / scale).to(torch.int8)


exercise(
    id="10.absmax_int8",
    name="my_absmax_int8",
    kind="function",
    prompt="int8 codes with one scale for the whole tensor: scale = max|w| / 127, codes = "
           "round(w / scale); an all-zero tensor gets all-zero codes",
    reference=_absmax_reference,
    cases=_absmax_cases,
    hint="torch.round, then .to(torch.int8); guard the all-zero tensor, whose scale is 0",
    mistakes=[
        Mistake("truncation instead of rounding", _truncated,
                ".to(torch.int8) cuts toward zero (2.9 -> 2): round first, or every weight "
                "loses up to a whole level instead of half of one"),
        Mistake("a scale of max|w| / 128", _over_128,
                "int8 absmax is symmetric, -127..127: the largest |w| must map to 127 (with 128 "
                "it would need code +128, which int8 does not have)"),
        Mistake("one scale per row", _per_row,
                "that is per-channel absmax (a good idea, section 1), but this exercise asks for "
                "one scale for the whole tensor: max over every weight"),
    ],
)

OUT, IN, GROUP, BITS = 512, 192, 64, 4


def _bytes_reference() -> int:
    from ..quant import quantize_model, stored_bytes

    layer = torch.nn.Sequential(torch.nn.Linear(IN, OUT, bias=False))
    with torch.no_grad():
        layer[0].weight.copy_(torch.randn(OUT, IN, generator=torch.Generator().manual_seed(0)))
    quantized = quantize_model(layer, "rtn", BITS, GROUP)
    return stored_bytes(quantized[0])


_CODES, _GROUPS = OUT * IN * BITS // 8, OUT * IN // GROUP

exercise(
    id="10.bytes_stored",
    name="my_bytes",
    kind="value",
    prompt=f"bytes a {BITS}-bit, group-{GROUP} zero-point up_proj ({OUT} x {IN}) stores: packed "
           f"codes, one fp32 scale and one {BITS}-bit zero point per group",
    reference=_bytes_reference,
    hint=f"codes: {BITS} bits per weight; groups: {OUT} x {IN} / {GROUP}, each with a 4-byte "
         f"scale and a {BITS}-bit zero",
    mistakes=[
        Mistake("forgetting the zero points", _CODES + 4 * _GROUPS,
                "zero-point quantization stores a zero per group too (4 bits each, packed)"),
        Mistake("one byte per code", OUT * IN + 4 * _GROUPS + _GROUPS * BITS // 8,
                "the codes are packed: two 4-bit codes share a byte"),
        Mistake("zero points of a byte each", _CODES + 4 * _GROUPS + _GROUPS,
                "the zero points are 4-bit codes, packed like the weights' codes"),
        Mistake("fp16 scales", _CODES + 2 * _GROUPS + _GROUPS * BITS // 8,
                "labkit's QuantLinear keeps its scales in fp32: 4 bytes each"),
    ],
)


_KV_BYTES = 2 * 32 * 32 * 128 * 4096 * 2  # the shape of the question, for the named mistakes


def _kv_reference() -> float:
    from ..quant import kv_cache_bytes

    return kv_cache_bytes(32, 32, 128, 4096, 1, 2) / 1e9


exercise(
    id="10.kv_cache",
    name="my_kv_gb",
    kind="value",
    prompt="the KV cache of Llama-2-7B (32 layers, 32 KV heads of dimension 128, fp16) for one "
           "4,096-token sequence, in GB (1e9 bytes)",
    reference=_kv_reference,
    hint="2 (K and V) x layers x KV heads x head dim x tokens x bytes per value",
    rtol=1e-3,
    mistakes=[
        Mistake("keys only", _KV_BYTES / 2 / 1e9,
                "each layer caches a key *and* a value vector per head and token: the factor 2"),
        Mistake("GiB instead of GB", _KV_BYTES / 2**30,
                "the exercise asks for GB, 1e9 bytes (GPU makers' unit); GiB are 2**30"),
        Mistake("fp32 values", 2 * _KV_BYTES / 1e9, "fp16 stores 2 bytes per value, not 4"),
    ],
)


def _table(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["label", "size_mb", "perplexity"])


def _smallest_cases():
    return [
        (_table([("fp32", 13.1, 1.2600), ("rtn 8b", 5.3, 1.2601), ("rtn 4b", 3.4, 1.2609),
                 ("rtn 3b", 2.9, 1.2650), ("rtn 2b", 2.5, 1.9)]), 0.001),
        (_table([("fp32", 13.1, 1.2600), ("rtn 8b", 5.3, 1.2601), ("rtn 4b", 3.4, 1.2609),
                 ("rtn 3b", 2.9, 1.2650), ("rtn 2b", 2.5, 1.9)]), 0.01),
        (_table([("nf4", 3.6, 20.05), ("fp32", 13.1, 20.0), ("gptq 4b", 3.4, 20.01),
                 ("rtn 4b", 3.3, 20.9), ("rtn 8b", 5.3, 19.99)]), 0.001),
        (_table([("rtn 2b", 2.5, 9.0), ("fp32", 13.1, 4.0), ("rtn 8b", 5.3, 4.02)]), 0.001),
    ]


def _smallest_within(table, tolerance):
    fp32 = float(table.loc[table["label"] == "fp32", "perplexity"].iloc[0])
    within = table[table["perplexity"] <= fp32 * (1 + tolerance)]
    return str(within.sort_values("size_mb")["label"].iloc[0])


def _smallest_overall(table, tolerance):
    return str(table.sort_values("size_mb")["label"].iloc[0])


def _absolute(table, tolerance):
    fp32 = float(table.loc[table["label"] == "fp32", "perplexity"].iloc[0])
    within = table[(table["perplexity"] - fp32).abs() <= tolerance]
    return str(within.sort_values("size_mb")["label"].iloc[0])


def _best_perplexity(table, tolerance):
    return str(table.sort_values("perplexity")["label"].iloc[0])


exercise(
    id="10.smallest_within",
    name="my_smallest_within",
    kind="function",
    prompt="the label of the smallest configuration (size_mb) whose perplexity is at most "
           "(1 + tolerance) x fp32's, from a table with columns label, size_mb, perplexity",
    reference=_smallest_within,
    cases=_smallest_cases,
    hint="find fp32's perplexity in the table, keep the rows at or below (1 + tolerance) times "
         "it, and take the one with the smallest size_mb",
    mistakes=[
        Mistake("the smallest configuration overall", _smallest_overall,
                "the tolerance is the point: the smallest model is often the broken one (2 bits)"),
        Mistake("an absolute tolerance", _absolute,
                "0.1% is relative: compare perplexity with fp32's perplexity x (1 + tolerance), "
                "not fp32's perplexity + tolerance"),
        Mistake("the best perplexity", _best_perplexity,
                "among the configurations that are good enough, the question asks for the "
                "*smallest*, not the most accurate"),
    ],
)
