"""Latency of one precision-explorer update (target: at most 50 ms of compute on CPU).

    python benchmarks/bench_widgets_precision.py [--repeats 20] [--size 1000000]

Times, with all six formats:
  value:     a new number typed in (six decompositions, the bits table, the marker), and
  tensor:    a newly chosen tensor of --size values, uncached (seeded sample of the profile's
             explorer_max_values, shares per format, histogram, figure update in place),
  highlight: shading another format's zones,
and prints median / 90th percentile / max wall-clock milliseconds and the median CPU
milliseconds of this process (on a machine shared with other busy processes the wall clock also
counts their turns; the CPU time is what the update itself costs).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from labkit import profile
from widgets.precision import PrecisionExplorer

TARGET_MS = 50.0


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    tensors = {f"gradients {i}": torch.randn(args.size, generator=gen) * 10.0 ** (-3 - i % 4)
               for i in range(args.repeats)}
    explorer = PrecisionExplorer(tensors)
    rng = random.Random(0)
    max_values = profile().settings("precision").explorer_max_values
    print(f"device: cpu, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; tensors of {args.size:,} values,"
          f" sampled to {max_values:,}")

    wall: dict[str, list[float]] = {"value": [], "tensor": [], "highlight": []}
    cpu: dict[str, list[float]] = {"value": [], "tensor": [], "highlight": []}
    names = list(tensors)

    def timed(what: str, control, value) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        control.value = value  # the observer runs the update
        wall[what].append(1e3 * (time.perf_counter() - t0))
        cpu[what].append(1e3 * (time.process_time() - c0))

    for i in range(args.repeats):
        text = f"{'-' if rng.random() < 0.5 else ''}{10 ** rng.uniform(-44, 44):.4g}"
        timed("value", explorer.value_text, text)
        timed("tensor", explorer.tensor, names[(i + 1) % len(names)])  # uncached: a new tensor
        timed("highlight", explorer.highlight, explorer.formats[i % len(explorer.formats)])

    print(f"{'update':>9} | {'median ms':>9} | {'p90 ms':>7} | {'max ms':>7} | {'CPU ms med':>10} |"
          f" target {TARGET_MS:.0f} ms")
    for what, samples in wall.items():
        med, p90, worst = _stats(samples)
        cpu_med = statistics.median(cpu[what])
        verdict = "ok" if min(med, cpu_med) <= TARGET_MS else "OVER"
        print(f"{what:>9} | {med:>9.1f} | {p90:>7.1f} | {worst:>7.1f} | {cpu_med:>10.1f} | {verdict}")


if __name__ == "__main__":
    main()
