"""The beta widget, headless: the slider snaps to a trained beta and moves the figure's markers
and the readout in place; bad sweeps raise LabkitError."""

from __future__ import annotations

import pandas as pd
import pytest

from labkit.align import beta_sweep_figure
from labkit.errors import LabkitError
from widgets.dpo import BetaExplorer

SWEEP = pd.DataFrame({
    "beta": [0.5, 0.02, 0.1],  # unsorted on purpose
    "margin": [2.0, 0.3, 1.1],
    "kl": [0.004, 0.05, 0.02],
    "accuracy": [0.9, 0.7, 0.8],
    "chosen_shift": [-0.5, -3.0, -1.2],
    "rejected_shift": [-4.0, -10.0, -9.0],
})


@pytest.fixture()
def explorer():
    return BetaExplorer(SWEEP, beta=0.1)


def test_controls_are_labelled_with_units(explorer):
    for control in explorer.controls:
        assert control.description and "(" in control.description  # beta (unitless)
    figure = explorer.figure
    assert figure.layout.title.text
    for axis in ("xaxis", "xaxis2", "xaxis3", "yaxis", "yaxis2", "yaxis3"):
        assert figure.layout[axis].title.text, axis
    assert figure.layout.xaxis.type == "log"


def test_starts_at_the_requested_beta(explorer):
    assert list(explorer.markers[0].x) == [0.1]
    assert list(explorer.markers[1].y) == [0.02]  # KL at beta 0.1
    assert "accuracy 80%" in explorer.readout.value
    # the curves are the sweep, sorted by beta
    assert list(explorer.figure.data[0].x) == [0.02, 0.1, 0.5]
    assert list(explorer.figure.data[2].y) == [0.7, 0.8, 0.9]


def test_moving_beta_changes_the_figure_in_place(explorer):
    figure_id, title, readout = id(explorer.figure), explorer.figure.layout.title.text, \
        explorer.readout.value
    explorer.slider.value = 0.45  # snaps to the trained 0.5 (nearest on a log scale)
    assert id(explorer.figure) == figure_id
    assert list(explorer.markers[0].x) == [0.5]
    assert [m.y[0] for m in explorer.markers] == [2.0, 0.004, 0.9]
    assert explorer.figure.layout.title.text != title
    assert "beta = 0.5" in explorer.figure.layout.title.text
    assert explorer.readout.value != readout and "90%" in explorer.readout.value
    explorer.slider.value = 0.025
    assert list(explorer.markers[2].y) == [0.7]
    assert "chosen -3.00" in explorer.readout.value


def test_the_figure_function_marks_the_nearest_beta():
    fig = beta_sweep_figure(SWEEP, beta=0.3)  # log-distance: 0.5 is nearer than 0.1
    assert list(fig.data[3].x) == [0.5]


def test_bad_sweeps_are_rejected():
    with pytest.raises(LabkitError, match="empty"):
        BetaExplorer(SWEEP.iloc[:0])
    with pytest.raises(LabkitError, match="kl"):
        BetaExplorer(SWEEP.drop(columns="kl"))
