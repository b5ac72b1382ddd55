"""Scaling laws: Chinchilla's loss as a function of parameters N and tokens D, the compute-optimal
split of a FLOP budget C = 6ND, and power-law fits to measured (compute, loss) points.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", approach 3, eq. 10):
L(N, D) = E + A / N^alpha + B / D^beta, E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28.
Minimising it under C = 6ND gives (eq. 4) N_opt = G (C/6)^(beta/(alpha+beta)) and
D_opt = (C/6)^(alpha/(alpha+beta)) / G with G = (alpha A / (beta B))^(1/(alpha+beta)).
With these constants the optimum is not the famous ~20 tokens per parameter (that comes from the
paper's approaches 1 and 2): it grows from ~26 at 1e18 FLOPs to ~93 at Chinchilla's 5.76e23.
The published constants are rounded; a replication (Besiroglu et al. 2024) refit the paper's
data and found different ones, so the law is a model of one experiment, not a constant of nature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import validate
from ..errors import LabkitError
from ..validate import checks, finite, nonnegative, of_type, positive, texts

if TYPE_CHECKING:
    import plotly.graph_objects as go


@dataclass(frozen=True)
class LossLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __post_init__(self):
        finite(self.E, "E")
        for name in ("A", "B", "alpha", "beta"):
            positive(getattr(self, name), name)

    def loss(self, n_params, n_tokens):
        """Predicted loss (nats per token) of N parameters trained on D tokens."""
        n, d = _positive(n_params, "n_params"), _positive(n_tokens, "n_tokens")
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


CHINCHILLA = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


_law = of_type(LossLaw)


@checks(law=_law)
def chinchilla_loss(n_params, n_tokens, law: LossLaw = CHINCHILLA):
    return law.loss(n_params, n_tokens)


def training_flops(n_params, n_tokens):
    """C = 6ND: 2ND for the forward pass, 4ND for the backward pass."""
    return 6.0 * _positive(n_params, "n_params") * _positive(n_tokens, "n_tokens")


def tokens_per_parameter(n_params, n_tokens):
    return _positive(n_tokens, "n_tokens") / _positive(n_params, "n_params")


@checks(law=_law)
def compute_optimal(flops, law: LossLaw = CHINCHILLA) -> tuple:
    """(N_opt, D_opt) minimising law.loss(N, D) subject to 6ND = flops (closed form)."""
    c = _positive(flops, "flops") / 6.0
    s = law.alpha + law.beta
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
    return g * c ** (law.beta / s), c ** (law.alpha / s) / g


def compute_optimal_table(budgets: Sequence[float], law: LossLaw = CHINCHILLA) -> pd.DataFrame:
    """For each FLOP budget: N_opt, D_opt, tokens per parameter and the predicted loss."""
    budgets = _budgets(budgets, "budgets")
    _law(law, "law")
    n, d = compute_optimal(budgets, law)
    return pd.DataFrame({
        "flops": budgets, "n_params": n, "n_tokens": d,
        "tokens_per_param": d / n, "loss": law.loss(n, d),
    })  # fmt: skip


@dataclass(frozen=True)
class PowerLawFit:
    a: float
    b: float
    c: float = 0.0  # irreducible loss; 0 for a pure power law

    def __post_init__(self):
        positive(self.a, "a"), finite(self.b, "b"), nonnegative(self.c, "c")

    def __call__(self, compute):
        return self.a * np.asarray(compute, dtype=float) ** -self.b + self.c

    def formula(self) -> str:
        tail = f" + {self.c:.3g}" if self.c else ""
        return f"L = {self.a:.3g} * C^-{self.b:.3g}{tail}"


def fit_power_law(compute, loss, with_offset: bool = False) -> PowerLawFit:
    """Fit L = a * C^-b (least squares on log L vs log C), or L = a * C^-b + c with
    scipy's curve_fit on log L, started from the pure power-law fit."""
    x, y = _positive(compute, "compute"), _positive(loss, "loss")
    if np.shape(x) != np.shape(y) or np.ndim(x) != 1:
        raise LabkitError(
            f"compute and loss must be 1-D of equal length, got {x.shape} and {y.shape}"
        )
    need = 4 if with_offset else 2
    if len(x) < need:
        raise LabkitError(
            f"a power-law fit{' with offset' if with_offset else ''} needs >= {need} points, "
            f"got {len(x)}"
        )
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    pure = PowerLawFit(a=float(np.exp(intercept)), b=float(-slope))
    if not with_offset:
        return pure
    from scipy.optimize import curve_fit

    def log_model(log_c, log_a, b, c):
        return np.log(np.exp(log_a - b * log_c) + c)

    (log_a, b, c), _ = curve_fit(
        log_model, np.log(x), np.log(y), p0=(np.log(pure.a), pure.b, 0.5 * y.min()),
        bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, y.min()]), maxfev=20000,
    )  # fmt: skip
    return PowerLawFit(a=float(np.exp(log_a)), b=float(b), c=float(c))


