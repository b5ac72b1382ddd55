"""Supervised fine-tuning (lab 06): chat formatting, loss masks, TRL's SFTTrainer, LoRA, judging.

A base model continues text; SFT shows it conversations rendered with the tokenizer's chat
template and trains it to write the assistant turns. Which tokens carry loss is decided by the
template's `{% generation %}...{% endgeneration %}` markers: `apply_chat_template(...,
return_assistant_tokens_mask=True)` marks them, and everything else gets label -100. The same
mask is what TRL's `assistant_only_loss=True` uses, so the lab's picture and the trainer agree.

Training is TRL's `SFTTrainer` (full fine-tuning, or LoRA through peft); answers are greedy chat
completions stopped at `<|end|>`; a held-out question counts as answered when the fact's object
appears in the answer, and a rule-based judge checks the format (the turn ended, the sentence is
complete, no looping, the subject is named).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import validate
from ..errors import LabkitError
from ..models import count_parameters
from ..validate import (
    checks,
    flag,
    function,
    hf_tokenizer,
    ints,
    maybe,
    positive,
    positive_int,
    texts,
)

ROLES = ("system", "user", "assistant")
END_TOKEN = "<|end|>"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
# An answer whose word bigrams repeat more than this share is looping ("quantum computing quantum
# mechanics quantum bits ..."); clean one- or two-sentence answers stay near 0.
REPETITION_THRESHOLD = 0.2
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

# A chat template for a tokenizer that has none (GPT-2, Pythia, most base models): plain-text
# roles, and the tokenizer's own eos token ends an assistant turn, so a base model that learned
# to stop at the end of a document already knows how to stop an answer. Set it with
# `tokenizer.chat_template = PLAIN_CHAT_TEMPLATE`; its generation markers give assistant-only loss.
PLAIN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Assistant:' }}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
NO_TEMPLATE_HINT = ("use chat=False to ask with the bare question as plain text, or give the "
                    "tokenizer a template, e.g. tokenizer.chat_template = "
                    "labkit.align.sft.PLAIN_CHAT_TEMPLATE")

# The shipped adapter (`build_sft_adapter`): LoRA on the curated set, from the shipped base model.
SFT_ADAPTER_RECIPE = {"steps": 240, "batch_size": 16, "lr": 5e-3, "lora": dict(LORA_DEFAULTS),
                      "seed": 6, "warmup_steps": 20, "max_new_tokens": 40}


# --- chat formatting and the loss mask -------------------------------------------------------


def validate_conversation(messages, index: int | None = None) -> list[dict]:
    """The messages of one conversation, checked: roles in ROLES, string contents, and at least
    one assistant turn (without one there is nothing to learn)."""
    where = "conversation" if index is None else f"conversation {index}"
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise LabkitError(f"{where} must be a non-empty list of {{'role', 'content'}} messages, "
                          f"got {type(messages).__name__} {str(messages)[:60]!r}")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(
                m.get("content"), str):
            raise LabkitError(f"{where} has a bad message {str(m)[:80]!r}; each message needs "
                              f"role in {ROLES} and a string content")
    if not any(m["role"] == "assistant" for m in messages):
        roles = [m["role"] for m in messages]
        raise LabkitError(f"{where} has no assistant turn (roles {roles}); SFT needs at least one "
                          "{'role': 'assistant', ...} message to learn from")
    return list(messages)


def require_generation_markers(tokenizer) -> None:
    """Assistant-only loss needs `{% generation %}` markers in the chat template."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise LabkitError("the tokenizer has no chat template; use labkit.loaders.load_tokenizer() "
                          "(the world tokenizer ships one) or set tokenizer.chat_template = "
                          "labkit.align.sft.PLAIN_CHAT_TEMPLATE")
    if not _GENERATION_MARKER.search(template):
        raise LabkitError("the tokenizer's chat template has no {% generation %}..."
                          "{% endgeneration %} markers, so assistant tokens cannot be found; wrap "
                          "the assistant content (and its end token) in them, as the world "
                          "tokenizer's template does")


@checks(tokenizer=hf_tokenizer, messages=validate.records("role", "content"),
        add_generation_prompt=flag)
def render_chat(tokenizer, messages, *, add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it: the chat template applied, as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise LabkitError("the tokenizer has no chat template; use labkit.loaders.load_tokenizer() "
                          "or set tokenizer.chat_template = labkit.align.sft.PLAIN_CHAT_TEMPLATE")
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


@dataclass
class ChatLabels:
    """One conversation tokenized for SFT: ids, the assistant mask, and the labels it gives."""

    input_ids: list[int]
    mask: list[int]  # 1 on assistant tokens (content and its <|end|>), 0 elsewhere
    labels: list[int]  # the token id where it carries loss, -100 where it does not
    tokens: list[str]  # each token decoded on its own, for display

    def __post_init__(self):
        for name in ("mask", "labels", "tokens"):
            if not isinstance(getattr(self, name), list) or len(getattr(self, name)) != len(self.input_ids):
                raise LabkitError(f"{name} must be a list with one entry per input id ({len(self.input_ids)})")
        if any(m not in (0, 1) for m in self.mask):
            raise LabkitError("mask must hold only 0 and 1")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"position": range(len(self.input_ids)), "token": self.tokens,
                             "id": self.input_ids, "label": self.labels,
                             "loss": [bool(m) for m in self.mask]})


