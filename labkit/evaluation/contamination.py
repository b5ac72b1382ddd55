"""Benchmark contamination: does the training data contain the test's questions and answers?

The detector of GPT-3 (Brown et al. 2020, appendix C) and lm-eval's decontamination tools:
normalise text (lower case, ASCII punctuation deleted, split on whitespace, as lm-eval's
Janitor does), take word n-grams with n between 8 and 13, and flag a benchmark item when any
of its n-grams also occurs in the training corpus. Long n-grams almost never repeat by
chance, so a shared 13-gram means the item (or the text it was copied from) was seen.

An item is checked on its question plus its correct answer, not on a reading passage it
quotes: a passage taken from the corpus is expected there and is not a leak. Items shorter
than n words have no n-grams and cannot be flagged; GPT-3 picks n per benchmark for that
reason. Small n (say 3) flags clean items through common phrases: the lab shows that too.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import LabkitError

# lm-eval's Janitor: ASCII upper case to lower case, ASCII punctuation deleted.
_NORMALISE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)


def normalised_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each word after normalisation, with its span in the original."""
    words = []
    for match in re.finditer(r"\S+", text):
        word = match.group(0).translate(_NORMALISE)
        if word:
            words.append((word, match.start(), match.end()))
    return words


def word_ngrams(text: str, n: int) -> list[str]:
    """The normalised word n-grams of a text, each joined by single spaces."""
    if not isinstance(text, str):
        raise LabkitError(f"text must be a str, got {type(text).__name__}")
    _check_n(n)
    words = [w for w, _, _ in normalised_words(text)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


@dataclass(frozen=True)
class NgramIndex:
    n: int
    ngrams: frozenset  # of strings: normalised words joined by spaces

    def __len__(self) -> int:
        return len(self.ngrams)


def _check_report(report) -> None:
    import pandas as pd

    if not isinstance(report, pd.DataFrame) or not {"id", "contaminated"} <= set(report.columns):
        raise LabkitError(f"report must be find_leaks' DataFrame (id, contaminated), got {type(report).__name__}")


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LabkitError(f"n={n!r}: valid is a positive integer (GPT-3 and lm-eval use 8 to 13)")


def build_ngram_index(corpus: Iterable[str], n: int = 13) -> NgramIndex:
    """All word n-grams of a training corpus (an iterable of documents)."""
    _check_n(n)
    if isinstance(corpus, (str, bytes, dict)) or not isinstance(corpus, Iterable):
        raise LabkitError(f"corpus must be an iterable of documents (str), got {type(corpus).__name__}")
    grams: set[str] = set()
    seen = 0
    for document in corpus:
        if not isinstance(document, str):
            raise LabkitError(f"corpus document {seen} is a {type(document).__name__}, not str")
        grams.update(word_ngrams(document, n))
        seen += 1
    if not seen:
        raise LabkitError("corpus is empty: give at least one training document")
    return NgramIndex(n, frozenset(grams))


def item_text(item: dict) -> str:
    """What is checked of an item: a multiple-choice question plus its correct choice, or a
    code task's prompt (and its canonical solution when present)."""
    if not isinstance(item, dict):
        raise LabkitError(f"item must be a benchmark item (a dict), got {type(item).__name__}")
    for key in ("question", "prompt", "canonical_solution"):
        if key in item and not isinstance(item[key], str):
            raise LabkitError(f"item {item.get('id', '?')!r}: {key} must be a str, got {item[key]!r}")
    if "question" in item:
        choices, answer = item.get("choices"), item.get("answer")
        if isinstance(choices, list) and isinstance(answer, int) and 0 <= answer < len(choices):
            return f"{item['question']} {choices[answer]}"
        return str(item["question"])
    if "prompt" in item:
        return item["prompt"] + item.get("canonical_solution", "")
    raise LabkitError(f"item {item.get('id', '?')!r} has neither 'question' nor 'prompt'")


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def find_leaks(
    items: Sequence[dict],
    index: NgramIndex,
    text_of: Callable[[dict], str] = item_text,
):
    """One row per item: its n-grams, how many occur in the corpus, and the overlapping text.

    Columns: id, ngrams, overlapping, overlap (fraction), contaminated, span (the longest
    overlapping stretch of the item's own text), spans (all of them).
    """
    import pandas as pd

    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Sequence):
        raise LabkitError(f"items must be a list of benchmark items, got {type(items).__name__}")
    if not items:
        raise LabkitError("no benchmark items to check")
    if not isinstance(index, NgramIndex):
        raise LabkitError(f"index must be build_ngram_index's NgramIndex, got {type(index).__name__}")
    if not callable(text_of):
        raise LabkitError(f"text_of must be a function item -> text, got {type(text_of).__name__}")
    rows = []
    for position, item in enumerate(items):
        text = text_of(item)
        words = normalised_words(text)
        n = index.n
        total, spans = 0, []
        for i in range(len(words) - n + 1):
            total += 1
            gram = " ".join(w for w, _, _ in words[i : i + n])
            if gram in index.ngrams:
                spans.append((words[i][1], words[i + n - 1][2]))
        merged = [text[a:b] for a, b in _merge(spans)]
        rows.append(
            {
                "id": item.get("id", position),
                "ngrams": total,
                "overlapping": len(spans),
                "overlap": len(spans) / total if total else 0.0,
                "contaminated": bool(spans),
                "span": max(merged, key=len) if merged else "",
                "spans": merged,
            }
        )
    return pd.DataFrame(rows)


def clean_subset(items: Sequence[dict], report) -> list[dict]:
    """The items that `find_leaks` did not flag, in their original order."""
    _check_report(report)
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Sequence):
        raise LabkitError(f"items must be a list of benchmark items, got {type(items).__name__}")
    if len(report) != len(items):
        raise LabkitError(
            f"report has {len(report)} rows for {len(items)} items: run find_leaks on these items"
        )
    flags = report["contaminated"].tolist()
    return [item for item, dirty in zip(items, flags) if not dirty]


def clean_vs_contaminated(scores, report, metric: str = "acc"):
    """Mean of `metric` on all, clean and contaminated items (scores and report share 'id')."""
    import pandas as pd

    _check_report(report)
    if not isinstance(scores, pd.DataFrame) or "id" not in scores.columns:
        raise LabkitError(f"scores must be a DataFrame with an 'id' column, got {type(scores).__name__}")
    if metric not in scores.columns:
        raise LabkitError(f"metric={metric!r}: scores has no such column; have {list(scores.columns)}")
    joined = scores.merge(report[["id", "contaminated"]], on="id", how="inner")
    if len(joined) != len(scores):
        raise LabkitError("scores and report do not cover the same item ids")
    parts = {
        "all": joined,
        "clean": joined[~joined["contaminated"]],
        "contaminated": joined[joined["contaminated"]],
    }
    return pd.DataFrame(
        {
            "items": [len(part) for part in parts.values()],
            metric: [part[metric].mean() if len(part) else float("nan") for part in parts.values()],
        },
        index=pd.Index(list(parts), name="subset"),
    )
