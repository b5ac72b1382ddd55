"""The Chinchilla calculator, headless: controls move the readout and the FigureWidget data in
place, a typed budget lands on labkit's compute-optimal split, bad input shows a message."""

from __future__ import annotations

import html
import math

import numpy as np
import pytest

from labkit.errors import LabkitError
from labkit.pretrain.scaling import CHINCHILLA, compute_optimal, training_flops
from widgets.scaling import D_RANGE, ChinchillaCalculator, budget_range, parse_budget


@pytest.fixture()
def calc():
    return ChinchillaCalculator()


def test_starts_at_chinchilla_with_the_paper_numbers(calc):
    for control in calc.controls:
        assert control.description
    for control in (calc.n_params, calc.n_tokens, calc.budget):
        assert "(" in control.description  # the unit: parameters, tokens, FLOPs
    s = calc.state()
    assert s["flops"] == pytest.approx(5.88e23, rel=1e-3)  # 6 * 70e9 * 1.4e12
    assert s["tokens_per_param"] == pytest.approx(20.0)
    # Hoffmann et al.'s law at 70B / 1.4T: 1.69 + 406.4/70e9^0.34 + 410.7/1.4e12^0.28
    assert s["loss"] == pytest.approx(1.9367, abs=1e-3)
    assert float(calc.budget.value) == pytest.approx(s["flops"], rel=1e-2)
    assert list(calc.point.x) == [pytest.approx(70e9)]
    assert "<b>20</b>" in calc.readout.value and "1.9366 nats/token" in calc.readout.value


def test_moving_n_updates_readout_and_figure_in_place(calc):
    figure_id, readout = id(calc.figure), calc.readout.value
    loss_before, curve_before = calc.point.y[0], np.asarray(calc.curve.y).copy()
    calc.n_params.value = 1e9
    s = calc.state()
    assert id(calc.figure) == figure_id and calc.figure.data[-1] is calc.point
    assert calc.readout.value != readout
    assert calc.point.x[0] == pytest.approx(1e9) and calc.point.y[0] != loss_before
    assert s["flops"] == pytest.approx(6 * 1e9 * 1.4e12)
    assert calc.point.y[0] == pytest.approx(CHINCHILLA.loss(1e9, 1.4e12))
    assert not np.allclose(curve_before, calc.curve.y)  # a new budget, a new isoFLOP curve
    # the optimum marker sits at the minimum of its own isoFLOP curve
    assert calc.optimum.y[0] == pytest.approx(np.min(calc.curve.y), abs=1e-3)
    assert float(calc.budget.value) == pytest.approx(s["flops"], rel=1e-2)


def test_typed_budget_goes_to_the_compute_optimal_split(calc):
    calc.budget.value = "1e21"
    n_opt, d_opt = compute_optimal(1e21)
    assert calc.n_params.value == pytest.approx(n_opt, rel=1e-9)
    assert calc.n_tokens.value == pytest.approx(d_opt, rel=1e-9)
    assert calc.state()["flops"] == pytest.approx(1e21, rel=1e-9)
    assert calc.point.y[0] == pytest.approx(calc.optimum.y[0])
    # approach 3's constants: about 26 tokens per parameter at 1e18, ~40 at 1e21 (not 20)
    calc.budget.value = "1e18"
    assert calc.state()["tokens_per_param"] == pytest.approx(26, abs=1.5)


def test_button_and_small_budgets_keep_the_point_in_view(calc):
    calc.n_params.value, calc.n_tokens.value = 1e6, 1e7  # far off every reference curve
    low, high = calc.figure.layout.yaxis.range
    assert low < CHINCHILLA.E and high >= calc.point.y[0] > 5.0
    calc.optimal_button.click()  # the star button: the optimum of the current C = 6e13
    n_opt, d_opt = compute_optimal(6e13)
    assert calc.n_params.value == pytest.approx(n_opt, rel=1e-2)  # C read back at 3 digits
    assert calc.n_tokens.value == pytest.approx(d_opt, rel=1e-2)
    assert calc.point.y[0] == pytest.approx(calc.optimum.y[0], abs=1e-6)


def test_hold_budget_walks_along_the_isoflop_curve(calc):
    calc.budget.value = "1e22"
    calc.hold_budget.value = True
    optimum = calc.optimum.y[0]
    for n in (1e8, 1e10, 1e11):
        calc.n_params.value = n
        s = calc.state()
        assert s["flops"] == pytest.approx(1e22, rel=1e-3)
        assert s["n_tokens"] == pytest.approx(1e22 / 6 / n, rel=1e-3)
        assert s["loss"] > optimum  # every other split of the same compute does worse
    calc.n_params.value = 1e5  # would need D = 1.7e16 tokens: beyond the slider
    assert "outside the slider" in calc.message.value
    assert calc.n_tokens.value == pytest.approx(10.0 ** D_RANGE[1])  # clamped to the slider's end


@pytest.mark.parametrize(("value", "words"), [("0", "C=0 is not allowed"),
                                               ("-5e20", "C=-5e20 is not allowed"),
                                               ("lots", "C='lots' is not a number"),
                                               ("inf", "C=inf is not allowed"),
                                               ("1e40", "C=1e+40 puts the optimal N")])
def test_bad_budget_shows_a_message_not_a_traceback(calc, value, words):
    before = (calc.n_params.value, calc.n_tokens.value, calc.point.y[0])
    calc.budget.value = value  # must not raise
    message = html.unescape(calc.message.value)
    assert words in message and "valid:" in message and "color:#b42318" in message
    assert (calc.n_params.value, calc.n_tokens.value, calc.point.y[0]) == before
    calc.budget.value = "1e20"  # and it recovers
    assert "color:#b42318" not in calc.message.value


def test_parse_budget_and_budget_range():
    assert parse_budget(" 5.76e23 ") == 5.76e23 and parse_budget(1e18) == 1e18
    with pytest.raises(LabkitError, match="C=-1 is not allowed"):
        parse_budget(-1)
    lo, hi = budget_range()
    for c, inside in ((lo * 1.01, True), (hi * 0.99, True), (lo * 0.5, False), (hi * 2, False)):
        n, d = compute_optimal(c)
        assert (1e5 <= n <= 1e13 and 1e6 <= d <= 1e15) is inside, (c, n, d)
    assert math.isclose(training_flops(*compute_optimal(lo)), lo, rel_tol=1e-9)
