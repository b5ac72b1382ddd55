"""Schedule explorer: pick schedules and their knobs, watch the LR curves move; train on demand.

The curves come from labkit.schedules (the same functions a lab trains with, equal to
transformers' schedulers). A second panel trains with the chosen settings through a caller's
`run_fn(settings) -> (steps, losses)`; results are cached per setting, so going back to a
setting shows its run again at once.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable, Sequence
from functools import cached_property

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from labkit.errors import LabkitError
from labkit.schedules import (
    SCHEDULE_LABELS,
    SCHEDULE_NAMES,
    SHAPES,
    curve_steps,
    fraction_to_steps,
    make_schedule,
)

_STYLE = {"description_width": "200px"}  # "min LR (x peak; cosine, WSD)" is 192 px
_LAYOUT = W.Layout(width="460px")
COLOURS = dict(zip(SCHEDULE_NAMES, ("#7f7f7f", "#1f77b4", "#d62728", "#9467bd", "#2ca02c",
                                    "#ff7f0e", "#8c564b")))


def _message(kind: str, text: str) -> str:
    colour = {"error": "#b42318", "info": "#475467", "ok": "#1a7f37"}[kind]
    return f'<span style="color:{colour}">{html.escape(text)}</span>'


class ScheduleExplorer:
    """Controls -> labkit.schedules -> an LR FigureWidget, updated in place; optional train panel.

    `run_fn(settings)` or `run_fn(settings, progress)` trains one run with `settings` (a dict:
    schedule, total_steps, warmup_steps, peak_lr, min_lr_ratio, decay_steps, decay_type,
    num_cycles) and returns (steps, losses); `progress(fraction)` moves the progress bar.
    """

    def __init__(self, *, settings=None, run_fn: Callable | None = None,
                 schedules: Sequence[str] = ("linear", "cosine", "wsd"),
                 max_points: int | None = None):
        if settings is None:
            from labkit import profile

            settings = profile().settings("schedules")
        self.run_fn = run_fn
        self.cache: dict[tuple, tuple[list, list]] = {}
        self.max_points = max_points or getattr(settings, "curve_points", 1001)
        unknown = [s for s in schedules if s not in SCHEDULE_LABELS]
        if unknown:
            raise LabkitError(f"unknown schedule(s) {unknown}; valid: {', '.join(SCHEDULE_NAMES)}")

        self.schedules = W.SelectMultiple(
            options=[(SCHEDULE_LABELS[n], n) for n in SCHEDULE_NAMES], value=tuple(schedules),
            rows=len(SCHEDULE_NAMES), description="schedules (ctrl-click)", style=_STYLE,
            layout=W.Layout(width="460px"))
        self.total_steps = W.IntText(value=settings.total_steps, description="total steps (updates)",
                                     style=_STYLE, layout=_LAYOUT)
        self.warmup_pct = W.FloatSlider(value=100 * settings.warmup_fraction, min=0, max=100,
                                        step=0.5, description="warmup (% of steps)",
                                        style=_STYLE, layout=_LAYOUT, readout_format=".1f")
        self.peak_lr = W.FloatLogSlider(value=settings.peak_lr, base=10, min=-6, max=0,
                                        step=0.05, description="peak LR (per update)",
                                        style=_STYLE, layout=_LAYOUT, readout_format=".1e")
        self.min_lr_ratio = W.FloatSlider(value=settings.min_lr_ratio, min=0, max=1, step=0.01,
                                          description="min LR (x peak; cosine, WSD)",
                                          style=_STYLE, layout=_LAYOUT)
        decay = getattr(settings, "wsd_decay_fractions", (0.1,))[0]
        self.decay_pct = W.FloatSlider(value=100 * decay, min=0, max=100, step=0.5,
                                       description="WSD decay (% of steps)", style=_STYLE,
                                       layout=_LAYOUT, readout_format=".1f")
        self.decay_type = W.Dropdown(options=list(SHAPES),
                                     value=getattr(settings, "wsd_decay_type", "cosine"),
                                     description="WSD decay shape", style=_STYLE, layout=_LAYOUT)
        self.cycles = W.IntSlider(value=getattr(settings, "restart_cycles", 3), min=1, max=10,
                                  description="restarts (cycles)", style=_STYLE, layout=_LAYOUT)
        self.message = W.HTML()
        self.controls = [self.schedules, self.total_steps, self.warmup_pct, self.peak_lr,
                         self.min_lr_ratio, self.decay_pct, self.decay_type, self.cycles]

        self.figure = go.FigureWidget(layout={
            "title": "Learning rate vs step", "template": "plotly_white", "height": 400,
            "xaxis": {"title": {"text": "optimizer step (updates)"}},
            "yaxis": {"title": {"text": "learning rate (per update)"}},
            "legend": {"title": {"text": "schedule"}}})
        self.loss_figure = go.FigureWidget(layout={
            "title": "Training loss with each schedule", "template": "plotly_white",
            "height": 360, "xaxis": {"title": {"text": "optimizer step (updates)"}},
            "yaxis": {"title": {"text": "training loss (nats per token)"}}})
        for name in SCHEDULE_NAMES:  # one trace per schedule, forever: updates only move data
            style = {"color": COLOURS[name]}
            self.figure.add_scatter(x=[], y=[], mode="lines", name=SCHEDULE_LABELS[name],
                                    line=style, visible=False)
            self.loss_figure.add_scatter(x=[], y=[], mode="lines", name=SCHEDULE_LABELS[name],
                                         line=style, visible=False)

        self.train_button = W.Button(description="train with this schedule", icon="play",
                                     disabled=run_fn is None, layout=W.Layout(width="230px"),
                                     tooltip="one short run per selected schedule (cached)")
        self.progress = W.FloatProgress(value=0, min=0, max=1, description="training",
                                        style=_STYLE)
        self.train_message = W.HTML(_message(
            "info", "no run_fn given: curves only" if run_fn is None else
            "press the button to train with the selected schedules"))
        self.train_button.on_click(lambda _: self.train())
        self.loss_slot = W.Box([])  # holds loss_figure after the first run

        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()

    # -- reading the controls -----------------------------------------------------------------

    def settings(self) -> dict:
        """The controls as the numbers a run needs (raises LabkitError for impossible ones)."""
        total = self.total_steps.value
        if total < 1:
            raise LabkitError(f"total steps = {total}: a run needs at least 1 optimizer step")
        warmup = fraction_to_steps(self.warmup_pct.value / 100, total, "warmup %")
        decay = fraction_to_steps(self.decay_pct.value / 100, total, "WSD decay %")
        if "wsd" in self.schedules.value and warmup + decay > total:
            raise LabkitError(
                f"warmup {self.warmup_pct.value:g}% + WSD decay {self.decay_pct.value:g}% "
                f"= {self.warmup_pct.value + self.decay_pct.value:g}% of the steps; "
                "valid: at most 100%")
        if "nanogpt" in self.schedules.value and warmup >= total:
            raise LabkitError("nanoGPT's cosine needs warmup below 100% of the steps")
        return {"total_steps": total, "warmup_steps": warmup, "peak_lr": self.peak_lr.value,
                "min_lr_ratio": self.min_lr_ratio.value, "decay_steps": decay,
                "decay_type": self.decay_type.value, "num_cycles": self.cycles.value}

    def curves(self) -> dict[str, tuple[list[int], list[float]]]:
        """(steps, LR) per selected schedule: the compute behind one update."""
        if not self.schedules.value:
            raise LabkitError("no schedule selected; choose at least one (ctrl/cmd-click)")
        s = self.settings()
        marks = (s["warmup_steps"], s["total_steps"] - s["decay_steps"])
        steps = curve_steps(s["total_steps"], self.max_points, marks)
        out = {}
        for name in self.schedules.value:
            fn = make_schedule(name, total_steps=s["total_steps"], warmup_steps=s["warmup_steps"],
                               min_lr_ratio=s["min_lr_ratio"], decay_steps=s["decay_steps"],
                               decay_type=s["decay_type"], num_cycles=s["num_cycles"])
            kernel = fn.kernel  # checked once by make_schedule
            out[name] = (steps, [s["peak_lr"] * kernel(t) for t in steps])
        return out

    # -- updating -----------------------------------------------------------------------------

    def update(self, change=None) -> bool:
        """Recompute and redraw the curves in place; a bad combination shows a message instead."""
        try:
            curves = self.curves()
        except LabkitError as exc:
            self.message.value = _message("error", str(exc))
            return False
        with self.figure.batch_update():
            for trace, name in zip(self.figure.data, SCHEDULE_NAMES):
                if name in curves:
                    # numpy arrays: plotly validates lists element by element (8x slower)
                    trace.x, trace.y = (np.asarray(v) for v in curves[name])
                    trace.visible = True
                else:
                    trace.visible = False
        s = self.settings()
        self.message.value = _message(
            "ok", f"{s['total_steps']} steps, warmup {s['warmup_steps']} steps, peak LR "
                  f"{s['peak_lr']:.2g}" + (f", WSD decay {s['decay_steps']} steps"
                                           if "wsd" in curves else ""))
        self._show_cached_runs()
        return True

    # -- the training panel -------------------------------------------------------------------

    def _key(self, name: str, s: dict) -> tuple:
        return (name, *sorted(s.items()))

    def _show_cached_runs(self) -> None:
        try:
            s = self.settings()
        except LabkitError:
            return
        with self.loss_figure.batch_update():
            for trace, name in zip(self.loss_figure.data, SCHEDULE_NAMES):
                hit = self.cache.get(self._key(name, s)) if name in self.schedules.value else None
                trace.visible = hit is not None
                if hit is not None:
                    trace.x, trace.y = (np.asarray(v) for v in hit)
        # The loss figure joins the panel once a run exists: an empty plot says nothing.
        if any(t.visible for t in self.loss_figure.data):
            self.loss_slot.children = (self.loss_figure,)

    def _call(self, settings: dict, progress: Callable[[float], None]):
        params = inspect.signature(self.run_fn).parameters
        takes_progress = "progress" in params or len(params) >= 2 or any(
            p.kind is p.VAR_POSITIONAL for p in params.values())
        return self.run_fn(settings, progress) if takes_progress else self.run_fn(settings)

    def train(self) -> bool:
        """Train each selected schedule not yet cached for these settings; show all runs."""
        if self.run_fn is None:
            self.train_message.value = _message("info", "no run_fn given: curves only")
            return False
        try:
            s = self.settings()
            if not self.schedules.value:
                raise LabkitError("no schedule selected; choose at least one")
        except LabkitError as exc:
            self.train_message.value = _message("error", str(exc))
            return False
        todo = [n for n in self.schedules.value if self._key(n, s) not in self.cache]
        self.train_button.disabled = True
        try:
            for i, name in enumerate(todo):
                self.train_message.value = _message("info", f"training {SCHEDULE_LABELS[name]}"
                                                    f" ({i + 1}/{len(todo)})")

                def progress(fraction: float, i=i) -> None:
                    self.progress.value = (i + min(max(float(fraction), 0.0), 1.0)) / len(todo)

                steps, losses = self._call({"schedule": name, **s}, progress)
                self.cache[self._key(name, s)] = (list(steps), [float(v) for v in losses])
                self.progress.value = (i + 1) / len(todo)
        except Exception as exc:  # a learner's run_fn: show the failure, keep the widget alive
            self.train_message.value = _message("error", f"training failed: "
                                                f"{type(exc).__name__}: {exc}")
            return False
        finally:
            self.train_button.disabled = False
        self.progress.value = 1.0
        self._show_cached_runs()
        cached = "all from cache" if not todo else f"{len(todo)} new run(s)"
        self.train_message.value = _message("ok", f"done: {cached}")
        return True

    # -- display ------------------------------------------------------------------------------

    @cached_property
    def widget(self) -> W.Widget:
        panel = W.VBox([W.HBox([self.train_button, self.progress]), self.train_message,
                        self.loss_slot])
        # Two columns where the cell is wide enough, one below the other where it is not.
        return W.VBox([W.HBox([W.VBox(self.controls[:4]), W.VBox(self.controls[4:])],
                              layout=W.Layout(flex_flow="row wrap")),
                       self.message, self.figure, panel])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def schedule_explorer(**kwargs) -> ScheduleExplorer:
    """The explorer with the current profile's settings (see ScheduleExplorer)."""
    return ScheduleExplorer(**kwargs)
