"""Programs that bypass the in-process guard (ctypes, `_io`, re-imported modules) against the
sandbox's OS layers, in root mode (the program runs as nobody) and in same-user mode
(run_as=None), each with namespaces built by unshare(2) from Python, by bubblewrap (where it
is installed), and with namespaces turned off (the layers a machine without them has).

Where the layer that contains an attack is active, the test asserts containment. Where it is
not, the test asserts that `sandbox_report()` says so and that the attack really gets through
(the report is honest both ways), then skips with the missing layer named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkit import LabkitError
from labkit.evaluation import (
    SandboxLimits,
    SandboxReport,
    check_program,
    drops_privileges,
    evaluate_completions,
    sandbox_processes,
    sandbox_report,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the OS layers under test are Linux's"
)

# The programs end in a fraction of a second; the timeout only has to survive a busy machine
# (a run waits for it only when the program does not end, which none here should).
TIMEOUT = 10.0

# Undo the guard's import block and reach libc directly, as a determined program would.
UNGUARD = (
    "import os, sys\n"
    "for name in ('ctypes', '_ctypes'):\n"
    "    sys.modules.pop(name, None)\n"
    "import ctypes\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
)


@dataclass
class Mode:
    name: str
    limits: SandboxLimits
    report: SandboxReport

    def has(self, *layers: str) -> bool:
        return all(layer in self.report.layers for layer in layers)


_REPORTS: dict[str, Mode] = {}


@pytest.fixture(
    params=[
        ("root", "nobody", "unshare"),
        ("root-bwrap", "nobody", "bwrap"),
        ("root-no-namespaces", "nobody", "none"),
        ("same-user", None, "unshare"),
        ("same-user-bwrap", None, "bwrap"),
        ("same-user-no-namespaces", None, "none"),
    ],
    ids=lambda p: p[0],
)
def mode(request) -> Mode:
    name, run_as, backend = request.param
    if backend == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    limits = SandboxLimits(run_as=run_as, backend=backend)
    if run_as is not None and not drops_privileges(limits):
        pytest.skip("root mode needs a root harness and a `nobody` who can run python3")
    if name not in _REPORTS:
        _REPORTS[name] = Mode(name, limits, sandbox_report(limits))
    return _REPORTS[name]


def run(program: str, mode: Mode, timeout: float = TIMEOUT, **changes):
    limits = dataclasses.replace(mode.limits, **changes)
    result = check_program(program, timeout=timeout, limits=limits)
    # every run reports the layers it got; they are the probe's (the machine does not change)
    assert set(result.layers) == set(mode.report.layers), (result.layers, mode.report.layers)
    return result


def not_contained(mode: Mode, threat: str, missing: str):
    """The attack got through: the report must have said so. Then skip, naming the layer."""
    assert mode.report.status(threat) != "contained", mode.report
    pytest.skip(f"{threat}: not contained in {mode.name} mode here (no {missing}); reported")


def processes_with(tag: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if tag.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def tag():
    return "labkit-escape-" + secrets.token_hex(6)


@pytest.fixture
def open_dir():
    """A world-writable directory in /tmp the harness can watch (a sandbox user can write it)."""
    path = tempfile.mkdtemp(prefix="labkit-escape-")
    os.chmod(path, 0o777)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stand_in(tag):
    """A process of the harness's user standing in for the notebook server (or the harness),
    with a secret in its environment."""
    secret = f"hf_{tag}"
    proc = subprocess.Popen(["sleep", "60"], env={"HF_TOKEN": secret, "PATH": os.defpath})
    yield proc, secret
    proc.kill()
    proc.wait()


# --- 1. a process that outlives the run ----------------------------------------------------


def escape_program(tag: str, path: Path, before: str = "", after: str = "time.sleep(0.2)\n"):
    """ctypes fork; the child calls setsid and execs a shell with an empty environment that
    appends to a file every 50 ms (and carries `tag` in its command line)."""
    script = f"while :; do echo escaped >> {path}; sleep 0.05; done # {tag}"
    return UNGUARD + (
        "import time\n"
        f"{before}"
        f"argv = (ctypes.c_char_p * 4)(b'/bin/sh', b'-c', {script.encode()!r}, None)\n"
        "envp = (ctypes.c_char_p * 1)(None)\n"
        "if libc.fork() == 0:\n"
        "    libc.setsid()\n"
        "    libc.execve(b'/bin/sh', argv, envp)\n"
        "    libc._exit(127)\n"
        "time.sleep(0.2)\n"
        f"{after}"
    )


VARIANTS = {
    "program ends": ("", ""),
    "program times out": ("", "time.sleep(60)\n"),  # run with a 1.5 s timeout
    "kills its supervisor first": ("libc.kill(os.getppid(), 9)\n", ""),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_escaped_process_dies_with_the_run(mode, tag, open_dir, variant):
    before, after = VARIANTS[variant]
    trace = open_dir / "trace"
    try:
        timeout = 1.5 if "times out" in variant else TIMEOUT
        result = run(escape_program(tag, trace, before, after), mode, timeout)
        left = processes_with(tag)
        size = trace.stat().st_size if trace.exists() else 0
        time.sleep(0.15)  # three rounds of its loop
        grown = (trace.stat().st_size if trace.exists() else 0) > size
    finally:
        kill_all(processes_with(tag))
    assert result.outcome == ("timeout" if "times out" in variant else result.outcome)
    if variant == "kills its supervisor first":
        holds = mode.has("pid-namespace") or mode.has("other-user")
    else:
        holds = mode.has("pid-namespace") or mode.has("subreaper")
    if holds:
        assert left == [] and not grown, (variant, result)
        assert sandbox_processes(result.session, result.marker) == []
    else:
        assert left and mode.report.status("outlive") != "contained"
        not_contained(mode, "outlive", "pid-namespace, and the supervisor is killable")


# --- 2. writes outside the working directory --------------------------------------------------


def test_io_open_outside_lands_nowhere(mode, tag):
    beside_tests = Path(__file__).resolve().parent / f".{tag}"  # not a temporary place
    targets = [Path(d, tag) for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
    targets.append(beside_tests)
    program = "import _io\n" + "".join(
        f"try:\n    _io.open({str(t)!r}, 'w').write('x')\n    print('wrote', {str(t)!r})\n"
        f"except OSError as exc:\n    print('refused', {str(t)!r}, exc.strerror)\n"
        for t in targets
    )
    try:
        result = run(program, mode)
        written = [t for t in targets if t.exists()]
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
    assert result.outcome == "passed", result
    if mode.has("read-only-fs", "private-tmp"):
        assert written == [], result.stdout
        assert f"refused {beside_tests}" in result.stdout  # read-only (or not its directory)
    else:
        assert written, result.stdout  # the report says it gets through: it does
        not_contained(mode, "write-outside", "mount namespace (read-only-fs + private-tmp)")


# --- 3. network --------------------------------------------------------------------------------


def test_reimported_socket_reaches_no_listener(mode):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    program = (
        "import sys\n"
        "for name in ('socket', '_socket'):\n"
        "    sys.modules.pop(name, None)\n"
        "import socket\n"
        f"with socket.create_connection(('127.0.0.1', {port}), timeout=1) as s:\n"
        "    s.sendall(b'hello')\n"
        "print('connected')\n"
    )
    try:
        result = run(program, mode)
        listener.settimeout(0.2)
        try:
            listener.accept()[0].close()
            reached = True
        except TimeoutError:
            reached = False
    finally:
        listener.close()
    if mode.has("net-namespace"):
        assert result.outcome == "failed" and "connected" not in result.stdout, result
        assert not reached
        assert "Network is unreachable" in result.reason or "refused" in result.reason
    else:
        assert reached and "connected" in result.stdout, result
        not_contained(mode, "network", "net-namespace")


# --- 4. filling the disk -----------------------------------------------------------------------


FILL = """
import _io, os
def writable(place):  # bubblewrap leaves /var/tmp and /dev/shm read-only
    try:
        _io.open(os.path.join(place, "probe"), "wb").close()
        return True
    except OSError:
        return False

