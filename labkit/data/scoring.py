"""A FineWeb-Edu-style quality classifier: learn a teacher's 0-5 scores, keep score >= 3.

FineWeb-Edu had an LLM grade ~450k pages on an additive 0-5 educational rubric, fitted a small
regression head to those grades, and kept pages predicted >= 3. Here the head is a ridge
regression on hashed word and word-pair TF-IDF features: light enough to train in a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labkit.errors import LabkitError
from labkit.validate import checks, finite, nonnegative, positive_int, texts

from .document import Accounting, Document, _accounting, documents

if TYPE_CHECKING:  # sklearn loads when a scorer is fitted: a worker process that only filters
    from sklearn.pipeline import Pipeline  # (datatrove's, datasets.map's) starts ~2 s sooner


def fit_quality_scorer(
    texts: Sequence[str], scores: Sequence[float], alpha: float = 1.0, n_features: int = 2**18
) -> Pipeline:
    """Fit text -> teacher score (0..5). Deterministic: hashing needs no vocabulary."""
    texts, scores = _texts(texts, "texts"), _scores(scores, "scores")
    nonnegative(alpha, "alpha"), positive_int(n_features, "n_features")
    if len(texts) != len(scores) or len(texts) < 2:
        raise LabkitError(
            f"got {len(texts)} texts and {len(scores)} scores; valid: two or more, same length"
        )
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        HashingVectorizer(ngram_range=(1, 2), n_features=n_features, alternate_sign=False,
                          norm=None),
        TfidfTransformer(sublinear_tf=True),
        Ridge(alpha=alpha),
    )
    return model.fit(list(texts), np.asarray(scores, dtype=float))


def _scores(value, name: str) -> list[float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise LabkitError(f"{name} must be a list of numbers, got {type(value).__name__}")
    return [finite(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _texts(value, name: str) -> list[str]:
    return texts(value, name, empty=True)


def _model(value, name: str):
    if not hasattr(value, "predict") or isinstance(value, (str, bytes)):
        raise LabkitError(f"{name} must be a fitted scorer (fit_quality_scorer), got {type(value).__name__}")
    return value


@checks(model=_model, texts=_texts)
def predict_scores(model: Pipeline, texts: Iterable[str]) -> np.ndarray:
    """Predicted scores, clipped to the rubric's 0..5 range."""
    return np.clip(model.predict(list(texts)), 0.0, 5.0)


@checks(docs=documents, accounting=_accounting, model=_model, threshold=finite)
def quality_score_filter(
    docs: Iterable[Document], accounting: Accounting, model: Pipeline, threshold: float = 3.0
) -> Iterator[Document]:
    """Keep documents whose predicted score is >= threshold (FineWeb-Edu: 3)."""
    docs = list(docs)
    for doc, score in zip(docs, predict_scores(model, (d.text for d in docs)) if docs else []):
        if score >= threshold:
            yield doc.updated(edu_score=round(float(score), 3))
        else:
            accounting.drop(doc.id, "quality_score_filter", "low_edu_score")


def precision_recall(kept: Sequence[bool], good: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of `kept` (the filter's decision) against `good` (the truth)."""
    if not all(isinstance(v, (list, tuple, np.ndarray, pd.Series)) for v in (kept, good)):
        raise LabkitError(f"kept and good must be sequences of booleans, got "
                          f"{type(kept).__name__} and {type(good).__name__}")
    kept, good = np.asarray(kept, bool), np.asarray(good, bool)
    if kept.shape != good.shape:
        raise LabkitError(f"kept has shape {kept.shape} and good {good.shape}; valid: the same")
    tp, fp, fn = int((kept & good).sum()), int((kept & ~good).sum()), int((~kept & good).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
