"""Lab 01's pipeline at crawl scale: the same labkit steps, run as datatrove pipeline steps.

datatrove, the engine that built FineWeb, runs a pipeline (a list of steps that take and yield
documents) over `tasks` shards, `workers` at a time: on one machine (LocalPipelineExecutor), as a
Slurm job array (SlurmPipelineExecutor) or on Ray. This module adapts; it re-implements nothing:

- `LabkitWarcReader` is datatrove's WarcReader deciding each record with labkit's `read_warc`, so
  a skipped record is counted under its reason (the stock reader skips them without a word);
- `LabkitStep` runs one labkit step function (extract, language_filter, gopher_quality, ...) in
  a task; its drops become datatrove stats `dropped_<reason>` and, if asked, go to an exclusion
  writer with the reason in `metadata["filter_reason"]`;
- `crawl_executors` turns lab 01's list of steps into chained executors. The two steps that look
  across documents become sharded stages: exact dedup as datatrove's three exact-dedup stages on
  labkit's normalised text, MinHash as datatrove's four stages on labkit's signatures, so both
  find what the in-process steps find. A fitted model (the quality scorer) travels inside its
  step to every task: once fitted, it is a constant like a threshold.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path

import multiprocess
import numpy as np
import pandas as pd
from datatrove.data import Document as DatatroveDocument
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.pipeline.readers.warc import WarcReader
from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.logging import setup_default_logger
from datatrove.utils.stats import PipelineStats
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import WhitespaceTokenizer
from loguru import _better_exceptions, logger
from warcio.archiveiterator import ArchiveIterator

from labkit.errors import LabkitError
from labkit.validate import checks, existing_file, function, positive_int

from .dedup import minhash_signatures, normalise_text
from .document import Accounting, Document, step_name
from .quality import (
    c4_clean,
    fineweb_reason,
    gopher_quality_reason,
    gopher_repetition_reason,
    words_of,
)
from .warc import COMMON_CRAWL_MAX_PAYLOAD, read_warc

GLOBAL_STEPS = ("exact_dedup", "minhash_dedup")  # the steps that look across documents

# loguru works out Python's library folders (36 sysconfig lookups, ~25 ms) for every handler it
# adds, and datatrove adds three per task: on a small run that is most of a stage's time. The
# answer does not change while Python runs, so work it out once.
_formatter = getattr(_better_exceptions, "ExceptionFormatter", None)
if _formatter is not None and hasattr(_formatter, "_get_lib_dirs"):
    _formatter._get_lib_dirs = staticmethod(functools.cache(_formatter._get_lib_dirs))


def _steps(value, name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, list | tuple) or not value:
        raise LabkitError(f"{name} must be a non-empty list of step functions, got {value!r:.60}")
    return [function(step, f"{name}[{i}]") for i, step in enumerate(value)]


@checks(path=existing_file, shards=positive_int)
def split_warc(path: str | Path, out_dir: str | Path, shards: int) -> list[Path]:
    """Cut a .warc(.gz) into `shards` files of consecutive whole records, in crawl order.

    A gzipped WARC is one gzip member per record, so a record is copied byte for byte.
    (Common Crawl ships each monthly crawl already cut this way, into tens of thousands of
    files of about 1 GB each.)
    """
    out_dir, starts = Path(out_dir), []
    with open(path, "rb") as f:
        archive = ArchiveIterator(f)
        with contextlib.suppress(Exception):  # a damaged tail stays in the last shard, whole,
            starts.extend(archive.offset for _ in archive)  # for read_warc to report
    if shards > len(starts):
        raise LabkitError(f"shards={shards} but {path.name} holds {len(starts)} records; "
                          f"valid: 1..{len(starts)}")
    bounds = [0, *(starts[k * len(starts) // shards] for k in range(1, shards)),
              path.stat().st_size]
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    files = [out_dir / f"shard_{k:05d}{suffix}" for k in range(shards)]
    with open(path, "rb") as src:
        for file, begin, end in zip(files, bounds, bounds[1:]):
            src.seek(begin)
            with open(file, "wb") as dst:
                while begin < end:  # copied in pieces: a real WARC file is about 1 GB
                    chunk = src.read(min(end - begin, 1 << 24))
                    dst.write(chunk)
                    begin += len(chunk)
    return files


def _folded(reason: str) -> str:
    """A reason without its detail after ':' (an id, a language), as Accounting.table folds it."""
    return reason.split(":")[0]


# ------------------------------------------------------------------------------- the reader
class LabkitWarcReader(WarcReader):
    """datatrove's WarcReader (file sharding, local or remote folders, limits, progress bars)
    with labkit's record rules: HTML responses decoded as `read_warc` decodes them, and every
    other record counted as `dropped_<reason>` instead of skipped silently."""

    name = "read_warc"

    def __init__(self, data_folder, max_payload_bytes: int = COMMON_CRAWL_MAX_PAYLOAD, **kwargs):
        super().__init__(data_folder, **kwargs)
        self.max_payload_bytes = max_payload_bytes

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[DatatroveDocument]:
        start = time.process_time()
        yield from super().run(data, rank, world_size)
        # The last record is read once every later per-document step has finished the one
        # before it: for a stage of per-document steps, this is the task's CPU time.
        self.stat_update("cpu_seconds", value=time.process_time() - start, unit="task")

    def read_file(self, filepath: str) -> Iterator[DatatroveDocument]:
        with self._local_copy(filepath) as local:
            accounting = Accounting()
            records = read_warc(local, accounting, self.max_payload_bytes)
            for index in itertools.count():
                with self.track_time():  # only the reading: the generator waits while later
                    doc = next(records, None)  # steps run
                if doc is None:
                    break
                self.stat_update(StatHints.forwarded)
                yield self.get_document_from_dict(
                    {"text": doc.text, "id": doc.id, **doc.metadata}, filepath, index)
            self.stat_update(StatHints.total, value=accounting.entered["read_warc"])
            for _, _, reason in accounting.drops:
                self.stat_update(StatHints.dropped, f"dropped_{_folded(reason)}")

    @contextlib.contextmanager
    def _local_copy(self, filepath: str):
        """labkit's reader checks gzip members by path: a remote file is streamed to local disk."""
        if self.data_folder.is_local():
            yield self.data_folder.resolve_paths(filepath)
            return
        with tempfile.NamedTemporaryFile(suffix=Path(filepath).name) as tmp:
            with self.data_folder.open(filepath, "rb", compression=None) as remote:
                shutil.copyfileobj(remote, tmp)
            tmp.flush()
            yield tmp.name


