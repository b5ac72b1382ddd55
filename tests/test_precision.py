"""labkit.precision: the formats are torch's own, bits decode to what torch stores, shares match
their analytic values, 16-bit weights swallow small updates, GradScaler's history is recorded."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from labkit import LabkitError, profile
from labkit.precision import (
    FORMAT_NAMES,
    ScalerRecorder,
    check_format_on_device,
    decompose,
    decompose_table,
    format_table,
    format_zones,
    fp16_underflow_share_analytic,
    get_format,
    grad_scaler,
    grad_scaler_figure,
    range_figure,
    range_shares,
    range_shares_table,
    round_to_tf32,
    sample_values,
    ulp,
    underflow_share_analytic,
    value_from_bits,
    vanishing_update_demo,
    vanishing_update_figure,
)

STORAGE = [f for f in FORMAT_NAMES if f != "tf32"]
EXAMPLES = settings(max_examples=80, deadline=None)


def _same(a: float, b: float) -> bool:
    """Equal as stored numbers: nan == nan, and -0.0 differs from 0.0."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


def _torch_stores(value: float, name: str) -> float:
    f = get_format(name)
    src = torch.tensor([value], dtype=torch.float64)
    out = round_to_tf32(src.float()) if f.emulated else src.to(f.dtype)
    return float(out.double().item())


# -- the table -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STORAGE)
def test_table_equals_torch_finfo(name):
    f = get_format(name)
    info = torch.finfo(f.dtype)
    row = format_table().loc[name]
    assert row["bits"] == info.bits
    assert row["max"] == float(info.max)
    assert row["min normal"] == float(info.smallest_normal)
    assert row["eps"] == float(info.eps)
    assert row["min subnormal"] == float(info.smallest_normal) * float(info.eps)
    sign, exp, man = (int(b) for b in row["sign/exp/mantissa"].split("/"))
    assert sign + exp + man == info.bits and 2.0**-man == info.eps
    # the smallest subnormal survives a cast, half of it (a tie, to even) flushes to zero
    assert _torch_stores(f.min_subnormal, name) == f.min_subnormal
    assert _torch_stores(f.min_subnormal / 2, name) == 0.0


# the facts of REFERENCE.md's table, as a snapshot: a torch that disagreed would fail here
SNAPSHOT = {
    "fp32": ("1/8/23", 3.40282e38, 1.17549e-38, 1.4013e-45, 1.19209e-7),
    "tf32": ("1/8/10", 3.40e38, 1.18e-38, None, 9.77e-4),
    "fp16": ("1/5/10", 65504, 6.10352e-5, 5.96046e-8, 9.76562e-4),
    "bf16": ("1/8/7", 3.38953e38, 1.17549e-38, 9.18355e-41, 0.0078125),
    "fp8_e4m3fn": ("1/4/3", 448, 0.015625, 0.001953125, 0.125),
    "fp8_e5m2": ("1/5/2", 57344, 6.10352e-5, 1.52588e-5, 0.25),
}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_table_matches_reference_snapshot(name):
    layout, fmax, normal, sub, eps = SNAPSHOT[name]
    row = format_table().loc[name]
    assert row["sign/exp/mantissa"] == layout
    assert row["max"] == pytest.approx(fmax, rel=1e-3)
    assert row["min normal"] == pytest.approx(normal, rel=1e-2)
    assert row["eps"] == pytest.approx(eps, rel=1e-3)  # the reference rounds to 3-6 digits
    if sub is not None:
        assert row["min subnormal"] == pytest.approx(sub, rel=1e-4)


def test_tf32_is_fp32_range_with_ten_mantissa_bits():
    f = get_format("tf32")
    assert (f.bits, f.exponent_bits, f.mantissa_bits) == (19, 8, 10)
    assert f.max == (2 - 2**-10) * 2.0**127
    assert f.min_normal == torch.finfo(torch.float32).smallest_normal
    assert f.eps == 2**-10
    assert format_table().loc["tf32", "torch dtype"].startswith("float32")


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_overflow_behaviour_is_read_from_torch(name):
    f = get_format(name)
    big = _torch_stores(2 * f.max, name)
    expected = "inf" if math.isinf(big) else "nan" if math.isnan(big) else "saturates"
    assert f.overflow == expected
    d = decompose(4 * f.max, name)
    assert _same(d.stored, big)
    assert d.kind == {"inf": "inf", "nan": "nan", "saturates": "saturated"}[expected]
    assert d.note.startswith("overflow")


