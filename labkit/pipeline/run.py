"""Running the capstone: stages in order, each skipped when its inputs and config are unchanged.

Every stage's artifacts live in `<run_dir>/stages/<stage>/<key>/`, where the key is a hash of
what made them: the stage's config sections, the run's seed and device, the files it reads
from data_samples/ and the fingerprints (output hashes) of the stages it reads. A stage runs
only when no trusted folder has its key, so changing `sft.lr` changes the keys of sft and of
everything downstream of it (dpo, evaluate, quantize) and nothing upstream; several configs can
share one run directory and reuse each other's unchanged stages (the knob experiments do).

A folder is trusted only if its completion marker (`_complete.json`, written last) names the
key and every output file still has the hash the marker records. A stage writes into a
`.partial-*` folder that becomes the final one by one atomic rename, so an interrupted run
(Ctrl-C, a crash, a full disk) leaves nothing a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabkitError
from ..samples import file_sha256

MARKER = "_complete.json"
FORMAT = 1  # bump when a stage's artifacts change meaning: every key changes with it


class StageError(LabkitError):
    """A stage failed; the message names it, `stage` holds its name."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r} failed: {message}")
        self.stage = stage


@dataclass(frozen=True)
class Stage:
    name: str
    what: str  # one line: what it makes
    sections: tuple[str, ...]  # config sections whose values enter its key
    needs: tuple[str, ...]  # upstream stages whose artifacts it reads
    inputs: Callable[[dict], list[Path]]  # shipped files whose bytes enter its key
    run: Callable[[StageContext], dict]  # writes into ctx.out, returns its metrics


@dataclass
class StageContext:
    cfg: dict
    out: Path  # the (partial) folder to write into
    upstream: dict[str, Path]  # finished folders of the stages it needs
    device: str
    progress: bool = True

    def metrics_of(self, stage: str) -> dict:
        return json.loads((self.upstream[stage] / "metrics.json").read_text())


@dataclass
class StageRecord:
    name: str
    key: str
    status: str  # "ran" or "skipped"
    path: Path
    seconds: float = 0.0  # wall seconds of this run (0 when skipped)
    cpu_seconds: float = 0.0  # CPU seconds of this process (all threads; sandboxes excluded)


@dataclass
class RunResult:
    run_dir: Path
    config: dict
    stages: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "ran"]

    @property
    def skipped(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "skipped"]

    def record(self, stage: str) -> StageRecord:
        for s in self.stages:
            if s.name == stage:
                return s
        raise LabkitError(f"stage {stage!r} is not part of this run; its stages: "
                          f"{', '.join(s.name for s in self.stages)}")

    def path(self, stage: str) -> Path:
        return self.record(stage).path

    def metrics(self, stage: str) -> dict:
        return json.loads((self.path(stage) / "metrics.json").read_text())

    def card(self):
        from .report import report_card

        return report_card(self)

    def figure(self):
        from .report import report_figure

        return report_figure(self)


# --- hashing ----------------------------------------------------------------------------------


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def key_inputs(stage: Stage, cfg: dict, device: str, fingerprints: dict[str, str]) -> dict:
    """Everything that decides a stage's artifacts (its key is the hash of this)."""
    return {
        "format": FORMAT, "stage": stage.name,
        "config": {s: cfg[s] for s in stage.sections},
        "seed": cfg["run"]["seed"], "device": device,
        "upstream": {n: fingerprints[n] for n in stage.needs},
        "inputs": {str(p): file_sha256(p) for p in stage.inputs(cfg)},
    }


def stage_key(stage: Stage, cfg: dict, device: str, fingerprints: dict[str, str]) -> str:
    return _digest(key_inputs(stage, cfg, device, fingerprints))


def outputs_of(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the marker excepted) -> its sha256."""
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def artifacts_fingerprint(outputs: dict[str, str]) -> str:
    """What the stages downstream are keyed on: the hashes of a stage's artifacts. Its
    metrics.json is left out: it is computed from those artifacts, and it also holds timings,
    so a stage rebuilt into the same bytes would otherwise re-run everything after it."""
    return _digest({name: sha for name, sha in outputs.items() if name != "metrics.json"})


def trusted(folder: Path, key: str) -> dict | None:
    """The marker of a finished stage folder whose outputs are intact, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("key") != key or marker.get("outputs") != outputs_of(folder):
        return None
    return marker