# ----------------------------------------------------------------------- labkit steps as steps
class LabkitStep(PipelineStep):
    """One labkit step function as a datatrove pipeline step, with the same accounting.

    The step runs on this task's documents as they stream through. Each drop becomes the stat
    `dropped_<reason>` (the reason folded as in `Accounting.table`) and goes to the exclusion
    writer, if given. At the end of a task, in == kept + dropped is checked, as `run_pipeline`
    checks it in-process.
    """

    type = "🧪 - LABKIT"

    def __init__(self, step: Callable, exclusion_writer=None):
        self.name = step_name(step)  # PipelineStep names its stats after this
        super().__init__()
        self.step = step
        self.exclusion_writer = exclusion_writer

    def run(self, data, rank: int = 0, world_size: int = 1) -> Iterator[DatatroveDocument]:
        accounting, waiting = Accounting(), defaultdict(deque)
        upstream = [0.0]  # seconds spent waiting for earlier steps: not this step's time

        def incoming():
            pulled = iter(data or ())
            while True:
                start = time.perf_counter()
                doc = next(pulled, None)
                upstream[0] += time.perf_counter() - start
                if doc is None:
                    return
                self.stat_update(StatHints.total)
                waiting[doc.id].append(doc)
                yield Document(doc.id, doc.text, dict(doc.metadata))

        writer = self.exclusion_writer or contextlib.nullcontext()
        with writer:
            outputs, recorded = iter(self.step(incoming(), accounting)), 0
            while True:
                start, before = time.perf_counter(), upstream[0]
                kept = next(outputs, None)
                self.stats.time_stats.update(time.perf_counter() - start - (upstream[0] - before))
                recorded = self._record_drops(accounting, recorded, waiting, rank)
                if kept is None:
                    break
                original = waiting[kept.id].popleft()
                self.stat_update(StatHints.forwarded)
                yield DatatroveDocument(text=kept.text, id=kept.id, media=original.media,
                                        metadata=kept.metadata)
        self._check_funnel(rank)

    def _record_drops(self, accounting: Accounting, recorded: int, waiting, rank: int) -> int:
        for doc_id, _, reason in accounting.drops[recorded:]:
            self.stat_update(StatHints.dropped, f"dropped_{_folded(reason)}")
            dropped = waiting[doc_id].popleft()
            if self.exclusion_writer:
                dropped.metadata["filter_reason"] = reason
                self.exclusion_writer.write(dropped, rank)
        return len(accounting.drops)

    def _check_funnel(self, rank: int) -> None:
        n_in, kept, dropped = (self.stats[k].total for k in
                               (StatHints.total, StatHints.forwarded, StatHints.dropped))
        if n_in != kept + dropped:
            raise AssertionError(f"step {self.name}, task {rank}: {n_in} in != {kept} kept + "
                                 f"{dropped} dropped")


