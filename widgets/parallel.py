"""Lab 03 explorers: the pipeline bubble, and the 3D-parallel memory planner.

Both wire ipywidgets controls to labkit.parallel and update a plotly FigureWidget in place.
`pipeline_bubble_widget()` and `planner_widget()` return explorers that display themselves in
a notebook; their `.controls`, `.figure` and `.status` are there for tests and for curious
learners.
"""

from __future__ import annotations

import html
from dataclasses import replace

import ipywidgets as W
import plotly.graph_objects as go

from labkit.parallel.figures import (
    memory_breakdown_figure,
    pipeline_timeline_figure,
    timeline_traces,
)
from labkit.parallel.planner import (
    PRESETS,
    Cluster,
    Layout,
    ModelSpec,
    PlanError,
    bubble_fraction,
    ideal_schedule,
    plan,
    suggest_layout,
    timeline_bubble,
)

_WIDE = {"description_width": "initial"}
_WRAP = W.Layout(flex_flow="row wrap")  # rows of controls wrap instead of overflowing the cell


def _error(message: str) -> str:
    return f"<span style='color:#b00020'><b>cannot compute:</b> {html.escape(message)}</span>"


class _Explorer:
    widget: W.Widget

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class PipelineBubbleExplorer(_Explorer):
    """Stages, micro-batches and schedule -> the ideal timeline of one step and its bubble."""

    def __init__(
        self, stages: int = 4, micro_batches: int = 8, schedule: str = "1f1b", chunks: int = 2
    ):
        self.controls = {
            "stages": W.IntSlider(
                stages, min=1, max=8, description="pipeline stages p (GPUs)", style=_WIDE
            ),
            "micro_batches": W.IntSlider(
                micro_batches, min=1, max=32, description="micro-batches per step m", style=_WIDE
            ),
            "schedule": W.Dropdown(
                options=[("GPipe", "gpipe"), ("1F1B", "1f1b"), ("interleaved 1F1B", "interleaved")],
                value=schedule,
                description="schedule",
                style=_WIDE,
            ),
            "chunks": W.IntSlider(
                chunks,
                min=2,
                max=4,
                description="model chunks per GPU v (interleaved)",
                style=_WIDE,
            ),
        }
        self.status = W.HTML()
        self.figure = go.FigureWidget(
            pipeline_timeline_figure(
                ideal_schedule(stages, micro_batches, "gpipe"),
                title="Ideal pipeline step",
                time_unit="forward passes of one micro-batch",
            )
        )
        for c in self.controls.values():
            c.observe(self.update, names="value")
        self.widget = W.VBox(
            [
                W.HBox([self.controls["stages"], self.controls["micro_batches"]], layout=_WRAP),
                W.HBox([self.controls["schedule"], self.controls["chunks"]], layout=_WRAP),
                self.status,
                self.figure,
            ]
        )
        self.update()

    def update(self, *_):
        p, m = self.controls["stages"].value, self.controls["micro_batches"].value
        schedule, v = self.controls["schedule"].value, self.controls["chunks"].value
        self.controls["chunks"].disabled = schedule != "interleaved"
        try:
            events = ideal_schedule(p, m, schedule, chunks=v)
        except PlanError as exc:
            self.status.value = _error(str(exc))
            with self.figure.batch_update():
                for trace in self.figure.data:
                    trace.update(x=[], y=[], base=[], text=[])
            return
        arrays = timeline_traces(events)
        v = v if schedule == "interleaved" else 1
        formula = bubble_fraction(p, m, v)
        measured = timeline_bubble(events)
        with self.figure.batch_update():
            for trace, kind in zip(self.figure.data, ("F", "B")):
                trace.update(**arrays[kind])
            self.figure.layout.title.text = (
                f"Ideal pipeline step: {p} stages, {m} micro-batches (idle fraction {measured:.1%})"
            )
            self.figure.layout.height = 120 + 45 * p
            self.figure.layout.yaxis.categoryarray = [f"stage {s}" for s in range(p)]
        vm = f"{v}&middot;{m}" if v > 1 else f"{m}"
        in_flight = m if schedule == "gpipe" else min(m, p)
        self.status.value = (
            f"bubble (p&minus;1)/({vm}+p&minus;1) = {p - 1}/{v * m + p - 1} = "
            f"<b>{formula:.1%}</b> of each step idle (measured on the timeline: {measured:.1%}); "
            f"the first stage holds activations of up to {in_flight} micro-batch(es). "
            "Backward takes 2 forward times."
        )


def pipeline_bubble_widget(**kwargs) -> PipelineBubbleExplorer:
    return PipelineBubbleExplorer(**kwargs)


MODEL_FIELDS = {  # field: (label with unit, attribute of ModelSpec)
    "layers": "layers L",
    "hidden": "hidden size h",
    "heads": "attention heads a",
    "kv_heads": "KV heads",
    "ffn": "FFN size",
    "vocab": "vocabulary v (tokens)",
    "seq": "sequence s (tokens)",
}


