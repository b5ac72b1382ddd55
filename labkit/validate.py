"""Boundary checks shared by every public function: each raises one `LabkitError` that names the
argument, the value it got and what would be valid, and returns the value (normalised) so a check
reads as an assignment: `seq_len = positive_int(seq_len, "seq_len")`.

A public function declares its checks with the `checks` decorator, one rule per argument:

    @checks(text=text, n=positive_int)
    def ngram_set(text: str, n: int = 5): ...

A rule is any `rule(value, name) -> value`; `functools.partial` or the small factories below
(`maybe`, `ints`, `nums`, `among`, `of_type`, `tensors`, `keywords_of`, `pairs`, `records`,
`frame`, `mapping`) set its options. Checks that relate two arguments (same shape, same
length) are one call in the function's body.

They exist so that bad input fails at the call, in the caller's words, instead of as a
ZeroDivisionError three frames down or, worse, as a plausible but wrong number.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import Path

from .errors import LabkitError


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _range(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number (not a bool, not 2.0) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise LabkitError(f"{name} must be an integer, got {_shown(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise LabkitError(f"{name}={value} is out of range; valid: an integer "
                          f"{_range(low, high, False, False)}")
    return value


def positive_int(value, name: str) -> int:
    return integer(value, name, low=1)


def nonnegative_int(value, name: str) -> int:
    return integer(value, name, low=0)


def checks(**rules):
    """Decorate a public function: each named argument the caller passes goes through its rule
    (defaults are the function's own and trusted) before the body runs. A generator function is
    checked at the call, not at its first item."""

    def wrap(fn):
        signature = inspect.signature(fn)
        unknown = set(rules) - set(signature.parameters)
        if unknown:
            raise TypeError(f"checks for {fn.__qualname__}: no parameters {sorted(unknown)}")

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:  # a missing or unknown argument: say it in labkit's words
                raise LabkitError(f"{fn.__name__}(): {exc}") from None
            for name, rule in rules.items():
                if name in bound.arguments:
                    bound.arguments[name] = rule(bound.arguments[name], name)
            return fn(*bound.args, **bound.kwargs)

        return checked

    return wrap


def maybe(rule):
    """None stays None (the documented "off" or default); anything else goes through `rule`."""
    return lambda value, name: None if value is None else rule(value, name)


def ints(low: int | None = None, high: int | None = None):
    return functools.partial(integer, low=low, high=high)


def nums(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False):
    return functools.partial(number, low=low, high=high, low_open=low_open, high_open=high_open)


def among(*valid):
    return functools.partial(one_of, valid=valid)


def of_type(cls, what: str | None = None):
    return functools.partial(instance, cls=cls, what=what)


def tensors(kind: str | None = None, ndim=None, *, nonempty: bool = False, finite: bool = False):
    return functools.partial(tensor, kind=kind, ndim=ndim, nonempty=nonempty, finite=finite)


def keywords_of(fn):
    """A rule for `**params` passed on to `fn`: every key must be one of fn's parameters (a
    misspelt threshold would otherwise fail late, or not at all)."""
    valid = [p for p in inspect.signature(fn).parameters if p not in ("text", "self")]

    def rule(value, name):
        for key in value:
            if key not in valid:
                raise LabkitError(f"unknown keyword {key}={_shown(value[key])} for "
                                  f"{fn.__name__}; valid: {', '.join(valid)}")
        return value

    return rule


def number(value, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not nan, not inf, not a bool) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LabkitError(f"{name} must be a number, got {_shown(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise LabkitError(f"{name}={value} is not finite; valid: a finite number")
    if ((low is not None and (value < low or (low_open and value == low)))
            or (high is not None and (value > high or (high_open and value == high)))):
        raise LabkitError(f"{name}={value:g} is out of range; valid: "
                          f"{_range(low, high, low_open, high_open)}")
    return value


def finite(value, name: str) -> float:
    return number(value, name)


def positive(value, name: str) -> float:
    return number(value, name, low=0.0, low_open=True)


def nonnegative(value, name: str) -> float:
    return number(value, name, low=0.0)


def fraction(value, name: str, *, low_open: bool = False, high_open: bool = False) -> float:
    """A probability or share: a number in [0, 1] (ends open when asked)."""
    return number(value, name, low=0.0, high=1.0, low_open=low_open, high_open=high_open)


def one_of(value, name: str, valid: Iterable):
    """`value` is one of the names (or values) in `valid`."""
    valid = list(valid)
    try:
        ok = value in valid
    except TypeError:  # an unhashable or incomparable value is simply not one of them
        ok = False
    if not ok:
        raise LabkitError(f"unknown {name}={_shown(value)}; valid: "
                          f"{', '.join(str(v) for v in valid)}")
    return value


def text(value, name: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise LabkitError(f"{name} must be a str, got {type(value).__name__}")
    if not empty and not value.strip():
        raise LabkitError(f"{name} is empty; valid: a non-empty string")
    return value


def items(value, name: str, *, what: str = "items", empty: bool = False) -> list:
    """A collection of items as a list. A bare str, bytes or dict is refused: iterating it would
    silently turn each character (or key) into an item."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise LabkitError(f"{name} must be a list (or other iterable) of {what}, "
                          f"got {type(value).__name__}")
    value = list(value)
    if not empty and not value:
        raise LabkitError(f"{name} is empty; valid: at least one of {what}")
    return value


