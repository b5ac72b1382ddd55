"""Latency of one quantization-explorer update from cached results (target: at most 50 ms).

    python benchmarks/bench_widgets_quantization.py [--repeats 40] [--rows 18]

Times, on a trade-off table of --rows cached configurations (synthetic numbers, the shape of the
lab's table; nothing is measured on a model):
  cached:   the bits control moved to another cached configuration (figure highlight, title,
            readout and table redrawn in place),
  invalid:  a combination that is refused (the message shown, the highlight cleared),
  serving:  the deployment calculator after a context change (all bars and the GPU verdict),
and prints median / 90th percentile / max wall-clock milliseconds and the median CPU
milliseconds of this process (on a machine shared with other busy processes the wall clock also
counts their turns; the CPU time is what the update itself costs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from widgets.quantization import (
    CONTEXTS,
    ServingCalculator,
    TradeoffExplorer,
    config_label,
    tradeoff_table,
)

TARGET_MS = 50.0


def synthetic_rows(n: int) -> list[dict]:
    rows = [("fp32", 32, None)] + [
        (scheme, bits, group)
        for scheme in ("rtn", "absmax", "gptq")
        for bits in (8, 6, 4, 3, 2)
        for group in (None, 32)
    ]
    out = []
    for scheme, bits, group in rows[:n]:
        size = 13.09 if scheme == "fp32" else 2.6 + 0.33 * bits + (0.3 if group else 0)
        out.append({"label": config_label(scheme, bits, group), "scheme": scheme, "bits": bits,
                    "group_size": group, "stored_bytes": int(size * 1e6), "size_mb": size,
                    "linear_bits": float(bits), "perplexity": 1.2275 + 0.1 * 2.0 ** -bits,
                    "knowledge_acc": 0.57, "ms_per_token": 10.0 * bits, "cpu_ms_per_token": 9.0,
                    "seconds": 3.0})
    return out


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()

    explorer = TradeoffExplorer(tradeoff_table(synthetic_rows(args.rows)),
                                in_features=[192, 512], scheme="rtn", bits=4)
    calculator = ServingCalculator("70B", "int4")
    print(f"device: cpu, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{len(explorer.cache)} cached configurations")

    wall: dict[str, list[float]] = {"cached": [], "invalid": [], "serving": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}

    def timed(what: str, control, value) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        control.value = value  # the observer runs the update
        wall[what].append(1e3 * (time.perf_counter() - t0))
        cpu[what].append(1e3 * (time.process_time() - c0))

    cached_bits = (8, 6, 4, 3, 2)
    for i in range(args.repeats):
        timed("cached", explorer.bits, cached_bits[i % len(cached_bits)])
        assert "from the cache" in explorer.message.value
        timed("invalid", explorer.bits, 1)
        timed("cached", explorer.bits, cached_bits[(i + 2) % len(cached_bits)])
        timed("serving", calculator.context, CONTEXTS[i % len(CONTEXTS)])

    print(f"{'update':>8} | {'median ms':>9} | {'p90 ms':>7} | {'max ms':>7} | {'CPU ms med':>10} |"
          f" target {TARGET_MS:.0f} ms")
    for what, samples in wall.items():
        med, p90, worst = _stats(samples)
        cpu_med = statistics.median(cpu[what])
        verdict = "ok" if min(med, cpu_med) <= TARGET_MS else "OVER"
        print(f"{what:>8} | {med:>9.1f} | {p90:>7.1f} | {worst:>7.1f} | {cpu_med:>10.1f} | {verdict}")


if __name__ == "__main__":
    main()
