"""Byte-level BPE: a trainer that is fast because it updates pair counts instead of recounting.

Training repeatedly merges the most frequent adjacent pair of tokens into a new token. Text is
first cut into chunks by a pre-tokenisation regex (GPT-2's or GPT-4's), so merges never cross a
word boundary, and identical chunks are trained on once with their frequency.

The naive trainer (minbpe's algorithm) recounts every pair of every chunk after each merge. The
fast one keeps `counts` (pair -> frequency) and `where` (pair -> words containing it): a merge
touches only the words that contain the merged pair, subtracts their old pairs and adds their
new ones. A heap finds the best pair; entries whose count went stale are refreshed when popped.

Tie-breaking, the same in both trainers so their merges are identical: the highest count wins,
then the lexicographically smallest pair of token ids.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import regex

from labkit import validate
from labkit.errors import LabkitError
from labkit.validate import checks, integer, texts

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
_REGEX_SYNTAX = set("\\[](){}|?*+^$.")


def check_pattern(pattern, name: str = "pattern"):
    """A pattern name, None, or a regex. A word without regex syntax ('gpt-4') is a misspelt
    name: as a regex it would match nothing and every text would encode to []."""
    if pattern is None or pattern in PATTERNS:
        return pattern
    if not isinstance(pattern, str) or not _REGEX_SYNTAX & set(pattern):
        raise LabkitError(f"unknown {name} {pattern!r}; valid: {', '.join(PATTERNS)}, None, "
                          "or a pre-tokenisation regex")
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise LabkitError(f"{name} {pattern!r} is not a valid regex: {exc}") from None
    return pattern


@checks(text=validate.text, pattern=check_pattern)
def split_chunks(text: str, pattern: str | None) -> list[str]:
    """Pre-tokenise: the regex's matches, or the whole text when pattern is None."""
    if pattern is None:
        return [text] if text else []
    return regex.findall(PATTERNS.get(pattern, pattern), text)


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair`, left to right, by `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pairs(ids: list[int]):
    return zip(ids, ids[1:])


@dataclass
class BPETokenizer:
    merges: list[tuple[int, int]]  # merge i creates token 256 + i
    pattern: str | None = "gpt4"
    _cache: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.pattern = check_pattern(self.pattern)
        if isinstance(self.merges, (str, bytes)) or not hasattr(self.merges, "__iter__"):
            raise LabkitError(f"merges must be a list of (int, int) pairs, got {type(self.merges).__name__}")
        self.merges = [tuple(m) if isinstance(m, (tuple, list)) else m for m in self.merges]
        for i, m in enumerate(self.merges):  # merge i may only join tokens that exist before it
            if not (isinstance(m, tuple) and len(m) == 2
                    and all(isinstance(t, int) and 0 <= t < 256 + i for t in m)):
                raise LabkitError(f"merges[{i}]={m!r}; valid: a pair of token ids below {256 + i}")
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        self.vocab = {i: bytes([i]) for i in range(256)}
        for i, (a, b) in enumerate(self.merges):
            self.vocab[256 + i] = self.vocab[a] + self.vocab[b]

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            # Apply merges in the order they were learned: the lowest-ranked pair first.
            pair = min(_pairs(ids), key=lambda p: self.ranks.get(p, len(self.merges)))
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, 256 + self.ranks[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        text = validate.text(text, "text")
        ids: list[int] = []
        for chunk in split_chunks(text, self.pattern):
            if chunk not in self._cache:
                self._cache[chunk] = self._encode_chunk(chunk)
            ids.extend(self._cache[chunk])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids) if isinstance(ids, Iterable) and not isinstance(ids, (str, bytes)) else ids
        if not isinstance(ids, list) or any(not isinstance(i, int) or i not in self.vocab for i in ids):
            raise LabkitError(f"ids must be token ids in [0, {self.vocab_size}), got {str(ids)[:60]}")
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def _check(vocab_size: int) -> int:
    return integer(vocab_size, "vocab_size", low=256) - 256  # 256 byte tokens, then merges


def _as_texts(value: str | Iterable[str]) -> list[str]:
    return texts(value, "texts", single=True, empty=True)


def _best(counts: dict) -> tuple[int, int]:
    return min(counts, key=lambda pair: (-counts[pair], pair))


def naive_train_bpe(
    texts: str | Iterable[str], vocab_size: int, pattern: str | None = "gpt4"
) -> BPETokenizer:
    """minbpe's algorithm: after every merge, recount all pairs of all chunks."""
    n_merges, pattern = _check(vocab_size), check_pattern(pattern)
    chunks = [list(c.encode("utf-8")) for t in _as_texts(texts) for c in split_chunks(t, pattern)]
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        counts = Counter(pair for ids in chunks for pair in _pairs(ids))
        if not counts:
            break
        pair = _best(counts)
        chunks = [merge_pair(ids, pair, 256 + len(merges)) for ids in chunks]
        merges.append(pair)
    return BPETokenizer(merges, pattern)


def train_bpe(
    texts: str | Iterable[str], vocab_size: int, pattern: str | None = "gpt4"
) -> BPETokenizer:
    """The same merges as `naive_train_bpe`, updating pair counts incrementally."""
    n_merges, pattern = _check(vocab_size), check_pattern(pattern)
    chunk_counts = Counter(c for t in _as_texts(texts) for c in split_chunks(t, pattern))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    counts: Counter = Counter()
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, word in enumerate(words):
        for pair in _pairs(word):
            counts[pair] += freqs[w]
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        negative, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -negative:  # stale: the count changed since this was pushed
            if counts.get(pair, 0) > 0:
                heapq.heappush(heap, (-counts[pair], pair))
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        touched = set()
        for w in where.pop(pair):
            old, new = words[w], merge_pair(words[w], pair, new_id)
            for p in _pairs(old):
                counts[p] -= freqs[w]
            for p in _pairs(new):
                counts[p] += freqs[w]
                where[p].add(w)
            for p in set(_pairs(old)) - set(_pairs(new)):
                where[p].discard(w)
            touched.update(_pairs(new))
            words[w] = new
        del counts[pair]
        for p in touched:  # counts that grew need a fresh heap entry
            heapq.heappush(heap, (-counts[p], p))
    return BPETokenizer(merges, pattern)


def train_hf_bpe(texts: str | Iterable[str], vocab_size: int):
    """The same job with Hugging Face `tokenizers` (Rust; GPT-2 byte-level pre-tokenisation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    vocab_size = integer(vocab_size, "vocab_size", low=256)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[], show_progress=False,
    )
    tokenizer.train_from_iterator(_as_texts(texts), trainer)
    return tokenizer


def bytes_per_token(tokenizer, texts: str | Iterable[str]) -> float:
    """Compression: UTF-8 bytes of the texts divided by the tokens they encode to."""
    validate.tokenizer(tokenizer)
    texts = _as_texts(texts)
    if not texts:
        raise LabkitError("texts is empty; valid: at least one text to measure")
    n_bytes = n_tokens = 0
    for text in _as_texts(texts):
        encoded = tokenizer.encode(text)
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(getattr(encoded, "ids", encoded))  # HF returns an Encoding
    return n_bytes / max(n_tokens, 1)
