"""The capstone (lab 11): one model of your own, from the raw crawl to a quantized assistant.

`run(config, run_dir)` carries one model through every stage of the labs, each stage calling
that lab's own functions: the crawl through lab 01's pipeline, a BPE tokenizer, pre-training
with lab 02's loop and a lab 05 schedule, SFT (lab 06) and DPO (lab 08) with TRL, lab 09's
measurements and lab 10's quantization; then a report card puts each stage's key number next
to the shipped models'. Stages are cached by the hash of what made them, so a second run with
one knob changed re-runs only the stages downstream of it. The same from the shell:

    labkit pipeline run cpu --run-dir runs/capstone --set sft.lr=1e-3

Configs are TOML files (`labkit/pipeline/configs/{smoke,cpu,gpu}.toml`); `load_config` checks
every key and `describe_keys()` lists them.
"""

from .config import SCHEMA, SHIPPED, describe_keys, load_config, parse_override
from .knobs import KNOBS, compare_figure, compare_runs, knob_overrides, try_this_table
from .report import (
    card_text,
    compute_table,
    load_card,
    report_card,
    report_figure,
    stage_table,
    wilson_interval,
)
from .run import RunResult, Stage, StageError, load_run, run
from .stages import STAGE_NAMES, STAGES

__all__ = [
    "KNOBS", "SCHEMA", "SHIPPED", "STAGES", "STAGE_NAMES", "RunResult", "Stage", "StageError",
    "card_text", "compare_figure", "compare_runs", "compute_table", "describe_keys",
    "knob_overrides", "load_card", "load_config", "load_run", "parse_override", "report_card",
    "report_figure", "run", "stage_table", "try_this_table", "wilson_interval",
]
