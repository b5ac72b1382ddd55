"""Lab 02's data-quality experiment: the same tiny model, the same compute, different corpora.

The corpora come from lab 01's functions run on the shipped WARC:

- **raw crawl**: every HTML page, main text extracted with trafilatura, nothing else removed
  (duplicates, spam, gibberish, other languages, lorem ipsum, one-line error pages included);
- **lab 01 pipeline**: the same pages through lab 01's rule-based pipeline with the published
  thresholds (language ID, Gopher repetition and quality, C4, FineWeb, exact and MinHash dedup,
  PII scrubbing; the FineWeb-Edu scorer is left out: it is trained on teacher grades in lab 01);
- **clean pages**: the pages the crawl's ground-truth labels say a perfect pipeline keeps (PII
  scrubbed), in a seeded random order, cut to the pipeline output's size in characters.

Building them takes ~10 s of CPU (trafilatura and language ID on every page), so the result is
kept in the content-addressed cache (labkit.pretrain.cache) keyed by the WARC, the labels, the
settings and the source of labkit.data: the same inputs and code give the same corpora, so
reading them back is the computation, not a stored answer.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import LabkitError
from .cache import cached_array, cached_json, content_key, source_of

RAW, PIPELINE, CLEAN = "raw crawl", "lab 01 pipeline", "clean pages (labels), pipeline's size"
ARMS = (RAW, PIPELINE, CLEAN)
CLEAN_ORDER_SEED = 0  # the order clean pages are taken in, before the cut to size


@dataclass(frozen=True)
class Page:
    text: str
    kind: str  # the crawl label's kind: clean, spam, exact_dup, ...
    keep: bool  # whether a perfect pipeline keeps the page (the label)
    genres: tuple[str, ...]  # the genres of the world documents the page was built from


def _crawl_inputs():
    from ..samples import sample_path

    return (sample_path("crawl/crawl.warc.gz"), sample_path("crawl/labels.jsonl"),
            sample_path("corpus/train.jsonl.gz"))


def _build_corpora(settings) -> dict:
    """Run lab 01's steps on the WARC: {arm: [page dicts]} (JSON-serialisable, for the cache)."""
    from ..data import Accounting, extract, read_warc, run_pipeline, scrub_pii
    from ..data.checkpoint import cleaning_steps
    from ..data.evaluate import record_urls
    from ..loaders import load_records

    warc, _, _ = _crawl_inputs()
    labels = {label["url"]: label for label in load_records("crawl_labels")}
    genre = {r["id"]: r["genre"] for r in load_records("corpus")}
    urls = record_urls(warc)
    accounting = Accounting()
    extracted, _ = run_pipeline([extract], read_warc(warc, accounting), accounting)
    kept, _ = run_pipeline(cleaning_steps(settings)[1:], extracted, accounting)  # extracted above

    def page(doc, text=None) -> dict:
        label = labels[urls[doc.id]]
        ids = label.get("doc_ids") or ([label["doc_id"]] if label.get("doc_id") else [])
        return {"text": doc.text if text is None else text, "kind": label["kind"],
                "keep": bool(label["keep"]), "genres": sorted({genre[i] for i in ids if i in genre})}

    raw = [page(d) for d in extracted]
    pipeline = [page(d) for d in kept]
    clean = [page(d, scrub_pii(d.text)[0]) for d in extracted if labels[urls[d.id]]["keep"]]
    random.Random(CLEAN_ORDER_SEED).shuffle(clean)
    budget, size, cut = sum(len(p["text"]) for p in pipeline), 0, []
    for p in clean:  # take pages until the clean arm holds as many characters as the pipeline's
        if size >= budget:
            break
        cut.append(p)
        size += len(p["text"])
    return {RAW: raw, PIPELINE: pipeline, CLEAN: cut}


def crawl_corpora(*, settings=None, cache: bool = True) -> dict[str, list[Page]]:
    """The three corpora of the experiment, {arm: [Page]}, from the shipped WARC (cached).

    `settings`: lab 01's (`profile.settings("data")`); default the cpu profile's, whose values
    live in labkit/data/__init__.py, which the key hashes with the rest of labkit.data's code
    (so a cache hit needs no import of labkit.data, trafilatura or the language identifier).
    """
    import importlib.metadata as md

    def build():
        from ..profiles import profile

        return _build_corpora(settings or profile("cpu").settings("data"))

    if cache:
        code = source_of(Path(__file__).resolve().parents[1] / "data", Path(__file__))
        versions = [f"{name}=={md.version(name)}" for name in ("trafilatura", "py3langid")]
        given = repr(sorted(vars(settings).items())) if settings is not None else "cpu profile"
        key = content_key(*_crawl_inputs(), given, code, *versions)
        built = cached_json("lab02-crawl-corpora", key, build)
    else:
        built = build()
    return {arm: [Page(p["text"], p["kind"], p["keep"], tuple(p["genres"])) for p in pages]
            for arm, pages in built.items()}


