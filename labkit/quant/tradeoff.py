"""The quantization trade-off, measured: one configuration (scheme, bits, group size) of a
model -> bytes actually stored, held-out perplexity, knowledge-test accuracy and decoding
latency on this device. The lab's table and the trade-off explorer read these rows.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import LabkitError
from ..evaluation.multiple_choice import score_items
from ..evaluation.perplexity import (
    disjoint_windows,
    model_max_length,
    perplexity,
    prefix_token_id,
)
from .apply import QuantLinear, quantize_model, stored_bytes
from .gptq import _device_of, in_features, linear_layers, set_linear_weight
from .nf4 import BLOCKSIZES

FP32 = "fp32"
SCHEMES = {
    FP32: "fp32 (not quantized)",
    "rtn": "RTN, zero-point",
    "absmax": "RTN, absmax (symmetric)",
    "nf4": "NF4 + double quant",
    "llm_int8": "LLM.int8 (outliers in fp)",
    "gptq": "GPTQ (calibrated)",
    "awq": "AWQ (calibrated)",
}
CALIBRATED = ("gptq", "awq")
GROUP_SIZES = (None, 16, 32, 64, 128, 256)
MIN_BITS, MAX_BITS = 2, 8
FLOOR_PCT = 0.001  # the log axis of perplexity increase starts here
COLUMNS = [
    "label", "scheme", "bits", "group_size", "stored_bytes", "size_mb", "linear_bits",
    "perplexity", "knowledge_acc", "ms_per_token", "cpu_ms_per_token", "seconds",
]  # fmt: skip
@contextmanager
def _one_thread(enabled: bool = True):
    """A 3M-parameter model runs fastest on one thread: waking torch's pool for matrices this
    small costs more than it saves, and on a busy 2-core machine its spinning threads cost 10x."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# One configuration: its name, whether it is valid, and its measurement


def config_key(scheme: str, bits, group_size) -> tuple:
    """The cache key of a configuration: fp32 ignores bits and groups; NF4's group is its
    blocksize (64 when none is chosen)."""
    if scheme == FP32:
        return (FP32, 32, None)
    if scheme == "nf4":
        return ("nf4", 4, group_size or 64)
    return (scheme, bits, group_size)


def config_label(scheme: str, bits, group_size) -> str:
    scheme, bits, group_size = config_key(scheme, bits, group_size)
    if scheme == FP32:
        return "fp32"
    if scheme == "nf4":
        return "nf4" if group_size == 64 else f"nf4 b{group_size}"
    if scheme == "llm_int8":
        return "llm.int8"
    return f"{scheme} {bits}b" + (f" g{group_size}" if group_size else "")


def combo_problem(scheme: str, bits, group_size, in_features: Iterable[int],
                  has_calib: bool = True) -> str | None:
    """Why a configuration cannot be measured (one line naming what is valid), or None."""
    if scheme not in SCHEMES:
        return f"scheme {scheme!r} is not known; valid: {', '.join(SCHEMES)}"
    if scheme == FP32:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        return (f"bits = {bits} is not supported: integer codes here have {MIN_BITS} to "
                f"{MAX_BITS} bits (choose the fp32 scheme for the unquantized model)")
    if scheme == "nf4":
        if bits != 4:
            return f"NF4 is a 4-bit format (16 levels): set bits = 4, not {bits}"
        if group_size is not None and group_size not in BLOCKSIZES:
            return (f"NF4 block size {group_size} is not supported; valid: "
                    f"{', '.join(map(str, BLOCKSIZES))} (or 'per channel' for the default 64)")
        return None
    if scheme == "llm_int8":
        if bits != 8:
            return f"LLM.int8 is an 8-bit scheme: set bits = 8, not {bits}"
        if group_size is not None:
            return ("LLM.int8 keeps one scale per output channel (and one per token): "
                    "choose 'per output channel' as the group size")
        return None
    if scheme in CALIBRATED and not has_calib:
        return f"{scheme.upper()} needs calibration data, and this explorer was built without it"
    if group_size is not None:
        dims = sorted(set(in_features))
        bad = [d for d in dims if d % group_size]
        if bad:
            valid = [g for g in GROUP_SIZES if g and all(d % g == 0 for d in dims)]
            return (f"group size {group_size} does not divide the {', '.join(map(str, bad))} "
                    f"inputs of some linear layers (their inputs: {', '.join(map(str, dims))}); "
                    f"valid here: per output channel, {', '.join(map(str, valid))}")
    return None


