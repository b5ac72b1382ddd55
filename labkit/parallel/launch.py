"""Start a torchrun job from a notebook: stream rank 0's log, collect each rank's results, and
never leave a worker behind.

`launch("ddp", nproc=2)` runs `python -m torch.distributed.run --standalone --nproc-per-node 2
labkit/parallel/workers/ddp.py` in a subprocess of its own session (on Linux through a python
that imports torch and the worker's modules first and forks the workers, see `preload`). `--standalone`
binds its rendezvous store to port 0, so the operating system hands out a free port (two labs
can launch at once). Every
worker runs with OMP_NUM_THREADS=1 and writes its results to a temporary folder named by
LABKIT_RESULT_DIR. On a crash, a timeout or a KeyboardInterrupt (the notebook's stop button)
the whole job is killed, torchrun and each worker (torchrun puts every worker in a session of
its own, so one killpg is not enough), and the message names the rank that failed with its
traceback.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..errors import LabkitError
from ..validate import function, maybe, nonnegative_int, positive, positive_int, text

WORKERS_DIR = Path(__file__).parent / "workers"
LIBRARY_MODULES = ("__init__", "common", "model", "serve")  # in workers/, not lab workers
RESULT_DIR_ENV = "LABKIT_RESULT_DIR"


@dataclass
class LaunchResult:
    script: str
    nproc: int
    command: list[str]
    status: str  # "ok", "failed" or "timeout" (an interrupt re-raises KeyboardInterrupt)
    returncode: int | None
    wall_s: float
    results: list[dict | None]  # one entry per rank: its JSON result, None if it wrote none
    log: list[str] = field(default_factory=list)  # rank 0's stdout lines
    launcher_log: str = ""  # torchrun's own stderr
    stderr: dict[int, str] = field(default_factory=dict)  # each rank's stderr (last lines)
    failed_rank: int | None = None
    error: str | None = None  # one line: what failed, where
    traceback: str = ""  # the failed rank's traceback text
    pids: list[int] = field(default_factory=list)  # torchrun and every worker process seen
    restarts: int = 0  # times torchrun restarted the group (launch(max_restarts=...))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def result(self, rank: int = 0) -> dict:
        if not 0 <= rank < len(self.results) or self.results[rank] is None:
            raise LabkitError(f"rank {rank} left no result (status {self.status!r}): {self.error}")
        return self.results[rank]

    def report(self) -> str:
        """The failure message a notebook shows: the error line, then the rank's traceback."""
        if self.ok:
            return f"{self.script}: {self.nproc} ranks finished in {self.wall_s:.1f} s"
        return "\n".join(x for x in (self.error, self.traceback.rstrip()) if x)


class WorkerFailed(RuntimeError):
    """A launched job failed; `.result` holds everything collected (logs, tracebacks)."""

    def __init__(self, result: LaunchResult):
        super().__init__(result.report())
        self.result = result


def worker_script(name: str | os.PathLike) -> Path:
    """A worker by name ("ddp", "zero", "tp", "pp", "checkpoint") or a path to any script."""
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise LabkitError(f"script must be a worker name or a path, got {name!r}")
    path = Path(name)
    if path.suffix != ".py" and not path.exists():
        path = WORKERS_DIR / f"{name}.py"
    if not path.is_file():
        names = sorted(
            p.stem for p in WORKERS_DIR.glob("*.py") if p.stem not in LIBRARY_MODULES
        )
        raise LabkitError(
            f"script={str(name)!r} not found; give a path or a worker name: {', '.join(names)}"
        )
    return path.resolve()


PROCESS_MB = 450  # resident memory of one worker: torch maps ~0.3 GB, plus the job's tensors


def room_for(nproc: int, process_mb: float = PROCESS_MB) -> tuple[bool, str]:
    """Whether this machine can run `nproc` workers side by side, and why not: a free core for
    each (more processes than cores take turns, and collectives wait for the descheduled
    ones) and about `process_mb` of memory each (`labkit run-labs` counts every process's
    resident memory, libraries included)."""
    positive_int(nproc, "nproc"), positive(process_mb, "process_mb")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    need_gb = nproc * process_mb / 1e3
    free_gb = psutil.virtual_memory().available / 1e9
    if (cores or 1) < nproc:
        return False, (f"{nproc} processes need {nproc} cores (this machine has {cores}) and "
                       f"about {need_gb:.1f} GB of memory as `labkit run-labs` counts it (each "
                       "process maps torch)")
    if free_gb < need_gb + 0.5:
        return False, f"{nproc} processes need about {need_gb:.1f} GB; {free_gb:.1f} GB is free"
    return True, f"{cores} cores and {free_gb:.1f} GB free for {nproc} processes"