# --- running ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(run_dir: Path):
    """One run at a time per run directory (two would race on the same stage folders)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are not expected to overlap there
        yield
        return
    with open(run_dir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LabkitError(f"another capstone run is using {run_dir}; wait for it or use "
                              "another --run-dir") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(stage_dir: Path) -> None:
    """Partial folders of interrupted runs: never trusted, removed before the next run."""
    if stage_dir.is_dir():
        for leftover in stage_dir.glob(".partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(partial: Path, final: Path) -> None:
    """Make the finished partial folder the stage's folder in one rename."""
    if final.exists():  # an untrusted folder with this key (e.g. a damaged file): replace it
        stale = final.with_name(f".partial-stale-{uuid.uuid4().hex[:8]}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(partial, final)


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _execute(stage: Stage, cfg: dict, made_of: dict, final: Path, upstream: dict, device: str,
             progress: bool) -> tuple[float, float]:
    key = _digest(made_of)
    partial = final.with_name(f".partial-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    partial.mkdir(parents=True)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        metrics = stage.run(StageContext(cfg, partial, upstream, device, progress))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        metrics = {**metrics, "stage_wall_s": round(wall, 2), "stage_cpu_s": round(cpu, 2)}
        _write_json(partial / "metrics.json", metrics)
        marker = {"stage": stage.name, "key": key, "made_of": made_of,
                  "upstream_folders": {n: str(p) for n, p in upstream.items()},
                  "outputs": outputs_of(partial), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_json(partial / MARKER, marker)  # last: the folder is complete
        _publish(partial, final)
    except KeyboardInterrupt:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except StageError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        detail = str(exc) if isinstance(exc, LabkitError) else f"{type(exc).__name__}: {exc}"
        raise StageError(stage.name, detail) from exc
    return wall, cpu


@contextlib.contextmanager
def _quiet_transformers():
    """One progress bar per stage is the pipeline's: transformers' own bars (loading and saving
    every model) and its notices are silenced while it runs, and restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # the libraries' deprecation notices, not the learner's
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_device(cfg: dict) -> str:
    import torch

    wanted = cfg["run"]["device"]
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise LabkitError("config key run.device = 'cuda' but no CUDA device is visible; valid "
                          "here: 'cpu' or 'auto'")
    return wanted


def run(config="cpu", run_dir: str | os.PathLike = "capstone-run", *, overrides: dict | None = None,
        progress: bool = True, stages: list[Stage] | None = None,
        report: bool = True) -> RunResult:
    """Run the capstone: every stage whose artifacts are missing or out of date, in order.

    `config` is a shipped name ('smoke', 'cpu', 'gpu'), a TOML path or a dict; `overrides`
    ({"sft.lr": 1e-3}) apply on top. Returns which stages ran and which were skipped, with
    their folders; `result.card()` is the report card, `result.figure()` its figure.
    `stages` replaces the pipeline's stages (tests use tiny ones, with report=False: the card
    needs the real stages' metrics).
    """
    import torch
    from tqdm.auto import tqdm

    from .config import load_config
    from .stages import STAGES

    cfg = load_config(config, overrides)
    stages = stages or STAGES
    run_dir = Path(run_dir).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg)
    result = RunResult(run_dir, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["run"]["threads"])
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with _locked(run_dir), _quiet_transformers():
            fingerprints: dict[str, str] = {}
            bar = tqdm(stages, desc="capstone", unit="stage", disable=not progress)
            for stage in bar:
                bar.set_postfix_str(stage.name)
                made_of = key_inputs(stage, cfg, device, fingerprints)
                key = _digest(made_of)
                stage_dir = run_dir / "stages" / stage.name
                _remove_leftovers(stage_dir)
                final = stage_dir / key[:16]
                upstream = {n: result.path(n) for n in stage.needs}
                marker = trusted(final, key)
                record = StageRecord(stage.name, key, "skipped", final)
                if marker is None:
                    record.status = "ran"
                    record.seconds, record.cpu_seconds = _execute(
                        stage, cfg, made_of, final, upstream, device, progress)
                    marker = trusted(final, key)
                    if marker is None:  # pragma: no cover - the folder changed under us
                        raise StageError(stage.name, f"its artifacts in {final} changed while "
                                                     "being published")
                fingerprints[stage.name] = artifacts_fingerprint(marker["outputs"])
                result.stages.append(record)
            bar.close()
            result.seconds = time.perf_counter() - wall
            result.cpu_seconds = time.process_time() - cpu
            _record_run(result, report)
    finally:
        torch.set_num_threads(threads)
    return result


def _record_run(result: RunResult, report: bool = True) -> None:
    from .report import write_report

    record = {"config": result.config, "seconds": round(result.seconds, 2),
              "cpu_seconds": round(result.cpu_seconds, 2),
              "stages": [{"name": s.name, "key": s.key, "status": s.status,
                          "path": s.path.relative_to(result.run_dir).as_posix(),
                          "seconds": round(s.seconds, 2), "cpu_seconds": round(s.cpu_seconds, 2)}
                         for s in result.stages]}
    (result.run_dir / "runs").mkdir(exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S") + f"-{_digest(result.config)[:8]}.json"
    _write_json(result.run_dir / "runs" / name, record)
    _write_json(result.run_dir / "latest.json", record)
    if report:
        write_report(result)


def load_run(run_dir: str | os.PathLike, record: str = "latest.json") -> RunResult:
    """A finished run read back from its record (to redraw its card without running)."""
    run_dir = Path(run_dir)
    path = run_dir / record if (run_dir / record).exists() else run_dir / "runs" / record
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise LabkitError(f"no capstone run recorded in {run_dir}; run `labkit pipeline run "
                          f"cpu --run-dir {run_dir}` first") from None
    result = RunResult(run_dir, data["config"], seconds=data["seconds"],
                       cpu_seconds=data["cpu_seconds"])
    for s in data["stages"]:
        folder = run_dir / s["path"]
        if trusted(folder, s["key"]) is None:
            raise LabkitError(f"stage {s['name']!r} of this run is missing or damaged in {folder}; "
                              "run the config again to rebuild it")
        result.stages.append(StageRecord(s["name"], s["key"], s["status"], folder, s["seconds"],
                                         s["cpu_seconds"]))
    return result
