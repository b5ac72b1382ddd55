"""pass@k: the chance that at least one of k sampled programs passes its unit tests.

Sample n >= k programs per problem, count the c that pass, and estimate pass@k without bias as
1 - C(n-c, k) / C(n, k) (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").
The binomials overflow for large n, so the Codex paper computes the same number as the product
1 - prod_{i=n-c+1..n} (1 - k/i). The tempting shortcut 1 - (1 - c/n)^k plugs the estimate c/n
into a concave function and so, by Jensen's inequality, underestimates pass@k on average; for
any single (n, c, k) it is never above the unbiased value.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import LabkitError


def _check_counts(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise LabkitError(f"{name}={value!r} must be an integer")
    if n < 1:
        raise LabkitError(f"n={n} samples: need at least one sample per problem")
    if not 0 <= c <= n:
        raise LabkitError(f"c={c} passing samples: valid is 0 <= c <= n={n}")
    if not 1 <= k <= n:
        raise LabkitError(f"k={k}: valid is 1 <= k <= n={n} (draw at least k samples per problem)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c passed (Codex paper's form)."""
    _check_counts(n, c, k)
    if n - c < k:
        # Every subset of k samples contains a passing one.
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def naive_pass_at_k(n: int, c: int, k: int) -> float:
    """The biased plug-in estimate 1 - (1 - c/n)^k (never above `pass_at_k` for the same counts)."""
    _check_counts(n, c, k)
    return float(1.0 - (1.0 - c / n) ** k)


def _counts(counts: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    pairs = [tuple(pair) for pair in counts]
    if not pairs:
        raise LabkitError("counts is empty: give one (n, c) pair per problem")
    return pairs


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k of a benchmark: the unbiased estimate averaged over problems, given (n, c) each."""
    return float(np.mean([pass_at_k(n, c, k) for n, c in _counts(counts)]))


def mean_naive_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """The naive estimate averaged over problems, for comparison with `mean_pass_at_k`."""
    return float(np.mean([naive_pass_at_k(n, c, k) for n, c in _counts(counts)]))


def pass_at_k_table(results, ks: Iterable[int] = (1, 5, 10)):
    """pass@k (unbiased and naive) for each k from per-sample results.

    `results` is a DataFrame with a `task_id` column and either a boolean `passed` column or the
    `outcome` column of `evaluate_completions`. k larger than the smallest n is left out.
    """
    import pandas as pd

    if "task_id" not in results.columns:
        raise LabkitError("results has no 'task_id' column; pass evaluate_completions' DataFrame")
    if "passed" in results.columns:
        passed = results["passed"].astype(bool)
    elif "outcome" in results.columns:
        passed = results["outcome"] == "passed"
    else:
        raise LabkitError("results needs a 'passed' or an 'outcome' column")
    per_task = passed.groupby(results["task_id"], sort=False).agg(["size", "sum"])
    counts = list(zip(per_task["size"].astype(int), per_task["sum"].astype(int)))
    if not counts:
        raise LabkitError("results is empty: no samples were evaluated")
    n_min = min(n for n, _ in counts)
    rows = [
        {
            "k": k,
            "pass@k": mean_pass_at_k(counts, k),
            "naive pass@k": mean_naive_pass_at_k(counts, k),
            "problems": len(counts),
            "samples per problem": n_min,
        }
        for k in ks
        if k <= n_min
    ]
    if not rows:
        raise LabkitError(f"every k in {list(ks)} exceeds the {n_min} samples per problem")
    return pd.DataFrame(rows)
