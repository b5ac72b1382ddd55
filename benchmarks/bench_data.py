"""Speed of the data-pipeline mechanisms against their reference implementations.

    python benchmarks/bench_data.py

Prints one table: MinHash signatures (labkit's default multiply-shift family and its exact
FineWeb mod-(2^61-1) family vs datasketch, same documents, same number of permutations), BPE training (labkit's incremental trainer vs the naive recount-every-merge
trainer vs HF tokenizers, same text and vocabulary), and the whole pipeline end to end.
Targets: MinHash >= 2x datasketch, BPE trainer >= 10x naive. The speed-up column is each row's
time over labkit's (the first row of its task). Times are CPU seconds of this
process (time.process_time), the best of a few runs, so that other jobs on a shared machine do
not distort them; everything runs on one thread (labkit sets TOKENIZERS_PARALLELISM=false).
The text is generated English-like prose.
"""

from __future__ import annotations

import platform
import random
import tempfile
import time
from pathlib import Path

from datasketch import MinHash

from labkit.data import (
    Accounting,
    c4_filter,
    detect_language,
    exact_dedup,
    extract,
    fineweb_filter,
    gopher_quality,
    gopher_repetition,
    language_filter,
    minhash_dedup,
    minhash_signatures,
    naive_train_bpe,
    normalise_text,
    pii_scrub,
    read_warc,
    run_pipeline,
    train_bpe,
    train_hf_bpe,
    write_warc,
)

NUM_PERM, VOCAB_SIZE, SEED = 112, 512, 0
WORDS = """the of and to in is was for on that with as by at from his her an which this be are
have or had their one all were we when there been has more will would who its people time
year water river city house school child world day life hand part place case week company
system program question work government number night point home room mother area money story
fact month lot right study book eye job word business issue side kind head service friend
father power hour game line end member law car name president team minute idea body
information back parent face others level office door health person art war history party
result change morning reason research girl guy moment air teacher force education make know
take see come think look want give use find tell ask seem feel try leave call keep begin
help talk turn start show hear play run move like live believe hold bring happen write
provide sit stand lose pay meet include continue set learn lead understand watch follow stop
create speak read allow add spend grow open walk win offer remember love consider appear buy
wait serve die send expect build stay fall cut reach kill remain good new first last long
great little own other old right big high different small large next early young important
few public bad same able""".split()


def english_like_docs(n_docs: int, seed: int = SEED) -> list[str]:
    """Documents of sentences with Zipf-like word frequencies: common English words first, then
    5,000 made-up words, so the text has a realistic number of distinct words."""
    rng = random.Random(seed)
    syllables = ["ta", "ri", "mon", "ke", "lu", "pra", "dos", "vi", "ne", "sha", "tor", "il",
                 "cam", "ber", "go", "fel", "an", "stru", "qui", "ep"]
    vocabulary = WORDS + ["".join(rng.choices(syllables, k=rng.randint(2, 4)))
                          for _ in range(5000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]

    def sentence() -> str:
        words = rng.choices(vocabulary, weights, k=rng.randint(8, 20))
        return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])

    return ["\n".join(sentence() for _ in range(rng.randint(6, 14))) for _ in range(n_docs)]


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def datasketch_signatures(texts: list[str], scheme: str, per_shingle: bool = False):
    """datasketch on labkit's normalised words: MinHash.bulk, or update() once per shingle."""
    shingles = []
    for text in texts:
        words = normalise_text(text).split()
        shingles.append([" ".join(words[i:i + 5]).encode() for i in range(max(len(words) - 4, 1))])
    if not per_shingle:
        return MinHash.bulk(shingles, num_perm=NUM_PERM, seed=1, scheme=scheme)
    signatures = []
    for doc in shingles:
        m = MinHash(num_perm=NUM_PERM, seed=1, scheme=scheme)
        for shingle in doc:
            m.update(shingle)
        signatures.append(m)
    return signatures


def page(i: int, text: str) -> str:
    paragraphs = "".join(f"<p>{line}</p>" for line in text.split("\n"))
    return (f"<html><head><title>Page {i}</title></head><body><nav><a href='/'>Home</a> "
            f"<a href='/about'>About us</a></nav><article><h1>Page {i}</h1>{paragraphs}"
            "</article><footer>Copyright 2024. All rights reserved.</footer></body></html>")


