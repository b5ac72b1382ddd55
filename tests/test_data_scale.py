"""Lab 01's pipeline on datatrove: the same documents and the same drops as in-process, and
labkit's rules against datatrove's own implementations of them."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from datatrove.data import Document as DatatroveDocument
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.writers.jsonl import JsonlWriter
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit
from labkit.data import (
    Accounting,
    Document,
    exact_dedup,
    extract,
    extract_main_text,
    fit_quality_scorer,
    gopher_quality_reason,
    jaccard,
    keep_if,
    minhash_dedup,
    quality_score_filter,
    read_warc,
    run_pipeline,
    write_warc,
)
from labkit.data.checkpoint import cleaning_steps
from labkit.data.quality import FINEWEB_STOP_CHARS, GOPHER_STOP_WORDS, words_of
from labkit.data.scale import (
    LabkitStep,
    LabkitWordTokenizer,
    common_crawl_executors,
    crawl_executors,
    datatrove_minhash_drops,
    dump_cost,
    funnel_table,
    rule_decisions,
    run_executors,
    split_warc,
    throughput,
)
from labkit.errors import LabkitError
from labkit.loaders import load_records

CFG = labkit.profile().settings("data")
WARC = labkit.sample_path("crawl/crawl.warc.gz")
TOKENIZER = labkit.sample_path("tokenizer/tokenizer.json")


def lab_steps(scorer, extractor=None) -> list:
    """Lab 01's steps (section 9), with the lab's settings."""
    return cleaning_steps(CFG, extractor=extractor, score_step=functools.partial(
        quality_score_filter, model=scorer, threshold=CFG.edu_threshold))


def read_jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz"))
            for line in gzip.open(path, "rt")]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """The shipped crawl in-process (extractions cached) and on datatrove: 4 shards, the first
    stage on 2 worker processes extracting with trafilatura itself, the rest in this process."""
    pages = list(read_warc(WARC))
    main_text = {p.text: extract_main_text(p.text) for p in pages}.__getitem__
    label_of = {row["url"]: row for row in load_records("crawl_labels")}
    keep = [p for p in pages if label_of[p.metadata["url"]]["keep"] and main_text(p.text)]
    scorer = fit_quality_scorer([main_text(p.text) for p in keep],
                                [label_of[p.metadata["url"]]["edu_score"] for p in keep])
    accounting = Accounting()
    steps = lab_steps(scorer, main_text)
    inputs: dict[str, list[Document]] = {}  # what reached each step, for the cross-checks
    docs = list(read_warc(WARC, accounting))
    for step in steps:
        inputs[getattr(step, "func", step).__name__] = docs
        docs, table = run_pipeline([step], docs, accounting)
    work = tmp_path_factory.mktemp("scale")
    split_warc(WARC, work / "crawl", 4)
    executors = crawl_executors(work / "crawl", work / "run", lab_steps(scorer), tasks=4,
                                workers=1, per_stage={"stage0": {"workers": 2}},
                                tokenizer_file=str(TOKENIZER))
    results = run_executors(executors, progress=None)
    return SimpleNamespace(kept=docs, table=table, inputs=inputs, work=work / "run",
                           results=results, executors=executors)


# ------------------------------------------------------------------------------ split_warc
def test_split_warc_keeps_every_record_whole_and_in_order(tmp_path):
    records = [{"url": f"https://example.org/{i}", "body": f"<p>page {i}</p>"} for i in range(7)]
    records[3] = {"url": "https://example.org/a.pdf", "body": b"%PDF", "content_type":
                  "application/pdf"}
    path = write_warc(tmp_path / "crawl.warc.gz", records)
    shards = split_warc(path, tmp_path / "shards", 3)
    assert [p.name for p in shards] == [f"shard_{k:05d}.warc.gz" for k in range(3)]
    whole, parts = Accounting(), Accounting()
    one = [(d.id, d.text) for d in read_warc(path, whole)]
    assert [(d.id, d.text) for d in read_warc(shards, parts)] == one
    assert parts.table().equals(whole.table())


def test_split_warc_leaves_a_damaged_tail_to_the_reader(tmp_path):
    records = [{"url": f"https://example.org/{i}", "body": f"<p>page {i}</p>"} for i in range(5)]
    path = write_warc(tmp_path / "crawl.warc.gz", records)
    path.write_bytes(path.read_bytes()[:-30])  # the last record's gzip member cut short
    whole, parts = Accounting(), Accounting()
    one = [d.id for d in read_warc(path, whole)]
    assert [d.id for d in read_warc(split_warc(path, tmp_path / "s", 2), parts)] == one
    assert parts.table().equals(whole.table())
    assert "truncated_gzip" in whole.table()["reasons"].iloc[0]


def test_split_warc_refuses_bad_input(tmp_path):
    path = write_warc(tmp_path / "c.warc.gz", [{"url": "https://e.org", "body": "<p>x</p>"}])
    for shards in (0, -1, 2.5, True):
        with pytest.raises(LabkitError, match="shards"):
            split_warc(path, tmp_path / "out", shards)
    with pytest.raises(LabkitError, match="shards=5 but c.warc.gz holds 1 records"):
        split_warc(path, tmp_path / "out", 5)
    with pytest.raises(LabkitError, match="does not exist"):
        split_warc(tmp_path / "missing.warc.gz", tmp_path / "out", 1)


# ------------------------------------------------------------------------------ LabkitStep
def short_docs(docs, accounting, n=3):
    return keep_if(docs, accounting, "short_docs",
                   lambda d: f"shorter_than:{n}" if len(d.text) < n else None)


def leaky(docs, accounting):  # a buggy step: drops without saying why
    return (d for d in docs if d.id != "b")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=6), max_size=12), st.integers(0, 5))
def test_labkit_step_keeps_what_the_step_keeps_and_counts_every_drop(texts, n):
    step = functools.partial(short_docs, n=n)
    ours = [Document(str(i), t) for i, t in enumerate(texts)]
    kept, table = run_pipeline([step], ours)
    wrapped = LabkitStep(step)
    out = list(wrapped.run(iter(DatatroveDocument(text=t, id=str(i))
                                for i, t in enumerate(texts))))
    assert [(d.id, d.text) for d in out] == [(d.id, d.text) for d in kept]
    [row] = funnel_table([{"stats": SimpleNamespace(stats=[wrapped.stats])}]).to_dict("records")
    assert row == table.to_dict("records")[0]


def test_labkit_step_writes_each_drop_with_its_reason(tmp_path):
    step = LabkitStep(functools.partial(short_docs, n=3), JsonlWriter(str(tmp_path)))
    docs = [DatatroveDocument(text=t, id=t) for t in ("a", "bbb", "cc", "dddd")]
    assert [d.id for d in step.run(iter(docs))] == ["bbb", "dddd"]
    assert [(r["id"], r["metadata"]["filter_reason"]) for r in read_jsonl(tmp_path)] == [
        ("a", "shorter_than:3"), ("cc", "shorter_than:3")]
    assert step.stats["dropped_shorter_than"].total == 2


def test_a_step_that_loses_documents_silently_is_caught():
    docs = [DatatroveDocument(text="x", id=i) for i in "abc"]
    with pytest.raises(AssertionError, match="leaky, task 0: 3 in != 2 kept \\+ 0 dropped"):
        list(LabkitStep(leaky).run(iter(docs)))


# ------------------------------------------------------------------- in-process == datatrove
@pytest.mark.slow
def test_datatrove_run_keeps_the_same_documents_as_the_lab(crawl):
    out = read_jsonl(crawl.work / "output")
    assert len(out) == len(crawl.kept) > 0
    assert [d["id"] for d in out] == [d.id for d in crawl.kept]
    assert [d["text"] for d in out] == [d.text for d in crawl.kept]


@pytest.mark.slow
def test_datatrove_run_has_the_same_funnel_and_reasons(crawl):
    table = funnel_table(crawl.results)
    assert table.equals(crawl.table), (table, crawl.table)
    for row in table.itertuples():  # every dropped document was written with its reason
        if row.step == "read_warc" or not row.dropped:
            continue
        excluded = read_jsonl(crawl.work / "excluded" / row.step)
        assert len(excluded) == row.dropped
        if row.step not in ("exact_dedup", "minhash_dedup"):  # datatrove's filters name none
            reasons = {r["metadata"]["filter_reason"].split(":")[0] for r in excluded}
            assert reasons == set(row.reasons)


@pytest.mark.slow
def test_datatrove_tokenizes_the_kept_documents(crawl):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    expected = sum(len(tokenizer.encode(d.text).ids) + 1 for d in crawl.kept)  # + end of text
    [stats] = [s for s in crawl.results[-1]["stats"].stats if "tokens" in s.stats]
    assert stats.stats["tokens"].total == expected
    assert list((crawl.work / "tokens").glob("*.ds"))


@pytest.mark.slow
def test_throughput_counts_the_first_stage(crawl):
    first = throughput(crawl.results[0])
    assert first["records"] == crawl.table["in"].iloc[0] and first["workers"] == 2
    assert 0 < first["cpu_s"] and first["per_cpu_second"] > 0
    assert first["per_worker_second_wall"] == pytest.approx(
        first["records"] / (2 * crawl.results[0]["wall_s"]))
    with pytest.raises(LabkitError, match="first stage"):
        throughput(crawl.results[1])


# ------------------------------------------------ labkit's rules against datatrove's own
@pytest.mark.slow
def test_quality_rules_agree_with_datatrove_where_the_rules_agree(crawl):
    english = [d.text for d in crawl.inputs["gopher_repetition"]]
    quality = rule_decisions("gopher_quality", english)
    # labkit counts stop-word occurrences, datatrove distinct stop words: the only difference
    for i in quality.index[quality["labkit"].ne(quality["datatrove"])
                           & (quality["labkit"].notna() | quality["datatrove"].notna())]:
        words = words_of(english[i])
        assert len(GOPHER_STOP_WORDS & set(words)) < 2 <= sum(w in GOPHER_STOP_WORDS
                                                               for w in words)
    c4 = rule_decisions("c4_filter", english)
    assert c4["labkit"].fillna("").tolist() == c4["datatrove"].fillna("").tolist()
    # datatrove 0.10.1 ends a line with any of its 159 terminal marks, quotes not among them;
    # FineWeb (and labkit) with . ' " ! ?: with those, the two agree
    fineweb = rule_decisions("fineweb_filter", english, stop_chars=FINEWEB_STOP_CHARS)
    assert fineweb["labkit"].fillna("").tolist() == fineweb["datatrove"].fillna("").tolist()
    default = rule_decisions("fineweb_filter", english)
    moved = default["labkit"].fillna("") != default["datatrove"].fillna("")
    assert set(default.loc[moved, "datatrove"]) <= {"fineweb_line_punct_ratio"}
    # repetition: the line and paragraph rules do not depend on words and must agree
    repetition = rule_decisions("gopher_repetition", english)
    line_rules = {"gopher_dup_para_frac", "gopher_dup_para_char_frac", "gopher_dup_line_frac",
                  "gopher_dup_line_char_frac", "gopher_empty_doc"}
    for rule in line_rules:
        assert (repetition["labkit"] == rule).tolist() == (repetition["datatrove"] == rule).tolist()


def test_stop_word_rule_counts_differ_on_a_crafted_text():
    """The one rule where labkit and datatrove count differently: "the" 60 times."""
    text = " ".join(["the"] + ["word"] * 58 + ["the"])
    off = {k: None for k in ("min_doc_words", "max_doc_words", "min_avg_word_length",
                             "max_avg_word_length", "max_symbol_word_ratio",
                             "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
                             "min_alpha_words_ratio")}
    assert gopher_quality_reason(text, **off) is None  # two occurrences of a stop word
    from datatrove.pipeline.filters import GopherQualityFilter

    theirs = GopherQualityFilter(language=LabkitWordTokenizer(), min_doc_words=None,
                                 max_doc_words=None, min_avg_word_length=None,
                                 max_avg_word_length=None, max_symbol_word_ratio=None,
                                 max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                                 max_non_alpha_words_ratio=None)
    assert theirs.filter(DatatroveDocument(text=text, id="0")) == (False,
                                                                   "gopher_enough_stop_words")


@pytest.mark.slow
def test_datatrove_minhash_disagrees_only_where_chance_decides(crawl, tmp_path):
    docs = crawl.inputs["minhash_dedup"]
    texts = [d.text for d in docs]
    ours = Accounting()
    run_pipeline([lab_steps(None)[7]], docs, ours)
    labkit_drops = {i for i, d in enumerate(docs) if d.id in {x for x, _, _ in ours.drops}}
    theirs = datatrove_minhash_drops(texts, tmp_path, CFG.bands, CFG.rows, CFG.ngram,
                                     CFG.minhash_seed)
    assert len(labkit_drops & theirs) >= 0.8 * max(len(labkit_drops), len(theirs)) > 0
    for i in labkit_drops ^ theirs:  # P(caught) = 1 - (1 - s^8)^14: 0.05 at 0.48, 0.99 at 0.85
        best = max(jaccard(texts[i], t, CFG.ngram) for j, t in enumerate(texts) if j != i)
        assert 0.45 < best < 0.9, (i, best)


def test_datatrove_warc_reader_reads_what_labkit_reads_except_declared_charsets(tmp_path):
    pytest.importorskip("magic")  # python-magic needs the libmagic system library
    from datatrove.pipeline.readers import WarcReader

    (tmp_path / "c.warc.gz").write_bytes(WARC.read_bytes())
    ours = {d.id: d for d in read_warc(WARC)}
    theirs = {d.id: d.text for d in WarcReader(str(tmp_path)).run()}
    assert set(theirs) <= set(ours) and all(ours[i].text == t for i, t in theirs.items())
    skipped = [ours[i] for i in set(ours) - set(theirs)]
    # the stock reader tries UTF-8, then cchardet's guess (UTF-8 again here) and gives up
    # without a word; labkit decodes by the charset the page declares
    assert skipped and all(not d.metadata["encoding"].startswith("utf-8") for d in skipped)


# ------------------------------------------------------------------- quiet workers
QUIET_RUN = """
import multiprocess, sys
from pathlib import Path
from labkit.data import gopher_quality
from labkit.data.scale import crawl_executors, run_executors, split_warc

