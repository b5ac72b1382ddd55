"""Run untrusted Python (a model's completion plus its unit tests) and say whether it passed.

The boundary is the operating system, in layers:

1. A separate process tree in a session of its own, killed as a whole (every member of the
   session, not only the process group) when the wall-clock timeout expires and again when it
   ends, so nothing it started outlives it.
2. Resource limits on every process in it: CPU seconds, address space, file size (which also
   caps the captured output: stdout and stderr are files, and a flood of print meets
   "OSError: File too large"), open files, processes, no core dumps.
3. When the harness runs as root, the program runs as `nobody`: it cannot write or delete the
   harness's files, cannot signal the harness, and RLIMIT_NPROC (which root ignores) caps a
   fork bomb. The interpreter must then be one `nobody` can execute (a venv under /root is
   not), so a system python3 is used for the child when needed.
4. The program's parent is a small supervisor, not the harness: `os.kill(os.getppid(), 9)`
   kills the supervisor, the harness sees it and lives on.
5. A fresh temporary working directory (removed afterwards), a minimal environment with no
   inherited secrets, `python -I -S` (no site-packages, no PYTHON* variables, no cwd on
   sys.path).

On top, a guard (like human-eval's `reliability_guard`) disables fork/exec/kill, file deletion,
writes outside the working directory and sockets before the program runs. The guard is NOT a
security boundary: Python code can undo it (re-import a module, use ctypes). It turns the
common accidents into clear failures; layers 1-5 hold when it is bypassed.

Success must be proven: after the program (tests included) has run to its end, the wrapper
writes a per-run random token to a file descriptor the harness reads. sys.exit(0), os._exit(0)
or printing something cannot produce it. (Code that digs the token out of the wrapper's frames
could; a pass means "the tests ran to the end", which is the claim pass@k needs.)

The timeout counts from the start of the process, so it includes two interpreter start-ups
(about 0.1-0.3 s). Linux is the target (Colab, Binder, most servers); on macOS RLIMIT_AS is not
enforced and there is no /proc to find stray processes by.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import LabkitError

OUTCOMES = ("passed", "failed", "timeout", "error")
_SYNTAX_EXIT = 97  # the wrapper's exit code when the program does not compile

# The supervisor: sets the limits, forks and execs the program's interpreter, passes the token
# on through a pipe, and exits with the child's status (128 + signal when it was killed). It
# imports nothing but os, resource and sys: it is started for every program.
_SUPERVISOR = r"""
import os, resource, sys
fd, wrapper = int(sys.argv[1]), sys.argv[2]
for spec in sys.argv[3:]:
    name, soft, hard = spec.split(":")
    res, soft, hard = getattr(resource, name), int(soft), int(hard)
    ceiling = resource.getrlimit(res)[1]
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(res, (soft, hard))
token = b""
while not token.endswith(b"\n"):
    chunk = os.read(0, 64)
    if not chunk:
        break
    token += chunk
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(read_end, 0)
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", wrapper, str(fd)])
    finally:
        os._exit(127)
os.close(read_end)
os.write(write_end, token)
os.close(write_end)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
os._exit(code if code >= 0 else 128 - code)
"""

# The wrapper: reads the token, compiles the program, installs the guard, runs the program,
# and only if it returns writes the token and leaves at once (no atexit, no thread joins).
_WRAPPER = r"""
import builtins, io, os, sys

