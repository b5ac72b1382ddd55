"""Quantization explorers: the size / quality / speed trade-off, and the memory to serve a model.

`TradeoffExplorer`: scheme, bits and group-size controls -> one configuration's stored size,
held-out perplexity, knowledge-test accuracy and decoding latency, read from a cache of measured
rows (`TradeoffBench.measure`), drawn on a size-vs-perplexity Pareto plot with the selected point
highlighted. A combination not in the cache is measured when the learner presses the button,
with a progress bar; an invalid one (bits outside 2..8, a group size that does not divide a
layer's inputs, a scheme that has a single bit width) says why and what is valid.

`ServingCalculator`: a model preset (7B/8B/13B/70B) or a custom shape, a precision, the context
length and the batch -> weights + KV cache memory (labkit.quant.serving) and the GPUs it fits,
the figure updated in place.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go

from labkit.errors import LabkitError
from labkit.quant import (
    GPUS,
    PRESETS,
    gpu_fit_table,
)
from labkit.quant.figures import pareto_figure, pareto_front
from labkit.quant.serving import ModelSpec, model_spec, serving_figure
from labkit.quant.tradeoff import (  # noqa: F401  (re-exported: the lab and tests import them here)
    CALIBRATED,
    COLUMNS,
    FLOOR_PCT,
    FP32,
    GROUP_SIZES,
    MAX_BITS,
    MIN_BITS,
    SCHEMES,
    TradeoffBench,
    _one_thread,
    combo_problem,
    config_key,
    config_label,
    decode_latency,
    dequantized_copy,
    tradeoff_table,
)

_STYLE = {"description_width": "190px"}
_LAYOUT = W.Layout(width="470px")


def _message(kind: str, text: str) -> str:
    colour = {"error": "#b42318", "info": "#475467", "ok": "#1a7f37"}[kind]
    return f'<div style="color:{colour}">{html.escape(text)}</div>'


class TradeoffExplorer:
    """Scheme x bits x group size -> size, perplexity, accuracy, latency on a Pareto plot.

    `table`: rows already measured (TradeoffBench.measure rows, fp32 among them). `bench` (or a
    `measure_fn(scheme, bits, group_size, progress) -> row`) measures the rest on demand; with
    a bench, `in_features` (for the group-size check) comes from its model.
    """

    def __init__(self, table=None, *, bench: TradeoffBench | None = None,
                 measure_fn: Callable | None = None, in_features: Iterable[int] | None = None,
                 has_calib: bool | None = None, scheme: str = "rtn", bits: int = 4,
                 group_size: int | None = None, device: str = "cpu"):
        if measure_fn is None and bench is not None:
            measure_fn = bench.measure
        self.measure_fn = measure_fn
        if in_features is None:
            if bench is None:
                raise LabkitError("give in_features (the linear layers' input sizes) or a bench")
            in_features = bench.in_features
        self.in_features = sorted(set(int(d) for d in in_features))
        if has_calib is None:
            has_calib = bench is None or bench.calib is not None
        self.has_calib = bool(has_calib)
        self.device = device
        self.cache: dict[tuple, dict] = {}
        for row in (table.to_dict("records") if isinstance(table, pd.DataFrame) else table or []):
            self.cache[config_key(row["scheme"], row["bits"], _group(row["group_size"]))] = row
        if (FP32, 32, None) not in self.cache:
            if measure_fn is None:
                raise LabkitError("the table needs an fp32 row (the baseline), or give a bench")
            self.cache[(FP32, 32, None)] = measure_fn(FP32, 32, None, None)

        self.scheme = W.Dropdown(options=[(v, k) for k, v in SCHEMES.items()], value=scheme,
                                 description="scheme", style=_STYLE, layout=_LAYOUT)
        self.bits = W.BoundedIntText(value=bits, min=1, max=32, description="bits per weight (bits)",
                                     style=_STYLE, layout=_LAYOUT)
        self.group = W.Dropdown(
            options=[("per output channel", None)]
            + [(f"{g} weights per scale", g) for g in GROUP_SIZES if g],
            value=group_size, description="group size (weights)", style=_STYLE, layout=_LAYOUT)
        self.controls = [self.scheme, self.bits, self.group]
        self.button = W.Button(description="measure this combination", icon="play",
                               layout=W.Layout(width="250px"))
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="progress",
                                        layout=W.Layout(width="470px", visibility="hidden"))
        self.message = W.HTML()
        self.readout = W.HTML()
        self.table_html = W.HTML()

        self.figure = go.FigureWidget(pareto_figure(
            self.plot_frame(), quality="y",
            quality_title="perplexity increase over fp32 (%, log scale)"))
        self.figure.add_scatter(x=[], y=[], mode="markers", name="selected",
                                marker={"size": 20, "color": "#d62728", "symbol": "star"})
        self.figure.data[0].hovertemplate = (
            "<b>%{customdata[0]}</b><br>%{x:.3f} MB stored<br>perplexity %{customdata[1]:.4f} "
            "(%{customdata[2]:+.3f}%)<br>knowledge acc %{customdata[3]:.3f}<br>"
            "%{customdata[4]:.1f} ms/token<extra></extra>")
        self.figure.update_layout(height=480, template="plotly_white", yaxis_type="log")
        self._drawn = -1
        for control in self.controls:
            control.observe(self.update, names="value")
        self.button.on_click(lambda _: self.measure_selected())
        self.update()

    # -- data ----------------------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        return tradeoff_table(self.cache.values())

    def selected_key(self) -> tuple:
        return config_key(self.scheme.value, self.bits.value, self.group.value)

    def problem(self) -> str | None:
        return combo_problem(self.scheme.value, self.bits.value, self.group.value,
                             self.in_features, self.has_calib)

    # -- drawing -------------------------------------------------------------------------------

    def plot_frame(self) -> pd.DataFrame:
        """The table with what the plot draws: y = perplexity increase over fp32 in %, floored
        at FLOOR_PCT (a log axis has no 0: fp32, and anything no worse, sits on the floor), and
        text labels for the Pareto front and fp32 only (the rest crowd; hover shows them)."""
        df = self.table()
        base = self.cache[(FP32, 32, None)]["perplexity"]
        df["increase_pct"] = 100 * (df["perplexity"] / base - 1)
        df["y"] = df["increase_pct"].clip(lower=FLOOR_PCT)
        front = set(pareto_front(list(df["size_mb"]), list(df["y"])))
        df["text"] = [label if i in front or label == FP32 else ""
                      for i, label in enumerate(df["label"])]
        df["front"] = [i in front for i in range(len(df))]
        return df

    def _point_y(self, row: Mapping) -> float:
        base = self.cache[(FP32, 32, None)]["perplexity"]
        return max(100 * (row["perplexity"] / base - 1), FLOOR_PCT)

    def _draw_points(self) -> None:
        df = self.plot_frame()
        sizes, ys = df["size_mb"].to_numpy(), df["y"].to_numpy()
        self.figure.data[0].x, self.figure.data[0].y = sizes, ys
        self.figure.data[0].text = list(df["text"])
        self.figure.data[0].customdata = df[["label", "perplexity", "increase_pct",
                                             "knowledge_acc", "ms_per_token"]].to_numpy()
        front = df[df["front"]]
        self.figure.data[1].x, self.figure.data[1].y = front["size_mb"].to_numpy(), front["y"]
        self._drawn = len(self.cache)

    def _table_html(self, selected: tuple | None) -> str:
        df = self.table()
        base = self.cache[(FP32, 32, None)]
        head = ("<tr><th>configuration</th><th>stored (MB)</th><th>x smaller</th>"
                "<th>bits/weight (linears)</th><th>perplexity</th><th>knowledge acc</th>"
                f"<th>ms/token ({html.escape(self.device)})</th></tr>")
        rows = []
        for r in df.itertuples():
            key = config_key(r.scheme, r.bits, _group(r.group_size))
            style = ' style="font-weight:bold;background:#fde8e8"' if key == selected else ""
            rows.append(
                f"<tr{style}><td>{html.escape(r.label)}</td><td>{r.size_mb:.3f}</td>"
                f"<td>{base['size_mb'] / r.size_mb:.2f}</td><td>{r.linear_bits:.2f}</td>"
                f"<td>{r.perplexity:.4f}</td><td>{r.knowledge_acc:.3f}</td>"
                f"<td>{r.ms_per_token:.1f}</td></tr>")
        return ('<table style="font-size:12px;text-align:right">' + head + "".join(rows)
                + "</table>")

    def update(self, change=None) -> bool:
        """Redraw for the controls' values; True when the selected point is shown."""
        fp32 = self.scheme.value == FP32
        self.bits.disabled = self.group.disabled = fp32
        problem = self.problem()
        key = None if problem else self.selected_key()
        row = self.cache.get(key) if key else None
        with self.figure.batch_update():
            if self._drawn != len(self.cache):
                self._draw_points()
            self.figure.data[2].x = [row["size_mb"]] if row else []
            self.figure.data[2].y = [self._point_y(row)] if row else []
            if row:
                self.figure.layout.title.text = (
                    f"Size vs quality: {row['label']} selected, {row['size_mb']:.2f} MB, "
                    f"perplexity {row['perplexity']:.4f} ({self.device})")
            elif problem:
                self.figure.layout.title.text = ("Size vs quality: that combination cannot be "
                                                 "measured (see the message above)")
            else:
                self.figure.layout.title.text = (f"Size vs quality: {config_label(*key)} is not "
                                                 "measured yet (press the button)")
        self.table_html.value = self._table_html(key)
        self.button.disabled = bool(problem) or row is not None or self.measure_fn is None
        if problem:
            self.message.value = _message("error", problem)
            self.readout.value = ""
            return False
        if row is None:
            slow = " (calibration: tens of seconds on a CPU)" if key[0] in CALIBRATED else ""
            how = ("press 'measure this combination'" + slow if self.measure_fn is not None
                   else "this explorer has no bench to measure it")
            self.message.value = _message("info", f"{config_label(*key)} is not measured yet: "
                                          f"{how}")
            self.readout.value = ""
            return False
        base = self.cache[(FP32, 32, None)]
        self.message.value = _message("ok", f"{row['label']}: from the cache")
        self.readout.value = (
            f"<b>{html.escape(row['label'])}</b>: {row['stored_bytes']:,} bytes stored "
            f"({base['stored_bytes'] / row['stored_bytes']:.2f}x smaller than fp32; "
            f"{row['linear_bits']:.2f} bits per linear weight) &middot; perplexity "
            f"{row['perplexity']:.4f} (fp32 {base['perplexity']:.4f}) &middot; knowledge acc "
            f"{row['knowledge_acc']:.3f} (fp32 {base['knowledge_acc']:.3f}) &middot; "
            f"{row['ms_per_token']:.1f} ms per token ({html.escape(self.device)}; fp32 "
            f"{base['ms_per_token']:.1f})")
        return True

    def measure_selected(self) -> bool:
        """Measure the selected combination (progress bar), cache it and redraw."""
        problem = self.problem()
        if problem or self.measure_fn is None:
            self.message.value = _message("error", problem or "no bench to measure with")
            return False
        scheme, bits, group = self.selected_key()
        self.progress.layout.visibility = "visible"
        self.button.disabled = True

        def report(fraction: float, text: str) -> None:
            self.progress.value = min(max(float(fraction), 0.0), 1.0)
            self.progress.description = text[:24]

        self.message.value = _message("info", f"measuring {config_label(scheme, bits, group)}...")
        try:
            row = self.measure_fn(scheme, bits, group, report)
        except Exception as exc:  # show it, keep the widget alive
            self.message.value = _message("error", f"{type(exc).__name__}: {exc}")
            self.button.disabled = False
            return False
        finally:
            self.progress.layout.visibility = "hidden"
        self.cache[config_key(scheme, bits, group)] = row
        return self.update()

    @property
    def widget(self) -> W.Widget:
        return W.VBox([W.VBox(self.controls), W.HBox([self.button, self.progress]), self.message,
                       self.readout, self.figure, self.table_html])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _group(value):
    """A group size read back from a table: NaN/None (per channel) -> None, else int."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


# ----------------------------------------------------------------------------------------------
# The deployment calculator

PRECISIONS = ("fp32", "fp16", "int8", "int4", "nf4")
PRECISION_LABELS = {"fp32": "fp32", "fp16": "fp16 / bf16", "int8": "int8",
                    "int4": "int4 (group 128)", "nf4": "nf4 (double quant)"}
CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CUSTOM = "custom"


class ServingCalculator:
    """Model, precision, context and batch -> weights + KV cache (GB) and the GPUs it fits."""

    def __init__(self, model: str = "7B", precision: str = "fp16", context: int = 4096,
                 batch: int = 1, headroom: float = 0.9):
        if model not in (*PRESETS, CUSTOM):
            raise LabkitError(f"model={model!r} is not known; valid: {', '.join(PRESETS)}, custom")
        if precision not in PRECISIONS:
            raise LabkitError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
        self.headroom = headroom
        self.model = W.Dropdown(options=[(f"{k}: {v.name}", k) for k, v in PRESETS.items()]
                                + [("custom (fields below)", CUSTOM)], value=model,
                                description="model", style=_STYLE, layout=_LAYOUT)
        self.precision = W.Dropdown(options=[(v, k) for k, v in PRECISION_LABELS.items()],
                                    value=precision, description="weight precision",
                                    style=_STYLE, layout=_LAYOUT)
        self.context = W.SelectionSlider(options=CONTEXTS, value=context,
                                         description="context (tokens)", style=_STYLE,
                                         layout=_LAYOUT, continuous_update=False)
        self.batch = W.SelectionSlider(options=BATCHES, value=batch,
                                       description="batch (sequences)", style=_STYLE,
                                       layout=_LAYOUT, continuous_update=False)
        self.kv_bytes = W.Dropdown(options=[("fp16 / bf16 (2 bytes)", 2), ("fp8 / int8 (1 byte)", 1),
                                            ("fp32 (4 bytes)", 4)], value=2,
                                   description="KV cache (bytes per value)", style=_STYLE,
                                   layout=_LAYOUT)
        seven = PRESETS["7B"]
        self.n_params = W.BoundedFloatText(value=seven.n_params / 1e9, min=0.001, max=10000,
                                           description="parameters (billions)", style=_STYLE,
                                           layout=_LAYOUT)
        self.n_layers = W.BoundedIntText(value=seven.n_layers, min=0, max=1000,
                                         description="layers (count)", style=_STYLE,
                                         layout=_LAYOUT)
        self.n_heads = W.BoundedIntText(value=seven.n_heads, min=0, max=1024,
                                        description="query heads (count)", style=_STYLE,
                                        layout=_LAYOUT)
        self.n_kv_heads = W.BoundedIntText(value=seven.n_kv_heads, min=0, max=1024,
                                           description="KV heads (count)", style=_STYLE,
                                           layout=_LAYOUT)
        self.head_dim = W.BoundedIntText(value=seven.head_dim, min=0, max=4096,
                                         description="head dimension (values)", style=_STYLE,
                                         layout=_LAYOUT)
        self.custom_fields = [self.n_params, self.n_layers, self.n_heads, self.n_kv_heads,
                              self.head_dim]
        self.controls = [self.model, self.precision, self.context, self.batch, self.kv_bytes,
                         *self.custom_fields]
        self.message = W.HTML()
        self.figure = go.FigureWidget(serving_figure(model if model != CUSTOM else seven,
                                                     context, batch, PRECISIONS,
                                                     headroom=headroom))
        self.figure.update_layout(height=460, template="plotly_white")
        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()

    def spec(self) -> ModelSpec:
        if self.model.value != CUSTOM:
            return PRESETS[self.model.value]
        return model_spec(ModelSpec("custom model", int(round(self.n_params.value * 1e9)),
                                    self.n_layers.value, self.n_heads.value,
                                    self.n_kv_heads.value, self.head_dim.value))

    def update(self, change=None) -> bool:
        """Recompute and move the bars; bad custom fields show a message and change nothing."""
        custom = self.model.value == CUSTOM
        for field in self.custom_fields:
            field.disabled = not custom
        try:
            spec = self.spec()
            table = gpu_fit_table(spec, self.context.value, self.batch.value, PRECISIONS,
                                  self.kv_bytes.value, headroom=self.headroom)
        except LabkitError as exc:
            self.message.value = _message("error", str(exc))
            return False
        chosen = list(PRECISIONS).index(self.precision.value)
        opacity = [1.0 if i == chosen else 0.35 for i in range(len(PRECISIONS))]
        with self.figure.batch_update():
            self.figure.data[0].y = table["weights_gb"].to_numpy()
            self.figure.data[1].y = table["kv_cache_gb"].to_numpy()
            for trace in self.figure.data[:2]:
                trace.marker.opacity = opacity
            self.figure.layout.title.text = (
                f"Serving {spec.name}: context {self.context.value:,} tokens, batch "
                f"{self.batch.value}, KV cache {self.kv_bytes.value} bytes per value")
        row = table.iloc[chosen]
        fits = [g for g in GPUS if row[g]]
        short = [g for g in GPUS if not row[g]]
        verdict = (f"fits on: {', '.join(fits)}" if fits
                   else "fits on no single GPU listed: split it over several (lab 03)")
        self.message.value = _message(
            "ok" if fits else "error",
            f"{PRECISION_LABELS[self.precision.value]}: weights {row['weights_gb']:.1f} GB + KV "
            f"cache {row['kv_cache_gb']:.1f} GB = {row['total_gb']:.1f} GB; {verdict}"
            + (f"; too small: {', '.join(short)}" if fits and short else "")
            + f" (a GPU counts as fitting at <= {self.headroom:.0%} of its memory)")
        return True

    @property
    def widget(self) -> W.Widget:
        return W.VBox([W.VBox(self.controls), self.message, self.figure])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
