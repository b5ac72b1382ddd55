"""A torchrun group that stays up between notebook cells and runs one worker script after another.

    group = worker_group(nproc=2)           # torchrun starts once, the ranks join the group
    ddp = group.run("ddp", args={"steps": 4})  # a LaunchResult, as launch() returns
    zero = group.run("zero")                # the same ranks, the same process group
    group.close()                           # or at the kernel's exit

Each `launch` pays for a new torchrun: the launcher imports torch, forks the ranks, they join a
new process group (about 3-5 CPU seconds on a small CPU, more than a tiny job computes). A group
pays once: torchrun runs workers/serve.py, which waits for jobs and runs each worker script
exactly as torchrun would have (as `__main__`, with its arguments, its results written where
`launch` reads them). Jobs run one at a time. A job that fails takes the group down (a rank
whose peer died in a collective cannot be trusted) and reports like `launch`; the next `run`
starts a fresh group. Use `launch` for jobs that need torchrun's own features (--max-restarts)
or another number of processes.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from ..errors import LabkitError
from ..validate import function, maybe, positive, positive_int
from .launch import (
    LIBRARY_MODULES,
    PRELOAD,
    RESULT_DIR_ENV,
    WORKERS_DIR,
    LaunchResult,
    WorkerFailed,
    _args,
    _can_preload,
    _dump_stacks,
    _explain_failure,
    _parent_death_signal,
    _rank_stderr,
    _reader,
    _stop,
    _torchrun,
    _track,
    script_args,
    worker_script,
)

JOB_DIR_ENV = "LABKIT_JOB_DIR"  # as in workers/serve.py (not imported: it imports torch)
DONE = "LABKIT-JOB-DONE"


def _package_workers() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in WORKERS_DIR.glob("*.py")
                        if p.stem not in (*LIBRARY_MODULES, "serve", "checkpoint")))


def _environment(env: Mapping | None) -> dict[str, str]:
    """A group's extra environment variables as strings (what a group is also matched by)."""
    if env is not None and not isinstance(env, Mapping):
        raise LabkitError(f"env must be a dict of environment variables, got {type(env).__name__}")
    return {k: str(v) for k, v in (env or {}).items()}


