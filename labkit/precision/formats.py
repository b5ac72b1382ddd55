"""Floating-point formats as the running torch implements them: bits, range, rounding, shares.

Every number here is read from torch (`torch.finfo`, bit views, casts), never typed in, so a
table printed by a lab is the truth of the torch it runs on. TF32 is not a storage dtype but
a matmul mode: tensor cores read fp32 inputs with only 10 mantissa bits. We emulate it by
rounding the fp32 bit pattern to 10 mantissa bits, round-to-nearest-even.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cache

import torch

from .. import validate
from ..errors import LabkitError
from ..validate import checks, ints, maybe, positive_int, tensors, text

FORMAT_NAMES = ("fp32", "tf32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")

_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
    "tf32": "tf32", "tensorfloat32": "tf32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp8_e4m3fn": "fp8_e4m3fn", "e4m3fn": "fp8_e4m3fn", "e4m3": "fp8_e4m3fn",
    "float8_e4m3fn": "fp8_e4m3fn", "torch.float8_e4m3fn": "fp8_e4m3fn",
    "fp8_e5m2": "fp8_e5m2", "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "torch.float8_e5m2": "fp8_e5m2",
}
_DTYPE_NAMES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16",
                "fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
_INT_VIEW = {32: torch.int32, 16: torch.int16, 8: torch.uint8}
_TF32_DROPPED = 13  # fp32 has 23 mantissa bits, TF32 keeps 10


@dataclass(frozen=True)
class Format:
    name: str
    dtype: torch.dtype  # the storage dtype (float32 for tf32)
    bits: int  # 1 + exponent_bits + mantissa_bits
    exponent_bits: int
    mantissa_bits: int
    max: float
    min_normal: float
    min_subnormal: float
    eps: float  # gap between 1 and the next value
    has_inf: bool  # whether any bit pattern means inf
    overflow: str  # what torch makes of a finite value beyond max: "inf", "saturates" or "nan"
    emulated: bool = False

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def overflow_threshold(self) -> float:
        """Smallest |x| that round-to-nearest would carry beyond max (ties: see max_is_odd)."""
        return self.max + self.top_ulp / 2

    @property
    def top_ulp(self) -> float:
        """The gap between values in max's binade."""
        return math.ldexp(self.eps, math.frexp(self.max)[1] - 1)

    @property
    def max_is_odd(self) -> bool:
        """Whether max's last mantissa bit is 1, so a tie at the threshold rounds up (overflows)."""
        return _pattern(self.max, self) & 1 == 1

    def as_dict(self) -> dict:
        return asdict(self)


def _storage_pattern(x: torch.Tensor, fmt_bits: int) -> torch.Tensor:
    return x.view(_INT_VIEW[fmt_bits])


def _pattern(value: float, fmt: Format) -> int:
    """The stored bit pattern of `value` (already representable) as an unsigned int."""
    storage = 32 if fmt.emulated else fmt.bits
    raw = int(_storage_pattern(torch.tensor([value], dtype=fmt.dtype), storage).item())
    raw &= (1 << storage) - 1
    return raw >> _TF32_DROPPED if fmt.emulated else raw


def _from_pattern(pattern: int, dtype: torch.dtype, storage_bits: int) -> float:
    signed = pattern - (1 << storage_bits) if storage_bits > 8 and pattern >> (storage_bits - 1) \
        else pattern
    return float(torch.tensor([signed], dtype=_INT_VIEW[storage_bits]).view(dtype).item())


@checks(x=tensors())
def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to TF32's 10 mantissa bits, round-to-nearest-even (inf/nan kept)."""
    x32 = x.to(torch.float32)
    bits = x32.view(torch.int32)
    lsb = (bits >> _TF32_DROPPED) & 1
    # adding 0x0FFF + lsb carries into bit 13 exactly when the dropped bits exceed half an ulp,
    # or equal it with an odd kept part: round half to even on the bit pattern
    rounded = ((bits + (0x0FFF + lsb)) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x32), rounded, x32)


