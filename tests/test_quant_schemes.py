"""Absmax / zero-point quantization: error bounds, reference values, torch cross-check, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import LabkitError
from labkit.quant import schemes
from labkit.quant.schemes import (
    absmax_quantize,
    fake_quantize,
    pack_bits,
    quantize,
    reconstruction_errors,
    unpack_bits,
    zeropoint_quantize,
)


def random_weight(rows, cols, seed, kind):
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        w = torch.randn(rows, cols, generator=g)
    elif kind == "uniform_positive":  # all weights on one side of zero
        w = torch.rand(rows, cols, generator=g) + 0.5
    elif kind == "heavy":  # a few huge values, as in real LLM weights
        w = torch.randn(rows, cols, generator=g) / torch.rand(rows, cols, generator=g).clamp(0.01)
    else:  # "sparse": exact zeros, incl. whole zero rows
        w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) > 0.7)
        w[0] = 0
    row_scale = torch.logspace(-3, 1, rows).unsqueeze(1)  # channels of very different ranges
    return w * row_scale


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 9),
    n_groups=st.integers(1, 4),
    group=st.sampled_from([1, 2, 8, 16, 32]),
    bits=st.integers(2, 8),
    scheme=st.sampled_from(["absmax", "zeropoint"]),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    kind=st.sampled_from(["normal", "uniform_positive", "heavy", "sparse"]),
    seed=st.integers(0, 2**16),
)
def test_error_at_most_half_a_step(rows, n_groups, group, bits, scheme, granularity, kind, seed):
    w = random_weight(rows, n_groups * group, seed, kind)
    gs = group if granularity == "group" else None
    q = quantize(w, bits, scheme, granularity, gs)
    lo, hi = schemes.level_range(bits, scheme)
    assert q.codes.shape == w.shape
    assert int(q.codes.min()) >= lo and int(q.codes.max()) <= hi
    w_hat = q.dequantize()
    assert torch.isfinite(w_hat).all()
    # every element within scale/2 of where it was (scale of its own slice)
    slices = schemes.as_groups(w, granularity, gs)
    err = (slices - schemes.as_groups(w_hat, granularity, gs)).abs()
    bound = q.scales / 2
    assert (err <= bound * (1 + 1e-5) + 1e-30).all()
    # zeros stay exactly zero in both schemes
    assert (w_hat[w == 0] == 0).all()


def test_absmax_reference_values():
    q = absmax_quantize(torch.tensor([0.5, -1.0, 0.25, 0.0]), bits=8, granularity="tensor")
    # q = round(127 x / max|x|): 63.5 -> 64 (half to even), 31.75 -> 32
    assert q.codes.tolist() == [64, -127, 32, 0]
    assert q.scales.item() == pytest.approx(1 / 127)
    q4 = absmax_quantize(torch.tensor([0.6, -1.0, 0.2, 0.0]), bits=4, granularity="tensor")
    assert q4.codes.tolist() == [4, -7, 1, 0]  # 4.2 -> 4, 1.4 -> 1
    assert q4.dequantize().tolist() == pytest.approx([4 / 7, -1.0, 1 / 7, 0.0])


def test_zeropoint_reference_values():
    q = zeropoint_quantize(torch.tensor([-0.6, 0.0, 0.5, 1.0]), bits=8, granularity="tensor")
    # scale = (max - min) / 255 = 1.6 / 255; zero = round(0.6 / scale) = round(95.625) = 96
    assert q.scales.item() == pytest.approx(1.6 / 255)
    assert q.zeros.item() == 96
    # codes = round(x / scale) + zero: -95.625 -> 0, 0 -> 96, 79.6875 -> 176, 159.375 -> 255
    assert q.codes.tolist() == [0, 96, 176, 255]
    assert q.dequantize()[1].item() == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_equals_torch_fake_quantize(bits, scheme, granularity):
    """The same quantizer as torch.fake_quantize_per_channel_affine given our scales/zeros."""
    w = random_weight(16, 64, seed=bits, kind="normal")
    gs = 16 if granularity == "group" else None
    q = quantize(w, bits, scheme, granularity, gs)
    slices = schemes.as_groups(w, granularity, gs).reshape(-1, gs or 64)
    lo, hi = schemes.level_range(bits, scheme)
    zeros = q.zeros.reshape(-1).int() if q.zeros is not None else torch.zeros(len(slices)).int()
    ref = torch.fake_quantize_per_channel_affine(slices, q.scales.reshape(-1), zeros, 0, lo, hi)
    assert torch.equal(ref.reshape(w.shape), q.dequantize())


def test_smaller_slices_and_more_bits_reduce_error():
    w = random_weight(32, 128, seed=0, kind="normal")
    table = reconstruction_errors(w, bits_list=(8, 6, 4, 3, 2), group_size=32)
    for (_, _), part in table.groupby(["scheme", "granularity"]):
        errs = part.sort_values("bits").rel_rms_error.tolist()
        assert errs == sorted(errs, reverse=True)  # more bits, less error
    for scheme in ("absmax", "zeropoint"):
        at4 = table[(table.scheme == scheme) & (table.bits == 4)].set_index("granularity")
        err = at4.rel_rms_error
        assert err["group 32"] < err["channel"] < err["tensor"]
    # 8-bit per-channel absmax of normal weights: about 1/(127 sqrt(12)) of the row max, ~0.7%
    e8 = table[(table.scheme == "absmax") & (table.granularity == "channel") & (table.bits == 8)]
    assert 0.003 < e8.rel_rms_error.item() < 0.012


def test_zeropoint_beats_absmax_on_one_sided_weights():
    w = random_weight(8, 64, seed=1, kind="uniform_positive")
    e_abs = (w - fake_quantize(w, 4, "absmax")).norm()
    e_zp = (w - fake_quantize(w, 4, "zeropoint")).norm()
    assert e_zp < 0.6 * e_abs  # absmax wastes the negative half of its levels


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_all_zero_weight_is_defined(scheme):
    q = quantize(torch.zeros(4, 8), 4, scheme, "group", 4)
    assert torch.equal(q.dequantize(), torch.zeros(4, 8))
    assert (q.scales == 0).all()


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0, True, "4", None])
def test_bits_outside_2_to_8_raise(bits):
    with pytest.raises(LabkitError, match="bits="):
        quantize(torch.randn(4, 8), bits)


def test_nan_and_inf_raise_naming_the_tensor():
    w = torch.randn(4, 8)
    w[1, 2] = math.nan
    with pytest.raises(LabkitError, match="layers.0.q_proj.*nan"):
        quantize(w, 4, name="layers.0.q_proj")
    w[1, 2] = math.inf
    with pytest.raises(LabkitError, match="q_proj"):
        quantize(w, 4, name="q_proj")


def test_bad_group_and_names_raise():
    with pytest.raises(LabkitError, match="group_size=48 does not divide the 64"):
        quantize(torch.randn(4, 64), 4, "absmax", "group", 48)
    with pytest.raises(LabkitError, match="group_size"):
        quantize(torch.randn(4, 64), 4, "absmax", "group", None)
    with pytest.raises(LabkitError, match="scheme="):
        quantize(torch.randn(4, 64), 4, "symmetric")
    with pytest.raises(LabkitError, match="granularity="):
        quantize(torch.randn(4, 64), 4, "absmax", "row")
    with pytest.raises(LabkitError, match="1-D or 2-D"):
        quantize(torch.randn(2, 4, 64), 4)
    with pytest.raises(LabkitError, match="floating-point"):
        quantize(torch.ones(4, 8, dtype=torch.int64), 4)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), n=st.integers(0, 300), seed=st.integers(0, 1000))
def test_pack_unpack_roundtrip(bits, n, seed):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(n * bits / 8)  # really `bits` bits per code
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_4bit_packing_is_high_nibble_first():
    assert pack_bits(torch.tensor([1, 2, 3]), 4).tolist() == [0x12, 0x30]
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b01101100]
    # codes that straddle bytes (3 bits): 001 010 011 -> 00101001 1(0000000)
    assert pack_bits(torch.tensor([1, 2, 3]), 3).tolist() == [0b00101001, 0b10000000]
    assert unpack_bits(torch.tensor([0b00101001, 0b10000000], dtype=torch.uint8), 3, 3).tolist() \
        == [1, 2, 3]
    assert unpack_bits(torch.tensor([0x12, 0x30], dtype=torch.uint8), 4, 3).tolist() == [1, 2, 3]
    with pytest.raises(LabkitError, match="codes must lie"):
        pack_bits(torch.tensor([16]), 4)