def _args(value, name: str):
    if not isinstance(value, (str, Mapping, list, tuple)):
        raise LabkitError(f"{name} must be a dict, list or string of worker arguments, "
                          f"got {type(value).__name__}")
    return value


def script_args(args: Sequence | Mapping) -> list[str]:
    """CLI words from a list, or from a dict {"steps": 4, "n_layer": 2} -> --steps 4 --n-layer 2."""
    if isinstance(args, Mapping):
        words = []
        for key, value in args.items():
            flag = "--" + str(key).replace("_", "-")
            if value is True:
                words.append(flag)
            elif value is not False and value is not None:
                words += [
                    flag,
                    ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value),
                ]
        return words
    if isinstance(args, str):
        return shlex.split(args)
    return [str(a) for a in args]


def torchrun_command(
    script,
    nnodes: int = 1,
    nproc_per_node: int = 8,
    args=(),
    rdzv_endpoint: str = "$MASTER_ADDR:29500",
    rdzv_id: str | None = None,
    max_restarts: int = 0,
    module: bool = False,
) -> str:
    """The command to run `script` on a real cluster: the same line on every node; the c10d
    rendezvous at `rdzv_endpoint` (a host all nodes reach) forms the group of nnodes x nproc.
    A worker's path is given from the repository root; `module=True` names it as a module
    instead (`-m labkit.parallel.workers.ddp`), which works wherever labkit is installed."""
    positive_int(nnodes, "nnodes"), positive_int(nproc_per_node, "nproc_per_node")
    nonnegative_int(max_restarts, "max_restarts"), text(rdzv_endpoint, "rdzv_endpoint", empty=False)
    maybe(text)(rdzv_id, "rdzv_id"), _args(args, "args")
    path = worker_script(script)
    try:
        shown = path.relative_to(Path.cwd())
    except ValueError:
        shown = (
            path.relative_to(WORKERS_DIR.parents[2]) if path.is_relative_to(WORKERS_DIR) else path
        )
    words = [
        "torchrun",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv_endpoint}",
        f"--rdzv-id={rdzv_id or 'labkit-' + path.stem}",
    ]
    if max_restarts:
        words.append(f"--max-restarts={max_restarts}")
    if module and path.parent == WORKERS_DIR.resolve():
        words += ["-m", f"labkit.parallel.workers.{path.stem}"]
    else:
        words.append(str(shown))
    words += script_args(args)
    # $MASTER_ADDR stays unquoted so the shell on each node expands it
    return " ".join(w if "$" in w else shlex.quote(w) for w in words)


PRELOAD = (  # what every worker needs; a worker of this package also gets its own imports
    "torch.distributed",
    "labkit.parallel.workers.common",
    "labkit.parallel.workers.model",
)


def _preloaded(path: Path) -> tuple[str, ...]:
    """Modules the launcher imports before forking: the shared ones, and for a worker of this
    package its module itself (its top-level imports, not its main), so each launch pays for
    exactly the libraries its ranks use (the tensor-parallel stack only where it is needed)."""
    if path.parent == WORKERS_DIR.resolve():
        return (*PRELOAD, f"labkit.parallel.workers.{path.stem}")
    return PRELOAD


def _torchrun(preload: bool, modules: Sequence[str] = PRELOAD) -> list[str]:
    if not preload:
        return [sys.executable, "-m", "torch.distributed.run"]
    code = (
        "import importlib, sys\n"
        f"for name in {tuple(modules)!r}:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except ImportError:\n        pass\n"
        "from torch.distributed.run import main\n"
        "sys.argv[0] = 'torchrun'\n"
        "main()\n"
    )
    return [sys.executable, "-c", code]


def _can_preload(env: Mapping, nproc: int) -> bool:
    """Fork-after-import is for CPU jobs on Linux: a process forked after CUDA was touched
    cannot use CUDA, so jobs whose workers take a GPU each (common.setup: when there are at
    least as many GPUs as processes) start their workers fresh."""
    if not sys.platform.startswith("linux"):
        return False
    if env.get("CUDA_VISIBLE_DEVICES", None) == "":
        return True
    import torch

    return not torch.cuda.is_available() or torch.cuda.device_count() < nproc


def _parent_death_signal():  # pragma: no cover - runs in the child between fork and exec
    # Linux: torchrun gets SIGTERM if the notebook kernel dies, and then stops its workers.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _reader(stream, tag: str, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put((tag, line.rstrip("\n")))
    lines.put((tag, None))


def _track(proc: subprocess.Popen, known: dict[int, psutil.Process]) -> None:
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            known.setdefault(child.pid, child)
    except psutil.Error:
        pass


