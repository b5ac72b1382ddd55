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
    if isinstance(counts, (str, bytes, dict)) or not isinstance(counts, Iterable):
        raise LabkitError(f"counts must be a list of (n, c) pairs, got {type(counts).__name__}")
    pairs = [tuple(pair) if isinstance(pair, (tuple, list)) else pair for pair in counts]
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise LabkitError(f"counts[{i}]={pair!r} must be an (n, c) pair")
        try:
            _check_counts(pair[0], pair[1], 1)
        except LabkitError as exc:
            raise LabkitError(f"counts[{i}]={pair!r}: {exc}") from None
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

    if not isinstance(results, pd.DataFrame):
        raise LabkitError(f"results must be evaluate_completions' DataFrame, got {type(results).__name__}")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise LabkitError(f"ks must be a list of k values, got {ks!r}")
    ks = list(ks)
    for i, k in enumerate(ks):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise LabkitError(f"ks[{i}]={k!r}: every k must be an integer >= 1")
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
        raise LabkitError(f"ks: every k in {list(ks)} exceeds the {n_min} samples per problem")
    return pd.DataFrame(rows)


def evaluate_distinct(tasks, completions, timeout: float = 3.0, limits=None, workers: int = 1):
    """`sandbox.evaluate_completions`, running each distinct program once: one row per sample.

    A small sampler repeats itself (the same completion several times for one task), and a
    chat model asked for code writes prose. A program's outcome depends only on its text (the
    tasks' tests are deterministic), so a repeat gets the outcome of its first run; and a
    program that does not compile gets the sandbox's own verdict for it ("error", "not valid
    Python: ...") from compile() here, which parses the text and runs none of it. Column
    `ran` says what happened to each sample: "sandbox", "repeat of sample k" or "did not
    compile".
    """
    import pandas as pd

    from .sandbox import evaluate_completions, humaneval_program, validate_code_tasks

    by_id = {t["task_id"]: t for t in validate_code_tasks(tasks)}
    if not isinstance(completions, dict) or not completions:
        raise LabkitError("completions must be a non-empty dict {task_id: [completion, ...]}")
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise LabkitError(f"completions for unknown task ids {unknown[:5]}")
    first: dict[tuple[str, str], int] = {}
    rows, to_run = [], {}
    for task_id, samples in completions.items():
        if isinstance(samples, str) or not isinstance(samples, (list, tuple)):
            raise LabkitError(f"completions[{task_id!r}] must be a list of completions")
        for index, completion in enumerate(samples):
            if not isinstance(completion, str):
                raise LabkitError(f"completions[{task_id!r}][{index}] is not a string of code")
            row = {"task_id": task_id, "sample": index}
            if (task_id, completion) in first:
                row["ran"] = f"repeat of sample {first[task_id, completion]}"
            else:
                first[task_id, completion] = index
                try:  # the sandbox's wrapper compiles exactly so before it runs anything
                    compile(humaneval_program(by_id[task_id], completion), "program.py", "exec")
                    row["ran"] = "sandbox"
                    to_run.setdefault(task_id, []).append(completion)
                except (SyntaxError, ValueError) as exc:
                    row.update(ran="did not compile", outcome="error", passed=False, wall_s=0.0,
                               reason=f"not valid Python: {type(exc).__name__}: {exc}")
                except (RecursionError, MemoryError):  # too deep to parse here: the sandbox says
                    row["ran"] = "sandbox"
                    to_run.setdefault(task_id, []).append(completion)
            rows.append(row)
    outcomes = {}
    if to_run:
        ran = evaluate_completions(list(by_id.values()), to_run, timeout, limits, workers)
        for r in ran.to_dict("records"):
            outcomes[r["task_id"], to_run[r["task_id"]][r["sample"]]] = r
    verdict = ("outcome", "passed", "reason", "wall_s")
    for row in rows:  # a program's first sample comes before its repeats
        program = (row["task_id"], completions[row["task_id"]][row["sample"]])
        if row["ran"] == "sandbox":
            row.update({k: outcomes[program][k] for k in verdict})
        elif row["ran"] == "did not compile":
            outcomes[program] = row
        else:
            row.update({k: outcomes[program][k] for k in verdict})
    columns = ["task_id", "sample", "outcome", "passed", "reason", "wall_s", "ran"]
    return pd.DataFrame(rows)[columns]
