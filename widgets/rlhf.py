"""Lab 07 widgets: label preference pairs yourself, and watch PPO's curves grow live.

`PreferenceAnnotator` shows one pair at a time as answers A and B (the order from
`labkit.align.reward.annotation_batch`, seeded, so the position gives nothing away); you click
which is better and it keeps your agreement with the shipped labels. `LiveCurves` is PPO's
reward / KL / length figure as a FigureWidget whose lines grow in place, one point per
iteration, through the `callback` that `labkit.align.rlhf.ppo_train` calls.
"""

from __future__ import annotations

import html

import ipywidgets as W
import plotly.graph_objects as go

from labkit.align.reward import annotation_agreement
from labkit.align.rlhf import CURVES, ppo_curves_figure
from labkit.errors import LabkitError


def _esc(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


class PreferenceAnnotator:
    """Buttons "A is better" / "B is better" over a batch of pairs; a readout of agreement."""

    def __init__(self, batch):
        batch = list(batch or [])
        if not batch:
            raise LabkitError("batch is empty; make one with "
                              "labkit.align.reward.annotation_batch(pairs, k)")
        missing = {"prompt", "A", "B", "shipped", "id", "defect"} - set(batch[0])
        if missing:
            raise LabkitError(f"the batch lacks {sorted(missing)}; use "
                              "labkit.align.reward.annotation_batch")
        self.batch = batch
        self.labels: list[str | None] = [None] * len(batch)
        self.position = 0
        self.pair = W.HTML()
        self.button_a = W.Button(description="A is better", button_style="info")
        self.button_b = W.Button(description="B is better", button_style="info")
        self.button_a.on_click(lambda _: self.choose("A"))
        self.button_b.on_click(lambda _: self.choose("B"))
        self.readout = W.HTML()
        self.controls = [self.button_a, self.button_b]
        self.update()

    def choose(self, label: str) -> None:
        """Record `label` ("A" or "B") for the current pair and move to the next one."""
        if label not in ("A", "B"):
            raise LabkitError(f"label={label!r}; choose 'A' or 'B'")
        if self.position >= len(self.batch):
            return
        self.labels[self.position] = label
        self.position += 1
        self.update()

    def agreement(self):
        """The table of `annotation_agreement`: your label, the shipped one, agree."""
        return annotation_agreement(self.batch, self.labels)

    def update(self) -> None:
        done = self.position >= len(self.batch)
        for button in self.controls:
            button.disabled = done
        if done:
            self.pair.value = "<b>All pairs labelled.</b> Compare your labels below."
        else:
            item = self.batch[self.position]
            self.pair.value = (
                f"<p><b>Pair {self.position + 1} of {len(self.batch)}</b>. "
                f"Question: <i>{_esc(item['prompt'])}</i></p>"
                f"<table><tr><td style='vertical-align:top;padding-right:24px'><b>A</b><br>"
                f"{_esc(item['A'])}</td><td style='vertical-align:top'><b>B</b><br>"
                f"{_esc(item['B'])}</td></tr></table>")
        table = self.agreement()
        labelled = table.dropna(subset=["yours"])
        if len(labelled):
            agree = labelled["agree"].astype(bool)
            lines = [f"you labelled {len(labelled)} of {len(table)} pairs; you agree with the "
                     f"shipped labels on {int(agree.sum())} ({agree.mean():.0%})"]
            for _, row in labelled.iterrows():
                verdict = "agree" if row["agree"] else "disagree"
                lines.append(f"{row['id']} ({row['defect']}): you {row['yours']}, shipped "
                             f"{row['shipped']}: {verdict}")
            self.readout.value = "<br>".join(html.escape(line) for line in lines)
        else:
            self.readout.value = "no pair labelled yet"

    def widget(self):
        return W.VBox([self.pair, W.HBox(self.controls), self.readout])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())


class LiveCurves:
    """PPO's curves (reward, KL, response length, optionally the true score), one line per run,
    growing in place. Pass `curves.callback(name)` as ppo_train's `callback`."""

    def __init__(self, names, title: str | None = None, true_score: bool = False):
        names = list(names)
        if not names or len(set(names)) != len(names):
            raise LabkitError(f"names={names!r}; give one distinct name per run")
        self.names = names
        self.keys = [k for k, _ in CURVES] + (["true_score"] if true_score else [])
        import pandas as pd

        empty = pd.DataFrame({"iteration": [], **{k: [] for k in self.keys}})
        self.figure = go.FigureWidget(ppo_curves_figure({n: empty for n in names}, title=title,
                                                        true_score=true_score))
        self.rows: dict[str, list[dict]] = {n: [] for n in names}

    def trace(self, name: str, key: str):
        return self.figure.data[self.names.index(name) * len(self.keys) + self.keys.index(key)]

    def add(self, name: str, row: dict) -> None:
        """Append one history row (as ppo_train makes it) to run `name`'s lines."""
        if name not in self.rows:
            raise LabkitError(f"unknown run {name!r}; the figure has {self.names}")
        self.rows[name].append(row)
        rows = self.rows[name]
        with self.figure.batch_update():
            for key in self.keys:
                trace = self.trace(name, key)
                trace.x = [r["iteration"] for r in rows if key in r]
                trace.y = [r[key] for r in rows if key in r]

    def callback(self, name: str):
        """A ppo_train callback that adds each row to run `name` (and never stops the run)."""
        def on_row(row: dict) -> bool:
            self.add(name, row)
            return False
        return on_row

    def widget(self):
        # In a box, as every other explorer: JupyterLab shows a bare FigureWidget output
        # without the widget-area wrapper the browser acceptance test looks for.
        return W.VBox([self.figure])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())
