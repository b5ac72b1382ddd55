"""Scoring a pipeline against the crawl's ground truth: per step, was each drop right, and how
many of the records the step exists to remove did it catch?

The labels (data_samples/crawl/labels.jsonl) are not in the WARC; they join the pipeline's
output by URL. Drops are recorded by document id (the WARC-Record-ID), so `record_urls` maps
every record of the WARC, the ones that never became documents included, to its URL.

For a step S:
- precision: of the records S dropped, the share the labels say should go (`keep` is False,
  or, for the score filter, the teacher's score is below the threshold);
- recall: of the records of S's *reason class* that reached S (were not dropped before it),
  the share S dropped. The reason class is what S is for: non-HTML records for the reader,
  non-English (and Latin, gibberish) pages for the language filter, spam/lorem/gibberish/short/
  boilerplate pages for the quality rules, copies for the deduplicators, low teacher scores for
  the score filter. Steps with no reason class (extraction, PII) get no recall.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from warcio.archiveiterator import ArchiveIterator

from labkit.errors import LabkitError

from .document import Accounting, Document
from .scoring import precision_recall

LOW_QUALITY_KINDS = ("spam", "lorem", "gibberish", "short", "boilerplate")
DUPLICATE_KINDS = ("exact_dup", "near_dup")
QUALITY_STEPS = ("gopher_quality", "gopher_repetition", "c4_filter", "fineweb_filter")
SCORE_STEP = "quality_score_filter"

# step -> (what its reason class is, in words; the labelled records in that class)
Target = Callable[[pd.DataFrame, float], pd.Series]
STEP_TARGETS: dict[str, tuple[str, Target]] = {
    "read_warc": ("non-HTML records", lambda f, t: f["kind"] == "non_html"),
    "language_filter": ("pages not in English",
                        lambda f, t: ~f["language"].isin(["en", ""])),
    **{step: ("spam, lorem, gibberish, short and boilerplate pages",
              lambda f, t: f["kind"].isin(LOW_QUALITY_KINDS)) for step in QUALITY_STEPS},
    "exact_dedup": ("exact copies", lambda f, t: f["kind"] == "exact_dup"),
    "minhash_dedup": ("exact and near copies", lambda f, t: f["kind"].isin(DUPLICATE_KINDS)),
    SCORE_STEP: ("teacher score below the threshold", lambda f, t: f["edu_score"] < t),
}
_LABEL_COLUMNS = ["url", "kind", "keep", "language", "edu_score"]


def record_urls(paths: str | Path | Iterable[str | Path]) -> dict[str, str]:
    """WARC-Record-ID -> WARC-Target-URI for every record that has both (headers only)."""
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    urls: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise LabkitError(f"WARC path {str(path)!r} is not a file; give a .warc or .warc.gz")
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                rid = record.rec_headers.get_header("WARC-Record-ID")
                url = record.rec_headers.get_header("WARC-Target-URI")
                if rid and url:
                    urls[rid] = url
    return urls


def label_outcomes(
    labels: Iterable[Mapping],
    accounting: Accounting,
    kept: Iterable[Document | str] = (),
    urls: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per labelled record: its label and what the pipeline did with it.

    `urls` maps document ids to URLs (`record_urls` of the WARC); ids it lacks fall back to a
    kept document's metadata["url"]. Columns: the label's url, kind, keep, language and
    edu_score, then `status` ("kept", "dropped", or "unseen" when the pipeline never reported
    the record), the dropping `step` and its `reason` (detail after ':' folded), "" if kept.
    """
    urls = dict(urls or {})
    outcome: dict[str, tuple[str, str, str]] = {}
    for doc in kept:
        doc_id = doc if isinstance(doc, str) else doc.id
        url = urls.get(doc_id) or (None if isinstance(doc, str) else doc.metadata.get("url"))
        if url:
            outcome[url] = ("kept", "", "")
    for doc_id, step, reason in accounting.drops:
        if doc_id in urls:
            outcome[urls[doc_id]] = ("dropped", step, reason.split(":")[0])
    frame = pd.DataFrame([{c: label.get(c) for c in _LABEL_COLUMNS} for label in labels],
                         columns=_LABEL_COLUMNS)
    frame["language"] = frame["language"].fillna("")
    frame["edu_score"] = frame["edu_score"].fillna(0).astype(float)
    frame["keep"] = frame["keep"].astype(bool)
    found = [outcome.get(url, ("unseen", "", "")) for url in frame["url"]]
    frame[["status", "step", "reason"]] = pd.DataFrame(
        found, index=frame.index, columns=["status", "step", "reason"])
    return frame