@checks(tokenizer=hf_tokenizer, assistant_only=flag)
def assistant_mask(tokenizer, messages, *, assistant_only: bool = True) -> ChatLabels:
    """Tokenize a conversation with the chat template; labels are -100 on every token outside
    the template's generation markers (all tokens carry loss when assistant_only=False)."""
    messages = validate_conversation(messages)
    if not assistant_only:
        ids = list(tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"])
        return ChatLabels(ids, [1] * len(ids), list(ids), [tokenizer.decode([t]) for t in ids])
    require_generation_markers(tokenizer)
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise LabkitError("the chat template marked no assistant token in this conversation; "
                          "check that its {% generation %} block wraps the assistant content")
    labels = [t if m else -100 for t, m in zip(ids, mask)]
    return ChatLabels(ids, mask, labels, [tokenizer.decode([t]) for t in ids])


@checks(tokenizer=hf_tokenizer, conversations=validate.nonempty)
def loss_token_share(tokenizer, conversations: Iterable) -> float:
    """The share of all template tokens that are assistant tokens (what assistant-only loss
    keeps); the rest is prompt, system text and role markers."""
    kept = total = 0
    for messages in conversations:
        lab = assistant_mask(tokenizer, messages)
        kept, total = kept + sum(lab.mask), total + len(lab.mask)
    if total == 0:
        raise LabkitError("conversations is empty; pass at least one conversation")
    return kept / total


def _display(token: str) -> str:
    return token.replace("\n", "↵").replace(" ", "·") or "∅"


@checks(tokenizer=hf_tokenizer, assistant_only=flag, per_row=positive_int)
def loss_mask_figure(tokenizer, messages, *, assistant_only: bool = True, per_row: int = 12):
    """Token by token, which tokens carry loss (green) and which are masked to -100 (grey)."""
    import plotly.graph_objects as go

    lab = assistant_mask(tokenizer, messages, assistant_only=assistant_only)
    n = len(lab.input_ids)
    rows = math.ceil(n / per_row)
    z = [[None] * per_row for _ in range(rows)]
    text = [[""] * per_row for _ in range(rows)]
    hover = [[""] * per_row for _ in range(rows)]
    for i, (tok, lbl, m) in enumerate(zip(lab.tokens, lab.labels, lab.mask)):
        r, c = divmod(i, per_row)
        z[r][c], text[r][c] = m, _display(tok)
        hover[r][c] = f"position {i}: {tok!r}, label {lbl}"
    fig = go.Figure(go.Heatmap(
        z=z, text=text, hovertext=hover, hoverinfo="text", texttemplate="%{text}",
        colorscale=[[0, "#d0d5dd"], [1, "#7ad694"]], zmin=0, zmax=1, showscale=False, xgap=2,
        ygap=2))
    kept = sum(lab.mask)
    what = "assistant tokens only" if assistant_only else "every token"
    fig.update_layout(
        title=f"Loss on {what}: {kept} of {n} tokens carry loss (green); grey labels are -100",
        xaxis_title=f"token position within the row (tokens, {per_row} per row)",
        yaxis_title="row (tokens)", height=120 + 38 * rows, margin=dict(t=60, b=50, l=60, r=20))
    fig.update_yaxes(autorange="reversed", tickvals=list(range(rows)),
                     ticktext=[str(r * per_row) for r in range(rows)])
    return fig


def _padded_logits(model, tokenizer, labs: list[ChatLabels]):
    """Right-padded ids, the model's logits (fp32, eval mode) and the padded label rows."""
    width = max(len(lab.input_ids) for lab in labs)
    pad = _pad_id(tokenizer)  # masked out, and never a label
    ids = torch.tensor([lab.input_ids + [pad] * (width - len(lab.input_ids)) for lab in labs])
    att = torch.tensor([[1] * len(lab.input_ids) + [0] * (width - len(lab.input_ids))
                        for lab in labs])
    labels = torch.tensor([lab.labels + [-100] * (width - len(lab.labels)) for lab in labs])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
    finally:
        model.train(was_training)
    return ids, logits, labels.to(device)


@checks(model=validate.model, tokenizer=hf_tokenizer, conversations=validate.nonempty,
        assistant_only=flag)
@torch.no_grad()
def conversation_loss(model, tokenizer, conversations: Sequence, *,
                      assistant_only: bool = True) -> float:
    """Mean next-token loss (nats per token) over the tokens that carry loss."""
    convs = list(conversations)
    if not convs:
        raise LabkitError("conversations is empty; pass at least one conversation")
    labs = [assistant_mask(tokenizer, c, assistant_only=assistant_only) for c in convs]
    _, logits, labels = _padded_logits(model, tokenizer, labs)
    # Summed over all label tokens of the batch, then divided once: each token weighs the same.
    return float(torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100))


