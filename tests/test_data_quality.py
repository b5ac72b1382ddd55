"""Quality rules: one crafted text per rule returns exactly that rule's reason."""

from __future__ import annotations

import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.data import (
    Accounting,
    Document,
    c4_clean,
    c4_filter,
    fineweb_filter,
    fineweb_reason,
    gopher_quality,
    gopher_quality_reason,
    gopher_repetition,
    gopher_repetition_reason,
    run_pipeline,
)
from labkit.data.quality import words_of
from labkit.loaders import load_records

LINES = [
    "The river runs through the valley and feeds the old farms with water.",
    "Farmers have planted wheat and barley along its banks for many centuries.",
    "In spring the snow melts in the mountains and the water level rises quickly.",
    "Engineers built a stone bridge that still carries carts and bicycles today.",
    "Children learn to swim in the shallow pools that form near the eastern shore.",
    "Local historians say that the first mill was built with timber from the forest.",
    "Visitors often walk along the path to watch herons fishing in the reeds.",
    "The town council meets every month to discuss how to protect the river.",
]
CLEAN = "\n".join(LINES)


def _filler(rng: random.Random, n_chars: int) -> list[str]:
    """Distinct random words adding up to about n_chars characters (with spaces)."""
    words, total = [], 0
    while total < n_chars:
        word = "".join(rng.choices("bcdfghjklmnpqrstvwxz", k=rng.randint(5, 8)))
        words.append(word)
        total += len(word) + 1
    return words


def _repeated(phrase: str, unit_chars: int, count: int = 40, seed: int = 0) -> str:
    """`phrase` repeated `count` times, each time followed by fresh filler words."""
    rng = random.Random(seed)
    units = [" ".join([phrase, *_filler(rng, unit_chars - len(phrase) - 1)]) for _ in range(count)]
    return " ".join(units)


GOPHER_QUALITY_CASES = {
    "gopher_short_doc": "The cat sat on the mat with the dog.",
    "gopher_long_doc": " ".join(["river"] * 100_001),
    "gopher_below_avg_threshold": " ".join(["a", "to", "be", "of", "it", "is", "we", "go"] * 10),
    "gopher_above_avg_threshold": " ".join(["extraordinarily", "incomprehensibilities"] * 30),
    "gopher_too_many_hashes": CLEAN + "\n" + " ".join(f"#topic{i}" for i in range(40)),
    "gopher_too_many_ellipsis": CLEAN + "\n" + " ".join(f"wait{i}..." for i in range(40)),
    "gopher_too_many_bullets": "\n".join("- " + line for line in LINES),
    "gopher_too_many_end_ellipsis": "\n".join(
        line[:-1] + "..." if i % 2 else line for i, line in enumerate(LINES)
    ),
    "gopher_below_alpha_threshold": CLEAN + "\n" + " ".join(str(1000 + i) for i in range(60)),
    "gopher_too_few_stop_words": " ".join(
        ["Rivers", "flow", "quickly", "through", "green", "valleys", "while", "birds", "sing",
         "above", "tall", "trees", "near", "quiet", "villages."] * 4
    ),
}

GOPHER_REPETITION_CASES = {
    "gopher_dup_para_frac": "\n\n".join([LINES[0], LINES[1], LINES[0], LINES[1]]),
    "gopher_dup_para_char_frac": "\n\n".join(
        [f"Short paragraph number {i}." for i in range(10)] + [CLEAN, CLEAN]
    ),
    "gopher_dup_line_frac": "\n".join(LINES[:5] + LINES[:3]),
    "gopher_dup_line_char_frac": "\n".join(
        [f"Line number {i} is here." for i in range(9)] + [" ".join(LINES[:3])] * 2
    ),
    "gopher_top_2_gram": " ".join(f"red fox alpha{i}" for i in range(60)),
    "gopher_top_3_gram": _repeated("red fox ran", 44),
    "gopher_top_4_gram": _repeated("red fox ran far", 72),
}
# A repeated n-word phrase of 4-letter words: its duplicated characters just exceed the n-gram
# threshold while shorter n-grams stay under theirs.
PHRASE = "lake dove mint corn pear sand wolf moss tide fern".split()
for _n, _thr in [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]:
    GOPHER_REPETITION_CASES[f"gopher_duplicated_{_n}_n_grams"] = _repeated(
        " ".join(PHRASE[:_n]), round(4 * _n * 0.975 / (_thr + 0.008))
    )

