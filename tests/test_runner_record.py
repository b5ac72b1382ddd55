"""run-labs' record and the README table regenerated from it."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from labkit.errors import LabkitError
from labkit.runner import (
    README_BEGIN,
    README_END,
    LabResult,
    machine_label,
    results_record,
    update_readme,
)


def test_the_record_names_the_machine_and_each_lab():
    record = results_record([LabResult("00_start_here", "ok", 12.5, 480.0, "", 11.2)], "cpu")
    assert record["profile"] == "cpu" and "torch CPU kernels" in record["machine"]
    assert record["machine"] == machine_label()
    assert record["labs"][0]["lab"] == "00_start_here" and record["labs"][0]["cpu_s"] == 11.2


def test_update_readme_rewrites_only_the_table_and_keeps_the_descriptions(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"intro\n{README_BEGIN}\n| lab | concept | file | what you will see | CPU s |\n|---|---|---|---|---|\n"
        "| 00 | start here | [labs/00_start_here.ipynb](labs/00_start_here.ipynb) | the check | 99 |\n"
        f"{README_END}\noutro\n")
    record = results_record([LabResult("00_start_here", "ok", 12.5, 2048.0, "", 11.2)], "cpu")
    update_readme(readme, record)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    row = next(line for line in text.splitlines() if line.startswith("| 00 |"))
    assert row == ("| 00 | start here | [labs/00_start_here.ipynb](labs/00_start_here.ipynb) | the check "
                   "| 11 | 12 | 2.0 GiB |")
    assert record["machine"] in text
    update_readme(readme, record)  # idempotent
    assert readme.read_text() == text


def test_update_readme_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no table here\n")
    with pytest.raises(LabkitError, match="markers"):
        update_readme(readme, results_record([], "cpu"))


# A parent that holds 200 MiB (touched) and a forked child that shares it without writing: one
# copy in memory, two in the RSS sum.
_SHARED = """
import os, sys, time
block = bytearray(200 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
if os.fork() == 0:
    time.sleep(float(sys.argv[1])); os._exit(0)
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS is a Linux figure")
def test_memory_shared_by_forked_processes_counts_once(tmp_path):
    import subprocess

    from labkit.runner import _PeakMemory

    # measured from a launcher, so that nothing else this test process started is counted
    launcher = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], '6'])"
    proc = subprocess.Popen([sys.executable, "-c", launcher, _SHARED], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.7)  # the forked child is past the pre-exec window: it counts
        pss, rss = _PeakMemory(root=psutil.Process(proc.pid)).sample()
    finally:
        proc.kill()
        proc.wait()
    mib = 2**20
    assert rss > 400 * mib  # both processes hold the 200 MiB in their RSS
    assert 200 * mib < pss < 300 * mib  # one copy, split between them


def test_a_child_between_fork_and_exec_is_not_counted_as_its_own(tmp_path):
    import subprocess

    from labkit.runner import _not_yet_its_own

    same = subprocess.Popen([sys.executable, "-c", _SHARED, "3"], stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen(["sleep", "3"])
    try:
        assert same.stdout.readline().strip() == "ready"
        child = psutil.Process(same.pid).children()[0]  # the fork: its parent's command line
        born = child.create_time()
        assert _not_yet_its_own(child, born + 0.1)
        assert not _not_yet_its_own(child, born + 1.0)  # a worker that lives on is counted
        sleeper = psutil.Process(other.pid)  # exec'd: a program of its own
        assert not _not_yet_its_own(sleeper, sleeper.create_time() + 0.1)
    finally:
        for p in (same, other):
            p.kill()
            p.wait()