@checks(model=validate.model, tokenizer=hf_tokenizer, conversations=validate.nonempty)
@torch.no_grad()
def loss_by_part(model, tokenizer, conversations: Sequence) -> dict:
    """Mean next-token loss (nats per token) on the assistant tokens ("answer") and on every
    other token ("prompt": system and user text and the role markers; the first token has no
    prediction): what a model learned to write, answers or questions."""
    convs = list(conversations)
    if not convs:
        raise LabkitError("conversations is empty; pass at least one conversation")
    labs = [assistant_mask(tokenizer, c) for c in convs]
    ids, logits, labels = _padded_logits(model, tokenizer, labs)
    lengths = torch.tensor([len(lab.input_ids) for lab in labs], device=logits.device)
    positions = torch.arange(ids.shape[1], device=logits.device)
    real = (positions[None, 1:] < lengths[:, None])  # a predicted token, not padding
    answer = labels[:, 1:] != -100
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none")
    return {"answer": float(losses[answer].mean()), "prompt": float(losses[real & ~answer].mean()),
            "answer_tokens": int(answer.sum()), "prompt_tokens": int((real & ~answer).sum())}


# --- training with TRL -----------------------------------------------------------------------


@checks(tokenizer=hf_tokenizer)
def chat_token_ids(tokenizer) -> list[int]:
    """The special tokens the chat template writes (role markers and <|end|>). A base model
    never saw them in pre-training, so their embeddings are untrained."""
    sample = [{"role": r, "content": "x"} for r in ROLES]
    ids = tokenizer.apply_chat_template(sample, return_dict=True)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return sorted({int(i) for i in ids if i in special})


def lora_targets(model) -> list[str] | str:
    """LoRA's target modules for `model`: the Llama-style projection names (LORA_TARGETS) where
    the model has them all, else peft's "all-linear" (every nn.Linear and GPT-2 Conv1D but the
    output layer: GPT-2's c_attn/c_proj/c_fc, GPT-NeoX's query_key_value/dense..., OPT's fc1)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return list(LORA_TARGETS) if names.issuperset(LORA_TARGETS) else "all-linear"


def _embedding_name(model) -> str:
    """The attribute name of the input embedding (embed_tokens, GPT-2's wte, NeoX's embed_in)."""
    embedding = model.get_input_embeddings()
    return next(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is embedding)


def lora_config(lora=True, chat_tokens: Sequence[int] | None = None, model=None):
    """A peft LoraConfig on every attention and MLP projection (q/k/v/o, gate/up/down, or
    `lora_targets(model)` when `model` is given); `lora` is True, a dict of LoraConfig fields
    overriding LORA_DEFAULTS, or a LoraConfig. `chat_tokens` (ids) also makes those rows of the
    embedding trainable (peft's trainable_token_indices; tied to the output layer), unless `lora`
    sets its own."""
    from peft import LoraConfig

    if isinstance(lora, LoraConfig):
        return lora
    if lora is True:
        lora = {}
    if chat_tokens is not None:
        chat_tokens = [validate.integer(t, f"chat_tokens[{i}]", low=0)
                       for i, t in enumerate(validate.items(chat_tokens, "chat_tokens", empty=True))]
    if isinstance(lora, dict):
        unknown = set(lora) - set(LoraConfig.__dataclass_fields__)
        if unknown:
            raise LabkitError(f"lora has unknown LoraConfig fields {sorted(unknown)}")
    if not isinstance(lora, dict):
        raise LabkitError(f"lora={lora!r} is not valid; use None (full fine-tuning), True, a dict "
                          "of LoraConfig fields such as {'r': 8} or a peft.LoraConfig")
    targets = list(LORA_TARGETS) if model is None else lora_targets(model)
    params = {**LORA_DEFAULTS, "target_modules": targets, "bias": "none",
              "task_type": "CAUSAL_LM", **lora}
    if chat_tokens and "trainable_token_indices" not in lora:
        embedding = "embed_tokens" if model is None else _embedding_name(model)
        params["trainable_token_indices"] = {embedding: list(chat_tokens)}
    if not (isinstance(params["r"], int) and params["r"] >= 1):
        raise LabkitError(f"lora r={params['r']!r} must be an integer >= 1")
    return LoraConfig(**params)


def conversations_dataset(dataset):
    """A `datasets.Dataset` with one column, `messages`, from records or a Dataset; every
    conversation is validated (an empty dataset or one without an assistant turn is an error)."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        if "messages" not in dataset.column_names:
            raise LabkitError(f"dataset has no 'messages' column (columns {dataset.column_names}); "
                              "SFT needs conversations")
        rows = dataset["messages"]
    else:
        rows = [r["messages"] if isinstance(r, dict) and "messages" in r else r
                for r in (dataset or [])]
    if len(rows) == 0:
        raise LabkitError("dataset is empty; pass at least one conversation (e.g. "
                          "labkit.loaders.load_records('instructions_curated'))")
    clean = [[{"role": m["role"], "content": m["content"]}
              for m in validate_conversation(r, i)] for i, r in enumerate(rows)]
    return datasets.Dataset.from_list([{"messages": m} for m in clean])


@contextlib.contextmanager
def _quiet_datasets():
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


class _PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on CPU the highest resident set size
    above the starting one (sampled every 10 ms), in MiB."""

    def __init__(self, device: str):
        self.device, self.peak_mib, self._stop = device, 0.0, threading.Event()

    def _sample(self, proc, start):
        peak = start
        while not self._stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            self._stop.wait(0.01)
        self.peak_mib = (max(peak, proc.memory_info().rss) - start) / 2**20

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            import psutil

            proc = psutil.Process()
            self._thread = threading.Thread(target=self._sample,
                                            args=(proc, proc.memory_info().rss), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def _training_state_mib(model, optimizer) -> float:
    """Bytes held by the weights, one gradient per trainable weight (the trainer frees them
    after each step, so they are counted from the parameters) and the optimizer's state,
    counted tensor by tensor: what full fine-tuning pays for every weight and LoRA only for
    the adapters."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values()
                     if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total / 2**20


@dataclass
class SFTRun:
    """What `sft_train` returns: the trained model and what the run cost."""

    model: object  # the trained model (a peft PeftModel when trained with LoRA)
    history: pd.DataFrame  # step, loss, learning_rate, grad_norm, ... one row per logged step
    trainable_params: int
    total_params: int
    wall_s: float
    peak_mib: float  # measured during training (CUDA allocator peak, or RSS growth on CPU)
    state_mib: float  # weights + gradients + optimizer state, counted from the tensors
    config: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 10% of logged steps (at least one step)."""
        losses = self.history["loss"].dropna()
        return float(losses.tail(max(1, len(losses) // 10)).mean())

    def summary(self) -> dict:
        return {"method": "LoRA" if self.config.get("lora") else "full",
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "trainable_share": self.trainable_params / self.total_params,
                "state_mib": round(self.state_mib, 2), "peak_mib": round(self.peak_mib, 1),
                "wall_s": round(self.wall_s, 2), "final_loss": round(self.final_loss, 4)}


def length_bucketed_order(lengths: Sequence[int], batch_size: int, seed: int = 0) -> list[int]:
    """Indices in batches of similar length, the batches in a seeded random order: each batch
    pads little, and the run still sees every kind of example early on (transformers'
    group_by_length sampler instead walks its mega-batches from longest to shortest)."""
    by_length = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    random.Random(seed).shuffle(batches)
    return [i for batch in batches for i in batch]


def training_stream(n_items: int, length_of, *, batch_size: int, steps: int,
                    seed: int = 0) -> list[int]:
    """The item indices a run of `steps` batches of `batch_size` sees, in order: epochs over
    the items, each a seeded sample (all of them, or as many as the remaining steps need) in
    batches of similar length (`length_bucketed_order`). A random batch pads every sequence to
    its longest member (a chat example is 10-100 tokens, a preference answer up to ~170), which
    costs a CPU run a third to a half of its time; bucketed, the padding is a few percent.
    `length_of(i)` is asked only for the items drawn."""
    positive_int(n_items, "n_items"), positive_int(batch_size, "batch_size")
    positive_int(steps, "steps")
    rng, lengths = random.Random(seed), {}
    need, stream = steps * batch_size, []
    while len(stream) < need:
        drawn = rng.sample(range(n_items), min(n_items, need - len(stream)))
        for i in drawn:
            if i not in lengths:
                lengths[i] = length_of(i)
        order = length_bucketed_order([lengths[i] for i in drawn], batch_size, rng.randrange(2**31))
        stream += [drawn[j] for j in order]
    return stream


def mixed_precision(device: str, bf16: bool | None = None) -> dict:
    """The trainers' precision flags, {"bf16": ..., "fp16": ...}: fp32 on CPU (bf16 autocast
    without AMX only adds casts); on CUDA bf16 where the card computes it natively, else fp16
    with loss scaling (a T4), as the gpu profile chooses. `bf16` True/False overrides.

    torch.cuda.is_bf16_supported() is not asked: it answers True on a T4 (emulated bf16) and
    ignores LABKIT_NO_BF16; labkit.env.cuda_has_bf16 and the profile's switch do not."""
    from .. import env
    from ..profiles import bf16_pretended_absent

    if bf16 is not None:
        return {"bf16": bool(bf16), "fp16": False}
    if not str(device).startswith("cuda"):
        return {"bf16": False, "fp16": False}
    native = env.cuda_has_bf16() and not bf16_pretended_absent()
    return {"bf16": native, "fp16": not native}