def _guard(workdir):
    import _posixsubprocess, posix, shutil, socket, subprocess

    def blocked(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the labkit sandbox")
        return refuse

    for module in (os, posix):
        for name in (
            "kill", "killpg", "fork", "forkpty", "system", "popen", "setsid", "setpgid",
            "setpgrp", "setuid", "setgid", "setreuid", "setregid",
            "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
            "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot",
            "link", "symlink", "mkfifo", "mknod", "chdir", "fchdir",
            "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
            "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
            "spawnvpe", "posix_spawn", "posix_spawnp",
        ):
            if hasattr(module, name):
                setattr(module, name, blocked(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, blocked(f"shutil.{name}"))
    subprocess.Popen = blocked("subprocess.Popen")
    _posixsubprocess.fork_exec = blocked("fork_exec")

    def no_network(*args, **kwargs):
        raise OSError("network access is disabled in the labkit sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            no_network()

    socket.socket = socket.SocketType = NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, no_network)
    for name in ("ctypes", "_ctypes", "multiprocessing", "resource", "_socket", "_posixsubprocess"):
        sys.modules[name] = None

    real_open, real_os_open = io.open, os.open
    root = os.path.realpath(workdir) + os.sep

    def inside(path):
        return os.path.realpath(os.fspath(path)).startswith(root)

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"writing outside the sandbox directory: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        if flags & writes and not inside(path):
            raise PermissionError(f"writing outside the sandbox directory: {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open


def _main():
    fd, write, leave = int(sys.argv[1]), os.write, os._exit
    token = sys.stdin.readline().strip().encode()
    sys.stdin = io.StringIO("")
    with open("program.py", encoding="utf-8") as handle:
        source = handle.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as exc:
        sys.stderr.write(f"labkit-sandbox-compile: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        leave(97)
    _guard(os.getcwd())
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
    sys.stdout.flush()
    sys.stderr.flush()
    write(fd, token)
    leave(0)

_main()
"""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int | None = None  # default: the timeout rounded up, plus one
    memory_mb: int = 512  # address space per process
    file_size_mb: int = 4  # largest file the program may write; stdout/stderr are files too
    max_processes: int = 32  # processes of the sandbox user (RLIMIT_NPROC); root ignores it
    max_open_files: int = 64
    output_chars: int = 4000  # how much of stdout and stderr comes back
    run_as: str | None = "nobody"  # user to drop to when the harness is root; None keeps root
    python: str | None = None  # interpreter; default: sys.executable, or python3 for `nobody`


@dataclass
class SandboxResult:
    outcome: str  # passed | failed | timeout | error
    reason: str
    wall_s: float
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    session: int | None = None  # session id of the process tree (its supervisor's pid)
    marker: str = ""  # environment entry every process of the run inherits
    isolation: str = ""  # which user and interpreter ran it
    workdir: str = field(default="", repr=False)  # removed by the time you read this

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def _world_executable(path: str) -> bool:
    """Can any user run this file (every directory above searchable, the file executable)?"""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


@lru_cache(maxsize=8)
def _isolation(run_as: str | None, python: str | None) -> tuple[tuple[int, int] | None, str]:
    """(uid, gid) to drop to or None, and the interpreter to run."""
    interpreter = python or sys.executable
    if run_as is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, interpreter
    import pwd

    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        warnings.warn(f"sandbox user {run_as!r} does not exist; running as root", stacklevel=3)
        return None, interpreter
    if python is None and not _world_executable(interpreter):
        found = [p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if _world_executable(p)]
        if not found:
            warnings.warn(
                f"{sys.executable} is not executable by {run_as!r} and no system python3 is; "
                "the sandbox runs as root",
                stacklevel=3,
            )
            return None, interpreter
        interpreter = found[0]
    return (entry.pw_uid, entry.pw_gid), interpreter


def drops_privileges(limits: SandboxLimits | None = None) -> bool:
    """Whether programs run as another user (`limits.run_as`): only when the harness is root."""
    limits = limits or SandboxLimits()
    return _isolation(limits.run_as, limits.python)[0] is not None


def _processes_of(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    count += int(line.split()[1]) == uid
                    break
        except OSError:
            continue
    return count


def sandbox_processes(session: int, marker: str = "") -> list[int]:
    """Live (non-zombie) processes of one sandbox run, from /proc (empty where there is none):
    members of its session, and any process whose environment carries the run's marker (a
    child that escaped the session with setsid still inherited the environment)."""
    found = []
    needle = marker.encode()
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):  # after the command name: state, ppid, pgrp, session
                continue
            if int(fields[3]) == session:
                found.append(int(proc_dir.name))
            elif needle and needle in (proc_dir / "environ").read_bytes():
                found.append(int(proc_dir.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_run(session: int, marker: str, settle_s: float = 1.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    while True:
        members = sandbox_processes(session, marker)
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _wait_for_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for the supervisor to exit without reaping it, so that its pid (the id of the session
    and the group) cannot be reused by an unrelated process before the session is killed."""
    if not hasattr(os, "waitid"):  # macOS: a reaping wait; the pid-reuse window is tiny
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    pause = 0.001
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)
    return True


def _remove_tree(path: str) -> None:
    def retry(function, target, _exc):
        # the program may have made files or directories read-only
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            function(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _read_capped(path: str, limit: int) -> str:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[... output cut ...]" if len(data) > limit else "")


def _read_tail(path: str, size: int = 2000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - size))
        return handle.read(size).decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _classify(rc, timed_out, proven, stderr_tail, full, timeout, limits, cpu):
    """(outcome, reason) from the exit status, the token and the tail of stderr.
    `full` names the captured streams that reached the file-size limit."""
    if timed_out:
        return "timeout", f"wall-clock timeout after {timeout:g} s: process group killed"
    if proven and rc == 0:
        return "passed", "all tests ran to the end"
    compile_error = [
        line for line in stderr_tail.splitlines() if line.startswith("labkit-sandbox-compile:")
    ]
    if rc == _SYNTAX_EXIT and compile_error:
        return "error", "not valid Python: " + compile_error[-1].split(":", 1)[1].strip()
    if full:
        return "failed", f"{' and '.join(full)} reached the {limits.file_size_mb} MiB output limit"
    if rc is not None and rc < 0:
        # the supervisor itself died: the program signalled its parent or its group
        return (
            "failed",
            f"sandbox supervisor killed by {_signal_name(-rc)} (the program signalled it)",
        )
    if rc is not None and rc > 128 and rc - 128 < 65:
        sig = rc - 128
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU time limit of {cpu} s exceeded (SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return (
                "failed",
                f"output or a file exceeded the {limits.file_size_mb} MiB limit (SIGXFSZ)",
            )
        if sig == signal.SIGSEGV:
            return "failed", "crashed with SIGSEGV (a stack overflow from deep recursion?)"
        return "failed", f"killed by {_signal_name(sig)}"
    if rc == 0:
        return "failed", "exited with code 0 before its tests finished (no success token)"
    detail = _last_line(stderr_tail)
    return "failed", detail or f"exited with code {rc}"


def check_program(
    program: str, timeout: float = 3.0, limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run `program` (source code; its tests included) in the sandbox and classify the outcome."""
    if os.name != "posix":
        raise LabkitError("the sandbox needs a POSIX system (Linux or macOS); this is " + os.name)
    if not isinstance(program, str):
        raise LabkitError(
            f"program must be a string of Python source, not {type(program).__name__}"
        )
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= 600):
        raise LabkitError(f"timeout={timeout!r}: valid is a number of seconds in (0, 600]")
    limits = limits or SandboxLimits()
    identity, interpreter = _isolation(limits.run_as, limits.python)
    cpu = limits.cpu_seconds or math.ceil(timeout) + 1
    if identity is not None:
        nproc = _processes_of(identity[0]) + limits.max_processes
    elif hasattr(os, "getuid") and os.getuid() != 0:
        nproc = _processes_of(os.getuid()) + limits.max_processes
    else:
        nproc = limits.max_processes
    mib = 1024 * 1024
    rlimits = {
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_AS": (limits.memory_mb * mib,) * 2,
        "RLIMIT_FSIZE": (limits.file_size_mb * mib,) * 2,
        "RLIMIT_NOFILE": (limits.max_open_files,) * 2,
        "RLIMIT_NPROC": (nproc, nproc),
        "RLIMIT_CORE": (0, 0),
    }
    if not Path("/proc").is_dir():
        del rlimits["RLIMIT_NPROC"]  # cannot count the user's processes: a limit could block all
    token = secrets.token_hex(16)
    run_id = secrets.token_hex(8)
    marker = f"LABKIT_SANDBOX_RUN={run_id}"
    who = f"uid {identity[0]} ({limits.run_as})" if identity else f"uid {os.getuid()}"
    isolation = f"{who}, {interpreter}"

    workdir = tempfile.mkdtemp(prefix="labkit-sandbox-")
    io_dir = tempfile.mkdtemp(prefix="labkit-sandbox-io-")  # the harness's side: never shared
    try:
        Path(workdir, "program.py").write_text(program, encoding="utf-8")
        if identity is not None:
            os.chown(workdir, *identity)
            os.chown(Path(workdir, "program.py"), *identity)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": workdir,
            "TMPDIR": workdir,
            # inert under -I, kept for any interpreter the program manages to start without it
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LABKIT_SANDBOX_RUN": run_id,  # finds the run's processes even outside its session
        }
        out_path, err_path, token_path = (os.path.join(io_dir, n) for n in ("out", "err", "token"))
        with (
            open(out_path, "wb") as out,
            open(err_path, "wb") as err,
            open(token_path, "wb") as tok,
        ):
            specs = [f"{name}:{soft}:{hard}" for name, (soft, hard) in rlimits.items()]
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    [
                        interpreter,
                        "-I",
                        "-S",
                        "-c",
                        _SUPERVISOR,
                        str(tok.fileno()),
                        _WRAPPER,
                        *specs,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                    pass_fds=(tok.fileno(),),
                    **(
                        {"user": identity[0], "group": identity[1], "extra_groups": []}
                        if identity
                        else {}
                    ),
                )
            except OSError as exc:
                return SandboxResult(
                    "error", f"could not start the sandbox: {exc}", 0.0, None, isolation=isolation
                )
            with contextlib.suppress(OSError):
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            timed_out = not _wait_for_exit(proc, timeout)
            _kill_run(proc.pid, marker)
            proc.wait()
            wall = time.monotonic() - start
        stdout = _read_capped(out_path, limits.output_chars)
        stderr = _read_capped(err_path, limits.output_chars)
        full = [
            name
            for name, path in (("stdout", out_path), ("stderr", err_path))
            if os.path.getsize(path) >= limits.file_size_mb * mib
        ]
        with open(token_path, "rb") as handle:
            proven = handle.read(256) == token.encode()
        outcome, reason = _classify(
            proc.returncode, timed_out, proven, _read_tail(err_path), full, timeout, limits, cpu
        )
        return SandboxResult(
            outcome,
            reason,
            round(wall, 3),
            proc.returncode,
            stdout,
            stderr,
            session=proc.pid,
            marker=marker,
            isolation=isolation,
            workdir=workdir,
        )
    finally:
        _remove_tree(workdir)
        _remove_tree(io_dir)


def humaneval_program(task: Mapping, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then check(entry_point)."""
    return (
        task["prompt"]
        + completion
        + "\n\n"
        + task["test"]
        + "\n\n"
        + f"check({task['entry_point']})\n"
    )


def validate_code_tasks(tasks: Sequence[Mapping]) -> list[dict]:
    if not tasks:
        raise LabkitError(
            "no code tasks: expected at least one {task_id, prompt, entry_point, test}"
        )
    checked = []
    for index, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise LabkitError(f"code task {index} is a {type(task).__name__}, not a dict")
        missing = [
            k
            for k in ("task_id", "prompt", "entry_point", "test")
            if not isinstance(task.get(k), str)
        ]
        if missing:
            raise LabkitError(
                f"code task {task.get('task_id', index)!r} lacks string field(s) {missing}"
            )
        checked.append(dict(task))
    return checked


def load_code_tasks(path) -> list[dict]:
    from .multiple_choice import read_jsonl

    return validate_code_tasks(read_jsonl(path, "code task"))


def evaluate_completions(
    tasks: Sequence[Mapping],
    completions: Mapping[str, Sequence[str]],
    timeout: float = 3.0,
    limits: SandboxLimits | None = None,
    workers: int = 1,
):
    """Run every completion of every task against its tests; one row per sample.

    completions: {task_id: [completion, ...]} (n samples per task, for pass@k).
    """
    import pandas as pd

    by_id = {t["task_id"]: t for t in validate_code_tasks(tasks)}
    if not isinstance(completions, Mapping):
        raise LabkitError("completions must be a dict {task_id: [completion, ...]}")
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise LabkitError(
            f"completions for unknown task ids {unknown[:5]}; known: {sorted(by_id)[:5]} ..."
        )
    jobs = []
    for task_id, samples in completions.items():
        if isinstance(samples, str):
            samples = [samples]
        for index, completion in enumerate(samples):
            if not isinstance(completion, str):
                raise LabkitError(
                    f"completion {index} of {task_id!r} is a {type(completion).__name__}, not str"
                )
            jobs.append((task_id, index, humaneval_program(by_id[task_id], completion)))
    if not jobs:
        raise LabkitError("completions is empty: give at least one completion")

    def run(job):
        task_id, index, program = job
        result = check_program(program, timeout=timeout, limits=limits)
        return {
            "task_id": task_id,
            "sample": index,
            "outcome": result.outcome,
            "passed": result.passed,
            "reason": result.reason,
            "wall_s": result.wall_s,
        }

    if workers <= 1:
        rows = [run(job) for job in jobs]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(run, jobs))
    return pd.DataFrame(rows)
