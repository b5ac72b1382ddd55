"""NF4 (QLoRA's 4-bit NormalFloat) with blockwise absmax and double quantization.

Weights of a trained network are roughly normal, so NF4 puts its 16 levels at quantiles of a
normal distribution (scaled to [-1, 1], with an exact zero) instead of evenly spaced. The tensor
is flattened and cut into blocks of `blocksize` values (64 by default); each block is divided
by its absmax and every value takes the index of the nearest level. Two 4-bit indices share a
byte, the first in the high nibble.

Double quantization (QLoRA section 3) shrinks the per-block absmax constants, 32 bits per 64
weights = 0.5 bit per weight, to 8 bits: subtract their mean, then quantize them in blocks of
256 with bitsandbytes' 8-bit dynamic code, keeping one fp32 absmax per 256 blocks. Cost: 8/64 +
32/(64*256) = 0.127 bit per weight.

Everything here reproduces bitsandbytes.functional.quantize_4bit / dequantize_4bit (quant_type
"nf4") bit for bit: the same levels, the same block order, the same rounding (values exactly
halfway between two levels go to the lower one), the same packing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LabkitError
from .schemes import check_finite

# QLoRA's NF4 levels (bitsandbytes create_normal_map(offset=0.9677083)), index 0..15.
NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)
NF4_ZERO_CODE = 7
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
ABSMAX_BLOCKSIZE = 256  # blocks of absmax constants in double quantization


@dataclass
class NF4Tensor:
    """What an NF4 weight stores: packed codes and block constants (plain or double-quantized)."""

    packed: torch.Tensor  # uint8, ceil(numel / 2) bytes: two 4-bit codes per byte
    absmax: torch.Tensor | None  # float32 per block (double_quant=False)
    absmax_codes: torch.Tensor | None  # uint8 per block (double_quant=True)
    absmax_scales: torch.Tensor | None  # float32 per 256 blocks (double_quant=True)
    absmax_offset: torch.Tensor | None  # float32 scalar: the mean subtracted before (ditto)
    shape: tuple[int, ...]
    blocksize: int

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    def block_absmax(self) -> torch.Tensor:
        """The per-block scales, decoded from their 8-bit codes when double-quantized."""
        if not self.double_quant:
            return self.absmax
        return (
            blockwise_dequantize(
                self.absmax_codes,
                self.absmax_scales,
                dynamic_map().to(self.absmax_codes.device),
                ABSMAX_BLOCKSIZE,
            )
            + self.absmax_offset
        )

    def dequantize(self) -> torch.Tensor:
        return nf4_dequantize(self)


def dynamic_map(max_exponent_bits: int = 7) -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (Dettmers 2016): 256 sorted values in [-1, 1].

    For each exponent e = 0..6 the positive values 10**(e-6) * (midpoints of 2**e + 1 evenly
    spaced points in [0.1, 1]) and their negatives, then 0 and 1: dense near zero, where small
    numbers need relative precision, sparse near 1.
    """
    values = []
    for e in range(max_exponent_bits):
        edges = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        values += (10 ** (e - (max_exponent_bits - 1)) * means).tolist()
        values += (-(10 ** (e - (max_exponent_bits - 1))) * means).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)


def check_blocksize(blocksize) -> int:
    if blocksize not in BLOCKSIZES:
        raise LabkitError(f"blocksize={blocksize!r} is not supported; valid: {BLOCKSIZES}")
    return blocksize


def split_blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(n,) -> (n_blocks, blocksize), the last block padded with zeros (which leave absmax alone)."""
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % blocksize)).reshape(-1, blocksize)


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted `levels`: count the midpoints below x (ties go down)."""
    midpoints = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(x, midpoints)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, first in the high nibble; an odd count is padded with 0.0's code."""
    codes = codes.reshape(-1).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_tensor([NF4_ZERO_CODE])])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    packed = packed.reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)
    return codes[:numel].long()


