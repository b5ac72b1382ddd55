"""Lab 01's pipeline on datatrove: equal to the in-process run, as fast per worker, and labkit's
rules against datatrove's own implementations of them, on the shipped crawl.

    python benchmarks/bench_datatrove.py [--shards 8]

Prints four tables:
1. in-process vs datatrove (the crawl cut into shards, the first stage on 2 worker processes):
   kept ids identical, and the per-step, per-reason counts side by side;
2. the first stage's throughput with 1 and with 2 workers (same shards, trafilatura itself):
   WARC records per CPU-second of a worker, and per worker-second of wall time;
3. agreement per rule: labkit's decision against datatrove's own filter, reader and dedup
   stages (documents in, drops by each, share of documents with the same call, and why not);
4. what one Common Crawl dump would cost at the measured rate, with the assumptions named.
"""

from __future__ import annotations

import argparse
import functools
import platform
import re
import shutil
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from datatrove.data import Document as DatatroveDocument
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.readers import WarcReader
from datatrove.utils.text import simplify_text

import labkit
from labkit.data import (
    Accounting,
    candidate_probability,
    exact_dedup,
    extract_main_text,
    fit_quality_scorer,
    ngram_set,
    quality_score_filter,
    read_warc,
    run_pipeline,
    step_name,
)
from labkit.data.checkpoint import cleaning_steps
from labkit.data.quality import FINEWEB_STOP_CHARS
from labkit.data.scale import (
    LabkitWordTokenizer,
    agreement_table,
    crawl_executors,
    datatrove_minhash_drops,
    dump_cost,
    funnel_table,
    rule_decisions,
    run_executors,
    split_warc,
    throughput,
)
from labkit.loaders import load_records

CFG = labkit.profile().settings("data")
WARC = labkit.sample_path("crawl/crawl.warc.gz")
# Assumptions for one monthly Common Crawl dump, labelled as such wherever they are printed.
CC_PAGES = (2.5e9, 3.0e9)  # pages per monthly crawl (Common Crawl's announcements: ~2.5-3.5 B)
USD_PER_CPU_HOUR = 0.04  # an on-demand cloud vCPU-hour; spot instances cost less
_RUNS = re.compile(r"\w+|[^\w\s]+")  # labkit's repetition and FineWeb rules count these runs


def runs_of(text: str) -> list[str]:
    return _RUNS.findall(text)


def lab_steps(scorer, extractor=None) -> list:
    """Lab 01's steps (section 9), with the lab's settings."""
    return cleaning_steps(CFG, extractor=extractor, score_step=functools.partial(
        quality_score_filter, model=scorer, threshold=CFG.edu_threshold))


def in_process(pages, main_text, scorer):
    """The lab's run, step by step, keeping what reached each step."""
    accounting, inputs = Accounting(), {}
    docs = list(read_warc(WARC, accounting))
    for step in lab_steps(scorer, main_text):
        inputs[step_name(step)] = docs
        docs, table = run_pipeline([step], docs, accounting)
    return docs, table, inputs


def datatrove_run(work: Path, scorer, shards: int, workers: int, only_first: bool = False):
    steps = lab_steps(scorer)
    if only_first:
        steps = steps[:7]  # the per-document stage, ended by exact_dedup
    folder = work / f"{'stage0' if only_first else 'run'}_{workers}_workers"
    executors = crawl_executors(work / "crawl", folder, steps, tasks=shards,
                                workers=1, per_stage={"stage0": {"workers": workers}})
    return run_executors(executors[:1] if only_first else executors, progress=None)


def side_by_side(ours: pd.DataFrame, theirs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for a, b in zip(ours.itertuples(), theirs.itertuples()):
        for reason in sorted(set(a.reasons) | set(b.reasons)) or ["-"]:
            rows.append({"step": a.step, "reason": reason, "in-process": a.reasons.get(reason, 0),
                         "datatrove": b.reasons.get(reason, 0)})
    return pd.DataFrame(rows)


def reader_row(work: Path) -> dict:
    folder = work / "one_file"
    folder.mkdir()
    shutil.copy(WARC, folder)
    ours = Accounting()
    kept = {d.id: d for d in read_warc(WARC, ours)}
    theirs = {d.id: d.text for d in WarcReader(str(folder)).run()}
    records = ours.entered["read_warc"]
    same = sum(1 for i in kept if i in theirs and theirs[i] == kept[i].text)
    return {"step": "read_warc", "rule": "record -> HTML document", "docs in": records,
            "labkit drops": records - len(kept), "datatrove drops": records - len(theirs),
            "agreement": (records - len(kept) + same) / records}


def exact_row(docs, work: Path) -> dict:
    """datatrove's exact-dedup stages with its own normalisation, against labkit's exact_dedup."""
    config = ExactDedupConfig(content_getter=lambda d: simplify_text(d.text).encode())
    dt_docs = [DatatroveDocument(text=d.text, id=str(i)) for i, d in enumerate(docs)]
    ExactDedupSignature(str(work / "exact_sigs"), config).run(iter(dt_docs))
    ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config).run()
    kept = {d.id for d in ExactDedupFilter(str(work / "exact_dups"), config).run(iter(dt_docs))}
    theirs = {i for i in range(len(docs)) if str(i) not in kept}
    accounting = Accounting()
    run_pipeline([exact_dedup], docs, accounting)
    ours = {i for i, d in enumerate(docs) if d.id in {x for x, _, _ in accounting.drops}}
    return {"step": "exact_dedup", "rule": "exact_duplicate_of", "docs in": len(docs),
            "labkit drops": len(ours), "datatrove drops": len(theirs),
            "agreement": 1 - len(ours ^ theirs) / len(docs)}