class LabkitWordTokenizer(WhitespaceTokenizer):
    """datatrove's word-tokenizer hook (`language=` of its filters) with labkit's words: by
    default `words_of`, the Gopher quality rule's tokens. datatrove's own English tokenizer is
    spaCy's, not installed here; its regex sentence splitter is kept."""

    def __init__(self, words: Callable[[str], list[str]] = words_of):
        super().__init__()
        self.words = words

    def word_tokenize(self, text: str) -> list[str]:
        return self.words(text)


# ------------------------------------------------------------------ global steps as stages
def _normalised(doc: DatatroveDocument) -> bytes:
    return normalise_text(doc.text).encode()


class FirstCopyExactSignature(ExactDedupSignature):
    """datatrove's exact-dedup stage 1 on labkit's normalised text. datatrove keeps the copy of
    highest priority, then lowest index in its file: priority falls with the task's rank, so the
    first copy in shard order is kept, as labkit's `exact_dedup` keeps the first it sees."""

    def run(self, data, rank: int = 0, world_size: int = 1):
        if world_size > 65534:  # datatrove stores priorities in 16 bits
            raise LabkitError(f"{world_size} tasks; valid: up to 65534 for first-copy priority")
        self._priority = 65535 - rank
        return super().run(data, rank, world_size)

    def get_hashes(self, doc: DatatroveDocument, doc_idx: int) -> list[tuple[int, int, int]]:
        return [(self.hash_fc(self.config.content_getter(doc)), self._priority, doc_idx)]


class _ReasonedFilter:
    """A datatrove dedup filter whose drops also count under a reason, like labkit's."""

    reason = ""

    def run(self, data, rank: int = 0, world_size: int = 1):
        yield from super().run(data, rank, world_size)
        if dropped := self.stats[StatHints.dropped].total:
            self.stat_update(f"dropped_{self.reason}", value=dropped)


class ExactDuplicateFilter(_ReasonedFilter, ExactDedupFilter):
    name, reason = "exact_dedup", "exact_duplicate_of"


class NearDuplicateFilter(_ReasonedFilter, MinhashDedupFilter):
    name, reason = "minhash_dedup", "near_duplicate_of"


class LabkitMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash stage 1 with labkit's signatures (`minhash_signatures`, the lab's hash
    family and seed), so the buckets, clusters and filter stages see labkit's 112 minima."""

    def __init__(self, output_folder, config: MinhashConfig, family: str = "multiply_shift"):
        super().__init__(output_folder, config, language=LabkitWordTokenizer())
        self.family = family
        self._signatures: dict[str, np.ndarray] = {}

    def run(self, data, rank: int = 0, world_size: int = 1):
        docs = list(data or ())  # one shard's signatures in one call: labkit's is vectorised
        cfg = self.config
        texts = [doc.text for doc in docs]
        self._signatures = dict(zip(texts, minhash_signatures(
            texts, cfg.num_buckets * cfg.hashes_per_bucket, cfg.seed, cfg.n_grams,
            family=self.family)))
        return super().run(iter(docs), rank, world_size)

    def get_shingles(self, text: str) -> np.ndarray:
        # labkit hashes the n-grams itself, and gives even a text shorter than n words one
        # shingle: hand the text through (size 1, so the stage never skips it)
        return np.array([text], dtype=object)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        signature = self._signatures[shingles[0]]
        return [band.tolist() for band in np.split(signature, self.config.num_buckets)]


