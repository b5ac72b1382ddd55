"""The capstone pipeline (labkit.pipeline): config checks, stage caching and skipping, atomic
stage folders, and one end-to-end smoke run (shared by the tests that read its artifacts)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import LabkitError
from labkit.pipeline import (
    SCHEMA,
    STAGE_NAMES,
    Stage,
    StageError,
    card_text,
    load_config,
    load_run,
    parse_override,
    run,
    wilson_interval,
)
from labkit.pipeline.run import MARKER, trusted

# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_shipped_configs_are_valid_and_complete(name):
    cfg = load_config(name)
    assert set(cfg) == set(SCHEMA)
    for section, keys in SCHEMA.items():
        assert set(cfg[section]) == set(keys)


def test_configs_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (load_config(n) for n in ("smoke", "cpu", "gpu"))
    for key in ("d_model", "steps"):
        assert smoke["pretrain"][key] < cpu["pretrain"][key] < gpu["pretrain"][key]
    assert cpu["eval"]["knowledge_items"] == 399, "the cpu card's confidence interval uses all"


@pytest.mark.parametrize("override, named", [
    ({"sft.lrr": 1e-3}, "sft.lrr"),
    ({"training.lr": 1e-3}, "unknown section 'training'"),
    ({"pretrain.lr": 0}, "pretrain.lr"),
    ({"pretrain.lr": "fast"}, "pretrain.lr"),
    ({"pretrain.steps": 2.5}, "pretrain.steps"),
    ({"pretrain.steps": True}, "pretrain.steps"),
    ({"sft.dataset": "dirty"}, "'curated', 'noisy'"),
    ({"data.dedup": "yes"}, "data.dedup"),
    ({"pretrain.n_head": 5}, "n_head"),
    ({"pretrain.seq_len": 512}, "pretrain.context"),
    ({"eval.pass_k": [1, 99]}, "eval.code_samples"),
    ({"quant.schemes": ["nf4", "nf4"]}, "quant.schemes"),
    ({"quant.schemes": ["fp8"]}, "quant.schemes"),
    ({"dpo.warmup_steps": 99}, "dpo.steps"),
    ({"eval.knowledge_items": 400}, "[1, 399]"),
    ({"lr": 1}, "section.key"),
])
def test_bad_config_values_name_the_key_and_what_is_valid(override, named):
    with pytest.raises(LabkitError) as info:
        load_config("smoke", override)
    assert named in str(info.value)
    assert "valid" in str(info.value) or "unknown" in str(info.value)


def test_a_learners_file_inherits_from_a_shipped_config(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "smoke"\n[sft]\nlr = 5e-3\ndataset = "noisy"\n')
    cfg = load_config(path)
    assert cfg["sft"]["lr"] == 5e-3 and cfg["sft"]["dataset"] == "noisy"
    assert cfg["pretrain"] == load_config("smoke")["pretrain"]
    path.write_text('base = "smoke"\n[sft]\nlearning_rate = 5e-3\n')
    with pytest.raises(LabkitError, match="sft.learning_rate.*valid keys of \\[sft\\]"):
        load_config(path)
    path.write_text("[sft\nlr = 1")
    with pytest.raises(LabkitError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(LabkitError, match="missing key"):
        load_config({"run": {"seed": 1}})
    with pytest.raises(LabkitError, match="neither a shipped config"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("text, expected", [
    ("sft.lr=1e-3", ("sft.lr", 1e-3)), ("pretrain.steps = 40", ("pretrain.steps", 40)),
    ("data.dedup=false", ("data.dedup", False)), ("sft.dataset=noisy", ("sft.dataset", "noisy")),
    ('sft.dataset="noisy"', ("sft.dataset", "noisy")), ("eval.pass_k=[1, 2]", ("eval.pass_k", [1, 2])),
])
def test_overrides_parse_as_toml_values(text, expected):
    assert parse_override(text) == expected


_NUMERIC = [(s, k) for s, keys in SCHEMA.items() for k, key in keys.items()
            if key.kind in ("int", "float")]


@settings(max_examples=150, deadline=None)
@given(which=st.sampled_from(_NUMERIC),
       value=st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)))
def test_any_value_for_a_numeric_key_is_accepted_in_range_or_refused_clearly(which, value):
    section, name = which
    key = SCHEMA[section][name]
    try:
        cfg = load_config("smoke", {f"{section}.{name}": value})
    except LabkitError as exc:
        assert f"{section}.{name}" in str(exc) or "config key" in str(exc)
        return
    got = cfg[section][name]
    assert not isinstance(value, bool) and isinstance(value, int | float)
    assert math.isfinite(got) and (key.low is None or got >= key.low)
    assert key.high is None or got <= key.high


# --- the confidence interval -----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), share=st.floats(0, 1))
def test_wilson_interval_matches_scipy_and_holds_the_estimate(n, share):
    from scipy.stats import binomtest

    correct = round(share * n)
    low, high = wilson_interval(correct, n)
    ref = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(ref.low, abs=2e-4) and high == pytest.approx(ref.high, abs=2e-4)
    assert 0 <= low <= correct / n <= high <= 1


@pytest.mark.parametrize("args", [(1, 0), (5, 4), (-1, 4), (1.5, 4), (True, 4)])
def test_wilson_interval_refuses_impossible_counts(args):
    with pytest.raises(LabkitError):
        wilson_interval(*args)


# --- the runner on tiny fake stages (no model involved) --------------------------------------


def _fake_stages(calls: list, fail: str | None = None, interrupt: str | None = None):
    def make(name):
        def body(ctx):
            calls.append(name)
            (ctx.out / "artifact.txt").write_text(f"{name} lr={ctx.cfg['sft']['lr']}")
            if name == interrupt:
                raise KeyboardInterrupt
            if name == fail:
                raise ValueError("the disk is on fire")
            # metrics carry timings, which differ from run to run (as every real stage's do)
            return {"made": name, "wall_s": time.perf_counter()}
        return body

    return [Stage("a", "first", ("data",), (), lambda cfg: [], make("a")),
            Stage("b", "second", ("sft",), ("a",), lambda cfg: [], make("b")),
            Stage("c", "third", ("eval",), ("b",), lambda cfg: [], make("c"))]


def _run_fake(run_dir, calls, overrides=None, **kw):
    return run("smoke", run_dir, overrides=overrides, progress=False,
               stages=_fake_stages(calls, **kw), report=False)


def test_a_changed_key_reruns_its_stage_and_everything_downstream_only(tmp_path):
    calls = []
    assert _run_fake(tmp_path, calls).ran == ["a", "b", "c"]
    assert _run_fake(tmp_path, calls).ran == []
    assert _run_fake(tmp_path, calls, {"sft.lr": 0.02}).ran == ["b", "c"]
    assert _run_fake(tmp_path, calls, {"eval.code_tasks": 1}).ran == ["c"]
    # both versions stay: going back reruns nothing
    assert _run_fake(tmp_path, calls).ran == []
    assert calls == ["a", "b", "c", "b", "c", "c"]


def test_an_interrupted_stage_leaves_nothing_a_later_run_trusts(tmp_path):
    calls = []
    _run_fake(tmp_path, calls)
    with pytest.raises(KeyboardInterrupt):
        _run_fake(tmp_path, calls, {"sft.lr": 0.02}, interrupt="b")
    assert not list((tmp_path / "stages" / "b").glob(".partial-*")), "the partial folder is removed"
    assert len(list((tmp_path / "stages" / "b").iterdir())) == 1, "only the first run's folder"
    # A hard kill (no Python cleanup) leaves a partial folder, marker and all: never trusted.
    ghost = tmp_path / "stages" / "b" / ".partial-deadbeef-1"
    ghost.mkdir()
    (ghost / "artifact.txt").write_text("half")
    (ghost / MARKER).write_text("{}")
    calls.clear()
    assert _run_fake(tmp_path, calls, {"sft.lr": 0.02}).ran == ["b", "c"]
    assert not ghost.exists()


def test_a_damaged_or_unmarked_artifact_is_rebuilt(tmp_path):
    calls = []
    first = _run_fake(tmp_path, calls)
    (first.path("b") / "artifact.txt").write_text("edited by hand")
    assert trusted(first.path("b"), first.stages[1].key) is None
    # b's artifact is rebuilt with the same bytes, so c (which hashes b's outputs) is kept
    assert _run_fake(tmp_path, calls).ran == ["b"]
    (first.path("a") / MARKER).unlink()  # written last: a folder without it is incomplete
    assert _run_fake(tmp_path, calls).ran == ["a"]


def test_a_failing_stage_is_named_and_leaves_no_folder(tmp_path):
    calls = []
    with pytest.raises(StageError, match="stage 'b' failed: ValueError: the disk is on fire") as info:
        _run_fake(tmp_path, calls, fail="b")
    assert info.value.stage == "b" and isinstance(info.value, LabkitError)
    assert not (tmp_path / "stages" / "b").exists() or not any((tmp_path / "stages" / "b").iterdir())
    assert _run_fake(tmp_path, calls).ran == ["b", "c"], "a fixed stage runs on; a is kept"


def test_a_missing_crawl_file_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(LabkitError, match="data.warc = '/no/such/crawl.warc.gz'"):
        run("smoke", tmp_path, overrides={"data.warc": "/no/such/crawl.warc.gz"}, progress=False)
    assert not (tmp_path / "stages").exists()


# --- the smoke config, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("capstone")
    return run("smoke", run_dir, progress=False)


def test_smoke_run_makes_every_stage_and_a_full_report_card(smoke):
    assert smoke.ran == list(STAGE_NAMES)
    card = smoke.card()
    card_stages = set(card["stage"])
    assert {"data", "tokenizer", "pretrain", "sft", "dpo", "evaluate", "quantize"} <= card_stages
    for row in card.itertuples():
        assert isinstance(row.yours, int | float) and math.isfinite(row.yours), row.measure
        assert isinstance(row.shipped, int | float) and math.isfinite(row.shipped), row.measure
        assert row.due_to
    text = card_text(card)
    assert "knowledge test accuracy" in text and "nf4" in text
    assert max(len(line) for line in text.splitlines()) <= 100  # fits a notebook cell
    for name in ("report.md", "report.json", "figure.html", "latest.json"):
        assert (smoke.run_dir / name).stat().st_size > 0
    figure = smoke.figure()
    assert {t.name for t in figure.data} == {"yours", "shipped"}


def test_smoke_artifacts_are_consistent_with_their_metrics(smoke):
    data = smoke.metrics("data")
    corpus = (smoke.path("data") / "corpus.jsonl").read_text().splitlines()
    assert len(corpus) == data["documents"] == data["crawl_kept"] + data["topup_documents"]
    drops = (smoke.path("data") / "drops.jsonl").read_text().splitlines()
    assert len(drops) == data["drops"] and all(json.loads(d)["reason"] for d in drops)
    funnel = json.loads((smoke.path("data") / "funnel.json").read_text())
    for row in funnel["crawl"] + funnel["topup"]:
        assert row["in"] == row["kept"] + row["dropped"]
    assert funnel["crawl"][-1]["kept"] == data["crawl_kept"]
    assert funnel["topup"][-1]["kept"] == data["topup_documents"] <= data["topup_sampled"]
    pre = smoke.metrics("pretrain")
    assert pre["flops_6nd"] == 6 * pre["parameters"] * pre["tokens_seen"]
    for stage in ("pretrain", "sft", "dpo"):
        assert (smoke.path(stage) / "model" / "model.safetensors").exists()
    ev = smoke.metrics("evaluate")
    low, high = ev["knowledge"]["ci95"]
    assert low <= ev["knowledge"]["acc"] <= high
    quant = smoke.metrics("quantize")["rows"]
    assert quant["nf4"]["stored_bytes"] < quant["fp32"]["stored_bytes"]
    assert list((smoke.path("quantize")).glob("*.safetensors"))
    for s in smoke.stages:
        assert trusted(s.path, s.key) is not None


def test_second_run_skips_and_a_new_sft_lr_reruns_exactly_its_downstream(smoke):
    again = run("smoke", smoke.run_dir, progress=False)
    assert again.ran == [] and again.skipped == list(STAGE_NAMES)
    changed = run("smoke", smoke.run_dir, overrides={"sft.lr": 5e-3}, progress=False)
    assert changed.ran == ["sft", "dpo", "evaluate", "quantize"]
    assert changed.path("pretrain") == smoke.path("pretrain")
    assert changed.path("sft") != smoke.path("sft")


def test_cli_runs_a_config_and_names_bad_keys(smoke, capsys):
    from labkit.cli import main

    assert main(["pipeline", "run", "smoke", "--run-dir", str(smoke.run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "knowledge test accuracy" in out
    assert main(["pipeline", "run", "smoke", "--run-dir", str(smoke.run_dir),
                 "--set", "sft.lrr=1"]) == 2
    assert "sft.lrr" in capsys.readouterr().err
    restored = load_run(smoke.run_dir)
    assert restored.card().equals(smoke.card())


def test_run_dir_is_locked_against_a_second_run(smoke):
    fcntl = pytest.importorskip("fcntl")
    with open(Path(smoke.run_dir) / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LabkitError, match="another capstone run"):
            run("smoke", smoke.run_dir, progress=False)
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert os.path.exists(smoke.run_dir)
