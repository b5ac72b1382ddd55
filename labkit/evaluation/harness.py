"""The real harness: the knowledge test as an lm-eval task, run offline on a local model.

`write_mc_task` writes a task YAML that points lm-eval at local JSONL files and renders the
same prompt as `labkit.evaluation.multiple_choice`; `run_lm_eval` runs
`lm_eval.simple_evaluate` on a saved model directory and returns tidy tables.

lm-eval offline pitfalls (found with lm-eval 0.4.13, datasets 5, transformers 5):
- `data_files` given as one path makes datasets call the split "train", and a task with
  `test_split: test` then fails with KeyError: 'test'. Give a dict of splits.
- Relative `data_files` paths resolve against the working directory of the run, not the
  YAML's folder: `write_mc_task` writes absolute paths.
- The `hf` model's device defaults to cuda: without device="cpu" a CPU-only torch fails with
  "Torch not compiled with CUDA enabled".
- `TaskManager()` indexes all ~14,700 built-in tasks (15 s here); a local task needs only
  `TaskManager(include_path=DIR, include_defaults=False)`.
- HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are read when huggingface_hub and datasets are first
  imported; setting them later does nothing, so `run_lm_eval` also flips the loaded modules'
  switches for the duration of the call.
- `model_args` as a "key=value,..." string breaks on a path containing ',' or '='; a dict is
  passed instead.
- Metrics that call `evaluate.load` need the network; acc and acc_norm are built in.
- A Jinja `{% if context %}` on a field missing from every row raises under lm-eval's
  StrictUndefined: the template tests `context is defined` first.
- lm-eval shells out to git for a commit hash and prints "fatal: not a git repository"
  outside a checkout: harmless noise.
- Result keys carry the filter name: "acc,none", "acc_stderr,none".
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import validate
from ..errors import LabkitError
from .multiple_choice import PROMPT_TEMPLATE, TARGET_DELIMITER, load_items

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def write_mc_task(
    task_dir: str | Path,
    name: str,
    data_files: str | Path | Mapping[str, str | Path],
    split: str = "test",
    template: str = PROMPT_TEMPLATE,
    delimiter: str = TARGET_DELIMITER,
) -> Path:
    """Write `<task_dir>/<name>.yaml`: a zero-shot multiple-choice task on local JSONL files.

    data_files: one JSONL path (used as `split`) or a dict {split: path}.
    """
    import yaml

    if not isinstance(name, str) or not _TASK_NAME.match(name):
        raise LabkitError(f"task name {name!r}: use letters, digits, '_' or '-', starting a letter")
    for arg, value in (("split", split), ("template", template), ("delimiter", delimiter)):
        validate.text(value, arg)
    validate.path_like(task_dir, "task_dir")
    if not isinstance(data_files, (str, Path, Mapping)):
        raise LabkitError(f"data_files must be a JSONL path or a dict split -> path, got {data_files!r}")
    files = {split: data_files} if isinstance(data_files, (str, Path)) else dict(data_files)
    if split not in files:
        raise LabkitError(f"split {split!r} is not among the data_files splits {sorted(files)}")
    resolved = {}
    for key, path in files.items():
        load_items(path)  # an empty or malformed file fails here, clearly, not inside lm-eval
        resolved[str(key)] = str(Path(path).resolve())
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": resolved},
        "test_split": split,
        "output_type": "multiple_choice",
        "doc_to_text": template,
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": delimiter,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    path = task_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@contextlib.contextmanager
def offline_hubs() -> Iterator[None]:
    """HF hub and datasets offline for the duration, even if they were imported online."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    switches = [
        (sys.modules.get("huggingface_hub.constants"), "HF_HUB_OFFLINE"),
        (sys.modules.get("datasets.config"), "HF_HUB_OFFLINE"),
        (sys.modules.get("datasets.config"), "HF_DATASETS_OFFLINE"),
    ]
    saved_switches = [
        (mod, attr, getattr(mod, attr)) for mod, attr in switches if mod and hasattr(mod, attr)
    ]
    for name in names:
        os.environ[name] = "1"
    for mod, attr, _ in saved_switches:
        setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in saved_switches:
            setattr(mod, attr, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class LmEvalRun:
    table: object  # DataFrame: task, metric, value, stderr, items
    samples: dict  # task -> DataFrame: doc_id, target, logprobs, acc, acc_norm
    raw: dict  # what lm_eval.simple_evaluate returned

    def metric(self, task: str, metric: str) -> float:
        rows = self.table[(self.table["task"] == task) & (self.table["metric"] == metric)]
        if rows.empty:
            raise LabkitError(
                f"no {metric!r} for task {task!r}; have {self.table[['task', 'metric']].values.tolist()}"
            )
        return float(rows["value"].iloc[0])


def run_lm_eval(
    model_dir: str | Path,
    task_dir: str | Path,
    tasks: Sequence[str],
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> LmEvalRun:
    """Run lm-eval's `hf` model on local tasks, offline; tidy per-task metrics and samples."""
    import pandas as pd

    validate.path_like(model_dir, "model_dir"), validate.path_like(task_dir, "task_dir")
    validate.maybe(validate.positive_int)(limit, "limit")
    validate.positive_int(batch_size, "batch_size"), validate.device(device, "device")
    model_dir, task_dir = Path(model_dir), Path(task_dir)
    if not (model_dir / "config.json").is_file():
        raise LabkitError(
            f"model_dir {str(model_dir)!r} has no config.json: save_pretrained a model there"
        )
    if not task_dir.is_dir():
        raise LabkitError(f"task_dir {str(task_dir)!r} is not a directory of task YAML files")
    tasks = validate.texts(tasks, "tasks", single=True, empty=True)
    if not tasks:
        raise LabkitError("tasks is empty: name at least one task of task_dir")
    with offline_hubs():
        import lm_eval
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise LabkitError(f"tasks {unknown} not found in {task_dir}; found {manager.all_tasks}")
        raw = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir.resolve())},
            tasks=tasks,
            task_manager=manager,
            device=device,
            batch_size=batch_size,
            limit=limit,
            log_samples=True,
        )
    rows = []
    for task, metrics in raw["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "value": float(value),
                    "stderr": None if stderr in (None, "N/A") else float(stderr),
                    "items": int(raw.get("n-samples", {}).get(task, {}).get("effective", 0)),
                }
            )
    samples = {
        task: pd.DataFrame(
            {
                "doc_id": s["doc_id"],
                "target": s["target"],
                "logprobs": [float(r[0]) for r in s["filtered_resps"]],
                "acc": s.get("acc"),
                "acc_norm": s.get("acc_norm"),
            }
            for s in entries
        )
        for task, entries in raw.get("samples", {}).items()
    }
    return LmEvalRun(table=pd.DataFrame(rows), samples=samples, raw=raw)
