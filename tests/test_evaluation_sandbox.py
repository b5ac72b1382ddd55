"""The sandbox: honest programs pass, adversarial ones end as failed or timeout in time, leave
no process behind and change nothing outside their temporary directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.evaluation import (
    SandboxLimits,
    check_program,
    drops_privileges,
    evaluate_completions,
    pass_at_k_table,
    sandbox_processes,
)
from labkit.evaluation.sandbox import _LIMIT_RANGES

TIMEOUT = 1.0
DROPS = drops_privileges()
IS_ROOT = os.geteuid() == 0
# Attacks that bypass the in-process guard meet only the OS boundary: another user (root
# harness) or the harness's own user with RLIMIT_NPROC. Against files of the harness's own
# user, only the drop to `nobody` protects.
needs_os_boundary = pytest.mark.skipif(
    IS_ROOT and not DROPS, reason="root without a user to drop to: no OS boundary to test"
)
needs_other_user = pytest.mark.skipif(not DROPS, reason="the sandbox runs as the harness's user")

# Undo the guard's import block and reach libc directly, as a determined program would.
UNGUARD = (
    "import os, sys\n"
    "for name in ('ctypes', '_ctypes'):\n"
    "    sys.modules.pop(name, None)\n"
    "import ctypes\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
)


@pytest.fixture
def victim(tmp_path):
    """Files outside the sandbox that programs attack; returns (dir, snapshot function)."""
    target = tmp_path / "victim"
    (target / "sub").mkdir(parents=True)
    (target / "data.txt").write_text("precious")
    (target / "sub" / "more.txt").write_text("also precious")

    def snapshot():
        return sorted(
            (str(p.relative_to(tmp_path)), p.read_bytes() if p.is_file() else None)
            for p in tmp_path.rglob("*")
        )

    return target, snapshot


def run_checked(program: str, snapshot=None, limits: SandboxLimits | None = None):
    before = snapshot() if snapshot else None
    start = time.monotonic()
    result = check_program(program, timeout=TIMEOUT, limits=limits)
    elapsed = time.monotonic() - start
    assert elapsed <= TIMEOUT + 1.0, f"took {elapsed:.2f} s: {result}"
    assert not Path(result.workdir).exists(), "the temporary directory was not removed"
    assert sandbox_processes(result.session, result.marker) == [], "processes left behind"
    if snapshot:
        assert snapshot() == before, "something outside the sandbox changed"
    return result


# --- honest programs -------------------------------------------------------------------


def test_passing_program_passes():
    result = run_checked("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n")
    assert result.outcome == "passed" and result.passed
    assert result.stdout == "ok\n"


def test_failing_assertion_fails():
    result = run_checked("assert 1 + 1 == 3, 'arithmetic'\n")
    assert result.outcome == "failed"
    assert "AssertionError: arithmetic" in result.reason


def test_fresh_directory_isolated_interpreter_and_clean_environment(monkeypatch):
    monkeypatch.setenv("LABKIT_TEST_SECRET", "hunter2")
    program = (
        "import os, sys\n"
        "assert 'LABKIT_TEST_SECRET' not in os.environ\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
        "assert os.path.basename(os.getcwd()).startswith('labkit-sandbox-')\n"
        "assert sorted(os.listdir('.')) == ['program.py'], os.listdir('.')\n"
        "assert sys.flags.isolated == 1 and sys.flags.no_site == 1\n"
        "open('scratch.txt', 'w').write('writing inside the sandbox is fine')\n"
    )
    result = run_checked(program)
    assert result.outcome == "passed", result.reason


def test_invalid_python_is_an_error_with_the_reason():
    result = run_checked("def f(:\n    return 1\n")
    assert result.outcome == "error"
    assert "SyntaxError" in result.reason and "line 1" in result.reason


def test_bad_arguments_raise():
    with pytest.raises(LabkitError, match="timeout"):
        check_program("pass", timeout=0)
    with pytest.raises(LabkitError, match="string"):
        check_program(b"pass")
    with pytest.raises(LabkitError, match="SandboxLimits"):
        check_program("pass", limits={"memory_mb": 64})


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("memory_mb", -1, r"\[64, 65536\]"),  # would have removed the memory cap
        ("memory_mb", 0, r"\[64, 65536\]"),
        ("max_processes", 0, r"\[4, 4096\]"),  # would have failed every correct program
        ("max_open_files", 3, r"\[16, 65536\]"),
        ("file_size_mb", 0, r"\[1, 4096\]"),
        ("disk_mb", -5, r"\[1, 4096\]"),
        ("cpu_seconds", 0, r"\[1, 3600\]"),
        ("output_chars", -1, ">= 0"),
        ("memory_mb", 512.5, "integer"),
        ("max_processes", True, "integer"),
        ("run_as", "", "non-empty string"),
        ("python", 3, "non-empty string"),
        ("backend", "docker", "auto, unshare, bwrap, none"),
    ],
)
def test_sandbox_limits_refuse_bad_values(field, value, valid):
    with pytest.raises(LabkitError, match=rf"SandboxLimits\.{field}.*{valid}"):
        SandboxLimits(**{field: value})


def test_the_smallest_valid_limits_still_run_a_correct_program():
    # the lower ends of the valid ranges are what a correct program needs, not less
    limits = SandboxLimits(
        memory_mb=64, file_size_mb=1, disk_mb=1, max_processes=4, max_open_files=16, cpu_seconds=1
    )
    result = run_checked("def f(x):\n    return x + 1\n\nassert f(1) == 2\n", limits=limits)
    assert result.outcome == "passed", result


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(
        ["memory_mb", "file_size_mb", "disk_mb", "max_processes", "max_open_files"]
    ),
    value=st.integers(min_value=-(2**40), max_value=2**40),
)
def test_sandbox_limits_accept_exactly_their_range(field, value):
    low, high = {name: (lo, hi) for name, lo, hi in _LIMIT_RANGES}[field]
    if low <= value <= high:
        assert getattr(SandboxLimits(**{field: value}), field) == value
    else:
        with pytest.raises(LabkitError, match=f"SandboxLimits.{field}={value} is out of range"):
            SandboxLimits(**{field: value})


# --- adversarial programs --------------------------------------------------------------

ADVERSARIAL = {
    "infinite loop": "while True:\n    pass\n",
    "sleep forever": "import time\ntime.sleep(1000)\n",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "fork bomb via multiprocessing": (
        "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()\n"
    ),
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'sleep 100'])\n",
    "memory bomb, one block": "block = bytearray(64 * 1024 ** 3)\n",
    "memory bomb, growing": "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n",
    "recursion bomb": "def f(n):\n    return f(n + 1)\n\nf(0)\n",
    "recursion bomb, no limit": (
        "import sys\nsys.setrecursionlimit(10 ** 8)\n\ndef f(n):\n    return f(n + 1) + 1\n\nf(0)\n"
    ),
    "kill the parent": "import os\nos.kill(os.getppid(), 9)\n",
    "kill the process group": "import os\nos.killpg(0, 9)\n",
    "flood stdout": "while True:\n    print('x' * 10000)\n",
    "flood stdout, errors ignored": (
        "import sys\nwhile True:\n    try:\n        sys.stdout.write('x' * 100000)\n"
        "        sys.stdout.flush()\n    except OSError:\n        pass\n"
    ),
    "flood stderr": "import sys\nwhile True:\n    sys.stderr.write('e' * 100000)\n",
    "open a network socket": (
        "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=0.5)\n"
    ),
    "raw socket object": "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n",
    "sys.exit(0) before the tests": "import sys\nsys.exit(0)\nassert False\n",
    "raise SystemExit(0)": "raise SystemExit(0)\n",
    "exit() builtin": "exit()\n",
    "os._exit(0) before the tests": "import os\nos._exit(0)\nassert False\n",
    "atexit os._exit(0)": (
        "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False\n"
    ),
    "fake success on stdout": "print('passed')\nprint('all tests ran to the end')\nimport os\nos._exit(0)\n",
    "forge the success token": (
        "import os, sys\nos.write(int(sys.argv[1]), b'0' * 32)\nos._exit(0)\n"
    ),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_program_is_contained(name):
    result = run_checked(ADVERSARIAL[name])
    assert result.outcome in ("failed", "timeout"), result
    if name.startswith(("infinite", "sleep")):
        assert result.outcome == "timeout"
    if name.startswith("flood"):
        assert len(result.stdout) <= 5000 and len(result.stderr) <= 5000


@pytest.mark.parametrize("run_as", ["nobody", None], ids=["as-nobody", "as-harness-user"])
def test_writing_and_deleting_outside_is_blocked(victim, run_as):
    target, snapshot = victim
    limits = SandboxLimits(run_as=run_as)
    attacks = [
        f"open({str(target / 'data.txt')!r}, 'w').write('overwritten')\n",
        f"open({str(target / 'new.txt')!r}, 'x').write('planted')\n",
        f"import pathlib\npathlib.Path({str(target / 'data.txt')!r}).write_text('x')\n",
        f"import os\nos.remove({str(target / 'data.txt')!r})\n",
        f"import shutil\nshutil.rmtree({str(target)!r})\n",
        f"import os\nos.rename({str(target / 'data.txt')!r}, 'stolen.txt')\n",
    ]
    for program in attacks:
        result = run_checked(program, snapshot, limits)
        assert result.outcome == "failed", (program, result)
        assert "PermissionError" in result.reason


@needs_other_user
def test_writing_and_deleting_past_the_guard_meets_the_os(victim):
    target, snapshot = victim
    attacks = [
        f"import _io\n_io.open({str(target / 'data.txt')!r}, 'w').write('overwritten')\n",
        UNGUARD + f"assert libc.unlink({str(target / 'data.txt')!r}.encode()) == 0\n",
        UNGUARD + f"assert libc.rename({str(target / 'data.txt')!r}.encode(), b'x') == 0\n",
    ]
    for program in attacks:
        result = run_checked(program, snapshot)
        assert result.outcome == "failed", (program, result)


@pytest.mark.parametrize("run_as", ["nobody", None], ids=["as-nobody", "as-harness-user"])
def test_killing_the_parent_past_the_guard_spares_the_harness(run_as):
    result = run_checked(
        UNGUARD + "libc.kill(os.getppid(), 9)\nimport time\ntime.sleep(30)\n",
        limits=SandboxLimits(run_as=run_as),
    )
    if "pid-namespace" in result.layers or "other-user" in result.layers:
        # its parent is init of its namespace (immune to its own namespace's signals) or a
        # supervisor of another user: the kill does nothing and the sleep runs into the timeout
        assert result.outcome == "timeout", result
    else:
        assert result.outcome == "failed"
        assert "supervisor killed by SIGKILL" in result.reason


@needs_other_user
def test_killing_every_process_past_the_guard_spares_the_harness():
    program = UNGUARD + (
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit() and int(pid) > 1:\n"
        "        libc.kill(int(pid), 9)\n"
        "import time\ntime.sleep(30)\n"
    )
    result = run_checked(program)
    assert result.outcome == "failed"  # it killed its own supervisor, and nothing of ours


@needs_os_boundary
def test_fork_bomb_past_the_guard_is_capped_and_cleaned_up():
    result = run_checked(UNGUARD + "while True:\n    libc.fork()\n")
    assert result.outcome == "timeout"


@needs_os_boundary
def test_children_escaping_the_session_are_found_and_killed():
    program = UNGUARD + (
        "import time\n"
        "for _ in range(3):\n"
        "    if libc.fork() == 0:\n"
        "        libc.setsid()\n"
        "        time.sleep(1000)\n"
        "time.sleep(1000)\n"
    )
    result = run_checked(program)  # run_checked asserts none of them is left
    assert result.outcome == "timeout"


def test_harness_survives_a_run_of_attacks():
    # the test process is alive and this process group still answers
    os.kill(os.getpid(), 0)
    assert os.getpgid(0) == os.getpgrp()


# --- many completions ------------------------------------------------------------------

TASKS = [
    {
        "task_id": "world/0",
        "prompt": 'def double(x):\n    """Twice x."""\n',
        "entry_point": "double",
        "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-1) == -2\n",
    },
    {
        "task_id": "world/1",
        "prompt": "def first_word(s):\n",
        "entry_point": "first_word",
        "test": "def check(candidate):\n    assert candidate('salt and copper') == 'salt'\n",
    },
]


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_completions_and_pass_at_k(workers):
    completions = {
        "world/0": ["    return 2 * x\n", "    return x + 2\n", "    return x +* 2\n"],
        "world/1": [
            "    return s.split()[0]\n",
            "    import sys\n    sys.exit(0)\n",
            "    while True: pass\n",
        ],
    }
    results = evaluate_completions(TASKS, completions, timeout=TIMEOUT, workers=workers)
    assert results["outcome"].tolist() == [
        "passed",
        "failed",
        "error",
        "passed",
        "failed",
        "timeout",
    ]
    assert "SyntaxError" in results.loc[2, "reason"]
    table = pass_at_k_table(results, ks=(1, 2, 3))
    assert table.loc[0, "pass@k"] == pytest.approx(1 / 3)
    assert table.loc[1, "pass@k"] == pytest.approx(1 - 1 / 3)  # 1 - C(2,2)/C(3,2)
    assert table.loc[2, "pass@k"] == 1.0


def test_evaluate_completions_bad_input():
    with pytest.raises(LabkitError, match="unknown task ids"):
        evaluate_completions(TASKS, {"world/9": ["pass"]})
    with pytest.raises(LabkitError, match="lacks"):
        evaluate_completions([{"task_id": "x"}], {"x": ["pass"]})
    with pytest.raises(LabkitError, match="no code tasks"):
        evaluate_completions([], {})
    with pytest.raises(LabkitError, match="not a string"):
        evaluate_completions(TASKS, {"world/0": [None]})


def test_an_interpreter_under_tmp_still_runs_programs(tmp_path):
    """The sandbox puts a private tmpfs over /tmp: a project cloned there (its venv under
    /tmp, as a CI checkout may be) must still find its interpreter inside, in every mode."""
    import shutil
    import subprocess
    import sys
    import sysconfig

    if not str(tmp_path).startswith("/tmp/"):
        pytest.skip(f"pytest's tmp_path is not under /tmp here ({tmp_path})")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    script = tmp_path / "run.py"
    script.write_text(
        "from labkit.evaluation import SandboxLimits, check_program\n"
        "import shutil\n"
        "for backend in ['unshare'] + (['bwrap'] if shutil.which('bwrap') else []):\n"
        "    for run_as in ('nobody', None):\n"
        "        r = check_program('print(6 * 7)\\n', limits=SandboxLimits(backend=backend, run_as=run_as))\n"
        "        print(backend, run_as, r.outcome, r.reason, r.stdout.strip())\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), sysconfig.get_paths()["purelib"]]))
    done = subprocess.run([str(venv / "bin" / "python"), str(script)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == (4 if shutil.which("bwrap") else 2), done.stdout
    for line in lines:
        assert line.split()[2] == "passed" and line.endswith(" 42"), line
