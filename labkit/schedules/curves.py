"""Learning-rate schedules as pure functions of the optimizer step.

Every schedule returns the *multiplier* of the peak learning rate at `step` (what torch's
`LambdaLR` multiplies the optimizer's lr by), so `lr = peak_lr * schedule(step)`. The formulas
are transformers' own (`transformers/optimization.py`), operation for operation, so a curve
drawn here and the scheduler a `Trainer` builds agree to the last bit, also after the last step:

- linear and hard-restart cosine stay at 0 after `total_steps`; WSD stays at `min_lr_ratio`;
- transformers' cosine does *not* clamp: past `total_steps` the half-cosine keeps turning and
  the LR climbs back up. We reproduce that; a run must stop at `total_steps`;
- inverse sqrt has no end: it keeps decaying as 1/sqrt(step).

nanoGPT's variant (`nanogpt_cosine`) is Karpathy's `get_lr`: warmup (it+1)/(W+1), a cosine
to `min_lr` at `total_steps` (nanoGPT's lr_decay_iters), then constant at `min_lr`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from numbers import Integral, Real

from ..errors import LabkitError

SHAPES = ("linear", "cosine", "1-sqrt")

# name -> (label for figures and widgets, what it follows)
SCHEDULE_LABELS = {
    "constant": "constant (after warmup)",
    "linear": "linear warmup + linear decay",
    "cosine": "warmup + cosine (to min LR)",
    "nanogpt": "nanoGPT cosine (to min LR, then flat)",
    "wsd": "warmup-stable-decay (WSD)",
    "inverse_sqrt": "inverse square root",
    "cosine_restarts": "cosine with hard restarts",
}
SCHEDULE_NAMES = tuple(SCHEDULE_LABELS)


# -- checks: one line naming the parameter, the bad value and what is valid ----------------------


def _whole(name: str, value, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """An int in minimum..maximum; `why` explains the upper bound when it is exceeded."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise LabkitError(f"{name} must be a whole number of steps, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        valid = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        reason = f" ({why})" if why and maximum is not None and value > maximum else ""
        raise LabkitError(f"{name}={value} is out of range{reason}; valid: {valid}")
    return int(value)


def _number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise LabkitError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        if high == math.inf:
            valid = f"{'>' if low_open else '>='} {low:g}"
        else:
            valid = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise LabkitError(f"{name}={value!r} is out of range; valid: {valid}")
    return float(value)


def check_step(step) -> int:
    return _whole("step", step, 0)


def check_total_steps(total_steps) -> int:
    if isinstance(total_steps, Integral) and not isinstance(total_steps, bool) and total_steps < 1:
        raise LabkitError(f"total_steps={total_steps} leaves nothing to train; valid: >= 1 step")
    return _whole("total_steps", total_steps, 1)


def check_warmup(warmup_steps, total_steps) -> int:
    total = check_total_steps(total_steps)
    return _whole("warmup_steps", warmup_steps, 0, total, why=f"warmup longer than training, total_steps={total}")


def check_peak_lr(peak_lr) -> float:
    return _number("peak_lr", peak_lr, 0.0, math.inf, low_open=True)


def check_min_lr_ratio(min_lr_ratio) -> float:
    return _number("min_lr_ratio", min_lr_ratio, 0.0, 1.0)


def check_shape(name: str, shape) -> str:
    if shape not in SHAPES:
        raise LabkitError(f"unknown {name} {shape!r}; valid: {', '.join(SHAPES)}")
    return shape


def fraction_to_steps(fraction, total_steps, name: str = "warmup_fraction") -> int:
    """round(fraction * total_steps): the lab's '5% warmup' as a whole number of steps."""
    total = check_total_steps(total_steps)
    return round(_number(name, fraction, 0.0, 1.0) * total)


# -- the schedules: transformers' formulas, unchanged ----------------------------------------------