# -- bits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STORAGE)
def test_every_bit_pattern_decodes_like_torch(name):
    f = get_format(name)
    if f.bits == 32:  # a seeded sample of the 2^32 patterns
        gen = torch.Generator().manual_seed(0)
        patterns = torch.randint(-(2**31), 2**31, (20_000,), generator=gen, dtype=torch.int64)
        patterns = torch.cat([patterns, torch.tensor([0, 1, 0x7F7FFFFF, 0x7F800000, -(2**31)])])
        values = patterns.to(torch.int32).view(torch.float32).double().tolist()
        unsigned = [p & 0xFFFFFFFF for p in patterns.tolist()]
    else:
        unsigned = list(range(2**f.bits))
        view = torch.tensor(unsigned, dtype=torch.int64)
        if f.bits == 16:
            view = view.to(torch.int32).to(torch.int16)  # wraps to the signed pattern
        else:
            view = view.to(torch.uint8)
        values = view.view(f.dtype).double().tolist()
    e = f.exponent_bits
    for pattern, expected in zip(unsigned, values):
        text = format(pattern, f"0{f.bits}b")
        got = value_from_bits(text[0], text[1:1 + e], text[1 + e:], name)
        assert _same(got, expected), (name, text, got, expected)


EDGES = [0.0, -0.0, 1.0, -1.0, 1 / 3, 0.1, -2.5e-3, 1e-5, 6e-8, 1e-40, 1e-45, 65504.0,
         65519.0, 65520.0, 448.0, 464.0, 465.0, 57344.0, 61440.0, 3.4e38, 3.5e38, 1e300,
         math.inf, -math.inf, math.nan]


def _format_edges(name: str) -> list[float]:
    f = get_format(name)
    return [f.min_subnormal, -f.min_subnormal, f.min_subnormal / 2, 0.75 * f.min_subnormal,
            f.min_normal, f.min_normal * (1 - f.eps), f.max, -f.max, f.overflow_threshold,
            -f.overflow_threshold, f.overflow_threshold * (1 + 1e-6), 1 + f.eps / 2,
            1 + 1.5 * f.eps]


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_decompose_round_trips_edge_cases(name):
    f = get_format(name)
    for value in EDGES + _format_edges(name):
        d = decompose(value, name)
        assert _same(d.stored, _torch_stores(value, name)), (name, value, d)
        assert (len(d.sign), len(d.exponent), len(d.mantissa)) == (1, f.exponent_bits,
                                                                    f.mantissa_bits)
        assert _same(value_from_bits(d.sign, d.exponent, d.mantissa, name), d.stored)
        # the stored value stores as itself: decompose is a projection
        assert _same(decompose(d.stored, name).stored, d.stored)
        if math.isfinite(value) and math.isfinite(d.stored):
            assert d.abs_error == abs(d.stored - value)
        if d.kind == "subnormal":
            assert 0 < abs(d.stored) < f.min_normal
        if d.kind == "normal":
            assert f.min_normal <= abs(d.stored) <= f.max
        if d.kind == "zero":
            assert d.stored == 0


def test_decompose_classes():
    assert decompose(0.0, "fp16").kind == "zero" and decompose(-0.0, "fp16").sign == "1"
    assert decompose(1e-9, "fp16").note == "underflow: flushed to zero"
    assert decompose(1e-6, "fp16").kind == "subnormal"
    assert decompose(1e-6, "bf16").kind == "normal"
    assert decompose(7e4, "fp16").kind == "inf"  # fp16 overflows to inf
    assert decompose(math.nan, "bf16").kind == "nan"
    one = decompose(1.0, "fp16")
    assert (one.sign, one.exponent, one.mantissa, one.note) == ("0", "01111", "0000000000", "exact")
    third = decompose(1 / 3, "bf16")
    assert third.stored == 0.333984375 and third.rel_error == pytest.approx(0.001953125, rel=1e-6)


def _round_to_bits(x: float, mantissa_bits: int) -> float:
    """Round-to-nearest-even of a normal float to `mantissa_bits` fraction bits (pure Python)."""
    m, e = math.frexp(x)  # x = m * 2^e, 0.5 <= |m| < 1
    return math.ldexp(round(m * 2 ** (mantissa_bits + 1)), e - mantissa_bits - 1)


