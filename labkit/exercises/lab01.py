"""Lab 01's exercises: the stop-word rule, the LSH S-curve, the Jaccard of shingles and the pair
byte-level BPE merges first.

Each reference is labkit's own implementation (the rule inside `gopher_quality_reason`,
`candidate_probability`, `jaccard`, `train_bpe`), run on inputs fixed here: nothing depends on
the lab's state or on the learner's answer.
"""

from __future__ import annotations

from collections import Counter

from ..data.bpe import train_bpe
from ..data.dedup import candidate_probability, jaccard
from ..data.quality import GOPHER_STOP_WORDS, gopher_quality_reason, words_of
from . import Mistake, exercise

# ------------------------------------------------------------------------ the stop-word rule
_OTHER_RULES_OFF = dict.fromkeys(
    ("min_doc_words", "max_doc_words", "min_avg_word_length", "max_avg_word_length",
     "max_symbol_word_ratio", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
     "min_alpha_words_ratio"))


def _stop_word_rule(text: str) -> bool:
    return gopher_quality_reason(text, **_OTHER_RULES_OFF) == "gopher_too_few_stop_words"


def _stop_word_cases() -> list[tuple[str]]:
    from ..loaders import load_records

    crafted = ["best cheap deal buy now", "The cat sat on the mat.", "the end", "The The",
               "to be or not to be", "", "the, the", "Another theory: other weather",
               "Go to the shop.", "With THE band", "the end of it", "(the) [of]"]
    return [(t,) for t in crafted] + [(r["text"],) for r in load_records("corpus")[:12]]


def _lowercased(text: str) -> bool:
    return sum(w.lower() in GOPHER_STOP_WORDS for w in words_of(text)) < 2


def _whitespace_words(text: str) -> bool:
    return sum(w in GOPHER_STOP_WORDS for w in text.split()) < 2


def _substrings(text: str) -> bool:
    return sum(text.count(w) for w in GOPHER_STOP_WORDS) < 2


def _at_most_two(text: str) -> bool:
    return sum(w in GOPHER_STOP_WORDS for w in words_of(text)) <= 2


exercise(
    id="01.stop_words",
    name="too_few_stop_words",
    kind="function",
    prompt="True when fewer than 2 of the page's words (words_of(text)) are Gopher stop words, "
           "compared case-sensitively",
    reference=_stop_word_rule,
    cases=_stop_word_cases,
    hint="count the tokens of words_of(text) that are in STOP_WORDS, as they are (no "
         "lower-casing); the page fails when that count is below 2",
    mistakes=[
        Mistake("lower-casing the words", _lowercased,
                "datatrove compares each word as it is: 'The' and 'THE' are not in the stop-word "
                "set, only 'the' is; do not lower-case"),
        Mistake("splitting on whitespace", _whitespace_words,
                "text.split() keeps punctuation on the word ('the,' is not 'the'); the rule's "
                "words are the word tokenizer's tokens, words_of(text)"),
        Mistake("counting substrings", _substrings,
                "text.count('the') also counts 'the' inside 'other' and 'weather': count whole "
                "words (tokens), not substrings"),
        Mistake("a threshold of 'at most 2'", _at_most_two,
                "the page needs at least 2 stop words, so it fails with fewer than 2 (< 2): a "
                "page with exactly 2 passes"),
    ],
)


# --------------------------------------------------------------------------- the S-curve
def _rows_and_bands_swapped(s, bands, rows):
    return 1 - (1 - s ** bands) ** rows


def _no_band_agrees(s, bands, rows):
    return (1 - s ** rows) ** bands


def _one_band(s, bands, rows):
    return s ** rows


exercise(
    id="01.candidate_probability",
    name="my_candidate_probability",
    kind="function",
    prompt="P(a pair with Jaccard s shares at least one of b bands of r rows) = "
           "1 - (1 - s^r)^b",
    reference=lambda s, bands, rows: float(candidate_probability(s, bands, rows)),
    cases=lambda: [(0.6, 14, 8), (0.7, 14, 8), (0.8, 14, 8), (0.85, 14, 8), (0.8, 9, 13),
                   (0.5, 20, 5), (0.9, 2, 3), (0.0, 14, 8), (1.0, 14, 8)],
    hint="one band agrees when all r of its rows agree (s^r); the pair is missed when every one "
         "of the b bands fails",
    mistakes=[
        Mistake("bands and rows swapped", _rows_and_bands_swapped,
                "a band agrees when all its r rows agree: s ** rows; the b bands are the "
                "independent tries: (1 - s ** rows) ** bands"),
        Mistake("the probability that no band agrees", _no_band_agrees,
                "(1 - s^r)^b is the chance that every band fails, i.e. that the pair is missed: "
                "a candidate needs at least one band, so take 1 minus it"),
        Mistake("one band only", _one_band,
                "s^r is the chance that one given band agrees; the pair has b bands to agree "
                "in, so it is caught unless all b fail"),
    ],
)


# --------------------------------------------------------------------- Jaccard of shingles
def _ngrams(words, n):
    return [tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))]


