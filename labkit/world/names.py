"""Invented names for the world: pronounceable, unique, never real words we rely on.

Names are built from syllables with a seeded random generator; every call with the same seed
returns the same names in the same order.
"""

from __future__ import annotations

import random

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "br", "dr", "kr", "tr", "st", "th", "sh", "gl", "pl"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou"]
CODAS = ["", "", "", "", "n", "r", "l", "s", "m"]

SUFFIXES = {
    "country": ["ia", "ora", "and", "esh", "ara", "onia", "ith", "ova"],
    "city": ["burg", "holm", "ford", "mere", "gate", "ton", "vik", "stad", "wick", "port"],
    "person_first": ["a", "o", "en", "is", "ar", "el", "in", "ia"],
    "person_last": ["son", "ova", "er", "ski", "ani", "ell", "ard", "ez"],
    "animal": ["ling", "hound", "finch", "back", "horn", "moth", "wing", "tail"],
    "substance": ["ite", "ium", "stone", "salt", "glass", "oil", "silver", "dust"],
    "invention": ["scope", "wheel", "loom", "lamp", "press", "clock", "pump", "kite"],
    "river": ["", "", "a", "e"],
    "language": ["ic", "ish", "ese", "i", "an"],
    "currency": ["", "", "o", "a"],
}


def _syllable(rng: random.Random, coda: bool) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + (rng.choice(CODAS) if coda else "")


def _stem(rng: random.Random, syllables: int) -> str:
    return "".join(_syllable(rng, coda=(i == syllables - 1)) for i in range(syllables))


class NameMaker:
    """Draws unique invented names of a kind (country, city, animal, ...)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.used: set[str] = set()

    def make(self, kind: str, syllables: tuple[int, int] = (1, 2), capital: bool = True) -> str:
        for _ in range(10_000):
            stem = _stem(self.rng, self.rng.randint(*syllables))
            name = stem + self.rng.choice(SUFFIXES[kind])
            name = name.replace("aea", "ea").replace("iaia", "ia").replace("ouou", "ou")
            if 4 <= len(name) <= 11 and name.lower() not in self.used:
                self.used.add(name.lower())
                return name.capitalize() if capital else name
        raise RuntimeError(f"could not draw a new {kind} name")

    def many(self, kind: str, n: int, **kw) -> list[str]:
        return [self.make(kind, **kw) for _ in range(n)]