def sft_trainer(model, tokenizer, dataset, *, steps: int, lr: float, batch_size: int,
                lora=None, assistant_only: bool = True, seed: int = 0, output_dir=None,
                warmup_steps: int = 0, max_length: int = 256, device: str | None = None,
                bf16: bool | None = None):
    """TRL's SFTTrainer, configured for the labs: fp32 on CPU (TRL defaults to bf16), no
    gradient checkpointing, cosine schedule, no checkpoints, no reporting, seeded, and the
    conversations in the seeded order of `training_stream` (batches of similar length). With
    `lora`, TRL wraps `model` in a peft PeftModel (the model passed in is changed in place)."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise LabkitError(f"{name}={value!r} must be an integer >= 1")
    if not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise LabkitError(f"lr={lr!r} must be a number in (0, 1), e.g. 1e-3")
    if assistant_only:
        require_generation_markers(tokenizer)
    train_set = conversations_dataset(dataset)
    if len(train_set) > 1:  # the exact stream of steps x batch_size conversations, bucketed
        convs = train_set["messages"]
        stream = training_stream(len(convs), lambda i: len(_chat_ids(tokenizer, convs[i])),
                                 batch_size=batch_size, steps=steps, seed=seed)
        train_set = train_set.select(stream)
    peft_config = None
    if lora is not None and lora is not False:
        peft_config = lora_config(lora, chat_tokens=chat_token_ids(tokenizer), model=model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = mixed_precision(device, bf16)
    args = SFTConfig(
        output_dir=str(output_dir or tempfile.gettempdir()), max_steps=steps,
        per_device_train_batch_size=batch_size, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=warmup_steps, weight_decay=0.0, max_grad_norm=1.0, seed=seed,
        data_seed=seed, use_cpu=not device.startswith("cuda"), **precision,
        # transformers 5 renamed gradient_checkpointing (TRL defaults it to True): set the new name
        activation_checkpointing=False, assistant_only_loss=assistant_only, max_length=max_length,
        packing=False, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, log_level="error",
        optim="adamw_torch", train_sampling_strategy="sequential",  # the stream is the order
    )
    with _quiet_datasets():  # TRL maps the dataset four times, each with a progress bar
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_set,
                             processing_class=tokenizer, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # one log line per step would flood a notebook
    _expose_head_bias(trainer.model)
    return trainer


def _expose_head_bias(model) -> None:
    """TRL's fused LM head reads `lm_head.bias`, but peft's TrainableTokensWrapper (trainable
    chat-token rows, tied to the output layer) forwards only `.weight` and raises
    AttributeError; give it the wrapped layer's bias (None for Llama)."""
    head = model.get_output_embeddings()
    try:
        head.bias  # noqa: B018
    except AttributeError:
        object.__setattr__(head, "bias", getattr(head.original_module, "bias", None))