def _jaccard_reference(words_a, words_b, n):
    return jaccard(" ".join(words_a), " ".join(words_b), n)


def _word_sets(words_a, words_b, n):
    a, b = set(words_a), set(words_b)
    return len(a & b) / len(a | b)


def _multisets(words_a, words_b, n):
    a, b = Counter(_ngrams(words_a, n)), Counter(_ngrams(words_b, n))
    return sum((a & b).values()) / sum((a | b).values())


def _over_smaller(words_a, words_b, n):
    a, b = set(_ngrams(words_a, n)), set(_ngrams(words_b, n))
    return len(a & b) / min(len(a), len(b))


def _one_short(words_a, words_b, n):
    a = {tuple(words_a[i:i + n]) for i in range(max(len(words_a) - n, 1))}
    b = {tuple(words_b[i:i + n]) for i in range(max(len(words_b) - n, 1))}
    return len(a & b) / len(a | b)


def _jaccard_cases():
    base = "the cat sat on the mat while the dog sat on the rug by the door".split()
    mirror = base[:9] + ["bird"] + base[10:]
    longer = base + "and then the cat sat on the rug too".split()
    loop = "to be or not to be or not to be".split()
    reordered = "the dog sat on the rug while the cat sat on the mat by the door".split()
    return [(base, mirror, 5), (base, mirror, 3), (base, longer, 5), (base, list(base), 5),
            (base, reordered, 2), (loop, "to be or not to be".split(), 2), (loop, loop[2:], 3),
            ("a b c d e f g".split(), "h i j k l m n".split(), 3)]


exercise(
    id="01.jaccard",
    name="my_jaccard",
    kind="function",
    prompt="the Jaccard similarity |A & B| / |A | B| of the sets of word n-grams (tuples of n "
           "consecutive words) of two word lists",
    reference=_jaccard_reference,
    cases=_jaccard_cases,
    hint="a list of L words has L - n + 1 n-grams: {tuple(words[i:i + n]) for i in "
         "range(len(words) - n + 1)}; build both sets, then intersection size over union size",
    mistakes=[
        Mistake("word sets instead of n-gram sets", _word_sets,
                "sets of single words ignore order: 'the dog sat on the mat' and 'the mat sat "
                "on the dog' look identical; the shingles are n consecutive words"),
        Mistake("counting repeated n-grams", _multisets,
                "a shingle that occurs twice is still one element of the set: MinHash, and "
                "Jaccard, see sets, not counts"),
        Mistake("dividing by the smaller set", _over_smaller,
                "|A & B| / min(|A|, |B|) is the overlap (containment) coefficient: a short page "
                "inside a long one scores 1; Jaccard divides by the union"),
        Mistake("one n-gram short", _one_short,
                "range(len(words) - n) misses the last n-gram: a list of L words has L - n + 1 "
                "of them"),
    ],
)


# ------------------------------------------------------------------ the first BPE merge
def _first_merge(chunks):
    return train_bpe(list(chunks), 257, pattern=None).merges[0]


def _across_chunks(chunks):
    data = "".join(chunks).encode("utf-8")
    counts = Counter(zip(data, data[1:]))
    return min(counts, key=lambda pair: (-counts[pair], pair))


def _first_seen_tie(chunks):
    counts = Counter(p for c in chunks for p in zip(c.encode("utf-8"), c.encode("utf-8")[1:]))
    return counts.most_common(1)[0][0]


def _characters(chunks):
    counts = Counter(p for c in chunks for p in zip(map(ord, c), map(ord, c[1:])))
    return min(counts, key=lambda pair: (-counts[pair], pair))


exercise(
    id="01.bpe_pair",
    name="most_frequent_pair",
    kind="function",
    prompt="the pair of adjacent UTF-8 byte values that occurs most often inside the chunks "
           "(never across two chunks); ties go to the smallest pair",
    reference=_first_merge,
    cases=lambda: [(["a", "b", "a", "b", "a", "b", "cd", "cd"],), (["zy", "ab"],),
                   (["aaab", "daaab", "ac"],), (["éé", "ée"],), ([" the", " then", " they"],),
                   (["hello", " world", "!", "\n"],), (["ba", "ab", "ba"],)],
    hint="for each chunk, bytes = chunk.encode('utf-8'); count zip(bytes, bytes[1:]); return "
         "min(counts, key=lambda p: (-counts[p], p))",
    mistakes=[
        Mistake("pairs across chunk boundaries", _across_chunks,
                "the pre-tokenisation regex cut the text into chunks so that merges never cross "
                "a word boundary: count pairs inside each chunk only"),
        Mistake("ties broken by the first pair seen", _first_seen_tie,
                "Counter.most_common keeps the first pair seen among equal counts, which "
                "depends on the order of the chunks; labkit takes the smallest pair, so the "
                "merges do not depend on it"),
        Mistake("characters instead of bytes", _characters,
                "byte-level BPE starts from the 256 byte values: 'é' is two bytes (195, 169) "
                "in UTF-8, not the code point 233"),
    ],
)
