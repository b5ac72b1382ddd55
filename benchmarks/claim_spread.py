"""How much each checked claim's number moves across CPU kernels and thread counts.

Runs the labs headless once per configuration (an `ATEN_CPU_CAPABILITY` and a thread count),
collects every `labkit.check.claim` a lab checks (through LABKIT_CLAIMS_LOG) and the text of
its `# NBVAL_CHECK_OUTPUT` cells, and prints, per claim, the smallest and largest value seen
against the claim's bounds, and which checked cells printed different text in different
configurations (those would break nbval on another machine).

    .venv/bin/python benchmarks/claim_spread.py --labs 05 10 --out runs/spread
    .venv/bin/python benchmarks/claim_spread.py            # every lab, default, avx2, native

Use it to choose a claim's tolerance: the bounds should clear the measured spread with room to
spare and still fail when the mechanism is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CONFIGS = {  # name -> environment
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "native-2threads": {"OMP_NUM_THREADS": "2"},
    "native-1thread": {"OMP_NUM_THREADS": "1"},
}


def _run_one(lab: str, config: str, out: str) -> dict:
    from labkit.runner import find_labs, run_lab

    path = find_labs([lab])[0]
    target = Path(out) / config
    target.mkdir(parents=True, exist_ok=True)
    log = target / f"{path.stem}.claims.jsonl"
    log.unlink(missing_ok=True)
    saved = dict(os.environ)
    os.environ.update(CONFIGS[config])  # the kernel inherits this environment
    os.environ["LABKIT_CLAIMS_LOG"] = str(log)
    os.environ["LABKIT_LAB"] = path.stem
    try:
        result = run_lab(path, output_dir=target)
    finally:  # a pool worker runs several jobs: leave no configuration behind
        os.environ.clear()
        os.environ.update(saved)
    return {"lab": path.stem, "config": config, "status": result.status, "detail": result.detail,
            "cpu_s": result.cpu_s}


def checked_texts(notebook: Path) -> dict[int, str]:
    """Cell index -> the text a checked cell printed."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    texts = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in cell.source:
            parts = []
            for o in cell.get("outputs", []):
                if o.output_type == "stream" and o.name == "stdout":
                    parts.append(o.text)
                elif o.output_type == "execute_result":
                    parts.append(o.data.get("text/plain", ""))
            texts[i] = "".join(parts)
    return texts


def _sanitized(text: str) -> str:
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "tests" / "nbval_sanitize.cfg")
    for section in cfg.sections():
        text = re.sub(cfg[section]["regex"], cfg[section]["replace"], text)
    return text


def report(out: Path, configs: list[str], labs: list[str]) -> str:
    lines = []
    # claims
    seen: dict[tuple[str, str], dict] = defaultdict(lambda: {"values": {}, "low": None, "high": None})
    for config in configs:
        for log in sorted((out / config).glob("*.claims.jsonl")):
            for line in log.read_text().splitlines():
                r = json.loads(line)
                entry = seen[(r["lab"], r["claim"])]
                entry["values"].setdefault(config, []).append(r["value"])
                entry["low"], entry["high"] = r["low"], r["high"]
    lines.append("claim spread (value per configuration; bounds; smallest margin to a bound)")
    for (lab, text), e in sorted(seen.items()):
        values = [v for vs in e["values"].values() for v in vs]
        lo, hi = min(values), max(values)
        margins = [m for m in ((lo - e["low"]) if e["low"] is not None else None,
                               (e["high"] - hi) if e["high"] is not None else None) if m is not None]
        per = ", ".join(f"{c} {'/'.join(f'{v:.4g}' for v in vs)}" for c, vs in e["values"].items())
        lines.append(f"  {lab} | {text}\n      {per}\n      range [{lo:.4g}, {hi:.4g}] "
                     f"bounds [{e['low']}, {e['high']}] margin {min(margins):.4g}"
                     + ("" if min(margins) >= 0 else "   <-- FAILS somewhere"))
    # checked cells whose text differs between configurations
    lines.append("\nchecked cells whose sanitized text differs between configurations")
    any_diff = False
    for lab in labs:
        texts = {}
        for config in configs:
            nbs = sorted((out / config).glob(f"{lab}*.ipynb"))
            if nbs:
                texts[config] = {i: _sanitized(t) for i, t in checked_texts(nbs[0]).items()}
        if len(texts) < 2:
            continue
        first, *rest = texts
        for i, text in texts[first].items():
            differing = [c for c in rest if texts[c].get(i) != text]
            if differing:
                any_diff = True
                lines.append(f"  {lab} cell {i}: {first} vs {', '.join(differing)}")
                for c in [first, *differing]:
                    lines.append(f"    --- {c}\n" + "\n".join(f"      {t}" for t in
                                                             texts[c].get(i, "").splitlines()))
    if not any_diff:
        lines.append("  none")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", nargs="*", default=None, help="lab numbers (default: all)")
    parser.add_argument("--configs", nargs="*", default=["native", "avx2", "default"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--out", default="runs/spread")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from labkit.runner import find_labs

    labs = [p.stem for p in find_labs(args.labs)]
    out = Path(args.out)
    if not args.report_only:
        jobs = [(lab, config, str(out)) for config in args.configs for lab in labs]
        with ProcessPoolExecutor(args.workers) as pool:
            for r in pool.map(_run_one, *zip(*jobs)):
                print(f"{r['config']:<16} {r['lab']:<28} {r['status']:<6} {r['cpu_s']:>6.1f} CPU s "
                      f"{r['detail']}", flush=True)
    print(report(out, args.configs, labs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
