"""launch(): results collected, a crashing rank named with its traceback, a hung job killed with
no process left behind, an interrupted job cleaned up; torchrun_command for real clusters."""

from __future__ import annotations

import textwrap
import time

import psutil
import pytest

from labkit import LabkitError
from labkit.parallel import WorkerFailed, launch, torchrun_command, worker_script
from labkit.parallel.launch import script_args

CRASH = """
import torch.distributed as dist
from labkit.parallel.workers.common import log, run, save_result, setup

def main():
    ctx = setup()
    log("ranks up")
    dist.barrier()
    if ctx.rank == 1:
        raise ValueError("boom from rank 1")
    dist.barrier()  # rank 0 waits here for a rank that is gone
    save_result({"never": True})

run(main)
"""

HANG = """
import time
import torch.distributed as dist
from labkit.parallel.workers.common import log, run, save_result, setup

def stuck_forever():
    while True:
        time.sleep(0.05)

def main():
    ctx = setup()
    dist.barrier()
    log("both ranks up")
    if ctx.rank == 1:
        stuck_forever()
    dist.barrier()
    save_result({"never": True})

run(main)
"""

ECHO = """
import os
from labkit.parallel.workers.common import log, run, save_result, setup

def main():
    ctx = setup()
    log(f"hello from rank {ctx.rank} of {ctx.world}")
    save_result({"world": ctx.world, "threads": os.environ["OMP_NUM_THREADS"], "x": ctx.rank * 10})

run(main)
"""


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _alive(script) -> list[psutil.Process]:
    """Processes whose command line names `script` (torchrun and its workers), zombies aside."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if (
                str(script) in " ".join(p.info["cmdline"] or [])
                and p.info["status"] != psutil.STATUS_ZOMBIE
            ):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _settle(script, seconds=5.0) -> list[psutil.Process]:
    deadline = time.time() + seconds
    while (alive := _alive(script)) and time.time() < deadline:
        time.sleep(0.2)
    return alive


def test_torchrun_command_for_a_cluster():
    cmd = torchrun_command("ddp", nnodes=4, nproc_per_node=8, args={"steps": 100})
    assert cmd.startswith("torchrun --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d")
    assert "--rdzv-endpoint=$MASTER_ADDR:29500" in cmd and "--rdzv-id=labkit-ddp" in cmd
    assert cmd.endswith("labkit/parallel/workers/ddp.py --steps 100")
    as_module = torchrun_command("zero", nnodes=2, nproc_per_node=4, module=True)
    assert as_module.endswith("--rdzv-id=labkit-zero -m labkit.parallel.workers.zero")
    with pytest.raises(LabkitError, match="nnodes=0"):
        torchrun_command("ddp", nnodes=0)


def test_script_args_and_worker_names():
    assert script_args(
        {"steps": 4, "n_layer": 2, "modes": ["zero1", "zero3"], "flag": True, "off": False}
    ) == ["--steps", "4", "--n-layer", "2", "--modes", "zero1,zero3", "--flag"]
    assert script_args(["--steps", 3]) == ["--steps", "3"]
    assert worker_script("pp").name == "pp.py"
    with pytest.raises(LabkitError, match="checkpoint, ddp, dp_tp, pp, tp, zero"):
        worker_script("nope")
    with pytest.raises(LabkitError, match="nproc=0"):
        launch("ddp", nproc=0)


def test_workers_meet_on_loopback_and_the_launcher_preloads_what_they_import():
    from labkit.parallel.launch import PRELOAD, _preloaded, _torchrun

    # a host name some sandboxes cannot resolve must not be what the ranks connect to
    assert "--local-addr=127.0.0.1" in launch.__code__.co_consts
    ddp, custom = worker_script("ddp"), worker_script(__file__)
    assert _preloaded(ddp) == (*PRELOAD, "labkit.parallel.workers.ddp")
    assert _preloaded(custom) == PRELOAD  # a script of the learner's: only the shared modules
    assert not any("transformers" in m for m in PRELOAD)  # workers train workers/model.py
    code = _torchrun(True, _preloaded(ddp))[2]
    assert "labkit.parallel.workers.ddp" in code and code.endswith("main()\n")


def test_room_for_counts_cores_and_memory(monkeypatch):
    import os

    from labkit.parallel import room_for

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    ok, why = room_for(4)
    assert not ok and "4 processes need 4 cores (this machine has 2)" in why
    assert room_for(1, process_mb=1)[0]
    ok, why = room_for(2, process_mb=1e9)  # a petabyte each: no machine has it
    assert not ok and "GB is free" in why
    with pytest.raises(LabkitError, match="nproc"):
        room_for(0)


@pytest.mark.slow
def test_results_and_rank0_log_are_collected(tmp_path):
    script = _script(tmp_path, "echo_ranks.py", ECHO)
    seen = []
    r = launch(script, nproc=2, timeout=240, echo=seen.append, preload=False)
    assert r.ok and r.returncode == 0
    assert seen == ["hello from rank 0 of 2"] == r.log  # rank 1's stdout is not streamed
    assert [x["x"] for x in r.results] == [0, 10]
    assert {x["threads"] for x in r.results} == {"1"}  # OMP_NUM_THREADS=1 per worker


@pytest.mark.slow
def test_a_crashing_rank_is_named_with_its_traceback(tmp_path):
    script = _script(tmp_path, "crash_rank1.py", CRASH)
    shown = []
    with pytest.raises(WorkerFailed) as info:
        launch(script, nproc=2, timeout=240, echo=shown.append)  # default: preloaded fork
    r = info.value.result
    assert r.status == "failed" and r.failed_rank == 1
    assert (
        r.error.startswith("crash_rank1.py: rank 1 failed")
        and "ValueError: boom from rank 1" in r.error
    )
    assert 'crash_rank1.py", line' in r.traceback and "raise ValueError" in r.traceback
    assert "ValueError: boom from rank 1" in str(info.value)  # what the notebook prints
    assert any("boom from rank 1" in line for line in shown)
    assert r.results == [None, None]
    assert not _settle(script)


@pytest.mark.slow
def test_a_hung_job_is_killed_at_the_timeout(tmp_path):
    script = _script(tmp_path, "hang_rank1.py", HANG)
    start = time.perf_counter()
    r = launch(script, nproc=2, timeout=60, echo=None, check=False, preload=False)
    assert time.perf_counter() - start < 60 + 15  # the timeout, plus the SIGTERM/SIGKILL grace
    assert r.status == "timeout" and "timed out after 60 s" in r.error
    assert "both ranks up" in r.log
    # faulthandler's stack from rank 1 says where it was stuck
    assert "stuck_forever" in r.traceback and "--- rank 1 ---" in r.traceback
    assert len(r.pids) >= 3  # torchrun and two workers were seen...
    assert not _settle(script)  # ...and none is left
    assert not [
        p
        for p in r.pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]


@pytest.mark.slow
def test_keyboard_interrupt_stops_every_process(tmp_path):
    script = _script(tmp_path, "hang_interrupted.py", HANG)

    def press_stop(line):
        if "both ranks up" in line:
            raise KeyboardInterrupt  # what the notebook's stop button raises in the cell

    with pytest.raises(KeyboardInterrupt):
        launch(script, nproc=2, timeout=240, echo=press_stop)
    assert not _settle(script)


# -- worker groups: one torchrun, several jobs -----------------------------------------------

PID = """
import os
from labkit.parallel.workers.common import log, run, save_result, setup

