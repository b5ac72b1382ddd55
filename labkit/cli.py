"""The `labkit` command line: doctor, run-labs, build-samples, train-models, pipeline."""

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


def _positive_seconds(text: str) -> int:
    """--cell-timeout: 0 or a negative number would mean no timeout at all."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} seconds: valid is a whole number >= 1")
    return value


def _run_labs(args) -> int:
    from .profiles import profile
    from .runner import RunInterrupted, format_results, results_record, run_labs, update_readme

    # every comma-separated part counts: --only '' or --only 01, names an empty lab (refused)
    only = None if args.only is None else [k for item in args.only for k in item.split(",")]
    if only is not None and not any(k.strip() for k in only):
        raise LabkitError("--only names no lab; give lab numbers or names, e.g. --only 01,02")
    try:
        results = run_labs(only, profile=args.profile, cell_timeout=args.cell_timeout,
                           output_dir=Path(args.output_dir) if args.output_dir else None,
                           pin=args.pin, directory=Path(args.labs_dir) if args.labs_dir else None)
    except RunInterrupted as stop:
        print(f"labkit run-labs: stopped by {signal_name(stop.signum)} during {stop.lab}; "
              f"killed the kernel and its processes ({stop.killed} in all)", file=sys.stderr,
              flush=True)
        return stop.exit_code
    print(format_results(results, profile(args.profile).name))
    record = results_record(results, profile(args.profile).name)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.readme:
        if not all(r.status == "ok" for r in results) or args.only:
            print("labkit run-labs: --readme needs every lab run and ok; README not changed",
                  file=sys.stderr)
            return 1
        update_readme(Path(args.readme), record)
        print(f"wrote the lab table of {args.readme}")
    return 0 if all(r.status == "ok" for r in results) else 1


def _build_samples(args) -> int:
    from .world.build import build_samples

    build_samples(Path(args.out) if args.out else None, check=args.check, force=args.force)
    return 0


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _train_models(args) -> int:
    from .world.models import train_models

    train_models(args.which, out=Path(args.out) if args.out else None, measure_only=args.measure_only)
    return 0


def _pipeline_run(args) -> int:
    from .pipeline import card_text, parse_override, run, stage_table

    overrides = dict(parse_override(item) for item in args.set or [])
    result = run(args.config, args.run_dir, overrides=overrides, progress=not args.quiet)
    print(stage_table(result).to_string(index=False))
    print()
    print(card_text(result.card()))
    print(f"\nreport card: {result.run_dir / 'report.md'} (figure: figure.html); "
          f"{result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU")
    return 0


def _pipeline_keys(args) -> int:
    from .pipeline import describe_keys

    print(describe_keys())
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="labkit", description="LLM Pipeline Labs toolkit")
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check dependencies, device and capabilities")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("run-labs", help="execute labs headless and report wall time and peak memory")
    p.add_argument("--only", action="append", help="lab numbers or names, e.g. --only 01 or --only 01,02")
    p.add_argument("--profile", help="scale profile (cpu or gpu); default: $LABKIT_PROFILE or auto")
    p.add_argument("--cell-timeout", type=_positive_seconds, default=600,
                   help="seconds one cell may take (a whole number >= 1)")
    p.add_argument("--labs-dir", help="run the notebooks of this folder (default: the repository's labs/)")
    p.add_argument("--output-dir", help="write the executed notebooks here")
    p.add_argument("--json", help="also write the results (and the machine) as JSON to this file")
    p.add_argument("--readme", nargs="?", const="README.md", default=None,
                   help="rewrite the lab table of this README (default README.md) from the run; "
                        "needs every lab")
    p.add_argument("--pin", action="store_true",
                   help="write the text outputs of # NBVAL_CHECK_OUTPUT cells back into the lab "
                        "(the reference nbval compares against); all other outputs stay stripped")
    p.set_defaults(func=_run_labs)

    p = sub.add_parser("build-samples", help="regenerate data_samples/ deterministically")
    p.add_argument("--out", help="output folder (default: data_samples/)")
    p.add_argument("--check", action="store_true", help="verify hashes against MANIFEST.json instead of writing")
    p.add_argument("--force", action="store_true",
                   help="overwrite data files that differ from MANIFEST.json (edited by hand)")
    p.set_defaults(func=_build_samples)

    p = sub.add_parser("train-models", help="train the shipped tiny models (recorded commands)")
    p.add_argument("which", nargs="*", default=[], help="models to train (default: all)")
    p.add_argument("--out", help="output folder (default: data_samples/)")
    p.add_argument("--measure-only", action="store_true",
                   help="re-measure trained models and rewrite their cards, without training")
    p.set_defaults(func=_train_models)

    p = sub.add_parser("pipeline", help="the capstone: one model from the crawl to a quantized "
                                        "assistant (lab 11)")
    steps = p.add_subparsers(dest="action", required=True)
    q = steps.add_parser("run", help="run every stage whose inputs or config changed")
    q.add_argument("config", help="smoke, cpu, gpu, or the path of a TOML config")
    q.add_argument("--run-dir", required=True, help="where stages keep their artifacts")
    q.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set sft.lr=1e-3 (repeatable)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_pipeline_run)
    q = steps.add_parser("keys", help="list every config key and what it takes")
    q.set_defaults(func=_pipeline_keys)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LabkitError as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted (SIGINT)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