def _warmup(step: int, warmup_steps: int) -> float:
    return float(step) / float(max(1, warmup_steps))


def _constant(step: int, warmup_steps: int) -> float:
    if step < warmup_steps:
        return float(step) / float(max(1.0, warmup_steps))
    return 1.0


def _linear(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))


def _cosine(step, warmup_steps, total_steps, num_cycles, min_lr_ratio) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_ratio) + min_lr_ratio
    return max(0, factor)


def _nanogpt(step, warmup_steps, total_steps, min_lr_ratio, peak_lr) -> float:
    min_lr = peak_lr * min_lr_ratio
    if step < warmup_steps:
        return peak_lr * (step + 1) / (warmup_steps + 1)
    if step > total_steps:
        return min_lr
    decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (peak_lr - min_lr)


def _shape(kind: str, progress: float, num_cycles: float, *, rising: bool) -> float:
    if kind == "linear":
        return progress if rising else 1.0 - progress
    if kind == "cosine":
        if rising:
            return 0.5 * (1.0 - math.cos(math.pi * progress))
        return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)


def _wsd(step, warmup_steps, stable_steps, decay_steps, warmup_type, decay_type, min_lr_ratio,
         num_cycles) -> float:
    if step < warmup_steps:
        # transformers starts WSD's warmup at min_lr_ratio, not at 0
        factor = _shape(warmup_type, _warmup(step, warmup_steps), num_cycles, rising=True)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < warmup_steps + stable_steps:
        return 1.0
    if step < warmup_steps + stable_steps + decay_steps:
        progress = float(step - warmup_steps - stable_steps) / float(max(1, decay_steps))
        factor = _shape(decay_type, progress, num_cycles, rising=False)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


def _inverse_sqrt(step, warmup_steps, timescale) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    shift = timescale - warmup_steps
    return 1.0 / math.sqrt((step + shift) / timescale)


def _hard_restarts(step, warmup_steps, total_steps, num_cycles) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


# -- public, checked schedules ---------------------------------------------------------------------
# Each `*_schedule` checks its parameters once and returns a step -> multiplier function; the
# step-first functions below are the same thing for one step (handy in a lab cell or a test).


def constant_schedule(*, warmup_steps: int = 0) -> Callable[[int], float]:
    """1 after a linear warmup of `warmup_steps` (transformers' get_constant_schedule[_with_warmup])."""
    warmup = _whole("warmup_steps", warmup_steps, 0)
    return _checked(partial(_constant, warmup_steps=warmup))


