"""The 3D memory planner: how much memory each GPU needs for a model under DP x TP x PP x ZeRO.

Units: 1 GB = 1e9 bytes (the unit of the ZeRO paper's tables: 7B params x 16 bytes = 112 GB).

Model states, mixed-precision Adam (bytes per parameter): bf16 weights 2 + bf16 gradients 2 +
fp32 master weights 4 + Adam moments 8 = 16 (20 with an fp32 gradient-accumulation buffer,
counted with the gradients). ZeRO shards them over the DP ranks N:
ZeRO-1 2P + 2P + 12P/N; ZeRO-2 2P + (2P + 12P)/N; ZeRO-3 (2P + 2P + 12P)/N.
Tensor parallelism splits every weight matrix t ways and pipeline parallelism gives each stage
its layers, so P above is the parameter count of the heaviest pipeline stage divided by t
(the Ultra-Scale Playbook's calculator leaves PP out and does not divide parameters by TP).

Activations per layer and micro-batch (Korthikanti et al. 2022, 16-bit, a GPT block):
s*b*h*(34 + 5*a*s/h) bytes; with TP t: s*b*h*(10 + 24/t + 5*a*s/(h*t)); with sequence
parallelism everything is divided by t. Selective recomputation drops the 5*a*s/h attention
term; full recomputation keeps only each layer's input (2*s*b*h). A pipeline stage holds its
layers' activations for every micro-batch in flight: m with GPipe, p with 1F1B.

Bubble (idle fraction of a step): (p-1)/(m+p-1) for GPipe and 1F1B, (p-1)/(v*m+p-1) for
interleaved 1F1B with v model chunks per GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import LabkitError
from ..validate import among, flag, nonnegative, positive, positive_int, records

GB = 1e9
SCHEDULES = ("gpipe", "1f1b", "interleaved")
RECOMPUTE = ("none", "selective", "full")


class PlanError(LabkitError):
    """A model, cluster or layout the planner cannot plan; the message says what is valid."""


def _checked(check, value, name: str):
    """A shared check, its refusal raised as the planner's PlanError."""
    try:
        return check(value, name)
    except LabkitError as exc:
        raise PlanError(str(exc)) from None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int | None = None  # grouped-query attention; None = heads
    ffn: int | None = None  # None = 4 * hidden
    vocab: int = 50257
    seq: int = 2048
    mlp: str = "gelu"  # "gelu": GPT's 2 matrices with biases; "swiglu": Llama's 3, no biases
    tied: bool = True  # input embedding shared with the output layer

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def ffn_size(self) -> int:
        return self.ffn or 4 * self.hidden


# Published shapes: Llama 3.2 1B, Llama 2 7B/13B, Llama 3 70B, Llama 3.1 405B; "tiny" is the
# model the lab trains on CPU (labkit.parallel.SETTINGS["cpu"]).
PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", 2, 64, 4, 4, 160, 512, 32, "swiglu", True),
    "1B": ModelSpec("1B", 16, 2048, 32, 8, 8192, 128256, 8192, "swiglu", True),
    "7B": ModelSpec("7B", 32, 4096, 32, 32, 11008, 32000, 4096, "swiglu", False),
    "13B": ModelSpec("13B", 40, 5120, 40, 40, 13824, 32000, 4096, "swiglu", False),
    "70B": ModelSpec("70B", 80, 8192, 64, 8, 28672, 128256, 8192, "swiglu", False),
    "405B": ModelSpec("405B", 126, 16384, 128, 8, 53248, 128256, 8192, "swiglu", False),
}


@dataclass(frozen=True)
class Cluster:
    gpus_per_node: int = 8
    nodes: int = 1
    gpu_memory_gb: float = 80.0

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Layout:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    zero: int = 0  # 0 = plain DP; 1 optimizer, 2 + gradients, 3 + parameters sharded
    micro_batch: int = 1  # sequences per micro-batch
    micro_batches: int = 8  # per optimizer step, per pipeline (m)
    recompute: str = "selective"
    sequence_parallel: bool = True  # only matters with tp > 1
    schedule: str = "1f1b"
    chunks: int = 2  # model chunks per GPU (v), interleaved schedule only
    fp32_grads: bool = False  # fp32 gradient accumulation: 20 bytes per parameter, not 16

    def label(self) -> str:
        return f"DP{self.dp} TP{self.tp} PP{self.pp} ZeRO-{self.zero}"


