"""The schedule and precision explorers, headless: controls move the FigureWidget data in place,
bad input shows a message and raises nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit import profile
from labkit.precision import formats as precision_formats
from labkit.precision import fp16_underflow_share_analytic
from labkit.schedules import SCHEDULE_NAMES, make_schedule
from widgets.precision import PrecisionExplorer, parse_value
from widgets.schedules import ScheduleExplorer


def _trace(fig, name_part: str):
    return next(t for t in fig.data if name_part in t.name)


def _labelled(controls) -> None:
    for control in controls:
        assert control.description, control


# -- schedules -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schedule_explorer():
    return ScheduleExplorer(settings=profile("cpu").settings("schedules"),
                            schedules=("linear", "cosine", "wsd"))


def test_schedule_explorer_draws_the_labkit_curves(schedule_explorer):
    e = schedule_explorer
    _labelled(e.controls)
    for control in (e.total_steps, e.warmup_pct, e.peak_lr, e.min_lr_ratio, e.decay_pct):
        assert "(" in control.description  # the unit: updates, %, per update, x peak
    s = e.settings()
    cosine = _trace(e.figure, "cosine (to min")
    assert cosine.visible and not _trace(e.figure, "inverse").visible
    expected = make_schedule("cosine", total_steps=s["total_steps"],
                             warmup_steps=s["warmup_steps"], min_lr_ratio=s["min_lr_ratio"])
    steps = np.asarray(cosine.x)
    assert np.allclose(cosine.y, [s["peak_lr"] * expected(int(t)) for t in steps])


def test_schedule_controls_update_the_figure_in_place(schedule_explorer):
    e = schedule_explorer
    figure_id = id(e.figure)
    cosine = _trace(e.figure, "cosine (to min")
    before = np.asarray(cosine.y).copy()
    e.peak_lr.value = e.peak_lr.value * 2
    after = np.asarray(_trace(e.figure, "cosine (to min").y)
    assert id(e.figure) == figure_id
    assert np.allclose(after, 2 * before, rtol=1e-2)  # the slider snaps to its 0.05-decade grid

    wsd_before = np.asarray(_trace(e.figure, "WSD").y).copy()
    e.decay_type.value = "linear" if e.decay_type.value != "linear" else "cosine"
    assert not np.array_equal(wsd_before, np.asarray(_trace(e.figure, "WSD").y))

    e.total_steps.value = 500
    assert np.asarray(_trace(e.figure, "WSD").x)[-1] == 500
    e.schedules.value = ("constant", "inverse_sqrt")
    assert _trace(e.figure, "inverse").visible and not _trace(e.figure, "WSD").visible
    e.schedules.value = ("linear", "cosine", "wsd")


@pytest.mark.parametrize(
    ("control", "value", "words"),
    [("total_steps", 0, "at least 1"),
     ("warmup_pct", 95.0, "100%"),
     ("schedules", (), "no schedule")],
)
def test_schedule_bad_input_shows_a_message(schedule_explorer, control, value, words):
    e = schedule_explorer
    old = getattr(e, control).value
    shown = np.asarray(_trace(e.figure, "linear warmup").y).copy()
    getattr(e, control).value = value  # must not raise
    assert words in e.message.value and "#b42318" in e.message.value  # the error colour
    assert np.array_equal(shown, np.asarray(_trace(e.figure, "linear warmup").y))
    getattr(e, control).value = old
    assert "#1a7f37" in e.message.value


def test_train_panel_runs_caches_and_reports():
    calls, fractions = [], []

    def run_fn(settings, progress):
        calls.append(settings["schedule"])
        for i in range(4):
            progress(i / 4)
            fractions.append(i / 4)
        steps = list(range(settings["total_steps"]))
        return steps, [3.0 - settings["peak_lr"] * t for t in steps]

    e = ScheduleExplorer(settings=profile("cpu").settings("schedules"), run_fn=run_fn,
                         schedules=("cosine", "wsd"))
    assert not e.train_button.disabled and e.train_button.description
    assert e.train()
    assert sorted(calls) == ["cosine", "wsd"] and e.progress.value == 1.0
    loss = _trace(e.loss_figure, "WSD")
    assert loss.visible and len(loss.x) == e.total_steps.value
    assert e.train() and len(calls) == 2  # cached: no new runs
    assert "cache" in e.train_message.value
    e.peak_lr.value = e.peak_lr.value / 4  # a new setting: its runs are not cached yet
    assert not _trace(e.loss_figure, "WSD").visible
    assert e.train() and len(calls) == 4


def test_train_panel_survives_a_failing_run_and_a_missing_run_fn():
    def broken(settings):
        raise RuntimeError("loss is nan")

    e = ScheduleExplorer(settings=profile("cpu").settings("schedules"), run_fn=broken)
    assert e.train() is False and "loss is nan" in e.train_message.value
    plain = ScheduleExplorer(settings=profile("cpu").settings("schedules"))
    assert plain.train_button.disabled and plain.train() is False


def test_every_schedule_can_be_shown():
    e = ScheduleExplorer(settings=profile("cpu").settings("schedules"),
                         schedules=SCHEDULE_NAMES)
    assert all(t.visible for t in e.figure.data)
    assert all(len(t.y) == len(t.x) > 0 for t in e.figure.data)


# -- precision -------------------------------------------------------------------------------------


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "gradients": torch.randn(200_000, generator=gen) * 1e-6,
        "weights": torch.randn(50_000, generator=gen) * 0.02,
        "token ids": torch.arange(100),
    }


@pytest.fixture(scope="module")
def precision_explorer():
    return PrecisionExplorer(_tensors(), settings=profile("cpu").settings("precision"))


def test_precision_explorer_shows_bits_and_shares(precision_explorer):
    e = precision_explorer
    _labelled([e.value_text, e.magnitude, e.negative, e.tensor, e.highlight])
    assert "log scale" in e.magnitude.description
    for name in ("fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"):
        assert f"<td>{name}</td>" in e.bits_table.value
        assert f"<td>{name}</td>" in e.shares_table.value
    assert e.tensor.value == "gradients"
    assert float(np.sum(e.figure.data[0].y)) == pytest.approx(100.0)
    assert e.figure.layout.xaxis2.title.text and e.figure.layout.yaxis.title.text


def test_value_controls_update_in_place(precision_explorer):
    e = precision_explorer
    e.value_text.value = "-3e-8"
    assert e.negative.value and e.magnitude.value == pytest.approx(3e-8, rel=0.07)
    assert tuple(e.figure.data[1].x) == pytest.approx((math.log10(3e-8),) * 2)
    assert "underflow" in e.bits_table.value or "subnormal" in e.bits_table.value
    table = e.bits_table.value
    e.magnitude.value = 1e3
    assert parse_value(e.value_text.value) == pytest.approx(-1e3, rel=1e-3)
    assert e.bits_table.value != table and "saturated" in e.bits_table.value  # e4m3fn: 448


def test_tensor_choice_updates_histogram_and_shares(precision_explorer):
    e = precision_explorer
    e.tensor.value = "gradients"
    grads = np.asarray(e.figure.data[0].y).copy()
    # the shown fp16 flush-to-zero share agrees with the normal distribution's analytic share
    flush = 100 * fp16_underflow_share_analytic(1e-6)["flush_to_zero"]
    row = e.shares_table.value.split("<td>fp16</td><td>")[1]
    assert float(row.split("</td>")[0]) == pytest.approx(flush, abs=0.5)
    e.tensor.value = "weights"
    assert not np.array_equal(grads, np.asarray(e.figure.data[0].y))
    assert "weights" in e.figure.layout.title.text
    shapes = e.figure.layout.shapes
    e.highlight.value = "fp8_e4m3fn"
    assert e.figure.layout.shapes != shapes and "fp8_e4m3fn" in e.figure.layout.shapes[0].name


@pytest.mark.parametrize(("text", "words"), [("abc", "not a number"), ("1e-5x", "not a number"),
                                             ("nan", "nan")])
def test_bad_values_show_a_message(precision_explorer, text, words):
    e = precision_explorer
    e.value_text.value = "1.0"
    e.value_text.value = text  # must not raise
    assert words in e.message.value
    e.value_text.value = "0.5"
    assert e.message.value == ""


def test_bad_tensor_shows_a_message(precision_explorer):
    e = precision_explorer
    e.tensor.value = "token ids"
    assert "floating-point" in e.shares_table.value
    e.tensor.value = "gradients"
    assert "floating-point" not in e.shares_table.value


def test_a_device_without_cuda_or_a_format_shows_a_message(monkeypatch):
    if not torch.cuda.is_available():
        e = PrecisionExplorer(_tensors(), device="cuda",
                              settings=profile("cpu").settings("precision"))
        assert "cuda" in e.message.value and e.device == "cpu"
    # a device that cannot hold fp8: the probe says so, the explorer names it and goes on
    real = precision_formats._probe

    def no_fp8(name, device):
        return "no fp8 kernels" if name.startswith("fp8") else real(name, device)

    monkeypatch.setattr(precision_formats, "_probe", no_fp8)
    e = PrecisionExplorer(_tensors(), settings=profile("cpu").settings("precision"))
    assert "fp8_e4m3fn is not supported" in e.message.value
    assert "fp8" not in "".join(e.formats) and "<td>fp16</td>" in e.bits_table.value
    assert "fp8_e5m2</td>" not in e.bits_table.value
