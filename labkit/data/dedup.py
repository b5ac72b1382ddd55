"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash + LSH).

MinHash as FineWeb does it: normalise the text, take word 5-grams ("shingles"), hash each to 64
bits, and for each of 112 random hash functions keep the minimum over the document's shingles
(FineWeb's functions are h(x) = (a*x + b) mod (2^61 - 1); the default here is the cheaper
multiply-shift family, see HASH_FAMILIES). Two documents agree on one minimum with probability equal
to the Jaccard similarity of their shingle sets. LSH cuts the 112 minima into 14 bands of 8:
documents that agree on a whole band collide in that band's bucket, and colliding documents are
joined into clusters with union-find; one document per cluster is kept.
P(collide in at least one band | Jaccard s) = 1 - (1 - s^8)^14.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import regex

from labkit.errors import LabkitError
from labkit.validate import among, checks, fraction, ints, positive_int, text, texts

from .document import Accounting, Document, _accounting, documents

MERSENNE_61 = np.uint64((1 << 61) - 1)  # the prime p; x mod p needs only shifts and adds
_M30, _M31 = np.uint64((1 << 30) - 1), np.uint64((1 << 31) - 1)
_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplying mod 2^64 loses no bits


# ------------------------------------------------------------------------- normalisation
_PUNCTUATION = regex.compile(r"\p{P}+")
_DIGIT = regex.compile(r"\d")


@checks(text=text)
def normalise_text(text: str) -> str:
    """Lowercase, strip diacritics, drop punctuation, digits -> 0, collapse whitespace."""
    text = text.lower()
    if not text.isascii():
        decomposed = unicodedata.normalize("NFD", text)  # é -> e + combining accent
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    text = _DIGIT.sub("0", _PUNCTUATION.sub("", text))
    return " ".join(text.split())


@checks(text=text, n=positive_int)
def ngram_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The word n-grams of the normalised text (one n-gram of all words if it has fewer)."""
    words = normalise_text(text).split()
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


@checks(a=text, b=text, n=positive_int)
def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity |A & B| / |A | B| of the two texts' word n-gram sets."""
    sa, sb = ngram_set(a, n), ngram_set(b, n)
    return len(sa & sb) / len(sa | sb)


# --------------------------------------------------------------------------- exact dedup
@checks(docs=documents, accounting=_accounting)
def exact_dedup(docs: Iterable[Document], accounting: Accounting) -> Iterator[Document]:
    """Keep the first document of each normalised text; later copies are dropped."""
    first: dict[str, str] = {}
    for doc in docs:
        key = hashlib.blake2b(normalise_text(doc.text).encode(), digest_size=16).digest()
        if key in first:
            accounting.drop(doc.id, "exact_dedup", f"exact_duplicate_of:{first[key]}")
        else:
            first[key] = doc.id
            yield doc


# ------------------------------------------------------------------------------- MinHash
# Two hash families, both 2-independent (pairwise independent), which is what min-wise hashing
# of already-hashed shingles needs in practice:
#   "multiply_shift" (the default): h(x) = ((a*x + b) mod 2^64) >> 32 for 32-bit keys x and
#       uniform 64-bit a, b (Dietzfelbinger 1996; strongly universal). uint64 arithmetic wraps
#       mod 2^64 by itself, so it is exact in numpy at 2 passes over the data.
#   "mersenne61" (FineWeb/datatrove's formula): h(x) = (a*x + b) mod (2^61 - 1). a*x needs up
#       to 122 bits; datatrove and datasketch multiply in uint64 and so silently wrap; here it
#       is exact, which costs about 15 passes.
HASH_FAMILIES = ("multiply_shift", "mersenne61")


def _mod_p(v: np.ndarray) -> np.ndarray:
    """v mod p for any uint64 v, using 2^61 = 1 (mod p): fold the high bits onto the low ones."""
    folded = (v & MERSENNE_61) + (v >> np.uint64(61))  # now below 2p
    return np.minimum(folded, folded - MERSENNE_61, out=folded)  # v - p wraps around when v < p