work = Path(sys.argv[1])
context = multiprocess.get_context("forkserver")
with context.Pool(1) as pool:  # the fork server starts now, writing to this stderr
    pool.map(abs, [1])
split_warc(sys.argv[2], work / "crawl", 2)
run_executors(crawl_executors(work / "crawl", work / "run", [gopher_quality], tasks=2,
                              workers=2), progress=None)
"""


@pytest.mark.slow
def test_workers_of_a_fork_server_started_earlier_log_to_the_file(tmp_path):
    """Lab 01 starts the fork server for datasets.map, before datatrove runs: the workers it
    forks must still keep datatrove's console logs out of the notebook."""
    import subprocess
    import sys

    eighth = split_warc(WARC, tmp_path / "eighths", 8)[0]
    run = subprocess.run([sys.executable, "-c", QUIET_RUN, str(tmp_path), str(eighth)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Launching pipeline" not in run.stderr + run.stdout
    assert "tasks completed" not in run.stderr + run.stdout
    log = (tmp_path / "run" / "logs" / "console.log").read_text()
    assert "Launching pipeline for rank=" in log


# ------------------------------------------------------------- the cluster config, priced
def test_common_crawl_config_constructs_for_slurm_and_ray(tmp_path):
    steps = lab_steps(scorer=None)
    per_stage = {"minhash_dedup_clusters": {"mem_per_cpu_gb": 64, "time": "12:00:00"}}
    slurm = common_crawl_executors(steps, tmp_path / "run", tasks=8000, time="04:00:00",
                                   partition="cpu", cpus_per_task=1, mem_per_cpu_gb=2,
                                   per_stage=per_stage, job_name="cc_lab01")
    assert all(isinstance(ex, SlurmPipelineExecutor) for ex in slurm)
    assert [ex.world_size for ex in slurm] == [8000, 8000, 1, 8000, 8000, 14, 1, 8000]
    assert [ex.depends for ex in slurm[1:]] == slurm[:-1]
    assert slurm[6].mem_per_cpu_gb == 64 and slurm[0].time == "04:00:00"
    reader = slurm[0].pipeline[0]
    assert reader.paths_file.endswith("crawl-data/CC-MAIN-2024-10/warc.paths.gz")
    args = slurm[0].get_sbatch_args(max_array=1000)
    assert args["array"] == "0-999" and args["partition"] == "cpu"
    ray = common_crawl_executors(steps, tmp_path / "ray", tasks=8000, executor=RayPipelineExecutor,
                                 cpus_per_task=1, mem_per_cpu_gb=2)
    assert [ex.world_size for ex in ray] == [ex.world_size for ex in slurm]


def test_crawl_executors_refuses_bad_input(tmp_path):
    with pytest.raises(LabkitError, match="tasks"):
        crawl_executors(tmp_path, tmp_path, [extract], tasks=0)
    with pytest.raises(LabkitError, match="steps"):
        crawl_executors(tmp_path, tmp_path, [], tasks=1)
    with pytest.raises(LabkitError, match="steps\\[1\\]"):
        crawl_executors(tmp_path, tmp_path, [extract, "gopher_quality"], tasks=1)
    bad = functools.partial(minhash_dedup, num_perm=100, bands=14, rows=8)
    with pytest.raises(LabkitError, match="bands \\* rows == num_perm"):
        crawl_executors(tmp_path, tmp_path, [bad], tasks=1, executor=LocalPipelineExecutor)
    with pytest.raises(LabkitError, match="exact_dedup 2 times"):
        crawl_executors(tmp_path, tmp_path, [exact_dedup, exact_dedup], tasks=1)
    with pytest.raises(LabkitError, match="valid: gopher_repetition"):
        rule_decisions("language_filter", ["text"])


@given(st.floats(1, 1e4), st.floats(1e6, 1e10), st.floats(0.001, 1.0))
def test_dump_cost_is_pages_over_rate(rate, pages, price):
    cost = dump_cost(rate, pages, price)
    assert cost["cpu_hours"] == pytest.approx(pages / rate / 3600)
    assert cost["usd"] == pytest.approx(cost["cpu_hours"] * price)
    assert dump_cost(rate, 2 * pages, price)["usd"] == pytest.approx(2 * cost["usd"])


def test_dump_cost_refuses_bad_input():
    for args in ((0, 1e9, 0.05), (10, -1, 0.05), (10, 1e9, True), ("10", 1e9, 0.05)):
        with pytest.raises(LabkitError, match="valid: a positive number"):
            dump_cost(*args)