@dataclass
class MemoryPlan:
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    error: str | None = None  # set instead of raising, for widgets
    parameters: int = 0  # whole model
    parameters_per_gpu: int = 0  # heaviest pipeline stage / tp, before ZeRO
    parameters_gb: float = 0.0
    gradients_gb: float = 0.0
    optimizer_gb: float = 0.0
    activations_gb: float = 0.0
    bubble: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return self.parameters_gb + self.gradients_gb + self.optimizer_gb + self.activations_gb

    @property
    def fits(self) -> bool:
        return self.error is None and self.total_gb <= self.cluster.gpu_memory_gb

    @property
    def gpus(self) -> int:
        return self.layout.dp * self.layout.tp * self.layout.pp

    def breakdown(self) -> dict[str, float]:
        return {
            "parameters": self.parameters_gb,
            "gradients": self.gradients_gb,
            "optimizer": self.optimizer_gb,
            "activations": self.activations_gb,
        }

    def summary(self) -> str:
        if self.error:
            return f"cannot plan: {self.error}"
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"{self.model.name} on {self.gpus} GPUs ({self.layout.label()}): "
            f"{self.total_gb:.1f} GB per GPU {verdict} in {self.cluster.gpu_memory_gb:g} GB; "
            f"pipeline bubble {self.bubble:.1%}"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "total_gb": self.total_gb, "fits": self.fits}


