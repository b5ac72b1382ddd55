"""Integer quantization of a weight tensor: absmax (symmetric) and zero-point (asymmetric).

A b-bit code can take 2**b values. Absmax maps the largest |w| of a slice to the largest
signed code, q = round(w / scale) with scale = max|w| / (2**(b-1) - 1), so zero stays exactly
zero and one level of the 2**b is unused. Zero-point spends all 2**b levels on [min, max]:
scale = (max - min) / (2**b - 1), zero = round(-min / scale), q = round(w / scale) + zero.
Either way a weight inside the range comes back within scale / 2 of where it was.

One scale can serve the whole tensor ("tensor"), one output channel, i.e. one row of an
nn.Linear weight ("channel"), or a group of `group_size` consecutive inputs within a row
("group"): the smaller the slice, the closer its scale fits its values, and the more scales
to store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validate
from ..errors import LabkitError

SCHEMES = ("absmax", "zeropoint")
GRANULARITIES = ("tensor", "channel", "group")
MIN_BITS, MAX_BITS = 2, 8


@dataclass
class QuantizedTensor:
    """Integer codes plus what it takes to turn them back into weights.

    codes: int8 (absmax, in [-qmax, qmax]) or uint8 (zeropoint, in [0, 2**bits - 1]), the
    shape of the weight. scales (and zeros, zeropoint only) have one entry per slice, shaped to
    broadcast against the weight viewed as (rows, n_groups, group_size).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    scheme: str
    granularity: str
    group_size: int | None
    shape: tuple[int, ...]

    def __post_init__(self):
        check_bits(self.bits), level_range(self.bits, self.scheme)
        for name in ("codes", "scales"):
            validate.tensor(getattr(self, name), name)

    def dequantize(self) -> torch.Tensor:
        return dequantize_codes(self.codes, self.scales, self.zeros)