def _should_drop(frame: pd.DataFrame, step: str, edu_threshold: float) -> pd.Series:
    bad = ~frame["keep"]
    return bad | (frame["edu_score"] < edu_threshold) if step == SCORE_STEP else bad


def step_precision_recall(
    outcomes: pd.DataFrame, steps: Iterable[str], edu_threshold: float = 3.0
) -> pd.DataFrame:
    """Per step, in pipeline order: drops, the right ones, precision; reason-class records
    that reached the step, those it caught, recall; and the dropped records by kind."""
    steps = list(steps)
    seen = outcomes[outcomes["status"] != "unseen"]
    order = {step: i for i, step in enumerate(steps)}
    # the position of the step that dropped each record; kept records (and drops by steps not
    # listed) reach every step
    dropped_at = np.where(seen["status"] == "dropped",
                          seen["step"].map(order).fillna(len(steps)), len(steps))
    kind = seen["kind"].to_numpy()
    bad = ~seen["keep"].to_numpy(bool)
    low_score = (seen["edu_score"] < edu_threshold).to_numpy()
    rows = []
    for i, step in enumerate(steps):
        reached, dropped = dropped_at >= i, dropped_at == i
        should_drop = bad | low_score if step == SCORE_STEP else bad
        target = STEP_TARGETS.get(step)
        mask = target[1](seen, edu_threshold).to_numpy(bool) & reached if target else None
        n_dropped, correct = int(dropped.sum()), int((dropped & should_drop).sum())
        in_class = int(mask.sum()) if target else 0
        caught = int((mask & dropped).sum()) if target else 0
        names, counts = np.unique(kind[dropped].astype(str), return_counts=True)
        by_kind = sorted(zip(names.tolist(), counts.tolist()), key=lambda kv: (-kv[1], kv[0]))
        rows.append({
            "step": step, "dropped": n_dropped, "correct": correct,
            "precision": correct / n_dropped if n_dropped else np.nan,
            "reason_class": target[0] if target else "", "class_in": in_class,
            "caught": caught, "recall": caught / in_class if in_class else np.nan,
            "dropped_kinds": dict(by_kind),
        })
    return pd.DataFrame(rows)


def pipeline_precision_recall(
    outcomes: pd.DataFrame, edu_threshold: float | None = None
) -> dict[str, float]:
    """The whole pipeline as one filter: kept records against the labels' `keep` (and, with an
    `edu_threshold`, a teacher score at or above it)."""
    seen = outcomes[outcomes["status"] != "unseen"]
    good = seen["keep"]
    if edu_threshold is not None:
        good = good & (seen["edu_score"] >= edu_threshold)
    return precision_recall(seen["status"] == "kept", good)


def pii_outcomes(
    kept: Iterable[Document], labels: Iterable[Mapping], urls: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Per labelled PII type (e-mail, phone, public or private IP) in the kept documents: how
    many spans there were and how many are still in the text."""
    spans = {label["url"]: label.get("pii") or [] for label in labels}
    urls = urls or {}
    counts: Counter = Counter()
    for doc in kept:
        for span in spans.get(urls.get(doc.id) or doc.metadata.get("url"), []):
            key = (span["type"], "public" if span.get("public") else "private")
            counts[key + ("spans",)] += 1
            counts[key + ("still_in_text",)] += span["value"] in doc.text
    keys = sorted({k[:2] for k in counts})
    return pd.DataFrame(
        [{"type": t, "scope": s, "spans": counts[(t, s, "spans")],
          "still_in_text": counts[(t, s, "still_in_text")]} for t, s in keys],
        columns=["type", "scope", "spans", "still_in_text"])