def model_preset(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in PRESETS:
        raise PlanError(f"model={name!r} is not a preset; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def layer_parameters(m: ModelSpec) -> int:
    h, kv_dim, f = m.hidden, m.kv * (m.hidden // m.heads), m.ffn_size
    attn = 2 * h * h + 2 * h * kv_dim  # q, o and the (grouped) k, v projections
    if m.mlp == "swiglu":
        return attn + 3 * h * f + 2 * h  # gate, up, down; two RMSNorm weights
    # GPT: biases on q,k,v,o and both MLP matrices, two LayerNorms (weight + bias)
    return attn + (2 * h + 2 * kv_dim) + 2 * h * f + f + h + 4 * h


def parameter_count(m: ModelSpec) -> int:
    """All parameters. For a GPT (gelu, ffn=4h, kv=heads, tied) this is exactly
    h*v + L*(12h^2 + 13h); Llama models add the untied output layer and a final RMSNorm."""
    _validate_model(m)
    total = m.vocab * m.hidden * (1 if m.tied else 2) + m.layers * layer_parameters(m)
    return total + (m.hidden if m.mlp == "swiglu" else 0)


def stage_parameters(m: ModelSpec, pp: int) -> list[int]:
    """Parameters of each pipeline stage: layers split as evenly as possible, the embedding on
    the first stage, the output layer (a copy, if tied) and final norm on the last."""
    base, extra = divmod(m.layers, pp)
    stages = [(base + (i < extra)) * layer_parameters(m) for i in range(pp)]
    emb = m.vocab * m.hidden
    stages[0] += emb
    if pp > 1 or not m.tied:
        stages[-1] += emb
    stages[-1] += m.hidden if m.mlp == "swiglu" else 0
    return stages


def model_state_bytes(params: float, dp: int = 1, zero: int = 0, fp32_grads: bool = False) -> dict:
    """Bytes per GPU of weights, gradients and optimizer state for mixed-precision Adam."""
    _checked(nonnegative, params, "params"), _checked(positive_int, dp, "dp")
    _checked(among(0, 1, 2, 3), zero, "zero"), _checked(flag, fp32_grads, "fp32_grads")
    weights, grads, optim = 2.0 * params, (6.0 if fp32_grads else 2.0) * params, 12.0 * params
    if zero >= 1:
        optim /= dp
    if zero >= 2:
        grads /= dp
    if zero >= 3:
        weights /= dp
    return {"parameters": weights, "gradients": grads, "optimizer": optim}


def activation_bytes_per_layer(
    seq: int,
    batch: int,
    hidden: int,
    heads: int,
    tp: int = 1,
    sequence_parallel: bool = False,
    recompute: str = "none",
) -> float:
    """Korthikanti et al. (2022): activation bytes one transformer layer keeps for backward."""
    for name, value in (("seq", seq), ("batch", batch), ("hidden", hidden), ("heads", heads), ("tp", tp)):
        _checked(positive_int, value, name)
    _checked(flag, sequence_parallel, "sequence_parallel")
    _checked(among(*RECOMPUTE), recompute, "recompute")
    s, b, h, a, t = seq, batch, hidden, heads, tp
    attention = 5 * a * s / (h * t)  # softmax input/output and dropout mask: the s^2 terms
    if recompute == "full":
        return 2 * s * b * h / (t if sequence_parallel else 1)
    if recompute == "selective":
        attention = 0.0
    if sequence_parallel:
        return s * b * h * (34 / t + attention)
    return s * b * h * (10 + 24 / t + attention)


def bubble_fraction(stages: int, micro_batches: int, chunks: int = 1) -> float:
    """Idle fraction of a pipeline step: (p-1)/(v*m + p-1); v=1 for GPipe and 1F1B."""
    for name, value in (("stages", stages), ("micro_batches", micro_batches), ("chunks", chunks)):
        _checked(positive_int, value, name)
    p, m, v = stages, micro_batches, chunks
    return (p - 1) / (v * m + p - 1)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _validate_model(model: ModelSpec) -> None:
    if not isinstance(model, ModelSpec):
        raise PlanError(f"model must be a ModelSpec or a preset name ({', '.join(PRESETS)}), "
                        f"got {type(model).__name__}")
    for name, value in (
        ("layers", model.layers),
        ("hidden", model.hidden),
        ("heads", model.heads),
        ("vocab", model.vocab),
        ("seq", model.seq),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PlanError(f"model {name}={value!r}: must be a positive whole number")
    for name, value in (("kv_heads", model.kv_heads), ("ffn", model.ffn)):
        if value is not None:
            _checked(positive_int, value, f"model {name}")
    _checked(flag, model.tied, "model tied")
    if model.hidden % model.heads:
        raise PlanError(
            f"hidden={model.hidden} is not divisible by heads={model.heads}; "
            f"valid heads: {', '.join(map(str, _divisors(model.hidden)[:12]))}, ..."
        )
    if model.heads % model.kv:
        raise PlanError(
            f"kv_heads={model.kv} does not divide heads={model.heads}; "
            f"valid kv_heads: {', '.join(map(str, _divisors(model.heads)))}"
        )
    if model.mlp not in ("gelu", "swiglu"):
        raise PlanError(f"mlp={model.mlp!r}: valid values are 'gelu' and 'swiglu'")


def validate(model: ModelSpec, cluster: Cluster, layout: Layout) -> None:
    """Raise PlanError naming the first bad value and what would be valid."""
    _validate_model(model)
    if not isinstance(cluster, Cluster):
        raise PlanError(f"cluster must be a Cluster, got {type(cluster).__name__}")
    if not isinstance(layout, Layout):
        raise PlanError(f"layout must be a Layout, got {type(layout).__name__}")
    for name, value in (("gpus_per_node", cluster.gpus_per_node), ("nodes", cluster.nodes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PlanError(f"{name}={value!r}: a cluster needs at least 1 (a whole number)")
    _checked(positive, cluster.gpu_memory_gb, "gpu_memory_gb")
    for name in ("dp", "tp", "pp", "micro_batch", "micro_batches", "chunks"):
        value = getattr(layout, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PlanError(f"{name}={value!r}: must be a whole number >= 1")
    for name in ("sequence_parallel", "fp32_grads"):
        _checked(flag, getattr(layout, name), name)
    if model.heads % layout.tp:
        raise PlanError(
            f"tp={layout.tp} does not divide heads={model.heads} (each GPU needs whole "
            f"heads); valid tp: {', '.join(map(str, _divisors(model.heads)))}"
        )
    if layout.pp > model.layers:
        raise PlanError(
            f"pp={layout.pp} is larger than layers={model.layers} (each stage needs "
            f"a layer); valid pp: 1 to {model.layers}"
        )
    if layout.dp * layout.tp * layout.pp != cluster.gpus:
        raise PlanError(
            f"dp*tp*pp = {layout.dp}*{layout.tp}*{layout.pp} = "
            f"{layout.dp * layout.tp * layout.pp} but the cluster has {cluster.gpus} "
            f"GPUs ({cluster.nodes} nodes x {cluster.gpus_per_node}); "
            "make the product equal the GPU count"
        )
    if isinstance(layout.zero, bool) or layout.zero not in (0, 1, 2, 3):
        raise PlanError(f"zero={layout.zero!r}: valid ZeRO stages are 0, 1, 2, 3")
    if layout.recompute not in RECOMPUTE:
        raise PlanError(f"recompute={layout.recompute!r}: valid values are {', '.join(RECOMPUTE)}")
    if layout.schedule not in SCHEDULES:
        raise PlanError(f"schedule={layout.schedule!r}: valid values are {', '.join(SCHEDULES)}")
    if layout.schedule == "interleaved" and layout.pp > 1:
        p, v, m = layout.pp, layout.chunks, layout.micro_batches
        if not isinstance(v, int) or v < 2:
            raise PlanError(
                f"chunks={v!r}: the interleaved schedule needs 2 or more chunks per GPU"
            )
        if m % p:
            raise PlanError(
                f"micro_batches={m} is not a multiple of pp={p}, as the interleaved "
                f"schedule needs; valid: {p}, {2 * p}, {3 * p}, ..."
            )
        if p * v > model.layers:
            raise PlanError(
                f"pp*chunks = {p}*{v} = {p * v} exceeds layers={model.layers}; "
                "each model chunk needs a layer"
            )


def memory_plan(model: ModelSpec, cluster: Cluster, layout: Layout) -> MemoryPlan:
    """Memory per GPU of `model` trained on `cluster` with `layout`; raises PlanError."""
    validate(model, cluster, layout)
    lay = layout
    p, m, t = lay.pp, lay.micro_batches, lay.tp
    params = parameter_count(model)
    per_gpu = max(stage_parameters(model, p)) / t
    states = model_state_bytes(per_gpu, lay.dp, lay.zero, lay.fp32_grads)
    sp = lay.sequence_parallel and t > 1
    per_layer = activation_bytes_per_layer(
        model.seq, lay.micro_batch, model.hidden, model.heads, t, sp, lay.recompute
    )
    layers_here = -(-model.layers // p)  # the first stage is the fullest and holds the most
    v = lay.chunks if lay.schedule == "interleaved" else 1
    if p == 1:
        in_flight = 1.0  # micro-batches run one after another; one set of activations at a time
    elif lay.schedule == "gpipe":
        in_flight = float(m)
    else:  # 1F1B keeps p micro-batches alive; interleaving adds (p-1)/v (Korthikanti eq. 5)
        in_flight = min(float(m), p + (p - 1) / v if v > 1 else float(p))
    notes = []
    if t > cluster.gpus_per_node:
        notes.append(f"TP={t} spans nodes: its all-reduces cross the slower inter-node network")
    if lay.zero >= 2 and p > 1:
        notes.append(
            "ZeRO-2/3 with pipeline parallelism re-reduces gradients every micro-batch; "
            "Megatron and DeepSpeed pair PP with ZeRO-1"
        )
    if lay.zero > 0 and lay.dp == 1:
        notes.append("ZeRO shards over DP ranks: with DP=1 it saves nothing")
    if p > 1 and m < p:
        notes.append(f"only {m} micro-batches for {p} stages: most of each step is bubble")
    return MemoryPlan(
        model=model,
        cluster=cluster,
        layout=layout,
        parameters=params,
        parameters_per_gpu=int(round(per_gpu)),
        parameters_gb=states["parameters"] / GB,
        gradients_gb=states["gradients"] / GB,
        optimizer_gb=states["optimizer"] / GB,
        activations_gb=per_layer * layers_here * in_flight / GB,
        bubble=bubble_fraction(p, m, v),
        notes=notes,
    )


def plan(model: ModelSpec | str, cluster: Cluster, layout: Layout) -> MemoryPlan:
    """`memory_plan` for widgets: bad input comes back as `.error` (a message), never raised.
    A cluster or layout of the wrong type is replaced by the default in the returned plan, so
    its properties (`gpus`, `fits`, `summary()`) still answer."""
    try:
        spec = model_preset(model) if isinstance(model, str) else model
        return memory_plan(spec, cluster, layout)
    except PlanError as exc:
        spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model), 1, 1, 1)
        return MemoryPlan(model=spec, cluster=cluster if isinstance(cluster, Cluster) else Cluster(),
                          layout=layout if isinstance(layout, Layout) else Layout(), error=str(exc))


def suggest_layout(
    model: ModelSpec | str,
    cluster: Cluster,
    micro_batch: int = 1,
    micro_batches: int = 8,
    recompute: str = "selective",
    schedule: str = "1f1b",
    sequence_parallel: bool = True,
    fp32_grads: bool = False,
) -> MemoryPlan:
    """The cheapest layout that fits: fewest whole nodes first (up to cluster.nodes), then the
    smallest bubble, then the least communication (smaller TP, lower ZeRO stage, fewer stages).

    TP stays inside a node. The returned plan's cluster has the number of nodes it uses. If no
    layout fits, the plan that needs the least memory comes back with `fits == False` and a note.
    """
    spec = model_preset(model) if isinstance(model, str) else model
    base = Layout(
        micro_batch=micro_batch,
        micro_batches=micro_batches,
        recompute=recompute,
        schedule=schedule,
        sequence_parallel=sequence_parallel,
        fp32_grads=fp32_grads,
    )
    # one layout that uses every GPU as data parallel: names any bad argument before the search
    validate(spec, cluster, replace(base, dp=cluster.gpus if isinstance(cluster, Cluster) else 1))
    smallest = None
    for nodes in range(1, cluster.nodes + 1):
        used = replace(cluster, nodes=nodes)
        fitting = []
        for tp in _divisors(spec.heads):
            if tp > cluster.gpus_per_node or used.gpus % tp:
                continue
            for pp in _divisors(used.gpus // tp):
                if pp > spec.layers:
                    break
                dp = used.gpus // (tp * pp)
                for zero in (0, 1, 2, 3) if dp > 1 else (0,):
                    layout = replace(base, dp=dp, tp=tp, pp=pp, zero=zero)
                    try:
                        candidate = memory_plan(spec, used, layout)
                    except PlanError:
                        continue  # e.g. the interleaved schedule's divisibility rules
                    if candidate.fits:
                        fitting.append(candidate)
                    elif smallest is None or candidate.total_gb < smallest.total_gb:
                        smallest = candidate
        if fitting:
            return min(
                fitting,
                key=lambda c: (
                    round(c.bubble, 9),
                    c.layout.tp,
                    c.layout.zero,
                    c.layout.pp,
                    c.total_gb,
                ),
            )
    if smallest is None:
        validate(spec, cluster, replace(base, dp=cluster.gpus))  # names the bad input
        return plan(spec, cluster, replace(base, dp=cluster.gpus))
    smallest.notes.append(
        f"no layout on up to {cluster.gpus} GPUs fits {spec.name} in "
        f"{cluster.gpu_memory_gb:g} GB per GPU; this one needs the least"
    )
    return smallest


def ideal_schedule(
    stages: int,
    micro_batches: int,
    schedule: str = "1f1b",
    chunks: int = 2,
    forward: float = 1.0,
    backward: float = 2.0,
) -> list[dict]:
    """The ideal timeline (no communication time) of one pipeline step: one event per forward
    ("F") and backward ("B") of each micro-batch on each stage, with start and end times in
    units of `forward`. Interleaved 1F1B follows Megatron-LM's order: each GPU holds `chunks`
    model chunks, visited in groups of `stages` micro-batches."""
    p, m = stages, micro_batches
    _checked(positive, forward, "forward"), _checked(positive, backward, "backward")
    if schedule not in SCHEDULES:
        raise PlanError(f"schedule={schedule!r}: valid values are {', '.join(SCHEDULES)}")
    if any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in (p, m)):
        raise PlanError(f"stages={p!r}, micro_batches={m!r}: both must be whole numbers >= 1")
    v = chunks if schedule == "interleaved" else 1
    if schedule == "interleaved" and (not isinstance(v, int) or v < 2):
        raise PlanError(f"chunks={v!r}: the interleaved schedule needs 2 or more chunks per GPU")
    if schedule == "interleaved" and m % p:
        raise PlanError(
            f"micro_batches={m} is not a multiple of stages={p}, as the interleaved "
            f"schedule needs; valid: {p}, {2 * p}, {3 * p}, ..."
        )
    orders = []
    for s in range(p):
        if schedule == "gpipe":
            order = [("F", i, 0) for i in range(m)] + [("B", i, 0) for i in range(m)]
        else:

            def fwd(k):
                return ("F", (k // (p * v)) * p + k % p, (k // p) % v)

            def bwd(k):
                return ("B", (k // (p * v)) * p + k % p, v - 1 - (k // p) % v)

            total = m * v
            warm = min(p - s - 1 if v == 1 else (p - s - 1) * 2 + (v - 1) * p, total)
            order = [fwd(k) for k in range(warm)]
            for i in range(total - warm):
                order += [fwd(warm + i), bwd(i)]
            order += [bwd(k) for k in range(total - warm, total)]
        orders.append(order)

    last = p * v - 1  # the last virtual stage (chunk v-1 on stage p-1)
    end: dict[tuple, float] = {}
    free = [0.0] * p
    nxt = [0] * p
    events = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(p):
            while nxt[s] < len(orders[s]):
                kind, mb, c = orders[s][nxt[s]]
                vs = c * p + s
                if kind == "F":
                    deps = [("F", mb, vs - 1)] if vs > 0 else []
                else:
                    deps = [("F", mb, vs)] + ([("B", mb, vs + 1)] if vs < last else [])
                if any(d not in end for d in deps):
                    break
                start = max([free[s]] + [end[d] for d in deps])
                stop = start + (forward if kind == "F" else backward) / v
                end[(kind, mb, vs)] = free[s] = stop
                events.append(
                    {
                        "stage": s,
                        "microbatch": mb,
                        "chunk": c,
                        "kind": kind,
                        "start": start,
                        "end": stop,
                    }
                )
                nxt[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - every order above is deadlock-free
            raise RuntimeError(f"{schedule} schedule deadlocked at {nxt}")
    return events


def timeline_bubble(events: list[dict]) -> float:
    """Idle fraction of a timeline: 1 - busy time / (stages x makespan)."""
    events = _checked(records("stage", "start", "end"), events, "events")
    if any(not (e["end"] >= e["start"]) for e in events) or max(e["end"] for e in events) <= min(
            e["start"] for e in events):
        raise PlanError("events must have end >= start and a timeline longer than 0")
    stages = {e["stage"] for e in events}
    t0 = min(e["start"] for e in events)
    span = max(e["end"] for e in events) - t0
    busy = sum(e["end"] - e["start"] for e in events)
    return 1 - busy / (len(stages) * span)