@EXAMPLES
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_tf32_rounding_is_round_to_nearest_even(x):
    f = get_format("tf32")
    assume(f.min_normal <= abs(x) < f.overflow_threshold)
    assert decompose(x, "tf32").stored == _round_to_bits(x, 10)


@EXAMPLES
@given(st.floats(min_value=6.2e-5, max_value=65000, allow_nan=False))
def test_the_same_oracle_agrees_with_torch_fp16(x):
    # validates _round_to_bits against a real cast: fp16 is 10 mantissa bits too
    x32 = float(torch.tensor(x, dtype=torch.float32))
    assert decompose(x32, "fp16").stored == _round_to_bits(x32, 10)


def test_round_to_tf32_keeps_inf_and_nan():
    x = torch.tensor([math.inf, -math.inf, math.nan, 3.4028234e38])
    y = round_to_tf32(x)
    assert y[0] == math.inf and y[1] == -math.inf and math.isnan(y[2]) and y[3] == math.inf


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_ulp(name):
    f = get_format(name)
    assert ulp(1.0, name) == f.eps
    assert ulp(0.0, name) == f.min_subnormal
    assert ulp(3.0, name) == 2 * f.eps


def test_decompose_table():
    table = decompose_table(1e-5)
    assert list(table.index) == list(FORMAT_NAMES)
    assert table.loc["fp8_e4m3fn", "kind"] == "zero" and table.loc["fp16", "kind"] == "subnormal"


# -- shares ------------------------------------------------------------------------------------------


def test_range_shares_counts():
    x = torch.tensor([0.0, 1e-9, 1e-6, 1.0, 1e5, math.inf, math.nan])
    s = range_shares(x, "fp16")
    assert s.count == 5  # finite values only
    assert (s.underflow, s.subnormal, s.overflow) == (0.2, 0.2, 0.2)
    assert s.rounded == 0.2  # 1e-6 changes, 1.0 does not
    assert s.rel_error_max == pytest.approx(abs(decompose(1e-6, "fp16").stored - 1e-6) / 1e-6,
                                            rel=1e-5)
    e4m3 = range_shares(x, "fp8_e4m3fn")
    assert e4m3.underflow == 0.4 and e4m3.overflow == 0.2  # counted whether it saturates or not
    assert range_shares(x, "fp32").rounded == 0.0


@pytest.mark.parametrize("sigma", [1e-7, 1e-6, 1e-5, 1e-4])
def test_fp16_underflow_share_matches_analytic(sigma):
    n = 1_000_000
    g = torch.randn(n, generator=torch.Generator().manual_seed(1234)) * sigma
    measured = range_shares(g, "fp16")
    analytic = fp16_underflow_share_analytic(sigma)
    for got, p in ((measured.underflow, analytic["flush_to_zero"]),
                   (measured.underflow + measured.subnormal, analytic["below_min_normal"])):
        tolerance = 5 * math.sqrt(p * (1 - p) / n) + 2e-6
        assert abs(got - p) <= tolerance, (sigma, got, p)


def test_analytic_shares_reference_values():
    a = fp16_underflow_share_analytic(1e-6)
    # erf(5.96e-8 / 2 / (1e-6 * sqrt 2)) and erf(6.10e-5 / (1e-6 sqrt 2)) = 1
    assert a["flush_to_zero"] == pytest.approx(0.023777, rel=1e-4)
    assert a["below_min_normal"] == pytest.approx(1.0)
    assert underflow_share_analytic(1e-6, "bf16")["flush_to_zero"] < 1e-30  # fp32 range
    with pytest.raises(LabkitError, match="sigma"):
        fp16_underflow_share_analytic(-1.0)


def test_sampled_shares_are_seeded_estimates():
    g = torch.randn(400_000, generator=torch.Generator().manual_seed(0)) * 1e-4
    full = range_shares(g, "fp16")
    a = range_shares_table(g, ["fp16", "bf16"], max_values=50_000, seed=3)
    b = range_shares_table(g, ["fp16", "bf16"], max_values=50_000, seed=3)
    assert a.equals(b) and a.loc["fp16", "count"] == 50_000
    assert a.loc["fp16", "subnormal"] == pytest.approx(full.subnormal, abs=0.01)
    assert sample_values(g, 10, seed=1).numel() == 10