def nonempty(value, name: str, *, what: str = "items") -> list:
    return items(value, name, what=what, empty=False)


def texts(value, name: str, *, single: bool = False, empty: bool = False) -> list[str]:
    """A list of strings. With single=True a lone str is accepted as a list of one."""
    if single and isinstance(value, str):
        value = [value]
    value = items(value, name, what="strings", empty=empty)
    for i, t in enumerate(value):
        if not isinstance(t, str):
            raise LabkitError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return value


def numbers(value, name: str, *, low: float | None = None, low_open: bool = False,
            empty: bool = False) -> list[float]:
    """A list of finite numbers (each optionally above `low`)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    value = items(value, name, what="numbers", empty=empty)
    return [number(v, f"{name}[{i}]", low=low, low_open=low_open) for i, v in enumerate(value)]


def same_length(a: Sequence, b: Sequence, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise LabkitError(f"{name_a} and {name_b} must have the same length, "
                          f"got {len(a)} and {len(b)}")


def tensor(value, name: str, *, kind: str | None = None, ndim: int | tuple[int, ...] | None = None,
           nonempty: bool = False, finite: bool = False):
    """A torch tensor; kind "float", "int" (integer or bool codes) or "bool"; ndim one or several
    allowed ranks; finite=True refuses nan/inf."""
    import torch

    if not torch.is_tensor(value):
        raise LabkitError(f"{name} must be a torch tensor, got {type(value).__name__}")
    if kind == "float" and not value.is_floating_point():
        raise LabkitError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if kind == "int" and (value.is_floating_point() or value.is_complex()):
        raise LabkitError(f"{name} must be an integer tensor (token ids), got dtype {value.dtype}")
    if kind == "bool" and value.dtype != torch.bool and (value.is_floating_point() or value.is_complex()):
        raise LabkitError(f"{name} must be a bool or 0/1 integer tensor, got dtype {value.dtype}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if ranks is not None and value.dim() not in ranks:
        raise LabkitError(f"{name} must have {' or '.join(map(str, ranks))} dimensions, "
                          f"got shape {tuple(value.shape)}")
    if nonempty and value.numel() == 0:
        raise LabkitError(f"{name} is empty (shape {tuple(value.shape)}); valid: at least one value")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise LabkitError(f"{name} contains {bad} nan/inf values; valid: finite values")
    return value


def same_shape(a, b, name_a: str, name_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise LabkitError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, "
                          f"got {tuple(b.shape)}")


def existing_file(path, name: str) -> Path:
    p = _path(path, name)
    if not p.is_file():
        raise LabkitError(f"{name} {str(p)!r} is not a file" if p.exists()
                          else f"{name} {str(p)!r} does not exist")
    return p


def existing_dir(path, name: str) -> Path:
    p = _path(path, name)
    if not p.is_dir():
        raise LabkitError(f"{name} {str(p)!r} is not a directory" if p.exists()
                          else f"{name} {str(p)!r} does not exist")
    return p


def _path(path, name: str) -> Path:
    if not isinstance(path, (str, Path)) or (isinstance(path, str) and not path):
        raise LabkitError(f"{name} must be a path (str or pathlib.Path), got {_shown(path)}")
    return Path(path).expanduser()


def function(value, name: str):
    if not callable(value):
        raise LabkitError(f"{name} must be callable, got {type(value).__name__}")
    return value


def instance(value, name: str, cls, what: str | None = None):
    if not isinstance(value, cls):
        expected = what or getattr(cls, "__name__", str(cls))
        raise LabkitError(f"{name} must be a {expected}, got {type(value).__name__}")
    return value


def model(value, name: str = "model"):
    """A torch module (a transformers model, a peft model)."""
    import torch

    return instance(value, name, torch.nn.Module, "torch.nn.Module (a model)")


def tokenizer(value, name: str = "tokenizer"):
    """Anything with the tokenizer interface the labs use (encode/decode)."""
    if not (hasattr(value, "encode") and hasattr(value, "decode")) or isinstance(value, (str, bytes)):
        raise LabkitError(f"{name} must be a tokenizer (with encode and decode), "
                          f"got {type(value).__name__}")
    return value


def stream(value, name: str, *, of: type, what: str):
    """An iterable of `of` items, left lazy: a list is checked now, any other iterable item by
    item as it is consumed (a pipeline streams its documents). A bare str or dict is refused."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise LabkitError(f"{name} must be an iterable of {what}, got {type(value).__name__}")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _item_of(item, i, name, of, what)
        return value
    return (_item_of(item, i, name, of, what) for i, item in enumerate(value))


