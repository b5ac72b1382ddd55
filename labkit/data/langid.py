"""Language identification with py3langid, whose model ships inside the package (no download).

FineWeb keeps a page when the top language is English with probability >= 0.65. py3langid's
`norm_probs=True` turns its naive-Bayes scores into probabilities (version 0.4 divides the scores
by sqrt(text bytes) before the softmax, so long and short texts get comparable confidences).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from labkit.validate import checks, finite, text, texts

from .document import Accounting, Document, _accounting, documents, keep_if


@functools.cache
def _identifier() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@checks(text=text)
def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the most likely language."""
    return _classified(text)


# A page's answer never changes, and lab 01 asks about the same pages several times (the
# histogram, the filter, the whole-pipeline rerun): remember the last few thousand. Bounded, so
# a worker streaming a real crawl holds at most 2,048 page texts (tens of MB).
@functools.lru_cache(maxsize=2048)
def _classified(text: str) -> tuple[str, float]:
    lang, prob = _identifier().classify(text.replace("\n", " "))
    return lang, float(prob)


detect_language.cache_clear = _classified.cache_clear  # to time the work itself, forget first


def _languages(value, name: str) -> tuple[str, ...]:
    return tuple(texts(value, name))  # a bare "en" would test membership in the string "en"


@checks(docs=documents, accounting=_accounting, languages=_languages, min_probability=finite)
def language_filter(
    docs: Iterable[Document],
    accounting: Accounting,
    languages: tuple[str, ...] = ("en",),
    min_probability: float = 0.65,
) -> Iterator[Document]:
    """Keep documents in `languages` with probability >= `min_probability` (FineWeb: en, 0.65)."""

    def tagged(docs):
        for doc in docs:
            lang, prob = detect_language(doc.text)
            yield doc.updated(language=lang, language_score=prob)

    def reason(doc):
        if doc.metadata["language"] not in languages:
            return f"other_language:{doc.metadata['language']}"
        if doc.metadata["language_score"] < min_probability:
            return "low_language_score"
        return None

    return keep_if(tagged(docs), accounting, "language_filter", reason)
