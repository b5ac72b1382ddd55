"""Reward model (lab 07): a sequence classifier with one output, trained on preference pairs.

The reward model is the policy's own architecture with the next-token head swapped for a scalar
head (`AutoModelForSequenceClassification`, num_labels=1, reading the hidden state of the last
non-pad token). It starts from the same weights as the policy, so it already "reads" the world,
and learns from pairs (prompt, chosen, rejected) with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected), through TRL's `RewardTrainer`.

A conversation is scored as the chat template renders it, `<|user|>prompt<|end|><|assistant|>
response<|end|>`, exactly as TRL tokenizes a conversational pair, so `reward_scores` gives the
numbers the trainer optimised.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from .. import validate
from ..errors import LabkitError
from ..validate import checks, hf_tokenizer, ints, maybe, positive, positive_int
from .dpo import preference_dataset, validate_pairs
from .sft import _pad_id, mixed_precision, training_stream

DEFECTS = ("wrong_fact", "repetition", "rude", "verbose", "unsafe")


# --- inputs ----------------------------------------------------------------------------------


def conversation(prompt: str, response: str) -> list[dict]:
    """One user turn and the assistant's reply: what the reward model reads."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


@checks(policy_tokenizer=hf_tokenizer, reward_tokenizer=hf_tokenizer)
def check_same_tokenizer(policy_tokenizer, reward_tokenizer) -> None:
    """The reward model must read text with the policy's tokenizer and chat template: it was
    trained on conversations rendered that way, and PPO's token ids must mean the same thing
    to both models."""
    if reward_tokenizer is policy_tokenizer:
        return
    pv, rv = policy_tokenizer.get_vocab(), reward_tokenizer.get_vocab()
    if pv != rv:
        differ = len(set(pv.items()) ^ set(rv.items()))
        raise LabkitError(f"the reward model's tokenizer differs from the policy's ({len(rv)} vs "
                          f"{len(pv)} tokens, {differ} entries differ); train the reward model "
                          "from the policy's checkpoint with the policy's tokenizer")
    if getattr(policy_tokenizer, "chat_template", None) != getattr(reward_tokenizer,
                                                                   "chat_template", None):
        raise LabkitError("the reward model's tokenizer has a different chat template from the "
                          "policy's; both must render conversations identically")


def _check_model_vocab(model, tokenizer, what: str = "reward model") -> None:
    rows = model.get_input_embeddings().num_embeddings
    if rows != len(tokenizer):
        raise LabkitError(f"the {what} has {rows} embedding rows but the tokenizer has "
                          f"{len(tokenizer)} tokens; they come from different tokenizers")


# --- collecting preferences: the annotator's view ----------------------------------------------


def annotation_batch(pairs, k: int = 5, seed: int = 0) -> list[dict]:
    """`k` pairs as an annotator sees them: the prompt and two answers "A" and "B" in a seeded
    random order, so the position gives nothing away. One pair per defect first (in DEFECTS
    order, then again), so a short session meets every kind of flaw. `shipped` says which
    letter the dataset's label prefers."""
    rows = validate_pairs(pairs)
    positive_int(k, "k"), validate.integer(seed, "seed")
    rng = random.Random(seed)
    by_defect: dict = {}
    for p in rng.sample(rows, len(rows)):
        by_defect.setdefault(p.get("defect") or "none", []).append(p)
    kinds = [d for d in DEFECTS if d in by_defect] + sorted(set(by_defect) - set(DEFECTS))
    picked = []
    while len(picked) < min(k, len(rows)):
        for d in kinds:
            if by_defect[d] and len(picked) < k:
                picked.append(by_defect[d].pop())
    batch = []
    for p in picked:
        chosen_first = rng.random() < 0.5
        a, b = (p["chosen"], p["rejected"]) if chosen_first else (p["rejected"], p["chosen"])
        batch.append({"id": p.get("id"), "defect": p.get("defect") or "none",
                      "prompt": p["prompt"], "A": a, "B": b,
                      "shipped": "A" if chosen_first else "B"})
    return batch


