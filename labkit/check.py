"""Immediate, specific feedback for the labs' exercises.

An exercise cell calls one of these with the learner's answer; the result displays as one line
saying what was right or exactly what differed (which input, what came back, what was expected).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Feedback:
    ok: bool
    message: str
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        mark = "✔ correct" if self.ok else "✘ not yet"
        lines = [f"{mark}: {self.message}"] + [f"  - {d}" for d in self.details]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#b42318"
        items = "".join(f"<li>{html.escape(d)}</li>" for d in self.details)
        mark = "✔ correct" if self.ok else "✘ not yet"
        return (
            f'<div style="border-left:4px solid {colour};padding:4px 8px">'
            f'<b style="color:{colour}">{mark}</b>: {html.escape(self.message)}'
            f"{'<ul>' + items + '</ul>' if items else ''}</div>"
        )


def _close(got, expected, rtol: float, atol: float) -> bool:
    try:
        import numpy as np

        g, e = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
        return g.shape == e.shape and bool(np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True))
    except (TypeError, ValueError):
        return got == expected


def _short(x) -> str:
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


def check_value(name: str, got, expected, *, rtol: float = 1e-6, atol: float = 1e-9, hint: str = "") -> Feedback:
    """Compare one answer with the expected value (numbers and arrays within tolerance)."""
    if got is None or got is Ellipsis:
        return Feedback(False, f"{name} is not filled in yet", [hint] if hint else [])
    if _close(got, expected, rtol, atol):
        return Feedback(True, f"{name} = {_short(got)}")
    details = [f"you have {_short(got)}, expected {_short(expected)}"]
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)) and expected:
        ratio = got / expected
        if math.isfinite(ratio):
            details.append(f"your value is {ratio:.3g}x the expected one")
    if hint:
        details.append(hint)
    return Feedback(False, f"{name} differs", details)


def check_function(
    fn: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    *,
    name: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    hint: str = "",
) -> Feedback:
    """Run the learner's `fn` and the `reference` on each case (a tuple of arguments); report the
    first cases that disagree, or raise, with their inputs."""
    name = name or getattr(fn, "__name__", "your function")
    cases = list(cases)
    failures: list[str] = []
    for args in cases:
        expected = reference(*args)
        try:
            got = fn(*args)
        except NotImplementedError:
            return Feedback(False, f"{name} is not implemented yet", [hint] if hint else [])
        except Exception as exc:  # the learner's code: report whatever it raised
            failures.append(f"{name}{_short(args)} raised {type(exc).__name__}: {exc}")
            continue
        if not _close(got, expected, rtol, atol):
            failures.append(f"{name}{_short(args)} returned {_short(got)}, expected {_short(expected)}")
    if failures:
        shown = failures[:3] + ([f"... and {len(failures) - 3} more"] if len(failures) > 3 else [])
        return Feedback(False, f"{len(failures)} of {len(cases)} cases differ", shown + ([hint] if hint else []))
    return Feedback(True, f"{name} agrees with the reference on all {len(cases)} cases")


def check_choice(name: str, got, correct, explanation: str = "", options: Iterable | None = None) -> Feedback:
    """A multiple-choice or short-answer question."""
    if options is not None and got not in list(options):
        return Feedback(False, f"{name}: {got!r} is not one of the options {list(options)}")
    if got == correct:
        return Feedback(True, f"{name}: {got!r}", [explanation] if explanation else [])
    return Feedback(False, f"{name}: {got!r} is not it", [explanation] if explanation else [])


# ----------------------------------------------------------------------------------------------
# Claims: what a checked notebook cell prints instead of a raw measured number.
#
# Numbers that come out of training or float reductions differ in their last digits between
# CPUs (ATEN_CPU_CAPABILITY), thread counts, GPUs and library versions, and a short training
# run amplifies that to the second decimal. A cell nbval checks therefore prints the *claim*
# the lab makes and its verdict; the measured value is shown beside it in a bracket that the
# nbval sanitizer masks (`[measured: ...]`), so the verdict is compared and the value is seen.

CLAIMS_LOG = "LABKIT_CLAIMS_LOG"  # a JSON Lines file: every claim checked, for spread studies


@dataclass
class Claim:
    """A claim about a measured value: `low <= value <= high` (either bound may be open)."""

    text: str
    value: float
    low: float | None = None
    high: float | None = None
    fmt: str = ".3g"

    @property
    def holds(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return (self.low is None or self.value >= self.low) and (
            self.high is None or self.value <= self.high
        )

    def __bool__(self) -> bool:
        return self.holds

    def __str__(self) -> str:
        verdict = "yes" if self.holds else "NO"
        return f"{self.text}: {verdict} [measured: {format(self.value, self.fmt)}]"

    __repr__ = __str__


def _log_claim(c: Claim) -> None:
    import json
    import os

    path = os.environ.get(CLAIMS_LOG)
    if not path:
        return
    record = {"claim": c.text, "value": c.value, "low": c.low, "high": c.high, "holds": c.holds,
              "lab": os.environ.get("LABKIT_LAB", ""),
              # which machine it stands for: torch's CPU kernels and the thread count
              "capability": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
              "threads": os.environ.get("OMP_NUM_THREADS", "")}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def claim(text: str, value, *, low: float | None = None, high: float | None = None,
          fmt: str = ".3g") -> Claim:
    """The claim `text` holds when `low <= value <= high`; print it in a checked cell.

    Choose the bounds from the spread measured across CPU capabilities and thread counts
    (benchmarks/claim_spread.py) with room to spare, and tight enough that a broken mechanism
    (a wrong schedule, a loss mask that masks nothing, a quantizer that does nothing) fails.
    """
    from .errors import LabkitError

    if not isinstance(text, str) or not text.strip():
        raise LabkitError("claim text must be a non-empty string saying what is claimed")
    if low is None and high is None:
        raise LabkitError(f"claim {text!r} needs a bound: low=, high= or both")
    if low is not None and high is not None and low > high:
        raise LabkitError(f"claim {text!r}: low={low} is above high={high}")
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise LabkitError(f"claim {text!r}: value must be a number, got {value!r}") from exc
    c = Claim(text, value, low, high, fmt)
    _log_claim(c)
    return c


def claim_close(text: str, value, target: float, tol: float, fmt: str = ".3g") -> Claim:
    """The claim that `value` is within `tol` of `target`."""
    return claim(text, value, low=target - tol, high=target + tol, fmt=fmt)
