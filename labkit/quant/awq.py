"""AWQ: activation-aware weight quantization (Lin et al. 2024), the scale search.

A few input channels carry much larger activations than the rest; the weights that multiply
them matter most for the output. Instead of keeping them in high precision, AWQ scales those
input channels up before quantizing (W * s, with s > 1 where activations are large), which
gives them relatively finer levels, and divides the scale back out afterwards:

    y = W x = (W diag(s)) (diag(s)^-1 x)   ->   Q(W diag(s)) (x / s)

The scale comes from the activations alone: s = mean|x|^alpha per input channel, normalised so
that sqrt(max(s) * min(s)) = 1; alpha is searched on a grid of 20 points in [0, 1) for the
lowest output error ||W X - W_hat X|| on calibration data. alpha = 0 is plain round-to-nearest,
so the search can only improve on RTN on that data. Real AWQ folds 1/s into the operation
before the layer (an RMSNorm or the previous linear); here the quantized layer keeps s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LabkitError
from .gptq import (
    InputStats,
    check_model_inputs,
    in_features,
    linear_layers,
    linear_weight,
    output_error,
    quantized_from_state,
    quantized_state,
    sequential_quantize,
)
from .schemes import QuantizedTensor, check_bits, check_finite, check_group_size, quantize


@dataclass
class AWQResult:
    quantized: QuantizedTensor  # codes and scales of W * s
    input_scale: torch.Tensor  # s, one per input channel
    alpha: float
    weight: torch.Tensor  # the effective weight dequantize(W * s) / s
    errors: dict[float, float]  # output error for each alpha tried
    rtn_error: float  # alpha = 0


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^alpha, normalised so that sqrt(max(s) * min(s)) = 1."""
    s = mean_abs.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def awq_search(
    w: torch.Tensor,
    stats: InputStats,
    bits: int = 4,
    group_size: int | None = 128,
    scheme: str = "zeropoint",
    n_grid: int = 20,
    name: str = "weight",
) -> AWQResult:
    """Search alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid} for one linear weight."""
    check_bits(bits)
    check_finite(w, name)
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise LabkitError(f"n_grid={n_grid!r} must be a positive integer")
    if not isinstance(stats, InputStats):
        raise LabkitError(f"stats must be InputStats (from input_stats), got {type(stats).__name__}")
    W = w.detach().float()
    if stats.mean_abs.numel() != W.shape[1]:
        raise LabkitError(
            f"{name}: {W.shape[1]} input channels but statistics for {stats.mean_abs.numel()}"
        )
    granularity = "group" if group_size else "channel"
    if group_size:
        check_group_size(group_size, W.shape[1], name)
    H = stats.hessian

    best = None
    errors = {}
    for k in range(n_grid):
        alpha = k / n_grid
        s = awq_scales(stats.mean_abs, alpha)
        q = quantize(W * s, bits, scheme, granularity, group_size, name)
        w_hat = q.dequantize() / s
        errors[alpha] = output_error(W, w_hat, H)
        if best is None or errors[alpha] < errors[best[0]]:
            best = (alpha, s, q, w_hat)
    alpha, s, q, w_hat = best
    return AWQResult(q, s, alpha, w_hat, errors, errors[0.0])


def awq_quantize_model(
    model: nn.Module,
    calib,
    bits: int = 4,
    group_size: int | None = 128,
    scheme: str = "zeropoint",
    n_grid: int = 20,
    include_lm_head: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cache: bool = False,
) -> dict[str, AWQResult]:
    """AWQ over every linear layer in forward order (each layer sees quantized upstream layers).
    cache=True: as gptq_quantize_model (labkit.quant.cache)."""
    from .cache import cached_quantization
    check_model_inputs(model, calib, bits, scheme, batch_size)
    for name, layer in linear_layers(model, include_lm_head).items():
        if group_size:
            check_group_size(group_size, in_features(layer), name)
    results: dict[str, AWQResult] = {}

    def quantize_layer(name, layer, stats):
        w = linear_weight(layer).detach().cpu()
        res = awq_search(w, stats, bits, group_size, scheme, n_grid, name)
        results[name] = res
        return res.weight

    def compute():
        sequential_quantize(model, calib, quantize_layer, include_lm_head, batch_size, progress)
        return results

    settings = {"bits": bits, "group_size": group_size, "scheme": scheme, "n_grid": n_grid,
                "include_lm_head": include_lm_head, "batch_size": batch_size}
    return cached_quantization("awq", model, calib, settings, cache, compute, _result_state,
                               _result_from_state, include_lm_head, progress)


def _result_state(res: AWQResult) -> dict:
    return {"quantized": quantized_state(res.quantized), "input_scale": res.input_scale,
            "alpha": res.alpha, "errors": dict(res.errors), "rtn_error": res.rtn_error}


def _result_from_state(state: dict) -> AWQResult:
    q, s = quantized_from_state(state["quantized"]), state["input_scale"]
    # the same arithmetic as awq_search's w_hat: bit for bit
    return AWQResult(q, s, state["alpha"], q.dequantize() / s, state["errors"], state["rtn_error"])