def nf4_codes(w: torch.Tensor, blocksize: int = 64, name: str = "weight"):
    """Unpacked NF4 codes (int64, w's shape) and fp32 absmax per block of the flattened w."""
    check_blocksize(blocksize)
    check_finite(w, name)
    blocks = split_blocks(w.detach().float().reshape(-1), blocksize)
    absmax = blocks.abs().amax(dim=1)
    # An all-zero block has absmax 0: scaling by 1/1e-38 keeps its values (and codes) at zero.
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-1, 1)
    codes = nearest_level(scaled, NF4_LEVELS.to(w.device)).reshape(-1)[: w.numel()]
    return codes.reshape(w.shape), absmax


def blockwise_quantize(values: torch.Tensor, code: torch.Tensor, blocksize: int, lut_size=65536):
    """8-bit blockwise absmax quantization with a sorted code book (used for the absmax constants).

    Each block is scaled by 1/absmax into [-1, 1] and each value takes the nearest code. With
    `lut_size` set we round the way bitsandbytes' CPU kernel does, for bit-for-bit equality: the
    scaled value first snaps to a grid of `lut_size` points on [-1, 1] and the grid point's nearest
    code is looked up in a table, which differs from exact nearest only for values within half a
    grid step (1.5e-5) of a midpoint. `lut_size=None` takes the exact nearest code.
    """
    blocks = split_blocks(values.float().reshape(-1), blocksize)
    code = code.to(blocks.device)
    absmax = blocks.abs().amax(dim=1)
    inverse = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    normed = (blocks * inverse.unsqueeze(1)).clamp(-1, 1)
    if lut_size is None:
        idx = nearest_level(normed, code)
    else:
        steps = torch.arange(lut_size, dtype=torch.float32, device=blocks.device)
        grid = -1.0 + (2.0 * steps) / (lut_size - 1)
        table = nearest_level(grid, code)
        idx = table[((normed + 1.0) * 0.5 * (lut_size - 1) + 0.5).long()]
    # bitsandbytes writes code 0 for an all-zero block; with absmax 0 any code decodes to 0.
    idx = torch.where(absmax.unsqueeze(1) > 0, idx, torch.zeros_like(idx))
    return idx.reshape(-1)[: values.numel()].to(torch.uint8), absmax


def blockwise_dequantize(codes, absmax, code, blocksize: int) -> torch.Tensor:
    values = split_blocks(code[codes.long()], blocksize) * absmax.unsqueeze(1)
    return values.reshape(-1)[: codes.numel()]


def nf4_quantize(
    w: torch.Tensor, blocksize: int = 64, double_quant: bool = False, name: str = "weight"
) -> NF4Tensor:
    """NF4-quantize a float tensor of any shape; see the module docstring."""
    codes, absmax = nf4_codes(w, blocksize, name)
    packed = pack_nibbles(codes)
    if not double_quant:
        return NF4Tensor(packed, absmax, None, None, None, tuple(w.shape), blocksize)
    offset = absmax.mean()
    # bitsandbytes rounds through its lookup table on CPU and to the exact nearest code on CUDA
    lut_size = 65536 if absmax.device.type == "cpu" else None
    absmax_codes, absmax_scales = blockwise_quantize(
        absmax - offset, dynamic_map(), ABSMAX_BLOCKSIZE, lut_size
    )
    return NF4Tensor(packed, None, absmax_codes, absmax_scales, offset, tuple(w.shape), blocksize)


def nf4_dequantize(t: NF4Tensor) -> torch.Tensor:
    """level[code] * absmax of the code's block, in fp32."""
    if not isinstance(t, NF4Tensor):
        raise LabkitError(f"t must be an NF4Tensor (from nf4_quantize), got {type(t).__name__}")
    numel = 1
    for d in t.shape:
        numel *= d
    levels = NF4_LEVELS.to(t.packed.device)[unpack_nibbles(t.packed, numel)]
    values = split_blocks(levels, t.blocksize) * t.block_absmax().unsqueeze(1)
    return values.reshape(-1)[:numel].reshape(t.shape)


def nf4_bits_per_weight(blocksize: int = 64, double_quant: bool = False) -> float:
    """4 bits of code plus the block constants' share (bitsandbytes' layout)."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * ABSMAX_BLOCKSIZE)
    return 4 + 32 / blocksize