@cache
def _build(name: str) -> Format:
    dtype = getattr(torch, _DTYPE_NAMES[name], None)
    if dtype is None:
        raise LabkitError(f"format {name!r} needs torch.{_DTYPE_NAMES[name]}, which torch "
                          f"{torch.__version__} lacks; valid here: {', '.join(available_formats())}")
    info = torch.finfo(dtype)
    mantissa = round(-math.log2(info.eps))
    if name == "tf32":
        eps = info.eps * 2**_TF32_DROPPED
        # the largest fp32 pattern with the dropped bits clear, and the smallest nonzero kept bit
        top = int(torch.tensor([info.max]).view(torch.int32).item()) & ~((1 << _TF32_DROPPED) - 1)
        fmt_max = _from_pattern(top, torch.float32, 32)
        min_sub = _from_pattern(1 << _TF32_DROPPED, torch.float32, 32)
        return Format(name="tf32", dtype=dtype, bits=1 + 8 + mantissa - _TF32_DROPPED,
                      exponent_bits=8, mantissa_bits=mantissa - _TF32_DROPPED, max=fmt_max,
                      min_normal=float(info.smallest_normal), min_subnormal=min_sub, eps=eps,
                      has_inf=_build("fp32").has_inf,
                      overflow=_overflow_behaviour(dtype, info.max, emulated=True),
                      emulated=True)
    exponent = info.bits - 1 - mantissa
    min_sub = _from_pattern(1, dtype, info.bits)  # the pattern 0...01
    inf_pattern = ((1 << exponent) - 1) << mantissa  # exponent all ones, mantissa zero
    return Format(name=name, dtype=dtype, bits=info.bits, exponent_bits=exponent,
                  mantissa_bits=mantissa, max=float(info.max),
                  min_normal=float(info.smallest_normal), min_subnormal=min_sub,
                  eps=float(info.eps),
                  has_inf=math.isinf(_from_pattern(inf_pattern, dtype, info.bits)),
                  overflow=_overflow_behaviour(dtype, float(info.max)))


def _overflow_behaviour(dtype: torch.dtype, fmt_max: float, emulated: bool = False) -> str:
    x = torch.tensor([2.0 * fmt_max, float("inf")], dtype=torch.float64)
    y = round_to_tf32(x.to(torch.float32)) if emulated else x.to(dtype)
    y = y.to(torch.float64)
    if torch.isinf(y[0]):
        return "inf"
    return "nan" if torch.isnan(y[0]) else "saturates"


def available_formats() -> tuple[str, ...]:
    """The formats this torch build has dtypes for."""
    return tuple(n for n in FORMAT_NAMES if hasattr(torch, _DTYPE_NAMES[n]))


def get_format(fmt: str | torch.dtype | Format) -> Format:
    """A format by name ('fp16', 'bf16', 'e4m3', ...), torch dtype, or Format."""
    if isinstance(fmt, Format):
        return fmt
    key = str(fmt).strip().lower().replace(" ", "_").replace("-", "_")
    name = _ALIASES.get(key) or _ALIASES.get(key.replace("fp8_", ""))
    if name is None or not isinstance(fmt, (str, torch.dtype)):
        raise LabkitError(f"unknown format {fmt!r}; valid: {', '.join(FORMAT_NAMES)}")
    return _build(name)


def _format(value, name: str) -> Format:
    """get_format, its refusal naming the caller's argument (fmt, formats[1], highlight...)."""
    try:
        return get_format(value)
    except LabkitError:
        raise LabkitError(f"unknown format {name}={value!r}; valid: {', '.join(FORMAT_NAMES)}") from None


def _formats(value, name: str) -> list[Format]:
    if isinstance(value, (str, torch.dtype, Format)):  # one format where a list belongs
        raise LabkitError(f"{name} must be a list of formats, e.g. ('fp16', 'bf16'), got {value!r}")
    return [_format(f, f"{name}[{i}]") for i, f in enumerate(validate.items(value, name, what="formats"))]


