"""Each lab's core measurement on a model (or crawl) of your own: the "Your own model" cells.

Every lab ends with a short section whose code runs the lab's core measurement on a Hugging
Face hub id (with the network and `LABKIT_ONLINE=1`) or a local folder (config.json,
model.safetensors and the tokenizer files, as `save_pretrained` writes them). `CELLS` holds
that code, one entry per lab: its inputs (the model id and a few sizes, assigned at the top of
the notebook cell, for the learner to change) and the lines that do the work, written with
labkit's public functions only. The cells are not executed in CI (they would reach the hub);
tests/test_standard_models.py runs each one's code on small local standard models instead.

Labs 01 and 03-05 are not about a given model: lab 01 runs the whole pipeline on a WARC file of
your own crawl, lab 03 sizes the training memory of your model's parameter count on N GPUs,
lab 04 measures how your model's real gradients fit fp16 and bf16, and lab 05 runs the LR range
test on a tiny GPT of the width you choose.

`expect` says what to expect on GPT-2 (124M), SmolLM2-135M and Qwen2.5-0.5B and how long a
Colab T4 takes. Nothing here reaches the hub, so those are estimates from published sizes and
the measured CPU runs of the labs, labelled as such, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LabkitError

# Every cell may use these names, defined at the top of each lab.
PRELUDE = """\
import labkit
from labkit.loaders import load_model, load_records, load_tokenizer
from labkit.models import count_parameters

profile = labkit.profile()
"""


@dataclass(frozen=True)
class OwnModelCell:
    """One lab's "Your own model" cell: inputs (name -> default) and the code that uses them."""

    lab: str
    title: str
    inputs: dict = field(default_factory=dict)
    code: str = ""
    expect: str = ""

    def source(self) -> str:
        """The notebook cell: one assignment per input (the learner edits these), then the code."""
        lines = [f"{name} = {value!r}" for name, value in self.inputs.items()]
        return "\n".join(lines) + "\n\n" + self.code


_ESTIMATE = "(estimate, not measured here: nothing in this project reaches the hub)"

