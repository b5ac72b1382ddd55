"""Contamination: the n-gram detector finds every planted leak and flags no clean item."""

from __future__ import annotations

import random
import string

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.evaluation import (
    build_ngram_index,
    clean_subset,
    clean_vs_contaminated,
    find_leaks,
    item_text,
    word_ngrams,
)


def pseudo_words(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(count)]


def make_world(seed: int = 0, n_items: int = 40, n_leaks: int = 8):
    """A corpus of random documents, a benchmark, and a few items pasted into the corpus with
    new case, punctuation and line breaks (as a scraped page would carry them)."""
    rng = random.Random(seed)
    vocab = pseudo_words(rng, 3000)
    corpus = [" ".join(rng.choices(vocab, k=rng.randint(80, 200))) + "." for _ in range(60)]
    items = []
    for i in range(n_items):
        question = " ".join(rng.choices(vocab, k=rng.randint(10, 18))).capitalize() + "?"
        choices = [" ".join(rng.choices(vocab, k=3)) for _ in range(4)]
        items.append(
            {
                "id": f"q{i}",
                "subject": "s",
                "question": question,
                "choices": choices,
                "answer": i % 4,
            }
        )
    leaked = sorted(rng.sample(range(n_items), n_leaks))
    for number, i in enumerate(leaked):
        item = items[i]
        answer = item["choices"][item["answer"]]
        if number % 2:  # a quiz page: a label between question and answer
            pasted = f"{item['question'].upper()}\n  Answer -- {answer}!"
        else:  # a bare copy
            pasted = f"{item['question'].lower()} {answer.title()}."
        doc = rng.randrange(len(corpus))
        words = corpus[doc].split()
        cut = rng.randrange(len(words))
        corpus[doc] = " ".join(words[:cut] + [pasted] + words[cut:])
    return corpus, items, {items[i]["id"] for i in leaked}


@pytest.mark.parametrize("n", [8, 13])
def test_finds_every_planted_leak_and_no_clean_item(n):
    corpus, items, leaked = make_world()
    report = find_leaks(items, build_ngram_index(corpus, n))
    flagged = set(report.loc[report["contaminated"], "id"])
    assert flagged == leaked
    assert (report["overlap"] == 1.0).sum() == len(leaked) // 2  # the bare copies
    for _, row in report[report["contaminated"]].iterrows():
        item = next(it for it in items if it["id"] == row["id"])
        # the reported span is the item's own text: all of it for a bare copy, the question
        # alone when a label sits between question and answer in the corpus
        assert row["span"] in (item_text(item), item["question"])
        assert (row["overlap"] == 1.0) == (row["span"] == item_text(item))
    clean = clean_subset(items, report)
    assert [it["id"] for it in clean] == [it["id"] for it in items if it["id"] not in leaked]


def test_partial_leak_reports_the_overlapping_span():
    corpus = [
        "intro words here " + "alpha beta gamma delta epsilon zeta eta theta iota kappa" + " outro"
    ]
    item = {
        "id": "x",
        "question": "Unrelated opening then Alpha, beta; gamma delta epsilon zeta eta theta iota kappa?",
        "choices": ["lambda", "mu"],
        "answer": 0,
    }
    report = find_leaks([item], build_ngram_index(corpus, n=8))
    row = report.iloc[0]
    assert row["contaminated"]
    assert row["span"] == "Alpha, beta; gamma delta epsilon zeta eta theta iota kappa?"
    assert row["overlapping"] == 3  # 10 shared words hold 3 eight-grams
    assert 0 < row["overlap"] < 1


def test_small_n_flags_clean_items_through_common_phrases():
    corpus = ["what is the capital of the old kingdom"]
    items = [
        {
            "id": "a",
            "question": "What is the name of the river?",
            "choices": ["x", "y"],
            "answer": 0,
        }
    ]
    assert find_leaks(items, build_ngram_index(corpus, 2))["contaminated"].all()  # "what is"
    assert not find_leaks(items, build_ngram_index(corpus, 8))["contaminated"].any()


@settings(max_examples=80, deadline=None)
@given(
    st.text(alphabet=string.ascii_letters + string.punctuation + " \n\t0123é", max_size=80),
    st.integers(1, 6),
)
def test_ngrams_match_lm_eval_janitor(text, n):
    from lm_eval.decontamination.janitor import Janitor
    from lm_eval.decontamination.janitor import word_ngrams as janitor_ngrams

    janitor = Janitor(ngram_n=n)
    assert word_ngrams(text, n) == list(janitor_ngrams(janitor.normalize_string(text), n))


def test_clean_vs_contaminated_accuracy():
    corpus, items, leaked = make_world(n_items=10, n_leaks=3)
    report = find_leaks(items, build_ngram_index(corpus, 13))
    # a model that memorised the leaks gets them right and guesses the rest wrong
    scores = pd.DataFrame(
        {"id": [it["id"] for it in items], "acc": [float(it["id"] in leaked) for it in items]}
    )
    table = clean_vs_contaminated(scores, report)
    assert table.loc["contaminated", "acc"] == 1.0
    assert table.loc["clean", "acc"] == 0.0
    assert table.loc["all", "acc"] == pytest.approx(0.3)
    assert table["items"].tolist() == [10, 7, 3]


def test_bad_input():
    with pytest.raises(LabkitError, match="n=0"):
        build_ngram_index(["a b c"], n=0)
    with pytest.raises(LabkitError, match="corpus is empty"):
        build_ngram_index([], n=8)
    with pytest.raises(LabkitError, match="not str"):
        build_ngram_index([b"bytes"], n=8)
    with pytest.raises(LabkitError, match="no benchmark items"):
        find_leaks([], build_ngram_index(["a b"], n=1))
    with pytest.raises(LabkitError, match="neither"):
        item_text({"id": "z"})
    short = {"id": "s", "question": "Too short?", "choices": ["a", "b"], "answer": 0}
    row = find_leaks([short], build_ngram_index(["Too short? a"], n=8)).iloc[0]
    assert row["ngrams"] == 0 and not row["contaminated"]  # shorter than n: cannot be flagged
