"""pass@k: the Codex paper's stable product form against the closed form, and the naive bias."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.evaluation import (
    mean_naive_pass_at_k,
    mean_pass_at_k,
    naive_pass_at_k,
    pass_at_k,
    pass_at_k_table,
)


@st.composite
def counts(draw):
    n = draw(st.integers(1, 200))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


@settings(max_examples=100, deadline=None)
@given(counts())
def test_pass_at_k_equals_closed_form(nck):
    n, c, k = nck
    closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)  # comb(m, k) = 0 when m < k
    assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(counts())
def test_naive_never_above_unbiased(nck):
    n, c, k = nck
    # each factor (n-c-i)/(n-i) of C(n-c,k)/C(n,k) is <= (n-c)/n
    assert naive_pass_at_k(n, c, k) <= pass_at_k(n, c, k) + 1e-12


def test_n_minus_c_below_k_is_certain():
    assert pass_at_k(10, 8, 3) == 1.0  # only 2 failures: any 3 samples include a pass
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 0, 10) == 0.0
    # the naive formula does not know this
    assert naive_pass_at_k(10, 8, 3) == pytest.approx(1 - 0.2**3)


def test_reference_values():
    # pass@1 is the fraction passing; n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert naive_pass_at_k(10, 3, 5) == pytest.approx(1 - 0.7**5)
    # large n: the binomials would overflow a float, the product form does not
    assert pass_at_k(10_000, 1, 100) == pytest.approx(0.01)


def test_naive_estimator_is_biased_low_in_expectation():
    # The true pass@k of a problem whose samples pass with probability p is 1 - (1-p)^k.
    # Averaging each estimator over the Binomial(n, p) distribution of c: the unbiased one
    # recovers it exactly, the naive one falls short (Jensen: 1-(1-x)^k is concave).
    n, k, p = 10, 5, 0.2
    truth = 1 - (1 - p) ** k
    weights = [math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
    unbiased = sum(w * pass_at_k(n, c, k) for c, w in enumerate(weights))
    naive = sum(w * naive_pass_at_k(n, c, k) for c, w in enumerate(weights))
    assert unbiased == pytest.approx(truth, abs=1e-12)
    assert naive == pytest.approx(0.59359, abs=1e-5)  # vs 0.67232: an 8-point underestimate
    assert naive < truth
    # and for a single count the gap is visible too
    assert pass_at_k(10, 1, 5) - naive_pass_at_k(10, 1, 5) == pytest.approx(0.5 - (1 - 0.9**5))


def test_means_and_table():
    pairs = [(10, 0), (10, 3), (10, 10)]
    assert mean_pass_at_k(pairs, 1) == pytest.approx((0 + 0.3 + 1) / 3)
    assert mean_naive_pass_at_k(pairs, 1) == pytest.approx((0 + 0.3 + 1) / 3)
    results = pd.DataFrame(
        {
            "task_id": ["a"] * 4 + ["b"] * 4,
            "outcome": ["passed", "failed", "timeout", "failed", "error"] + ["passed"] * 3,
        }
    )
    table = pass_at_k_table(results, ks=(1, 2, 8))
    assert table["k"].tolist() == [1, 2]  # k=8 exceeds the 4 samples per problem
    assert table.loc[0, "pass@k"] == pytest.approx((0.25 + 0.75) / 2)
    assert table.loc[1, "pass@k"] == pytest.approx(((1 - 3 / 6) + 1.0) / 2)


@pytest.mark.parametrize(
    "n, c, k, words",
    [(0, 0, 1, "n=0"), (5, 6, 1, "c=6"), (5, 2, 0, "k=0"), (5, 2, 6, "k=6"), (5, 2.0, 1, "c=2.0")],
)
def test_bad_counts_raise(n, c, k, words):
    with pytest.raises(LabkitError, match=words):
        pass_at_k(n, c, k)


def test_bad_tables_raise():
    with pytest.raises(LabkitError, match="empty"):
        mean_pass_at_k([], 1)
    with pytest.raises(LabkitError, match="task_id"):
        pass_at_k_table(pd.DataFrame({"outcome": ["passed"]}))


# --- each distinct program run once ----------------------------------------------------------

CODE_TASKS = [
    {"task_id": "w/0", "prompt": 'def double(x):\n    """Twice x."""\n', "entry_point": "double",
     "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-1) == -2\n"},
    {"task_id": "w/1", "prompt": "def first_word(s):\n", "entry_point": "first_word",
     "test": "def check(candidate):\n    assert candidate('salt and copper') == 'salt'\n"},
]


def test_distinct_programs_run_once_with_the_sandbox_s_verdicts(monkeypatch):
    from labkit.evaluation import passk, sandbox

    completions = {
        "w/0": ["    return 2 * x\n", "    return x + 2\n", "    return 2 * x\n", "    return x +* 2\n",
                "    return 2 * x\n", "    return x +* 2\n"],
        "w/1": ["    return s.split()[0]\n", "The first word is salt.\n", "The first word is salt.\n"],
    }
    runs = []
    real = sandbox.evaluate_completions

    def counting(tasks, to_run, *args):
        runs.extend((t, c) for t, cs in to_run.items() for c in cs)
        return real(tasks, to_run, *args)

    monkeypatch.setattr(sandbox, "evaluate_completions", counting)
    distinct = passk.evaluate_distinct(CODE_TASKS, completions, timeout=5.0)
    # only the three distinct programs that compile reach the sandbox, once each
    assert sorted(runs) == sorted([("w/0", "    return 2 * x\n"), ("w/0", "    return x + 2\n"),
                                   ("w/1", "    return s.split()[0]\n")])
    everything = real(CODE_TASKS, completions, 5.0)
    cols = ["task_id", "sample", "outcome", "passed"]
    assert distinct[cols].to_dict("records") == everything[cols].to_dict("records")
    for got, ran in zip(distinct["reason"], everything["reason"]):
        assert got == ran  # "not valid Python: SyntaxError: ..." as the sandbox words it
    assert distinct["ran"].tolist() == [
        "sandbox", "sandbox", "repeat of sample 0", "did not compile", "repeat of sample 0",
        "repeat of sample 3", "sandbox", "did not compile", "repeat of sample 1"]
    assert pass_at_k_table(distinct, [1, 2]).equals(pass_at_k_table(everything, [1, 2]))


def test_distinct_bad_input():
    from labkit.evaluation.passk import evaluate_distinct

    with pytest.raises(LabkitError, match="unknown task ids"):
        evaluate_distinct(CODE_TASKS, {"w/9": ["pass"]})
    with pytest.raises(LabkitError, match="non-empty dict"):
        evaluate_distinct(CODE_TASKS, {})
    with pytest.raises(LabkitError, match="list of completions"):
        evaluate_distinct(CODE_TASKS, {"w/0": "    return 2 * x\n"})
    with pytest.raises(LabkitError, match="not a string"):
        evaluate_distinct(CODE_TASKS, {"w/0": [None]})
