"""The capstone's knobs: one config change each, and what it shows on the report card.

`knob_overrides(name, cfg)` gives the overrides of a knob for a config (halving the tokens
depends on the config's step count); `compare_runs({name: result})` puts the learner's numbers
of several runs side by side, one column per run; `compare_figure` draws the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from ..errors import LabkitError


@dataclass(frozen=True)
class Knob:
    overrides: Callable[[dict], dict]
    change: str  # the config change, in words
    shows: str  # what to look for on the card


KNOBS = {
    "no quality filters": Knob(
        lambda cfg: {"data.quality_filters": False},
        "data.quality_filters = false",
        "the Gopher/C4/FineWeb rules and the edu scorer are off: the crawl's spam, boilerplate "
        "and gibberish and the top-up's stories and dialogues enter. More tokens, fewer facts per "
        "token: at the same steps, does knowledge accuracy drop (smaller cleaner vs larger "
        "noisier)?"),
    "no dedup": Knob(
        lambda cfg: {"data.dedup": False},
        "data.dedup = false",
        "exact and near copies of crawl pages stay: the model reads some pages several times"),
    "half the pre-training tokens": Knob(
        lambda cfg: {"pretrain.steps": max(1, cfg["pretrain"]["steps"] // 2),
                     "pretrain.warmup_steps": min(cfg["pretrain"]["warmup_steps"],
                                                  max(1, cfg["pretrain"]["steps"] // 2))},
        "pretrain.steps halved",
        "half the compute (6ND): held-out bits per byte and knowledge accuracy move toward "
        "the untrained model's; everything after pre-training inherits the weaker base"),
    "SFT on the noisy set": Knob(
        lambda cfg: {"sft.dataset": "noisy"},
        "sft.dataset = \"noisy\"",
        "the same SFT steps on 10,000 conversations, most with a defect, instead of 1,000 "
        "curated ones (LIMA): the judge and exact match fall; pre-training is reused"),
}


def knob_overrides(name: str, cfg: dict) -> dict:
    """The overrides of knob `name` for config `cfg` (a checked config, see load_config)."""
    if name not in KNOBS:
        raise LabkitError(f"knob {name!r} is unknown; valid: {', '.join(KNOBS)}")
    return KNOBS[name].overrides(cfg)


def try_this_table() -> pd.DataFrame:
    return pd.DataFrame([{"knob": name, "config change": k.change, "look for": k.shows}
                         for name, k in KNOBS.items()])


def compare_runs(results: Mapping[str, object]) -> pd.DataFrame:
    """Your numbers of several runs, one column per run (the card's rows as the index)."""
    if not results:
        raise LabkitError("results is empty: pass {name: RunResult} of the runs to compare")
    columns = {}
    for name, result in results.items():
        card = result.card()
        columns[name] = pd.Series(card["yours"].to_numpy(),
                                  index=pd.MultiIndex.from_frame(card[["stage", "measure"]]))
    return pd.DataFrame(columns)


SCORES = ("knowledge test accuracy (chance 0.25)", "held-out questions: right and well-formed",
          "held-out answers well-formed (judge)", "held-out preference accuracy (likelihood)")


def compare_figure(results: Mapping[str, object]):
    """Grouped bars: the card's scores (fractions) for each run."""
    import plotly.graph_objects as go

    table = compare_runs(results).droplevel("stage")
    rows = [m for m in SCORES if m in table.index]
    fig = go.Figure()
    for name in table.columns:
        fig.add_bar(x=rows, y=[table.loc[m, name] for m in rows], name=name,
                    text=[f"{table.loc[m, name]:.2f}" for m in rows], textposition="outside")
    fig.add_hline(y=0.25, line_dash="dot", annotation_text="chance (knowledge)")
    fig.update_layout(barmode="group", template="plotly_white", height=400, yaxis_range=[0, 1.1],
                      title="Your model under each knob (same steps, same measurements)",
                      xaxis_title="measure", yaxis_title="fraction")
    return fig


def gap(table: pd.DataFrame, measure: str, a: str, b: str) -> float:
    """table[a] - table[b] for one measure of compare_runs' table."""
    row = table.droplevel("stage").loc[measure]
    value = float(row[a] - row[b])
    return value if math.isfinite(value) else math.nan
