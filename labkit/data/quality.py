"""Heuristic quality rules from Gopher, C4 and FineWeb, with their published thresholds.

Each `*_reason(text)` returns the name of the first rule a text breaks, or None; the matching
step drops documents with that reason. The rules, their order, comparisons and reason names
follow datatrove's filters (prefixed with the rule set). A threshold set to None turns its rule
off. The Gopher quality rules count the tokens of the word tokenizer datatrove used for
English when FineWeb was built (NLTK's `word_tokenize`): words keep their inner hyphens, dots
and apostrophes ("t-SNE", "3.14", "e.g.", "O'Brien"), clitics split off ("don't" -> "do",
"n't"; "Smith's" -> "Smith", "'s"), and every other punctuation mark is a token of its own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

from labkit.validate import (
    checks,
    fraction,
    keywords_of,
    maybe,
    nonnegative,
    nonnegative_int,
    pairs,
    positive_int,
    text,
)

from .document import Accounting, Document, _accounting, documents, keep_if

# NLTK's word_tokenize (Punkt sentences, then ~30 Treebank substitutions per sentence) is about
# 60x slower than one regex over the crawl, so its rules that matter here are written as one
# regex, cross-checked against NLTK in tests. Since FineWeb-2 (December 2024) English goes
# through spaCy instead, which also splits "t-SNE" at the hyphen.
_ENDS_WORD = r"\s.,;:!?@#$%&*()\[\]{}<>\"'`«»“”‘’"  # characters no word token runs through
_CLITIC = r"(?i:n't|'(?:s|re|ve|ll|d|m))(?![\w'])"  # don't -> do n't, Smith's -> Smith 's
_CORE = rf"(?:(?!{_CLITIC})[^{_ENDS_WORD}])+"
_JOIN = rf"(?:\.|[,:](?=\d)|(?!{_CLITIC})')"  # foo.bar, 1,000, 12:30, O'Brien stay whole
_TOKENS = re.compile(
    r"(?:[^\W\d_]\.){2,}"  # abbreviations written with dots: e.g. U.S.
    r"|\.{2,}|--|''"  # ellipsis, double dash and a closing double quote are one token
    r"|(?i:can)(?=(?i:not)\b)"  # cannot -> can not
    rf"|{_CLITIC}|(?:[,:](?=\d))?{_CORE}(?:{_JOIN}{_CORE})*"
    r"|\S"  # any other mark alone
)
_RUNS = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w")
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")
C4_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
FINEWEB_STOP_CHARS = (".", "'", '"', "!", "?")


def words_of(text: str) -> list[str]:
    """The Gopher quality rule's words: word-tokenizer tokens, punctuation marks included."""
    return _TOKENS.findall(text)


def _word_and_mark_runs(text: str) -> list[str]:
    # The repetition and FineWeb rules still count runs of letters/digits and of punctuation:
    # datatrove gives them the same word tokenizer, but moving them changes other drops too.
    return _RUNS.findall(text)


# ---------------------------------------------------------------- Gopher quality (Rae et al.)
@checks(text=text, min_doc_words=maybe(nonnegative_int), max_doc_words=maybe(nonnegative_int),
        min_avg_word_length=maybe(nonnegative), max_avg_word_length=maybe(nonnegative),
        max_symbol_word_ratio=maybe(nonnegative), max_bullet_lines_ratio=maybe(fraction),
        max_ellipsis_lines_ratio=maybe(fraction), min_alpha_words_ratio=maybe(fraction),
        min_stop_words=maybe(nonnegative_int))