@checks(model=validate.model, tokenizer=hf_tokenizer, steps=positive_int, lr=positive,
        batch_size=positive_int, assistant_only=flag, seed=ints(), warmup_steps=validate.nonnegative_int,
        max_length=positive_int)
def sft_train(model, tokenizer, dataset, *, steps: int, lr: float, batch_size: int,
              lora=None, assistant_only: bool = True, seed: int = 0, output_dir=None,
              warmup_steps: int = 0, max_length: int = 256, device: str | None = None,
              bf16: bool | None = None, inplace: bool = False) -> SFTRun:
    """Fine-tune `model` on conversations with TRL's SFTTrainer for exactly `steps` steps.

    `lora`: None trains every weight; True, a dict of LoraConfig fields or a LoraConfig trains
    LoRA adapters on q/k/v/o/gate/up/down only. `assistant_only` puts the loss on assistant
    tokens (TRL's assistant_only_loss, from the template's generation markers); False trains on
    every token. The model is copied first unless `inplace`; the copy comes back in the run.
    """
    model = model if inplace else copy.deepcopy(model)
    total = count_parameters(model)
    with tempfile.TemporaryDirectory(prefix="labkit-sft-") as tmp:
        trainer = sft_trainer(model, tokenizer, dataset, steps=steps, lr=lr,
                              batch_size=batch_size, lora=lora, assistant_only=assistant_only,
                              seed=seed, output_dir=output_dir or tmp,
                              warmup_steps=warmup_steps, max_length=max_length, device=device,
                              bf16=bf16)
        trained = trainer.model
        trainable = count_parameters(trained, trainable_only=True)
        start = time.perf_counter()
        with _PeakMemory(str(trainer.args.device)) as mem:
            trainer.train()
        wall = time.perf_counter() - start
    state = _training_state_mib(trained, trainer.optimizer)
    trained.zero_grad(set_to_none=True)
    trained.eval()
    history = pd.DataFrame([r for r in trainer.state.log_history if "loss" in r])
    history = history[[c for c in ("step", "loss", "learning_rate", "grad_norm",
                                   "mean_token_accuracy", "num_tokens") if c in history]]
    args = trainer.args
    peft_config = getattr(trained, "peft_config", {}).get("default")
    config = {"steps": steps, "lr": lr, "batch_size": batch_size, "assistant_only": assistant_only,
              "seed": seed, "warmup_steps": warmup_steps, "max_length": max_length,
              "examples": len(trainer.train_dataset), "device": str(args.device),
              "bf16": bool(args.bf16),
              "lora": None if peft_config is None else
              {"r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
               "target_modules": sorted(peft_config.target_modules),
               "trainable_tokens": peft_config.trainable_token_indices}}
    return SFTRun(trained, history, trainable, total, wall, mem.peak_mib, state, config)


@checks(model=validate.model, copy_first=flag)
def merge_lora(model, *, copy_first: bool = True):
    """The adapter folded into the base weights (W + B A * alpha/r): a plain transformers model
    with the adapter's outputs and no adapter overhead. The input stays intact unless
    copy_first=False."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise LabkitError(f"merge_lora needs a peft PeftModel (a LoRA run's model), got "
                          f"{type(model).__name__}")
    model = copy.deepcopy(model) if copy_first else model
    merged = model.merge_and_unload()
    merged.eval()
    return merged


@checks(runs=validate.mapping(lambda run, name: validate.instance(run, name, SFTRun)))
def parameter_table(runs: dict) -> pd.DataFrame:
    """One row per SFTRun: trainable parameters, memory, time and final loss."""
    return pd.DataFrame([{"run": name, **run.summary()} for name, run in runs.items()]
                        ).set_index("run")


@checks(runs=validate.mapping(lambda run, name: validate.instance(run, name, SFTRun)))
def loss_curves_figure(runs: dict):
    """Training loss against step for several SFTRuns."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, run in runs.items():
        fig.add_scatter(x=run.history["step"], y=run.history["loss"], mode="lines", name=name)
    fig.update_layout(title="SFT training loss (on the tokens that carry loss)",
                      xaxis_title="optimizer step", yaxis_title="loss (nats per token)")
    return fig


# --- answering and judging -------------------------------------------------------------------