def dequantized_copy(model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A copy of the float `model` whose linear weights are the `quantized` model's dequantized
    ones. It computes exactly what the QuantLinear model computes (QuantLinear.forward is
    F.linear with the dequantized weight), but dequantizes once instead of at every forward."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, QuantLinear):
                if module.method == "llm_int8":
                    raise LabkitError(f"{name}: LLM.int8 quantizes activations too; evaluate "
                                      "the quantized model itself")
                set_linear_weight(out.get_submodule(name), module.dequantized_weight())
    return out


class _TokenClock:
    """A generate() streamer that timestamps every token it is handed (the prompt first)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def put(self, value) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


def decode_latency(model: nn.Module, prompt_ids: torch.Tensor, n_tokens: int = 8,
                   pad_token_id: int | None = None) -> tuple[float, float]:
    """Median wall-clock and CPU milliseconds per generated token (greedy, KV cache on),
    the prompt's own forward pass left out."""
    if not isinstance(n_tokens, int) or n_tokens < 2:
        raise LabkitError(f"n_tokens={n_tokens!r} must be an integer >= 2")
    clock = _TokenClock()
    device = next(model.parameters()).device
    with torch.no_grad():
        model.generate(prompt_ids.to(device), max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                       do_sample=False, streamer=clock, pad_token_id=pad_token_id)
    # put #0 is the prompt, #1 the first token (prefill); intervals after that are decode steps
    wall, cpu = np.diff(clock.wall[1:]), np.diff(clock.cpu[1:])
    return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


@dataclass
class TradeoffBench:
    """Everything a measurement needs: the float model and what it is scored on.

    texts: held-out documents (perplexity, each document scored on its own); items: knowledge
    test questions (accuracy by log-likelihood); calib: token ids (n, seq_len) for GPTQ/AWQ;
    awq_samples: how many of those sequences AWQ uses (None: all; the AWQ paper finds 16
    enough where GPTQ wants 128 or more); latency_tokens: tokens generated to time decoding;
    cache: keep calibrated quantizations in the user's cache (labkit.quant.cache).
    """

    model: nn.Module
    tokenizer: object
    texts: Sequence[str]
    items: Sequence[dict]
    calib: torch.Tensor | None = None
    latency_tokens: int = 8
    damp: float = 0.01
    device: str = "cpu"
    keep_models: bool = False  # keep each quantized model in .models (key -> model)
    awq_samples: int | None = None
    cache: bool = False

    def __post_init__(self):
        self.models: dict[tuple, nn.Module] = {}

    def _calib_for(self, scheme: str):
        if scheme not in CALIBRATED:
            return None
        return self.calib[: self.awq_samples] if scheme == "awq" else self.calib

    @property
    def in_features(self) -> list[int]:
        return [in_features(m) for m in linear_layers(self.model).values()]

    def measure(self, scheme: str, bits: int = 4, group_size: int | None = None,
                progress: Callable[[float, str], None] | None = None) -> dict:
        """One row of the trade-off table, measured now on this device."""
        problem = combo_problem(scheme, bits, group_size, self.in_features, self.calib is not None)
        if problem:
            raise LabkitError(problem)
        scheme, bits, group_size = config_key(scheme, bits, group_size)
        report = progress or (lambda fraction, text: None)
        start = time.perf_counter()
        with _one_thread(self.device == "cpu"):
            report(0.0, "quantizing")
            if scheme == FP32:
                quantized = evaluated = self.model
            else:
                quantized = quantize_model(
                    self.model, scheme, bits, group_size,
                    self._calib_for(scheme), damp=self.damp, cache=self.cache,
                    progress=lambda k, n, name: report(0.4 * k / n, f"{scheme}: {name}"))
                # LLM.int8 rounds activations too: only the quantized model itself computes it
                evaluated = (quantized if scheme == "llm_int8"
                             else dequantized_copy(self.model, quantized))
            report(0.4, "perplexity")
            ppl = perplexity(evaluated, self.tokenizer, list(self.texts)).perplexity
            report(0.5, "knowledge test")
            scores = score_items(evaluated, self.tokenizer, list(self.items),
                                 progress=lambda i, n: report(0.5 + 0.4 * i / n, "knowledge test"))
            report(0.9, "latency")
            prompt = self.tokenizer(self.texts[0], return_tensors="pt")["input_ids"][:, :8]
            pad = self.tokenizer.pad_token_id  # GPT-2's tokenizer has none: eos, as generate()
            pad = self.tokenizer.eos_token_id if pad is None else pad
            wall_ms, cpu_ms = decode_latency(quantized, prompt, self.latency_tokens, pad)
        # the layers that get quantized (the tied embedding / lm_head stays in fp32)
        names = list(linear_layers(self.model))
        n_linear = sum(self.model.get_submodule(n).weight.numel() for n in names)
        linear_bytes = sum(stored_bytes(quantized.get_submodule(n)) for n in names)
        total = stored_bytes(quantized)
        if self.keep_models:
            self.models[(scheme, bits, group_size)] = quantized
        report(1.0, "done")
        return {
            "label": config_label(scheme, bits, group_size),
            "scheme": scheme,
            "bits": bits,
            "group_size": group_size,
            "stored_bytes": total,
            "size_mb": total / 1e6,
            "linear_bits": 8 * linear_bytes / n_linear,  # codes + scales (+ biases, if any)
            "perplexity": ppl,
            "knowledge_acc": float(scores["acc"].mean()),
            "ms_per_token": wall_ms,
            "cpu_ms_per_token": cpu_ms,
            "seconds": time.perf_counter() - start,
        }


def tradeoff_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows as a DataFrame with the trade-off columns, smallest model first."""
    df = pd.DataFrame(list(rows))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LabkitError(f"trade-off rows lack columns {missing}; each needs {COLUMNS}")
    return df[COLUMNS].sort_values(["size_mb", "perplexity"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Damage, token by token: the perplexity gap with its error bar, and the KL divergence


@torch.no_grad()
def quantization_damage(reference: nn.Module, models: Mapping[str, nn.Module], tokenizer,
                        texts: Sequence[str], batch_size: int = 8) -> dict[str, dict]:
    """For each model and each scored token of `texts`: its NLL (nats), the extra NLL over
    `reference` (its mean is the log of the perplexity ratio) and KL(reference || model) of the
    next-token distributions. {name: {"nll", "extra_nll", "kl": array}}, tokens in one order.

    Texts are scored as perplexity() scores them (a prefix token, then windows of the model's
    length), right-padded in batches: a causal model never looks right, so padding is exact.
    """
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise LabkitError("texts must be a non-empty list of non-empty strings")
    window, prefix = model_max_length(reference), prefix_token_id(tokenizer)
    pieces = []  # each window's stream slice: input piece[:-1] predicts piece[1:]
    for text in texts:
        stream = [prefix, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        pieces += [stream[b:e + 1] for b, e, _ in disjoint_windows(len(stream) - 1, window)]
    device = _device_of(reference)
    out = {name: {key: [None] * len(pieces) for key in ("nll", "extra_nll", "kl")}
           for name in models}
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))  # batches of equal lengths
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(pieces[i]) for i in batch) - 1
        inputs = torch.tensor([pieces[i][:-1] + [prefix] * (width + 1 - len(pieces[i]))
                               for i in batch], device=device)
        targets = [torch.tensor(pieces[i][1:], device=device)[:, None] for i in batch]
        ref = torch.log_softmax(reference(inputs).logits.float(), dim=-1)
        # the reference's side of every row, once for all models
        refs = [(ref[row, :len(t)], -ref[row, :len(t)].gather(1, t)[:, 0], ref[row, :len(t)].exp())
                for row, t in enumerate(targets)]
        for name, model in models.items():
            logits = model(inputs).logits
            for row, (i, target) in enumerate(zip(batch, targets)):
                r, r_nll, r_prob = refs[row]
                # row by row: a batch's log-probs for a 50k vocabulary would be hundreds of MB
                q = torch.log_softmax(logits[row, :len(target)].float(), dim=-1)
                nll = -q.gather(1, target)[:, 0]
                out[name]["nll"][i], out[name]["extra_nll"][i] = nll, nll - r_nll
                out[name]["kl"][i] = (r_prob * (r - q)).sum(-1)
    return {name: {k: torch.cat(v).double().cpu().numpy() for k, v in d.items()}
            for name, d in out.items()}


def gap_ratio(damage: Mapping[str, Mapping], better: str, baseline: str) -> dict:
    """better's perplexity gap (mean extra NLL) over baseline's, and the paired difference of
    the two with its standard error over tokens (the ratio's uncertainty, in nats)."""
    a, b = damage[better]["extra_nll"], damage[baseline]["extra_nll"]
    diff = a - b
    return {"ratio": a.mean() / b.mean(), "difference": diff.mean(),
            "difference_se": diff.std(ddof=1) / np.sqrt(len(diff)),
            "kl_ratio": damage[better]["kl"].mean() / damage[baseline]["kl"].mean()}


# ----------------------------------------------------------------------------------------------
# The trade-off explorer
