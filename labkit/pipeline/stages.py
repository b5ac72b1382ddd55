"""The capstone's stages: each calls the labs' own functions on the previous stage's artifacts.

data       the shipped crawl through lab 01's pipeline (labkit.data), plus the corpus top-up
tokenizer  byte-level BPE trained on that corpus (the world tokenizer's recipe, with chat tokens)
pretrain   a Llama-architecture model from scratch with lab 02's loop and a lab 05 schedule
sft        lab 06's recipe: TRL's SFTTrainer, LoRA (merged afterwards) or full fine-tuning
dpo        lab 08's recipe: TRL's DPOTrainer with LoRA from the SFT model (+ NLL, RPO)
evaluate   lab 09's measurements on your three models
quantize   lab 10's trade-off bench on your final model: size, perplexity, knowledge
shipped    the same measurements on the shipped base, SFT and DPO models (the yardstick)

A stage writes its artifacts into `ctx.out` and returns its metrics (plain JSON values).
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from ..errors import LabkitError
from ..samples import sample_path
from .run import Stage, StageContext

# Lab 09's prompt boundary and stop strings for code completions (see `sample_code`).
CODE_STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ")
CODE_TOP_K, CODE_TEMPERATURE = 10, 0.8
SANDBOX_TIMEOUT_S, SANDBOX_MEMORY_MB, SANDBOX_WORKERS = 3.0, 512, 2
INSTRUCTIONS = {"curated": "instructions_curated", "noisy": "instructions_noisy"}
EVAL_FILES = ("corpus/heldout.jsonl", "benchmarks/knowledge_mc.jsonl",
              "instructions/sft_eval.jsonl", "preferences/pairs.jsonl",
              "benchmarks/code_tasks.jsonl")


# --- small helpers ---------------------------------------------------------------------------


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def warc_path(cfg: dict) -> Path:
    given = cfg["data"]["warc"]
    if given == "shipped":
        return sample_path("crawl/crawl.warc.gz")
    path = Path(given).expanduser()
    if not path.is_file():
        raise LabkitError(f"config key data.warc = {given!r}: no such file; valid: 'shipped' or "
                          "the path of a .warc or .warc.gz file")
    return path


def _seeded_sample(rows: list, n: int, seed: int) -> list:
    """n rows chosen with the run's seed, in their original order (all of them when n >= len)."""
    if n >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def _save_model(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _load(folder: Path, device: str):
    from ..loaders import load_model, load_tokenizer

    return load_model(str(folder), device=device), load_tokenizer(str(folder))


def _wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    from .report import wilson_interval

    return wilson_interval(correct, n, z)


# --- data ------------------------------------------------------------------------------------


def take_first(docs, accounting, n: int = 0):
    """Keep the first n pages of the crawl (0: all); the rest are drops with a reason."""
    for i, doc in enumerate(docs):
        if n and i >= n:
            accounting.drop(doc.id, "take_first", "beyond_data.max_records")
        else:
            yield doc


def edu_scorer(labels: list[dict], pages, texts: dict, seed: int):
    """Lab 01's FineWeb-Edu-style scorer: fitted on the teacher's grades of half the labelled
    articles (split by article, so copies of one article never straddle the split)."""
    import numpy as np

    from ..data import fit_quality_scorer

    label_of = {label["url"]: label for label in labels}
    keepable = [p for p in pages if p.metadata.get("url") in label_of
                and label_of[p.metadata["url"]]["keep"] and texts.get(p.id)]
    articles = sorted({label_of[p.metadata["url"]]["doc_id"] for p in keepable})
    if len(articles) < 4:
        raise LabkitError("the crawl's labels hold fewer than 4 kept articles: the edu scorer "
                          "cannot be fitted; set data.quality_filters = false")
    train = set(np.array(articles)[np.random.default_rng(seed).random(len(articles)) < 0.5])
    chosen = [p for p in keepable if label_of[p.metadata["url"]]["doc_id"] in train]
    return fit_quality_scorer([texts[p.id] for p in chosen],
                              [label_of[p.metadata["url"]]["edu_score"] for p in chosen])


def data_stage(ctx: StageContext) -> dict:
    """The crawl -> lab 01's pipeline -> the kept pages, plus the top-up: the pre-training corpus
    (corpus.jsonl), with every drop and its reason (drops.jsonl) and the funnel (funnel.json)."""
    from ..data import (
        SETTINGS,
        Accounting,
        Document,
        extract_main_text,
        quality_score_filter,
        read_warc,
        run_pipeline,
    )
    from ..data.checkpoint import cleaning_steps
    from ..loaders import load_records

    d, seed = ctx.cfg["data"], ctx.cfg["run"]["seed"]
    s = SETTINGS["cpu"]  # FineWeb's published thresholds; the profile only changes lab sizes
    labels = load_records("crawl_labels")
    accounting = Accounting()
    pages = list(read_warc(warc_path(ctx.cfg), accounting))
    taken = pages[:d["max_records"] or None]
    main_text = {p.text: extract_main_text(p.text) for p in taken}  # once: the scorer reuses it
    texts = {p.id: main_text[p.text] for p in taken}
    score_step = None
    if d["quality_filters"]:
        # The scorer learns from the shipped crawl's grades, whatever crawl is being cleaned.
        graded = taken if d["warc"] == "shipped" else list(read_warc(sample_path(
            "crawl/crawl.warc.gz")))
        graded_text = texts if d["warc"] == "shipped" else {p.id: extract_main_text(p.text)
                                                            for p in graded}
        score_step = functools.partial(quality_score_filter,
                                       model=edu_scorer(labels, graded, graded_text, seed),
                                       threshold=d["edu_threshold"])
    steps = [functools.partial(take_first, n=d["max_records"])] if d["max_records"] else []
    steps += cleaning_steps(SimpleNamespace(**s), extractor=main_text.__getitem__,
                            quality_filters=d["quality_filters"], dedup=d["dedup"],
                            score_step=score_step)
    kept, table = run_pipeline(steps, pages, accounting)

    # The top-up: a seeded slice of the clean-corpus documents the crawl's pages were not made
    # from, through the same score filter as the crawl (its other steps need HTML or a crawl).
    crawl_sources = {i for label in labels for i in (label.get("doc_ids") or [])}
    pool = [r for r in load_records("corpus") if r["id"] not in crawl_sources]
    sampled = [Document(r["id"], r["text"], {"genre": r["genre"]})
               for r in _seeded_sample(pool, ctx.cfg["corpus"]["topup_documents"], seed)]
    topup_accounting = Accounting()
    topup, topup_table = run_pipeline([score_step] if score_step else [], sampled,
                                      topup_accounting)
    rows = ([{"id": doc.id, "source": "crawl", "url": doc.metadata.get("url"), "text": doc.text}
             for doc in kept] + [{"id": doc.id, "source": "topup", "url": None, "text": doc.text}
                                 for doc in topup])
    if not rows:
        raise LabkitError("the pipeline kept no page and corpus.topup_documents = 0: there is "
                          "nothing to pre-train on")
    write_jsonl(ctx.out / "corpus.jsonl", rows)
    write_jsonl(ctx.out / "drops.jsonl", (
        {"id": i, "source": source, "step": st, "reason": r}
        for source, acc in (("crawl", accounting), ("topup", topup_accounting))
        for i, st, r in acc.drops))
    funnel = {"crawl": table[["step", "in", "kept", "dropped"]].to_dict("records"),
              "topup": topup_table[["step", "in", "kept", "dropped"]].to_dict("records")}
    (ctx.out / "funnel.json").write_text(json.dumps(funnel, indent=1) + "\n")
    genres = Counter(doc.metadata["genre"] for doc in topup)
    return {
        "records_in": int(table["in"].iloc[0]), "crawl_pages": len(taken),
        "crawl_kept": len(kept), "topup_sampled": len(sampled), "topup_documents": len(topup),
        "topup_genres": dict(genres.most_common()), "documents": len(rows),
        "crawl_chars": sum(len(doc.text) for doc in kept),
        "topup_chars": sum(len(doc.text) for doc in topup),
        "crawl_words": sum(len(doc.text.split()) for doc in kept),
        "steps": [r["step"] for r in funnel["crawl"]],
        "drops": len(accounting.drops) + len(topup_accounting.drops),
        "pii_replaced": sum(doc.metadata.get("pii_emails", 0) + doc.metadata.get("pii_ips", 0)
                            for doc in kept),
    }


def _data_inputs(cfg: dict) -> list[Path]:
    return [warc_path(cfg), sample_path("crawl/labels.jsonl"), sample_path("corpus/train.jsonl.gz")]


# --- tokenizer -------------------------------------------------------------------------------


def corpus_texts(folder: Path) -> list[str]:
    return [r["text"] for r in read_jsonl(folder / "corpus.jsonl")]


def tokenizer_stage(ctx: StageContext) -> dict:
    """Byte-level BPE on the pre-training corpus, with the world's special tokens and chat
    template (what TRL's SFT and DPO trainers need)."""
    from ..data import bytes_per_token
    from ..world.tokenizer import train_tokenizer

    texts = corpus_texts(ctx.upstream["data"])
    # The model's context is set when the model is saved with it (pretrain.context): the
    # tokenizer itself does not depend on it.
    tok = train_tokenizer(texts, ctx.cfg["tokenizer"]["vocab_size"], max_len=2048)
    tok.save_pretrained(ctx.out / "tokenizer")
    return {"vocab_size": len(tok), "trained_on_chars": sum(map(len, texts)),
            "corpus_bytes_per_token": bytes_per_token(tok.backend_tokenizer, texts)}


# --- pre-training ----------------------------------------------------------------------------


def pretrain_stage(ctx: StageContext) -> dict:
    """Lab 02's loop (labkit.pretrain.train) with a lab 05 schedule, from scratch."""
    import platform

    import torch
    from transformers import AutoTokenizer

    from ..loaders import load_records
    from ..models import ModelShape, build_causal_lm, count_parameters
    from ..pretrain import RandomBlocks, TrainConfig, eval_loss, fixed_batches, pack_documents
    from ..pretrain import train as train_loop
    from ..pretrain.loop import flops_per_token
    from ..schedules import make_schedule

    p, seed = ctx.cfg["pretrain"], ctx.cfg["run"]["seed"]
    tok = AutoTokenizer.from_pretrained(ctx.upstream["tokenizer"] / "tokenizer")
    texts = corpus_texts(ctx.upstream["data"])
    stream = pack_documents(tok(texts, add_special_tokens=False)["input_ids"], tok.eos_token_id)
    if len(stream) <= p["seq_len"]:
        raise LabkitError(f"the corpus holds {len(stream)} tokens, too few for pretrain.seq_len = "
                          f"{p['seq_len']}; raise corpus.topup_documents")
    held_texts = [r["text"] for r in load_records("heldout")[:100]]
    held_stream = pack_documents(tok(held_texts, add_special_tokens=False)["input_ids"],
                                 tok.eos_token_id)
    held = fixed_batches(RandomBlocks(held_stream, p["seq_len"], 16, seed=0, device=ctx.device), 4)
    model = build_causal_lm(len(tok), ModelShape(d_model=p["d_model"], n_layer=p["n_layer"],
                                                 n_head=p["n_head"], max_len=p["context"]),
                            seed=seed, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.to(ctx.device)
    schedule = make_schedule(p["schedule"], total_steps=p["steps"],
                             warmup_steps=p["warmup_steps"], min_lr_ratio=p["min_lr_ratio"])
    bf16 = ctx.device == "cuda" and torch.cuda.is_bf16_supported()
    config = TrainConfig(steps=p["steps"], lr=p["lr"], warmup_steps=p["warmup_steps"],
                         schedule=schedule, dtype="bf16" if bf16 else None,
                         log_every=max(1, p["steps"] // 50), eval_every=max(1, p["steps"] // 5),
                         seed=seed, progress=ctx.progress, desc="pretrain")
    batches = RandomBlocks(stream, p["seq_len"], p["batch_size"], seed=seed, device=ctx.device)
    history = train_loop(model, batches, config, eval_fn=lambda m: eval_loss(m, held))
    model.eval()
    tok.model_max_length = p["context"]
    _save_model(model, tok, ctx.out / "model")
    history.to_csv(ctx.out / "history.csv", index=False)
    tokens = p["steps"] * p["batch_size"] * p["seq_len"]
    params = count_parameters(model)
    wall = float(history["elapsed_s"].iloc[-1])
    return {
        "parameters": params, "tokens_seen": tokens, "corpus_tokens": int(len(stream)),
        "epochs": tokens / len(stream),
        "flops_6nd": 6.0 * params * tokens,
        "flops_counted": flops_per_token(model, p["seq_len"]) * tokens,
        "train_wall_s": round(wall, 2), "tokens_per_s": tokens / wall,
        "final_train_loss": float(history["loss"].iloc[-1]),
        "heldout_loss": float(history["eval_loss"].dropna().iloc[-1]),
        "device": f"{ctx.device}, {torch.get_num_threads()} thread(s), {platform.machine()}",
        "bf16": bf16,
    }


# --- SFT and DPO -----------------------------------------------------------------------------


def sft_stage(ctx: StageContext) -> dict:
    """Lab 06's recipe on your base model: TRL's SFTTrainer, loss on the assistant tokens."""
    from ..align import merge_lora, sft_train
    from ..loaders import load_records

    s, seed = ctx.cfg["sft"], ctx.cfg["run"]["seed"]
    base, tok = _load(ctx.upstream["pretrain"] / "model", ctx.device)
    records = load_records(INSTRUCTIONS[s["dataset"]])
    # Every run sees steps x batch conversations (lab 06): a sample of that many, or all.
    seen = random.Random(seed).sample(records, min(s["steps"] * s["batch_size"], len(records)))
    lora = {"r": s["lora_r"], "lora_alpha": s["lora_alpha"]} if s["method"] == "lora" else None
    run = sft_train(base, tok, seen, steps=s["steps"], lr=s["lr"], batch_size=s["batch_size"],
                    lora=lora, seed=seed, warmup_steps=s["warmup_steps"],
                    max_length=ctx.cfg["pretrain"]["context"], device=ctx.device, inplace=True)
    model = merge_lora(run.model, copy_first=False) if lora else run.model
    _save_model(model, tok, ctx.out / "model")
    run.history.to_csv(ctx.out / "history.csv", index=False)
    defects = sum(1 for r in seen if r.get("defect"))
    return {**run.summary(), "dataset": s["dataset"], "examples": len(seen),
            "examples_with_defects": defects,
            "conversations_seen": s["steps"] * s["batch_size"]}


def dpo_stage(ctx: StageContext) -> dict:
    """Lab 08's recipe on your SFT model: LoRA DPO on the preference pairs' train split."""
    from ..align import merge_lora, train_preference
    from ..loaders import load_records

    d, seed = ctx.cfg["dpo"], ctx.cfg["run"]["seed"]
    sft, tok = _load(ctx.upstream["sft"] / "model", ctx.device)
    train_split = [p for p in load_records("preferences") if p["split"] == "train"]
    # Every run sees steps x batch pairs: a seeded sample of that many (TRL tokenizes only them).
    seen = random.Random(seed).sample(train_split, min(d["steps"] * d["batch_size"],
                                                       len(train_split)))
    pairs, too_long = fitting_pairs(seen, tok, ctx.cfg["pretrain"]["context"])
    run = train_preference(d["method"], sft, tok, pairs, steps=d["steps"], lr=d["lr"],
                           beta=d["beta"], batch_size=d["batch_size"], seed=seed,
                           lora={"r": d["lora_r"], "lora_alpha": d["lora_alpha"]},
                           warmup_steps=d["warmup_steps"], scheduler="cosine",
                           nll_weight=d["nll_weight"], device=ctx.device, inplace=True)
    model = merge_lora(run.model, copy_first=False)
    _save_model(model, tok, ctx.out / "model")
    run.history.to_csv(ctx.out / "history.csv", index=False)
    return {**run.summary(), "pairs_seen": d["steps"] * d["batch_size"], "train_pairs": len(pairs),
            "defects": dict(Counter(p["defect"] for p in pairs).most_common()),
            "pairs_longer_than_context": too_long}


def fitting_pairs(pairs: list[dict], tok, context: int) -> tuple[list[dict], list[str]]:
    """The pairs whose prompt + answer fit the model's context in chat-template tokens, and the
    ids of those that do not (counted in the stage's metrics, never dropped silently)."""
    from ..align.dpo import encode_response

    kept, too_long = [], []
    for pair in pairs:
        longest = max(len(encode_response(tok, pair["prompt"], pair[k])[0])
                      for k in ("chosen", "rejected"))
        (kept if longest <= context else too_long).append(pair if longest <= context
                                                          else pair["id"])
    if not kept:
        raise LabkitError(f"no preference pair fits pretrain.context = {context} tokens")
    return kept, too_long


# --- evaluation ------------------------------------------------------------------------------


def eval_sets(cfg: dict) -> dict:
    """The held-out texts, questions, pairs and tasks every model is measured on (seeded)."""
    from ..evaluation import load_code_tasks
    from ..loaders import load_records

    e, seed = cfg["eval"], cfg["run"]["seed"]
    tasks = load_code_tasks(sample_path("benchmarks/code_tasks.jsonl"))
    return {
        "texts": [r["text"] for r in load_records("heldout")[:e["heldout_docs"]]],
        "items": _seeded_sample(load_records("knowledge_mc"), e["knowledge_items"], seed),
        "questions": load_records("sft_eval")[:e["sft_questions"]],
        "pairs": [p for p in load_records("preferences") if p["split"] == "test"][
            :e["preference_pairs"]],
        "tasks": tasks[:: max(1, len(tasks) // e["code_tasks"])][:e["code_tasks"]],
    }


def sample_code(model, tok, tasks, n: int, seed: int, max_new_tokens: int) -> dict:
    """n completions per code task: top-k sampling from a fixed seed, stopped at the end of the
    function (lab 09's recipe: the prompt without its final newline, EOS as the first token)."""
    import torch

    device = next(model.parameters()).device
    out = {}
    for i, task in enumerate(tasks):
        prompt = task["prompt"].removesuffix("\n")
        ids = torch.tensor([[tok.eos_token_id] + tok(prompt, add_special_tokens=False)[
            "input_ids"]], device=device)
        torch.manual_seed(seed + i)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=True, top_k=CODE_TOP_K, temperature=CODE_TEMPERATURE,
                                 num_return_sequences=n, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, stop_strings=list(CODE_STOP),
                                 tokenizer=tok)
        texts = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
        out[task["task_id"]] = [_cut_at_stop(t.removeprefix("\n")) for t in texts]
    return out


def _cut_at_stop(text: str) -> str:
    ends = [text.find(s) for s in CODE_STOP if s in text]
    return text[:min(ends)] if ends else text


def knowledge_prompt_text(item: dict) -> str:
    """What a leak of a knowledge item looks like: the rendered question and its answer."""
    from ..evaluation import render_prompt

    return render_prompt(item) + " " + item["choices"][item["answer"]]


def measure_models(base, sft, dpo, tok, cfg: dict, sets: dict, corpus: list[str],
                   beta: float) -> tuple[dict, dict]:
    """Lab 09's measurements of one family of models (yours, or the shipped ones):
    base: bits per byte, knowledge test, pass@k, contamination of the test against `corpus`;
    SFT and DPO: held-out chat answers; DPO: held-out preference accuracy (`beta` scales the
    implicit reward of the DPO recipe that trained it). Returns (metrics, per-item frames)."""
    from ..align import evaluate_answers, preference_accuracy, score_pairs, summarize_answers
    from ..evaluation import (
        SandboxLimits,
        build_ngram_index,
        evaluate_completions,
        find_leaks,
        item_text,
        pass_at_k_table,
        perplexity,
        score_items,
    )

    e, seed = cfg["eval"], cfg["run"]["seed"]
    out: dict = {}
    ppl = perplexity(base, tok, sets["texts"])
    out["heldout"] = {"bits_per_byte": ppl.bits_per_byte, "perplexity": ppl.perplexity,
                      "tokens": ppl.n_tokens, "bytes": ppl.n_bytes,
                      "bytes_per_token": ppl.n_bytes / ppl.n_tokens}
    scores = score_items(base, tok, sets["items"])
    correct, n = int(scores["acc"].sum()), len(scores)
    index = build_ngram_index(corpus, e["contamination_n"])
    leaks = find_leaks(sets["items"], index, text_of=knowledge_prompt_text)
    clean = ~leaks["contaminated"].to_numpy()
    out["knowledge"] = {"acc": correct / n, "correct": correct, "items": n,
                        "ci95": list(_wilson(correct, n)),
                        "acc_norm": float(scores["acc_norm"].mean()),
                        "flagged_items": int((~clean).sum()),
                        "acc_clean_items": float(scores["acc"].to_numpy()[clean].mean())
                        if clean.any() else None}
    completions = sample_code(base, tok, sets["tasks"], e["code_samples"], seed,
                              e["max_new_tokens"])
    results = evaluate_completions(sets["tasks"], completions, timeout=SANDBOX_TIMEOUT_S,
                                   limits=SandboxLimits(memory_mb=SANDBOX_MEMORY_MB),
                                   workers=SANDBOX_WORKERS)
    table = pass_at_k_table(results, e["pass_k"]).set_index("k")["pass@k"]
    code_leaks = find_leaks(sets["tasks"], index, text_of=item_text)
    out["code"] = {"tasks": len(sets["tasks"]), "samples": e["code_samples"],
                   "pass_at_k": {str(k): float(v) for k, v in table.items()},
                   "outcomes": results["outcome"].value_counts().to_dict(),
                   "flagged_tasks": int(code_leaks["contaminated"].sum())}
    answers = {name: evaluate_answers(m, tok, sets["questions"], max_new_tokens=e["max_new_tokens"])
               for name, m in (("sft", sft), ("dpo", dpo))}
    summary = summarize_answers(answers)
    out["answers"] = {name: {k: float(summary.loc[name, k]) for k in
                             ("exact_match", "judge_ok", "correct", "repetitive", "on_topic")}
                      for name in answers}
    out["answers"]["questions"] = len(sets["questions"])
    pair_scores = score_pairs(dpo, tok, sets["pairs"], ref_model=sft)
    out["preferences"] = {
        "pairs": len(sets["pairs"]),
        "sft_likelihood": float(preference_accuracy(pair_scores.reference(), None, None, None,
                                                    "likelihood").loc["all", "accuracy"]),
        "dpo_likelihood": float(preference_accuracy(pair_scores, None, None, None,
                                                    "likelihood").loc["all", "accuracy"]),
        "dpo_implicit_reward": float(preference_accuracy(pair_scores, None, None, None, "dpo",
                                                         beta=beta).loc["all", "accuracy"]),
        "kl_from_sft": pair_scores.kl,
    }
    details = {"knowledge": scores.assign(contaminated=leaks["contaminated"]),
               "code": results, "answers": answers}
    return out, details


def evaluate_stage(ctx: StageContext) -> dict:
    """Your base, SFT and DPO models measured as lab 09 measures the shipped ones."""
    base, tok = _load(ctx.upstream["pretrain"] / "model", ctx.device)
    sft, _ = _load(ctx.upstream["sft"] / "model", ctx.device)
    dpo, _ = _load(ctx.upstream["dpo"] / "model", ctx.device)
    metrics, details = measure_models(base, sft, dpo, tok, ctx.cfg, eval_sets(ctx.cfg),
                                      corpus_texts(ctx.upstream["data"]), ctx.cfg["dpo"]["beta"])
    _write_details(ctx.out, details)
    return metrics


def _write_details(folder: Path, details: dict) -> None:
    details["knowledge"].drop(columns=["logprobs", "chars"]).to_json(
        folder / "knowledge_scores.jsonl", orient="records", lines=True)
    details["code"].to_json(folder / "code_results.jsonl", orient="records", lines=True)
    for name, frame in details["answers"].items():
        frame.to_json(folder / f"answers_{name}.jsonl", orient="records", lines=True)


def _eval_inputs(cfg: dict) -> list[Path]:
    return [sample_path(f) for f in EVAL_FILES]


def _sft_inputs(cfg: dict) -> list[Path]:
    from ..loaders import DATASETS

    return [sample_path(DATASETS[INSTRUCTIONS[cfg["sft"]["dataset"]]])]


def _dpo_inputs(cfg: dict) -> list[Path]:
    return [sample_path("preferences/pairs.jsonl")]


# --- quantization ----------------------------------------------------------------------------


def calibration_blocks(tok, texts: list[str], n: int, seq_len: int):
    """GPTQ/AWQ calibration: the first n blocks of seq_len tokens of the model's own corpus."""
    from ..pretrain import pack_blocks, pack_documents

    ids, total = [], 0
    for start in range(0, len(texts), 256):  # tokenize only as much text as the blocks need
        chunk = tok(texts[start:start + 256], add_special_tokens=False)["input_ids"]
        ids += chunk
        total += sum(len(x) + 1 for x in chunk)
        if total >= n * seq_len:
            break
    return pack_blocks(pack_documents(ids, tok.eos_token_id), seq_len)[:n]


def measure_quantized(model, tok, cfg: dict, sets: dict, calib_texts: list[str], device: str,
                      folder: Path | None = None) -> dict:
    """Lab 10's trade-off bench: fp32 and each configured scheme, measured on the held-out
    texts and the knowledge items; quantized weights saved as safetensors in `folder`."""
    from ..quant.tradeoff import TradeoffBench

    q = cfg["quant"]
    calib = calibration_blocks(tok, calib_texts, q["calib_samples"], q["calib_seq_len"])
    items = sets["items"][:q["knowledge_items"]]
    # latency is not on the card: the shortest timing the bench allows
    bench = TradeoffBench(model, tok, sets["texts"], items, calib.to(device), latency_tokens=2,
                          device=device, keep_models=folder is not None)
    group = q["group_size"] or None
    rows = [bench.measure("fp32")]
    for scheme in q["schemes"]:
        bits = {"nf4": 4, "llm_int8": 8}.get(scheme, q["bits"])
        rows.append(bench.measure(scheme, bits, None if scheme in ("nf4", "llm_int8") else group))
    if folder is not None:
        from safetensors.torch import save_model

        for (scheme, bits, _group), quantized in bench.models.items():
            if scheme != "fp32":
                save_model(quantized, str(folder / f"{scheme}-{bits}bit.safetensors"))
    return {r["label"]: {k: r[k] for k in ("scheme", "bits", "group_size", "stored_bytes",
                                          "linear_bits", "perplexity", "knowledge_acc",
                                          "ms_per_token")} for r in rows}


def quantize_stage(ctx: StageContext) -> dict:
    """Your final (DPO) model quantized with each configured scheme, measured."""
    model, tok = _load(ctx.upstream["dpo"] / "model", ctx.device)
    rows = measure_quantized(model, tok, ctx.cfg, eval_sets(ctx.cfg),
                             corpus_texts(ctx.upstream["data"]), ctx.device, ctx.out)
    return {"rows": rows}


# --- the shipped models ----------------------------------------------------------------------

SHIPPED_FILES = ("models/base/model.safetensors", "models/base/metrics.json",
                 "models/sft-adapter/adapter_model.safetensors", "models/sft-adapter/metrics.json",
                 "models/dpo-adapter/adapter_model.safetensors", "models/dpo-adapter/metrics.json",
                 "corpus/train.jsonl.gz", "tokenizer/tokenizer.json")


def shipped_stage(ctx: StageContext) -> dict:
    """The shipped base, SFT and DPO models through the same measurements as yours, with the
    compute each was trained with (from their model cards' metrics)."""
    from ..align import DPO_ADAPTER_RECIPE
    from ..loaders import load_adapter_model, load_model, load_records, load_tokenizer

    tok = load_tokenizer()
    base = load_model("base", device=ctx.device)
    sft = load_adapter_model("sft", merge=True, device=ctx.device)
    dpo = load_adapter_model("dpo", merge=True, device=ctx.device)
    corpus = [r["text"] for r in load_records("corpus")]
    sets = eval_sets(ctx.cfg)
    metrics, details = measure_models(base, sft, dpo, tok, ctx.cfg, sets, corpus,
                                      DPO_ADAPTER_RECIPE["beta"])
    _write_details(ctx.out, details)
    metrics["quant"] = measure_quantized(dpo, tok, ctx.cfg, sets, corpus, ctx.device)
    cards = {name: json.loads(sample_path(f"models/{folder}/metrics.json").read_text())
             for name, folder in (("base", "base"), ("sft", "sft-adapter"), ("dpo", "dpo-adapter"))}
    b, s, d = cards["base"], cards["sft"], cards["dpo"]
    metrics["compute"] = {
        "parameters": b["parameters"], "tokens_seen": b["tokens_seen"],
        "corpus_tokens": b["corpus_tokens"], "corpus_documents": len(corpus),
        "flops_6nd": 6.0 * b["parameters"] * b["tokens_seen"], "train_wall_s": b["wall_s"],
        "device": b["device"], "vocab_size": len(tok),
        "sft_conversations_seen": s["recipe"]["steps"] * s["recipe"]["batch_size"],
        "sft_wall_s": s["wall_s"], "sft_method": s.get("method", "LoRA"),
        "dpo_pairs_seen": d["pairs_seen"], "dpo_wall_s": d["wall_s"],
    }
    return metrics


def _shipped_inputs(cfg: dict) -> list[Path]:
    return [sample_path(f) for f in SHIPPED_FILES] + _eval_inputs(cfg)


STAGES = [
    Stage("data", "the crawl through lab 01's pipeline, plus the corpus top-up",
          ("data", "corpus"), (), _data_inputs, data_stage),
    Stage("tokenizer", "byte-level BPE trained on your corpus", ("tokenizer",),
          ("data",), lambda cfg: [], tokenizer_stage),
    Stage("pretrain", "a causal LM from scratch (lab 02 loop, lab 05 schedule)", ("pretrain",),
          ("data", "tokenizer"), lambda cfg: [sample_path("corpus/heldout.jsonl")],
          pretrain_stage),
    Stage("sft", "supervised fine-tuning with TRL (lab 06)", ("sft", "pretrain"), ("pretrain",),
          _sft_inputs, sft_stage),
    Stage("dpo", "DPO with TRL (lab 08)", ("dpo",), ("sft",), _dpo_inputs, dpo_stage),
    Stage("evaluate", "perplexity, knowledge, pass@k, contamination (lab 09)", ("eval", "dpo"),
          ("data", "pretrain", "sft", "dpo"), _eval_inputs, evaluate_stage),
    Stage("quantize", "NF4, LLM.int8 and GPTQ, measured (lab 10)", ("quant", "eval"),
          ("data", "dpo"), _eval_inputs, quantize_stage),
    Stage("shipped", "the shipped models through the same measurements", ("eval", "quant"),
          (), _shipped_inputs, shipped_stage),
]
STAGE_NAMES = tuple(s.name for s in STAGES)