def check_bits(bits, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        if name != "bits":
            raise LabkitError(f"{name}: bits={bits!r} is not supported; valid: an integer from 2 to 8")
        raise LabkitError(f"{name}={bits!r} is not supported; valid: an integer from 2 to 8")
    return bits


def check_finite(w: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """Quantization has no code for nan or inf: refuse them with the tensor's name."""
    if not torch.is_tensor(w) or not w.is_floating_point():
        raise LabkitError(f"{name} must be a floating-point torch tensor, got {type(w).__name__}")
    bad = ~torch.isfinite(w)
    if bad.any():
        raise LabkitError(
            f"{name} contains {int(bad.sum())} nan/inf values; quantization needs finite weights"
        )
    return w


def level_range(bits: int, scheme: str) -> tuple[int, int]:
    """The smallest and largest integer code of a scheme at `bits` bits."""
    if scheme == "absmax":
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    if scheme == "zeropoint":
        return 0, 2**bits - 1
    raise LabkitError(f"scheme={scheme!r} is not known; valid: {', '.join(SCHEMES)}")


def as_groups(w: torch.Tensor, granularity: str, group_size: int | None = None, name="weight"):
    """View w as (rows, n_groups, group_size): the slices that each get one scale."""
    if w.dim() == 1:
        w = w.unsqueeze(0)
    if w.dim() != 2:
        raise LabkitError(
            f"{name} must be 1-D or 2-D (a linear weight), got shape {tuple(w.shape)}"
        )
    rows, cols = w.shape
    if granularity == "tensor":
        return w.reshape(1, 1, rows * cols)
    if granularity == "channel":
        return w.reshape(rows, 1, cols)
    if granularity == "group":
        check_group_size(group_size, cols, name)
        return w.reshape(rows, cols // group_size, group_size)
    raise LabkitError(
        f"granularity={granularity!r} is not known; valid: {', '.join(GRANULARITIES)}"
    )


def check_group_size(group_size, cols: int, name: str = "weight") -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise LabkitError(f"group_size={group_size!r} must be a positive integer")
    if cols % group_size:
        divisors = [d for d in (8, 16, 32, 64, 128, 256) if cols % d == 0]
        raise LabkitError(
            f"group_size={group_size} does not divide the {cols} input columns of {name}; "
            f"valid group sizes here: {divisors or 'divisors of ' + str(cols)}"
        )
    return group_size


def scale_and_zero(groups: torch.Tensor, bits: int, scheme: str):
    """One scale (and zero) per slice, from the slice's extremes; `groups` is (..., size)."""
    lo, hi = level_range(bits, scheme)
    if scheme == "absmax":
        scale = groups.abs().amax(dim=-1, keepdim=True) / hi
        return scale, None
    # The range always includes 0, so that zero weights (and padding) stay exactly zero.
    wmin = groups.amin(dim=-1, keepdim=True).clamp(max=0)
    wmax = groups.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (wmax - wmin) / hi
    zero = torch.round(-wmin / safe(scale)).clamp(lo, hi)
    return scale, zero.to(torch.uint8)


def safe(scale: torch.Tensor) -> torch.Tensor:
    """A slice of zeros has scale 0: divide by 1 there instead (its codes are then all zero)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def round_to_codes(groups, scale, zero, bits: int, scheme: str) -> torch.Tensor:
    lo, hi = level_range(bits, scheme)
    q = torch.round(groups / safe(scale))
    if zero is not None:
        q = q + zero.float()
    q = q.clamp(lo, hi)
    return q.to(torch.int8 if scheme == "absmax" else torch.uint8)


def quantize(
    w: torch.Tensor,
    bits: int = 8,
    scheme: str = "absmax",
    granularity: str = "channel",
    group_size: int | None = None,
    name: str = "weight",
) -> QuantizedTensor:
    """Round-to-nearest quantization of a 1-D or 2-D weight; see the module docstring."""
    check_bits(bits)
    check_finite(w, name)
    level_range(bits, scheme)  # validates the scheme name
    w = w.detach().float()
    groups = as_groups(w, granularity, group_size, name)
    scale, zero = scale_and_zero(groups, bits, scheme)
    codes = round_to_codes(groups, scale, zero, bits, scheme).reshape(w.shape)
    return QuantizedTensor(
        codes=codes,
        scales=scale,
        zeros=zero,
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        group_size=groups.shape[-1] if granularity == "group" else None,
        shape=tuple(w.shape),
    )


def absmax_quantize(w, bits=8, granularity="channel", group_size=None, name="weight"):
    return quantize(w, bits, "absmax", granularity, group_size, name)


def zeropoint_quantize(w, bits=8, granularity="channel", group_size=None, name="weight"):
    return quantize(w, bits, "zeropoint", granularity, group_size, name)


def dequantize_codes(codes, scales, zeros=None) -> torch.Tensor:
    """w_hat = scale * q (absmax) or scale * (q - zero) (zeropoint), slice by slice."""
    q = codes.float().reshape(scales.shape[0], scales.shape[1], -1)
    if zeros is not None:
        q = q - zeros.float()
    return (q * scales).reshape(codes.shape)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    return validate.instance(qt, "qt", QuantizedTensor).dequantize()


def fake_quantize(
    w, bits=8, scheme="absmax", granularity="channel", group_size=None, name="weight"
):
    """Quantize then dequantize: the weight a quantized model actually computes with."""
    return quantize(w, bits, scheme, granularity, group_size, name).dequantize()


def quantization_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Relative RMS error ||w - w_hat|| / ||w|| (0 for an all-zero w reproduced exactly)."""
    norm = w.float().norm()
    diff = (w.float() - w_hat.float()).norm()
    return float(diff / norm) if norm > 0 else float(diff)


def reconstruction_errors(
    w: torch.Tensor,
    bits_list=(8, 6, 4, 3, 2),
    schemes=SCHEMES,
    granularities=("tensor", "channel", "group"),
    group_size: int = 64,
    name: str = "weight",
):
    """A table (pandas) of relative RMS error and max error for each scheme x granularity x bits."""
    import pandas as pd

    bits_list = [check_bits(b, "bits_list") for b in validate.items(bits_list, "bits_list")]
    schemes = [validate.one_of(s, "schemes", SCHEMES) for s in validate.items(schemes, "schemes")]
    granularities = [validate.one_of(g, "granularities", GRANULARITIES)
                     for g in validate.items(granularities, "granularities")]
    check_finite(w, name)
    if "group" in granularities:
        check_group_size(group_size, w.shape[-1], name)

    rows = []
    for scheme in schemes:
        for gran in granularities:
            for bits in bits_list:
                qt = quantize(w, bits, scheme, gran, group_size if gran == "group" else None, name)
                w_hat = qt.dequantize()
                rows.append(
                    {
                        "scheme": scheme,
                        "granularity": gran if gran != "group" else f"group {group_size}",
                        "bits": bits,
                        "rel_rms_error": quantization_error(w, w_hat),
                        "max_abs_error": float((w.float() - w_hat).abs().max()),
                        "n_scales": qt.scales.numel(),
                    }
                )
    return pd.DataFrame(rows)


# Packing: b-bit codes stored densely, 8 codes in b bytes, most significant bit first, so that
# two 4-bit codes share a byte the way bitsandbytes packs them (first code in the high nibble).


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (each < 2**bits) into a flat uint8 tensor of ceil(n * bits / 8) bytes."""
    check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise LabkitError(f"codes must lie in [0, {2**bits - 1}] to pack into {bits} bits")
    n = flat.numel()
    flat = torch.nn.functional.pad(flat, (0, (-n) % 8))
    shifts = torch.arange(bits - 1, -1, -1, device=flat.device)
    bitstream = ((flat.unsqueeze(-1) >> shifts) & 1).reshape(-1, 8)
    weights = 2 ** torch.arange(7, -1, -1, device=flat.device)
    packed = (bitstream * weights).sum(dim=-1).to(torch.uint8)
    return packed[: (n * bits + 7) // 8]


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of pack_bits: the first `numel` codes as int64."""
    if 8 % bits == 0:  # whole codes in each byte (2, 4 bits): shift them out, first code highest
        shifts = torch.arange(8 - bits, -1, -bits, dtype=torch.uint8, device=packed.device)
        codes = (packed.reshape(-1, 1).to(torch.uint8) >> shifts) & (2**bits - 1)
        return codes.reshape(-1)[:numel].to(torch.int64)
    # 3, 5, 6, 7 bits: codes straddle bytes; split every byte into its bits (in uint8, 8x less
    # memory than int64), then read `bits` of them at a time, most significant first
    byte = packed.reshape(-1).to(torch.uint8)
    byte = torch.nn.functional.pad(byte, (0, (-byte.numel()) % bits))
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=byte.device)
    bitstream = ((byte.unsqueeze(-1) >> shifts) & 1).reshape(-1, bits)[:numel]
    codes = bitstream[:, 0].to(torch.int64)
    for k in range(1, bits):
        codes = (codes << 1) | bitstream[:, k]
    return codes