def main():
    ctx = setup()
    log(f"job on rank {ctx.rank} of {ctx.world}")
    save_result({"pid": os.getpid(), "world": ctx.world})

run(main)
"""


@pytest.mark.slow
def test_a_worker_group_runs_jobs_on_the_same_ranks_and_recovers_from_a_failure(tmp_path):
    from labkit.parallel import worker_group

    pid = _script(tmp_path, "pid.py", PID)
    crash = _script(tmp_path, "crash_rank1.py", CRASH)
    group = worker_group(nproc=2, preload_workers=())
    try:
        seen = []
        a = group.run(pid, timeout=240, echo=seen.append)
        b = group.run(pid, timeout=240, echo=None)
        assert a.ok and b.ok and seen == ["job on rank 0 of 2"] == a.log  # the marker is hidden
        assert [r["pid"] for r in a.results] == [r["pid"] for r in b.results]  # no new torchrun
        assert worker_group(nproc=2) is group and group.jobs == 2
        ranks = group.processes()
        assert len(ranks) >= 3  # torchrun and its two ranks
        with pytest.raises(WorkerFailed) as failed:
            group.run(crash, timeout=240, echo=None)
        r = failed.value.result
        assert r.failed_rank == 1 and "ValueError: boom from rank 1" in r.error
        assert "boom from rank 1" in r.traceback and not group.alive
        assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        c = group.run(pid, timeout=240, echo=None)  # a fresh group takes the next job
        assert c.ok and [x["pid"] for x in c.results] != [x["pid"] for x in a.results]
    finally:
        group.close()
    assert not group.alive and group.processes() == []
    assert not _settle("serve.py", 5.0) or all(
        str(tmp_path) not in " ".join(p.cmdline()) for p in _alive("serve.py"))


@pytest.mark.slow
def test_a_hung_job_stops_the_group_at_its_timeout(tmp_path):
    from labkit.parallel import WorkerGroup

    hang = _script(tmp_path, "hang.py", HANG)
    group = WorkerGroup(nproc=2, preload_workers=(), start_timeout=60)
    t0 = time.monotonic()
    r = group.run(hang, timeout=20, echo=None, check=False)  # the first job: + start_timeout
    assert r.status == "timeout" and "timed out after 80 s" in r.error
    assert "rank(s) 0, 1 had not finished" in r.error  # rank 0 waits for rank 1 in a barrier
    assert "stuck_forever" in r.traceback  # the hung rank's stack
    assert not group.alive and time.monotonic() - t0 < 80 + 30
    group.close()


def test_worker_group_bad_input():
    from labkit.parallel import WorkerGroup, worker_group

    with pytest.raises(LabkitError, match="nproc"):
        worker_group(nproc=0)
    with pytest.raises(LabkitError, match="env must be a dict"):
        WorkerGroup(2, env=["A=1"])
    with pytest.raises(LabkitError, match="not found"):
        WorkerGroup(2, preload_workers=["nope"])
    group = WorkerGroup(2)
    assert not group.alive and "not running" in repr(group)
    with pytest.raises(LabkitError, match="timeout"):
        group.run("ddp", timeout=0)
    assert not group.alive  # bad input starts nothing
