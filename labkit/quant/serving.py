"""Deployment memory: does a 7B or 70B model fit a GPU, at which precision, with what context?

Serving memory = weights + KV cache (+ activations and runtime overhead, kept as headroom).

- weights: n_params * bits per weight / 8, where a quantized format also stores its scales:
  int4 with group size g keeps an fp16 scale and a 4-bit zero point per group, 4 + 20/g bits.
- KV cache: every layer keeps a key and a value vector per kv head for each token of each
  sequence: 2 * layers * kv_heads * head_dim * context * batch * bytes per value. Grouped-query
  attention (Llama-2/3 70B: 8 kv heads for 64 query heads) divides it by 8.

GB here are 10**9 bytes; GPU capacities are the marketed sizes in the same unit, and a model
fits when it needs at most `headroom` (90%) of them, the rest going to activations, the CUDA
context and fragmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import validate
from ..errors import LabkitError

GB = 1e9


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_params: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int


# Parameter counts and shapes from the Llama 2 paper / released configs.
PRESETS = {
    "7B": ModelSpec("Llama-2-7B", 6_738_415_616, 32, 32, 32, 128),
    "13B": ModelSpec("Llama-2-13B", 13_015_864_320, 40, 40, 40, 128),
    "8B": ModelSpec("Llama-3-8B (GQA)", 8_030_261_248, 32, 32, 8, 128),
    "70B": ModelSpec("Llama-2-70B (GQA)", 68_976_648_192, 80, 64, 8, 128),
}

# Marketed memory in GB.
GPUS = {
    "T4 16GB": 16,
    "L4 24GB": 24,
    "A10 24GB": 24,
    "RTX 4090 24GB": 24,
    "A100 40GB": 40,
    "A100 80GB": 80,
    "H100 80GB": 80,
    "H200 141GB": 141,
}

# bits per stored weight, and the bits of scale/zero stored per group of weights
PRECISIONS = {
    "fp32": (32, 0),
    "bf16": (16, 0),
    "fp16": (16, 0),
    "int8": (8, 0),  # one scale per output row: < 0.01 bit per weight at these sizes
    "int4": (4, 16 + 4),  # fp16 scale + 4-bit zero per group (GPTQ/AWQ layout)
    "nf4": (4, 8),  # double-quantized absmax: 8 bits per block of 64 (+ fp32 per 256 blocks)
}


def model_spec(model) -> ModelSpec:
    """A ModelSpec from a preset name ("7B", "13B", "8B", "70B") or a ModelSpec itself."""
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, str) and model.upper() in PRESETS:
        spec = PRESETS[model.upper()]
    else:
        raise LabkitError(
            f"model={model!r} is not known; valid: {', '.join(PRESETS)} or a ModelSpec"
        )
    for field in ("n_params", "n_layers", "n_heads", "n_kv_heads", "head_dim"):
        value = getattr(spec, field)
        if not isinstance(value, int) or value < 1:
            raise LabkitError(f"ModelSpec.{field}={value!r} must be a positive integer")
    if spec.n_heads % spec.n_kv_heads:
        raise LabkitError(
            f"n_kv_heads={spec.n_kv_heads} must divide n_heads={spec.n_heads} (grouped-query)"
        )
    return spec


def bits_per_weight(precision: str, group_size: int = 128) -> float:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise LabkitError(f"precision={precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    validate.positive_int(group_size, "group_size")
    bits, group_bits = PRECISIONS[precision]
    if precision == "nf4":
        return bits + group_bits / 64 + 32 / (64 * 256)
    return bits + group_bits / group_size


def weight_bytes(n_params: int, precision: str = "fp16", group_size: int = 128) -> float:
    validate.positive_int(n_params, "n_params")
    return n_params * bits_per_weight(precision, group_size) / 8


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    context: int,
    batch: int = 1,
    bytes_per_value: float = 2,
) -> float:
    """2 (K and V) * layers * kv_heads * head_dim * context * batch * bytes per value."""
    for name, value in (
        ("n_layers", n_layers),
        ("n_kv_heads", n_kv_heads),
        ("head_dim", head_dim),
        ("context", context),
        ("batch", batch),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabkitError(f"{name}={value!r} must be a positive integer")
    validate.positive(bytes_per_value, "bytes_per_value")
    return 2 * n_layers * n_kv_heads * head_dim * context * batch * bytes_per_value


@dataclass(frozen=True)
class ServingEstimate:
    model: str
    precision: str
    context: int
    batch: int
    weights_gb: float
    kv_cache_gb: float
    total_gb: float


def serving_memory(
    model="7B",
    precision: str = "fp16",
    context: int = 4096,
    batch: int = 1,
    kv_bytes: float = 2,
    group_size: int = 128,
) -> ServingEstimate:
    """Weights + KV cache of serving `model` at `precision` for `batch` sequences of `context`."""
    spec = model_spec(model)
    w = weight_bytes(spec.n_params, precision, group_size)
    kv = kv_cache_bytes(spec.n_layers, spec.n_kv_heads, spec.head_dim, context, batch, kv_bytes)
    return ServingEstimate(spec.name, precision, context, batch, w / GB, kv / GB, (w + kv) / GB)


def gpu_fit_table(
    model="7B",
    context: int = 4096,
    batch: int = 1,
    precisions=("fp32", "fp16", "int8", "int4"),
    kv_bytes: float = 2,
    group_size: int = 128,
    headroom: float = 0.9,
):
    """A pandas table: one row per precision, memory in GB and a True/False column per GPU."""
    import pandas as pd

    validate.fraction(headroom, "headroom", low_open=True)
    precisions = validate.texts(precisions, "precisions")
    rows = []
    for precision in precisions:
        est = serving_memory(model, precision, context, batch, kv_bytes, group_size)
        row = asdict(est)
        for gpu, capacity in GPUS.items():
            row[gpu] = est.total_gb <= capacity * headroom
        rows.append(row)
    return pd.DataFrame(rows)


def smallest_gpu(total_gb: float, headroom: float = 0.9) -> str | None:
    """The smallest GPU of the table that holds total_gb, or None."""
    fitting = [(cap, name) for name, cap in GPUS.items() if total_gb <= cap * headroom]
    return min(fitting)[1] if fitting else None


def serving_figure(
    model="7B",
    context: int = 4096,
    batch: int = 1,
    precisions=("fp32", "fp16", "int8", "int4"),
    kv_bytes: float = 2,
    group_size: int = 128,
    headroom: float = 0.9,
):
    """Stacked bars (weights + KV cache, GB) per precision, with a line per GPU size."""
    import plotly.graph_objects as go

    table = gpu_fit_table(model, context, batch, precisions, kv_bytes, group_size, headroom)
    fig = go.Figure()
    fig.add_bar(x=table.precision, y=table.weights_gb, name="weights")
    fig.add_bar(x=table.precision, y=table.kv_cache_gb, name="KV cache")
    # Neighbouring sizes (16 and 24 GB, 40 and 48) sit a few pixels apart once the axis must
    # reach a 70B model's fp32 weights: their labels alternate sides so they never overlap.
    for i, capacity in enumerate(sorted(set(GPUS.values()))):
        names = ", ".join(n for n, c in GPUS.items() if c == capacity)
        fig.add_hline(
            y=capacity * headroom,
            line_dash="dot",
            line_color="gray",
            annotation_text=f"{names} ({headroom:.0%} usable)",
            annotation_position="top left" if i % 2 == 0 else "top right",
        )
    spec = model_spec(model)
    fig.update_layout(
        barmode="stack",
        title=f"Serving {spec.name}: context {context}, batch {batch}",
        xaxis_title="weight precision (storage format)",
        yaxis_title="memory (GB = 1e9 bytes)",
        legend_title="memory for",
    )
    return fig