def isoflop_figure(budgets: Sequence[float], law: LossLaw = CHINCHILLA) -> go.Figure:
    """Chinchilla's predicted loss against model size at fixed compute, the optimum marked."""
    budgets, law = _budgets(budgets, "budgets"), _law(law, "law")
    import plotly.graph_objects as go

    fig = go.Figure()
    table = compute_optimal_table(budgets, law)
    for row in table.itertuples():
        n = np.logspace(np.log10(row.n_params) - 1.5, np.log10(row.n_params) + 1.5, 121)
        fig.add_trace(go.Scatter(x=n, y=law.loss(n, row.flops / (6 * n)), mode="lines",
                                 name=f"C = {row.flops:.0e} FLOPs"))  # fmt: skip
    fig.add_trace(go.Scatter(
        x=table["n_params"], y=table["loss"], mode="markers", name="compute-optimal",
        marker=dict(size=10, symbol="star", color="black"),
        customdata=table[["n_tokens", "tokens_per_param"]],
        hovertemplate="N=%{x:.3g}<br>D=%{customdata[0]:.3g}<br>D/N=%{customdata[1]:.1f}"
        "<br>L=%{y:.3f}<extra></extra>",
    ))  # fmt: skip
    fig.update_layout(
        title="Chinchilla: loss vs model size at fixed compute (C = 6ND)",
        xaxis_title="parameters N (log scale)",
        yaxis_title="predicted loss (nats/token)",
        xaxis_type="log",
    )
    return fig


def power_law_figure(
    compute, loss, fit: PowerLawFit, labels: Sequence[str] | None = None
) -> go.Figure:
    """Measured (compute, loss) points on log-log axes with the fitted power law."""
    import plotly.graph_objects as go

    x, y = _positive(compute, "compute"), _positive(loss, "loss")
    of_type(PowerLawFit)(fit, "fit")
    if np.ndim(x) != 1 or not len(x) or np.shape(x) != np.shape(y):
        raise LabkitError(f"compute and loss must be 1-D of equal length, got shapes "
                          f"{np.shape(x)} and {np.shape(y)}")
    if labels is not None and len(texts(labels, "labels")) != len(x):
        raise LabkitError(f"labels has {len(labels)} entries for {len(x)} points")
    x = np.asarray(compute, dtype=float)
    grid = np.logspace(np.log10(x.min()) - 0.3, np.log10(x.max()) + 0.3, 100)
    fig = go.Figure([
        go.Scatter(x=x, y=loss, mode="markers+text", name="measured", text=labels,
                   textposition="top center", marker=dict(size=10)),
        go.Scatter(x=grid, y=fit(grid), mode="lines", name=fit.formula()),
    ])  # fmt: skip
    fig.update_layout(
        title="Measured loss vs training compute, with a fitted power law",
        xaxis_title="training compute C (FLOPs, log scale)",
        yaxis_title="loss (nats/token, log scale)",
        xaxis_type="log",
        yaxis_type="log",
    )
    return fig


# Models of known size and training tokens, from their papers (tokens: the training run's, not
# the dataset's size). Chinchilla's Table 1 lists the first five; Llama 2 trained its 7B model on
# 2T tokens on purpose, far past the compute-optimal point, to be cheap to serve.
KNOWN_MODELS = (
    ("GPT-3 175B", 175e9, 300e9, "Brown et al. 2020"),
    ("Gopher 280B", 280e9, 300e9, "Rae et al. 2021"),
    ("MT-NLG 530B", 530e9, 270e9, "Smith et al. 2022"),
    ("Chinchilla 70B", 70e9, 1.4e12, "Hoffmann et al. 2022"),
    ("Llama 2 7B", 7e9, 2e12, "Touvron et al. 2023"),
)
OPTIMAL_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. approaches 1 and 2, rounded