# ----------------------------------------------------------------------- lab 01 -> executors
class LocalExecutor(LocalPipelineExecutor):
    """datatrove's LocalPipelineExecutor whose tasks write their console logs to `console_log`
    when it is set (`run_executors(quiet=True)` sets it). A worker forked from a fork server
    writes to that server's stderr, not to this process's: a server started before the run (by
    `datasets.map` in lab 01, say) would print every worker's logs into the notebook."""

    console_log: str | None = None

    def _launch_run_for_rank(self, rank: int, *args, **kwargs):  # a task, in its worker
        if self.console_log is None:
            return super()._launch_run_for_rank(rank, *args, **kwargs)
        with _logs_to(Path(self.console_log)):
            return super()._launch_run_for_rank(rank, *args, **kwargs)


@checks(steps=_steps, tasks=positive_int)
def crawl_executors(
    warcs: str | Path | PipelineStep,
    work_dir: str | Path,
    steps: list[Callable],
    tasks: int,
    executor=LocalExecutor,
    tokenizer_file: str | None = None,
    keep_exclusions: bool = True,
    per_stage: dict[str, dict] | None = None,
    **executor_kwargs,
) -> list:
    """Lab 01's `steps` as datatrove executors chained with `depends`, in run order.

    `warcs` is a folder of .warc(.gz) files (task r reads files r, r + tasks, ...) or a reader
    step. Per-document steps run inside the tasks as `LabkitStep`s. `exact_dedup` and
    `minhash_dedup` (as functools.partial with the lab's parameters) end a stage and become
    datatrove's sharded stages: signatures, one file per task -> duplicates found (exact: one
    task; MinHash: one task per band, then one task that clusters) -> a filter in each task of
    the next stage, which re-reads the same shards in the same order. Stages pass documents as
    JSONL under `work_dir`; the output is JSONL in `work_dir/output` and, with `tokenizer_file`
    (an HF tokenizer.json), datatrove's token files in `work_dir/tokens`. Stage names: stage0,
    exact_dedup_signatures, exact_dedup_find, stage1, minhash_dedup_signatures,
    minhash_dedup_buckets, minhash_dedup_clusters, stage2, ... `executor_kwargs` (workers,
    time, partition, ...) go to every executor, `per_stage` overrides them by stage name.
    With keep_exclusions, each step's dropped documents go to `work_dir/excluded/<step>`.
    """
    work_dir, per_stage = Path(work_dir), per_stage or {}
    names = [step_name(step) for step in steps]
    for name in GLOBAL_STEPS:
        if names.count(name) > 1:
            raise LabkitError(f"steps hold {name} {names.count(name)} times; valid: once")
    executors: list = []

    def add(name: str, pipeline: list, n_tasks: int = tasks) -> None:
        kwargs = {**executor_kwargs, **per_stage.get(name, {})}
        if n_tasks == 1 and "workers" in kwargs:
            kwargs["workers"] = 1
        executors.append(executor(pipeline=pipeline, tasks=n_tasks, depends=executors[-1]
                                  if executors else None,
                                  logging_dir=str(work_dir / "logs" / name), **kwargs))

    def excluded(name: str):
        return JsonlWriter(str(work_dir / "excluded" / name)) if keep_exclusions else None

    pipeline: list = [warcs if isinstance(warcs, PipelineStep)
                      else LabkitWarcReader(str(warcs), glob_pattern="*.warc*")]
    stage = 0
    for step in steps:
        name = step_name(step)
        if name not in GLOBAL_STEPS:
            pipeline.append(LabkitStep(step, excluded(name)))
            continue
        shards = str(work_dir / f"stage{stage}")
        add(f"stage{stage}", [*pipeline, JsonlWriter(shards)])
        pipeline = [JsonlReader(shards), *_dedup_stages(step, shards, work_dir, add,
                                                        excluded(name))]
        stage += 1
    pipeline.append(JsonlWriter(str(work_dir / "output")))
    if tokenizer_file:
        pipeline.append(DocumentTokenizer(str(work_dir / "tokens"), tokenizer_file,
                                          eos_token="<|endoftext|>", shuffle_documents=False))
    add(f"stage{stage}", pipeline)
    return executors