def main() -> None:
    rows = []

    def row(task, impl, seconds, per_second=None, unit="", vs=None):
        rows.append((task, impl, seconds, per_second, unit, vs))

    docs = english_like_docs(1200)
    n_bytes = sum(len(d.encode()) for d in docs)
    print(f"{len(docs)} documents, {n_bytes / 1e3:.0f} KB, {NUM_PERM} permutations; "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")

    ours, _ = best_of(lambda: minhash_signatures(docs, num_perm=NUM_PERM))
    exact61, _ = best_of(lambda: minhash_signatures(docs, num_perm=NUM_PERM, family="mersenne61"))
    bulk64, _ = best_of(lambda: datasketch_signatures(docs, "affine64"))
    bulk32, _ = best_of(lambda: datasketch_signatures(docs, "affine32"))
    row("MinHash signatures", "labkit multiply-shift", ours, len(docs) / ours, "docs/s")
    row("MinHash signatures", "labkit exact mod 2^61-1", exact61, len(docs) / exact61, "docs/s",
        exact61 / ours)
    row("MinHash signatures", "datasketch bulk, affine64", bulk64, len(docs) / bulk64, "docs/s",
        bulk64 / ours)
    row("MinHash signatures", "datasketch bulk, affine32", bulk32, len(docs) / bulk32, "docs/s",
        bulk32 / ours)
    update, _ = best_of(lambda: datasketch_signatures(docs, "affine32", per_shingle=True), 1)
    row("MinHash signatures", "datasketch update() loop", update, len(docs) / update, "docs/s",
        update / ours)

    text = "\n".join(docs)[:60_000]
    fast, fast_tok = best_of(lambda: train_bpe(text, VOCAB_SIZE, "gpt4"))
    naive, naive_tok = best_of(lambda: naive_train_bpe(text, VOCAB_SIZE, "gpt4"), repeats=1)
    hf, _ = best_of(lambda: train_hf_bpe(text, VOCAB_SIZE))
    assert fast_tok.merges == naive_tok.merges, "the two trainers must learn the same merges"
    kb = len(text.encode()) / 1e3
    task = f"BPE train, {kb:.0f} KB, vocab {VOCAB_SIZE}"
    row(task, "labkit incremental", fast, kb / fast, "KB/s")
    row(task, "naive (minbpe)", naive, kb / naive, "KB/s", naive / fast)
    row(task, "HF tokenizers (Rust)", hf, kb / hf, "KB/s", hf / fast)

    with tempfile.TemporaryDirectory() as tmp:
        pages = [page(i, d) for i, d in enumerate(docs[:400])]
        pages += pages[:40]  # some exact duplicates for the dedup steps
        path = write_warc(Path(tmp) / "bench.warc.gz",
                          [{"url": f"http://bench.example/{i}", "body": p}
                           for i, p in enumerate(pages)])
        steps = [extract, language_filter, gopher_quality, gopher_repetition, c4_filter,
                 fineweb_filter, exact_dedup, minhash_dedup, pii_scrub]

        def pipeline():
            detect_language.cache_clear()  # it remembers pages: time the work, not the memory
            accounting = Accounting()
            return run_pipeline(steps, read_warc(path, accounting), accounting)

        seconds, (kept, _) = best_of(pipeline, repeats=2)
        row(f"pipeline, {len(pages)} pages", f"read_warc + {len(steps)} steps", seconds,
            len(pages) / seconds, "docs/s")

    header = ("task", "implementation", "CPU s", "rate", "labkit speed-up")
    print(f"\n{header[0]:<30} {header[1]:<28} {header[2]:>8} {header[3]:>16} {header[4]:>16}")
    for task, impl, seconds, rate, unit, vs in rows:
        rate_text = f"{rate:,.0f} {unit}" if rate else ""
        vs_text = f"{vs:.1f}x" if vs else ""
        print(f"{task:<30} {impl:<28} {seconds:>8.2f} {rate_text:>16} {vs_text:>16}")
    print(f"\npipeline kept {len(kept)} of {len(pages)} pages; targets: MinHash >= 2x datasketch, "
          "BPE >= 10x naive")


if __name__ == "__main__":
    main()
