"""The labs' exercises: what each one asks, how it is checked, and the mistakes it recognises.

A lab's exercise cell ships as the learner's stub (a function that raises NotImplementedError,
or a value left as `...`) and ends with `check("09.perplexity", my_perplexity)`. The check
compares the learner's answer with a reference computed here, independently of anything the
learner wrote, and when the answer is wrong it tries the exercise's named mistakes (perplexity
in base 2, biased pass@k, labels shifted by one, ...): an answer that behaves like one of them
gets that mistake's explanation instead of a bare "differs".

Each lab registers its exercises in `labkit/exercises/labNN.py`; the solutions live outside the
labs, in `labs/solutions/NN_name.py`, under the names the lab's cells use, and
tests/test_exercises.py proves that every stub says "not yet", every solution says "correct"
and every named mistake gets its own message.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from ..check import Feedback, _close, _short
from ..errors import LabkitError

KINDS = ("function", "value", "choice")
LAB_MODULES = [f"lab{n:02d}" for n in range(12)]  # labkit/exercises/labNN.py, where present


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong answer and what to say to someone who made it.

    `answer` is a function (for function exercises), a value, or an option (for choices)."""

    name: str
    answer: object
    message: str


@dataclass
class Exercise:
    id: str  # "NN.short_name"
    name: str  # the learner's variable in the lab (and in labs/solutions/NN_*.py)
    kind: str  # "function", "value" or "choice"
    prompt: str  # one line: what to compute
    reference: Callable  # function: the reference itself; value/choice: () -> the right answer
    cases: Callable[[], Sequence[tuple]] | None = None  # function exercises: () -> argument tuples
    hint: str = ""
    mistakes: Sequence[Mistake] = ()
    options: Sequence | None = None  # choice exercises
    explanation: str = ""  # shown with a choice's verdict
    rtol: float = 1e-6
    atol: float = 1e-9

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LabkitError(f"exercise {self.id}: kind={self.kind!r}; valid: {', '.join(KINDS)}")
        if self.kind == "function" and self.cases is None:
            raise LabkitError(f"exercise {self.id}: a function exercise needs cases")
        if self.kind == "choice" and not self.options:
            raise LabkitError(f"exercise {self.id}: a choice exercise needs options")

    @cached_property
    def expected(self):
        """The reference answer (value, choice) or the reference outputs (function), computed
        once: some references load a model or a dataset."""
        if self.kind == "function":
            return [self.reference(*args) for args in self.all_cases]
        return self.reference()

    @cached_property
    def all_cases(self) -> list[tuple]:
        return [tuple(c) for c in self.cases()] if self.cases else []

    # -- checking --------------------------------------------------------------------------

    def _behaviour(self, fn) -> list[tuple[str, object]]:
        """Per case: ("returned", value) or ("raised", exception type name)."""
        seen = []
        for args in self.all_cases:
            try:
                seen.append(("returned", fn(*args)))
            except Exception as exc:
                seen.append(("raised", type(exc).__name__))
        return seen

    def _same_behaviour(self, a, b) -> bool:
        return all(ka == kb and (self._same(va, vb) if ka == "returned" else va == vb)
                   for (ka, va), (kb, vb) in zip(a, b))

    def _same(self, got, expected) -> bool:
        return _close(got, expected, self.rtol, self.atol)

    def _mistake_for(self, answer) -> Mistake | None:
        for m in self.mistakes:
            try:
                if self.kind == "function":
                    if self._same_behaviour(self._behaviour(answer), self._behaviour(m.answer)):
                        return m
                elif self.kind == "value":
                    if self._same(answer, m.answer() if callable(m.answer) else m.answer):
                        return m
                elif answer == m.answer:
                    return m
            except Exception:  # the learner's code may fail where the mistake does not
                continue
        return None

    def check(self, answer) -> Feedback:
        hint = [self.hint] if self.hint else []
        if answer is None or answer is Ellipsis or (self.kind == "choice" and answer == ""):
            return Feedback(False, f"{self.name} is not filled in yet: {self.prompt}", hint)
        if self.kind == "function":
            return self._check_function(answer, hint)
        if self.kind == "choice":
            return self._check_choice(answer)
        if self._same(answer, self.expected):
            return Feedback(True, f"{self.name} = {_short(answer)}")
        return self._wrong(answer, [f"you have {_short(answer)}"] + _ratio(answer, self.expected)
                           + hint)

    def _check_function(self, fn, hint) -> Feedback:
        if not callable(fn):
            return Feedback(False, f"{self.name} should be a function, got {_short(fn)}", hint)
        failures = []
        for args, expected in zip(self.all_cases, self.expected):
            try:
                got = fn(*args)
            except NotImplementedError:
                return Feedback(False, f"{self.name} is not implemented yet: {self.prompt}", hint)
            except Exception as exc:  # the learner's code: report whatever it raised
                failures.append(f"{self.name}{_short(args)} raised {type(exc).__name__}: {exc}")
                continue
            if not self._same(got, expected):
                failures.append(f"{self.name}{_short(args)} returned {_short(got)}, expected "
                                f"{_short(expected)}")
        n = len(self.all_cases)
        if not failures:
            return Feedback(True, f"{self.name} agrees with the reference on all {n} cases")
        shown = failures[:3] + ([f"... and {len(failures) - 3} more"] if len(failures) > 3 else [])
        return self._wrong(fn, shown + hint, f"{len(failures)} of {n} cases differ")

    def _check_choice(self, answer) -> Feedback:
        if answer not in list(self.options):
            return Feedback(False, f"{self.name}: {answer!r} is not one of the options "
                                   f"{list(self.options)}")
        detail = [self.explanation] if self.explanation else []
        if answer == self.expected:
            return Feedback(True, f"{self.name}: {answer!r}", detail)
        return self._wrong(answer, [], f"{answer!r} is not it")

    def _wrong(self, answer, details: list[str], summary: str | None = None) -> Feedback:
        mistake = self._mistake_for(answer)
        if mistake is not None:
            return Feedback(False, f"{self.name}: looks like {mistake.name}", [mistake.message])
        return Feedback(False, f"{self.name}: {summary or 'differs'}", details)


def _ratio(got, expected) -> list[str]:
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)) and expected:
        r = got / expected
        if math.isfinite(r):
            return [f"your value is {r:.3g}x the expected one"]
    return []


REGISTRY: dict[str, Exercise] = {}


def exercise(**spec) -> Exercise:
    """Register one exercise (called at import of labkit/exercises/labNN.py)."""
    ex = Exercise(**spec)
    if ex.id in REGISTRY:
        raise LabkitError(f"exercise {ex.id} is registered twice")
    REGISTRY[ex.id] = ex
    return ex


def _load(lab: str) -> None:
    module = f"lab{lab.zfill(2)}"
    if module in LAB_MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise


def get(exercise_id: str) -> Exercise:
    lab = exercise_id.split(".", 1)[0]
    _load(lab)
    if exercise_id not in REGISTRY:
        known = ", ".join(sorted(i for i in REGISTRY if i.startswith(lab + "."))) or "none"
        raise LabkitError(f"no exercise {exercise_id!r}; lab {lab} has: {known}")
    return REGISTRY[exercise_id]


def all_exercises() -> list[Exercise]:
    for module in LAB_MODULES:
        _load(module[3:])
    return sorted(REGISTRY.values(), key=lambda e: e.id)


def check(exercise_id: str, answer) -> Feedback:
    """Check the learner's answer to one exercise; the result displays as one line."""
    return get(exercise_id).check(answer)


__all__ = ["Exercise", "Mistake", "all_exercises", "check", "exercise", "get"]