places = [p for p in (os.getcwd(), "/tmp", "/var/tmp", "/dev/shm") if writable(p)]
names = []
try:
    for i in range(64):  # 256 MiB in files of 4 MiB, the per-file limit
        name = os.path.join(places[i % len(places)], f"fill-{i}")
        names.append(name)
        with _io.open(name, "wb") as handle:
            handle.write(b"x" * (4 << 20))
finally:
    print("written", sum(os.path.getsize(n) for n in names if os.path.exists(n)))
"""


def test_many_files_meet_the_total_cap(mode):
    if not mode.has("private-tmp"):
        # not run: without the tmpfs it would write 256 MiB to this machine's disk
        not_contained(mode, "disk-fill", "private-tmp")
    disk_mb = 16
    result = run(FILL, mode, disk_mb=disk_mb)
    assert result.outcome == "failed" and "No space left on device" in result.reason, result
    written = int(result.stdout.split()[-1])
    assert 0 < written <= disk_mb << 20


# --- 5. reading secrets --------------------------------------------------------------------------


def environ_reader(pid: int) -> str:
    return (
        "import hashlib\n"
        "try:\n"
        f"    data = open('/proc/{pid}/environ', 'rb').read()\n"
        "    print('read', hashlib.sha256(data).hexdigest(), data.decode(errors='replace'))\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )


def test_harness_environment_is_closed(mode):
    own = hashlib.sha256(Path("/proc/self/environ").read_bytes()).hexdigest()
    result = run(environ_reader(os.getpid()), mode)
    assert result.outcome == "passed", result
    assert mode.report.status("harness-environ") == "contained"  # in every mode on Linux
    assert own not in result.stdout and result.stdout.startswith(("refused", "read")), result


def test_other_processes_of_the_user_are_closed(mode, stand_in):
    proc, secret = stand_in
    result = run(environ_reader(proc.pid), mode)
    assert result.outcome == "passed", result
    if mode.has("private-proc") or mode.has("other-user"):
        assert secret not in result.stdout, result
    elif mode.has("no-capabilities"):
        # a root program without capabilities; the stand-in is root's and holds them
        assert secret not in result.stdout, result
        assert mode.report.status("user-processes") == "partly"
    else:
        assert secret in result.stdout
        not_contained(mode, "user-processes", "private-proc (and no other user)")


@pytest.fixture
def fake_home(monkeypatch):
    """A home directory outside the temporary places (so hiding it is what is tested) with a
    Hugging Face token file in it, as HOME of the harness."""
    try:
        base = Path(tempfile.mkdtemp(prefix=".labkit-test-home-", dir=Path.home()))
    except OSError:
        base = Path(tempfile.mkdtemp(prefix="labkit-test-home-"))
    token = base / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    secret = "hf_" + secrets.token_hex(8)
    token.write_text(secret)
    token.chmod(0o600)  # as huggingface_hub leaves it on a careful machine
    monkeypatch.setenv("HOME", str(base))
    yield token, secret
    shutil.rmtree(base, ignore_errors=True)


def test_home_secrets_are_hidden(mode, fake_home):
    token, secret = fake_home
    program = (
        f"try:\n    print('read', open({str(token)!r}).read())\n"
        "except OSError as exc:\n    print('refused', type(exc).__name__)\n"
    )
    result = run(program, mode)
    assert result.outcome == "passed", result
    if mode.has("home-hidden") or mode.has("other-user"):
        assert secret not in result.stdout and "refused" in result.stdout, result
    else:
        assert secret in result.stdout
        not_contained(mode, "home-secrets", "home-hidden (a mount namespace)")


# --- 6. killing the harness, the supervisor, the user's processes --------------------------------


def test_ctypes_kill_reaches_nothing_outside(mode, stand_in):
    proc, _ = stand_in
    everything = mode.has("pid-namespace")  # kill(-1) only where it cannot reach this test
    program = UNGUARD + (
        f"print('harness', libc.kill({os.getpid()}, 0) == 0)\n"  # signal 0: only asks
        f"print('stand-in', libc.kill({proc.pid}, 9) == 0)\n"
        "sys.stdout.flush()\n"  # under bubblewrap the supervisor's death ends the namespace
        "libc.kill(os.getppid(), 9)\n"
        + ("libc.kill(-1, 9)\n" if everything else "")
        + "import time\ntime.sleep(0.2)\n"
    )
    result = run(program, mode)
    time.sleep(0.05)
    alive = proc.poll() is None
    if mode.has("pid-namespace") or mode.has("other-user"):
        assert "harness False" in result.stdout and "stand-in False" in result.stdout, result
        assert alive
        assert "supervisor killed" not in result.reason
        assert mode.report.status("kill") == "contained"
    else:
        assert "harness True" in result.stdout and not alive, result
        assert "supervisor killed by SIGKILL" in result.reason
        not_contained(mode, "kill", "pid-namespace (and no other user)")


# --- correct programs still pass, and the report -------------------------------------------------


def test_correct_programs_pass(mode):
    task = {
        "task_id": "t/0",
        "prompt": "def add_one(x):\n",
        "entry_point": "add_one",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
    }
    completions = {"t/0": ["    return x + 1\n", "    return x - 1\n"]}
    results = evaluate_completions([task], completions, timeout=TIMEOUT, limits=mode.limits)
    assert results["passed"].tolist() == [True, False], results["reason"].tolist()


def test_report_names_mode_layers_and_threats(mode):
    report = mode.report
    text = str(report)
    assert report.mode in text and "active layers" in text
    assert ("nobody" in report.mode) == (mode.limits.run_as is not None)
    rows = report.threats()
    assert {row["key"] for row in rows} >= {"outlive", "network", "disk-fill", "kill"}
    for row in rows:
        assert row["status"] in ("contained", "partly", "NOT contained")
    if mode.limits.backend == "none":
        assert "pid-namespace" in report.missing and "network" in text
        assert report.status("network") == "NOT contained"
    with pytest.raises(LabkitError, match="unknown threat"):
        report.status("telepathy")


def test_auto_takes_a_backend_that_builds_the_namespaces():
    from labkit.evaluation.sandbox import _NAMESPACE_LAYERS, _backend

    chosen = _backend(SandboxLimits(run_as=None))
    assert chosen in ("unshare", "bwrap")
    complete = {}
    for backend in ("unshare", "bwrap"):
        if backend == "bwrap" and shutil.which("bwrap") is None:
            continue
        report = sandbox_report(SandboxLimits(run_as=None, backend=backend))
        complete[backend] = set(_NAMESPACE_LAYERS) <= set(report.layers)
    if complete["unshare"]:
        assert chosen == "unshare"  # the pure-Python path first
    elif complete.get("bwrap"):
        assert chosen == "bwrap"
    else:
        assert chosen == "unshare"  # neither builds them: the portable layers, reported
    assert f"namespaces by {'unshare(2)' if chosen == 'unshare' else 'bubblewrap'}" in str(
        sandbox_report(SandboxLimits(run_as=None))
    )


def test_bwrap_backend_needs_bwrap(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(LabkitError, match="bwrap is not installed"):
        check_program("pass", limits=SandboxLimits(backend="bwrap"))
