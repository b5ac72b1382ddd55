"""Figures of lab 03: pipeline timelines (recorded or ideal), memory per GPU, DDP gradient norms."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from ..errors import LabkitError
from ..validate import checks, maybe, positive, records
from .planner import MemoryPlan, timeline_bubble

_EVENTS = records("stage", "kind", "microbatch", "start", "end")

COMPONENTS = ("parameters", "gradients", "optimizer", "activations")
COLORS = {
    "parameters": "#4C78A8",
    "gradients": "#F58518",
    "optimizer": "#54A24B",
    "activations": "#B279A2",
    "F": "#4C78A8",
    "B": "#F58518",
}


def timeline_traces(events: Sequence[dict]) -> dict[str, dict]:
    """Bar arrays of a Gantt chart, one set per kind ("F", "B"): y = stage, base = start,
    x = duration; the text is the micro-batch (".chunk" added when stages hold several)."""
    chunked = any(e.get("chunk", 0) for e in events)
    out = {}
    for kind in ("F", "B"):
        mine = [e for e in events if e["kind"] == kind]
        out[kind] = {
            "y": [f"stage {e['stage']}" for e in mine],
            "base": [e["start"] for e in mine],
            "x": [e["end"] - e["start"] for e in mine],
            "text": [
                f"{e['microbatch']}.{e.get('chunk', 0)}" if chunked else str(e["microbatch"])
                for e in mine
            ],
        }
    return out


@checks(events=_EVENTS)
def pipeline_timeline_figure(
    events: Sequence[dict], title: str = "Pipeline timeline", time_unit: str = "ms"
) -> go.Figure:
    """Gantt chart: one row per stage, a bar per forward (F) and backward (B) of a micro-batch.
    The idle fraction (bubble) measured from the bars goes into the title."""
    fig = go.Figure()
    for kind, arrays in timeline_traces(events).items():
        fig.add_bar(
            orientation="h",
            name="forward" if kind == "F" else "backward",
            marker_color=COLORS[kind],
            textposition="inside",
            insidetextanchor="middle",
            marker_line_width=1,
            marker_line_color="white",
            **arrays,
        )
    stages = sorted({e["stage"] for e in events})
    bubble = timeline_bubble(events) if events else 0.0
    fig.update_layout(
        title=f"{title} (idle fraction {bubble:.1%})",
        barmode="overlay",
        height=120 + 45 * len(stages),
        xaxis_title=f"time ({time_unit})",
        yaxis_title="pipeline stage",
        legend_title="pass",
        margin={"l": 70, "r": 20, "t": 50, "b": 45},
    )
    fig.update_yaxes(
        categoryorder="array", categoryarray=[f"stage {s}" for s in stages], autorange="reversed"
    )
    return fig


def memory_bars(plan: MemoryPlan, label: str | None = None) -> dict:
    return {"label": label or plan.layout.label(), **plan.breakdown()}


def memory_breakdown_figure(
    bars: Sequence[dict | MemoryPlan],
    limit: float | None = None,
    unit: str = "GB",
    title: str = "Memory per GPU",
) -> go.Figure:
    """Stacked bars of parameters, gradients, optimizer state and activations per GPU.
    `bars` are MemoryPlans (GB) or dicts {label, parameters, ...} in `unit`; `limit` draws the
    GPU's memory as a dashed line (taken from the first plan when not given)."""
    if isinstance(bars, (str, bytes, dict)) or not isinstance(bars, Sequence) or not bars:
        raise LabkitError(f"bars must be a non-empty list of MemoryPlans or dicts, got {bars!r}"[:200])
    rows = [memory_bars(b) if isinstance(b, MemoryPlan) else b for b in bars]
    records("label")(rows, "bars")
    maybe(positive)(limit, "limit")
    if limit is None and bars and isinstance(bars[0], MemoryPlan):
        limit = bars[0].cluster.gpu_memory_gb
    fig = go.Figure()
    labels = [r["label"] for r in rows]
    for part in COMPONENTS:
        fig.add_bar(
            name=part, x=labels, y=[r.get(part, 0.0) for r in rows], marker_color=COLORS[part]
        )
    fig.update_layout(
        barmode="stack",
        title=title,
        xaxis_title="layout",
        yaxis_title=f"memory per GPU ({unit})",
        legend_title="held for",
        margin={"l": 60, "r": 20, "t": 50, "b": 45},
    )
    if limit is not None:
        fig.add_hline(
            y=limit,
            line_dash="dash",
            line_color="crimson",
            annotation_text=f"GPU memory {limit:g} {unit}",
            annotation_position="top left",
        )
    return fig


def zero_memory_figure(result: dict) -> go.Figure:
    """Measured bytes per rank (from the zero worker's result) next to the ZeRO formula, in kB
    (1 kB = 1e3 bytes). Parameters are those held while a step runs (between forward and
    backward), where ZeRO-2 and ZeRO-3 differ."""
    if not isinstance(result, dict) or not {"modes", "world", "parameters"} <= set(result):
        raise LabkitError("result must be the zero worker's result (a dict with modes, world and "
                          f"parameters), got {type(result).__name__}")
    names = {"ddp": "DDP (ZeRO-0)", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
    bars = []
    for mode, res in result["modes"].items():
        m, f = res["measured"], res["formula"]
        bars.append(
            {
                "label": f"{names.get(mode, mode)} measured",
                "parameters": m["parameters_in_step"] / 1e3,
                "gradients": m["gradients"] / 1e3,
                "optimizer": m["optimizer"] / 1e3,
            }
        )
        bars.append(
            {
                "label": f"{names.get(mode, mode)} formula",
                **{k: f[k] / 1e3 for k in ("parameters", "gradients", "optimizer")},
            }
        )
    return memory_breakdown_figure(
        bars,
        unit="kB",
        title=(
            f"Bytes per rank, {result['world']} ranks, "
            f"{result['parameters']:,} parameters (fp32 Adam)"
        ),
    )


@checks(results=records("rank", "grad_norm_before", "grad_norm_after"))
def ddp_grad_norm_figure(results: Sequence[dict]) -> go.Figure:
    """Each rank's gradient norm per step before the all-reduce (its own batch) and after
    (the average every rank applies): the lines meet after."""
    fig = go.Figure()
    for res in results:
        steps = list(range(len(res["grad_norm_before"])))
        fig.add_scatter(
            x=steps,
            y=res["grad_norm_before"],
            mode="lines+markers",
            name=f"rank {res['rank']} before",
            line_dash="dot",
        )
        fig.add_scatter(
            x=steps,
            y=res["grad_norm_after"],
            mode="lines+markers",
            name=f"rank {res['rank']} after",
        )
    fig.update_layout(
        title="Gradient norm per rank, before and after DDP's all-reduce",
        xaxis_title="step",
        yaxis_title="gradient L2 norm (no unit)",
    )
    return fig