def minhash_rows(docs, work: Path) -> tuple[dict, str]:
    texts = [d.text for d in docs]
    accounting = Accounting()
    run_pipeline([lab_steps(None)[7]], docs, accounting)
    ours = {i for i, d in enumerate(docs) if d.id in {x for x, _, _ in accounting.drops}}
    theirs = datatrove_minhash_drops(texts, work / "minhash", CFG.bands, CFG.rows, CFG.ngram,
                                     CFG.minhash_seed)
    sets = [ngram_set(t, CFG.ngram) for t in texts]
    similar = [len(a & b) / len(a | b) for a, b in combinations(sets, 2)]
    p = candidate_probability(np.array(similar), CFG.bands, CFG.rows)
    expected = float((2 * p * (1 - p)).sum())  # pairs that one draw catches and the other not
    best = {i: max(len(sets[i] & s) / len(sets[i] | s) for j, s in enumerate(sets) if j != i)
            for i in ours ^ theirs}
    note = (f"MinHash: {len(ours ^ theirs)} documents decided differently; each one's closest "
            f"other document has Jaccard {', '.join(f'{s:.2f}' for s in sorted(best.values()))}"
            f" (the S-curve's steep part). Pairs expected to be caught by exactly one of two "
            f"independent hash draws: {expected:.1f}.")
    row = {"step": "minhash_dedup", "rule": "near_duplicate_of", "docs in": len(docs),
           "labkit drops": len(ours), "datatrove drops": len(theirs),
           "agreement": 1 - len(ours ^ theirs) / len(docs)}
    return row, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    shards = parser.parse_args().shards
    pd.set_option("display.width", 160)
    print(f"# datatrove on {platform.processor() or platform.machine()}, "
          f"{labkit.profile().name} profile, crawl cut into {shards} shards\n")
    pages = list(read_warc(WARC))
    main_text = {p.text: extract_main_text(p.text) for p in pages}.__getitem__
    label_of = {row["url"]: row for row in load_records("crawl_labels")}
    keep = [p for p in pages if label_of[p.metadata["url"]]["keep"] and main_text(p.text)]
    scorer = fit_quality_scorer([main_text(p.text) for p in keep],
                                [label_of[p.metadata["url"]]["edu_score"] for p in keep])
    kept, table, inputs = in_process(pages, main_text, scorer)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split_warc(WARC, work / "crawl", shards)
        results = datatrove_run(work, scorer, shards, workers=2)
        theirs = funnel_table(results)
        out = [d.id for d in results_output(work / "run_2_workers")]
        print("## 1. in-process vs datatrove (first stage on 2 workers)\n")
        print(f"kept documents: {len(kept)} in-process, {len(out)} datatrove; ids and order "
              f"identical: {out == [d.id for d in kept]}; per-step table identical: "
              f"{theirs.equals(table)}\n")
        print(side_by_side(table, theirs).to_markdown(index=False), "\n")

        print("## 2. first stage throughput (trafilatura itself, same shards)\n")
        rows = [throughput(datatrove_run(work, scorer, shards, w, only_first=True)[0])
                for w in (1, 2)]
        print(pd.DataFrame(rows).round(2).to_markdown(index=False), "\n")

        print("## 3. labkit vs datatrove's own implementations, per rule\n")
        english = [d.text for d in inputs["gopher_repetition"]]
        decisions = {s: rule_decisions(s, english) for s in
                     ("gopher_repetition", "gopher_quality", "c4_filter", "fineweb_filter")}
        decisions["gopher_repetition (runs tokenizer)"] = rule_decisions(
            "gopher_repetition", english, LabkitWordTokenizer(runs_of))
        decisions["fineweb_filter (FineWeb's stop chars)"] = rule_decisions(
            "fineweb_filter", english, stop_chars=FINEWEB_STOP_CHARS)
        agreement = agreement_table(decisions)
        minhash, note = minhash_rows(inputs["minhash_dedup"], work)
        extra = pd.DataFrame([reader_row(work), exact_row(inputs["exact_dedup"], work), minhash])
        print(pd.concat([extra, agreement]).round(4).to_markdown(index=False), "\n")
        print(note, "\n")

        print("## 4. one Common Crawl dump at the measured rate (assumptions marked)\n")
        rate = rows[0]["per_cpu_second"]
        mean_kb = np.mean([len(p.text.encode()) for p in pages]) / 1e3
        for n in CC_PAGES:
            cost = dump_cost(rate, n, USD_PER_CPU_HOUR)
            print(f"- {n / 1e9:.1f} B pages (assumed) / {rate:.1f} pages per CPU-second "
                  f"(measured, 1 worker) = {cost['cpu_hours']:,.0f} CPU-hours; at "
                  f"${USD_PER_CPU_HOUR}/CPU-hour (assumed) ${cost['usd']:,.0f}")
        print(f"- this crawl's pages carry {mean_kb:.1f} KB of HTML each; a real page carries "
              "tens of KB, and trafilatura's time grows with it: read these as a lower bound.")


def results_output(folder: Path):
    import gzip
    import json

    for path in sorted((folder / "output").glob("*.jsonl.gz")):
        for line in gzip.open(path, "rt"):
            yield DatatroveDocument(**{k: v for k, v in json.loads(line).items()
                                       if k in ("text", "id", "metadata")})


if __name__ == "__main__":
    main()
