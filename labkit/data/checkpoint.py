"""Lab 01's checkpoint: Part 1 of the lab (read the WARC, extract, identify the language, apply
the quality rules, remove duplicates) in one call, so that a learner can start Part 2 in a
fresh kernel.

The steps and settings are Part 1's, in its order, sharing one `Accounting`; the extraction
runs in this process (Part 1 shows it on worker processes; the result is the same).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit.validate import checks, existing_file

from .dedup import exact_dedup, minhash_dedup
from .document import Accounting, Document, run_pipeline
from .extract import extract, extract_main_text
from .langid import detect_language, language_filter
from .pii import pii_scrub
from .quality import c4_filter, fineweb_filter, gopher_quality, gopher_repetition
from .warc import read_warc

QUALITY_STEPS = (gopher_repetition, gopher_quality, c4_filter, fineweb_filter)  # FineWeb's order


@dataclass
class PartOne:
    """What Part 2 of lab 01 starts from."""

    accounting: Accounting  # one row per step so far: read_warc ... minhash_dedup
    pages: list[Document]  # the HTML pages read_warc kept
    main_text: Callable[[str], str]  # page HTML -> its extracted text ('' when none)
    extracted: list[Document]  # the pages with text left after extraction
    language_of: dict[str, tuple[str, float]]  # extracted doc id -> (language, probability)
    english: list[Document]  # kept by the language filter
    good: list[Document]  # kept by the quality rules
    minhash_step: Callable  # the near-duplicate step, with the profile's bands and rows
    unique: list[Document]  # kept by exact and near-duplicate removal


def language_step(settings) -> Callable:
    """The language filter with the profile's languages and FineWeb's threshold."""
    return functools.partial(language_filter, languages=settings.languages,
                             min_probability=settings.min_language_score)


def minhash_step(settings) -> Callable:
    """MinHash-LSH dedup with the profile's hashes, bands x rows, seed and n-gram size."""
    return functools.partial(minhash_dedup, num_perm=settings.num_perm, bands=settings.bands,
                             rows=settings.rows, seed=settings.minhash_seed, n=settings.ngram)


def cleaning_steps(settings, *, extractor: Callable[[str], str] | None = None,
                   quality_filters: bool = True, dedup: bool = True,
                   score_step: Callable | None = None) -> list[Callable]:
    """Lab 01's whole pipeline, in its order, with the profile's `settings`: extract (with
    `extractor`, default trafilatura), the language filter, the quality rules, exact and
    near-duplicate removal, `score_step` (the fitted edu scorer's filter, where given) and the
    PII scrubber. The lab, the capstone, the pre-training corpora, the datatrove run and their
    tests all build their steps here, so they clean the same way."""
    steps = [functools.partial(extract, extractor=extractor) if extractor else extract,
             language_step(settings)]
    if quality_filters:
        steps += QUALITY_STEPS
    if dedup:
        steps += [exact_dedup, minhash_step(settings)]
    if score_step is not None:
        steps.append(score_step)
    return [*steps, pii_scrub]


@checks(warc_path=existing_file)
def run_part_one(warc_path: str | Path, settings) -> PartOne:
    """Read, extract, language filter, quality rules, dedup: lab 01 up to its checkpoint."""
    accounting = Accounting()
    pages = list(read_warc(warc_path, accounting))
    main_text = {page.text: extract_main_text(page.text) for page in pages}.__getitem__
    extracted, _ = run_pipeline([functools.partial(extract, extractor=main_text)], pages,
                                accounting)
    language_of = {doc.id: detect_language(doc.text) for doc in extracted}
    english, _ = run_pipeline([language_step(settings)], extracted, accounting)
    good, _ = run_pipeline(list(QUALITY_STEPS), english, accounting)
    near = minhash_step(settings)
    unique, _ = run_pipeline([exact_dedup, near], good, accounting)
    return PartOne(accounting, pages, main_text, extracted, language_of, english, good, near,
                   unique)