def _dedup_stages(step, shards: str, work_dir: Path, add, exclusion_writer) -> list:
    """Add a global step's stages before the next stage; return the filter that ends it there."""
    name, params = step_name(step), step.keywords if isinstance(step, functools.partial) else {}
    folder = work_dir / name
    if name == "exact_dedup":
        config = ExactDedupConfig(content_getter=_normalised)
        add(f"{name}_signatures", [JsonlReader(shards),
                                   FirstCopyExactSignature(str(folder / "sigs"), config)])
        add(f"{name}_find", [ExactFindDedups(str(folder / "sigs"), str(folder / "dups"), config)],
            1)
        return [ExactDuplicateFilter(str(folder / "dups"), config, exclusion_writer)]
    bands, rows = params.get("bands", 14), params.get("rows", 8)
    if bands * rows != params.get("num_perm", bands * rows):
        raise LabkitError(f"minhash_dedup with bands={bands}, rows={rows}, "
                          f"num_perm={params['num_perm']}; valid: bands * rows == num_perm")
    config = MinhashConfig(n_grams=params.get("n", 5), num_buckets=bands,
                           hashes_per_bucket=rows, seed=params.get("seed", 1))
    add(f"{name}_signatures", [JsonlReader(shards), LabkitMinhashSignature(
        str(folder / "sigs"), config, params.get("family", "multiply_shift"))])
    add(f"{name}_buckets", [MinhashDedupBuckets(str(folder / "sigs"), str(folder / "buckets"),
                                                config=config)], bands)
    add(f"{name}_clusters", [MinhashDedupCluster(str(folder / "buckets"),
                                                 str(folder / "remove"), config=config)], 1)
    return [NearDuplicateFilter(str(folder / "remove"), exclusion_writer=exclusion_writer)]


# ------------------------------------------------------------------------ running, reading
@contextlib.contextmanager
def _logs_to(path: Path):
    """datatrove logs every task to the console; send the console to a file instead (and so
    the workers it starts, which write to the inherited file descriptor 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log, contextlib.redirect_stderr(log):
        setup_default_logger()  # datatrove's console sink, now the file
        sys.__stderr__.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    setup_default_logger()  # and back to the console


def run_executors(executors: list, quiet: bool = True, progress=print) -> list[dict]:
    """Run the executors in order; per stage: its name, tasks, workers, wall seconds and
    merged stats. With quiet, datatrove's console logs go to <work_dir>/logs/console.log."""
    results = []
    if any(getattr(ex, "start_method", None) == "forkserver" and ex.workers > 1
           for ex in executors):
        # Workers fork from datatrove's fork server: if it imports labkit first, the workers
        # start with it (each would take ~1.5 s to import it). No effect once it runs.
        multiprocess.get_context("forkserver").set_forkserver_preload(["__main__", "labkit.data.scale"])
    for ex in executors:
        name = Path(ex.logging_dir.path).name
        log = Path(ex.logging_dir.path).parent / "console.log"
        start = time.perf_counter()
        if isinstance(ex, LocalExecutor):
            ex.console_log = str(log) if quiet else None
        with _logs_to(log) if quiet else contextlib.nullcontext():
            stats = ex.run()
        if stats is None:  # every task already done in an earlier run: read what it saved
            with ex.logging_dir.open("stats.json") as f:
                stats = PipelineStats.from_json(json.load(f))
        seconds = time.perf_counter() - start
        results.append({"stage": name, "tasks": ex.world_size, "workers": ex.workers,
                        "wall_s": seconds, "stats": stats})
        if progress:
            progress(f"{name:<28} {ex.world_size:>3} tasks on {ex.workers} worker(s): "
                     f"{seconds:5.1f} s wall")
    return results