def _real(value, name: str) -> float:
    """Any real number, nan and inf included (what a format stores for them is the lesson)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabkitError(f"{name} must be a number (nan and inf allowed), got {value!r}")
    return float(value)


@checks(formats=_formats)
def format_table(formats=FORMAT_NAMES):
    """One row per format with its bits, range and epsilon, read from the running torch."""
    import pandas as pd

    rows = []
    for f in (get_format(x) for x in formats):
        rows.append({
            "format": f.name, "torch dtype": str(f.dtype).replace("torch.", "")
            + (" (matmul mode)" if f.emulated else ""),
            "bits": f.bits, "sign/exp/mantissa": f"1/{f.exponent_bits}/{f.mantissa_bits}",
            "max": f.max, "min normal": f.min_normal, "min subnormal": f.min_subnormal,
            "eps": f.eps, "has inf": f.has_inf, "overflow ->": f.overflow,
        })
    return pd.DataFrame(rows).set_index("format")


# -- device support --------------------------------------------------------------------------------


@cache
def _probe(name: str, device: str) -> str | None:
    """None when values round-trip through the format on `device`, else why not."""
    try:
        fmt = get_format(name)
        x = torch.tensor([1.5, -0.25], device=device)
        y = round_to_tf32(x) if fmt.emulated else x.to(fmt.dtype)
        back = y.to(torch.float32).cpu()
    except (RuntimeError, TypeError, NotImplementedError, AssertionError, LabkitError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None if back.tolist() == [1.5, -0.25] else "values do not round-trip"


@checks(fmt=_format, device=validate.device)
def check_format_on_device(fmt, device: str | torch.device = "cpu") -> Format:
    """The format, or a LabkitError saying this device cannot store it."""
    f = get_format(fmt)
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LabkitError(f"device {device!r} is not available here (no CUDA); valid: cpu")
    why = _probe(f.name, device)
    if why is not None:
        ok = [n for n in available_formats() if _probe(n, device) is None]
        raise LabkitError(f"format {f.name} is not supported on device {device!r} ({why}); "
                          f"valid there: {', '.join(ok)}")
    return f


# -- casting and decomposing ---------------------------------------------------------------------


@checks(x=tensors(), fmt=_format)
def cast(x: torch.Tensor, fmt) -> torch.Tensor:
    """x stored in `fmt` (a tensor of fmt's storage dtype), exactly as torch casts it."""
    f = get_format(fmt)
    if f.emulated:
        return round_to_tf32(x)
    try:
        return x.to(f.dtype)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise LabkitError(f"format {f.name} is not supported on device {str(x.device)!r}: "
                          f"{str(exc).splitlines()[0]}") from exc


@checks(stored=_real, fmt=_format)
def kind_of(stored: float, fmt) -> str:
    """'zero', 'subnormal', 'normal', 'inf' or 'nan' for a value the format holds."""
    f = get_format(fmt)
    if math.isnan(stored):
        return "nan"
    if math.isinf(stored):
        return "inf"
    if stored == 0:
        return "zero"
    return "subnormal" if abs(stored) < f.min_normal else "normal"


@checks(value=_real, fmt=_format)
def overflows(value: float, fmt) -> bool:
    """Whether |value| lies beyond what round-to-nearest can bring back to max."""
    f = get_format(fmt)
    mag = abs(value)
    if math.isnan(mag):
        return False
    return mag > f.overflow_threshold or (mag == f.overflow_threshold and f.max_is_odd)


@dataclass(frozen=True)
class Decomposition:
    format: str
    value: float  # what was asked for (a Python float, i.e. fp64)
    sign: str
    exponent: str
    mantissa: str
    stored: float  # what the format actually holds
    abs_error: float
    rel_error: float
    kind: str  # zero / subnormal / normal / inf / nan / saturated
    note: str  # exact, rounded, underflow to zero, overflow to inf, ...

    def as_dict(self) -> dict:
        return asdict(self)


@checks(fmt=_format, device=validate.device)
def decompose(value: float, fmt, device: str | torch.device = "cpu") -> Decomposition:
    """The bits `fmt` stores for `value`, the value they mean, the rounding error and its class."""
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise LabkitError(f"value {value!r} is not a number; valid: any float, e.g. 1e-5") from exc
    f = check_format_on_device(fmt, device)
    src = torch.tensor([value], dtype=torch.float64, device=device)
    stored_t = cast(src.to(torch.float32), f) if f.emulated else cast(src, f)
    stored = float(stored_t.to(torch.float64).cpu().item())
    storage = 32 if f.emulated else f.bits
    raw = int(_storage_pattern(stored_t.cpu(), storage).item()) & ((1 << storage) - 1)
    if f.emulated:
        raw >>= _TF32_DROPPED
    text = format(raw, f"0{f.bits}b")
    sign, exponent, mantissa = text[0], text[1:1 + f.exponent_bits], text[1 + f.exponent_bits:]

    kind, note = kind_of(stored, f), "exact"
    if math.isnan(value):
        note = "nan stays nan" if kind == "nan" else f"nan became {stored}"
    elif math.isinf(value) or overflows(value, f):
        if kind == "inf":
            note = "inf stays inf" if math.isinf(value) else "overflow: became inf"
        elif kind == "nan":
            note = "overflow: became nan"
        else:
            kind, note = "saturated", f"overflow: saturated at {'-' if stored < 0 else ''}max"
    elif stored == 0 and value != 0:
        note = "underflow: flushed to zero"
    elif stored != value:
        note = "rounded (subnormal: fewer bits)" if kind == "subnormal" else "rounded"

    finite = math.isfinite(value) and math.isfinite(stored)
    abs_error = abs(stored - value) if finite else math.nan
    rel_error = abs_error / abs(value) if finite and value != 0 else (0.0 if finite else math.nan)
    return Decomposition(format=f.name, value=value, sign=sign, exponent=exponent,
                         mantissa=mantissa, stored=stored, abs_error=abs_error,
                         rel_error=rel_error, kind=kind, note=note)


@checks(value=_real, formats=_formats, device=validate.device)
def decompose_table(value: float, formats=FORMAT_NAMES, device: str | torch.device = "cpu"):
    """decompose() for each format, one row each."""
    import pandas as pd

    rows = [decompose(value, f, device).as_dict() for f in formats]
    return pd.DataFrame(rows).set_index("format")


@checks(fmt=_format)
def value_from_bits(sign: str, exponent: str, mantissa: str, fmt) -> float:
    """The number a bit pattern means, by the IEEE-754 formula (fn formats: no inf, one nan).

    Normal: (-1)^s * 2^(E - bias) * (1 + M / 2^m); subnormal (E = 0): 2^(1 - bias) * M / 2^m.
    """
    f = get_format(fmt)
    for name, bits in (("sign", sign), ("exponent", exponent), ("mantissa", mantissa)):
        if not isinstance(bits, str) or set(bits) - {"0", "1"}:
            raise LabkitError(f"{name} must be a string of 0s and 1s, got {bits!r}")
    if (len(sign), len(exponent), len(mantissa)) != (1, f.exponent_bits, f.mantissa_bits):
        raise LabkitError(f"{f.name} has 1/{f.exponent_bits}/{f.mantissa_bits} sign/exponent/"
                          f"mantissa bits, got {len(sign)}/{len(exponent)}/{len(mantissa)}")
    s, e, m = int(sign, 2), int(exponent, 2), int(mantissa, 2)
    top_e, top_m = (1 << f.exponent_bits) - 1, (1 << f.mantissa_bits) - 1
    if e == top_e and (f.has_inf or m == top_m):
        if f.has_inf and m == 0:
            return -math.inf if s else math.inf
        return math.nan
    if e == 0:
        magnitude = math.ldexp(m, 1 - f.bias - f.mantissa_bits)
    else:
        magnitude = math.ldexp((1 << f.mantissa_bits) + m, e - f.bias - f.mantissa_bits)
    return -magnitude if s else magnitude


@checks(value=_real, fmt=_format)
def ulp(value: float, fmt) -> float:
    """Gap from |value| (as stored in fmt) to the next larger value of the format."""
    f = get_format(fmt)
    stored = abs(decompose(value, f).stored)
    if not math.isfinite(stored):
        return math.nan
    if stored >= f.max:
        return f.top_ulp
    raw = _pattern(stored, f)
    if f.emulated:
        return _from_pattern((raw + 1) << _TF32_DROPPED, torch.float32, 32) - stored
    return _from_pattern(raw + 1, f.dtype, f.bits) - stored


# -- shares of a tensor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeShares:
    format: str
    count: int  # finite values looked at
    underflow: float  # nonzero values that became 0
    subnormal: float  # nonzero values stored as subnormals (fewer significant bits)
    overflow: float  # values beyond max (became inf, nan, or saturated)
    rounded: float  # values in range whose stored value differs from the input
    rel_error_median: float  # over values that neither underflow nor overflow
    rel_error_mean: float
    rel_error_max: float

    def as_dict(self) -> dict:
        return asdict(self)


@checks(max_values=maybe(positive_int), seed=ints(0))
def sample_values(x: torch.Tensor, max_values: int | None = None, seed: int = 0) -> torch.Tensor:
    """The finite values of x, flattened; with max_values, a seeded sample of that many draws.

    The sample is drawn with replacement (an unbiased estimate of every share, and cheap on a
    tensor of millions); non-finite draws are then dropped.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = getattr(x, "dtype", type(x).__name__)
        raise LabkitError(f"x must be a floating-point tensor, got {kind}")
    flat = x.detach().reshape(-1)
    if max_values is not None and flat.numel() > max_values:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        flat = flat[torch.randint(0, flat.numel(), (max_values,), generator=gen).to(flat.device)]
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        raise LabkitError("x has no finite values to look at")
    # fp32 is enough: every value of every format is an fp32 value, and the rounding error of a
    # value that stays in range is exact in fp32 (the two are within a factor of 2: Sterbenz)
    return flat if flat.dtype == torch.float64 else flat.to(torch.float32)


@checks(values=tensors("float", nonempty=True, finite=True), fmt=_format)
def sample_shares(values: torch.Tensor, fmt) -> RangeShares:
    """range_shares of values already taken by sample_values (no second filtering or sampling)."""
    f = get_format(fmt)
    n = values.numel()
    stored = cast(values, f).to(values.dtype)
    mag, kept = values.abs(), stored.abs()
    # beyond the threshold, or on it when max's last bit is odd (the tie then rounds up)
    over = (mag >= f.overflow_threshold) if f.max_is_odd else (mag > f.overflow_threshold)
    under = (kept == 0) & (mag > 0)
    sub = (kept > 0) & (kept < f.min_normal)
    keep = (kept > 0) & ~over
    changed = keep & (stored != values)
    rel = ((stored - values).abs() / mag)[keep].float()
    counts = torch.stack([under.sum(), sub.sum(), over.sum(), changed.sum()]).tolist()
    has = rel.numel() > 0
    return RangeShares(
        format=f.name, count=n, underflow=counts[0] / n, subnormal=counts[1] / n,
        overflow=counts[2] / n, rounded=counts[3] / n,
        rel_error_median=rel.median().item() if has else math.nan,
        rel_error_mean=rel.mean().item() if has else math.nan,
        rel_error_max=rel.max().item() if has else math.nan,
    )


@checks(fmt=_format)
def range_shares(x: torch.Tensor, fmt, max_values: int | None = None, seed: int = 0
                 ) -> RangeShares:
    """What happens to the finite values of x stored in fmt, as shares of all of them.

    underflow: nonzero values that become 0; subnormal: nonzero values kept with fewer bits;
    overflow: values beyond max (inf, nan or saturated, as torch does it); rounded: values in
    range that change; relative errors over the values that neither underflow nor overflow.
    With max_values, the shares are estimated on a seeded sample (see sample_values).
    """
    return sample_shares(sample_values(x, max_values, seed), fmt)


@checks(formats=_formats)
def range_shares_table(x: torch.Tensor, formats=FORMAT_NAMES, max_values: int | None = None,
                       seed: int = 0):
    """range_shares() for each format (one sample shared by all), one row each."""
    import pandas as pd

    ref = sample_values(x, max_values, seed)
    rows = [sample_shares(ref, f).as_dict() for f in formats]
    return pd.DataFrame(rows).set_index("format")


@checks(fmt=_format)
def underflow_share_analytic(sigma: float, fmt="fp16") -> dict[str, float]:
    """Shares of a zero-mean normal N(0, sigma^2) that fmt flushes to zero or stores subnormal.

    |g| <= min_subnormal/2 rounds to 0: P = erf(min_subnormal / (2 sigma sqrt 2)).
    |g| < min_normal lands below the normal range: P = erf(min_normal / (sigma sqrt 2)).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 \
            or not math.isfinite(sigma):
        raise LabkitError(f"sigma={sigma!r} is not a standard deviation; valid: a number > 0")
    f = get_format(fmt)
    flush = math.erf(f.min_subnormal / 2 / (sigma * math.sqrt(2)))
    below = math.erf(f.min_normal / (sigma * math.sqrt(2)))
    return {"flush_to_zero": flush, "below_min_normal": below, "subnormal": below - flush}


def fp16_underflow_share_analytic(sigma: float) -> dict[str, float]:
    """underflow_share_analytic for fp16, the format whose narrow range loss scaling rescues."""
    return underflow_share_analytic(sigma, "fp16")


# -- the figure ------------------------------------------------------------------------------------

X_RANGE = (-50.0, 45.0)  # log10 |x|: fp32's smallest subnormal is 1.4e-45, the slider ends at 1e45
ZONE_COLOURS = {"flushes to zero": "#d62728", "subnormal (fewer bits)": "#ff9f1c",
                "normal range": "#2ca02c", "overflows": "#7b1fa2"}


def _x_range(value, name: str) -> tuple[float, float]:
    lo, hi = validate.pairs(validate.finite, validate.finite)([value], name)[0]
    if lo >= hi:
        raise LabkitError(f"{name}={value!r} must be (low, high) with low < high (log10 units)")
    return lo, hi


@checks(x=tensors("float"), bins=positive_int, x_range=_x_range)
def log_histogram(x: torch.Tensor, bins: int = 190, x_range: tuple[float, float] = X_RANGE):
    """Counts of log10|x| over the nonzero finite values, plus the number of exact zeros.

    Magnitudes outside x_range are counted in the first or last bin.
    """
    flat = x.detach().reshape(-1)
    flat = flat.to(torch.float64 if flat.dtype == torch.float64 else torch.float32)
    flat = flat[torch.isfinite(flat)]
    zeros = int((flat == 0).sum().item())
    logs = torch.log10(flat[flat != 0].abs()).clamp(*x_range)
    counts = torch.histc(logs, bins=bins, min=x_range[0], max=x_range[1]).cpu()
    edges = torch.linspace(x_range[0], x_range[1], bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    return centres, counts.tolist(), zeros


@checks(fmt=_format)
def format_zones(fmt) -> dict[str, tuple[float, float]]:
    """log10|x| intervals where fmt flushes to zero, stores subnormals, is normal, overflows."""
    f = get_format(fmt)
    lo, hi = X_RANGE
    return {
        "flushes to zero": (lo, math.log10(f.min_subnormal / 2)),
        "subnormal (fewer bits)": (math.log10(f.min_subnormal / 2), math.log10(f.min_normal)),
        "normal range": (math.log10(f.min_normal), math.log10(f.overflow_threshold)),
        "overflows": (math.log10(f.overflow_threshold), hi),
    }


def _ticks(lo: float, hi: float, every: int = 10):
    vals = list(range(int(math.ceil(lo / every) * every), int(hi) + 1, every))
    return vals, [f"1e{v}" for v in vals]


@checks(x=maybe(tensors("float")), formats=_formats, highlight=maybe(_format),
        value=maybe(_real), bins=positive_int, title=maybe(text), name=text)
def range_figure(x: torch.Tensor | None = None, formats=FORMAT_NAMES, *, highlight="fp16",
                 value: float | None = None, bins: int = 190, title: str | None = None,
                 name: str = "values"):
    """A histogram of log10|x| above, each format's zones as bars below, one format shaded.

    Always the same traces in the same order (histogram, marker, one bar trace per zone), so a
    widget can update it in place.
    """
    from plotly.subplots import make_subplots

    formats = [get_format(f).name for f in formats]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32],
                        vertical_spacing=0.06)
    centres, counts, zeros = log_histogram(x, bins) if x is not None else ([], [], 0)
    total = sum(counts) + zeros
    share = [100 * c / total for c in counts] if total else []
    fig.add_bar(x=centres, y=share, name=name, marker_color="#1f77b4", row=1, col=1,
                width=(X_RANGE[1] - X_RANGE[0]) / bins, hovertemplate="1e%{x:.1f}: %{y:.3g}%")
    marker = [] if value is None or not math.isfinite(value) or value == 0 else \
        [math.log10(abs(value))] * 2
    fig.add_scatter(x=marker, y=[0, max(share or [1])] if marker else [], mode="lines",
                    name="value", line={"color": "black", "dash": "dash"}, row=1, col=1)
    zones = {f: format_zones(f) for f in formats}
    for zone, colour in ZONE_COLOURS.items():
        spans = [zones[f][zone] for f in formats]
        fig.add_bar(y=formats, x=[hi - lo for lo, hi in spans], base=[lo for lo, _ in spans],
                    customdata=spans, orientation="h", name=zone, marker_color=colour, row=2,
                    col=1, hovertemplate="%{y}: |x| from 1e%{customdata[0]:.1f} to "
                    "1e%{customdata[1]:.1f}<extra>" + zone + "</extra>")
    fig.update_layout(shapes=highlight_shapes(highlight), barmode="overlay",
                      title=title or f"Where the values of {name} fall, and what each format keeps",
                      template="plotly_white", height=560, bargap=0)
    vals, text = _ticks(*X_RANGE)
    fig.update_xaxes(range=list(X_RANGE), tickvals=vals, ticktext=text)
    fig.update_xaxes(title_text="|x| (log10 scale, same units as x)", row=2, col=1)
    fig.update_yaxes(title_text="share of values (%)", row=1, col=1)
    fig.update_yaxes(title_text="format", row=2, col=1, autorange="reversed")
    return fig


def highlight_shapes(fmt) -> list[dict]:
    """Shaded rectangles on the histogram for fmt's underflow, subnormal and overflow zones."""
    if fmt is None:
        return []
    fmt = _format(fmt, "fmt").name
    shapes = []
    for zone, (lo, hi) in format_zones(fmt).items():
        if zone == "normal range":
            continue
        shapes.append({"type": "rect", "xref": "x", "yref": "y domain", "x0": lo, "x1": hi,
                       "y0": 0, "y1": 1, "fillcolor": ZONE_COLOURS[zone], "opacity": 0.15,
                       "line": {"width": 0}, "layer": "below", "name": f"{fmt}: {zone}"})
    return shapes
