"""`labkit train-models`: the recorded commands that train the shipped tiny models.

The two pretrained models train with the project's own loop (`labkit.pretrain.train`) on the
clean corpus: a Llama-architecture causal base model and a ModernBERT masked LM. The two adapters
are fine-tuned from the base with TRL: `sft` (LoRA SFT on the curated instructions, lab 06) and
`dpo` (DPO on the preference pairs, from the merged SFT model, lab 08). Each gets a model card
with its config, data, steps, wall time, final losses and scores, measured at the end.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import LabkitError
from ..models import ModelShape, build_causal_lm, build_masked_lm, count_parameters
from ..samples import data_dir

RECIPES = {
    "base": {"shape": ModelShape(d_model=192, n_layer=6, n_head=6, max_len=256), "steps": 1400,
             "batch_size": 16, "seq_len": 256, "lr": 2e-3, "warmup_steps": 100, "seed": 1},
    "mlm": {"shape": ModelShape(d_model=128, n_layer=4, n_head=4, max_len=256), "steps": 1000,
            "batch_size": 32, "seq_len": 128, "lr": 3e-3, "warmup_steps": 60, "seed": 2},
}
# The adapters are built by the alignment code they demonstrate; they need the base (and dpo
# the sft adapter), so the default order trains them last.
ADAPTERS = {"sft": "sft-adapter", "dpo": "dpo-adapter"}
PROMPTS = ["The capital of {country} is", "Long ago in {city},", "Q: Who invented the {invention}?\nA:",
           "def add_3(x):\n    \"\"\"Return x plus 3.\"\"\"\n"]


def _corpus_stream(tokenizer, texts) -> np.ndarray:
    from ..pretrain.data import pack_documents

    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return pack_documents(ids, tokenizer.eos_token_id)


def unigram_perplexity(train_stream: np.ndarray, tokenizer, texts, vocab_size: int) -> float:
    """The baseline: each token predicted by its corpus frequency alone (add-one smoothed)."""
    from ..pretrain.data import unigram_cross_entropy

    ids = np.concatenate([np.asarray(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]])
    return math.exp(unigram_cross_entropy(train_stream, ids, vocab_size))


def _card(name: str, recipe: dict, metrics: dict, history, extra: str) -> str:
    shape = recipe["shape"]
    lines = [
        "---", "license: mit", "library_name: transformers", "tags: [labkit, tiny, offline]", "---",
        f"# world-{name}", "",
        f"A tiny {'causal (Llama-architecture)' if name == 'base' else 'masked (ModernBERT-architecture)'} language model "
        "trained from scratch on the embedded world's clean corpus (`corpus/train.jsonl.gz`) with the "
        "project's own loop, `labkit.pretrain.train`.", "",
        "## Recorded command", "", f"    labkit train-models {name}", "",
        "## Config", "",
        f"- parameters: {metrics['parameters']:,}",
        f"- d_model {shape.d_model}, layers {shape.n_layer}, heads {shape.n_head}, context {shape.max_len}",
        f"- steps {recipe['steps']}, batch {recipe['batch_size']} x {recipe['seq_len']} tokens, "
        f"peak lr {recipe['lr']}, warmup {recipe['warmup_steps']}, cosine to lr/10, AdamW (0.9, 0.95), "
        "weight decay 0.1, grad clip 1.0, fp32",
        f"- tokens seen: {metrics['tokens_seen']:,} ({metrics['epochs']:.1f} epochs of "
        f"{metrics['corpus_tokens']:,} corpus tokens)", "",
        "## Measured", "",
        f"- wall time: {metrics['wall_s']:.0f} s on {metrics['device']} "
        f"(mean {metrics['tokens_per_s']:.0f} tokens/s)",
        f"- final training loss: {metrics['final_train_loss']:.3f} (mean of the last logged window)",
        f"- held-out loss: {metrics['heldout_loss']:.3f}",
    ]
    return "\n".join(lines + extra.splitlines() + ["", "Scores are measured by `labkit train-models` at the "
                                                   "end of training and stored in `metrics.json`.", ""])


def train_models(which=(), out: Path | None = None, measure_only: bool = False) -> dict:
    """Train (or with measure_only, only re-measure and rewrite the cards of) the shipped models."""
    valid = [*RECIPES, *ADAPTERS]
    which = list(which) or valid
    bad = [w for w in which if w not in valid]
    if bad:
        raise LabkitError(f"unknown model(s) {bad}; valid: {', '.join(valid)}")
    if measure_only and any(w in ADAPTERS for w in which):
        raise LabkitError("--measure-only re-measures base and mlm only; the adapters "
                          f"({', '.join(ADAPTERS)}) are measured as part of their training run")
    out = Path(out) if out else data_dir()
    results = {}
    for name in which:
        if name in ADAPTERS:
            results[name] = _build_adapter(name, out)
        else:
            results[name] = (_measure_one if measure_only else _train_one)(name, out)
    _update_manifest(out, which)
    return results


def _build_adapter(name: str, out: Path) -> dict:
    if name == "sft":
        from ..align.sft import build_sft_adapter

        return build_sft_adapter(out)
    from ..align.dpo import build_dpo_adapter

    return build_dpo_adapter(out)


def _measure_one(name: str, out: Path) -> dict:
    """Re-measure a trained model; the training numbers come from its metrics.json."""
    from ..loaders import load_records, load_tokenizer

    target = out / "models" / name
    if not (target / "metrics.json").exists():
        raise LabkitError(f"no trained model in {target}; run `labkit train-models {name}` first")
    metrics = json.loads((target / "metrics.json").read_text())
    tok = load_tokenizer()
    if name == "base":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(target, use_safetensors=True).eval()
        docs = load_records("corpus")
        stream = _corpus_stream(tok, (d["text"] for d in docs))
        extra = _measure_base(model, tok, stream, [d["text"] for d in load_records("heldout")], metrics)
    else:
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(target, use_safetensors=True).eval()
        extra = _measure_mlm(model, tok, metrics)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    (target / "README.md").write_text(_card(name, RECIPES[name], metrics, None, extra))
    return metrics


def _train_one(name: str, out: Path) -> dict:
    from ..loaders import load_records, load_tokenizer
    from ..pretrain.data import MaskedBlocks, RandomBlocks, fixed_batches
    from ..pretrain.loop import TrainConfig, eval_loss, train

    recipe = RECIPES[name]
    torch.manual_seed(recipe["seed"])
    tok = load_tokenizer()
    docs = load_records("corpus")
    heldout = [d["text"] for d in load_records("heldout")]
    stream = _corpus_stream(tok, (d["text"] for d in docs))
    held_stream = _corpus_stream(tok, heldout)
    special = tok.all_special_ids
    if name == "base":
        model = build_causal_lm(len(tok), recipe["shape"], seed=recipe["seed"],
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)
        batches = RandomBlocks(stream, recipe["seq_len"], recipe["batch_size"], seed=recipe["seed"])
        held = fixed_batches(RandomBlocks(held_stream, recipe["seq_len"], 16, seed=0), 8)
    else:
        model = build_masked_lm(len(tok), recipe["shape"], seed=recipe["seed"],
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, cls_token_id=tok.bos_token_id,
                                sep_token_id=tok.eos_token_id)
        batches = MaskedBlocks(RandomBlocks(stream, recipe["seq_len"], recipe["batch_size"],
                                            seed=recipe["seed"]),
                               len(tok), tok.mask_token_id, special, seed=recipe["seed"])
        held = fixed_batches(MaskedBlocks(RandomBlocks(held_stream, recipe["seq_len"], 16, seed=0),
                                          len(tok), tok.mask_token_id, special, seed=0), 8)
    config = TrainConfig(steps=recipe["steps"], lr=recipe["lr"], warmup_steps=recipe["warmup_steps"],
                         log_every=25, eval_every=max(1, recipe["steps"] // 7), seed=recipe["seed"],
                         desc=f"train {name}")
    start = time.perf_counter()
    history = train(model, batches, config, eval_fn=lambda m: eval_loss(m, held))
    wall = time.perf_counter() - start
    model.eval()
    tokens_seen = recipe["steps"] * recipe["batch_size"] * recipe["seq_len"]
    metrics = {
        "model": name, "parameters": count_parameters(model), "wall_s": round(wall, 1),
        "device": f"CPU, {torch.get_num_threads()} threads, {platform.machine()}",
        "tokens_seen": tokens_seen, "corpus_tokens": int(len(stream)),
        "epochs": tokens_seen / len(stream), "tokens_per_s": tokens_seen / wall,
        "final_train_loss": float(history["loss"].iloc[-1]),
        "heldout_loss": float(history["eval_loss"].dropna().iloc[-1]),
        "loss_curve": history[["step", "loss", "eval_loss"]].to_dict("records"),
    }
    extra = _measure_base(model, tok, stream, heldout, metrics) if name == "base" else \
        _measure_mlm(model, tok, metrics)
    target = out / "models" / name
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    (target / "README.md").write_text(_card(name, recipe, metrics, history, extra))
    print(f"{name}: {json.dumps({k: v for k, v in metrics.items() if k != 'loss_curve'})}")
    return metrics


def _measure_base(model, tok, stream, heldout, metrics) -> str:
    from ..evaluation.multiple_choice import accuracy_by_subject, score_items
    from ..loaders import load_records
    from ..pretrain.generate import continue_text

    kb = json.loads((data_dir() / "world" / "knowledge_base.json").read_text())
    ppl = __import__("labkit.evaluation.perplexity", fromlist=["perplexity"]).perplexity(
        model, tok, heldout[:200])
    uni = unigram_perplexity(stream, tok, heldout[:200], len(tok))
    items = load_records("knowledge_mc")
    scores = score_items(model, tok, items)
    by_subject = accuracy_by_subject(scores)
    c, t, i = kb["countries"][0], kb["cities"][3], kb["inventions"][0]
    samples = {}
    for p in PROMPTS:
        prompt = p.format(country=c["name"], city=t["name"], invention=i["name"])
        samples[prompt] = continue_text(model, tok, prompt, max_new_tokens=40)
    metrics.update({
        "heldout_perplexity": ppl.perplexity, "heldout_bits_per_byte": ppl.bits_per_byte,
        "unigram_perplexity": uni, "knowledge_mc_acc": float(scores["acc"].mean()),
        "knowledge_mc_acc_norm": float(scores["acc_norm"].mean()),
        "knowledge_mc_by_subject": by_subject.reset_index().to_dict("records"), "samples": samples,
        "facts": {"capital": [c["name"], c["capital"]], "inventor": [i["name"], i["inventor"]]},
    })
    lines = [f"- held-out perplexity: {ppl.perplexity:.2f} (unigram baseline {uni:.1f}); "
             f"{ppl.bits_per_byte:.3f} bits per byte",
             f"- knowledge test ({len(items)} questions, 4 choices, log-likelihood): acc "
             f"{metrics['knowledge_mc_acc']:.3f}, acc_norm {metrics['knowledge_mc_acc_norm']:.3f} "
             "(chance 0.25)", "", "| subject | items | acc | acc_norm |", "|---|---|---|---|"]
    lines += [f"| {r['subject']} | {r['items']} | {r['acc']:.3f} | {r['acc_norm']:.3f} |"
              for r in metrics["knowledge_mc_by_subject"]]
    lines += ["", "## Samples (greedy)", ""]
    for prompt, text in samples.items():
        lines += ["```", prompt + text, "```"]
    return "\n".join(lines)


def _measure_mlm(model, tok, metrics) -> str:
    from ..pretrain.generate import fill_blanks

    kb = json.loads((data_dir() / "world" / "knowledge_base.json").read_text())
    # Blanks whose answer is one token (colours, foods), so a single mask can hold it.
    a, s = kb["animals"][0], kb["substances"][0]
    probes = [f"The {a['name']} eats{tok.mask_token}.",
              f"The colour of {s['name']} is{tok.mask_token}.",
              f"The {a['name']} is{tok.mask_token} and it eats {a['diet']}."]
    lines = [f"- masked-token loss on held-out text: {metrics['heldout_loss']:.3f}", "",
             "## Fill the blank (top guess, then the top 3)", ""]
    metrics["fill_examples"] = []
    for probe in probes:
        filled = fill_blanks(model, tok, probe)
        top = ", ".join(f"{t.replace('Ġ', ' ')!r} {p:.2f}" for t, p in filled.predictions[0][:3])
        metrics["fill_examples"].append({"input": probe, "output": filled.text,
                                         "top5": filled.predictions[0]})
        lines += ["```", probe, f"-> {filled.text}   ({top})", "```"]
    facts = f"(truth: the {a['name']} eats {a['diet']} and is {a['colour']}; {s['name']} is {s['colour']})"
    return "\n".join(lines + [facts])


def _update_manifest(out: Path, which) -> None:
    from .build import sha256

    path = out / "MANIFEST.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"files": {}}
    for name in which:
        folder = ADAPTERS.get(name, name)
        prefix = f"models/{folder}/"
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(prefix)}
        for p in sorted((out / "models" / folder).iterdir()):
            manifest["files"][prefix + p.name] = {"size": p.stat().st_size, "sha256": sha256(p),
                                                  "command": f"labkit train-models {name}"}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    path.write_text(json.dumps(manifest, indent=1) + "\n")