def _chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              **kwargs)["input_ids"])


def _end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant's answer: <|end|>
    here, ChatML's <|im_end|>, Llama 3's <|eot_id|>, the eos token in PLAIN_CHAT_TEMPLATE.
    Found by rendering a turn, not by name; [] without a template (or with a textual end)."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    user = [{"role": "user", "content": "?"}]
    prompt = _chat_ids(tokenizer, user, add_generation_prompt=True)
    full = _chat_ids(tokenizer, user + [{"role": "assistant", "content": "x"}])
    start = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), len(prompt))
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return [t for t in full[start:] if t in special][:1]


def _stop_ids(tokenizer) -> list[int]:
    """Generation stops at the end of a turn or at eos (a base model's end of a document). Only
    ids the vocabulary really has: a GPT-2 tokenizer maps unknown names to unk = eos."""
    ids = [*_end_of_turn_ids(tokenizer), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))


def _pad_id(tokenizer) -> int:
    """The id to pad with: the pad token, else eos (GPT-2, Pythia and Llama ship no pad; padded
    positions are masked out, so any id serves), else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _prompt_ids(tokenizer, question: str) -> list[int]:
    if not isinstance(question, str) or not question.strip():
        raise LabkitError(f"question={question!r} must be a non-empty string")
    if not getattr(tokenizer, "chat_template", None):
        raise LabkitError("the tokenizer has no chat template to render the question as a user "
                          f"turn; {NO_TEMPLATE_HINT}")
    return _chat_ids(tokenizer, [{"role": "user", "content": question}],
                     add_generation_prompt=True)


def _plain_ids(tokenizer, question: str) -> list[int]:
    if not isinstance(question, str) or not question.strip():
        raise LabkitError(f"question={question!r} must be a non-empty string")
    return list(tokenizer(question)["input_ids"])


@checks(model=validate.model, tokenizer=hf_tokenizer, questions=texts, max_new_tokens=positive_int,
        batch_size=positive_int, chat=flag)
@torch.no_grad()
def generate_answers(model, tokenizer, questions: Sequence[str], *, max_new_tokens: int = 40,
                     batch_size: int = 64, chat: bool = True) -> list[tuple[str, bool]]:
    """Greedy chat answers to user questions: (text, ended_turn) per question. Generation stops
    at <|end|> (the template's end of an assistant turn, ended_turn=True) or at <|endoftext|>
    (the end of a pre-training document: a base model's way of stopping). chat=False feeds the
    bare question as plain text instead, as a base model would be prompted. Batches are
    left-padded (with eos when the tokenizer has no pad token, as GPT-2's)."""
    if max_new_tokens < 1:
        raise LabkitError(f"max_new_tokens={max_new_tokens} must be >= 1")
    prompts = [_prompt_ids(tokenizer, q) if chat else _plain_ids(tokenizer, q) for q in questions]
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(p) for p in prompts), default=0)
    if context is not None and longest + max_new_tokens > context:
        raise LabkitError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} "
                          f"exceeds the model's context of {context} tokens")
    stops, ends, pad = _stop_ids(tokenizer), _end_of_turn_ids(tokenizer), _pad_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[tuple[str, bool]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                               device=device)
            gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                 do_sample=False, top_k=None, top_p=None, temperature=None,
                                 eos_token_id=stops or None, pad_token_id=pad)
            for row in gen[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                text = tokenizer.decode(row if cut is None else row[:cut],
                                        skip_special_tokens=True)
                out.append((text.strip(), cut is not None and row[cut] in ends))
    finally:
        model.train(was_training)
    return out


@checks(model=validate.model, tokenizer=hf_tokenizer, question=validate.text,
        max_new_tokens=positive_int)
def answer(model, tokenizer, question: str, max_new_tokens: int = 40) -> str:
    """The model's greedy chat answer to one user question (the template's generation prompt,
    stopped at <|end|>)."""
    return generate_answers(model, tokenizer, [question], max_new_tokens=max_new_tokens)[0][0]


@checks(text=validate.text)
def repeated_bigram_share(text: str) -> float:
    """The share of word bigrams that already appeared earlier in the text (0 = no repeats)."""
    words = re.findall(r"\w+", text.lower())
    bigrams = list(zip(words, words[1:]))
    if not bigrams:
        return 0.0
    return 1.0 - len(set(bigrams)) / len(bigrams)


@checks(response=validate.text, ended_turn=flag, subject=maybe(validate.text))
def judge(response: str, ended_turn: bool, subject: str | None = None) -> dict:
    """Rule-based judge of format: the model ended its turn with <|end|>, the answer has words
    and ends a sentence (or a code block), it does not loop, and (when the question's subject
    is given) it mentions the subject, as every answer in this world's data does. Facts are not
    judged here; exact match does that."""
    text = response.strip()
    complete = bool(re.search(r"\w", text)) and (text[-1] in ".!?" or text.endswith("```"))
    share = repeated_bigram_share(text)
    on_topic = subject is None or subject.lower() in text.lower()
    return {"ended_turn": ended_turn, "complete": complete, "repeated_bigrams": round(share, 4),
            "repetitive": share > REPETITION_THRESHOLD, "on_topic": on_topic,
            "judge_ok": ended_turn and complete and share <= REPETITION_THRESHOLD and on_topic}


@checks(model=validate.model, tokenizer=hf_tokenizer, max_new_tokens=positive_int,
        batch_size=positive_int, chat=flag)
def evaluate_answers(model, tokenizer, questions, *, max_new_tokens: int = 40,
                     batch_size: int = 64, chat: bool = True) -> pd.DataFrame:
    """Ask held-out questions ({'question', 'answer'} records, optionally 'subject', e.g.
    load_records('sft_eval')) and score each answer: exact match (the expected object appears
    in the answer, case ignored), the rule-based judge, and `correct` (both). One row per
    question. chat=False asks with the bare question as plain text (see generate_answers)."""
    rows = list(questions) if questions is not None else []
    if not rows:
        raise LabkitError("questions is empty; pass records with 'question' and 'answer' "
                          "(e.g. labkit.loaders.load_records('sft_eval'))")
    for i, q in enumerate(rows):
        if not (isinstance(q, dict) and isinstance(q.get("question"), str)
                and isinstance(q.get("answer"), str) and q["answer"]):
            raise LabkitError(f"questions[{i}] = {str(q)[:80]!r} needs string 'question' and "
                              "non-empty 'answer' fields")
    answers = generate_answers(model, tokenizer, [q["question"] for q in rows],
                               max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat)
    out = []
    for q, (text, ended) in zip(rows, answers):
        out.append({"id": q.get("id"), "question": q["question"], "expected": q["answer"],
                    "response": text, "exact": q["answer"].lower() in text.lower(),
                    **judge(text, ended, q.get("subject"))})
        out[-1]["correct"] = out[-1]["exact"] and out[-1]["judge_ok"]
    return pd.DataFrame(out)


_ANSWERS = validate.frame("exact", "judge_ok", "correct", "ended_turn", "complete", "repetitive",
                          "on_topic", "question", "expected", "response")


@checks(frames=validate.mapping(_ANSWERS))
def summarize_answers(frames: dict) -> pd.DataFrame:
    """One row per model: exact-match accuracy, the judge's pass rate, both at once
    ("correct": right and well-formed), and the judge's parts."""
    rows = []
    for name, df in frames.items():
        rows.append({"model": name, "questions": len(df), "exact_match": df["exact"].mean(),
                     "judge_ok": df["judge_ok"].mean(), "correct": df["correct"].mean(),
                     "ended_turn": df["ended_turn"].mean(),
                     "complete": df["complete"].mean(), "repetitive": df["repetitive"].mean(),
                     "on_topic": df["on_topic"].mean()})
    return pd.DataFrame(rows).set_index("model")


# Short headers for printed tables: eight full-width columns and a long model name do not fit
# a notebook cell's width, and JupyterLab wraps a long line mid-number.
COMPACT_COLUMNS = {"exact_match": "exact", "judge_ok": "judge", "correct": "both",
                   "ended_turn": "ended", "complete": "complete", "repetitive": "loops",
                   "on_topic": "on_topic"}


@checks(summary=validate.frame(*COMPACT_COLUMNS))
def compact_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """`summarize_answers`' table with short headers, rounded to 2 decimals, for printing:
    exact (exact match), judge (well-formed), both (right and well-formed), ended (the turn
    ended), complete, loops (repetitive), on_topic."""
    return summary[list(COMPACT_COLUMNS)].rename(columns=COMPACT_COLUMNS).round(2)


@checks(summary=validate.frame("exact_match", "judge_ok", "correct", "questions"))
def accuracy_figure(summary: pd.DataFrame, title: str = "Held-out world questions"):
    """Grouped bars per model: exact match, the judge's pass rate, and both at once."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for col, label in (("exact_match", "exact match"), ("judge_ok", "judge: well-formed"),
                       ("correct", "both")):
        fig.add_bar(x=list(summary.index), y=summary[col], name=label,
                    text=[f"{v:.0%}" for v in summary[col]], textposition="outside")
    fig.update_layout(title=f"{title} ({int(summary['questions'].iloc[0])} questions)",
                      xaxis_title="model", yaxis_title="share of questions (fraction)",
                      yaxis_range=[0, 1.1], barmode="group")
    return fig


@checks(frames=validate.mapping(validate.frame("question", "expected", "response")), n=positive_int)
def side_by_side(frames: dict, n: int = 5) -> pd.DataFrame:
    """The first n questions with each model's answer in its own column."""
    first = next(iter(frames.values())).head(n)
    table = first[["question", "expected"]].copy()
    for name, df in frames.items():
        table[name] = df["response"].head(n).values
    return table


# --- the shipped adapter ---------------------------------------------------------------------


@checks(out=maybe(validate.path_like), steps=maybe(positive_int),
        heldout=maybe(validate.nonnegative_int), echo=function)
def build_sft_adapter(out=None, *, steps: int | None = None, heldout: int | None = None,
                      echo=print) -> dict:
    """Train the shipped SFT adapter: LoRA on the curated set from the shipped base model, saved
    as a PEFT adapter (safetensors) in <out>/models/sft-adapter with README.md and metrics.json.
    Held-out exact match is measured for base and SFT on all sft_eval questions (or the first
    `heldout`; `steps` overrides the recipe; both for quick checks only)."""
    from ..loaders import load_model, load_records, load_tokenizer
    from ..samples import data_dir

    recipe = {**SFT_ADAPTER_RECIPE, **({"steps": steps} if steps else {})}
    target = Path(out or data_dir()) / "models" / "sft-adapter"
    tok = load_tokenizer()
    base = load_model("base")
    curated = load_records("instructions_curated")
    questions = load_records("sft_eval")[:heldout]
    echo(f"sft-adapter: {recipe['steps']} steps of LoRA SFT on {len(curated)} curated examples")
    run = sft_train(base, tok, curated, steps=recipe["steps"], lr=recipe["lr"],
                    batch_size=recipe["batch_size"], lora=recipe["lora"], seed=recipe["seed"],
                    warmup_steps=recipe["warmup_steps"], device="cpu")
    frames = {name: evaluate_answers(m, tok, questions, max_new_tokens=recipe["max_new_tokens"])
              for name, m in (("base", base), ("sft", run.model))}
    plain = evaluate_answers(base, tok, questions, max_new_tokens=recipe["max_new_tokens"],
                             chat=False)
    summary = summarize_answers(frames)
    samples = side_by_side(frames, n=5)
    metrics = {
        "adapter": "sft", "recipe": recipe, **run.summary(),
        "device": f"CPU, {torch.get_num_threads()} thread(s), {platform.machine()}",
        "examples": len(curated), "epochs": recipe["steps"] * recipe["batch_size"] / len(curated),
        "heldout_questions": len(questions),
        "exact_match": {k: float(v) for k, v in summary["exact_match"].items()},
        "judge_ok": {k: float(v) for k, v in summary["judge_ok"].items()},
        "correct": {k: float(v) for k, v in summary["correct"].items()},
        "base_plain_text_exact_match": float(plain["exact"].mean()),
        "loss_curve": run.history[["step", "loss"]].to_dict("records"),
        "samples": samples.to_dict("records"),
    }
    save_adapter(run.model, target, base="labkit:base", metrics=metrics,
                 card=_adapter_card(metrics, samples))
    shown = ("final_loss", "wall_s", "exact_match", "judge_ok")
    echo(f"sft-adapter: {json.dumps({k: metrics[k] for k in shown})}")
    return metrics


def save_adapter(model, target: Path, *, base: str, metrics: dict, card: str) -> None:
    """Write a shipped PEFT adapter: safetensors weights, a config that names the base by its
    labkit name (the path it was loaded from is local to this machine), metrics.json and the
    README model card. Used by the SFT and DPO adapters."""
    target.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = base
    model.save_pretrained(target, safe_serialization=True)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    (target / "README.md").write_text(card)


def _adapter_card(m: dict, samples: pd.DataFrame) -> str:
    r = m["recipe"]
    lines = [
        "---", "license: mit", "library_name: peft", "base_model: labkit:base",
        "tags: [labkit, tiny, offline, sft, lora]", "---", "# world-sft (LoRA adapter)", "",
        "A LoRA adapter that turns the shipped base model (`models/base`) into a chat model: "
        "supervised fine-tuning with TRL's `SFTTrainer` on the 1,000 curated conversations "
        "(`instructions/curated.jsonl`), loss on assistant tokens only (the chat template's "
        "`{% generation %}` markers). Load it with `labkit.loaders.load_model(\"sft\")`.", "",
        "## Recorded command", "", "    labkit train-models sft", "",
        "## Config", "",
        f"- LoRA r {r['lora']['r']}, alpha {r['lora']['lora_alpha']}, dropout "
        f"{r['lora']['lora_dropout']}, on q/k/v/o/gate/up/down projections, plus the embedding "
        "rows of the four chat tokens (`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`; "
        "peft's trainable_token_indices, tied to the output layer): the base model never saw "
        "them",
        f"- trainable parameters: {m['trainable_params']:,} of {m['total_params']:,} "
        f"({m['trainable_share']:.2%})",
        f"- steps {r['steps']}, batch {r['batch_size']} conversations ({m['epochs']:.1f} epochs), "
        f"peak lr {r['lr']}, warmup {r['warmup_steps']}, cosine to 0, AdamW, grad clip 1.0, "
        f"fp32, max length 256, seed {r['seed']}", "",
        "## Measured", "",
        f"- wall time: {m['wall_s']:.0f} s on {m['device']}",
        f"- final training loss: {m['final_loss']:.3f} (mean of the last 10% of steps)",
        f"- weights + gradients + optimizer state during training: {m['state_mib']:.1f} MiB",
        f"- held-out world questions ({m['heldout_questions']}, entities the instruction data "
        "never mentions), greedy, exact match of the fact's object: "
        f"base {m['exact_match']['base']:.3f}, SFT {m['exact_match']['sft']:.3f} (the base "
        f"model asked with the bare question as plain text: "
        f"{m['base_plain_text_exact_match']:.3f})",
        f"- rule-based judge (ended its turn with <|end|>, complete sentence, no looping, names "
        f"the subject): base {m['judge_ok']['base']:.3f}, SFT {m['judge_ok']['sft']:.3f}",
        f"- both (right and well-formed): base {m['correct']['base']:.3f}, SFT "
        f"{m['correct']['sft']:.3f}", "",
        "## Samples (greedy)", "",
        "| question | expected | base | SFT |", "|---|---|---|---|",
    ]
    for row in samples.to_dict("records"):
        cells = [str(row[k]).replace("|", "\\|").replace("\n", " ")
                 for k in ("question", "expected", "base", "sft")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Scores are measured at the end of training and stored in "
                              "`metrics.json`.", ""])
