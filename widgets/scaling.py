"""Lab 02 explorer: Chinchilla's loss law as a calculator.

Choose a model size N and a number of training tokens D (or type a FLOP budget C): the readout
gives C = 6ND, tokens per parameter, the predicted loss L(N, D), and the compute-optimal N and D
for that C; the figure shows isoFLOP curves with the current point and that budget's optimum,
updated in place. Every number comes from labkit.pretrain.scaling.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from labkit.errors import LabkitError
from labkit.pretrain.scaling import (
    CHINCHILLA,
    LossLaw,
    compute_optimal,
    isoflop_figure,
    tokens_per_parameter,
    training_flops,
)

_STYLE = {"description_width": "200px"}
_LAYOUT = W.Layout(width="520px")
N_RANGE = (5, 13)  # log10 of the N slider's ends: 100k to 10T parameters
D_RANGE = (6, 15)  # log10 of the D slider's ends: 1M to 1 quadrillion tokens
REFERENCE_BUDGETS = (1e18, 1e20, 1e22, 1e24)
CHINCHILLA_70B = (70e9, 1.4e12)  # the paper's own model: 70B parameters on 1.4T tokens


def _message(kind: str, text: str) -> str:
    colour = {"error": "#b42318", "info": "#475467", "ok": "#1a7f37"}[kind]
    return f'<span style="color:{colour}">{html.escape(text)}</span>'


def _si(x: float) -> str:
    """1.4e12 -> '1.4T' (parameters, tokens); the exponent form beyond the named prefixes."""
    for value, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= value:
            return f"{x / value:.3g}{suffix}"
    return f"{x:.3g}"


def parse_budget(value) -> float:
    """A FLOP budget from a number or text ('1e21', '5.76e23'); LabkitError if not > 0."""
    text = str(value).strip()
    try:
        c = float(text.replace("_", ""))
    except ValueError:
        raise LabkitError(
            f"FLOP budget C={text!r} is not a number; valid: FLOPs > 0, e.g. 1e21"
        ) from None
    if not math.isfinite(c) or c <= 0:
        raise LabkitError(f"FLOP budget C={text} is not allowed; valid: a finite number of "
                          "FLOPs > 0, e.g. 1e21")
    return c


class ChinchillaCalculator:
    """N and D sliders (log scale), a FLOP budget box, a readout and an isoFLOP FigureWidget.

    Moving N or D recomputes C = 6ND. Typing a budget C (and pressing Enter) puts N and D at the
    compute-optimal split of C. With "hold C fixed" ticked, moving N moves D the other way
    (D = C / 6N): a walk along one isoFLOP curve, to see the optimum as the curve's minimum.
    """

    def __init__(self, n_params: float = CHINCHILLA_70B[0], n_tokens: float = CHINCHILLA_70B[1],
                 law: LossLaw = CHINCHILLA, budgets=REFERENCE_BUDGETS):
        self.law = law
        self._syncing = False  # set while the widget moves its own controls
        self.n_params = W.FloatLogSlider(
            value=n_params, base=10, min=N_RANGE[0], max=N_RANGE[1], step=0.01,
            description="model size N (parameters)", readout_format=".3g",
            style=_STYLE, layout=_LAYOUT)
        self.n_tokens = W.FloatLogSlider(
            value=n_tokens, base=10, min=D_RANGE[0], max=D_RANGE[1], step=0.01,
            description="training data D (tokens)", readout_format=".3g",
            style=_STYLE, layout=_LAYOUT)
        self.budget = W.Text(
            value=f"{training_flops(n_params, n_tokens):.3g}",
            description="FLOP budget C (FLOPs)", continuous_update=False,
            placeholder="e.g. 1e21, then Enter", style=_STYLE, layout=_LAYOUT)
        self.hold_budget = W.Checkbox(
            value=False, description="hold C fixed (moving N moves D along the isoFLOP curve)",
            indent=False, layout=W.Layout(width="520px"))
        self.optimal_button = W.Button(
            description="go to the compute-optimal N, D for C", icon="star",
            layout=W.Layout(width="300px"))
        self.controls = [self.n_params, self.n_tokens, self.budget, self.hold_budget]
        self.readout = W.HTML()
        self.message = W.HTML()

        figure = isoflop_figure(budgets, law)
        for trace in figure.data:  # the reference curves stay in the background
            if trace.mode == "lines":
                trace.line = {"width": 1.5, "dash": "dot"}
                trace.opacity = 0.6
        # The live traces are part of the figure the widget is built from: traces added to a
        # FigureWidget after it exists reached the browser without their names ("trace 6").
        figure.add_scatter(x=[], y=[], mode="lines", name="isoFLOP curve of your C",
                           line={"color": "#c53030", "width": 3})
        figure.add_scatter(x=[], y=[], mode="markers", name="compute-optimal for your C",
                           marker={"size": 16, "symbol": "star", "color": "#c53030",
                                   "line": {"width": 1, "color": "black"}})
        figure.add_scatter(x=[], y=[], mode="markers", name="your (N, D)",
                           marker={"size": 13, "color": "#2b6cb0",
                                   "line": {"width": 1, "color": "black"}})
        figure.update_layout(height=460, template="plotly_white",
                             legend={"title": {"text": "curve"}})
        self.figure = go.FigureWidget(figure)
        self.curve, self.optimum, self.point = self.figure.data[-3:]

        self.n_params.observe(self._on_n, names="value")
        self.n_tokens.observe(self._on_d, names="value")
        self.budget.observe(self._on_budget, names="value")
        self.optimal_button.on_click(lambda _: self.go_to_optimum())
        self.update()

    # -- the numbers ----------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything the readout shows, from the current N and D (labkit.pretrain.scaling)."""
        n, d = float(self.n_params.value), float(self.n_tokens.value)
        c = training_flops(n, d)
        n_opt, d_opt = compute_optimal(c, self.law)
        return {"n_params": n, "n_tokens": d, "flops": c,
                "tokens_per_param": tokens_per_parameter(n, d),
                "loss": float(self.law.loss(n, d)), "n_opt": float(n_opt),
                "d_opt": float(d_opt), "loss_opt": float(self.law.loss(n_opt, d_opt))}

    # -- reacting to the controls ---------------------------------------------------------------

    def _set(self, **values) -> None:
        """Move controls without their observers reacting to the move."""
        self._syncing = True
        try:
            for name, value in values.items():
                getattr(self, name).value = value
        finally:
            self._syncing = False

    def _slide(self, moved: str, other: str, other_range) -> None:
        if self._syncing:
            return
        if self.hold_budget.value:
            try:
                c = parse_budget(self.budget.value)
            except LabkitError as exc:
                self.message.value = _message("error", str(exc))
                return
            wanted = c / 6.0 / float(getattr(self, moved).value)
            lo, hi = 10.0 ** other_range[0], 10.0 ** other_range[1]
            self._set(**{other: min(max(wanted, lo), hi)})
            if not lo <= wanted <= hi:
                self.update(note=("error", f"C={c:.3g} would need {other.replace('n_', '')}="
                                           f"{wanted:.3g}, outside the slider ({lo:.0e} to "
                                           f"{hi:.0e}); C no longer held exactly"))
                return
        self.update()

    def _on_n(self, change=None) -> None:
        self._slide("n_params", "n_tokens", D_RANGE)

    def _on_d(self, change=None) -> None:
        self._slide("n_tokens", "n_params", N_RANGE)

    def _on_budget(self, change=None) -> None:
        if not self._syncing:
            self.go_to_optimum()

    def go_to_optimum(self) -> bool:
        """Put N and D at the compute-optimal split of the typed budget C."""
        try:
            c = parse_budget(self.budget.value)
            n_opt, d_opt = compute_optimal(c, self.law)
            for name, value, (lo, hi) in (("N", n_opt, N_RANGE), ("D", d_opt, D_RANGE)):
                if not 10.0**lo <= value <= 10.0**hi:
                    c_lo, c_hi = budget_range(self.law)
                    raise LabkitError(
                        f"FLOP budget C={c:.3g} puts the optimal {name} at {value:.3g}, outside "
                        f"the slider ({10.0**lo:.0e} to {10.0**hi:.0e}); valid: C from "
                        f"{c_lo:.1e} to {c_hi:.1e} FLOPs")
        except LabkitError as exc:
            self.message.value = _message("error", str(exc))
            return False
        self._set(n_params=float(n_opt), n_tokens=float(d_opt))
        self.update()
        return True

    def update(self, note: tuple[str, str] | None = None) -> bool:
        """Recompute the readout and move the figure's three live traces in place."""
        try:
            s = self.state()
        except LabkitError as exc:
            self.message.value = _message("error", str(exc))
            return False
        if not self._syncing:
            self._set(budget=f"{s['flops']:.3g}")
        n = np.logspace(math.log10(s["n_opt"]) - 2.0, math.log10(s["n_opt"]) + 2.0, 161)
        with self.figure.batch_update():
            self.curve.x, self.curve.y = n, self.law.loss(n, s["flops"] / (6.0 * n))
            self.optimum.x, self.optimum.y = [s["n_opt"]], [s["loss_opt"]]
            self.point.x, self.point.y = [s["n_params"]], [s["loss"]]
            # from the irreducible loss E up to whatever must stay in view
            top = max(self.law.E + 2.0, s["loss_opt"] + 1.0, 1.05 * s["loss"])
            self.figure.layout.yaxis.range = [self.law.E - 0.05, top]
        # Not in the batch: a batch is one restyle of every trace it touches, and a property set
        # on one trace only reaches the others as null, which plotly.js reads as "reset" (the
        # other two lost their names and showed as "trace 6", "trace 7").
        self.curve.name = f"isoFLOP curve of your C = {s['flops']:.2g} FLOPs"
        self.readout.value = self._readout(s)
        kind, text = note or ("ok", "move N or D, or type a FLOP budget C and press Enter")
        self.message.value = _message(kind, text)
        return True

    def _readout(self, s: dict) -> str:
        excess = s["loss"] - s["loss_opt"]
        rows = [
            ("training compute C = 6ND", f"{s['flops']:.3g} FLOPs"),
            ("tokens per parameter D/N", f"{s['tokens_per_param']:.3g}"),
            ("predicted loss L(N, D)", f"{s['loss']:.4f} nats/token"),
            ("compute-optimal N for this C", f"{_si(s['n_opt'])} parameters"),
            ("compute-optimal D for this C", f"{_si(s['d_opt'])} tokens "
                                             f"({s['d_opt'] / s['n_opt']:.3g} per parameter)"),
            ("loss at the optimum", f"{s['loss_opt']:.4f} nats/token "
                                    f"(yours is {excess:+.4f} above it)"),
        ]
        cells = "".join(f"<tr><td style='padding-right:12px'>{html.escape(k)}</td>"
                        f"<td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
        law = self.law
        formula = (f"L(N, D) = {law.E} + {law.A}/N^{law.alpha} + {law.B}/D^{law.beta} "
                   "(Hoffmann et al. 2022, approach 3). Its optimum drifts from ~26 tokens per "
                   "parameter at 1e18 FLOPs to ~93 at Chinchilla's budget; the famous ~20 comes "
                   "from the paper's approaches 1 and 2.")
        return f"<table>{cells}</table><div style='color:#475467'>{html.escape(formula)}</div>"

    # -- display --------------------------------------------------------------------------------

    @property
    def widget(self) -> W.Widget:
        return W.VBox([W.VBox(self.controls), self.optimal_button, self.message, self.readout,
                       self.figure])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def budget_range(law: LossLaw = CHINCHILLA) -> tuple[float, float]:
    """The FLOP budgets whose compute-optimal N and D both fit the sliders.

    N_opt and D_opt are powers of C, so log N_opt and log D_opt are straight lines in log C:
    two evaluations of compute_optimal give each line, and each line inverts exactly."""
    (n1, d1), (n2, d2) = (np.log10(compute_optimal(c, law)) for c in (1.0, 10.0))
    lo, hi = -math.inf, math.inf
    for at_one, slope, (a, b) in ((n1, n2 - n1, N_RANGE), (d1, d2 - d1, D_RANGE)):
        lo, hi = max(lo, (a - at_one) / slope), min(hi, (b - at_one) / slope)
    return 10.0**lo, 10.0**hi


def chinchilla_calculator(**kwargs) -> ChinchillaCalculator:
    """The calculator, starting at Chinchilla itself (70B parameters, 1.4T tokens)."""
    return ChinchillaCalculator(**kwargs)
