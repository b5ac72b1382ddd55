"""The first widget: a temperature slider over a next-token distribution."""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go

from labkit.sampling import entropy_bits, next_token_figure, softmax_with_temperature


def temperature_explorer(tokens: list[str], logits: list[float], temperature: float = 1.0):
    """Slide the temperature and watch the distribution sharpen (T < 1) or flatten (T > 1)."""
    fig = go.FigureWidget(next_token_figure(tokens, softmax_with_temperature(logits, temperature),
                                            temperature))
    slider = W.FloatLogSlider(value=temperature, base=10, min=-1.3, max=1, step=0.02,
                              description="temperature T (unitless)",
                              style={"description_width": "initial"},
                              layout=W.Layout(width="420px"), continuous_update=True)

    def update(change=None):
        t = slider.value
        probs = softmax_with_temperature(logits, t)
        with fig.batch_update():
            fig.data[0].y = probs
            fig.layout.title.text = (f"Next-token probabilities at temperature {t:.2f} "
                                     f"(entropy {entropy_bits(probs):.2f} bits)")

    slider.observe(update, names="value")
    box = W.VBox([slider, fig])
    box.slider, box.figure = slider, fig  # handles for tests and the browser check
    return box