C4_CASES = {
    "c4_lorem_ipsum": CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "c4_curly_bracket": CLEAN + "\nThe template uses {name} as a placeholder here.",
    "c4_too_few_sentences": "\n".join(LINES[:3]),
}

FINEWEB_CASES = {
    "fineweb_line_punct_ratio": "\n".join(line[:-1] for line in LINES),
    "fineweb_short_line_ratio": "\n".join(f"Rivers flow to sea {i}." for i in range(10)),
    "fineweb_char_dup_ratio": CLEAN + "\n" + LINES[0],
    "fineweb_list_ratio": "\n".join(f"Supercalifragilisticexpialidocious{i}." for i in range(20)),
}


def test_clean_text_passes_every_rule():
    assert gopher_quality_reason(CLEAN) is None
    assert gopher_repetition_reason(CLEAN) is None
    text, reason, removed = c4_clean(CLEAN)
    assert (text, reason, sum(removed.values())) == (CLEAN, None, 0)
    assert fineweb_reason(CLEAN) is None


@pytest.mark.parametrize("reason", sorted(GOPHER_QUALITY_CASES))
def test_gopher_quality_rule(reason):
    assert gopher_quality_reason(GOPHER_QUALITY_CASES[reason]) == reason


@pytest.mark.parametrize("reason", sorted(GOPHER_REPETITION_CASES))
def test_gopher_repetition_rule(reason):
    assert gopher_repetition_reason(GOPHER_REPETITION_CASES[reason]) == reason


@pytest.mark.parametrize("reason", sorted(C4_CASES))
def test_c4_page_rule(reason):
    assert c4_clean(C4_CASES[reason])[1] == reason


@pytest.mark.parametrize("reason", sorted(FINEWEB_CASES))
def test_fineweb_rule(reason):
    assert fineweb_reason(FINEWEB_CASES[reason]) == reason


def test_c4_line_rules_remove_lines_and_keep_the_page():
    bad_lines = [
        "Please enable JavaScript to view this page.",
        "Read our privacy policy before you continue.",
        "Menu",
        "Go home.",
        "x" * 1001 + " is a very long word.",
    ]
    text, reason, removed = c4_clean(CLEAN + "\n" + "\n".join(bad_lines) + "\nA note here.[1]")
    assert reason is None
    assert text == CLEAN + "\nA note here."
    assert removed == {"javascript": 1, "policy": 1, "no_terminal_punct": 1, "too_few_words": 1,
                       "too_long_word": 1}


def test_thresholds_are_keyword_arguments_and_none_disables_a_rule():
    short = GOPHER_QUALITY_CASES["gopher_short_doc"]
    assert gopher_quality_reason(short, min_doc_words=5, min_stop_words=None) is None
    duplicated = FINEWEB_CASES["fineweb_char_dup_ratio"]
    assert fineweb_reason(duplicated, char_duplicates_ratio=0.5) is None


@pytest.mark.parametrize(
    ("step", "cases"),
    [(gopher_quality, GOPHER_QUALITY_CASES), (gopher_repetition, GOPHER_REPETITION_CASES),
     (c4_filter, C4_CASES), (fineweb_filter, FINEWEB_CASES)],
)
def test_steps_record_the_rule_as_drop_reason(step, cases):
    docs = [Document("clean", CLEAN)] + [Document(name, text) for name, text in cases.items()]
    accounting = Accounting()
    kept, table = run_pipeline([step], docs, accounting)
    assert [d.id for d in kept] == ["clean"]
    assert {doc_id: reason for doc_id, _, reason in accounting.drops} == {k: k for k in cases}
    row = table.iloc[0]
    assert (row["step"], row["in"], row["kept"], row["dropped"]) == (
        step.__name__, len(docs), 1, len(cases))
    assert row["reasons"] == dict.fromkeys(cases, 1)