def funnel_table(results: list[dict]) -> pd.DataFrame:
    """The run's funnel, shaped as `Accounting.table()`: one row per step that passes or drops
    documents (the reader, labkit steps, dedup filters; not signature stages or writers), with
    in, kept, dropped and the drops by reason, in pipeline order.

    Raises if a step's in != kept + dropped, or its reasons do not add up to its drops.
    """
    rows = []
    for result in results:
        for stat in result["stats"].stats:
            counts = {k: int(v.total) for k, v in stat.stats.items()}
            if StatHints.total not in counts or not ({StatHints.forwarded, StatHints.dropped}
                                                     & counts.keys()):
                continue
            name = stat.name.split(": ", 1)[-1]
            reasons = {k.removeprefix("dropped_"): v for k, v in counts.items()
                       if k.startswith("dropped_") and v}
            n_in, kept = counts[StatHints.total], counts.get(StatHints.forwarded, 0)
            dropped = counts.get(StatHints.dropped, 0)
            if n_in != kept + dropped or dropped != sum(reasons.values()):
                raise AssertionError(f"step {name}: {n_in} in, {kept} kept, {dropped} dropped, "
                                     f"reasons {reasons}")
            rows.append({"step": name, "in": n_in, "kept": kept, "dropped": dropped,
                         "reasons": reasons})
    return pd.DataFrame(rows, columns=["step", "in", "kept", "dropped", "reasons"])


# ------------------------------------------------ labkit vs datatrove's own implementations
# datatrove names two reasons differently; everything else differs only by the rule-set prefix
_SAME_RULE = {"gopher_enough_stop_words": "gopher_too_few_stop_words",
              "gopher_empty": "gopher_empty_doc", "fineweb_empty": "fineweb_empty_doc"}


_DATATROVE_FILTERS = {"gopher_repetition": (GopherRepetitionFilter, "gopher_"),
                      "gopher_quality": (GopherQualityFilter, ""),
                      "c4_filter": (C4QualityFilter, "c4_"),
                      "fineweb_filter": (FineWebQualityFilter, "fineweb_")}


def _labkit_reason(step: str, text: str) -> str | None:
    if step == "c4_filter":
        return c4_clean(text)[1]
    return {"gopher_repetition": gopher_repetition_reason, "gopher_quality": gopher_quality_reason,
            "fineweb_filter": fineweb_reason}[step](text)


def rule_decisions(step: str, texts: list[str], tokenizer=None, **filter_kwargs) -> pd.DataFrame:
    """Per text: labkit's drop reason and datatrove's (named as labkit names them), None = kept.

    datatrove's filter (its defaults, updated by `filter_kwargs`) gets `tokenizer` as its word
    tokenizer (default: labkit's `words_of`; datatrove's English one is spaCy's, not installed),
    so that a disagreement is a difference in the rules, not in the words.
    """
    if step not in _DATATROVE_FILTERS:
        raise LabkitError(f"step {step!r}; valid: {', '.join(_DATATROVE_FILTERS)}")
    cls, prefix = _DATATROVE_FILTERS[step]
    dt_filter = cls(language=tokenizer or LabkitWordTokenizer(), **filter_kwargs)
    rows = []
    for i, text in enumerate(texts):
        kept = dt_filter.filter(DatatroveDocument(text=text, id=str(i)))
        reason = None if kept is True else kept[1] if isinstance(kept, tuple) else "unnamed"
        if reason is not None and not reason.startswith(prefix or reason[:1]):
            reason = prefix + reason
        rows.append({"labkit": _labkit_reason(step, text),
                     "datatrove": _SAME_RULE.get(reason, reason)})
    return pd.DataFrame(rows, columns=["labkit", "datatrove"])