def corpus_table(corpora: Mapping[str, Sequence[Page]], streams: Mapping[str, np.ndarray]):
    """Per corpus: pages, tokens, the share of pages (and of characters) that a perfect
    pipeline would drop (junk and duplicates, by the labels) and the share of pages that hold
    a code document."""
    rows = {}
    for arm, pages in corpora.items():
        n, chars = max(len(pages), 1), max(sum(len(p.text) for p in pages), 1)
        rows[arm] = {"pages": len(pages), "tokens": len(streams[arm]),
                     "pages to drop (labels)": sum(not p.keep for p in pages) / n,
                     "their share of the text": sum(len(p.text) for p in pages
                                                    if not p.keep) / chars,
                     "pages with code": sum("code" in p.genres for p in pages) / n}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("corpus")


def pack_texts(tokenizer, texts: Sequence[str], *, cache: bool = True) -> np.ndarray:
    """Tokenise texts without special tokens and pack them into one stream, EOS after each
    (what the lab does to the corpus), cached by tokenizer and texts."""
    from .data import pack_documents

    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise LabkitError("texts must be a list of strings")
    texts = list(texts)

    def compute():
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return pack_documents(ids, tokenizer.eos_token_id)

    if not cache:
        return compute()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer has no serialised form to hash: do not cache
        return compute()
    key = content_key(backend.to_str(), tokenizer.eos_token_id, len(texts), *texts)
    return cached_array("packed-tokens", key, compute)


def train_on_corpora(streams: Mapping[str, np.ndarray], *, make_model, eval_fn, seeds,
                     steps: int, batch_size: int, seq_len: int, lr: float,
                     warmup_steps: int | None = None, dtype=None, device="cpu") -> pd.DataFrame:
    """One run per corpus and seed at equal compute (same model, steps, batch and LR); the seed
    sets the initial weights and the batch order. `make_model(seed)` builds a fresh model,
    `eval_fn(model)` scores it (the held-out loss). Returns one row per run."""
    from .data import RandomBlocks
    from .loop import TrainConfig, train

    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise LabkitError(f"seeds={seeds!r}; valid: a non-empty list of distinct seeds")
    rows = []
    for arm, stream in streams.items():
        for seed in seeds:
            model = make_model(seed)
            batches = RandomBlocks(stream, seq_len, batch_size, seed=seed, device=device)
            config = TrainConfig(steps=steps, lr=lr, log_every=steps, seed=seed, dtype=dtype,
                                 warmup_steps=steps // 10 if warmup_steps is None else warmup_steps,
                                 progress=False)
            history = train(model, batches, config, eval_fn=eval_fn)
            rows.append({"corpus": arm, "seed": seed, "corpus tokens": len(stream),
                         "training tokens": steps * batch_size * seq_len,
                         "held-out loss": float(history["eval_loss"].iloc[-1])})
    return pd.DataFrame(rows)


def quality_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per corpus: the mean held-out loss over seeds, its standard deviation, min and max."""
    grouped = runs.groupby("corpus", sort=False)["held-out loss"]
    table = grouped.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "seeds"})
    return table


def paired_gaps(runs: pd.DataFrame, worse: str, better: str) -> list[float]:
    """Per seed, held-out loss of `worse` minus that of `better` (same seed: same initial
    weights), so a gap > 0 in every seed means `better` won every paired comparison."""
    loss = runs.pivot(index="seed", columns="corpus", values="held-out loss")
    for arm in (worse, better):
        if arm not in loss:
            raise LabkitError(f"no runs for corpus {arm!r}; have: {', '.join(loss.columns)}")
    return [float(g) for g in (loss[worse] - loss[better]) if math.isfinite(g)]


def kinds_table(corpora: Mapping[str, Sequence[Page]]) -> pd.DataFrame:
    """Pages of each label kind per corpus (what the raw crawl holds that the others do not)."""
    return pd.DataFrame({arm: Counter(p.kind for p in pages) for arm, pages in corpora.items()}) \
        .fillna(0).astype(int)