def _dump_stacks(proc: subprocess.Popen, known: dict[int, psutil.Process]) -> None:
    """Ask each worker for its Python stack (workers register faulthandler on SIGUSR1), so a
    timeout can say where each rank was stuck."""
    if not hasattr(signal, "SIGUSR1"):
        return
    _track(proc, known)
    for p in known.values():
        try:
            p.send_signal(signal.SIGUSR1)
        except psutil.Error:
            pass
    time.sleep(0.5)


def _stop(proc: subprocess.Popen, known: dict[int, psutil.Process], grace: float = 3.0) -> None:
    """SIGTERM torchrun and every worker seen, then SIGKILL whatever is left after `grace` s."""
    _track(proc, known)
    procs = [p for p in known.values() if p.is_running()]
    try:
        procs.insert(0, psutil.Process(proc.pid))
    except psutil.Error:
        pass
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


_FAILURE = re.compile(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", re.S)


def _failures_from_torchrun(text: str) -> list[tuple[int, int]]:
    """(rank, exit code) pairs from torchrun's failure summary, root cause first."""
    root = text.find("Root Cause")
    ordered = (text[root:] + text[:root]) if root >= 0 else text
    seen, out = set(), []
    for rank, code in _FAILURE.findall(ordered):
        if int(rank) not in seen:
            seen.add(int(rank))
            out.append((int(rank), int(code)))
    return out


def _rank_stderr(log_dir: Path, nproc: int, keep: int = 80) -> dict[int, str]:
    out = {}
    for rank in range(nproc):
        files = sorted(log_dir.glob(f"*/attempt_*/{rank}/stderr.log"))
        if files:
            lines = files[-1].read_text(errors="replace").splitlines()
            out[rank] = "\n".join(lines[-keep:])
    return out


_COLLATERAL = (
    "SignalException",
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker",
)


def _explain_failure(out: LaunchResult, path: Path, launcher_text: str, errors, results,
                     stderr) -> None:
    """Fill a failed run's failed_rank, traceback and error: the rank that failed first, why
    (its exit code's meaning) and its traceback, or torchrun's own log when no rank did."""
    ranked = _failures_from_torchrun(launcher_text)
    out.failed_rank, what, out.traceback = _root_cause(ranked, errors, results, stderr)
    if out.failed_rank is None:
        out.traceback = launcher_text[-3000:]
    code = dict(ranked).get(out.failed_rank)
    how = f" ({_exit_meaning(code)})" if code is not None else ""
    where = f"rank {out.failed_rank}" if out.failed_rank is not None else "torchrun"
    out.error = f"{path.name}: {where} failed{how}: {what}"


def _root_cause(
    ranked: list[tuple[int, int]], errors: list[dict], results: list, stderr: dict[int, str]
):
    """(rank, what, traceback) of the failure that brought the job down.

    When one rank fails, its peers fail too: their collectives report "Connection closed by
    peer", then torchrun terminates them (SignalException). So the earliest exception that is
    not such a consequence comes first; then a rank that died without any Python exception
    (os._exit, a crash in C); then torchrun's own root cause."""
    real = [e for e in errors if not any(c in e["error"] for c in _COLLATERAL)]
    if real:
        first = min(real, key=lambda e: e["time"])
        return first["rank"], first["error"], first["traceback"]
    codes = dict(ranked)
    recorded = {e["rank"] for e in errors}
    silent = [r for r, res in enumerate(results) if res is None and r not in recorded]
    if silent:
        rank = next((r for r in silent if codes.get(r, 0) > 0), silent[0])
        return (
            rank,
            "died without a Python exception; its last stderr lines follow",
            stderr.get(rank, ""),
        )
    if errors:
        first = min(errors, key=lambda e: e["time"])
        return first["rank"], first["error"], first["traceback"]
    if ranked:
        rank = ranked[0][0]
        return (
            rank,
            "no Python exception recorded; its last stderr lines follow",
            stderr.get(rank, ""),
        )
    return None, "no rank reported a failure", ""


def _exit_meaning(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def launch(
    script,
    nproc: int = 2,
    args=(),
    timeout: float = 120,
    env: Mapping | None = None,
    echo: Callable | None = print,
    *,
    check: bool = True,
    max_restarts: int = 0,
    preload: bool | None = None,
) -> LaunchResult:
    """Run `script` (a worker name or path) on `nproc` local processes under torchrun.

    Rank 0's stdout is echoed line by line as it comes; each rank's JSON results land in
    `LaunchResult.results`. A failure (or timeout) kills the whole job, echoes which rank
    failed with its traceback and, with `check=True`, raises WorkerFailed. `max_restarts` lets
    torchrun restart the whole group after a failure (elastic fault tolerance).

    `preload` (default: on Linux without a visible GPU) imports torch and the worker's modules
    once in torchrun's process and forks the workers from it (`--run-path --start-method fork`):
    the workers then start in under a second instead of each spending seconds importing the
    same libraries. With CUDA, workers start fresh (a forked process cannot initialise CUDA).
    To run several workers one after another without starting torchrun each time, see
    `worker_group`.
    """
    positive_int(nproc, "nproc"), positive(timeout, "timeout")
    nonnegative_int(max_restarts, "max_restarts"), maybe(function)(echo, "echo"), _args(args, "args")
    if env is not None and not isinstance(env, Mapping):
        raise LabkitError(f"env must be a dict of environment variables, got {type(env).__name__}")
    path = worker_script(script)
    echo = echo or (lambda *a, **k: None)
    work = Path(tempfile.mkdtemp(prefix="labkit-launch-"))
    result_dir, log_dir = work / "results", work / "logs"
    result_dir.mkdir()
    child_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        RESULT_DIR_ENV: str(result_dir),
    }
    child_env.update({k: str(v) for k, v in (env or {}).items()})
    if preload is None:
        preload = _can_preload(child_env, nproc)
    command = [
        *_torchrun(preload, _preloaded(path)),
        "--standalone",
        # one machine: the workers meet on loopback. Left unset, torchrun advertises this
        # host's name, which some containers and sandboxes cannot resolve (workers then hang)
        "--local-addr=127.0.0.1",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        f"--log-dir={log_dir}",
        "--redirects=2",
        "--local-ranks-filter=0",
        *(["--run-path", "--start-method=fork"] if preload else []),
        str(path),
        *script_args(args),
    ]

    lines: queue.Queue = queue.Queue()
    rank0, launcher, known = [], [], {}
    status = "ok"
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=child_env,
        start_new_session=True,
        preexec_fn=_parent_death_signal if sys.platform.startswith("linux") else None,
    )
    readers = [
        threading.Thread(target=_reader, args=(s, tag, lines), daemon=True)
        for s, tag in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for t in readers:
        t.start()
    try:
        open_streams, last_track, exited_at = 2, 0.0, None
        while open_streams:
            try:
                tag, line = lines.get(timeout=0.1)
                if line is None:
                    open_streams -= 1
                elif tag == "out":
                    rank0.append(line)
                    echo(line)
                else:
                    launcher.append(line)
            except queue.Empty:
                pass
            now = time.perf_counter()
            if now - last_track > 0.5:
                _track(proc, known)
                last_track = now
            if now - start > timeout:
                status = "timeout"
                _dump_stacks(proc, known)
                break
            # torchrun gone but an orphan still holds the pipe open: stop waiting for EOF
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 2.0:
                break
    except KeyboardInterrupt:
        _stop(proc, known)
        echo(f"interrupted: stopped torchrun and {len(known)} worker processes")
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if proc.poll() is None or any(p.is_running() for p in known.values()):
            _stop(proc, known)
    wall = time.perf_counter() - start
    returncode = proc.poll()
    while not lines.empty():  # whatever arrived while stopping
        tag, line = lines.get()
        if line is not None:
            (rank0 if tag == "out" else launcher).append(line)

    results: list[dict | None] = [None] * nproc
    for rank in range(nproc):
        f = result_dir / f"rank{rank}.json"
        if f.exists():
            results[rank] = json.loads(f.read_text())
    errors = [json.loads(f.read_text()) for f in result_dir.glob("rank*.error.json")]
    attempts = [x.get("attempt", 0) for x in results + errors if x]
    # with --max-restarts, only the failures of the last attempt count
    errors = [e for e in errors if e.get("attempt", 0) == max(attempts)]
    launcher_text = "\n".join(launcher)
    stderr = _rank_stderr(log_dir, nproc)
    shutil.rmtree(work, ignore_errors=True)

    out = LaunchResult(
        path.name,
        nproc,
        command,
        status,
        returncode,
        wall,
        results,
        rank0,
        launcher_text,
        stderr,
        pids=[proc.pid, *known],
        restarts=max(attempts, default=0),
    )
    if status == "timeout":
        missing = [r for r, res in enumerate(results) if res is None]
        out.error = (
            f"{path.name}: timed out after {timeout:g} s and was killed (torchrun and "
            f"every worker); rank(s) {', '.join(map(str, missing)) or 'none'} had not "
            "finished; where each was stuck follows"
        )
        if missing:
            out.failed_rank = missing[0]
            out.traceback = "\n".join(f"--- rank {r} ---\n{stderr.get(r, '')}" for r in missing)
    elif returncode != 0 or errors:
        out.status = "failed"
        _explain_failure(out, path, launcher_text, errors, results, stderr)
    if not out.ok:
        echo(out.report())
        if check:
            raise WorkerFailed(out)
    return out