class WorkerGroup:
    """`nproc` ranks under one torchrun that run worker scripts on request (see the module)."""

    def __init__(self, nproc: int = 2, env: Mapping | None = None,
                 preload_workers: Sequence[str] | None = None, start_timeout: float = 120):
        positive_int(nproc, "nproc"), positive(start_timeout, "start_timeout")
        self.nproc, self.env = nproc, _environment(env)
        # the launcher imports what these workers import, once, before forking the ranks
        if preload_workers is not None and (isinstance(preload_workers, (str, bytes))
                                            or not isinstance(preload_workers, Sequence)):
            raise LabkitError("preload_workers must be a list of worker names (or None for all "
                              f"of the package's workers), got {preload_workers!r}")
        names = _package_workers() if preload_workers is None else tuple(preload_workers)
        for name in names:
            try:
                worker_script(name)
            except LabkitError as exc:
                raise LabkitError(f"preload_workers: {exc}") from None
        self.modules = (*PRELOAD, *(f"labkit.parallel.workers.{worker_script(n).stem}"
                                    for n in names))
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.work: Path | None = None
        self.jobs, self.known, self.launcher, self.closed_streams = 0, {}, [], 0
        self.lines: queue.Queue = queue.Queue()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        if self.work is not None:  # the folder of a group that failed
            shutil.rmtree(self.work, ignore_errors=True)
        self.work = Path(tempfile.mkdtemp(prefix="labkit-group-"))
        self.job_dir, self.log_dir = self.work / "jobs", self.work / "logs"
        self.job_dir.mkdir()
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "PYTHONUNBUFFERED": "1", JOB_DIR_ENV: str(self.job_dir),
                     RESULT_DIR_ENV: str(self.work), **self.env}
        preload = _can_preload(child_env, self.nproc)
        self.command = [
            *_torchrun(preload, self.modules), "--standalone", "--local-addr=127.0.0.1",
            f"--nproc-per-node={self.nproc}", "--max-restarts=0", f"--log-dir={self.log_dir}",
            "--redirects=2", "--local-ranks-filter=0",
            *(["--run-path", "--start-method=fork"] if preload else []),
            str(WORKERS_DIR / "serve.py"),
        ]
        self.lines, self.known, self.launcher, self.jobs = queue.Queue(), {}, [], 0
        self.closed_streams = 0
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env=child_env, start_new_session=True,
            preexec_fn=_parent_death_signal if sys.platform.startswith("linux") else None,
        )
        for stream, tag in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            threading.Thread(target=_reader, args=(stream, tag, self.lines), daemon=True).start()
        self.started_at = time.perf_counter()
        _GROUPS.add(self)

    def _submit(self, job: dict) -> None:
        path = self.job_dir / f"job{self.jobs}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job))
        os.replace(tmp, path)  # atomic: a rank never reads half a job

    def run(self, script, args=(), timeout: float = 120, echo: Callable | None = print, *,
            check: bool = True) -> LaunchResult:
        """Run `script` (a worker name or path) on every rank of the group; like `launch`."""
        positive(timeout, "timeout"), maybe(function)(echo, "echo"), _args(args, "args")
        path = worker_script(script)
        echo = echo or (lambda *a, **k: None)
        first = not self.alive
        if first:
            self._start()
        n = self.jobs
        result_dir = self.work / f"job{n}"
        result_dir.mkdir()
        self._submit({"script": str(path), "args": script_args(args), "result_dir": str(result_dir)})
        self.jobs += 1
        log, status, start = [], "ok", time.perf_counter()
        limit = timeout + (self.start_timeout if first else 0)
        try:
            status = self._wait(n, log, echo, start, limit)
        except KeyboardInterrupt:
            echo(f"interrupted: stopping the group (torchrun and {len(self.known)} processes)")
            self._kill()
            raise
        return self._result(path, status, log, result_dir, time.perf_counter() - start, echo,
                            check, limit)

    def _wait(self, n: int, log: list, echo, start: float, limit: float) -> str:
        last_track, exited_at = 0.0, None
        while True:
            try:
                tag, line = self.lines.get(timeout=0.1)
                if line is None:
                    self.closed_streams += 1
                elif tag == "out" and line == f"{DONE} {n}":
                    return "ok"
                elif tag == "out":
                    log.append(line)
                    echo(line)
                else:
                    self.launcher.append(line)
            except queue.Empty:
                pass
            now = time.perf_counter()
            if now - last_track > 0.5:
                _track(self.proc, self.known)
                last_track = now
            if now - start > limit:
                _dump_stacks(self.proc, self.known)
                return "timeout"
            # torchrun gone: read what its pipes still hold (EOF on both, or 2 s at most)
            if exited_at is None and self.proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (self.closed_streams == 2 or now - exited_at > 2.0):
                return "failed"

    def _result(self, path, status, log, result_dir, wall, echo, check, limit) -> LaunchResult:
        if status != "ok":
            self._kill()  # before reading: every rank has written what it will write
        results: list[dict | None] = [None] * self.nproc
        for rank in range(self.nproc):
            f = result_dir / f"rank{rank}.json"
            if f.exists():
                results[rank] = json.loads(f.read_text())
        errors = [json.loads(f.read_text()) for f in result_dir.glob("rank*.error.json")]
        stderr = _rank_stderr(self.log_dir, self.nproc)
        out = LaunchResult(path.name, self.nproc, self.command, status,
                           self.proc.poll() if status != "ok" else 0, wall, results, log,
                           "\n".join(self.launcher), stderr, pids=[self.proc.pid, *self.known])
        if status == "timeout":
            missing = [r for r, res in enumerate(results) if res is None]
            out.error = (f"{path.name}: timed out after {limit:g} s; the group was stopped "
                         f"(torchrun and every rank); rank(s) {', '.join(map(str, missing)) or 'none'}"
                         " had not finished; where each was stuck follows")
            if missing:
                out.failed_rank = missing[0]
                out.traceback = "\n".join(f"--- rank {r} ---\n{stderr.get(r, '')}" for r in missing)
        elif status == "failed":
            _explain_failure(out, path, out.launcher_log, errors, results, stderr)
        if not out.ok:
            echo(out.report())
            if check:
                raise WorkerFailed(out)
        return out

    def _kill(self) -> None:
        if self.proc is not None and (self.proc.poll() is None
                                      or any(p.is_running() for p in self.known.values())):
            _stop(self.proc, self.known)
        _GROUPS.discard(self)

    def close(self, grace: float = 10.0) -> None:
        """Tell the ranks to leave the group and wait for torchrun to exit (then force it)."""
        if self.alive:
            self._submit({"stop": True})
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._kill()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def processes(self) -> list[psutil.Process]:
        """torchrun and the ranks, while the group is up (for the curious, and for tests)."""
        if not self.alive:
            return []
        _track(self.proc, self.known)
        return [psutil.Process(self.proc.pid), *(p for p in self.known.values() if p.is_running())]

    def __repr__(self) -> str:
        state = f"up, {self.jobs} job(s) run" if self.alive else "not running"
        return f"WorkerGroup(nproc={self.nproc}, {state})"


_GROUPS: set[WorkerGroup] = set()  # the groups up in this process: closed at exit


@atexit.register
def _close_all() -> None:
    for group in list(_GROUPS):
        group.close(grace=2.0)


def worker_group(nproc: int = 2, env: Mapping | None = None, **kwargs) -> WorkerGroup:
    """The running group of `nproc` ranks (and this `env`) if there is one, else a new one.

    A notebook can call this at the top of each part: it never starts a second group with the
    same shape, so re-running a cell does not double the memory."""
    positive_int(nproc, "nproc")
    key = _environment(env)
    for group in _GROUPS:
        if group.nproc == nproc and group.env == key and group.alive:
            return group
    return WorkerGroup(nproc, env, **kwargs)