def linear_schedule(*, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup 0 -> 1, then linear decay to 0 at total_steps (get_linear_schedule_with_warmup)."""
    warmup = check_warmup(warmup_steps, total_steps)
    return _checked(partial(_linear, warmup_steps=warmup, total_steps=int(total_steps)))


def cosine_schedule(*, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
                    num_cycles: float = 0.5) -> Callable[[int], float]:
    """Linear warmup, then a half-cosine from 1 to min_lr_ratio at total_steps.

    min_lr_ratio=0 is get_cosine_schedule_with_warmup; otherwise it is
    get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=min_lr_ratio).
    """
    warmup = check_warmup(warmup_steps, total_steps)
    ratio = check_min_lr_ratio(min_lr_ratio)
    cycles = _number("num_cycles", num_cycles, 0.0, math.inf, low_open=True)
    return _checked(partial(_cosine, warmup_steps=warmup, total_steps=int(total_steps),
                            num_cycles=cycles, min_lr_ratio=ratio))


def nanogpt_schedule(*, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1,
                     peak_lr: float = 1.0) -> Callable[[int], float]:
    """nanoGPT's get_lr: warmup (step+1)/(W+1), cosine to peak*min_lr_ratio, then flat.

    With peak_lr=1 it returns the multiplier; with the real peak it returns the LR computed
    exactly as nanoGPT computes it (min_lr + coeff * (peak - min_lr)).
    """
    total = check_total_steps(total_steps)
    warmup = check_warmup(warmup_steps, total_steps)
    if warmup >= total:
        raise LabkitError(f"warmup_steps={warmup} leaves no cosine phase (nanoGPT divides by "
                          f"total_steps - warmup_steps); valid: 0..{total - 1}")
    return _checked(partial(_nanogpt, warmup_steps=warmup, total_steps=total,
                            min_lr_ratio=check_min_lr_ratio(min_lr_ratio),
                            peak_lr=check_peak_lr(peak_lr)))


def wsd_schedule(*, total_steps: int, warmup_steps: int, decay_steps: int,
                 decay_type: str = "cosine", warmup_type: str = "linear",
                 min_lr_ratio: float = 0.0, num_cycles: float = 0.5) -> Callable[[int], float]:
    """Warmup-stable-decay (MiniCPM): warmup, flat at 1, decay to min_lr_ratio over decay_steps.

    Same as transformers' get_wsd_schedule(num_training_steps=total_steps, ...): the stable phase
    is total_steps - warmup_steps - decay_steps long; after total_steps the LR stays at min.
    """
    total = check_total_steps(total_steps)
    warmup = check_warmup(warmup_steps, total_steps)
    decay = _whole("decay_steps", decay_steps, 0, total - warmup,
                   why=f"warmup_steps + decay_steps must fit in total_steps={total}")
    return _checked(partial(
        _wsd, warmup_steps=warmup, stable_steps=total - warmup - decay, decay_steps=decay,
        warmup_type=check_shape("warmup_type", warmup_type),
        decay_type=check_shape("decay_type", decay_type),
        min_lr_ratio=check_min_lr_ratio(min_lr_ratio),
        num_cycles=_number("num_cycles", num_cycles, 0.0, math.inf, low_open=True)))


def inverse_sqrt_schedule(*, warmup_steps: int, timescale: int | None = None
                          ) -> Callable[[int], float]:
    """Linear warmup, then sqrt(timescale / (step + timescale - warmup)) (get_inverse_sqrt_schedule).

    timescale defaults to warmup_steps, or 10_000 when there is no warmup (as in transformers).
    """
    warmup = _whole("warmup_steps", warmup_steps, 0)
    scale = (warmup or 10_000) if timescale is None else _whole("timescale", timescale, 1)
    return _checked(partial(_inverse_sqrt, warmup_steps=warmup, timescale=scale))


def cosine_restarts_schedule(*, total_steps: int, warmup_steps: int, num_cycles: int = 1
                             ) -> Callable[[int], float]:
    """Warmup, then num_cycles half-cosines 1 -> 0, each restarting at 1; 0 after total_steps.

    Same as get_cosine_with_hard_restarts_schedule_with_warmup.
    """
    warmup = check_warmup(warmup_steps, total_steps)
    cycles = _whole("num_cycles", num_cycles, 1)
    return _checked(partial(_hard_restarts, warmup_steps=warmup, total_steps=int(total_steps),
                            num_cycles=cycles))


def _checked(kernel: Callable[[int], float]) -> Callable[[int], float]:
    def schedule(step: int) -> float:
        return kernel(check_step(step))

    schedule.kernel = kernel  # unchecked, for long tables
    schedule.params = dict(kernel.keywords)
    return schedule


def constant(step: int, *, warmup_steps: int = 0) -> float:
    return constant_schedule(warmup_steps=warmup_steps)(step)


def linear_with_warmup(step: int, *, total_steps: int, warmup_steps: int) -> float:
    return linear_schedule(total_steps=total_steps, warmup_steps=warmup_steps)(step)


def cosine_with_warmup(step: int, *, total_steps: int, warmup_steps: int,
                       min_lr_ratio: float = 0.0, num_cycles: float = 0.5) -> float:
    return cosine_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                           min_lr_ratio=min_lr_ratio, num_cycles=num_cycles)(step)


def nanogpt_cosine(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1,
                   peak_lr: float = 1.0) -> float:
    return nanogpt_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                            min_lr_ratio=min_lr_ratio, peak_lr=peak_lr)(step)


def warmup_stable_decay(step: int, *, total_steps: int, warmup_steps: int, decay_steps: int,
                        decay_type: str = "cosine", warmup_type: str = "linear",
                        min_lr_ratio: float = 0.0, num_cycles: float = 0.5) -> float:
    return wsd_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                        decay_steps=decay_steps, decay_type=decay_type, warmup_type=warmup_type,
                        min_lr_ratio=min_lr_ratio, num_cycles=num_cycles)(step)


def inverse_sqrt(step: int, *, warmup_steps: int, timescale: int | None = None) -> float:
    return inverse_sqrt_schedule(warmup_steps=warmup_steps, timescale=timescale)(step)


def cosine_with_hard_restarts(step: int, *, total_steps: int, warmup_steps: int,
                              num_cycles: int = 1) -> float:
    return cosine_restarts_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                                    num_cycles=num_cycles)(step)


def make_schedule(name: str, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
                  decay_steps: int | None = None, decay_type: str = "cosine",
                  num_cycles: int | None = None, timescale: int | None = None
                  ) -> Callable[[int], float]:
    """One schedule by name from the lab's common settings (those it does not use are ignored).

    min_lr_ratio applies to cosine, nanogpt and wsd; decay_steps/decay_type to wsd (default
    decay: the last 10% of steps); num_cycles to cosine_restarts; timescale to inverse_sqrt.
    """
    if name not in SCHEDULE_LABELS:
        raise LabkitError(f"unknown schedule name={name!r}; valid: {', '.join(SCHEDULE_NAMES)}")
    check_warmup(warmup_steps, total_steps)
    if name == "constant":
        return constant_schedule(warmup_steps=warmup_steps)
    if name == "linear":
        return linear_schedule(total_steps=total_steps, warmup_steps=warmup_steps)
    if name == "cosine":
        return cosine_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                               min_lr_ratio=min_lr_ratio)
    if name == "nanogpt":
        return nanogpt_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                                min_lr_ratio=min_lr_ratio)
    if name == "wsd":
        if decay_steps is None:
            decay_steps = max(1, round(0.1 * total_steps))
        return wsd_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                            decay_steps=decay_steps, decay_type=decay_type,
                            min_lr_ratio=min_lr_ratio)
    if name == "inverse_sqrt":
        return inverse_sqrt_schedule(warmup_steps=warmup_steps, timescale=timescale)
    return cosine_restarts_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                                    num_cycles=1 if num_cycles is None else num_cycles)


def as_lr_scheduler(optimizer, schedule_fn: Callable[[int], float], last_epoch: int = -1):
    """A torch LambdaLR that multiplies each param group's lr (the peak) by schedule_fn(step)."""
    from torch.optim.lr_scheduler import LambdaLR

    if not callable(schedule_fn):
        raise LabkitError(f"schedule_fn must be a function step -> multiplier, got {schedule_fn!r}")
    if not hasattr(optimizer, "param_groups"):
        raise LabkitError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, Integral) or last_epoch < -1:
        raise LabkitError(f"last_epoch={last_epoch!r}; valid: -1 (a fresh run) or a step >= 0")
    if last_epoch >= 0 and any("initial_lr" not in g for g in optimizer.param_groups):
        raise LabkitError(f"last_epoch={last_epoch} resumes a scheduler, but the optimizer's param "
                          "groups have no initial_lr (resume with the optimizer of that run)")
    for i, group in enumerate(optimizer.param_groups):
        lr = group.get("initial_lr", group["lr"])
        if not isinstance(lr, Real) or not math.isfinite(lr) or lr < 0:
            raise LabkitError(f"param group {i} has lr={lr!r}; valid: a finite peak lr >= 0")
    return LambdaLR(optimizer, schedule_fn, last_epoch=last_epoch)


