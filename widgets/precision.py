"""Precision explorer: one number's bits in every format, and where a tensor's values fall.

Top: type a value or slide its magnitude (log scale, 1e-45..1e45) and flip its sign; a table
shows what each format stores (sign/exponent/mantissa bits, the value, the rounding error and
its class). Bottom: choose a tensor (the caller passes name -> tensor): a histogram of log10|x|
with one format's underflow/subnormal/overflow zones shaded, every format's ranges as bars
below, and per format the share of values that flush to zero, go subnormal, overflow or round.
All numbers come from labkit.precision, i.e. from the running torch.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch

from labkit.errors import LabkitError
from labkit.precision import (
    FORMAT_NAMES,
    check_format_on_device,
    decompose,
    get_format,
    highlight_shapes,
    log_histogram,
    range_figure,
    sample_shares,
    sample_values,
)

NO_TENSOR = "(none)"
SLIDER_EXP = (-45, 45)
_STYLE = {"description_width": "150px"}
_LAYOUT = W.Layout(width="440px")


@contextmanager
def _one_thread():
    """Run small tensor work on one thread: waking torch's pool for a few thousand values costs
    more than it saves, and on a busy 2-core machine its spinning threads cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _message(kind: str, text: str) -> str:
    colour = {"error": "#b42318", "info": "#475467", "ok": "#1a7f37"}[kind]
    return f'<div style="color:{colour}">{html.escape(text)}</div>'


def parse_value(text: str) -> float:
    """A float from what the learner typed ('1e-5', '-3.2E-8', 'inf', 'nan', '1_000')."""
    cleaned = str(text).strip().replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        raise LabkitError(f"{text!r} is not a number; type e.g. 1e-5, -3.2e-8, 65504, inf "
                          "or nan") from None


def _num(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.6g}"


def bits_html(rows) -> str:
    """The decomposition table: sign red, exponent green, mantissa blue, in monospace."""
    head = ("<tr><th>format</th><th>sign | exponent | mantissa</th><th>stored value</th>"
            "<th>abs. error</th><th>rel. error</th><th>class</th><th>what happened</th></tr>")
    body = []
    for d in rows:
        bits = (f'<span style="color:#d62728">{d.sign}</span> '
                f'<span style="color:#2ca02c">{d.exponent}</span> '
                f'<span style="color:#1f77b4">{d.mantissa}</span>')
        body.append(f"<tr><td>{d.format}</td><td style='font-family:monospace'>{bits}</td>"
                    f"<td>{d.stored!r}</td><td>{_num(d.abs_error)}</td>"
                    f"<td>{_num(d.rel_error)}</td><td>{d.kind}</td>"
                    f"<td>{html.escape(d.note)}</td></tr>")
    return f"<table style='border-collapse:collapse'>{head}{''.join(body)}</table>"


def shares_html(shares, sampled: str = "") -> str:
    """Per format: % flushed to zero, subnormal, overflowing, rounded; median relative error."""
    head = ("<tr><th>format</th><th>flush to 0 (%)</th><th>subnormal (%)</th>"
            "<th>overflow (%)</th><th>rounded (%)</th><th>median rel. error</th></tr>")
    body = "".join(
        f"<tr><td>{s.format}</td><td>{100 * s.underflow:.3g}</td><td>{100 * s.subnormal:.3g}"
        f"</td><td>{100 * s.overflow:.3g}</td><td>{100 * s.rounded:.3g}</td>"
        f"<td>{_num(s.rel_error_median)}</td></tr>" for s in shares)
    note = f"<div style='color:#475467'>{html.escape(sampled)}</div>" if sampled else ""
    return f"<table>{head}{body}</table>{note}"


