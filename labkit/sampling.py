"""Turning a model's scores into a next-token choice: softmax with temperature, top-k."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from .errors import LabkitError


def softmax_with_temperature(logits: list[float], temperature: float) -> list[float]:
    """p_i = exp(z_i / T) / sum_j exp(z_j / T), computed stably (max subtracted first)."""
    if not logits:
        raise LabkitError("logits is empty; pass at least one score")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise LabkitError(f"temperature must be a positive finite number, got {temperature!r}")
    top = max(logits)
    weights = [math.exp((z - top) / temperature) for z in logits]
    total = sum(weights)
    return [w / total for w in weights]


def entropy_bits(probs: list[float]) -> float:
    return -sum(p * math.log2(p) for p in probs if p > 0)


def next_token_figure(tokens: list[str], probs: list[float], temperature: float) -> go.Figure:
    fig = go.Figure(go.Bar(x=tokens, y=probs, marker_color="#3b6ea5"))
    fig.update_layout(
        title=f"Next-token probabilities at temperature {temperature:.2f} "
              f"(entropy {entropy_bits(probs):.2f} bits)",
        xaxis_title="candidate next token", yaxis_title="probability (0-1)",
        yaxis_range=[0, 1], height=360, margin=dict(t=60, b=60),
    )
    return fig