# -- tables and figures ------------------------------------------------------------------------------


def curve_steps(total_steps: int, max_points: int = 1001, marks: Sequence[int] = ()) -> list[int]:
    """Steps 0..total_steps, thinned to about max_points, always keeping the phase boundaries.

    `marks` are steps where a curve has a kink (end of warmup, start of decay): each is kept
    together with the step before it so the kink is drawn where it is.
    """
    total = check_total_steps(total_steps)
    _whole("max_points", max_points, 2)
    if isinstance(marks, (str, bytes)) or not isinstance(marks, Sequence):
        raise LabkitError(f"marks must be a list of steps, got {marks!r}")
    marks = [_whole(f"marks[{i}]", m, 0) for i, m in enumerate(marks)]
    stride = max(1, math.ceil(total / max(1, max_points - 1)))
    steps = set(range(0, total + 1, stride)) | {total}
    for m in marks:
        steps |= {s for s in (m - 1, m) if 0 <= s <= total}
    return sorted(steps)


def schedule_table(schedules: Mapping[str, Callable[[int], float]], steps: int | Sequence[int],
                   *, peak_lr: float = 1.0):
    """The learning rate (peak_lr * multiplier) of each schedule at each step, as a DataFrame.

    `steps` is either a total (steps 0..total inclusive) or an explicit list of steps.
    """
    import pandas as pd

    peak = check_peak_lr(peak_lr)
    if not isinstance(schedules, Mapping) or not schedules:
        raise LabkitError(f"schedules must be a non-empty dict name -> schedule, got {schedules!r}"[:200])
    for name, fn in schedules.items():
        if not callable(fn):
            raise LabkitError(f"schedules[{name!r}] must be a function step -> multiplier, got {fn!r}")
    if isinstance(steps, Integral) and not isinstance(steps, bool):
        grid = list(range(_whole("steps", steps, 1) + 1))
    elif isinstance(steps, Sequence) and not isinstance(steps, str) and steps:
        grid = [_whole(f"steps[{i}]", s, 0) for i, s in enumerate(steps)]
    else:
        raise LabkitError(f"steps must be a total (>= 1) or a list of steps, got {steps!r}")
    columns = {}
    for name, fn in schedules.items():
        kernel = getattr(fn, "kernel", fn)  # already checked once; skip per-step checks
        columns[name] = [peak * kernel(s) for s in grid]
    return pd.DataFrame(columns, index=pd.Index(grid, name="step"))


