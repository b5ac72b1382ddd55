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
    if not 0.0 <= beta < 1.0:
        raise LabkitError(f"beta={beta!r} is out of range; valid: [0, 1)")
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
    if not divergence_factor > 1:
        raise LabkitError(f"divergence_factor={divergence_factor!r} is out of range; valid: > 1")
    if not 0.0 <= beta < 1.0:
        raise LabkitError(f"beta={beta!r} is out of range; valid: [0, 1)")
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


def range_test_figure(result: RangeTest, *, title: str = "LR range test", loss_unit: str = "nats"):
    """Loss (raw and smoothed) vs LR on a log-x axis, with the suggested LRs marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=result.lrs, y=result.losses, mode="markers", name="loss per step",
                    marker={"size": 4, "color": "lightgrey"})
    fig.add_scatter(x=result.lrs, y=result.smoothed, mode="lines", name="smoothed loss")
    marks = (("steepest descent", result.steepest_lr, "green"),
             ("min-loss LR / 10", None if result.min_loss_lr is None else result.min_loss_lr / 10,
              "orange"))
    for text, lr, colour in marks:
        if lr is not None:
            fig.add_vline(x=math.log10(lr), line_dash="dash", line_color=colour,
                          annotation_text=f"{text}: {lr:.2g}")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # keep the explosion from squashing the interesting part
        low, high = min(finite), min(max(finite), 3 * max(finite[0], min(finite)))
        pad = 0.05 * (high - low or 1.0)
        fig.update_yaxes(range=[low - pad, high + pad])
    fig.update_xaxes(type="log", title="learning rate (per update, log scale)")
    fig.update_layout(title=f"{title} ({result.stop_reason} after {len(result.lrs)} steps)",
                      yaxis_title=f"training loss ({loss_unit})", template="plotly_white",
                      height=420)
    return fig