def test_range_figure_and_zones():
    g = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 1e-6
    fig = range_figure(g, highlight="fp16", value=3e-8, name="gradients")
    assert fig.layout.title.text and "log10" in fig.layout.xaxis2.title.text
    assert "%" in fig.layout.yaxis.title.text
    assert len(fig.data) == 2 + 4  # histogram, value marker, four zones
    assert sum(fig.data[0].y) == pytest.approx(100.0)
    assert len(fig.layout.shapes) == 3
    zones = format_zones("fp16")
    assert zones["normal range"][0] == pytest.approx(math.log10(6.103515625e-05))
    assert zones["overflows"][0] == pytest.approx(math.log10(65520.0))


# -- master weights and loss scaling --------------------------------------------------------------


def test_small_updates_vanish_in_bf16_but_not_in_the_fp32_master():
    r = vanishing_update_demo(weight=1.0, update=1e-4, dtype="bf16", steps=100)
    assert r.ulp == 2**-7 and r.vanished
    assert set(r.low_precision) == {1.0}
    assert r.master[-1] == pytest.approx(1.01, rel=1e-5)
    first_move = next(i for i, w in enumerate(r.master_cast) if w != 1.0)
    assert 39 <= first_move <= 41  # the sum crosses half an ulp (0.0039) after ~40 updates
    assert r.master_cast[-1] == 1.0078125
    assert len(r.table()) == 101
    fig = vanishing_update_figure(r)
    assert fig.layout.title.text and "step" in fig.layout.xaxis.title.text


@EXAMPLES
@given(st.sampled_from(["fp16", "bf16"]), st.floats(1e-6, 2.0))
def test_update_vanishes_exactly_below_half_an_ulp(dtype, fraction_of_ulp):
    assume(abs(fraction_of_ulp - 0.5) > 0.02)  # the update itself is rounded to dtype
    step_ulp = get_format(dtype).eps  # at weight 1.0
    r = vanishing_update_demo(1.0, fraction_of_ulp * step_ulp, dtype, steps=1)
    assert r.vanished == (fraction_of_ulp < 0.5)


def test_vanishing_update_bad_input():
    with pytest.raises(LabkitError, match="tf32"):
        vanishing_update_demo(dtype="tf32")
    with pytest.raises(LabkitError, match="steps"):
        vanishing_update_demo(steps=0)