def agreement_table(decisions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per rule: documents in, labkit drops, datatrove drops, and the share of documents
    on which both make the same call for that rule (both drop for it, or neither does)."""
    rows = []
    for step, d in decisions.items():
        for rule in sorted(set(d["labkit"].dropna()) | set(d["datatrove"].dropna())):
            ours, theirs = d["labkit"] == rule, d["datatrove"] == rule
            rows.append({"step": step, "rule": rule, "docs in": len(d),
                         "labkit drops": int(ours.sum()), "datatrove drops": int(theirs.sum()),
                         "agreement": float((ours == theirs).mean())})
        same = d["labkit"].isna() == d["datatrove"].isna()
        rows.append({"step": step, "rule": "(keep or drop)", "docs in": len(d),
                     "labkit drops": int(d["labkit"].notna().sum()),
                     "datatrove drops": int(d["datatrove"].notna().sum()),
                     "agreement": float(same.mean())})
    return pd.DataFrame(rows)


def datatrove_minhash_drops(texts: list[str], work_dir: str | Path, bands: int = 14,
                            rows: int = 8, n: int = 5, seed: int = 1, tokenizer=None) -> set[int]:
    """The indices datatrove's own four MinHash stages drop, all in this process, one task.

    datatrove's defaults otherwise: its text normalisation, 64-bit hashes of each n-gram, its
    (a*x + b) mod (2^61 - 1). Hashing is sha1: its default xxhash refuses str under xxhash 4
    (huggingface/datatrove#508). The word tokenizer is labkit's (spaCy is not installed).
    """
    folder = Path(work_dir)
    config = MinhashConfig(n_grams=n, num_buckets=bands, hashes_per_bucket=rows, seed=seed,
                           hash_config=HashConfig(hash_fc="sha1"))
    docs = [DatatroveDocument(text=t, id=str(i)) for i, t in enumerate(texts)]
    MinhashDedupSignature(str(folder / "sigs"), config,
                          language=tokenizer or LabkitWordTokenizer()).run(iter(docs))
    for band in range(bands):
        MinhashDedupBuckets(str(folder / "sigs"), str(folder / "buckets"), config=config).run(
            None, band, bands)
    MinhashDedupCluster(str(folder / "buckets"), str(folder / "remove"), config=config).run()
    kept = {doc.id for doc in MinhashDedupFilter(str(folder / "remove")).run(iter(docs))}
    return {i for i in range(len(texts)) if str(i) not in kept}


# ----------------------------------------------------------------- a Common Crawl dump, priced
COMMON_CRAWL = "https://data.commoncrawl.org/"


def common_crawl_executors(steps: list[Callable], root: str | Path, dump: str = "CC-MAIN-2024-10",
                           tasks: int = 8000, executor=None, **kwargs) -> list:
    """The executors to submit for one Common Crawl dump: lab 01's `steps`, the dump's WARC
    list as input (read over HTTPS, so no S3 library is needed), `root` a folder every node
    reaches (shared storage: tasks on other nodes read what earlier stages wrote there).
    `executor` defaults to SlurmPipelineExecutor; kwargs go to `crawl_executors`."""
    if executor is None:
        from datatrove.executor import SlurmPipelineExecutor as executor
    reader = LabkitWarcReader(COMMON_CRAWL,
                              paths_file=f"{COMMON_CRAWL}crawl-data/{dump}/warc.paths.gz")
    logger.disable("datatrove")  # Ray warns, once per executor, that `root` must be shared
    try:
        return crawl_executors(reader, root, steps, tasks, executor=executor, **kwargs)
    finally:
        logger.enable("datatrove")


def throughput(result: dict) -> dict:
    """WARC records per worker-second in the first stage of a run (a `run_executors` result).

    `per_cpu_second`: records over the CPU seconds the tasks used (what a worker that has its
    CPU to itself does in a second, so what a long run on a cluster pays per record);
    `per_worker_second_wall`: records over the stage's wall time times the workers in use,
    starting the worker processes and waiting for a busy machine's CPUs included.
    """
    stats = {s.name.split(": ", 1)[-1]: s for s in result["stats"].stats}
    if "read_warc" not in stats:
        raise LabkitError("this stage does not read WARC records; give the first stage's result")
    records = stats["read_warc"].stats[StatHints.total].total
    cpu = stats["read_warc"].stats["cpu_seconds"].total
    workers = min(result["workers"], result["tasks"])
    return {"records": int(records), "tasks": result["tasks"], "workers": workers,
            "cpu_s": cpu, "wall_s": result["wall_s"], "per_cpu_second": records / cpu,
            "per_worker_second_wall": records / (result["wall_s"] * workers)}


def dump_cost(docs_per_worker_second: float, pages: float, usd_per_cpu_hour: float) -> dict:
    """CPU-hours and dollars to push `pages` through at the measured rate of one worker (one
    CPU). Every input is the caller's, labelled as measured or assumed where it is shown."""
    for name, value in (("docs_per_worker_second", docs_per_worker_second), ("pages", pages),
                        ("usd_per_cpu_hour", usd_per_cpu_hour)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise LabkitError(f"{name}={value!r}; valid: a positive number")
    cpu_hours = pages / docs_per_worker_second / 3600
    return {"pages": pages, "docs_per_worker_second": docs_per_worker_second,
            "cpu_hours": cpu_hours, "usd": cpu_hours * usd_per_cpu_hour,
            "usd_per_cpu_hour": usd_per_cpu_hour}
