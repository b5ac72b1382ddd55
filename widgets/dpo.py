"""The beta widget (lab 08): slide DPO's beta and see margin, KL from the reference, accuracy.

Every beta on the slider's grid was trained and scored beforehand (`labkit.align.beta_sweep`,
short runs in the lab), so moving the slider only looks the result up: the figure's markers and
the readout move in place, with no training behind them.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from labkit.align.dpo import SWEEP_PANELS, beta_sweep_figure, nearest_beta, sweep_title
from labkit.errors import LabkitError

_STYLE = {"description_width": "150px"}


class BetaExplorer:
    """A log slider over the precomputed betas, a readout, and the sweep as a FigureWidget.

    `sweep` is the DataFrame of `beta_sweep` (columns beta, margin, kl, accuracy,
    chosen_shift, rejected_shift). The slider moves on a log scale and snaps to the nearest
    beta that was trained."""

    def __init__(self, sweep, beta: float | None = None):
        if sweep is None or len(sweep) == 0:
            raise LabkitError("sweep is empty; compute it with labkit.align.beta_sweep")
        missing = {"beta", "margin", "kl", "accuracy"} - set(sweep.columns)
        if missing:
            raise LabkitError(f"sweep lacks columns {sorted(missing)}; use the DataFrame that "
                              "labkit.align.beta_sweep returns")
        self.sweep = sweep.sort_values("beta").reset_index(drop=True)
        betas = list(self.sweep["beta"])
        lo, hi = math.log10(betas[0]), math.log10(betas[-1])
        start = betas[len(betas) // 2] if beta is None else float(nearest_beta(self.sweep,
                                                                                beta)["beta"])
        # A few key presses must reach the next trained beta (the slider snaps to them).
        gaps = np.diff(np.log10(betas))
        step = max(0.01, float(gaps.min()) / 4) if len(betas) > 1 else 0.01
        self.slider = W.FloatLogSlider(
            value=start, base=10, min=lo, max=hi if hi > lo else lo + 1, step=step,
            description="beta (unitless)", readout_format=".3g", continuous_update=True,
            style=_STYLE, layout=W.Layout(width="480px"))
        self.readout = W.HTML()
        self.controls = [self.slider]
        self.figure = go.FigureWidget(beta_sweep_figure(self.sweep, start))
        self.markers = self.figure.data[len(SWEEP_PANELS):]
        self.slider.observe(self.update, names="value")
        self.update()

    def selected(self):
        """The sweep row the slider points at (the nearest trained beta, log scale)."""
        return nearest_beta(self.sweep, self.slider.value)

    def update(self, change=None) -> None:
        row = self.selected()
        with self.figure.batch_update():
            for marker, (key, _) in zip(self.markers, SWEEP_PANELS):
                marker.x, marker.y = [row["beta"]], [row[key]]
            self.figure.layout.title.text = sweep_title(row)
        shift = ""
        if "chosen_shift" in row and "rejected_shift" in row:
            shift = (f"; held-out log-prob change vs reference: chosen "
                     f"{row['chosen_shift']:+.2f}, rejected {row['rejected_shift']:+.2f} nats")
        self.readout.value = html.escape(
            f"trained beta {row['beta']:g}: margin {row['margin']:.3g}, KL "
            f"{row['kl']:.3g} nats/token, accuracy {row['accuracy']:.0%}{shift}")

    def widget(self):
        return W.VBox([self.slider, self.readout, self.figure])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())


def beta_explorer(sweep, beta: float | None = None) -> BetaExplorer:
    """The beta widget over a precomputed `beta_sweep` table."""
    return BetaExplorer(sweep, beta)