def test_scaler_recorder_backs_off_skips_and_grows():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-7)
    scaler = grad_scaler("cpu", init_scale=2.0**16, growth_interval=3)
    recorder = ScalerRecorder(scaler)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    before = []
    for _ in range(16):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            y = layer(x)
        # fp16 activation gradients of 200*y*scale overflow until the scale is down to ~32
        loss = 100 * y.float().pow(2).sum()
        scaler.scale(loss).backward()
        before.append(layer.weight.detach().clone())
        recorder.step(opt, loss)
    h = recorder.history()
    assert list(h.columns) == ["loss", "scale", "found_inf", "scale_after"]
    assert h["found_inf"].iloc[0] and h["scale"].iloc[0] == 2.0**16
    skipped, clean = h[h["found_inf"]], h[~h["found_inf"]]
    assert len(skipped) >= 10 and len(clean) >= 3
    assert h["scale"].min() == 32.0
    assert (skipped["scale_after"] == skipped["scale"] * 0.5).all()  # backoff_factor
    # the weights did not move on a skipped step, and did on a clean one
    weights = before + [layer.weight.detach().clone()]
    for step in h.index:
        moved = not torch.equal(weights[step], weights[step + 1])
        assert moved == (not h.loc[step, "found_inf"])
    # growth_interval=3 clean steps in a row double the scale
    growth = h[h["scale_after"] > h["scale"]]
    assert len(growth) >= 1 and (growth["scale_after"] == 2 * growth["scale"]).all()
    fig = grad_scaler_figure(h)
    assert "skipped" in fig.layout.title.text and "step" in fig.layout.xaxis.title.text


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_is_named():
    with pytest.raises(LabkitError, match=r"unknown format 'fp64'; valid: fp32, tf32"):
        get_format("fp64")
    with pytest.raises(LabkitError, match="not a number"):
        decompose("abc", "fp16")
    with pytest.raises(LabkitError, match="floating-point tensor"):
        range_shares(torch.arange(5), "fp16")
    with pytest.raises(LabkitError, match="bits"):
        value_from_bits("0", "0101", "000", "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(LabkitError, match="cuda"):
            check_format_on_device("fp16", "cuda")
        with pytest.raises(LabkitError, match="cuda"):
            grad_scaler("cuda")


def test_aliases():
    assert get_format("e4m3").name == "fp8_e4m3fn"
    assert get_format(torch.bfloat16).name == "bf16"
    assert get_format("float8_e5m2").name == "fp8_e5m2"
    assert get_format("half").name == "fp16"


def test_settings_for_both_profiles():
    for name in ("cpu", "gpu"):
        s = profile(name).settings("precision")
        assert 0 < fp16_underflow_share_analytic(s.grad_sigma)["flush_to_zero"] < 0.5
        half_ulp = get_format("bf16").eps / 2
        assert s.master_weight_update < half_ulp  # the demo must actually stall


def _tiny_lm_and_batch(vocab=512, seed=0):
    from labkit.models import ModelShape, build_causal_lm

    model = build_causal_lm(vocab, ModelShape(d_model=32, n_layer=1, n_head=2, max_len=32), seed=seed)
    ids = torch.randint(0, vocab, (4, 16), generator=torch.Generator().manual_seed(seed))
    return model, {"input_ids": ids, "labels": ids}


def test_fp16_gradient_storage_overflows_underflows_and_rounds_like_fp16():
    from labkit.precision.scaling import fp16_gradient_storage

    model, batch = _tiny_lm_and_batch()
    loss = model(**batch).loss
    loss.backward(retain_graph=True)
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with fp16_gradient_storage(model):
        loss.backward(retain_graph=True)
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32
        assert torch.equal(p.grad, reference[name].half().float()), name
    model.zero_grad(set_to_none=True)
    with fp16_gradient_storage(model):
        (loss * 2.0**30).backward(retain_graph=True)  # far past 65504 for most entries
    assert any(torch.isinf(p.grad).any() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    (loss * 2.0**30).backward()  # hooks removed on exit: fp32 holds these values
    assert not any(torch.isinf(p.grad).any() for p in model.parameters())


def test_fp16_gradient_storage_makes_grad_scaler_back_off_and_skip():
    from labkit.precision import ScalerRecorder, grad_scaler
    from labkit.precision.scaling import fp16_gradient_storage

    model, batch = _tiny_lm_and_batch(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    recorder = ScalerRecorder(grad_scaler("cpu", init_scale=2.0**40, growth_interval=1000))
    loss = model(**batch).loss
    with fp16_gradient_storage(model):
        recorder.scaler.scale(loss).backward()
    assert recorder.step(opt, loss) is True
    assert recorder.history()["scale_after"].iloc[-1] == 2.0**39


def test_fp16_gradient_storage_refuses_a_frozen_model():
    from labkit.precision.scaling import fp16_gradient_storage

    model, _ = _tiny_lm_and_batch()
    model.requires_grad_(False)
    with pytest.raises(LabkitError, match="no trainable parameters"):
        fp16_gradient_storage(model)


def test_saved_activation_bytes_counts_what_backward_keeps():
    from labkit.precision.measure import saved_activation_bytes

    model, batch = _tiny_lm_and_batch()
    fp32 = saved_activation_bytes(model, batch)
    bf16 = saved_activation_bytes(model, batch, "bf16")
    # at least the fp32 logits (4 x 16 x 512 x 4 bytes) are kept for the cross-entropy backward
    assert fp32 >= 4 * 16 * 512 * 4
    assert bf16 < fp32
    with torch.no_grad():
        assert saved_activation_bytes(model, batch) == 0  # nothing is saved without autograd
    with pytest.raises(LabkitError, match="not one of: bf16, fp16"):
        saved_activation_bytes(model, batch, "fp8")


class _ScaledLinearLoss(torch.nn.Module):
    """loss = factor * sum(w * x): the gradient of w is exactly factor * x, so a test chooses
    which gradient values fall below fp16's range."""

    def __init__(self, n=1000, factor=1e-7):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(n))
        self.factor = factor

    def forward(self, x, labels=None):
        from types import SimpleNamespace

        return SimpleNamespace(loss=self.factor * (self.w * x).sum())


def test_gradient_storage_counts_exactly_what_each_format_flushes():
    from labkit.precision import gradient_storage

    model = _ScaledLinearLoss(n=4, factor=1.0)
    x = torch.tensor([1e-9, 1e-6, 1.0, 0.0])  # below 2^-25, an fp16 subnormal, normal, zero
    for dtype, flushed in (("fp16", 1), ("bf16", 0)):
        model.zero_grad(set_to_none=True)
        with gradient_storage(model, dtype) as storage:
            model(x).loss.backward()
        assert (storage.flushed, storage.nonzero) == (flushed, 3)
        assert storage.flushed_share == pytest.approx(flushed / 3)
        assert torch.equal(model.w.grad, x.to(storage.format.dtype).float())
    with pytest.raises(LabkitError, match="fp16 or bf16"):
        gradient_storage(model, "fp8_e4m3fn")
    with pytest.raises(LabkitError, match="unknown format"):
        gradient_storage(model, "fp12")


def test_gradient_storage_runs_fp16_underflows_without_a_scaler_and_bf16_never():
    from labkit.precision import STORAGE_MODES, gradient_storage_runs

    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.rand(1000, generator=g)} for _ in range(3)]  # grads 0..1e-7
    runs = gradient_storage_runs(_ScaledLinearLoss(), batches, lr=1e-3)
    assert list(runs["mode"].unique()) == list(STORAGE_MODES) and len(runs) == 4 * 3
    flushed = runs.groupby("mode")["flushed_share"]
    # P(1e-7 * u < 2^-25) = 0.298 for u uniform on [0, 1): about 30% flush in fp16
    assert 0.2 < flushed.min()["fp16"] and flushed.max()["fp16"] < 0.4
    assert flushed.max()["bf16"] == 0 and flushed.max()["fp32"] == 0
    assert flushed.max()["fp16+scaler"] < 1e-3  # 65536 x 1e-7 u sits far above 2^-25
    first = runs[runs["step"] == 0]["loss"]
    assert first.nunique() == 1  # one starting model, one batch: the same first loss
    assert not runs["skipped"].any()
    with pytest.raises(LabkitError, match="unknown"):
        gradient_storage_runs(_ScaledLinearLoss(), batches, modes=["fp8"])
    with pytest.raises(LabkitError, match="non-empty list"):
        gradient_storage_runs(_ScaledLinearLoss(), [])