def annotation_agreement(batch: Sequence[dict], labels: Sequence[str | None]) -> pd.DataFrame:
    """One row per pair of `batch` (from annotation_batch): your label ("A", "B" or None for not
    yet labelled), the shipped one, and whether they agree (None where unlabelled)."""
    batch = validate.records("id", "defect", "shipped")(batch, "batch")
    labels = validate.items(labels, "labels", what="labels ('A', 'B' or None)")
    if len(labels) != len(batch):
        raise LabkitError(f"{len(labels)} labels for {len(batch)} pairs; give one label per pair "
                          "(None for a pair you skipped)")
    for i, label in enumerate(labels):
        if label not in ("A", "B", None):
            raise LabkitError(f"labels[{i}] = {label!r}; a label is 'A', 'B' or None")
    frame = pd.DataFrame({"id": [b["id"] for b in batch], "defect": [b["defect"] for b in batch],
                          "yours": labels, "shipped": [b["shipped"] for b in batch]})
    frame["agree"] = [None if y is None else y == s for y, s in zip(labels, frame["shipped"])]
    return frame


# --- the model -------------------------------------------------------------------------------


@checks(lm=validate.model, tokenizer=hf_tokenizer, seed=ints())
def reward_model_from(lm, tokenizer, *, seed: int = 0):
    """A reward model with the body (embeddings and decoder layers) of causal LM `lm` and a new
    scalar head (num_labels=1, seeded): for the world's Llama, a LlamaForSequenceClassification.
    A peft model is merged first; `lm` itself is left untouched."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _check_model_vocab(lm, tokenizer, "model")
    if isinstance(lm, PeftModel):
        lm = copy.deepcopy(lm).merge_and_unload()
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    # The head reads the last token that is not padding; without a pad token (GPT-2) pad is eos,
    # as TRL's RewardTrainer pads.
    config.pad_token_id = _pad_id(tokenizer)
    config.architectures = None
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    missing = model.base_model.load_state_dict(lm.base_model.state_dict(), strict=True)
    assert not missing.missing_keys
    model.eval()
    return model


def freeze_below(model, train_layers: int | None) -> int:
    """Freeze the embeddings and every decoder layer but the top `train_layers` (None: train
    all). Gradients then stop early, which is what makes a CPU run cheap. Returns the number of
    trainable parameters."""
    if train_layers is not None:
        layers = model.base_model.layers
        if not (isinstance(train_layers, int) and 0 <= train_layers <= len(layers)):
            raise LabkitError(f"train_layers={train_layers!r} must be an integer in "
                              f"[0, {len(layers)}] or None (all layers)")
        for p in model.base_model.parameters():
            p.requires_grad_(False)
        for layer in list(layers)[len(layers) - train_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in model.base_model.norm.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- training with TRL -----------------------------------------------------------------------


def reward_trainer(model, tokenizer, pairs, *, steps: int, batch_size: int, lr: float,
                   seed: int = 0, output_dir=None, device: str | None = None,
                   warmup_steps: int = 0):
    """TRL's RewardTrainer configured for the labs: fp32 on CPU, no reporting, no checkpoints,
    seeded data order, constant LR after warmup (a short run should not decay to nothing).

    The run sees steps x batch_size pairs drawn in a seeded order, in batches of similar length
    (`labkit.align.sft.training_stream`): a verbose answer is ~150 tokens and a short one ~20,
    and a random batch pads everything to its longest member, which triples the cost of a CPU
    run. Only the pairs drawn are tokenized."""
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from .sft import _quiet_datasets

    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise LabkitError(f"{name}={value!r} must be an integer >= 1")
    if not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise LabkitError(f"lr={lr!r} must be a number in (0, 1), e.g. 1e-3")
    if getattr(model.config, "num_labels", None) != 1:
        raise LabkitError(f"the reward model needs num_labels=1 (one score per sequence), got "
                          f"{getattr(model.config, 'num_labels', None)}; build it with "
                          "reward_model_from(lm, tokenizer)")
    _check_model_vocab(model, tokenizer)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    args = RewardConfig(
        output_dir=str(output_dir or tempfile.gettempdir()), max_steps=steps,
        per_device_train_batch_size=batch_size, learning_rate=lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=warmup_steps, weight_decay=0.0,
        max_grad_norm=1.0, seed=seed, data_seed=seed, use_cpu=not cuda,
        **mixed_precision("cuda" if cuda else "cpu"), gradient_checkpointing=False,
        max_length=model.config.max_position_embeddings, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, log_level="error", optim="adamw_torch",
        train_sampling_strategy="sequential",  # the order below is already shuffled
    )
    rows = validate_pairs(pairs)
    stream = training_stream(
        len(rows), lambda i: max(len(_chat_ids(tokenizer, rows[i]["prompt"], rows[i][k]))
                                 for k in ("chosen", "rejected")),
        batch_size=batch_size, steps=steps, seed=seed)
    rows = [rows[i] for i in stream]
    with _quiet_datasets():
        trainer = RewardTrainer(model=model, args=args, train_dataset=preference_dataset(rows),
                                processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    return trainer


@dataclass
class RewardRun:
    """What `train_reward_model` returns."""

    model: object
    history: pd.DataFrame  # step, loss, accuracy, margin, ... per logged step
    trainable_params: int
    wall_s: float
    cpu_s: float
    config: dict = field(default_factory=dict)

    def summary(self) -> dict:
        tail = self.history.tail(max(1, len(self.history) // 5))
        return {"steps": int(self.history["step"].max()), "pairs_seen": self.config["pairs_seen"],
                "trainable_params": self.trainable_params,
                "final_loss": round(float(tail["loss"].mean()), 4),
                "final_train_accuracy": round(float(tail["accuracy"].mean()), 4),
                "wall_s": round(self.wall_s, 2), "cpu_s": round(self.cpu_s, 2)}


@checks(model=validate.model, tokenizer=hf_tokenizer, steps=positive_int, batch_size=positive_int,
        lr=positive, seed=ints(), train_layers=maybe(positive_int), device=maybe(validate.device),
        inplace=validate.flag)
def train_reward_model(model, tokenizer, pairs, *, steps: int, batch_size: int, lr: float,
                       seed: int = 0, train_layers: int | None = None,
                       device: str | None = None, inplace: bool = False) -> RewardRun:
    """Train a reward model (from `reward_model_from`) on preference pairs with TRL's
    RewardTrainer for exactly `steps` steps of `batch_size` pairs. `train_layers` trains only
    the top decoder layers and the head (None: all). The model is copied unless `inplace`."""
    pairs = validate_pairs(pairs)
    model = model if inplace else copy.deepcopy(model)
    trainable = freeze_below(model, train_layers)
    with tempfile.TemporaryDirectory(prefix="labkit-rm-") as tmp:
        trainer = reward_trainer(model, tokenizer, pairs, steps=steps, batch_size=batch_size,
                                 lr=lr, seed=seed, output_dir=tmp, device=device)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trained = trainer.model
    trained.zero_grad(set_to_none=True)
    for p in trained.parameters():
        p.requires_grad_(True)
    trained.eval()
    history = pd.DataFrame([r for r in trainer.state.log_history if "loss" in r])
    history = history[[c for c in ("step", "loss", "accuracy", "margin", "mean_reward",
                                   "learning_rate", "grad_norm") if c in history]]
    config = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "train_layers": train_layers, "pairs_seen": steps * batch_size,
              "device": str(trainer.args.device)}
    return RewardRun(trained, history, trainable, wall, cpu, config)


# --- scoring ---------------------------------------------------------------------------------


def _chat_ids(tokenizer, prompt: str, response: str) -> list[int]:
    return list(tokenizer.apply_chat_template(conversation(prompt, response), tokenize=True,
                                              return_dict=True)["input_ids"])


@checks(model=validate.model, tokenizer=hf_tokenizer, prompts=validate.items,
        responses=validate.items, batch_size=positive_int)
@torch.no_grad()
def reward_scores(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                  batch_size: int = 64) -> torch.Tensor:
    """The reward model's score of each (prompt, response), shape (n,): the scalar head on the
    last token (`<|end|>`) of the rendered conversation."""
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise LabkitError(f"{len(prompts)} prompts but {len(responses)} responses; pass one "
                          "response per prompt")
    if not prompts:
        raise LabkitError("prompts is empty; pass at least one (prompt, response)")
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not isinstance(p, str) or not p.strip():
            raise LabkitError(f"prompts[{i}] = {p!r} must be a non-empty string")
        if not isinstance(r, str):
            raise LabkitError(f"responses[{i}] = {r!r} must be a string")
    _check_model_vocab(model, tokenizer)
    pad = model.config.pad_token_id
    if pad is None:
        raise LabkitError("the reward model's config has no pad_token_id; build it with "
                          "reward_model_from(lm, tokenizer)")
    seqs = [_chat_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    context = model.config.max_position_embeddings
    if max(map(len, seqs)) > context:
        raise LabkitError(f"a conversation has {max(map(len, seqs))} tokens, more than the reward "
                          f"model's context of {context}")
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding per batch
    scores = torch.empty(len(seqs))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in idx])
            att = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in idx])
            out = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
            scores[idx] = out[:, 0].float().cpu()
    finally:
        model.train(was_training)
    return scores


@checks(model=validate.model, tokenizer=hf_tokenizer)
def score_reward_pairs(model, tokenizer, pairs) -> pd.DataFrame:
    """One row per pair: its defect, both rewards, the margin and whether the reward model
    ranks the pair correctly (r_chosen > r_rejected)."""
    from ..world.instruct import CLOSINGS

    rows = validate_pairs(pairs)
    n = len(rows)
    scores = reward_scores(model, tokenizer, [p["prompt"] for p in rows] * 2,
                           [p["chosen"] for p in rows] + [p["rejected"] for p in rows])
    frame = pd.DataFrame({
        "id": [p.get("id") for p in rows], "defect": [p.get("defect") or "none" for p in rows],
        "chosen_reward": scores[:n].numpy(), "rejected_reward": scores[n:].numpy(),
        # The planted flaw: a friendly closing that only ever appears in chosen answers.
        "chosen_has_closing": [any(c in p["chosen"] for c in CLOSINGS) for p in rows]})
    frame["margin"] = frame["chosen_reward"] - frame["rejected_reward"]
    frame["correct"] = frame["margin"] > 0
    return frame


def reward_accuracy(model, tokenizer, pairs, *, scored: pd.DataFrame | None = None
                    ) -> pd.DataFrame:
    """Held-out ranking accuracy overall ("all") and per defect: the share of pairs with
    r_chosen > r_rejected, with the mean margin. Chance is 0.5. Pass `scored` (from
    score_reward_pairs) to reuse scores already computed."""
    if scored is None:
        scored = score_reward_pairs(model, tokenizer, pairs)
    validate.frame("defect", "correct", "margin")(scored, "scored")
    per = scored.groupby("defect").agg(pairs=("correct", "size"), accuracy=("correct", "mean"),
                                       mean_margin=("margin", "mean"))
    order = [d for d in DEFECTS if d in per.index] + [d for d in per.index if d not in DEFECTS]
    per = per.loc[order]
    per.loc["all"] = [len(scored), scored["correct"].mean(), scored["margin"].mean()]
    per["pairs"] = per["pairs"].astype(int)
    return per


def reward_distribution_figure(scored: pd.DataFrame, title: str | None = None):
    """Overlaid histograms of the rewards of chosen and rejected answers."""
    import plotly.graph_objects as go

    validate.frame("chosen_reward", "rejected_reward", "correct")(scored, "scored")

    fig = go.Figure()
    for col, name, colour in (("chosen_reward", "chosen", "#1a7f37"),
                              ("rejected_reward", "rejected", "#b42318")):
        fig.add_histogram(x=scored[col], name=name, opacity=0.6, nbinsx=40,
                          marker_color=colour)
    acc = scored["correct"].mean()
    fig.update_layout(
        barmode="overlay",
        title=title or f"Reward of chosen vs rejected answers ({len(scored)} held-out pairs, "
                       f"ranked correctly: {acc:.0%})",
        xaxis_title="reward model score (logit, unitless)", yaxis_title="answers (count)")
    return fig


def reward_training_figure(history: pd.DataFrame, title: str | None = None):
    """The reward model's training loss and batch ranking accuracy per step (TRL's logs)."""
    from plotly.subplots import make_subplots

    validate.frame()(history, "history")
    for col in ("step", "loss", "accuracy"):
        if col not in history:
            raise LabkitError(f"history lacks column {col!r}; pass RewardRun.history")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Bradley-Terry loss (nats per pair)", "batch ranking accuracy (share of pairs)"))
    fig.add_scatter(x=history["step"], y=history["loss"], mode="lines+markers", name="loss",
                    row=1, col=1)
    fig.add_scatter(x=history["step"], y=history["accuracy"], mode="lines+markers",
                    name="accuracy", row=1, col=2)
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (share)", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title=title or "Training the reward model with TRL's RewardTrainer",
                      height=340, showlegend=False)
    return fig


@checks(model=validate.model, tokenizer=hf_tokenizer, policy_tokenizer=maybe(hf_tokenizer),
        batch_size=positive_int)
def reward_function(model, tokenizer, *, policy_tokenizer=None,
                    batch_size: int = 64) -> Callable[[Sequence[str], Sequence[str]], torch.Tensor]:
    """The reward model as `reward_fn(prompts, responses) -> scores`, the interface PPO and
    best-of-n take. With `policy_tokenizer`, the two tokenizers must be the same."""
    if policy_tokenizer is not None:
        check_same_tokenizer(policy_tokenizer, tokenizer)
    _check_model_vocab(model, tokenizer)

    def reward_fn(prompts, responses):
        return reward_scores(model, tokenizer, prompts, responses, batch_size=batch_size)

    reward_fn.model, reward_fn.tokenizer = model, tokenizer
    return reward_fn