DEFAULT_CLUSTER = Cluster(gpus_per_node=8, nodes=8, gpu_memory_gb=80.0)
# opens on a 3D layout that fits: TP inside each node, 4 pipeline stages, 2 data-parallel replicas
DEFAULT_LAYOUT = Layout(dp=2, tp=8, pp=4, zero=1)


class PlannerExplorer(_Explorer):
    """Model, cluster and DP/TP/PP/ZeRO layout -> memory per GPU, fits or not, bubble."""

    def __init__(
        self, model: str = "70B", cluster: Cluster | None = None, layout: Layout | None = None
    ):
        cluster = cluster or DEFAULT_CLUSTER
        layout = layout or DEFAULT_LAYOUT
        self._base = PRESETS[model]
        self._hold = False
        c = {
            "model": W.Dropdown(
                options=[*PRESETS, "custom"], value=model, description="model", style=_WIDE
            )
        }
        for name, label in MODEL_FIELDS.items():
            c[name] = W.IntText(description=label, style=_WIDE, layout={"width": "210px"})
        c["gpus_per_node"] = W.IntText(
            cluster.gpus_per_node, description="GPUs per node", style=_WIDE
        )
        c["nodes"] = W.IntText(cluster.nodes, description="nodes", style=_WIDE)
        c["gpu_memory_gb"] = W.FloatText(
            cluster.gpu_memory_gb, description="GPU memory (GB, 1e9 B)", style=_WIDE
        )
        c["dp"] = W.IntText(layout.dp, description="DP (model replicas)", style=_WIDE)
        c["tp"] = W.IntText(layout.tp, description="TP (GPUs per layer)", style=_WIDE)
        c["pp"] = W.IntText(layout.pp, description="PP (pipeline stages)", style=_WIDE)
        c["zero"] = W.Dropdown(
            options=[
                ("0: none", 0),
                ("1: optimizer", 1),
                ("2: + gradients", 2),
                ("3: + parameters", 3),
            ],
            value=layout.zero,
            description="ZeRO stage (sharded over DP)",
            style=_WIDE,
        )
        c["micro_batch"] = W.IntText(
            layout.micro_batch, description="micro-batch (sequences)", style=_WIDE
        )
        c["micro_batches"] = W.IntText(
            layout.micro_batches, description="micro-batches per step", style=_WIDE
        )
        c["recompute"] = W.Dropdown(
            options=["none", "selective", "full"],
            value=layout.recompute,
            description="activation recomputation",
            style=_WIDE,
        )
        c["sequence_parallel"] = W.Checkbox(
            layout.sequence_parallel, description="sequence parallel (with TP)"
        )
        self.controls = c
        self.suggest_button = W.Button(description="suggest cheapest layout", icon="magic")
        self.suggest_button.on_click(self.suggest)
        self.status = W.HTML()
        self.plan = plan(self._base, cluster, layout)
        self.figure = go.FigureWidget(
            memory_breakdown_figure([self.plan], limit=cluster.gpu_memory_gb)
        )
        self._fill_model(self._base)
        c["model"].observe(self._preset_chosen, names="value")
        for name in MODEL_FIELDS:
            c[name].observe(self._model_edited, names="value")
        for name, ctl in c.items():
            if name != "model" and name not in MODEL_FIELDS:
                ctl.observe(self.update, names="value")
        box = W.VBox
        self.widget = box(
            [
                W.HTML("<b>model</b>"),
                W.HBox([c["model"]]),
                W.HBox([c[n] for n in ("layers", "hidden", "heads", "kv_heads")], layout=_WRAP),
                W.HBox([c[n] for n in ("ffn", "vocab", "seq")], layout=_WRAP),
                W.HTML("<b>cluster</b>"),
                W.HBox([c["gpus_per_node"], c["nodes"], c["gpu_memory_gb"]], layout=_WRAP),
                W.HTML("<b>layout</b>"),
                W.HBox([c["dp"], c["tp"], c["pp"], c["zero"]], layout=_WRAP),
                W.HBox(
                    [c["micro_batch"], c["micro_batches"], c["recompute"], c["sequence_parallel"]],
                    layout=_WRAP,
                ),
                self.suggest_button,
                self.status,
                self.figure,
            ]
        )
        self.update()

    def _fill_model(self, spec: ModelSpec):
        self._hold = True
        try:
            for name in MODEL_FIELDS:
                value = getattr(spec, name)
                self.controls[name].value = (
                    value
                    if value is not None
                    else (spec.kv if name == "kv_heads" else spec.ffn_size)
                )
        finally:
            self._hold = False

    def _preset_chosen(self, change):
        if change["new"] in PRESETS:
            self._base = PRESETS[change["new"]]
            self._fill_model(self._base)
            old = self.layout()
            fitted = nearest_valid_layout(self._base, self.cluster(), old)
            if fitted is not None and fitted != old:
                # the layout was chosen for another model (tp=8 for 4 heads...): a new preset
                # opens on the closest layout that suits it instead of on an error
                self._set_layout(fitted)
                self.update()
                self.status.value += (f"<br>&bull; {html.escape(old.label())} does not suit "
                                      f"{html.escape(self._base.name)}: changed to "
                                      f"{html.escape(fitted.label())}")
                return
        self.update()

    def _set_layout(self, layout: Layout):
        self._hold = True
        try:
            for name in ("dp", "tp", "pp"):
                self.controls[name].value = getattr(layout, name)
        finally:
            self._hold = False

    def _model_edited(self, _):
        if self._hold:
            return
        if self.controls["model"].value != "custom":
            self._hold = True
            self.controls["model"].value = "custom"  # edits make a custom model
            self._hold = False
        self.update()

    def model_spec(self) -> ModelSpec:
        name = self.controls["model"].value
        if name in PRESETS:
            return PRESETS[name]
        values = {n: self.controls[n].value for n in MODEL_FIELDS}
        return ModelSpec("custom", mlp=self._base.mlp, tied=self._base.tied, **values)

    def cluster(self) -> Cluster:
        c = self.controls
        return Cluster(c["gpus_per_node"].value, c["nodes"].value, c["gpu_memory_gb"].value)

    def layout(self) -> Layout:
        c = self.controls
        return Layout(
            dp=c["dp"].value,
            tp=c["tp"].value,
            pp=c["pp"].value,
            zero=c["zero"].value,
            micro_batch=c["micro_batch"].value,
            micro_batches=c["micro_batches"].value,
            recompute=c["recompute"].value,
            sequence_parallel=c["sequence_parallel"].value,
        )

    def update(self, *_):
        if self._hold:
            return
        self.plan = p = plan(self.model_spec(), self.cluster(), self.layout())
        parts = p.breakdown()
        with self.figure.batch_update():
            for trace in self.figure.data:
                trace.x = [p.layout.label()]
                trace.y = [0.0 if p.error else parts[trace.name]]
            line = self.figure.layout.shapes[0]
            line.y0 = line.y1 = p.cluster.gpu_memory_gb
            self.figure.layout.annotations[0].text = f"GPU memory {p.cluster.gpu_memory_gb:g} GB"
            self.figure.layout.annotations[0].y = p.cluster.gpu_memory_gb
            self.figure.layout.title.text = (
                f"Memory per GPU: {p.model.name}, {p.gpus} GPUs"
                if not p.error
                else "Memory per GPU: (invalid input)"
            )
        if p.error:
            self.status.value = _error(p.error)
            return
        verdict = (
            "<span style='color:#1a7f37'><b>fits</b></span>"
            if p.fits
            else "<span style='color:#b00020'><b>does not fit</b></span>"
        )
        notes = "".join(f"<br>&bull; {html.escape(n)}" for n in p.notes)
        self.status.value = (
            f"{_count(p.parameters)} parameters; {_count(p.parameters_per_gpu)} per GPU "
            f"before ZeRO. Total <b>{p.total_gb:.3g} GB</b> per GPU: {verdict} in "
            f"{p.cluster.gpu_memory_gb:g} GB. Pipeline bubble {p.bubble:.1%}.{notes}"
        )

    def suggest(self, *_):
        spec, cluster, lay = self.model_spec(), self.cluster(), self.layout()
        try:
            best = suggest_layout(
                spec,
                cluster,
                micro_batch=lay.micro_batch,
                micro_batches=lay.micro_batches,
                recompute=lay.recompute,
                sequence_parallel=lay.sequence_parallel,
            )
        except PlanError as exc:
            self.status.value = _error(str(exc))
            return
        if best.error:
            self.status.value = _error(best.error)
            return
        self._hold = True
        try:
            for name in ("dp", "tp", "pp", "zero"):
                self.controls[name].value = getattr(best.layout, name)
            self.controls["nodes"].value = best.cluster.nodes
        finally:
            self._hold = False
        self.update()
        if not best.fits:
            self.status.value += (
                f"<br><span style='color:#b00020'>{html.escape(best.notes[-1])}</span>"
            )


def nearest_valid_layout(model: ModelSpec, cluster: Cluster, layout: Layout) -> Layout | None:
    """`layout` itself when the planner accepts it for `model`; else the same layout with the
    largest TP and PP that divide the current ones and suit the model, DP taking the GPUs they
    free; None when nothing of that kind is valid."""
    if not plan(model, cluster, layout).error:
        return layout
    gpus = cluster.gpus_per_node * cluster.nodes
    for pp in sorted((d for d in range(1, layout.pp + 1) if layout.pp % d == 0), reverse=True):
        for tp in sorted((d for d in range(1, layout.tp + 1) if layout.tp % d == 0), reverse=True):
            if gpus % (tp * pp):
                continue
            candidate = replace(layout, dp=gpus // (tp * pp), tp=tp, pp=pp)
            if not plan(model, cluster, candidate).error:
                return candidate
    return None


def _count(n: float) -> str:
    """A parameter count people read: 127,296 / 6.74 B."""
    return f"{n:,.0f}" if n < 1e6 else f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def planner_widget(**kwargs) -> PlannerExplorer:
    return PlannerExplorer(**kwargs)
