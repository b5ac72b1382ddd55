"""Loaders: datasets, tokenizer and models from data_samples/ by default.

The same functions take a Hugging Face hub id or a local path (for users with the network, e.g.
on Colab). Offline, a hub id fails with one message naming the embedded default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import LabkitError
from .samples import data_dir, sample_path

DATASETS = {
    "corpus": "corpus/train.jsonl.gz",
    "heldout": "corpus/heldout.jsonl",
    "crawl_labels": "crawl/labels.jsonl",
    "instructions_curated": "instructions/curated.jsonl",
    "instructions_noisy": "instructions/noisy.jsonl.gz",
    "sft_eval": "instructions/sft_eval.jsonl",
    "preferences": "preferences/pairs.jsonl",
    "knowledge_mc": "benchmarks/knowledge_mc.jsonl",
    "code_tasks": "benchmarks/code_tasks.jsonl",
    "contaminated_finetune": "benchmarks/contaminated_finetune.jsonl",
}
MODELS = {"base": "models/base", "mlm": "models/mlm"}
ADAPTERS = {"sft": "models/sft-adapter", "dpo": "models/dpo-adapter"}
# An adapter trained on top of another one: DPO starts from the SFT model (base + SFT merged).
ADAPTER_PARENT = {"dpo": "sft"}


# A hub id: "owner/name", or a bare legacy name such as "gpt2" or "distilgpt2".
_HUB_ID = re.compile(r"([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("LABKIT_ONLINE") != "1"


def _resolve(source: str, embedded: dict[str, str], what: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for an embedded name, a local path, or a hub id."""
    if source in embedded:
        return str(sample_path(embedded[source])), True
    if Path(source).expanduser().exists():
        return str(Path(source).expanduser()), True
    hub_id = bool(_HUB_ID.fullmatch(source)) and ".." not in source
    if hub_id and not _offline():
        return source, False
    names = ", ".join(sorted(embedded))
    if hub_id and "/" in source:
        raise LabkitError(f"{what} {source!r} looks like a hub id, but labkit is offline; use an "
                          f"embedded one ({names}) or set LABKIT_ONLINE=1 with the network")
    hint = "; if it is a hub id, set LABKIT_ONLINE=1 with the network" if hub_id else ""
    raise LabkitError(f"unknown {what} {source!r}: not embedded ({names}) and no such local "
                      f"path{hint}")


def require_safetensors(folder: str | Path) -> None:
    """Refuse a local model folder whose weights exist only as PyTorch pickles (.bin): loading a
    pickle can run code, so labkit loads safetensors only. Says how to convert."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise LabkitError(
            f"{str(folder)!r} holds {', '.join(pickles)} but no .safetensors weights; labkit loads "
            "safetensors only (a .bin file is a pickle, and unpickling can run code). Convert "
            "it once, if you trust the file: transformers.AutoModelForCausalLM.from_pretrained("
            f"{str(folder)!r}, use_safetensors=False).save_pretrained({str(folder)!r})")


def load_dataset(name: str, split: str = "train"):
    """A `datasets.Dataset` of one embedded JSON Lines file (or a hub dataset when online)."""
    import datasets

    source, local = _resolve(name, DATASETS, "dataset")
    if local:
        return datasets.load_dataset("json", data_files={split: source}, split=split)
    return datasets.load_dataset(source, split=split)


def load_records(name: str) -> list[dict]:
    """The rows of an embedded JSON Lines file as plain dicts (no datasets cache involved)."""
    import gzip
    import json

    path = sample_path(DATASETS[name]) if name in DATASETS else Path(name)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_tokenizer(source: str = "world"):
    from transformers import AutoTokenizer

    if source == "world":
        return AutoTokenizer.from_pretrained(sample_path("tokenizer"))
    path, _ = _resolve(source, {}, "tokenizer")
    return AutoTokenizer.from_pretrained(path)


def load_model(source: str = "base", *, dtype=None, device: str | None = None):
    """A causal LM ("base", "sft", "dpo"), the masked LM ("mlm"), a local path, or a hub id.
    Weights come from safetensors only; never trust_remote_code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if source in ADAPTERS:
        return load_adapter_model(source, dtype=dtype, device=device)
    path, local = _resolve(source, MODELS, "model")
    if local:
        require_safetensors(path)
    cls = AutoModelForMaskedLM if source == "mlm" else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True,
                                trust_remote_code=False)
    model.eval()
    return model.to(device) if device else model


def load_adapter_model(name: str, *, merge: bool = False, dtype=None, device: str | None = None):
    """The base model with a shipped PEFT adapter applied: "sft" on the base model, "dpo" on the
    SFT model (base with the SFT adapter merged in)."""
    from peft import PeftModel

    path, _ = _resolve(name, ADAPTERS, "adapter")
    parent = ADAPTER_PARENT.get(name)
    if parent:
        base = load_adapter_model(parent, merge=True, dtype=dtype, device=device)
    else:
        base = load_model("base", dtype=dtype, device=device)
    model = PeftModel.from_pretrained(base, path)
    model.eval()
    return model.merge_and_unload() if merge else model


def embedded_paths() -> dict[str, Path]:
    return {k: data_dir() / v for k, v in {**DATASETS, **MODELS, **ADAPTERS}.items()}
