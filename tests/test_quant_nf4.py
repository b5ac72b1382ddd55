"""labkit's NF4 against bitsandbytes.functional.quantize_4bit / dequantize_4bit, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import LabkitError
from labkit.quant import nf4
from labkit.quant.nf4 import NF4_LEVELS, nf4_bits_per_weight, nf4_dequantize, nf4_quantize

F = pytest.importorskip("bitsandbytes.functional")
default_ops = pytest.importorskip("bitsandbytes.backends.default.ops")

REFERENCE_LEVELS = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


def bnb_quantize(w, blocksize=64, double_quant=False):
    return F.quantize_4bit(
        w, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant
    )


def bnb_reference_dequantize(packed, state):
    """bitsandbytes' pure-PyTorch dequantize_4bit (the default backend), uncompiled."""
    absmax = state.absmax
    if state.nested:
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = F.get_4bit_type("nf4", device="cpu")
    compute = default_ops._dequantize_4bit_compute.__wrapped__
    return compute(packed.reshape(-1), absmax, code, state.blocksize, state.shape, torch.float32)


def assert_same_as_bnb(w, blocksize=64, double_quant=False, check_cpu_kernel=True):
    packed, state = bnb_quantize(w, blocksize, double_quant)
    t = nf4_quantize(w, blocksize, double_quant)
    assert torch.equal(t.packed, packed.reshape(-1)), "packed bytes differ"
    if double_quant:
        assert torch.equal(t.absmax_codes, state.absmax)
        assert torch.equal(t.absmax_scales, state.state2.absmax)
        assert torch.equal(t.absmax_offset, state.offset)
    else:
        assert torch.equal(t.absmax, state.absmax)
    ours = nf4_dequantize(t)
    assert ours.shape == w.shape
    assert torch.equal(ours, bnb_reference_dequantize(packed, state).reshape(w.shape))
    # bnb's native CPU kernel; odd row lengths fall back to the reference kernel checked above
    # (which bnb wraps in torch.compile: recompiling per shape would cost seconds per call)
    if check_cpu_kernel and w.shape[-1] % 2 == 0:
        assert torch.equal(ours, F.dequantize_4bit(packed, state).reshape(w.shape))
    return t


def test_levels_are_bitsandbytes_and_reference():
    assert torch.equal(NF4_LEVELS, F.get_4bit_type("nf4", device="cpu"))
    assert NF4_LEVELS.tolist() == REFERENCE_LEVELS


def test_dynamic_map_is_bitsandbytes():
    assert torch.equal(nf4.dynamic_map(), F.create_dynamic_map())


SHAPES = [(64, 64), (128,), (130,), (3, 65), (33, 129), (5, 7, 64), (300, 300), (4096,)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("double_quant", [False, True])
def test_bit_for_bit_equal_to_bitsandbytes(shape, double_quant):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(*shape, generator=g) * 0.05
    assert_same_as_bnb(w, 64, double_quant)


@pytest.mark.parametrize("blocksize", [32, 128, 256])
def test_other_blocksizes(blocksize):
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(blocksize))
    assert_same_as_bnb(w.reshape(-1), blocksize, double_quant=True)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3000),
    scale=st.floats(1e-4, 1e3),
    blocksize=st.sampled_from([32, 64, 128]),
    double_quant=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_random_1d_tensors_bit_for_bit(n, scale, blocksize, double_quant, seed):
    # 1-D (and odd lengths, not multiples of the blocksize) go through bnb's correct kernels
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale
    assert_same_as_bnb(w, blocksize, double_quant)


@pytest.mark.parametrize("shape", [(7, 96), (256, 352)], ids=str)
def test_rows_not_multiple_of_blocksize(shape):
    """Codes and absmax equal bnb; dequantized values equal bnb's PyTorch reference kernel.

    bitsandbytes 0.50.2's native CPU dequantize_4bit reads block index row + col // blocksize
    when a row's length is even and not a multiple of the blocksize, so it disagrees with its
    own quantize_4bit (and its reference kernel) on these shapes on some CPUs; see the probe
    test below.
    """
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert_same_as_bnb(w, 64, double_quant=True, check_cpu_kernel=False)


def test_probe_of_bnb_cpu_dequantize_4bit_matches_this_machine(monkeypatch):
    """The probe says what the kernel does here (wrong on some CPUs, right on others), and the
    override forces either answer for tests of the code that depends on it."""
    from labkit import env

    monkeypatch.delenv(env.BNB_CPU_4BIT_OVERRIDE, raising=False)
    w = torch.randn(7, 96, generator=torch.Generator().manual_seed(0))
    packed, state = bnb_quantize(w)
    native = F.dequantize_4bit(packed, state)
    reference = bnb_reference_dequantize(packed, state).reshape(w.shape)
    assert env.bnb_cpu_4bit_kernel_ok() is torch.equal(native, reference)
    if not torch.equal(native, reference):  # the bug, where it shows: a wrong block's scale
        assert (native - w).abs().max() > 3 * (reference - w).abs().max()
    for forced, answer in (("ok", True), ("wrong", False), ("OK ", True)):
        monkeypatch.setenv(env.BNB_CPU_4BIT_OVERRIDE, forced)
        assert env.bnb_cpu_4bit_kernel_ok() is answer
    monkeypatch.setenv(env.BNB_CPU_4BIT_OVERRIDE, "maybe")  # not an answer: probe again
    assert env.bnb_cpu_4bit_kernel_ok() is torch.equal(native, reference)


def test_error_within_half_the_widest_level_gap():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    t = nf4_quantize(w)
    err = (t.dequantize() - w).abs().reshape(-1, 64)
    half_gap = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2  # 0.1519, between -1 and -0.696
    assert (err <= t.absmax.unsqueeze(1) * half_gap * (1 + 1e-6)).all()
    # NF4 of normal weights beats 4-bit absmax with the same blocks (levels where weights are)
    absmax4 = torch.round(w.reshape(-1, 64) / t.absmax.unsqueeze(1) * 7) / 7
    e_absmax = (absmax4 * t.absmax.unsqueeze(1) - w.reshape(-1, 64)).norm()
    assert (t.dequantize() - w).norm() < 0.95 * e_absmax


def test_stored_bits_per_weight():
    w = torch.randn(256, 256)
    plain, dq = nf4_quantize(w), nf4_quantize(w, double_quant=True)
    nbytes = lambda *ts: sum(x.numel() * x.element_size() for x in ts)  # noqa: E731
    assert nbytes(plain.packed, plain.absmax) * 8 / w.numel() == nf4_bits_per_weight(64) == 4.5
    measured = nbytes(dq.packed, dq.absmax_codes, dq.absmax_scales, dq.absmax_offset)
    assert measured * 8 / w.numel() == pytest.approx(nf4_bits_per_weight(64, True) + 32 / 65536)
    assert nf4_bits_per_weight(64, True) == pytest.approx(4.127, abs=1e-3)


@pytest.mark.parametrize("double_quant", [False, True])
def test_zero_and_constant_tensors(double_quant):
    for w in (torch.zeros(4, 64), torch.full((4, 64), 0.5)):
        t = assert_same_as_bnb(w, 64, double_quant)
        assert torch.equal(t.dequantize(), w)


def test_bad_input():
    w = torch.randn(8, 64)
    w[3, 3] = math.nan
    with pytest.raises(LabkitError, match="mlp.up_proj.*nan"):
        nf4_quantize(w, name="mlp.up_proj")
    with pytest.raises(LabkitError, match="blocksize=48"):
        nf4_quantize(torch.randn(8, 64), blocksize=48)