def gopher_quality_reason(
    text: str,
    min_doc_words: int | None = 50,
    max_doc_words: int | None = 100_000,
    min_avg_word_length: float | None = 3,
    max_avg_word_length: float | None = 10,
    max_symbol_word_ratio: float | None = 0.1,
    max_bullet_lines_ratio: float | None = 0.9,
    max_ellipsis_lines_ratio: float | None = 0.3,
    min_alpha_words_ratio: float | None = 0.8,
    min_stop_words: int | None = 2,
) -> str | None:
    words = words_of(text)
    n_words = max(len(words), 1)
    real_words = [w for w in words if _WORD.search(w)]  # not pure punctuation ('s is a word)
    if min_doc_words and len(real_words) < min_doc_words:
        return "gopher_short_doc"
    if max_doc_words and len(real_words) > max_doc_words:
        return "gopher_long_doc"
    mean_length = sum(map(len, real_words)) / max(len(real_words), 1)
    if min_avg_word_length and mean_length < min_avg_word_length:
        return "gopher_below_avg_threshold"
    if max_avg_word_length and mean_length > max_avg_word_length:
        return "gopher_above_avg_threshold"
    if max_symbol_word_ratio and text.count("#") / n_words > max_symbol_word_ratio:
        return "gopher_too_many_hashes"
    ellipses = text.count("...") + text.count("…")
    if max_symbol_word_ratio and ellipses / n_words > max_symbol_word_ratio:
        return "gopher_too_many_ellipsis"
    lines = text.splitlines() or [""]
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    if max_bullet_lines_ratio and bullets / len(lines) > max_bullet_lines_ratio:
        return "gopher_too_many_bullets"
    trailing = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if max_ellipsis_lines_ratio and trailing / len(lines) > max_ellipsis_lines_ratio:
        return "gopher_too_many_end_ellipsis"
    alpha_words = sum(any(c.isalpha() for c in w) for w in words)
    if min_alpha_words_ratio and alpha_words / n_words < min_alpha_words_ratio:
        return "gopher_below_alpha_threshold"
    # datatrove calls this reason "gopher_enough_stop_words"; it fires when there are too few.
    if min_stop_words and sum(w in GOPHER_STOP_WORDS for w in words) < min_stop_words:
        return "gopher_too_few_stop_words"
    return None


# ------------------------------------------------------------- Gopher repetition (Rae et al.)
def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, their characters), counting every repeat after the first."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count, chars = count + 1, chars + len(item)
        seen.add(item)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram: its length times its count."""
    ngrams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not ngrams:
        return 0
    gram, count = ngrams.most_common(1)[0]
    return len(gram) * count


def _duplicated_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one; a repeat skips its n words."""
    seen: set[str] = set()
    chars, i = 0, 0
    while i < len(words) - n + 1:
        gram = "".join(words[i:i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


@checks(text=text, dup_line_frac=maybe(fraction), dup_para_frac=maybe(fraction),
        dup_line_char_frac=maybe(fraction), dup_para_char_frac=maybe(fraction),
        top_n_grams=pairs(positive_int, fraction), dup_n_grams=pairs(positive_int, fraction))
def gopher_repetition_reason(
    text: str,
    dup_line_frac: float | None = 0.3,
    dup_para_frac: float | None = 0.3,
    dup_line_char_frac: float | None = 0.2,
    dup_para_char_frac: float | None = 0.2,
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16)),
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
) -> str | None:
    if not text.strip():
        return "gopher_empty_doc"
    paragraphs = re.split(r"\n{2,}", text.strip())
    count, chars = _duplicates(paragraphs)
    if dup_para_frac and count / len(paragraphs) > dup_para_frac:
        return "gopher_dup_para_frac"
    if dup_para_char_frac and chars / len(text) > dup_para_char_frac:
        return "gopher_dup_para_char_frac"
    lines = re.split(r"\n+", text)
    count, chars = _duplicates(lines)
    if dup_line_frac and count / len(lines) > dup_line_frac:
        return "gopher_dup_line_frac"
    if dup_line_char_frac and chars / len(text) > dup_line_char_frac:
        return "gopher_dup_line_char_frac"
    words = _word_and_mark_runs(text)
    for n, frac in top_n_grams:
        if _top_ngram_chars(words, n) / len(text) > frac:
            return f"gopher_top_{n}_gram"
    for n, frac in dup_n_grams:
        if _duplicated_ngram_chars(words, n) / len(text) > frac:
            return f"gopher_duplicated_{n}_n_grams"
    return None


# ------------------------------------------------------------------------ C4 (Raffel et al.)
@checks(text=text, min_words_per_line=nonnegative_int, max_word_length=positive_int,
        min_num_sentences=nonnegative_int)
