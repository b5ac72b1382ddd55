"""The `labkit` command line: doctor, run-labs, build-samples, train-models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LabkitError


def _doctor(args) -> int:
    from .doctor import format_rows, run_doctor

    rows = run_doctor()
    print(format_rows(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def _run_labs(args) -> int:
    from .profiles import profile
    from .runner import format_results, run_labs

    only = [k for item in (args.only or []) for k in item.split(",") if k]
    results = run_labs(only, profile=args.profile, cell_timeout=args.cell_timeout,
                       output_dir=Path(args.output_dir) if args.output_dir else None,
                       pin=args.pin)
    print(format_results(results, profile(args.profile).name))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2))
    return 0 if all(r.status == "ok" for r in results) else 1


def _build_samples(args) -> int:
    from .world.build import build_samples

    build_samples(Path(args.out) if args.out else None, check=args.check)
    return 0


def _train_models(args) -> int:
    from .world.models import train_models

    train_models(args.which, out=Path(args.out) if args.out else None, measure_only=args.measure_only)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="LLM Pipeline Labs toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check dependencies, device and capabilities")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("run-labs", help="execute labs headless and report wall time and peak memory")
    p.add_argument("--only", action="append", help="lab numbers or names, e.g. --only 01 or --only 01,02")
    p.add_argument("--profile", help="scale profile (cpu or gpu); default: $LABKIT_PROFILE or auto")
    p.add_argument("--cell-timeout", type=int, default=600, help="seconds one cell may take")
    p.add_argument("--output-dir", help="write the executed notebooks here")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--pin", action="store_true",
                   help="write the text outputs of # NBVAL_CHECK_OUTPUT cells back into the lab "
                        "(the reference nbval compares against); all other outputs stay stripped")
    p.set_defaults(func=_run_labs)

    p = sub.add_parser("build-samples", help="regenerate data_samples/ deterministically")
    p.add_argument("--out", help="output folder (default: data_samples/)")
    p.add_argument("--check", action="store_true", help="verify hashes against MANIFEST.json instead of writing")
    p.set_defaults(func=_build_samples)

    p = sub.add_parser("train-models", help="train the shipped tiny models (recorded commands)")
    p.add_argument("which", nargs="*", default=[], help="models to train (default: all)")
    p.add_argument("--out", help="output folder (default: data_samples/)")
    p.add_argument("--measure-only", action="store_true",
                   help="re-measure trained models and rewrite their cards, without training")
    p.set_defaults(func=_train_models)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LabkitError as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
