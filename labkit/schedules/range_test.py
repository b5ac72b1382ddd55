"""The LR range test (Smith, 2017; "Cyclical Learning Rates", section 3.3).

Train for a short run while the LR grows exponentially from tiny to huge, one step per LR;
watch the loss. It falls slowly at first, falls fastest somewhere in the middle, then blows up.
A good peak LR sits where the smoothed loss falls fastest, or (fastai's rule of thumb) a
tenth of the LR at the loss minimum. The training itself stays with the caller: pass
`train_step(lr) -> loss`, which sets the optimizer's lr, takes one step and returns the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real

from ..errors import LabkitError
from ..validate import function, items, maybe, numbers, nums

RULES = ("steepest", "min/10")


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stop_reason: str  # "completed", "diverged" or "non-finite loss"
    steepest_lr: float | None
    min_loss_lr: float | None
    settings: dict = field(default_factory=dict)

    @property
    def suggestion(self) -> float | None:
        """The steepest-descent LR, else a tenth of the LR at the minimum smoothed loss."""
        if self.steepest_lr is not None:
            return self.steepest_lr
        return None if self.min_loss_lr is None else self.min_loss_lr / 10

    def table(self):
        import pandas as pd

        return pd.DataFrame({"lr": self.lrs, "loss": self.losses, "smoothed": self.smoothed})


def lr_sweep(min_lr: float, max_lr: float, num_steps: int) -> list[float]:
    """num_steps learning rates growing by a constant factor from min_lr to max_lr."""
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
                or value <= 0:
            raise LabkitError(f"{name}={value!r} is not a learning rate; valid: a number > 0")
    if not max_lr > min_lr:
        raise LabkitError(f"max_lr={max_lr!r} must be above min_lr={min_lr!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 3:
        raise LabkitError(f"num_steps={num_steps!r} is too few to see a curve; valid: >= 3")
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (num_steps - 1)) for i in range(num_steps)]


def smooth_losses(losses: Sequence[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (fastai's LR finder smoothing)."""
    nums(0.0, 1.0, high_open=True)(beta, "beta")
    losses = numbers(losses, "losses", empty=True)
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_lr(lrs: Sequence[float], smoothed: Sequence[float], rule: str = "steepest",
               skip_start: int | None = None) -> float | None:
    """Pick a peak LR from a range test.

    "steepest": the LR where the smoothed loss falls fastest per decade of LR, looking only
    before the loss minimum and after the first `skip_start` points (the average is still
    warming up there; default a tenth of the points). "min/10": a tenth of the LR at the minimum.
    None when there are too few points to tell.
    """
    if rule not in RULES:
        raise LabkitError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    lrs = numbers(lrs, "lrs", low=0.0, low_open=True)
    smoothed = _losses(smoothed, "smoothed")
    if len(lrs) != len(smoothed):
        raise LabkitError(f"lrs and smoothed must have one entry per step, got {len(lrs)} and "
                          f"{len(smoothed)}")
    if skip_start is not None and (isinstance(skip_start, bool) or not isinstance(skip_start, int)
                                   or not 0 <= skip_start < len(lrs)):
        raise LabkitError(f"skip_start={skip_start!r}; valid: a step from 0 to {len(lrs) - 1}")
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        return None
    best = min(finite, key=lambda i: smoothed[i])
    if rule == "min/10":
        return lrs[best] / 10
    skip = max(1, len(lrs) // 10) if skip_start is None else skip_start
    idx = list(range(skip, best + 1))
    if len(idx) < 3:
        return None
    import numpy as np

    x = np.log10(np.asarray([lrs[i] for i in idx]))
    slope = np.gradient(np.asarray([smoothed[i] for i in idx]), x)
    return float(lrs[idx[int(np.argmin(slope))]])


def lr_range_test(train_step: Callable[[float], float], *, min_lr: float = 1e-6,
                  max_lr: float = 1.0, num_steps: int = 100, beta: float = 0.9,
                  divergence_factor: float = 4.0,
                  on_step: Callable[[int, float, float], None] | None = None) -> RangeTest:
    """Sweep the LR exponentially, one `train_step(lr)` each, until max_lr or divergence.

    Stops early when the loss is nan/inf or the smoothed loss exceeds divergence_factor x its
    best so far (fastai uses 4). `on_step(i, lr, loss)` is called after every step (progress).
    """
    if not callable(train_step):
        raise LabkitError(f"train_step must be a function lr -> loss, got {train_step!r}")
    nums(1.0, low_open=True)(divergence_factor, "divergence_factor")
    nums(0.0, 1.0, high_open=True)(beta, "beta"), maybe(function)(on_step, "on_step")
    lrs, losses, smoothed, stop = [], [], [], "completed"
    avg, best = 0.0, math.inf
    for i, lr in enumerate(lr_sweep(min_lr, max_lr, num_steps)):
        loss = float(train_step(lr))
        lrs.append(lr)
        losses.append(loss)
        if on_step is not None:
            on_step(i, lr, loss)
        if not math.isfinite(loss):
            smoothed.append(math.nan)
            stop = "non-finite loss"
            break
        avg = beta * avg + (1 - beta) * loss  # same average as smooth_losses, kept running
        smoothed.append(avg / (1 - beta ** (i + 1)))
        best = min(best, smoothed[-1])
        if smoothed[-1] > divergence_factor * best:
            stop = "diverged"
            break
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    settings = {"min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps, "beta": beta,
                "divergence_factor": divergence_factor}
    return RangeTest(lrs=lrs, losses=losses, smoothed=smoothed, stop_reason=stop,
                     steepest_lr=suggest_lr(lrs, smoothed, "steepest"),
                     min_loss_lr=lrs[min(finite, key=smoothed.__getitem__)] if finite else None,
                     settings=settings)


def _losses(value, name: str) -> list[float]:
    """Numbers, nan and inf allowed (a diverged step's loss), no str and no None."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise LabkitError(f"{name} must be a list of losses, got {type(value).__name__}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise LabkitError(f"{name}[{i}] must be a number, got {v!r}")
    return list(value)


def range_test_figure(result: RangeTest, *, title: str = "LR range test", loss_unit: str = "nats"):
    """Loss (raw and smoothed) vs LR on a log-x axis, with the suggested LRs marked."""
    if not isinstance(result, RangeTest):
        raise LabkitError(f"result must be lr_range_test's RangeTest, got {type(result).__name__}")
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=result.lrs, y=result.losses, mode="markers", name="loss per step",
                    marker={"size": 4, "color": "lightgrey"})
    fig.add_scatter(x=result.lrs, y=result.smoothed, mode="lines", name="smoothed loss")
    y_range = _loss_range([result.smoothed])
    marks = (("steepest descent", result.steepest_lr, "green"),
             ("min-loss LR / 10", None if result.min_loss_lr is None else result.min_loss_lr / 10,
              "orange"))
    for text, lr, colour in marks:
        _mark_lr(fig, lr, f"{text}: {lr:.2g}" if lr is not None else "", colour, y_range)
    _range_axes(fig, result.lrs, y_range, loss_unit)
    fig.update_layout(title=f"{title} ({result.stop_reason} after {len(result.lrs)} steps)")
    return fig


def _loss_range(curves: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """A y range that shows the fall and clips the explosion (which would squash the rest)."""
    finite = [v for curve in curves for v in curve if math.isfinite(v)]
    starts = [next((v for v in c if math.isfinite(v)), math.nan) for c in curves]
    starts = [v for v in starts if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), min(max(finite), 3 * max(max(starts), min(finite)))
    pad = 0.05 * (high - low or 1.0)
    return low - pad, high + pad


def _mark_lr(fig, lr: float | None, name: str, colour: str, y_range, dash: str = "dash") -> None:
    """A vertical line at `lr` drawn as a named trace: the legend says what it is, and no
    annotation can overprint another (two picks are often a few percent apart)."""
    if lr is None or y_range is None:
        return
    fig.add_scatter(x=[lr, lr], y=list(y_range), mode="lines", name=name,
                    line={"color": colour, "dash": dash, "width": 2}, hoverinfo="name")


def _range_axes(fig, lrs: Sequence[float], y_range, loss_unit: str) -> None:
    # On a log axis plotly's range is in log10 units, while the data (and add_vline's x) are
    # learning rates: give the range explicitly so it spans exactly the LRs that were tested.
    lo, hi = math.log10(min(lrs)), math.log10(max(lrs))
    pad = 0.03 * (hi - lo or 1.0)
    fig.update_xaxes(type="log", range=[lo - pad, hi + pad],
                     title="learning rate (per update, log scale)")
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_layout(yaxis_title=f"training loss ({loss_unit})", template="plotly_white",
                      height=420, legend={"orientation": "h", "y": -0.2})


# ----------------------------------------------------------------------------------------------
# Several seeds: how much the test's answers move, and a pick that moves less.
#
# One range test is one short, noisy run: its "lowest smoothed loss" sits on a flat, noisy
# floor and can jump by a decade between two CPUs' rounding of the same run. The mean of a few
# seeds' smoothed curves (the same LR at each step) is less noisy, and the steepest descent of
# that mean is the pick; the per-seed answers say how much a single test would have moved.


@dataclass
class RangeTests:
    runs: dict[int, RangeTest]  # seed -> its range test
    lrs: list[float]  # the LR of each step the runs have in common
    mean_smoothed: list[float]  # the mean of the seeds' smoothed losses at those steps
    pick: float | None  # the steepest descent of the mean curve

    @property
    def steepest_lrs(self) -> dict[int, float | None]:
        return {seed: r.steepest_lr for seed, r in self.runs.items()}

    @property
    def min_loss_lrs(self) -> dict[int, float | None]:
        return {seed: r.min_loss_lr for seed, r in self.runs.items()}

    @property
    def mean_min_loss_lr(self) -> float | None:
        finite = [i for i, v in enumerate(self.mean_smoothed) if math.isfinite(v)]
        return self.lrs[min(finite, key=self.mean_smoothed.__getitem__)] if finite else None

    def table(self):
        """One row per seed (its steepest-descent LR, its lowest-loss LR, how it stopped) and
        a last row for the mean curve."""
        import pandas as pd

        rows = [{"seed": str(seed), "steepest descent LR": r.steepest_lr,
                 "lowest smoothed loss at LR": r.min_loss_lr, "stopped": r.stop_reason}
                for seed, r in self.runs.items()]
        rows.append({"seed": "mean of the seeds", "steepest descent LR": self.pick,
                     "lowest smoothed loss at LR": self.mean_min_loss_lr,
                     "stopped": f"{len(self.lrs)} common steps"})
        return pd.DataFrame(rows).set_index("seed")


def spread_factor(values) -> float:
    """max / min of positive values (nan when fewer than two): how far apart the answers are."""
    values = list(values.values()) if isinstance(values, dict) else values
    for i, v in enumerate(items(values, "values", empty=True)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, Real)):
            raise LabkitError(f"values[{i}]={v!r}: valid is a number or None (no answer)")
    vals = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    return max(vals) / min(vals) if len(vals) >= 2 else math.nan


def lr_range_tests(make_train_step: Callable[[int], Callable[[float], float]], seeds, *,
                   min_lr: float = 1e-6, max_lr: float = 1.0, num_steps: int = 100,
                   beta: float = 0.9, divergence_factor: float = 4.0) -> RangeTests:
    """One range test per seed (`make_train_step(seed)` gives a fresh train_step), all on the
    same LR grid; the pick is the steepest descent of the mean smoothed curve."""
    function(make_train_step, "make_train_step")
    if isinstance(seeds, (list, tuple, range)):
        seeds = list(seeds)
    if not isinstance(seeds, list) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise LabkitError(f"seeds={seeds!r}; valid: a non-empty list of integer seeds")
    if len(set(seeds)) != len(seeds):
        raise LabkitError(f"seeds={seeds!r} repeats a seed; valid: distinct seeds")
    runs = {seed: lr_range_test(make_train_step(seed), min_lr=min_lr, max_lr=max_lr,
                                num_steps=num_steps, beta=beta,
                                divergence_factor=divergence_factor) for seed in seeds}
    common = min(len(r.smoothed) for r in runs.values())
    lrs = runs[seeds[0]].lrs[:common]
    mean = [math.fsum(r.smoothed[i] for r in runs.values()) / len(runs) for i in range(common)]
    return RangeTests(runs=runs, lrs=lrs, mean_smoothed=mean,
                      pick=suggest_lr(lrs, mean, "steepest") if common >= 3 else None)


def range_tests_figure(result: RangeTests, *, title: str = "LR range test, several seeds",
                       loss_unit: str = "nats"):
    """Each seed's smoothed loss, their mean, the pick (steepest descent of the mean) and each
    seed's own answers, on a log-x axis that spans the LRs tested."""
    if not isinstance(result, RangeTests):
        raise LabkitError(f"result must be lr_range_tests' RangeTests, got "
                          f"{type(result).__name__}")
    import plotly.graph_objects as go

    fig = go.Figure()
    for seed, run in result.runs.items():
        fig.add_scatter(x=run.lrs, y=run.smoothed, mode="lines", name=f"seed {seed} (smoothed)",
                        line={"width": 1}, opacity=0.6)
    fig.add_scatter(x=result.lrs, y=result.mean_smoothed, mode="lines",
                    name="mean of the seeds", line={"color": "black", "width": 3})
    for key, name, symbol, colour in (
            ("steepest_lr", "steepest descent, each seed", "triangle-down", "green"),
            ("min_loss_lr", "lowest smoothed loss, each seed", "circle-open", "orange")):
        xs, ys = [], []
        for run in result.runs.values():
            lr = getattr(run, key)
            if lr is not None:
                xs.append(lr)
                ys.append(run.smoothed[run.lrs.index(lr)])
        fig.add_scatter(x=xs, y=ys, mode="markers", name=name,
                        marker={"color": colour, "size": 11, "symbol": symbol,
                                "line": {"width": 2, "color": colour}})
    y_range = _loss_range([r.smoothed for r in result.runs.values()])
    if result.pick is not None:
        _mark_lr(fig, result.pick, f"pick: steepest descent of the mean, {result.pick:.2g}",
                 "green", y_range)
    _range_axes(fig, [lr for r in result.runs.values() for lr in r.lrs], y_range, loss_unit)
    fig.update_layout(title=title)
    return fig
