"""Small Python functions with docstrings and tests: the world's code genre and its code tasks.

Each family is a function shape with one integer constant (`add_k`, `is_divisible_by_k`...).
The corpus shows some (family, k) pairs; the HumanEval-like tasks ask for pairs the corpus never
shows, so a model has to generalise the pattern rather than recall a function.
"""

from __future__ import annotations

import random

# name template, signature, docstring, body, test inputs -> expected (as Python expressions)
FAMILIES = {
    "add": ("add_{k}", "x", "Return x plus {k}.", "return x + {k}",
            lambda k: [(f"{x}", x + k) for x in (0, 2, 10)]),
    "subtract": ("subtract_{k}", "x", "Return x minus {k}.", "return x - {k}",
                 lambda k: [(f"{x}", x - k) for x in (0, 5, 20)]),
    "multiply": ("multiply_by_{k}", "x", "Return x times {k}.", "return x * {k}",
                 lambda k: [(f"{x}", x * k) for x in (0, 3, 7)]),
    "divisible": ("is_divisible_by_{k}", "n", "Return True if n is divisible by {k}.",
                  "return n % {k} == 0", lambda k: [(f"{x}", x % k == 0) for x in (k, k + 1, 3 * k)]),
    "repeat": ("repeat_{k}_times", "text", "Return the text repeated {k} times.",
               "return text * {k}", lambda k: [('"ab"', "ab" * k), ('""', "")]),
    "power": ("power_of_{k}", "x", "Return x raised to the power {k}.", "return x ** {k}",
              lambda k: [(f"{x}", x ** k) for x in (1, 2, 3)]),
    "first": ("first_{k}", "items", "Return the first {k} items of the list.",
              "return items[:{k}]", lambda k: [("list(range(20))", list(range(20))[:k]), ("[]", [])]),
    "last": ("last_{k}", "items", "Return the last {k} items of the list.",
             "return items[-{k}:]", lambda k: [("list(range(20))", list(range(20))[-k:])]),
    "greater": ("is_greater_than_{k}", "x", "Return True if x is greater than {k}.",
                "return x > {k}", lambda k: [(f"{k}", False), (f"{k + 1}", True), ("0", False)]),
    "count_over": ("count_over_{k}", "items", "Return how many items are greater than {k}.",
                   "return sum(1 for x in items if x > {k})",
                   lambda k: [("list(range(20))", sum(1 for x in range(20) if x > k)), ("[]", 0)]),
}
CONSTANTS = list(range(2, 13))


def function_source(family: str, k: int) -> tuple[str, str, str]:
    """(name, prompt = signature + docstring, body) of one family member."""
    name_t, arg, doc, body, _ = FAMILIES[family]
    name = name_t.format(k=k)
    prompt = f'def {name}({arg}):\n    """{doc.format(k=k)}"""\n'
    return name, prompt, f"    {body.format(k=k)}\n"


def test_source(family: str, k: int, name: str) -> str:
    cases = FAMILIES[family][4](k)
    lines = [f"    assert {name}({arg}) == {expected!r}" for arg, expected in cases]
    return f"def test_{name}():\n" + "\n".join(lines) + "\n"


def corpus_pairs(seed: int) -> set[tuple[str, int]]:
    """The (family, k) pairs the corpus shows: about 60% of all, the rest kept for tasks."""
    rng = random.Random(seed)
    pairs = [(f, k) for f in sorted(FAMILIES) for k in CONSTANTS]
    rng.shuffle(pairs)
    return set(pairs[: int(0.6 * len(pairs))])


def lookup_module(world, rng: random.Random) -> tuple[str, str, list]:
    """A world-data module: a dict of facts and a lookup function with a test."""
    from .kb import Fact

    kind = rng.choice(["capital", "language", "currency"])
    countries = rng.sample(world.countries, 4)
    items = ",\n".join(f'    "{c.name}": "{getattr(c, kind)}"' for c in countries)
    const = {"capital": "CAPITALS", "language": "LANGUAGES", "currency": "CURRENCIES"}[kind]
    doc = {"capital": "Return the capital city of a country.",
           "language": "Return the main language of a country.",
           "currency": "Return the currency of a country."}[kind]
    c0 = countries[0]
    src = (f"{const} = {{\n{items},\n}}\n\n\ndef {kind}_of(country):\n    \"\"\"{doc}\"\"\"\n"
           f"    return {const}[country]\n\n\ndef test_{kind}_of():\n"
           f"    assert {kind}_of(\"{c0.name}\") == \"{getattr(c0, kind)}\"\n")
    facts = [Fact(c.name, kind, getattr(c, kind), "country") for c in countries]
    return f"{kind}_of", src, facts


def code_document(world, rng: random.Random):
    """One code document: a few functions of the corpus families, or a world lookup module."""
    if rng.random() < 0.25:
        name, src, facts = lookup_module(world, rng)
        return f"{name}.py", src, facts, ""
    allowed = sorted(corpus_pairs(world.seed))
    parts = []
    for family, k in rng.sample(allowed, k=rng.randint(1, 3)):
        name, prompt, body = function_source(family, k)
        parts.append(prompt + body + "\n\n" + test_source(family, k, name))
    return "functions.py", "\n\n".join(parts), [], ""


def code_tasks(seed: int, n: int = 40) -> list[dict]:
    """HumanEval-style tasks on (family, k) pairs the corpus never shows."""
    rng = random.Random(seed + 1)
    shown = corpus_pairs(seed)
    unseen = sorted((f, k) for f in FAMILIES for k in CONSTANTS if (f, k) not in shown)
    tasks = []
    for i, (family, k) in enumerate(rng.sample(unseen, k=min(n, len(unseen)))):
        name, prompt, body = function_source(family, k)
        checks = "\n".join(f"    assert candidate({arg}) == {expected!r}"
                           for arg, expected in FAMILIES[family][4](k))
        tasks.append({"task_id": f"WorldEval/{i}", "prompt": prompt, "entry_point": name,
                      "canonical_solution": body, "test": f"def check(candidate):\n{checks}\n",
                      "family": family})
    return tasks
