"""A worker group: join the process group once, then run worker scripts one after another, each
as torchrun would run it, until told to stop.

    (started by labkit.parallel.worker_group; not a script to run by hand)

Starting torchrun costs a few CPU seconds (the launcher imports torch, the ranks join the
group); a notebook that runs four workers in a row pays it once this way. Each job is a file
`job<n>.json` in LABKIT_JOB_DIR naming a script, its arguments and a result folder; every rank
runs the script as `__main__` with those arguments, in the group that is already up, and rank 0
prints a line `LABKIT-JOB-DONE <n>` when all ranks are through. A job that fails ends the
group (a rank stuck in a collective with a dead peer cannot be trusted with the next job).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

from labkit.parallel.workers import common

JOB_DIR_ENV = "LABKIT_JOB_DIR"
DONE = "LABKIT-JOB-DONE"
POLL_S = 0.05


def next_job(folder: Path, n: int) -> dict:
    path = folder / f"job{n}.json"
    while not path.exists():  # written atomically by the notebook's side
        time.sleep(POLL_S)
    return json.loads(path.read_text())


def serve(folder: Path) -> None:
    n = 0
    while not (job := next_job(folder, n)).get("stop"):
        os.environ[common.RESULT_DIR_ENV] = job["result_dir"]
        sys.argv = [job["script"], *job["args"]]
        try:
            runpy.run_path(job["script"], run_name="__main__")  # its run() saved the traceback
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        common.log(f"{DONE} {n}")
        n += 1


def main():
    common._SERVING = common.setup()
    try:
        serve(Path(os.environ[JOB_DIR_ENV]))
    finally:
        common._SERVING = None  # the last run() below tears the group down


if __name__ == "__main__":
    common.run(main)