def tokens_per_param_table(models) -> pd.DataFrame:
    """For (name, parameters, tokens, source) rows: D/N and how far from ~20 tokens per
    parameter (a ratio < 1: fewer tokens than compute-optimal, the model is undertrained for
    its compute)."""
    rows = []
    for i, row in enumerate(validate.items(models, "models", empty=True)):
        if not isinstance(row, (tuple, list)) or len(row) not in (3, 4) or not isinstance(row[0], str):
            raise LabkitError(f"models[{i}] must be (name, parameters, tokens[, source]), "
                              f"got {row!r}")
        name, n, d = row[0], _positive(row[1], f"models[{i}] parameters"), \
            _positive(row[2], f"models[{i}] tokens")
        rows.append({"model": name, "parameters": n, "tokens": d,
                     "tokens_per_param": d / n,
                     "vs_optimal": d / n / OPTIMAL_TOKENS_PER_PARAM,
                     "source": row[3] if len(row) == 4 else ""})
    if not rows:
        raise LabkitError("models is empty; valid: a list of (name, parameters, tokens) rows")
    return pd.DataFrame(rows)


def tokens_per_param_figure(table: pd.DataFrame, *, groups=None) -> go.Figure:
    """Training tokens against parameters (log-log), with the compute-optimal D = 20 N line:
    a model below the line saw fewer tokens than its compute would best spend on data.

    `groups` maps a legend name to the models (rows of `table`, by name) drawn as one trace."""
    import plotly.graph_objects as go

    validate.frame("model", "parameters", "tokens")(table, "table")
    groups = groups or {"models": list(table["model"])}
    for name, members in validate.mapping(validate.texts)(groups, "groups").items():
        unknown = sorted(set(members) - set(table["model"]))
        if unknown:
            raise LabkitError(f"groups[{name!r}] names models not in the table: {unknown}")
    n_lo = np.log10(table["parameters"].min()) - 0.7
    n_hi = np.log10(table["parameters"].max()) + 0.7
    line_n = np.logspace(n_lo, n_hi, 50)
    fig = go.Figure()
    fig.add_scatter(x=line_n, y=OPTIMAL_TOKENS_PER_PARAM * line_n, mode="lines",
                    name=f"compute-optimal: D = {OPTIMAL_TOKENS_PER_PARAM:g} N",
                    line={"color": "black", "dash": "dash"})
    symbols = ("circle", "diamond", "square", "triangle-up", "x")
    for k, (name, members) in enumerate(groups.items()):
        part = table[table["model"].isin(members)]
        fig.add_scatter(x=part["parameters"], y=part["tokens"], mode="markers+text",
                        name=name, text=part["model"], textposition="middle right",
                        marker={"size": 10, "symbol": symbols[k % len(symbols)]},
                        customdata=part["tokens"] / part["parameters"],
                        hovertemplate="%{text}<br>N=%{x:.3g}<br>D=%{y:.3g}"
                                      "<br>D/N=%{customdata:.3g}<extra></extra>")
    d_lo = min(np.log10(table["tokens"].min()), n_lo + np.log10(OPTIMAL_TOKENS_PER_PARAM)) - 0.5
    d_hi = max(np.log10(table["tokens"].max()), n_hi + np.log10(OPTIMAL_TOKENS_PER_PARAM)) + 0.5
    fig.update_xaxes(type="log", range=[n_lo, n_hi + 0.6], title="parameters N (log scale)")
    fig.update_yaxes(type="log", range=[d_lo, d_hi], title="training tokens D (log scale)")
    fig.update_layout(title="Undertrained? Training tokens against parameters, and D = 20 N",
                      template="plotly_white", height=480,
                      legend={"orientation": "h", "y": -0.2})
    return fig


def _budgets(value, name: str) -> np.ndarray:
    arr = _positive(value, name)
    if np.ndim(arr) != 1 or not len(arr):
        raise LabkitError(f"{name} must be a non-empty list of FLOP budgets, got {value!r}")
    return arr


def _positive(value, name: str):
    if value is None or isinstance(value, (str, bytes, bool)):
        raise LabkitError(f"{name} must be a number or array of numbers > 0, got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise LabkitError(f"{name} must be numbers > 0, got {value!r}") from None
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise LabkitError(f"{name} must be finite and > 0, got {value!r}")
    return arr if arr.ndim else float(arr)