def _item_of(item, i: int, name: str, of: type, what: str):
    if not isinstance(item, of):
        raise LabkitError(f"{name}[{i}] must be one of {what}, got {type(item).__name__}")
    return item


def pairs(first, second):
    """A rule for a sequence of (a, b) pairs, e.g. ((2, 0.20), (3, 0.18)): a by `first`,
    b by `second`."""

    def rule(value, name):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise LabkitError(f"{name} must be a sequence of pairs, got {_shown(value)}")
        out = []
        for i, pair in enumerate(value):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise LabkitError(f"{name}[{i}] must be a pair, got {_shown(pair)}")
            out.append((first(pair[0], f"{name}[{i}][0]"), second(pair[1], f"{name}[{i}][1]")))
        return tuple(out)

    return rule


def token_ids(value, name: str, *, ndim: int | None = None):
    """Token ids: an integer numpy array, torch tensor or list, none negative (a float array
    would be truncated to ids silently)."""
    import numpy as np
    import torch

    if isinstance(value, (str, bytes)) or value is None:
        raise LabkitError(f"{name} must be token ids (integers), got {type(value).__name__}")
    try:
        arr = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    except (TypeError, ValueError):
        raise LabkitError(f"{name} must be token ids (integers), got {_shown(value)}") from None
    if ndim is not None and arr.ndim != ndim:
        raise LabkitError(f"{name} must be {ndim}-D token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise LabkitError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise LabkitError(f"{name} holds a negative token id ({int(arr.min())}); valid: ids >= 0")
    return value


def device(value, name: str = "device"):
    """A torch device this machine has ("cpu", "cuda", "cuda:1", "mps" or a torch.device)."""
    import torch

    if not isinstance(value, (str, torch.device)):
        raise LabkitError(f"{name} must be a device name such as 'cpu' or 'cuda', got {_shown(value)}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise LabkitError(f"unknown {name} {value!r}; valid: 'cpu', 'cuda', 'cuda:N', 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LabkitError(f"{name}={value!r} but this machine has no CUDA device; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LabkitError(f"{name}={value!r} but this machine has no MPS device; use 'cpu'")
    return value


def flag(value, name: str) -> bool:
    """A bool (a string "no" would read as True)."""
    if not isinstance(value, bool):
        raise LabkitError(f"{name} must be True or False, got {_shown(value)}")
    return value


def path_like(value, name: str) -> Path:
    """A path (str or os.PathLike); it need not exist yet."""
    import os

    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise LabkitError(f"{name} must be a path (str or pathlib.Path), got {_shown(value)}")
    return value


def records(*keys: str, empty: bool = False):
    """A rule for a list of dicts (rows, events, results) that each hold `keys`."""

    def rule(value, name):
        rows = items(value, name, what="dicts", empty=empty)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise LabkitError(f"{name}[{i}] must be a dict, got {type(row).__name__}")
            missing = [k for k in keys if k not in row]
            if missing:
                raise LabkitError(f"{name}[{i}] lacks {', '.join(missing)}; it has {', '.join(map(str, row))}")
        return rows

    return rule


def hf_tokenizer(value, name: str = "tokenizer"):
    """A transformers tokenizer (callable on text, with encode and decode)."""
    if not callable(value):
        raise LabkitError(f"{name} must be a transformers tokenizer, got {type(value).__name__}")
    return tokenizer(value, name)


def frame(*columns: str, empty: bool = False):
    """A rule for a pandas DataFrame that has `columns` (and rows, unless empty=True)."""

    def rule(value, name):
        import pandas as pd

        if not isinstance(value, pd.DataFrame):
            raise LabkitError(f"{name} must be a pandas DataFrame, got {type(value).__name__}")
        missing = [c for c in columns if c not in value.columns]
        if missing:
            raise LabkitError(f"{name} lacks the column(s) {', '.join(missing)}; it has "
                              f"{', '.join(map(str, value.columns)) or 'none'}")
        if not empty and value.empty:
            raise LabkitError(f"{name} is empty; valid: a table with at least one row")
        return value

    return rule


def mapping(item_rule, *, empty: bool = False):
    """A rule for a dict name -> item, each item checked by `item_rule(item, "name[key]")`."""

    def rule(value, name):
        if not isinstance(value, dict):
            raise LabkitError(f"{name} must be a dict (name -> item), got {type(value).__name__}")
        if not empty and not value:
            raise LabkitError(f"{name} is empty; valid: at least one entry")
        for key, item in value.items():
            item_rule(item, f"{name}[{key!r}]")
        return value

    return rule