CELLS: dict[str, OwnModelCell] = {
    "00": OwnModelCell(
        "00", "Your own model",
        {"model_id": "gpt2", "prompt": "The capital of France is"},
        """\
from labkit.align import generate_answers

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
text, _ = generate_answers(model, tok, [prompt], max_new_tokens=20, chat=False)[0]
print(f"{model_id}: {count_parameters(model):,} parameters; {prompt!r} -> {text!r}")
""",
        f"GPT-2 has 124,439,808 parameters (embedding tied to the output layer), SmolLM2-135M "
        f"about 135M, Qwen2.5-0.5B about 494M (their model cards); each continues the prompt in "
        f"fluent English. A T4 loads and answers in under a minute, most of it the download "
        f"(0.25-1 GB) {_ESTIMATE}."),
    "01": OwnModelCell(
        "01", "Your own crawl",
        {"warc_path": "my_crawl.warc.gz", "languages": ("en",)},
        """\
import functools

from labkit.data import (Accounting, c4_filter, exact_dedup, extract, gopher_quality,
                         gopher_repetition, language_filter, minhash_dedup, pii_scrub,
                         read_warc, run_pipeline)

steps = [extract, functools.partial(language_filter, languages=languages), gopher_repetition,
         gopher_quality, c4_filter, exact_dedup, minhash_dedup, pii_scrub]
crawl = Accounting()
kept, table = run_pipeline(steps, read_warc(warc_path, crawl), crawl)
print(table[["step", "in", "kept", "dropped", "reasons"]].to_string(index=False))
""",
        "Any WARC or WARC.gz (one Common Crawl WARC file holds tens of thousands of records, "
        "~1 GB). Expect most pages to be dropped, each with its reason: menus and boilerplate "
        "go at extraction, other languages at language ID, and the quality rules remove far more "
        "than on clean text. The pipeline runs on the CPU (a GPU does not help); at tens of "
        f"pages per second a full WARC file takes tens of minutes {_ESTIMATE}."),
    "02": OwnModelCell(
        "02", "Your own model",
        {"model_id": "gpt2", "n_texts": 100},
        """\
import math

from labkit.evaluation import perplexity
from labkit.pretrain.scaling import chinchilla_loss, training_flops

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
n = count_parameters(model)
ppl = perplexity(model, tok, [d["text"] for d in load_records("heldout")[:n_texts]])
print(f"{model_id}: {n / 1e6:.0f}M parameters, causal LM loss on the world's held-out text "
      f"{math.log(ppl.perplexity):.2f} nats per token; a compute-optimal run of this size "
      f"(20 tokens per parameter) is {20 * n / 1e9:.1f}B tokens, "
      f"{training_flops(n, 20 * n):.1e} FLOPs, Chinchilla's predicted loss "
      f"{chinchilla_loss(n, 20 * n):.2f}")
""",
        "A compute-optimal GPT-2 (124M) needs ~2.5B tokens; SmolLM2-135M was trained on 2T "
        "tokens and Qwen2.5-0.5B on 18T (their reports), hundreds of times past the Chinchilla "
        "point, as small models meant for inference are. The world's held-out text "
        "is full of invented names, so these models' loss on it is well above their loss on "
        f"English prose. Seconds on a T4 after the download {_ESTIMATE}."),
    "03": OwnModelCell(
        "03", "Your own model",
        {"model_id": "gpt2", "gpus": 8},
        """\
import pandas as pd

from labkit.parallel.planner import model_state_bytes

n = count_parameters(load_model(model_id))
gib = pd.DataFrame({f"ZeRO-{z}" if z else "DP": model_state_bytes(n, dp=gpus, zero=z)
                    for z in range(4)}) / 2**30
print(f"{model_id}: {n:,} parameters; mixed-precision Adam state per GPU on {gpus} GPUs (GiB)")
print(gib.round(3).to_string())
""",
        "16 bytes per parameter without ZeRO: GPT-2 ~1.85 GiB per GPU, Qwen2.5-0.5B ~7.4 GiB "
        "(weights, gradients and Adam state; activations come on top). ZeRO-3 on 8 GPUs divides "
        "all three by 8. Computed from the parameter count, so this is exact for the model, "
        "and takes seconds."),
    "04": OwnModelCell(
        "04", "Your own model",
        {"model_id": "gpt2", "tokens": 256},
        """\
from labkit.precision import range_shares_table
from labkit.precision.measure import capture_tensors

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
text = " ".join(d["text"] for d in load_records("heldout")[:50])
ids = tok(text, return_tensors="pt")["input_ids"][:, :tokens].to(profile.device)
tensors = capture_tensors(model, {"input_ids": ids, "labels": ids})
print(range_shares_table(tensors["gradients"], formats=["fp16", "bf16"]).round(4).to_string())
""",
        "A pretrained model's gradients on one batch: a visible share of them sits below "
        "fp16's normal range (subnormal or flushed to zero) and almost none below bf16's, which "
        "is why fp16 training needs loss scaling. One forward and backward pass: seconds on a "
        f"T4 {_ESTIMATE}."),
    "05": OwnModelCell(
        "05", "Your own model size",
        {"d_model": 256, "steps": 60},
        """\
from types import SimpleNamespace

from labkit.schedules import lr_range_test
from labkit.schedules.runs import range_test_step, tiny_setup

wide = SimpleNamespace(**{**vars(profile.settings("schedules")), "d_model": d_model,
                          "n_head": max(1, d_model // 64)})
sweep = lr_range_test(range_test_step(tiny_setup(wide, device=profile.device)),
                      min_lr=1e-5, max_lr=1.0, num_steps=steps)
print(f"d_model {d_model} (a multiple of 64): the range test suggests a peak LR of "
      f"{sweep.suggestion:.2g} ({sweep.stop_reason})")
""",
        "The suggested peak falls as the model widens (the lab's tiny model takes ~1e-2; GPT-3 "
        "Small, d_model 768, trained at 6e-4 in the GPT-3 paper). A 60-step sweep of a 2-layer "
        f"model is seconds on a T4 and under a minute on a CPU at d_model 256 {_ESTIMATE}."),
    "06": OwnModelCell(
        "06", "Your own model",
        {"model_id": "gpt2", "steps": 100, "batch_size": 8, "lr": 2e-4, "questions": 50},
        """\
from labkit.align import evaluate_answers, sft_train, summarize_answers
from labkit.align.sft import PLAIN_CHAT_TEMPLATE

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
tok.chat_template = PLAIN_CHAT_TEMPLATE  # "User: ...\\nAssistant: ...<eos>": eos ends a turn
conversations = load_records("instructions_curated")[: steps * batch_size]
run = sft_train(model, tok, conversations, steps=steps, lr=lr, batch_size=batch_size, lora=True,
                device=profile.device)
asked = load_records("sft_eval")[:questions]
print(summarize_answers({"base": evaluate_answers(model, tok, asked),
                         "sft": evaluate_answers(run.model, tok, asked)}).round(2).to_string())
""",
        "The base model rambles and rarely ends its turn; after LoRA SFT it answers in one "
        "sentence and stops at eos (the judge's ended_turn rises). Exact match stays near 0: "
        "the questions are about the world's invented entities, which a hub model never saw. "
        "100 LoRA steps of 8 conversations: about 1-2 minutes on a T4 for GPT-2 or "
        f"SmolLM2-135M, 3-5 for Qwen2.5-0.5B {_ESTIMATE}."),
    "07": OwnModelCell(
        "07", "Your own model",
        {"model_id": "gpt2", "steps": 100, "batch_size": 8, "lr": 1e-4, "pairs": 200},
        """\
from labkit.align import reward_accuracy, reward_model_from, train_reward_model
from labkit.align.sft import PLAIN_CHAT_TEMPLATE

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
tok.chat_template = PLAIN_CHAT_TEMPLATE
prefs = load_records("preferences")
train = [p for p in prefs if p["split"] == "train"]
run = train_reward_model(reward_model_from(model, tok), tok, train[: steps * batch_size],
                         steps=steps, batch_size=batch_size, lr=lr, device=profile.device)
print(reward_accuracy(run.model, tok, [p for p in prefs if p["split"] == "test"][:pairs])
      .round(2).to_string())
""",
        "As in the lab, the reward model learns the surface defects (repetition, rudeness, "
        "verbosity) far above chance within 100 steps and stays near chance on wrong facts "
        "about invented entities. A full fine-tune of GPT-2 for 100 steps of 8 pairs: a few "
        f"minutes on a T4; Qwen2.5-0.5B's fp32 Adam state (~8 GB) still fits its 15 GB "
        f"{_ESTIMATE}."),
    "08": OwnModelCell(
        "08", "Your own model",
        {"model_id": "gpt2", "steps": 100, "batch_size": 8, "lr": 5e-5, "pairs": 200},
        """\
from labkit.align import preference_accuracy, train_preference
from labkit.align.sft import PLAIN_CHAT_TEMPLATE

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
tok.chat_template = PLAIN_CHAT_TEMPLATE
prefs = load_records("preferences")
train = [p for p in prefs if p["split"] == "train"]
run = train_preference("dpo", model, tok, train[: steps * batch_size], steps=steps,
                       batch_size=batch_size, lr=lr, device=profile.device)
print(preference_accuracy(run.model, model, tok,
                          [p for p in prefs if p["split"] == "test"][:pairs]).round(2).to_string())
""",
        "DPO with LoRA: held-out preference accuracy (the implicit reward beta*log(pi/ref)) "
        "rises well above 0.5 on the surface defects and much less on wrong facts, as in the "
        "lab. 100 steps of 8 pairs: a few minutes on a T4 for GPT-2 and SmolLM2-135M "
        f"{_ESTIMATE}."),
    "09": OwnModelCell(
        "09", "Your own model",
        {"model_id": "gpt2", "n_texts": 100, "n_items": 200},
        """\
from labkit.evaluation import perplexity, score_items

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
ppl = perplexity(model, tok, [d["text"] for d in load_records("heldout")[:n_texts]])
acc = score_items(model, tok, load_records("knowledge_mc")[:n_items])[["acc", "acc_norm"]].mean()
print(f"{model_id}: perplexity {ppl.perplexity:.1f} ({ppl.bits_per_byte:.3f} bits per byte) on "
      f"the world's held-out text; knowledge test acc {acc['acc']:.3f}, acc_norm "
      f"{acc['acc_norm']:.3f} (chance 0.25)")
""",
        "Hub models know nothing of the invented world: knowledge accuracy near chance (0.25), "
        "perplexity far above the shipped base model's, while bits per byte compares them "
        "across tokenizers. To score a hub model on real benchmarks, run lm-eval (section 5) "
        "with its own tasks. Under a minute on a T4 for all three models "
        f"{_ESTIMATE}."),
    "10": OwnModelCell(
        "10", "Your own model",
        {"model_id": "gpt2", "n_texts": 50, "n_items": 100, "calib_samples": 32,
         "group_size": 64},
        """\
from labkit.pretrain.data import pack_blocks, pack_documents
from labkit.quant.tradeoff import TradeoffBench, tradeoff_table

model, tok = load_model(model_id, device=profile.device), load_tokenizer(model_id)
docs = [tok(d["text"])["input_ids"] for d in load_records("corpus")[:8 * calib_samples]]
calib = pack_blocks(pack_documents(docs, tok.eos_token_id), 128)[:calib_samples]
bench = TradeoffBench(model, tok, [d["text"] for d in load_records("heldout")[:n_texts]],
                      load_records("knowledge_mc")[:n_items], calib, device=profile.device)
configs = [("fp32", 32, None), ("llm_int8", 8, None), ("nf4", 4, None), ("rtn", 4, group_size),
           ("gptq", 4, group_size), ("awq", 4, group_size)]
print(tradeoff_table([bench.measure(*c) for c in configs]).round(3).to_string())
""",
        "8-bit and NF4 barely move perplexity; RTN 4-bit costs a few percent to tens of "
        "percent and GPTQ/AWQ recover most of it (the GPTQ paper's OPT-125M: fp16 27.65, RTN "
        "4-bit 37.28, GPTQ 31.12 on WikiText-2). group_size must divide every layer's input "
        "size (64 fits GPT-2, SmolLM2 and Qwen2.5). GPTQ of a 124M model on 32 x 128 tokens: "
        f"about a minute on a T4; the whole table a few minutes {_ESTIMATE}."),
}


def cell(lab: str) -> OwnModelCell:
    """The "Your own model" cell of lab `lab` ("00" to "10")."""
    key = str(lab).zfill(2)
    if key not in CELLS:
        raise LabkitError(f"lab={lab!r} has no own-model cell; valid: {', '.join(CELLS)}")
    return CELLS[key]