def _keys(value, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint64 or value.ndim != 1:
        shown = f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise LabkitError(f"{name} must be a 1-D numpy uint64 array, got {shown}")
    return value


def _check_hash_args(x, a, b) -> None:
    if len(_keys(a, "a")) != len(_keys(b, "b")):
        raise LabkitError(f"a and b must have one entry per hash function, got {len(a)} and {len(b)}")


@checks(x=_keys)
def universal_hash(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a*x + b) mod p, exactly, for x (n,), a and b (k,) all below p: result (n, k).

    a*x needs up to 122 bits but uint64 keeps 64, so split both into 31-bit halves,
    a = a1*2^31 + a0 and x = x1*2^31 + x0:
        a*x = a1*x1*2^62 + (a1*x0 + a0*x1)*2^31 + a0*x0
    then fold with 2^61 = 1 (mod p): 2^62 = 2, and
        mid*2^31 = (mid >> 30)*2^61 + (mid mod 2^30)*2^31 = (mid >> 30) + (mid mod 2^30)*2^31.
    Every product is below 2^62 and the sum below 2^64: nothing overflows. In-place updates
    (+=, &=) keep the number of temporary arrays, and so the time, down.
    """
    _check_hash_args(x, a, b)
    a1, a0 = a >> np.uint64(31), a & _M31
    x1, x0 = (x >> np.uint64(31))[:, None], (x & _M31)[:, None]
    mid = a1 * x0
    mid += a0 * x1
    total = a0 * x0
    total += (2 * a1) * x1
    total += mid >> np.uint64(30)
    mid &= _M30
    mid <<= np.uint64(31)
    total += mid
    total += b
    return _mod_p(total)


@checks(x=_keys)
def multiply_shift_hash(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a*x + b) mod 2^64 for 32-bit keys x (n,) and 64-bit a, b (k,): result (n, k).

    The hash is the top 32 bits (>> 32). Those are monotone in the full value, so the minimum
    can be taken on the full 64 bits and shifted once, per signature entry, at the end.
    """
    _check_hash_args(x, a, b)
    products = x[:, None] * a  # wraps mod 2^64: that is the definition, not an overflow
    products += b
    return products


@checks(num_perm=positive_int, seed=ints(0), family=among(*HASH_FAMILIES))
def minhash_parameters(
    num_perm: int = 112, seed: int = 1, family: str = "multiply_shift"
) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each hash function: uniform 64-bit for multiply_shift; for mersenne61,
    a in [1, p) and b in [0, p)."""
    _check_family(family)
    rng = np.random.default_rng(seed)
    if family == "multiply_shift":
        top = np.iinfo(np.uint64).max
        a = rng.integers(0, top, size=num_perm, dtype=np.uint64, endpoint=True)
        return a, rng.integers(0, top, size=num_perm, dtype=np.uint64, endpoint=True)
    a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=np.uint64)
    return a, rng.integers(0, MERSENNE_61, size=num_perm, dtype=np.uint64)


def _check_family(family: str) -> None:
    if family not in HASH_FAMILIES:
        raise LabkitError(f"hash family {family!r}; valid: {', '.join(HASH_FAMILIES)}")


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _word_hashes(words: list[str], cache: dict) -> np.ndarray:
    for word in set(words).difference(cache):
        cache[word] = _word_hash(word)
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def _words(value, name: str) -> list[str]:
    return texts(value, name, empty=True)


def _word_lists(value, name: str) -> list[list[str]]:
    if not isinstance(value, (list, tuple)):
        raise LabkitError(f"{name} must be a list of word lists, got {type(value).__name__}")
    return [_words(words, f"{name}[{i}]") for i, words in enumerate(value)]


@checks(words=_words, n=positive_int)
def shingle_hashes(words: list[str], n: int = 5, cache: dict | None = None) -> np.ndarray:
    """A 64-bit hash per word n-gram of one document (one n-gram of all words if it has fewer).

    Each word is hashed once (blake2b, cached); an n-gram's hash combines its word hashes as a
    polynomial, x = (...(h0*M + h1)*M + ...)*M + h(n-1) mod 2^64, computed for every position.
    """
    return _shingle_polynomial(_word_hashes(words, {} if cache is None else cache), n)


def _shingle_polynomial(h: np.ndarray, n: int) -> np.ndarray:
    m = max(len(h) - n + 1, 1)
    x = np.zeros(m, dtype=np.uint64)
    for k in range(min(n, len(h))):
        x = x * _SHINGLE_MULTIPLIER + h[k:k + m]  # uint64 arithmetic wraps: mod 2^64
    return x


@checks(word_lists=_word_lists, n=positive_int)
def corpus_shingle_hashes(
    word_lists: list[list[str]], n: int = 5, cache: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """shingle_hashes of every document at once: (hashes, owner), owner = document index.

    The polynomial runs over all documents' words concatenated; only the n-grams that start
    and end inside one document are kept. Documents shorter than n words are done one by one.
    """
    cache = {} if cache is None else cache
    lengths = np.array([len(w) for w in word_lists], dtype=np.int64)
    h = _word_hashes([w for words in word_lists for w in words], cache)
    x = np.zeros(len(h), dtype=np.uint64)
    padded = np.concatenate([h, np.zeros(n - 1, dtype=np.uint64)])
    for k in range(n):
        x *= _SHINGLE_MULTIPLIER
        x += padded[k:k + len(h)]
    counts = np.maximum(lengths - n + 1, 1)  # every document has at least one shingle
    owner = np.repeat(np.arange(len(lengths)), counts)
    first = np.cumsum(counts) - counts  # index of each document's first shingle in the result
    starts = np.cumsum(lengths) - lengths  # index of each document's first word in x
    positions = np.arange(counts.sum()) - first[owner] + starts[owner]
    hashes = x[np.minimum(positions, len(x) - 1)] if len(x) else np.zeros(len(owner), np.uint64)
    for d in np.flatnonzero(lengths < n):
        hashes[first[d]] = _shingle_polynomial(h[starts[d]:starts[d] + lengths[d]], n)[0]
    return hashes, owner


def _texts_or_documents(value, name: str) -> list[str]:
    value = [t.text if isinstance(t, Document) else t for t in _listed_iterable(value, name)]
    return texts(value, name, empty=True)


def _listed_iterable(value, name: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise LabkitError(f"{name} must be a list (or iterable) of texts, got {type(value).__name__}")
    return list(value)


@checks(texts=_texts_or_documents, num_perm=positive_int, seed=ints(0), n=positive_int,
        block=positive_int, family=among(*HASH_FAMILIES))
def minhash_signatures(
    texts: Iterable[str | Document], num_perm: int = 112, seed: int = 1, n: int = 5,
    block: int = 1024, family: str = "multiply_shift",
) -> np.ndarray:
    """(documents, num_perm) uint64: each hash function's minimum over each text's shingles.

    Shingles of all texts are hashed together in blocks of `block` rows (small enough to stay
    in the CPU cache); np.minimum.reduceat takes the minimum per document within a block.
    multiply_shift keys are the shingle hashes' top 32 bits and its values 32-bit; mersenne61
    keys are the shingle hashes mod p and its values below p.
    """
    a, b = minhash_parameters(num_perm, seed, family)
    texts = [t.text if isinstance(t, Document) else t for t in texts]
    if not texts:
        return np.empty((0, num_perm), dtype=np.uint64)
    x, owner = corpus_shingle_hashes([normalise_text(t).split() for t in texts], n)
    if family == "multiply_shift":
        x, permute, empty = x >> np.uint64(32), multiply_shift_hash, np.iinfo(np.uint64).max
    else:
        x, permute, empty = _mod_p(x), universal_hash, MERSENNE_61
    signatures = np.full((len(texts), num_perm), empty, dtype=np.uint64)
    for start in range(0, len(x), block):
        hashed = permute(x[start:start + block], a, b)
        owners = owner[start:start + block]
        firsts = np.flatnonzero(np.diff(owners, prepend=-1))  # where each document's run starts
        ids = owners[firsts]
        signatures[ids] = np.minimum(signatures[ids], np.minimum.reduceat(hashed, firsts, axis=0))
    if family == "multiply_shift":
        signatures >>= np.uint64(32)
    return signatures


def _signatures(value, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim not in (1, 2) or value.shape[-1] == 0:
        shown = f"shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise LabkitError(f"{name} must be MinHash signatures (a 1-D or 2-D numpy array), got {shown}")
    return value


def _same_signatures(sig_a, sig_b) -> None:
    if _signatures(sig_a, "sig_a").shape != _signatures(sig_b, "sig_b").shape:
        raise LabkitError(f"sig_b must have the shape of sig_a {sig_a.shape}, got {sig_b.shape}")


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """The fraction of hash functions whose minima agree: an unbiased Jaccard estimate."""
    _same_signatures(sig_a, sig_b)
    return (sig_a == sig_b).mean(axis=-1)


# --------------------------------------------------------------------------- LSH + clusters
def _similarity(value, name: str):
    try:
        s = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise LabkitError(f"{name} must be Jaccard similarities in [0, 1], got {value!r}") from None
    if not np.all((s >= 0) & (s <= 1)):  # also refuses nan
        raise LabkitError(f"{name} must be Jaccard similarities in [0, 1], got {value!r}"[:200])
    return value


@checks(s=_similarity, bands=positive_int, rows=positive_int)
def candidate_probability(s, bands: int = 14, rows: int = 8):
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** rows) ** bands


def lsh_collides(sig_a: np.ndarray, sig_b: np.ndarray, bands: int = 14, rows: int = 8):
    """Whether signature pairs agree on every row of at least one band."""
    _same_signatures(sig_a, sig_b)
    _check_bands(sig_a.shape[-1], bands, rows)
    same = (sig_a == sig_b).reshape(*sig_a.shape[:-1], bands, rows)
    return same.all(axis=-1).any(axis=-1)


def _check_bands(num_perm: int, bands: int, rows: int) -> None:
    positive_int(num_perm, "num_perm"), positive_int(bands, "bands"), positive_int(rows, "rows")
    if bands * rows != num_perm:
        raise LabkitError(
            f"bands={bands}, rows={rows} with num_perm={num_perm}; valid: bands * rows == num_perm"
        )


def near_duplicate_clusters(signatures: np.ndarray, bands: int = 14, rows: int = 8) -> np.ndarray:
    """The cluster representative (lowest index) of each document, by LSH + union-find."""
    if _signatures(signatures, "signatures").ndim != 2:
        raise LabkitError(f"signatures must be 2-D (documents, num_perm), got shape {signatures.shape}")
    _check_bands(signatures.shape[1], bands, rows)
    parent = list(range(len(signatures)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for band in range(bands):
        buckets: dict[bytes, int] = {}
        for i, key in enumerate(signatures[:, band * rows:(band + 1) * rows]):
            j = buckets.setdefault(key.tobytes(), i)
            if j != i:  # same bucket as document j: join the two clusters
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(len(parent))], dtype=np.int64)


@checks(docs=documents, accounting=_accounting, seed=ints(0), n=positive_int,
        family=among(*HASH_FAMILIES))
def minhash_dedup(
    docs: Iterable[Document],
    accounting: Accounting,
    num_perm: int = 112,
    bands: int = 14,
    rows: int = 8,
    seed: int = 1,
    n: int = 5,
    family: str = "multiply_shift",
) -> Iterator[Document]:
    """Keep the first document of each near-duplicate cluster (FineWeb: 5-grams, 14 x 8)."""
    _check_bands(num_perm, bands, rows)
    docs = list(docs)
    signatures = minhash_signatures((d.text for d in docs), num_perm, seed, n, family=family)
    roots = near_duplicate_clusters(signatures, bands, rows)
    for i, doc in enumerate(docs):
        if roots[i] == i:
            yield doc
        else:
            accounting.drop(doc.id, "minhash_dedup", f"near_duplicate_of:{docs[roots[i]].id}")


# ------------------------------------------------------------------------ the S-curve, measured
@checks(text=text, fraction=fraction, seed=ints(0))
def mutate_words(text: str, fraction: float, seed: int = 0) -> str:
    """A planted near-duplicate: `fraction` of the words replaced by random words of the text."""
    rng = np.random.default_rng(seed)
    words = text.split()
    changed = rng.random(len(words)) < fraction
    for i in np.flatnonzero(changed):
        words[i] = f"{words[rng.integers(len(words))]}{rng.integers(10)}"
    return " ".join(words)


def detection_by_similarity(
    similarity, detected, bins=None, bands: int = 14, rows: int = 8
) -> pd.DataFrame:
    """Per similarity bin: pairs, detected pairs, measured rate and the theory's expected rate.

    Pairs outside [bins[0], bins[-1]] are left out.
    """
    _similarity(similarity, "similarity"), positive_int(bands, "bands"), positive_int(rows, "rows")
    if np.shape(similarity) != np.shape(detected) or np.ndim(similarity) != 1:
        raise LabkitError(f"similarity and detected must be 1-D with one entry per pair, got "
                          f"shapes {np.shape(similarity)} and {np.shape(detected)}")
    if bins is not None:
        _similarity(bins, "bins")
        if len(bins) < 2 or np.any(np.diff(np.asarray(bins, float)) <= 0):
            raise LabkitError(f"bins must be two or more increasing edges in [0, 1], got {bins!r}")
    bins = np.linspace(0.0, 1.0, 21) if bins is None else np.asarray(bins, float)
    similarity, detected = np.asarray(similarity, float), np.asarray(detected, bool)
    which = np.searchsorted(bins, similarity, side="right") - 1
    which[similarity == bins[-1]] = len(bins) - 2  # the last bin includes its upper edge
    rows_out = []
    for k in range(len(bins) - 1):
        inside = which == k
        if inside.any():
            rows_out.append({
                "s_low": bins[k], "s_high": bins[k + 1], "pairs": int(inside.sum()),
                "detected": int(detected[inside].sum()), "rate": detected[inside].mean(),
                "theory": candidate_probability(similarity[inside], bands, rows).mean(),
                "s_mean": similarity[inside].mean(),
            })
    return pd.DataFrame(rows_out)


def s_curve_figure(bands: int = 14, rows: int = 8, measured: pd.DataFrame | None = None):
    """The LSH S-curve 1 - (1 - s^r)^b, with measured detection rates per bin if given."""
    positive_int(bands, "bands"), positive_int(rows, "rows")
    needed = {"theory", "pairs", "s_mean", "rate"}
    if measured is not None and not (isinstance(measured, pd.DataFrame) and needed <= set(measured)):
        raise LabkitError(f"measured must be detection_by_similarity's table (columns "
                          f"{', '.join(sorted(needed))}), got {type(measured).__name__}")
    s = np.linspace(0, 1, 201)
    fig = go.Figure(go.Scatter(x=s, y=candidate_probability(s, bands, rows), mode="lines",
                               name=f"theory: 1 - (1 - s^{rows})^{bands}"))
    if measured is not None and len(measured):
        err = 2 * np.sqrt(measured["theory"] * (1 - measured["theory"]) / measured["pairs"])
        fig.add_trace(go.Scatter(
            x=measured["s_mean"], y=measured["rate"], mode="markers", name="measured",
            error_y={"type": "data", "array": err}, text=measured["pairs"],
            hovertemplate="s=%{x:.2f} rate=%{y:.2f} pairs=%{text}",
        ))
    fig.update_layout(
        title=f"MinHash LSH: probability of a candidate pair ({bands} bands x {rows} rows)",
        xaxis_title="Jaccard similarity of 5-gram sets", yaxis_title="P(candidate pair)",
    )
    return fig