def test_bf16_slowdown_times_both_passes():
    from labkit.precision.measure import bf16_slowdown

    model, batch = _tiny_lm_and_batch()
    ratio = bf16_slowdown(model, batch)
    assert 0.05 < ratio < 100  # bf16 is 1-8x fp32 on CPUs; a ratio is what comes back
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradients behind


@given(steps=st.integers(1, 500), slowdown=st.floats(0.1, 100), budget=st.floats(0.5, 10),
       least=st.integers(1, 20), multiple=st.integers(1, 10))
def test_steps_within_fits_the_budget(steps, slowdown, budget, least, multiple):
    from labkit.precision.measure import steps_within

    n = steps_within(steps, slowdown, budget=budget, least=least, multiple=multiple)
    assert 1 <= n <= steps
    if slowdown <= budget:
        assert n == steps
    else:
        assert n == min(steps, least) or (n % multiple == 0 and n * slowdown <= steps * budget)


def test_lab_04_own_model_cell_runs_the_tested_code_only_when_asked():
    """The notebook's "Your own model" cell is labkit.yourmodel's (which
    tests/test_standard_models.py runs on a local GPT-2), guarded so that CI never runs it."""
    import textwrap
    from pathlib import Path

    import nbformat

    from labkit.yourmodel import cell

    path = Path(__file__).resolve().parents[1] / "labs" / "04_mixed_precision.ipynb"
    source = next(c.source for c in nbformat.read(path, as_version=4).cells
                  if c.get("id") == "own-model")
    assert source.startswith("RUN_OWN_MODEL = False")
    assert textwrap.indent(cell("04").code.rstrip("\n"), "    ") in source
    assert "\nif RUN_OWN_MODEL:\n" in source