class PrecisionExplorer:
    """Controls -> labkit.precision -> tables and a FigureWidget, updated in place.

    tensors: name -> tensor (weights, activations, gradients captured by the lab);
    max_values: values per tensor looked at (a seeded sample; None = all);
    device: where the casts run; formats it cannot hold are listed in the message and left out.
    """

    def __init__(self, tensors: Mapping | None = None, *, formats: Sequence[str] = FORMAT_NAMES,
                 value: float = 1e-5, highlight: str = "fp16", max_values: int | None = None,
                 device: str = "cpu", settings=None):
        if settings is None:
            from labkit import profile

            settings = profile().settings("precision")
        self.tensors = dict(tensors or {})
        self.max_values = max_values if max_values is not None else settings.explorer_max_values
        self.bins = settings.histogram_bins
        self._cache: dict[str, tuple] = {}
        self._syncing = False

        self.device, problems = self._usable_device(device)
        self.formats = []
        for name in formats:
            try:
                self.formats.append(check_format_on_device(name, self.device).name)
            except LabkitError as exc:
                problems.append(str(exc))
        self.problems = problems  # device/format problems, shown above everything else
        if not self.formats:
            self.formats = ["fp32"]

        self.value_text = W.Text(value=repr(float(value)), description="value (any number)",
                                 continuous_update=False, style=_STYLE, layout=_LAYOUT)
        start = abs(value) if math.isfinite(value) and value != 0 else 1e-5
        self.magnitude = W.FloatLogSlider(
            value=min(max(start, 10.0 ** SLIDER_EXP[0]), 10.0 ** SLIDER_EXP[1]), base=10,
            min=SLIDER_EXP[0], max=SLIDER_EXP[1], step=0.05, description="|value| (log scale)",
            readout_format=".3g", style=_STYLE, layout=_LAYOUT)
        self.negative = W.Checkbox(value=value < 0, description="negative (sign bit 1)",
                                   style=_STYLE)
        self.tensor = W.Dropdown(options=[NO_TENSOR, *self.tensors], value=NO_TENSOR,
                                 description="tensor", style=_STYLE, layout=_LAYOUT)
        shade = highlight if highlight in self.formats else self.formats[0]
        self.highlight = W.Dropdown(options=self.formats, value=shade,
                                    description="shade zones of format", style=_STYLE,
                                    layout=_LAYOUT)
        self.message = W.HTML()
        self.bits_table = W.HTML()
        self.shares_table = W.HTML(_message("info", "choose a tensor to see its shares"))
        self.figure = go.FigureWidget(range_figure(None, self.formats, highlight=shade,
                                                   bins=self.bins, title="Choose a tensor"))

        self.value_text.observe(self._on_text, names="value")
        self.magnitude.observe(self._on_slider, names="value")
        self.negative.observe(self._on_slider, names="value")
        self.tensor.observe(lambda _: self.update_tensor(), names="value")
        self.highlight.observe(lambda _: self.update_highlight(), names="value")
        self.update_value()
        if self.tensors:
            self.tensor.value = next(iter(self.tensors))

    @staticmethod
    def _usable_device(device) -> tuple[str, list[str]]:
        name = str(device)
        try:
            torch.zeros(1, device=name).cpu()
        except (RuntimeError, AssertionError, ValueError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return "cpu", [f"device {name!r} is not available here ({why}); using cpu"]
        return name, []

    # -- the value -------------------------------------------------------------------------------

    def _on_text(self, change=None) -> None:
        if not self._syncing:
            self.update_value()

    def _on_slider(self, change=None) -> None:
        if self._syncing:
            return
        value = -self.magnitude.value if self.negative.value else self.magnitude.value
        self._syncing = True
        try:
            self.value_text.value = f"{value:.6g}"
        finally:
            self._syncing = False
        self.update_value()

    def current_value(self) -> float:
        return parse_value(self.value_text.value)

    def update_value(self) -> bool:
        """Bits table and marker for the value in the text box; bad text shows a message."""
        notes = list(self.problems)
        try:
            value = self.current_value()
        except LabkitError as exc:
            self._show(notes + [str(exc)], error=True)
            return False
        if math.isnan(value):
            notes.append("nan is not a number with a size: nothing to place on the axis; the "
                         "table shows the bit pattern each format uses for NaN")
        elif math.isfinite(value) and value != 0:
            low, high = (10.0**e for e in SLIDER_EXP)
            if low <= abs(value) <= high:
                self._syncing = True
                try:
                    self.magnitude.value = abs(value)
                    self.negative.value = value < 0
                finally:
                    self._syncing = False
            else:
                notes.append("|value| is outside the slider's 1e-45..1e45; shown in the table")
        try:
            with _one_thread():
                rows = [decompose(value, f, self.device) for f in self.formats]
        except LabkitError as exc:
            self._show(notes + [str(exc)], error=True)
            return False
        self.bits_table.value = bits_html(rows)
        marker = value if math.isfinite(value) and value != 0 else None
        trace = self.figure.data[1]
        with self.figure.batch_update():
            if marker is None:
                trace.x, trace.y = [], []
            else:
                x = math.log10(abs(marker))
                bars = self.figure.data[0].y
                top = float(np.max(bars)) if bars is not None and len(bars) else 1.0
                trace.x, trace.y = [x, x], [0, top]
                trace.name = f"value {marker:.3g}"
        self._show(notes, error=bool(self.problems) or math.isnan(value))
        return True

    # -- the tensor ------------------------------------------------------------------------------

    def _tensor_stats(self, name: str):
        if name not in self._cache:
            with _one_thread():
                self._cache[name] = self._compute_stats(self.tensors[name])
        return self._cache[name]

    def _compute_stats(self, x):
        values = sample_values(x, self.max_values, seed=0)
        shares, errors = [], []
        for f in self.formats:
            try:
                shares.append(sample_shares(values, f))
            except LabkitError as exc:
                errors.append(str(exc))
        centres, counts, zeros = log_histogram(values, self.bins)
        total = x.numel()
        sampled = (f"from a seeded sample of {values.numel():,} of {total:,} values"
                   if values.numel() < total else f"all {total:,} finite values")
        return centres, counts, zeros, shares, errors, sampled

    def update_tensor(self) -> bool:
        """Histogram, zones and shares for the chosen tensor; bad tensors show a message."""
        name = self.tensor.value
        bar = self.figure.data[0]
        if name == NO_TENSOR:
            with self.figure.batch_update():
                bar.x, bar.y = [], []
                self.figure.layout.title.text = "Choose a tensor"
            self.shares_table.value = _message("info", "choose a tensor to see its shares")
            return True
        try:
            centres, counts, zeros, shares, errors, sampled = self._tensor_stats(name)
        except LabkitError as exc:
            self.shares_table.value = _message("error", f"{name}: {exc}")
            with self.figure.batch_update():
                bar.x, bar.y = [], []
            return False
        total = sum(counts) + zeros
        share = np.asarray(counts, dtype=float) * (100.0 / total)
        with self.figure.batch_update():
            bar.x, bar.y = np.asarray(centres), share
            bar.name = name
            # short: a long title is cut off in a narrow notebook; the details go below
            self.figure.layout.title.text = f"Where the values of {name} fall"
        # The marker in its own restyle: in one batch with the bars, the properties set on the
        # bars only (name, x) reach the marker as null, and plotly.js resets them ("trace 1").
        marker = self.figure.data[1]
        if marker.x is not None and len(marker.x):
            marker.y = [0, float(share.max()) if share.size else 1.0]
        text = shares_html(shares, f"{sampled}; the histogram leaves out {zeros:,} exact "
                                   "zeros (no logarithm)")
        if errors:
            text = "".join(_message("error", e) for e in errors) + text
        self.shares_table.value = text
        return not errors

    def update_highlight(self) -> None:
        with self.figure.batch_update():
            self.figure.layout.shapes = highlight_shapes(get_format(self.highlight.value).name)

    # -- display ---------------------------------------------------------------------------------

    def _show(self, notes: list[str], error: bool) -> None:
        kind = "error" if error else "info"
        self.message.value = "".join(_message(kind, n) for n in notes)

    @cached_property
    def widget(self) -> W.Widget:
        value_box = W.VBox([self.value_text, self.magnitude, self.negative])
        tensor_box = W.VBox([self.tensor, self.highlight])
        return W.VBox([W.HBox([value_box, tensor_box], layout=W.Layout(flex_flow="row wrap")), self.message, self.bits_table,
                       self.figure, self.shares_table])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def precision_explorer(tensors: Mapping | None = None, **kwargs) -> PrecisionExplorer:
    """The explorer with the current profile's settings (see PrecisionExplorer)."""
    return PrecisionExplorer(tensors, **kwargs)