def c4_clean(
    text: str,
    min_words_per_line: int = 3,
    max_word_length: int = 1000,
    min_num_sentences: int = 5,
    remove_citations: bool = True,
) -> tuple[str, str | None, Counter]:
    """(cleaned text, page-level drop reason or None, lines removed per rule).

    Line rules remove lines (too long a word, no terminal punctuation, fewer than 3 words,
    "javascript", cookie and terms-of-use phrases); page rules drop the whole page ("lorem
    ipsum", a curly bracket, fewer than 5 sentences left).
    """
    kept, removed, sentences = [], Counter(), 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if any(len(w) > max_word_length for w in words):
            removed["too_long_word"] += 1
            continue
        if remove_citations:
            line = C4_CITATION.sub("", line)
        if not line.endswith(C4_END_PUNCTUATION) or line.endswith("..."):
            removed["no_terminal_punct"] += 1
            continue
        if len(words) < min_words_per_line:
            removed["too_few_words"] += 1
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            return text, "c4_lorem_ipsum", removed
        if "javascript" in lower:
            removed["javascript"] += 1
            continue
        if "{" in line:
            return text, "c4_curly_bracket", removed
        if any(phrase in lower for phrase in C4_POLICY_PHRASES):
            removed["policy"] += 1
            continue
        sentences += len(re.findall(r"[.!?]+[\"']?(?=\s|$)", line)) or 1
        kept.append(line)
    if sentences < min_num_sentences:
        return text, "c4_too_few_sentences", removed
    return "\n".join(kept).strip(), None, removed


# -------------------------------------------------------------------- FineWeb (Penedo et al.)
@checks(text=text, line_punct_thr=fraction, short_line_thr=fraction,
        short_line_length=nonnegative_int, char_duplicates_ratio=fraction, new_line_ratio=nonnegative)
def fineweb_reason(
    text: str,
    line_punct_thr: float = 0.12,
    short_line_thr: float = 0.67,
    short_line_length: int = 30,
    char_duplicates_ratio: float = 0.01,
    new_line_ratio: float = 0.3,
) -> str | None:
    if not text.strip():
        return "fineweb_empty_doc"
    lines = text.split("\n")
    if sum(line.endswith(FINEWEB_STOP_CHARS) for line in lines) / len(lines) <= line_punct_thr:
        return "fineweb_line_punct_ratio"
    if sum(len(line) <= short_line_length for line in lines) / len(lines) >= short_line_thr:
        return "fineweb_short_line_ratio"
    _, dup_chars = _duplicates([line for line in lines if line.strip()])
    if dup_chars / len(text.replace("\n", "")) >= char_duplicates_ratio:
        return "fineweb_char_dup_ratio"
    if text.count("\n") / max(len(_word_and_mark_runs(text)), 1) > new_line_ratio:
        return "fineweb_list_ratio"
    return None


# ----------------------------------------------------------------------------------- steps
@checks(docs=documents, accounting=_accounting, thresholds=keywords_of(gopher_quality_reason))
def gopher_quality(docs: Iterable[Document], accounting: Accounting, **thresholds):
    return keep_if(docs, accounting, "gopher_quality",
                   lambda doc: gopher_quality_reason(doc.text, **thresholds))


@checks(docs=documents, accounting=_accounting,
        thresholds=keywords_of(gopher_repetition_reason))
def gopher_repetition(docs: Iterable[Document], accounting: Accounting, **thresholds):
    return keep_if(docs, accounting, "gopher_repetition",
                   lambda doc: gopher_repetition_reason(doc.text, **thresholds))


@checks(docs=documents, accounting=_accounting, thresholds=keywords_of(fineweb_reason))
def fineweb_filter(docs: Iterable[Document], accounting: Accounting, **thresholds):
    return keep_if(docs, accounting, "fineweb_filter",
                   lambda doc: fineweb_reason(doc.text, **thresholds))


@checks(docs=documents, accounting=_accounting, params=keywords_of(c4_clean))
def c4_filter(docs: Iterable[Document], accounting: Accounting, **params) -> Iterator[Document]:
    """C4's rules: bad lines are removed (counted in metadata), bad pages dropped."""
    for doc in docs:
        text, reason, removed = c4_clean(doc.text, **params)
        if reason:
            accounting.drop(doc.id, "c4_filter", reason)
        else:
            yield doc.updated(text=text, c4_lines_removed=sum(removed.values()))
