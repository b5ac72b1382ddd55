"""Evaluation explorers: perplexity vs stride vs compute, and how each choice of a question scores.

`StrideExplorer`: window and stride sliders (tokens) over one text; the figure shows perplexity
and compute (forward tokens) for every stride of the chosen window, the chosen stride marked.
A window's sweep is computed once (labkit.evaluation.stride_sweep) and cached, so moving the
stride, or going back to a window already seen, only moves data.

`ChoiceExplorer`: type a question number or id and pick a model; the figure shows each choice's
summed log-probability (acc) and its per-character version (acc_norm), drawn by
labkit.evaluation.choice_scores_figure from scores computed beforehand (score_items).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from labkit.errors import LabkitError
from labkit.evaluation import choice_scores_figure, stride_figure, stride_sweep

_STYLE = {"description_width": "170px"}
_LAYOUT = W.Layout(width="480px")


def _message(kind: str, text: str) -> str:
    colour = {"error": "#b42318", "info": "#475467", "ok": "#1a7f37"}[kind]
    return f'<div style="color:{colour}">{html.escape(text)}</div>'


def _grid(values: Sequence[int], name: str) -> list[int]:
    try:
        grid = sorted({int(v) for v in values})
    except (TypeError, ValueError):
        raise LabkitError(
            f"{name}={values!r}: valid is a list of positive integers (tokens)") from None
    if not grid or grid[0] < 1:
        raise LabkitError(f"{name}={list(values)!r}: valid is a non-empty list of integers >= 1")
    return grid


class StrideExplorer:
    """Window and stride sliders -> perplexity vs stride vs compute, updated in place.

    Give `model`, `tokenizer` and `texts` (what labkit.evaluation.perplexity takes), or a
    `sweep_fn(window, strides) -> DataFrame` with stride_sweep's columns. `precomputed` maps
    window -> a sweep already made (e.g. in the lab); the initial window is computed at once,
    others the first time the slider reaches them.
    """

    def __init__(self, model=None, tokenizer=None, texts=None, *, windows: Sequence[int],
                 strides: Sequence[int], window: int | None = None, stride: int | None = None,
                 sweep_fn: Callable | None = None, precomputed: Mapping | None = None,
                 batch_size: int = 8, device: str = "cpu"):
        self.windows, self.strides = _grid(windows, "windows"), _grid(strides, "strides")
        if sweep_fn is None:
            if model is None or tokenizer is None or texts is None:
                raise LabkitError("give model, tokenizer and texts, or a sweep_fn(window, strides)")

            def sweep_fn(w, ss):
                return stride_sweep(model, tokenizer, texts, w, ss, batch_size=batch_size)

        self.sweep_fn, self.device = sweep_fn, device
        self.cache: dict[int, object] = {int(w): s for w, s in (precomputed or {}).items()}
        window = self.windows[-1] if window is None else int(window)
        if window not in self.windows:
            raise LabkitError(f"window={window} tokens is not on the grid {self.windows}")
        fitting = [s for s in self.strides if s <= window]
        stride = (fitting[len(fitting) // 2] if fitting else window) if stride is None else stride
        if int(stride) not in self.strides:
            raise LabkitError(f"stride={stride} tokens is not on the grid {self.strides}")

        self.window = W.SelectionSlider(options=self.windows, value=window,
                                        description="window (tokens)", style=_STYLE,
                                        layout=_LAYOUT, continuous_update=False)
        self.stride = W.SelectionSlider(options=self.strides, value=int(stride),
                                        description="stride (tokens)", style=_STYLE,
                                        layout=_LAYOUT, continuous_update=False)
        self.controls = [self.window, self.stride]
        self.message = W.HTML()

        first = self.sweep(window)  # a failure here is the caller's, so it raises
        base = stride_figure(first, device=device)
        self.figure = go.FigureWidget(base)
        self.figure.add_scatter(x=[], y=[], mode="markers", name="chosen stride",
                                marker={"size": 16, "color": "#d62728", "symbol": "diamond"})
        self.figure.update_layout(height=430, template="plotly_white")
        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()

    def strides_for(self, window: int) -> list[int]:
        """The grid's strides that fit the window, and the window itself (disjoint chunks)."""
        return sorted({s for s in self.strides if s <= window} | {window})

    def sweep(self, window: int):
        """The sweep of one window, from the cache or computed now (then cached)."""
        if window not in self.cache:
            self.cache[window] = self.sweep_fn(window, self.strides_for(window))
        return self.cache[window]

    def update(self, change=None) -> bool:
        """Redraw for the sliders' values; a stride longer than the window shows a message."""
        w, s = int(self.window.value), int(self.stride.value)
        if s > w:
            self.message.value = _message(
                "error", f"stride = {s} tokens is longer than the window of {w} tokens: tokens "
                f"between windows would never be scored; valid strides are 1..{w} tokens")
            return False
        if w not in self.cache:
            self.message.value = _message("info", f"computing the sweep for window {w} tokens...")
        try:
            sweep = self.sweep(w)
        except Exception as exc:  # a learner's sweep_fn or model: show it, keep the widget alive
            self.message.value = _message("error", f"window {w} tokens failed: "
                                          f"{type(exc).__name__}: {exc}")
            return False
        row = sweep[sweep["stride"] == s]
        if row.empty:
            self.message.value = _message("error", f"the sweep of window {w} has no stride {s}")
            return False
        row, disjoint = row.iloc[0], sweep[sweep["stride"] == sweep["stride"].max()].iloc[0]
        ratio = row["forward_tokens"] / disjoint["forward_tokens"]
        with self.figure.batch_update():
            # numpy arrays: plotly validates lists element by element
            self.figure.data[0].x = np.asarray(sweep["stride"])
            self.figure.data[0].y = np.asarray(sweep["perplexity"])
            self.figure.data[1].x = np.asarray(sweep["stride"])
            self.figure.data[1].y = np.asarray(sweep["forward_tokens"])
            self.figure.data[2].x = np.asarray([s])
            self.figure.data[2].y = np.asarray([row["perplexity"]])
            self.figure.layout.title.text = (
                f"Window {w} tokens, stride {s} tokens: perplexity {row['perplexity']:.2f} "
                f"for {ratio:.1f}x the compute of disjoint chunks ({self.device})")
        self.message.value = _message(
            "ok", f"stride {s}: perplexity {row['perplexity']:.3f}, {row['bits_per_byte']:.3f} "
                  f"bits/byte, mean context {row['mean_context']:.0f} tokens, "
                  f"{int(row['forward_tokens']):,} forward tokens; disjoint chunks "
                  f"(stride {w}): perplexity {disjoint['perplexity']:.3f}")
        return True

    @property
    def widget(self) -> W.Widget:
        return W.VBox([W.VBox(self.controls), self.message, self.figure])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class ChoiceExplorer:
    """Pick a question (number or id) and a model -> how each of its choices scores.

    `scores` maps a model name to score_items' DataFrame on the same `items` (same order).
    """

    def __init__(self, items: Sequence[dict], scores: Mapping[str, object], *,
                 question: int | str = 0, model: str | None = None):
        if not items:
            raise LabkitError("items is empty: give the scored multiple-choice items")
        if not scores:
            raise LabkitError("scores is empty: give {model name: score_items(...)} for one model")
        for name, frame in scores.items():
            if len(frame) != len(items) or list(frame["id"]) != [it["id"] for it in items]:
                raise LabkitError(f"scores[{name!r}] does not cover the items in order: "
                                  "score exactly these items with score_items")
        self.items, self.scores = list(items), dict(scores)
        self.index_of = {str(it["id"]): i for i, it in enumerate(self.items)}
        self.question = W.Text(value=str(question), continuous_update=False,
                               description=f"question (0-{len(items) - 1} or id)",
                               style=_STYLE, layout=_LAYOUT)
        self.model = W.Dropdown(options=list(self.scores), value=model or next(iter(self.scores)),
                                description="model", style=_STYLE, layout=_LAYOUT)
        self.controls = [self.question, self.model]
        self.message = W.HTML()
        self.figure = go.FigureWidget(self._figure(0, self.model.value))
        self.figure.update_layout(height=360, template="plotly_white")
        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()

    def parse_question(self, text: str) -> int:
        """The item index for what was typed: a number 0..N-1 or an item id."""
        text = str(text).strip()
        if text in self.index_of:
            return self.index_of[text]
        if text.lstrip("-").isdigit():
            index = int(text)
            if 0 <= index < len(self.items):
                return index
        some = ", ".join(list(self.index_of)[:2])
        raise LabkitError(f"question {text!r}: valid is a number 0..{len(self.items) - 1} "
                          f"or an item id ({some}, ...)")

    def _figure(self, index: int, model: str) -> go.Figure:
        row = self.scores[model].iloc[index]
        return choice_scores_figure(self.items[index], row["logprobs"])

    def update(self, change=None) -> bool:
        try:
            index = self.parse_question(self.question.value)
        except LabkitError as exc:
            self.message.value = _message("error", str(exc))
            return False
        model = self.model.value
        fresh = self._figure(index, model)
        with self.figure.batch_update():
            for mine, new in zip(self.figure.data, fresh.data):
                mine.x, mine.y = np.asarray(new.x), list(new.y)
                mine.marker.color = new.marker.color
            for mine, new in zip(self.figure.layout.annotations, fresh.layout.annotations):
                mine.text = new.text  # the subplot titles: which choice acc / acc_norm picks
            self.figure.layout.title.text = f"{model}: {fresh.layout.title.text}"
        item, row = self.items[index], self.scores[model].iloc[index]
        letters = "ABCDEFGH"
        verdict = ", ".join(
            f"{metric} picks {letters[int(row[pred])]} ({'right' if row[metric] else 'wrong'})"
            for metric, pred in (("acc", "pred"), ("acc_norm", "pred_norm")))
        self.message.value = _message(
            "ok", f"{item['id']} ({item.get('subject', 'all')}): the answer is "
                  f"{letters[item['answer']]}. {item['choices'][item['answer']]}; {verdict}")
        return True

    @property
    def widget(self) -> W.Widget:
        return W.VBox([W.HBox(self.controls), self.message, self.figure])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def stride_explorer(model, tokenizer, texts, settings=None, **kwargs) -> StrideExplorer:
    """The stride widget on the profile's grid (`settings`: profile.settings("evaluation")),
    windows clipped to the model's context."""
    if settings is None:
        from labkit import profile

        settings = profile().settings("evaluation")
    limit = getattr(model.config, "max_position_embeddings", None) or max(settings.widget_windows)
    windows = [w for w in settings.widget_windows if w <= limit] or [limit]
    kwargs.setdefault("window", settings.window if settings.window in windows else windows[-1])
    return StrideExplorer(model, tokenizer, texts, windows=windows,
                          strides=[s for s in settings.widget_strides if s <= windows[-1]],
                          batch_size=settings.batch_size, device=settings.device, **kwargs)