def schedule_figure(table, *, title: str = "Learning-rate schedules", warmup_steps: int | None = None,
                    total_steps: int | None = None, log_y: bool = False):
    """LR vs step, one line per column of `schedule_table`, with the warmup end and last step marked."""
    import pandas as pd
    import plotly.graph_objects as go

    if not isinstance(table, pd.DataFrame) or table.empty or not len(table.columns):
        raise LabkitError(f"table must be schedule_table's DataFrame, got {type(table).__name__}")
    if warmup_steps is not None:
        _whole("warmup_steps", warmup_steps, 0)
    if total_steps is not None:
        check_total_steps(total_steps)

    fig = go.Figure()
    for name in table.columns:
        fig.add_scatter(x=list(table.index), y=table[name].tolist(), mode="lines",
                        name=SCHEDULE_LABELS.get(name, str(name)))
    for step, text in ((warmup_steps, "end of warmup"), (total_steps, "last step")):
        if step:
            fig.add_vline(x=step, line_dash="dot", line_color="grey", annotation_text=text)
    fig.update_layout(title=title, xaxis_title="optimizer step (updates)",
                      yaxis_title="learning rate (per update)", legend_title="schedule",
                      template="plotly_white", height=420)
    if log_y:
        fig.update_yaxes(type="log")
    return fig
