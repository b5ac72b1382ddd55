"""Documents, pipeline steps and the accounting that says where every document went.

A step is a plain function `step(docs, accounting, **params)`: it takes an iterable of
Documents, yields the ones it keeps (possibly with new text or metadata) and records every drop
as (doc id, step name, reason) in the shared `Accounting`. `run_pipeline` composes steps and
checks, for every step, that documents in == kept + dropped: nothing vanishes unexplained.
A step records its drops under its own name (`step_name(step)`); to change a step's parameters
use functools.partial, which keeps the name.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import pandas as pd
import plotly.graph_objects as go

from labkit import validate
from labkit.errors import LabkitError
from labkit.validate import checks, function, of_type


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, value, cls in (("id", self.id, str), ("text", self.text, str),
                                 ("metadata", self.metadata, dict)):
            if not isinstance(value, cls):
                raise LabkitError(f"Document {name} must be a {cls.__name__}, got {type(value).__name__}")

    def updated(self, text: str | None = None, **metadata) -> Document:
        """A copy with new text and/or extra metadata (steps never mutate their input)."""
        return replace(
            self, text=self.text if text is None else text, metadata={**self.metadata, **metadata}
        )


Step = Callable[..., Iterable[Document]]


def documents(value, name: str = "docs"):
    """The documents a step takes: checked now if a list, one by one if a stream."""
    return validate.stream(value, name, of=Document, what="Document objects")


@checks(step=function)
def step_name(step: Step) -> str:
    """The name a step reports under: its function name, also through functools.partial."""
    while isinstance(step, functools.partial):
        step = step.func
    return getattr(step, "name", None) or step.__name__


@dataclass
class Accounting:
    """Per-step counts of documents in and out, and every drop with its reason."""

    entered: Counter = field(default_factory=Counter)
    passed: Counter = field(default_factory=Counter)
    drops: list[tuple[str, str, str]] = field(default_factory=list)  # (doc id, step, reason)

    def register(self, step: str) -> None:
        """Give a step its row now, so the table lists steps in pipeline order."""
        self.entered.setdefault(step, 0)
        self.passed.setdefault(step, 0)

    def drop(self, doc_id: str, step: str, reason: str) -> None:
        self.drops.append((doc_id, step, reason))

    def reasons(self) -> pd.DataFrame:
        """Drops counted per (step, reason); a reason's detail after ':' (an id) is folded."""
        counts = Counter((step, reason.split(":")[0]) for _, step, reason in self.drops)
        order = {step: i for i, step in enumerate(self.entered)}  # pipeline order
        rows = sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], len(order)), -kv[1]))
        return pd.DataFrame([(s, r, n) for (s, r), n in rows], columns=["step", "reason", "count"])

    def table(self) -> pd.DataFrame:
        """One row per step: in, kept, dropped, and the drops by reason; in == kept + dropped."""
        by_step: dict[str, Counter] = {step: Counter() for step in self.entered}
        for _, step, reason in self.drops:
            by_step.setdefault(step, Counter())[reason.split(":")[0]] += 1
        rows = []
        for step, reasons in by_step.items():
            n_in, kept, dropped = self.entered[step], self.passed[step], sum(reasons.values())
            assert n_in == kept + dropped, (
                f"step {step}: {n_in} in != {kept} kept + {dropped} dropped")
            rows.append({"step": step, "in": n_in, "kept": kept, "dropped": dropped,
                         "reasons": dict(reasons)})
        return pd.DataFrame(rows, columns=["step", "in", "kept", "dropped", "reasons"])


def _accounting(value, name: str):
    return of_type(Accounting)(value, name)


@checks(docs=documents, accounting=_accounting, reason_of=function)
def keep_if(
    docs: Iterable[Document], accounting: Accounting, step: str, reason_of: Callable
) -> Iterator[Document]:
    """The body of a pure filter: `reason_of(doc)` returns why to drop it, or None to keep it."""
    if not isinstance(step, str) or not step:
        raise LabkitError(f"step must be the step's name (a non-empty str), got {step!r}")
    for doc in docs:
        reason = reason_of(doc)
        if reason is None:
            yield doc
        else:
            accounting.drop(doc.id, step, reason)


def _counted(docs: Iterable[Document], counter: Counter, step: str) -> Iterator[Document]:
    for doc in docs:
        counter[step] += 1
        yield doc


def run_pipeline(
    steps: list[Step], docs: Iterable[Document], accounting: Accounting | None = None
) -> tuple[list[Document], pd.DataFrame]:
    """Run `docs` through `steps` in order; return the kept documents and the per-step table.

    Steps are chained lazily (documents stream through), so a source such as `read_warc` can
    share the same `accounting` and appear as the first row of the table.
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable) or callable(steps):
        raise LabkitError(f"steps must be a list of step functions, got {type(steps).__name__}")
    steps = [function(step, f"steps[{i}]") for i, step in enumerate(steps)]
    docs = documents(docs)
    accounting = _accounting(accounting, "accounting") if accounting is not None else Accounting()
    stream: Iterable[Document] = docs
    for step in steps:
        name = step_name(step)
        accounting.register(name)
        stream = _counted(step(_counted(stream, accounting.entered, name), accounting),
                          accounting.passed, name)
    kept = list(stream)
    return kept, accounting.table()  # table() asserts in == kept + dropped for every step


def funnel_figure(table: pd.DataFrame, title: str = "Documents kept at each pipeline step"):
    """A funnel: the documents entering the first step, then those left after each step."""
    if not isinstance(table, pd.DataFrame) or table.empty or not {"step", "in", "kept"} <= set(table):
        raise LabkitError("table must be run_pipeline's table (a non-empty DataFrame with columns "
                          f"step, in, kept), got {type(table).__name__}")
    stages = [f"in: {table['step'].iloc[0]}"] + [f"after {s}" for s in table["step"]]
    counts = [int(table["in"].iloc[0])] + [int(k) for k in table["kept"]]
    fig = go.Figure(go.Funnel(y=stages, x=counts, textinfo="value+percent initial"))
    fig.update_layout(
        title=title, xaxis_title="documents (count)", yaxis_title="pipeline stage"
    )
    return fig


@checks(step=function)
def batch_step(step: Step) -> Callable[[dict], dict]:
    """Wrap a step for `datasets.Dataset.map(fn, batched=True, num_proc=...)`.

    Rows are never removed: a dropped row gets "step: reason" in its `dropped` column and later
    steps pass it through, so the accounting survives parallel workers (filter it at the end).
    Metadata travels as a JSON string. Steps that look across documents (dedup) then only see
    one batch at a time.
    """
    name = step_name(step)

    def apply(batch: dict) -> dict:
        n = len(batch["id"])
        dropped = list(batch.get("dropped") or [""] * n)
        metadata = list(batch.get("metadata") or ["{}"] * n)
        live = [
            Document(batch["id"][i], batch["text"][i], json.loads(metadata[i]))
            for i in range(n)
            if not dropped[i]
        ]
        accounting = Accounting()
        kept = {doc.id: doc for doc in step(live, accounting)}
        why = {doc_id: reason for doc_id, _, reason in accounting.drops}
        out = {"id": list(batch["id"]), "text": list(batch["text"]), "metadata": metadata,
               "dropped": dropped}
        for i, doc_id in enumerate(batch["id"]):
            if doc_id in kept:
                out["text"][i] = kept[doc_id].text
                out["metadata"][i] = json.dumps(kept[doc_id].metadata, sort_keys=True)
            elif doc_id in why:
                out["dropped"][i] = f"{name}: {why[doc_id]}"
        return out

    return apply