# ------------------------------------------------- the Gopher quality rule's word tokenizer
def _nltk_words(text: str) -> list[str]:
    """NLTK's word_tokenize as datatrove ran it for FineWeb (Punkt sentences, then Treebank);
    the untrained Punkt model stands in for the downloaded English one."""
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    tokens = [t for s in PunktSentenceTokenizer().tokenize(text)
              for t in NLTKWordTokenizer().tokenize(s)]
    return [_same_quote(t) for t in tokens]


def _same_quote(token: str) -> str:
    return '"' if token in ("``", "''", '"') else token  # Treebank rewrites double quotes


WORD_CASES = [
    "We used t-SNE to plot the embeddings. Don't stop now!",
    "Smith's cat can't sleep; it cannot rest, so they're awake and I'm tired.",
    "It costs $5 (3.14 per unit), 1,000 units at 12:30 or 50% off -- really...",
    'x=1; print(x) # a comment with foo.bar and "quoted text."',
    "O'Brien sings rock'n'roll at the state-of-the-art hall? Yes!",
    "Write to mira@example.org or visit 203.0.113.5 today.",
]


@pytest.mark.parametrize("text", WORD_CASES)
def test_words_match_nltk_word_tokenize(text):
    assert [_same_quote(w) for w in words_of(text)] == _nltk_words(text)


def test_words_match_nltk_on_the_heldout_corpus():
    texts = [r["text"] for r in load_records("heldout")][:60]
    for text in texts:
        assert [_same_quote(w) for w in words_of(text)] == _nltk_words(text)


def test_hyphenated_words_and_contractions_keep_the_alpha_rule():
    assert words_of("t-SNE") == ["t-SNE"]
    assert words_of("don't") == ["do", "n't"]
    assert words_of("e.g. U.S. cannot") == ["e.g.", "U.S.", "can", "not"]
    # Every token of a code-heavy English sentence with contractions has a letter, except the
    # sentence's period: one punctuation token in eight, where runs of letters and of
    # punctuation made three in ten (t - SNE, don ' t).
    text = " ".join(["We don't use t-SNE here, it's slow."] * 10)
    tokens = words_of(text)
    alpha = sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens)
    assert alpha > 0.8
    runs = re.findall(r"\w+|[^\w\s]+", text)
    assert sum(any(c.isalpha() for c in t) for t in runs) / len(runs) < 0.8
    padded = text + " " + CLEAN
    assert gopher_quality_reason(padded) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab1 .,:;'-\"()$#@\n") + ["n't", "'s", "...", "can"]),
                max_size=80).map("".join))
def test_property_words_cover_every_character_once(text):
    tokens = words_of(text)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
    assert "".join(tokens) == re.sub(r"\s", "", text)


def _scaling(fn, unit: str, small: int = 8 << 10, large: int = 512 << 10) -> tuple[float, float]:
    """(best time on `small` characters of unit repeated, best time on `large`), interleaved."""
    texts = [(unit * (size // len(unit) + 1))[:size] for size in (small, large)]
    best = [float("inf"), float("inf")]
    for _ in range(3):
        for i, text in enumerate(texts):
            start = time.perf_counter()
            fn(text)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


@pytest.mark.parametrize("unit", ["a-", "a.", "a'", "1,", "n't", "can"])
def test_words_take_linear_time_on_adversarial_runs(unit):
    # 64x the input: linear code takes about 64x the time (up to ~5x more per character once
    # the text outgrows the CPU caches, measured on a loaded machine); quadratic takes 4096x.
    small, large = _scaling(words_of, unit)
    assert large < 1000 * small + 0.05, (unit, small, large)
