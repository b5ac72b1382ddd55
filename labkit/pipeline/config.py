"""The capstone's configuration: plain TOML files a learner edits, checked before anything runs.

A config has one table per stage ([data], [pretrain], [sft], ...). The shipped ones live in
`labkit/pipeline/configs/` (smoke, cpu, gpu); a learner's own file may start with
`base = "cpu"` and set only the keys it changes. Every key is checked: an unknown key, a wrong
type or a value out of range is one LabkitError that names the key and what is valid, so a
typo ("sft.lrr") never runs silently with the default.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED = ("smoke", "cpu", "gpu")

SCHEDULES = ("constant", "linear", "cosine", "nanogpt", "wsd", "inverse_sqrt", "cosine_restarts")
PREFERENCE_METHODS = ("dpo", "ipo", "hinge", "orpo", "simpo")  # paired methods of lab 08
QUANT_SCHEMES = ("nf4", "llm_int8", "gptq", "rtn", "awq")


@dataclass(frozen=True)
class Key:
    """One config key: its kind and the values it may take."""

    kind: str  # "int", "float", "bool", "str", "choice", "choices" (a list of choices)
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    valid: tuple = ()
    help: str = ""

    def describe(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(v) for v in self.valid)
        if self.kind == "choices":
            return "a list of " + ", ".join(repr(v) for v in self.valid)
        if self.kind == "str":
            return "a string"
        if self.kind == "int_list":
            return f"a non-empty list of integers in [{_shown(self.low)}, {_shown(self.high)}]"
        word = "an integer" if self.kind == "int" else "a number"
        low, high = _shown(self.low), _shown(self.high)
        if self.low is not None and self.high is not None:
            return f"{word} in {'(' if self.low_open else '['}{low}, {high}]"
        if self.low is not None:
            return f"{word} {'>' if self.low_open else '>='} {low}"
        return word


def _shown(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _int(low=None, high=None, help=""):
    return Key("int", low, high, help=help)


def _num(low=None, high=None, low_open=False, help=""):
    return Key("float", low, high, low_open, help=help)


SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "seed": _int(0, 2**31 - 1, "seeds every stage"),
        "threads": _int(1, 256, "torch CPU threads (1: CPU seconds ~ wall seconds)"),
        "device": Key("choice", valid=("auto", "cpu", "cuda"), help="auto: cuda when present"),
    },
    "data": {
        "warc": Key("str", help="'shipped' (the world's crawl) or a path to a .warc(.gz)"),
        "max_records": _int(0, None, "HTML pages taken from the crawl; 0: all"),
        "quality_filters": Key("bool", help="Gopher/C4/FineWeb rules and the edu-score filter"),
        "dedup": Key("bool", help="exact and MinHash near-duplicate removal"),
        "edu_threshold": _num(0.0, 5.0, help="FineWeb-Edu keeps predicted score >= 3"),
    },
    "corpus": {
        "topup_documents": _int(0, 16000, "seeded slice of the shipped clean corpus added to "
                                          "the crawl's pages (the crawl alone is ~200 pages)"),
    },
    "tokenizer": {
        "vocab_size": _int(300, 65536, "byte-level BPE vocabulary, special tokens included"),
    },
    "pretrain": {
        "d_model": _int(8, 8192), "n_layer": _int(1, 128), "n_head": _int(1, 128),
        "context": _int(16, 8192, "the model's maximum length (SFT and answers need ~256)"),
        "seq_len": _int(8, 8192, "tokens per training window"),
        "batch_size": _int(1, 4096), "steps": _int(1, None), "lr": _num(0.0, 1.0, True),
        "warmup_steps": _int(0, None), "schedule": Key("choice", valid=SCHEDULES),
        "min_lr_ratio": _num(0.0, 1.0),
    },
    "sft": {
        "dataset": Key("choice", valid=("curated", "noisy"),
                       help="curated: 1,000 clean conversations; noisy: 10,000 with defects"),
        "method": Key("choice", valid=("lora", "full")),
        "steps": _int(1, None), "batch_size": _int(1, 4096), "lr": _num(0.0, 1.0, True),
        "warmup_steps": _int(0, None), "lora_r": _int(1, 1024), "lora_alpha": _num(0.0, None, True),
    },
    "dpo": {
        "method": Key("choice", valid=PREFERENCE_METHODS),
        "steps": _int(1, None), "batch_size": _int(1, 4096), "lr": _num(0.0, 1.0, True),
        "warmup_steps": _int(0, None), "beta": _num(0.0, None, True),
        "nll_weight": _num(0.0, None, help="RPO: NLL on the chosen answers (the shipped recipe: 1)"),
        "lora_r": _int(1, 1024), "lora_alpha": _num(0.0, None, True),
    },
    "eval": {
        "heldout_docs": _int(1, 300, "held-out documents for bits per byte"),
        "knowledge_items": _int(1, 399, "knowledge-test questions (seeded sample of 399)"),
        "sft_questions": _int(1, 184, "held-out world questions answered in chat"),
        "preference_pairs": _int(1, 596, "held-out preference pairs"),
        "code_tasks": _int(1, 40), "code_samples": _int(1, 200, "n of pass@k"),
        "pass_k": Key("int_list", 1, 200, help="the k of pass@k, each <= code_samples"),
        "max_new_tokens": _int(1, 1024), "contamination_n": _int(1, 50, "word n-gram length"),
    },
    "quant": {
        "schemes": Key("choices", valid=QUANT_SCHEMES),
        "bits": _int(2, 8, "bits of rtn / gptq / awq"),
        "group_size": _int(0, 4096, "0: one scale per output channel"),
        "calib_samples": _int(1, 4096), "calib_seq_len": _int(8, 8192),
        "knowledge_items": _int(1, 399, "of eval's knowledge questions, per quantized model"),
    },
}


def _check_value(section: str, name: str, key: Key, value):
    where = f"{section}.{name}"
    bad = LabkitError(f"config key {where} = {value!r} is not valid; valid: {key.describe()}"
                      + (f" ({key.help})" if key.help else ""))
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if key.kind == "str":
        if not isinstance(value, str) or not value:
            raise bad
        return value
    if key.kind == "choice":
        if value not in key.valid:
            raise bad
        return value
    if key.kind == "choices":
        if not isinstance(value, list) or not value or any(v not in key.valid for v in value) \
                or len(set(value)) != len(value):
            raise LabkitError(f"config key {where} = {value!r} is not valid; valid: a non-empty "
                              f"list without repeats of {', '.join(map(repr, key.valid))}")
        return list(value)
    if key.kind == "int_list":
        if not isinstance(value, list) or not value:
            raise LabkitError(f"config key {where} = {value!r} is not valid; valid: a non-empty "
                              "list of integers")
        return [_check_value(section, name, Key("int", key.low, key.high), v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if key.kind == "int" and not isinstance(value, int):
        raise bad
    if not math.isfinite(value) or (key.low is not None and (
            value < key.low or (key.low_open and value == key.low))) or (
            key.high is not None and value > key.high):
        raise bad
    return int(value) if key.kind == "int" else float(value)


def _cross_checks(cfg: dict) -> None:
    """Rules that relate two keys, each naming both."""
    p, e, q = cfg["pretrain"], cfg["eval"], cfg["quant"]
    if p["d_model"] % p["n_head"]:
        raise LabkitError(f"config keys pretrain.d_model = {p['d_model']} and pretrain.n_head = "
                          f"{p['n_head']}: d_model must be a multiple of n_head; valid: an "
                          "n_head that divides d_model")
    if p["seq_len"] > p["context"]:
        raise LabkitError(f"config key pretrain.seq_len = {p['seq_len']} exceeds pretrain.context"
                          f" = {p['context']}; valid: seq_len <= context")
    for stage in ("pretrain", "sft", "dpo"):
        if cfg[stage]["warmup_steps"] > cfg[stage]["steps"]:
            raise LabkitError(f"config key {stage}.warmup_steps = {cfg[stage]['warmup_steps']} "
                              f"exceeds {stage}.steps = {cfg[stage]['steps']}; valid: 0..steps")
    if max(e["pass_k"]) > e["code_samples"]:
        raise LabkitError(f"config key eval.pass_k = {e['pass_k']} asks for k above "
                          f"eval.code_samples = {e['code_samples']}; valid: each k <= code_samples")
    if q["calib_seq_len"] > p["context"]:
        raise LabkitError(f"config key quant.calib_seq_len = {q['calib_seq_len']} exceeds "
                          f"pretrain.context = {p['context']}; valid: calib_seq_len <= context")
    group = q["group_size"]
    if group and any(s in q["schemes"] for s in ("gptq", "rtn", "awq")):
        widths = _linear_inputs(p["d_model"])
        bad = [w for w in widths if w % group]
        if bad:
            raise LabkitError(f"config key quant.group_size = {group} does not divide the inputs "
                              f"{', '.join(map(str, bad))} of some linear layers (yours and the "
                              f"shipped model's: {', '.join(map(str, widths))}); valid: 0 (per "
                              "channel) or a divisor of all of them, e.g. 32")
    if e["max_new_tokens"] >= p["context"]:
        raise LabkitError(f"config key eval.max_new_tokens = {e['max_new_tokens']} leaves no room "
                          f"for a prompt in pretrain.context = {p['context']}; valid: "
                          "max_new_tokens < context")


def _linear_inputs(d_model: int) -> list[int]:
    """The input sizes of the linear layers of your model (d_model and the MLP width) and of the
    shipped base model: a quantization group must divide each of them."""
    import json

    from ..models import ModelShape, causal_lm_config
    from ..samples import sample_path

    mine = causal_lm_config(8, ModelShape(d_model=d_model, n_layer=1, n_head=1))
    shipped = json.loads(sample_path("models/base/config.json").read_text())
    return sorted({mine.hidden_size, mine.intermediate_size, shipped["hidden_size"],
                   shipped["intermediate_size"]})


def validate(raw: dict, source: str = "config") -> dict:
    """A complete config, every key checked; unknown sections or keys are refused."""
    if not isinstance(raw, dict):
        raise LabkitError(f"{source}: a config is a table of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise LabkitError(f"{source}: unknown section(s) {unknown}; valid: {', '.join(SCHEMA)}")
    out: dict[str, dict] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section)
        if not isinstance(given, dict):
            raise LabkitError(f"{source}: section [{section}] is missing; it needs the keys "
                              f"{', '.join(keys)}")
        extra = sorted(set(given) - set(keys))
        if extra:
            raise LabkitError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in extra)}"
                              f"; valid keys of [{section}]: {', '.join(keys)}")
        missing = [k for k in keys if k not in given]
        if missing:
            raise LabkitError(f"{source}: missing key(s) {', '.join(f'{section}.{k}' for k in missing)}"
                              " (start the file with base = \"cpu\" to inherit them)")
        out[section] = {k: _check_value(section, k, key, given[k]) for k, key in keys.items()}
    _cross_checks(out)
    return out


def _merge(base: dict, top: dict) -> dict:
    merged = copy.deepcopy(base)
    for section, values in top.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def _read(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise LabkitError(f"config {path}: base files form a loop ({' -> '.join(map(str, seen))})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise LabkitError(f"config {path} is not valid TOML: {exc}") from None
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise LabkitError(f"config {path}: base = {base!r}; valid: 'smoke', 'cpu', 'gpu' or a path")
    return _merge(_read(_locate(base, path.parent), (*seen, path)), raw)


def _locate(name: str, relative_to: Path | None = None) -> Path:
    if name in SHIPPED:
        return CONFIG_DIR / f"{name}.toml"
    path = Path(name).expanduser()
    if not path.is_absolute() and relative_to is not None and not path.exists():
        path = relative_to / path
    if not path.is_file():
        raise LabkitError(f"config {name!r} is neither a shipped config ({', '.join(SHIPPED)}) "
                          "nor an existing .toml file")
    return path


def parse_override(text: str) -> tuple[str, object]:
    """'sft.lr=1e-3' -> ("sft.lr", 0.001): the value is read as TOML (strings may be bare)."""
    if "=" not in text:
        raise LabkitError(f"override {text!r}: write section.key=value, e.g. sft.lr=1e-3")
    key, value = (part.strip() for part in text.split("=", 1))
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word: a string such as sft.dataset=noisy
    return key, parsed


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise LabkitError(f"override {dotted!r}: valid: section.key=value, e.g. sft.lr=1e-3")
        if section not in SCHEMA:
            raise LabkitError(f"override {dotted!r}: unknown section {section!r}; valid: "
                              f"{', '.join(SCHEMA)}")
        raw.setdefault(section, {})[key] = value
    return raw


def load_config(config: str | Path | dict = "cpu", overrides: dict | None = None) -> dict:
    """A checked config from a shipped name ('smoke', 'cpu', 'gpu'), a TOML path or a dict,
    with `overrides` ({"sft.lr": 1e-3}) applied last."""
    if isinstance(config, dict):
        raw, source = copy.deepcopy(config), "config"
        base = raw.pop("base", None)
        if base is not None:
            raw = _merge(_read(_locate(base)), raw)
    else:
        path = _locate(str(config))
        raw, source = _read(path), str(config)
    return validate(apply_overrides(raw, overrides), source)


def describe_keys() -> str:
    """Every key with what it takes: the reference a learner edits a config with."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for name, key in keys.items():
            lines.append(f"  {name}: {key.describe()}" + (f"  -- {key.help}" if key.help else ""))
    return "\n".join(lines)
