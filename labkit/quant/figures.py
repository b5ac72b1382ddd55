"""Plotly figures of the quantization lab: error vs bits, levels of a weight matrix, size vs quality."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from ..errors import LabkitError
from .schemes import quantize


def error_vs_bits_figure(table) -> go.Figure:
    """Relative RMS error (log scale) vs bits, one line per scheme x granularity.

    `table` is what schemes.reconstruction_errors returns.
    """
    needed = {"scheme", "granularity", "bits", "rel_rms_error"}
    if not needed <= set(table.columns):
        raise LabkitError(f"table needs columns {sorted(needed)}, got {list(table.columns)}")
    fig = go.Figure()
    for (scheme, gran), part in table.groupby(["scheme", "granularity"], sort=False):
        part = part.sort_values("bits")
        fig.add_scatter(
            x=part.bits, y=100 * part.rel_rms_error, mode="lines+markers", name=f"{scheme}, {gran}"
        )
    fig.update_layout(
        title="Reconstruction error of a weight matrix vs bits per weight",
        xaxis_title="bits per weight (code bits, scales not counted)",
        yaxis_title="relative RMS error ||W - Ŵ|| / ||W|| (%)",
        yaxis_type="log",
        legend_title="scheme, scale per",
    )
    return fig


def levels_histogram_figure(
    w: torch.Tensor,
    bits: int = 4,
    scheme: str = "absmax",
    granularity: str = "tensor",
    group_size: int | None = None,
    n_bins: int = 200,
    name: str = "weight",
) -> go.Figure:
    """Histogram of a weight matrix's values before and after quantization.

    With one scale for the whole tensor the dequantized weights fall on 2**bits levels; with
    per-channel or per-group scales every slice has its own grid of levels.
    """
    q = quantize(w, bits, scheme, granularity, group_size, name)
    original = w.detach().float().reshape(-1).numpy()
    levels = q.dequantize().reshape(-1).numpy()
    fig = go.Figure()
    fig.add_histogram(x=original, nbinsx=n_bins, name="original", opacity=0.6)
    fig.add_histogram(x=levels, nbinsx=n_bins, name=f"{bits}-bit {scheme}", opacity=0.6)
    fig.update_layout(
        barmode="overlay",
        title=f"{name}: values at {bits} bits ({scheme}, one scale per {granularity})",
        xaxis_title="weight value (unitless)",
        yaxis_title="count (weights per bin)",
    )
    return fig


def pareto_front(sizes, qualities) -> list[int]:
    """Indices of the points no other point beats on both size and quality (lower is better)."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], qualities[i]))
    front, best = [], float("inf")
    for i in order:
        if qualities[i] < best:
            front.append(i)
            best = qualities[i]
    return front


def pareto_figure(
    table,
    size: str = "size_mb",
    quality: str = "perplexity",
    label: str = "label",
    size_title: str = "stored model size (MB = 1e6 bytes)",
    quality_title: str = "perplexity on held-out text (lower is better)",
) -> go.Figure:
    """Size vs quality, one marker per configuration, the Pareto front drawn as a line."""
    for col in (size, quality, label):
        if col not in table.columns:
            raise LabkitError(f"table has no column {col!r}; columns: {list(table.columns)}")
    if len(table) == 0:
        raise LabkitError("table is empty: nothing to plot")
    sizes, quals = list(table[size]), list(table[quality])
    front = pareto_front(sizes, quals)
    fig = go.Figure()
    fig.add_scatter(
        x=sizes,
        y=quals,
        mode="markers+text",
        text=list(table[label]),
        textposition="top center",
        name="configurations",
    )
    fig.add_scatter(
        x=[sizes[i] for i in front],
        y=[quals[i] for i in front],
        mode="lines",
        name="Pareto front",
        line_dash="dash",
    )
    fig.update_layout(
        title="Quantization trade-off: size vs quality",
        xaxis_title=size_title,
        yaxis_title=quality_title,
    )
    return fig
