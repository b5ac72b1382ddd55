"""LLM.int8(): int8 matrix multiplication with outlier decomposition (Dettmers et al. 2022).

Past ~6.7B parameters a few hidden dimensions carry activations 20x larger than the rest, in
almost every token. One absmax scale per token row would then flatten all other values to a
few levels. LLM.int8() splits the product X @ W^T by input column:

- outlier columns: any |x| >= threshold (6.0) in the column -> multiplied in floating point;
- every other column: X row-wise and W per output channel quantized to int8 by absmax,
  multiplied as integers (int32 accumulate), and scaled back by row_scale * col_scale / 127**2.

As in bitsandbytes' Linear8bitLt(has_fp16_weights=False), the weight is stored only as int8,
so the outlier columns multiply the input with the int8 weight dequantized (the paper keeps
those weight columns in fp16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LabkitError
from .schemes import check_finite

INT8_MAX = 127
DEFAULT_THRESHOLD = 6.0


@dataclass
class Int8Weight:
    """A linear weight as int8 codes with one absmax scale per output channel (row)."""

    codes: torch.Tensor  # int8 (out_features, in_features)
    scales: torch.Tensor  # float32 (out_features,): the row's max |w|

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * (self.scales.unsqueeze(1) / INT8_MAX)


def rowwise_absmax_int8(x: torch.Tensor):
    """int8 codes and the absmax of each row: q = round(127 * x / max|row|)."""
    scales = x.abs().amax(dim=1).float()
    # A row of zeros has scale 0: its codes are 0 whatever we divide by.
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(x.float() * (INT8_MAX / safe.unsqueeze(1))).clamp(-INT8_MAX, INT8_MAX)
    return codes.to(torch.int8), scales


def int8_quantize_weight(w: torch.Tensor, name: str = "weight") -> Int8Weight:
    """Per output channel absmax int8: each row of an nn.Linear weight gets its own scale."""
    check_finite(w, name)
    if w.dim() != 2:
        raise LabkitError(f"{name} must be a 2-D linear weight, got shape {tuple(w.shape)}")
    codes, scales = rowwise_absmax_int8(w.detach())
    return Int8Weight(codes, scales)


def _threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0 \
            or threshold == float("inf"):
        raise LabkitError(f"threshold={threshold!r} must be a finite number >= 0 (0 turns outlier "
                          "handling off)")
    return threshold


def outlier_columns(x: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Indices of the input columns (hidden dimensions) where any |x| >= threshold."""
    check_finite(x, "x"), _threshold(threshold)
    if threshold <= 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    return torch.nonzero((x.abs() >= threshold).any(dim=0)).flatten()


def llm_int8_matmul(
    x: torch.Tensor,
    weight: Int8Weight,
    bias: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """y = x @ W^T (+ bias) the LLM.int8() way; x is (..., in_features)."""
    _threshold(threshold)
    check_finite(x, "input")
    if not isinstance(weight, Int8Weight):
        raise LabkitError(f"weight must be an Int8Weight (from int8_quantize_weight), got {type(weight).__name__}")
    if x.shape[-1] != weight.codes.shape[1]:
        raise LabkitError(f"x has {x.shape[-1]} features but the weight expects {weight.codes.shape[1]}")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    outliers = outlier_columns(x2, threshold)

    # The regular part: outlier columns zeroed, then int8 x int8 products summed exactly (a
    # kernel accumulates in int32; float64 holds these integer sums exactly on any device).
    regular = x2.clone()
    regular[:, outliers] = 0
    x_codes, x_scales = rowwise_absmax_int8(regular)
    acc = (x_codes.double() @ weight.codes.double().t()).float()
    y = acc * (x_scales.unsqueeze(1) * weight.scales.unsqueeze(0)) / INT8_MAX**2

    # The outlier part, in floating point.
    if outliers.numel():
        w_outlier = weight.codes[:, outliers].float() * (weight.scales.unsqueeze(1) / INT8_MAX)
        y = y + x2[:, outliers] @ w_outlier.t()
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*shape[:-1], weight.codes.shape[0]).to(x.dtype)


def outlier_fraction(x: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of input columns handled in floating point (LLM.int8 reports ~0.1% at 6.7B+)."""
    x2 = x.reshape(-1, x.shape[-1])
    return outlier_columns(x2, threshold).numel() / x2.shape[1]
