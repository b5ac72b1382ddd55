"""DPO and its alternatives (lab 08): preference data, TRL's preference trainers, evaluation.

RLHF (lab 07) trains a reward model and then a policy against it, with a frozen reference and a
value model beside it. DPO (Rafailov 2023) skips the reward model: the Bradley-Terry loss is
written directly in terms of the policy's log-probs, with the reward implied as
beta * log(pi/ref). Its relatives change the loss (IPO, hinge), the data (KTO: single answers
labelled good or bad) or drop the reference model (ORPO, SimPO).

Here the shipped preference pairs become TRL datasets (checked first: every record must have a
prompt and two different answers that fit the model's context), `train_preference` runs the
matching TRL trainer on CPU or GPU and measures it, and `preference_accuracy` scores a trained
model on held-out pairs the same way for every method. The losses themselves are written out
in `preference_losses`; `trl_cross_check` compares them with TRL's code on the same log-probs.

TRL 1.16 particulars: DPO/IPO/hinge are `DPOTrainer` with `loss_type=[...]`, KTO is
`KTOTrainer`, ORPO and SimPO live in `trl.experimental` (SimPO is `CPOTrainer` with
`loss_type="simpo"` and `cpo_alpha=0`). The new trainers patch a fused LM head into the model's
`forward` whose closure holds the *original* module, so a deep copy of a patched model silently
runs the original's weights; `train_preference` removes the patch after training.
"""

from __future__ import annotations

import contextlib
import copy
import math
import platform
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
import torch.nn.functional as F

from .. import validate
from ..errors import LabkitError
from ..models import count_parameters
from ..validate import checks, hf_tokenizer, ints, maybe, positive, positive_int
from .preference_losses import dpo_loss, hinge_loss, ipo_loss, kto_loss, orpo_loss, simpo_loss
from .sft import (
    END_TOKEN,
    _PeakMemory,
    _quiet_datasets,
    _training_state_mib,
    lora_config,
    mixed_precision,
    training_stream,
)


@dataclass(frozen=True)
class Method:
    label: str
    trainer: str  # the TRL class that runs it
    loss_type: str | None
    reference: bool  # needs a frozen reference model (DPO family, KTO) or not (ORPO, SimPO)
    paired: bool  # trains on (chosen, rejected) pairs; KTO sees single labelled answers
    beta: float  # the customary beta (SimPO's paper range is 2-2.5; the others 0.1)
    paper: str


METHODS = {
    "dpo": Method("DPO", "DPOTrainer", "sigmoid", True, True, 0.1, "Rafailov et al. 2023"),
    "ipo": Method("IPO", "DPOTrainer", "ipo", True, True, 0.1, "Azar et al. 2023"),
    "hinge": Method("hinge (SLiC)", "DPOTrainer", "hinge", True, True, 0.1, "Zhao et al. 2023"),
    "kto": Method("KTO", "KTOTrainer", "kto", True, False, 0.1, "Ethayarajh et al. 2024"),
    "orpo": Method("ORPO", "ORPOTrainer", None, False, True, 0.1, "Hong et al. 2024"),
    "simpo": Method("SimPO", "CPOTrainer", "simpo", False, True, 2.0, "Meng et al. 2024"),
}
SIMPO_GAMMA = 1.0  # SimPO's target margin; gamma/beta = 0.5 at beta = 2, the paper's setting
REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
FORMATS = ("conversational", "standard")
# What preference_accuracy can score by: a method's own reward, or "likelihood" (the average
# log-prob per token of each answer: reference-free, so it also scores an SFT model).
CRITERIA = (*METHODS, "likelihood")

# The shipped adapter (`build_dpo_adapter`): LoRA DPO on the train split, from the SFT model.
# The NLL term on the chosen answers (RPO) keeps them likely: plain DPO with this recipe (KL
# 0.54 nats/token from SFT on held-out answers) broke greedy answers, e.g. the wrong entity as
# the first word.
DPO_ADAPTER_RECIPE = {"method": "dpo", "steps": 100, "batch_size": 8, "lr": 5e-4, "beta": 0.1,
                      "nll_weight": 1.0,
                      "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}, "seed": 8,
                      "warmup_steps": 10, "scheduler": "cosine"}


def _method(name) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        raise LabkitError(f"method={name!r} is unknown; valid: {', '.join(METHODS)}")
    return METHODS[name]


def check_beta(beta, method: str = "dpo") -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real) or not 0 < beta < math.inf:
        raise LabkitError(f"beta={beta!r} is invalid; it must be a number > 0 (typical for "
                          f"{method}: {METHODS.get(method, METHODS['dpo']).beta})")
    return float(beta)


# --- preference data -------------------------------------------------------------------------


def _record_name(pair, index: int) -> str:
    rid = pair.get("id") if isinstance(pair, dict) else None
    return f"pair {index}" + (f" (id {rid!r})" if rid is not None else "")


def encode_response(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """The chat-template tokens of (user prompt, assistant response) and where the response
    starts: the tokens after the template's generation prompt, `<|end|>` included. These are the
    sequences TRL's DPOTrainer and KTOTrainer build from conversational data."""
    user = [{"role": "user", "content": prompt}]
    prompt_ids = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                         tokenize=True, return_dict=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return list(full), start


def validate_pairs(pairs, tokenizer=None, *, max_length: int | None = None) -> list[dict]:
    """The pairs as a list, each checked: 'prompt', 'chosen' and 'rejected' are non-empty
    strings, chosen differs from rejected, and (with a tokenizer and max_length) prompt +
    answer fits in max_length chat-template tokens. A bad record raises LabkitError naming it."""
    maybe(positive_int)(max_length, "max_length")
    if isinstance(pairs, (str, bytes, dict)) or (pairs is not None and not hasattr(pairs, "__iter__")):
        raise LabkitError(f"pairs must be a list of preference records, got {type(pairs).__name__}")
    rows = list(pairs) if pairs is not None else []
    if not rows:
        raise LabkitError("pairs is empty; pass preference records with 'prompt', 'chosen' and "
                          "'rejected' (e.g. labkit.loaders.load_records('preferences'))")
    for i, pair in enumerate(rows):
        name = _record_name(pair, i)
        if not isinstance(pair, dict):
            raise LabkitError(f"{name} is a {type(pair).__name__}, not a dict with "
                              f"{', '.join(REQUIRED_FIELDS)}")
        missing = [k for k in REQUIRED_FIELDS if not isinstance(pair.get(k), str)]
        if missing:
            raise LabkitError(f"{name} is missing {missing} (or they are not strings); every "
                              f"pair needs string fields {', '.join(REQUIRED_FIELDS)}")
        for key in REQUIRED_FIELDS:
            if not pair[key].strip():
                raise LabkitError(f"{name} has an empty {key}; prompt, chosen and rejected must "
                                  "all contain text")
        if pair["chosen"].strip() == pair["rejected"].strip():
            raise LabkitError(f"{name} has identical chosen and rejected answers "
                              f"({pair['chosen'][:40]!r}); a preference needs two different ones")
        if tokenizer is not None and max_length is not None:
            for key in ("chosen", "rejected"):
                n = len(encode_response(tokenizer, pair["prompt"], pair[key])[0])
                if n > max_length:
                    raise LabkitError(f"{name}: prompt + {key} is {n} tokens, longer than the "
                                      f"model's context of {max_length} tokens; shorten or drop it")
    return rows


def _messages(pair: dict) -> dict:
    return {"prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def _standard(pair: dict, tokenizer) -> dict:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": pair["prompt"]}],
                                           tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "chosen": pair["chosen"] + END_TOKEN,
            "rejected": pair["rejected"] + END_TOKEN}


def _check_format(format: str, tokenizer) -> None:
    if not isinstance(format, str) or format not in FORMATS:
        raise LabkitError(f"format={format!r} is unknown; valid: {', '.join(FORMATS)}")
    if format == "standard" and tokenizer is None:
        raise LabkitError("format='standard' writes the chat template into the prompt text; "
                          "pass the tokenizer")


def preference_dataset(pairs, tokenizer=None, *, format: str = "conversational",
                       max_length: int | None = None):
    """A `datasets.Dataset` of prompt/chosen/rejected in TRL's preference format.

    conversational: prompt = [user message], chosen/rejected = [assistant message]; the trainer
    applies the chat template. standard: the template already applied as text (prompt ends with
    the generation prompt, answers end with <|end|>). Pairs are validated first."""
    import datasets

    _check_format(format, tokenizer)
    maybe(positive_int)(max_length, "max_length")
    rows = validate_pairs(pairs, tokenizer, max_length=max_length)
    build = _messages if format == "conversational" else (lambda p: _standard(p, tokenizer))
    return datasets.Dataset.from_list([build(p) for p in rows])


def unpaired_dataset(pairs, tokenizer=None, *, batch_size: int, format: str = "conversational",
                     max_length: int | None = None):
    """KTO's view of the same pairs: prompt/completion/label rows, chosen = desirable (True),
    rejected = undesirable (False), in batches of 2 * batch_size rows.

    Each block of batch_size pairs gives one batch holding every chosen and every rejected
    answer of those pairs, ordered so that neighbours never share a prompt: KTOTrainer takes
    its KL baseline from each row's prompt with the previous row's answer, which must be a
    mismatched pair. (TRL's own `unpair_preference_dataset` puts all chosen rows before all
    rejected ones, so a short run in KTO's fixed order would see no undesirable answer.)"""
    import datasets

    if not (isinstance(batch_size, int) and batch_size >= 2):
        raise LabkitError(f"batch_size={batch_size!r} must be an integer >= 2 for KTO: its KL "
                          "baseline pairs each prompt with another pair's answer")
    _check_format(format, tokenizer)
    maybe(positive_int)(max_length, "max_length")
    rows = validate_pairs(pairs, tokenizer, max_length=max_length)
    out = []
    for start in range(0, len(rows), batch_size):
        block = [_messages(p) if format == "conversational" else _standard(p, tokenizer)
                 for p in rows[start:start + batch_size]]
        for first_half in (True, False):
            for j, p in enumerate(block):
                good = (j % 2 == 0) == first_half
                out.append({"prompt": p["prompt"], "completion": p["chosen" if good else
                                                                   "rejected"], "label": good})
    return datasets.Dataset.from_list(out)


# --- training with TRL -----------------------------------------------------------------------


def _check_positive_int(name, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise LabkitError(f"{name}={value!r} must be an integer >= 1")


def _remove_fused_head(*models) -> None:
    """Undo TRL's `add_fused_lm_head`: it sets an instance `forward` whose closure calls the
    original module, which a later deepcopy would keep calling."""
    for model in models:
        if model is None:
            continue
        for module in (model, getattr(model, "get_base_model", lambda: None)()):
            if module is not None and "forward" in vars(module):
                del module.forward


def preference_trainer(method: str, model, tokenizer, pairs, *, steps: int, lr: float,
                       beta: float | None = None, batch_size: int, seed: int = 0, lora=True,
                       ref_model=None, simpo_gamma: float = SIMPO_GAMMA, warmup_steps: int = 0,
                       scheduler: str = "constant", max_length: int | None = None,
                       device: str | None = None, bf16: bool | None = None, output_dir=None,
                       callbacks: Sequence = (), nll_weight: float = 0.0):
    """The TRL trainer of `method`, configured for the labs: fp32 on CPU (TRL defaults to bf16),
    no gradient checkpointing, no checkpoints, no reporting, seeded, and the pairs in a fixed
    seeded order (`training_stream`: batches of similar length) so that every method sees the
    same pairs in the same steps.

    `lora`: True, a dict of LoraConfig fields or a LoraConfig trains LoRA adapters (then the
    reference of DPO/IPO/KTO is the same model with the adapter switched off); None trains
    every weight (then the reference is `ref_model`, or a frozen copy of `model`). `model` is
    changed in place (peft wraps it); `train_preference` copies it first. `nll_weight` > 0
    adds TRL's "sft" loss (mean NLL per chosen token) with that weight to a DPOTrainer method:
    DPO + NLL is RPO (Pang et al. 2024), which keeps the chosen answers likely."""
    from transformers import PrinterCallback

    info = _method(method)
    beta = info.beta if beta is None else check_beta(beta, method)
    if (isinstance(nll_weight, bool) or not isinstance(nll_weight, Real)
            or not 0 <= nll_weight < math.inf):
        raise LabkitError(f"nll_weight={nll_weight!r} must be a number >= 0")
    if nll_weight and info.trainer != "DPOTrainer":
        raise LabkitError(f"nll_weight adds TRL's 'sft' loss to DPOTrainer's; {method} runs "
                          f"{info.trainer} (use dpo, ipo or hinge; ORPO has its own NLL term)")
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size)
    if not (isinstance(lr, Real) and 0 < lr < 1):
        raise LabkitError(f"lr={lr!r} must be a number in (0, 1), e.g. 1e-3")
    context = max_length or getattr(model.config, "max_position_embeddings", None)
    rows = validate_pairs(pairs, tokenizer, max_length=context)
    # The exact stream of steps x batch_size pairs, seeded, in batches of similar length (a
    # verbose rejected answer is ~150 tokens, most answers ~30: random batches pad 2x).
    stream = training_stream(
        len(rows), lambda i: max(len(encode_response(tokenizer, rows[i]["prompt"], rows[i][k])[0])
                                 for k in ("chosen", "rejected")),
        batch_size=batch_size, steps=steps, seed=seed)
    rows = [rows[i] for i in stream]
    if method == "kto":
        train_set = unpaired_dataset(rows, batch_size=batch_size, max_length=None)
    else:
        train_set = preference_dataset(rows)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = mixed_precision(device, bf16)
    common = dict(
        output_dir=str(output_dir or tempfile.gettempdir()), max_steps=steps,
        per_device_train_batch_size=2 * batch_size if method == "kto" else batch_size,
        learning_rate=lr, lr_scheduler_type=scheduler, warmup_steps=warmup_steps,
        weight_decay=0.0, max_grad_norm=1.0, seed=seed, data_seed=seed,
        use_cpu=not device.startswith("cuda"), **precision,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        log_level="error", optim="adamw_torch", train_sampling_strategy="sequential",
        max_length=context, beta=beta)
    peft_config = None if lora is None or lora is False else lora_config(lora, model=model)
    if info.reference and peft_config is None and ref_model is None:
        # TRL would reload the reference from the model's hub id; a model built in memory has none.
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        ref_model.eval().requires_grad_(False)
    with warnings.catch_warnings(), _quiet_datasets():
        warnings.simplefilter("ignore")  # trl.experimental warns on import; TRL on CPU bf16
        if info.trainer == "DPOTrainer":
            from trl import DPOConfig, DPOTrainer

            trainer = DPOTrainer(model=model, ref_model=ref_model,
                                 args=DPOConfig(loss_type=[info.loss_type, "sft"][:2 if nll_weight else 1],
                                                loss_weights=[1.0, float(nll_weight)][
                                                    :2 if nll_weight else 1], **common),
                                 train_dataset=train_set, processing_class=tokenizer,
                                 peft_config=peft_config, callbacks=list(callbacks))
        elif info.trainer == "KTOTrainer":
            from trl import KTOConfig, KTOTrainer

            trainer = KTOTrainer(model=model, ref_model=ref_model,
                                 args=KTOConfig(loss_type="kto", **common),
                                 train_dataset=train_set, processing_class=tokenizer,
                                 peft_config=peft_config, callbacks=list(callbacks))
        elif info.trainer == "ORPOTrainer":
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            trainer = ORPOTrainer(model=model, args=ORPOConfig(remove_unused_columns=False,
                                                               **common),
                                  train_dataset=train_set, processing_class=tokenizer,
                                  peft_config=peft_config, callbacks=list(callbacks))
        else:
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            if not simpo_gamma >= 0:
                raise LabkitError(f"simpo_gamma={simpo_gamma!r} is invalid; the target margin "
                                  "must be >= 0")
            trainer = CPOTrainer(model=model, args=CPOConfig(
                loss_type="simpo", cpo_alpha=0.0, simpo_gamma=simpo_gamma,
                remove_unused_columns=False, **common), train_dataset=train_set,
                processing_class=tokenizer, peft_config=peft_config,
                callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # one log line per step would flood a notebook
    return trainer


HISTORY_COLUMNS = {"step": "step", "loss": "loss", "rewards/chosen": "chosen_reward",
                   "rewards/rejected": "rejected_reward", "rewards/margins": "margin",
                   "rewards/accuracies": "reward_accuracy", "logps/chosen": "chosen_logps",
                   "logps/rejected": "rejected_logps", "kl": "kl", "nll_loss": "nll_loss"}


@dataclass
class PreferenceRun:
    """What `train_preference` returns: the trained model, its per-step log, and its costs."""

    method: str
    model: object  # the trained policy (a peft PeftModel when trained with LoRA)
    history: pd.DataFrame  # one row per step: loss, rewards, margin, log-probs (HISTORY_COLUMNS)
    beta: float
    trainable_params: int
    total_params: int
    wall_s: float
    cpu_s: float  # CPU seconds of this process while training (all threads)
    peak_mib: float  # measured during training (CUDA allocator peak, or RSS growth on CPU)
    state_mib: float  # every weight held (policy and a separate reference), grads, AdamW state
    weight_copies: int  # model weight sets in memory: 2 with a separate reference, else 1
    config: dict = field(default_factory=dict)

    @property
    def info(self) -> Method:
        return METHODS[self.method]

    @property
    def models(self) -> int:
        """Models the method needs: policy + reference (DPO family, KTO) or the policy alone."""
        return 2 if self.info.reference else 1

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 10% of steps (at least one)."""
        losses = self.history["loss"].dropna()
        return float(losses.tail(max(1, len(losses) // 10)).mean())

    def summary(self) -> dict:
        return {"method": self.info.label, "beta": self.beta,
                "models": "policy + reference" if self.info.reference else "policy only",
                "models_in_memory": self.models, "weight_copies": self.weight_copies,
                "trainable_params": self.trainable_params, "wall_s": round(self.wall_s, 2),
                "cpu_s": round(self.cpu_s, 2), "peak_mib": round(self.peak_mib, 1),
                "state_mib": round(self.state_mib, 2), "final_loss": round(self.final_loss, 4)}


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so that the RSS growth measured during a
    run counts what that run needs, not what an earlier run left in the allocator's pool."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@checks(model=validate.model, tokenizer=hf_tokenizer, steps=positive_int, lr=positive,
        batch_size=positive_int, seed=ints(), ref_model=maybe(validate.model),
        simpo_gamma=validate.finite, warmup_steps=validate.nonnegative_int,
        max_length=maybe(positive_int), device=maybe(validate.device), bf16=maybe(validate.flag),
        inplace=validate.flag, nll_weight=validate.nonnegative)
def train_preference(method: str, model, tokenizer, train_pairs, *, steps: int, lr: float,
                     beta: float | None = None, batch_size: int, seed: int = 0, lora=True,
                     ref_model=None, simpo_gamma: float = SIMPO_GAMMA, warmup_steps: int = 0,
                     scheduler: str = "constant", max_length: int | None = None,
                     device: str | None = None, bf16: bool | None = None,
                     inplace: bool = False, callbacks: Sequence = (),
                     nll_weight: float = 0.0) -> PreferenceRun:
    """Align `model` on preference pairs with TRL's trainer for `method` for exactly `steps`
    steps of `batch_size` pairs (KTO: the same pairs as 2 * batch_size single answers).

    Methods: dpo, ipo, hinge (DPOTrainer), kto (KTOTrainer), orpo (ORPOTrainer) and simpo
    (CPOTrainer, loss_type="simpo", cpo_alpha=0), from trl.experimental for the last two. `beta`
    defaults to the method's customary value (METHODS). The model is copied first unless
    `inplace`; the trained copy comes back in the run, with wall time, CPU time, peak memory and
    the number of models held."""
    info = _method(method)
    model = model if inplace else copy.deepcopy(model)
    total = count_parameters(model)
    with tempfile.TemporaryDirectory(prefix="labkit-pref-") as tmp:
        trainer = preference_trainer(
            method, model, tokenizer, train_pairs, steps=steps, lr=lr, beta=beta,
            batch_size=batch_size, seed=seed, lora=lora, ref_model=ref_model,
            simpo_gamma=simpo_gamma, warmup_steps=warmup_steps, scheduler=scheduler,
            max_length=max_length, device=device, bf16=bf16, output_dir=tmp, callbacks=callbacks,
            nll_weight=nll_weight)
        trained = trainer.model
        trainable = count_parameters(trained, trainable_only=True)
        _release_free_memory()
        wall, cpu = time.perf_counter(), time.process_time()
        with _PeakMemory(str(trainer.args.device)) as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    reference = getattr(trainer, "ref_model", None)
    state = _training_state_mib(trained, trainer.optimizer)
    if reference is not None:
        state += sum(p.numel() * p.element_size() for p in reference.parameters()) / 2**20
    _remove_fused_head(trained, reference)
    trained.zero_grad(set_to_none=True)
    trained.eval()
    logged = [r for r in trainer.state.log_history if "loss" in r]
    history = pd.DataFrame(logged).rename(columns=HISTORY_COLUMNS)
    history = history[[c for c in HISTORY_COLUMNS.values() if c in history]]
    args = trainer.args
    peft_config = getattr(trained, "peft_config", {}).get("default")
    config = {"method": method, "trainer": info.trainer, "loss_type": info.loss_type,
              "beta": args.beta, "steps": steps, "batch_size": batch_size, "lr": lr,
              "seed": seed, "scheduler": scheduler, "warmup_steps": warmup_steps,
              "pairs": len(train_pairs), "device": str(args.device), "bf16": bool(args.bf16),
              "lora": None if peft_config is None else
              {"r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
               "target_modules": sorted(peft_config.target_modules)}}
    if method == "simpo":
        config["simpo_gamma"] = simpo_gamma
    if nll_weight:
        config["nll_weight"] = float(nll_weight)
    return PreferenceRun(method, trained, history, float(args.beta), trainable, total, wall, cpu,
                         mem.peak_mib, state, 2 if reference is not None else 1, config)


# --- scoring held-out pairs ------------------------------------------------------------------


@dataclass
class PairScores:
    """Summed log-probs of each pair's chosen and rejected answer under a model (and, when scored
    with a reference, under the reference too, with the token-level KL between the two)."""

    ids: list
    defects: list
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    kl: float | None = None  # mean over answer tokens of KL(pi || ref), nats per token

    def reference(self) -> PairScores:
        """The reference model's own scores (what an unaligned model prefers)."""
        if self.ref_chosen_logps is None:
            raise LabkitError("these scores were computed without a reference model")
        return PairScores(self.ids, self.defects, self.ref_chosen_logps, self.ref_rejected_logps,
                          self.chosen_tokens, self.rejected_tokens)


def _log_softmax(model, ids, att):
    """Next-token log-probabilities at every position (positions counted over attended tokens,
    as `sequence_logprobs` counts them)."""
    position_ids = (att.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids).logits
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.no_grad()
def _answer_logprobs(model, ref_model, ids, att, mask):
    """Summed answer log-probs under the policy (and the reference), and the summed token-level
    KL(pi || ref) over the answer tokens."""
    was = [(m, m.training) for m in (model, ref_model) if m is not None]
    for m, _ in was:
        m.eval()
    try:
        answer = mask[:, 1:].float()
        logp = _log_softmax(model, ids, att)
        logps = (logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * answer).sum(-1)
        if ref_model is None:
            return logps, None, None
        logq = _log_softmax(ref_model, ids, att)
        ref_logps = (logq.gather(-1, ids[:, 1:, None]).squeeze(-1) * answer).sum(-1)
        kl = ((logp.exp() * (logp - logq)).sum(-1) * answer).sum()
        return logps, ref_logps, kl
    finally:
        for m, training in was:
            m.train(training)


def score_pairs(model, tokenizer, pairs, *, ref_model=None, batch_size: int = 16) -> PairScores:
    """Score each pair's chosen and rejected answer (chat template, answer tokens only) under
    `model` and, if given, `ref_model`; with a reference also the mean token-level KL(pi||ref)
    on those answers (exact over the vocabulary at each answer position)."""
    validate.model(model), hf_tokenizer(tokenizer), maybe(validate.model)(ref_model, "ref_model")
    rows = validate_pairs(pairs)
    _check_positive_int("batch_size", batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    seqs = [encode_response(tokenizer, p["prompt"], p[key]) for p in rows
            for key in ("chosen", "rejected")]
    # Batches of similar lengths waste little compute on padding; results go back in order.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    logps, ref_logps = torch.zeros(len(seqs)), torch.zeros(len(seqs))
    lengths = torch.tensor([len(s) - b for s, b in seqs])
    kl_sum = 0.0
    for start in range(0, len(seqs), 2 * batch_size):
        index = order[start:start + 2 * batch_size]
        chunk = [seqs[i] for i in index]
        width = max(len(s) for s, _ in chunk)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in chunk], device=device)
        att = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in chunk],
                           device=device)
        mask = torch.tensor([[0] * b + [1] * (len(s) - b) + [0] * (width - len(s))
                             for s, b in chunk], device=device)
        lp, ref_lp, kl = _answer_logprobs(model, ref_model, ids, att, mask)
        logps[index] = lp.cpu()
        if ref_lp is not None:
            ref_logps[index] = ref_lp.cpu()
            kl_sum += float(kl)
    n_tokens = float(lengths.sum())
    refs = ref_logps if ref_model is not None else None
    return PairScores(
        ids=[p.get("id") for p in rows], defects=[p.get("defect") or "none" for p in rows],
        chosen_logps=logps[0::2], rejected_logps=logps[1::2], chosen_tokens=lengths[0::2],
        rejected_tokens=lengths[1::2],
        ref_chosen_logps=None if refs is None else refs[0::2],
        ref_rejected_logps=None if refs is None else refs[1::2],
        kl=None if refs is None else kl_sum / n_tokens)


def logprob_shift(scores: PairScores, reference: PairScores | None = None) -> pd.DataFrame:
    """How far training moved the log-probs of the chosen and of the rejected answers, log pi -
    log ref summed over each answer and averaged over pairs (nats per answer), overall ("all")
    and per defect. The reference is `reference` (scores of the same pairs under the starting
    model) or the reference scores inside `scores`."""
    ref = reference if reference is not None else scores
    ref_chosen = ref.chosen_logps if reference is not None else ref.ref_chosen_logps
    ref_rejected = ref.rejected_logps if reference is not None else ref.ref_rejected_logps
    if ref_chosen is None:
        raise LabkitError("no reference scores: pass `reference` (score_pairs of the starting "
                          "model) or scores computed with ref_model")
    if reference is not None and list(reference.ids) != list(scores.ids):
        raise LabkitError("scores and reference cover different pairs; score the same pairs "
                          "with both models")
    frame = pd.DataFrame({"defect": scores.defects,
                          "chosen": (scores.chosen_logps - ref_chosen).numpy(),
                          "rejected": (scores.rejected_logps - ref_rejected).numpy()})
    rows = [("all", frame)] + [(d, g) for d, g in frame.groupby("defect", sort=True)]
    return pd.DataFrame([{"defect": d, "pairs": len(g), "chosen": float(g["chosen"].mean()),
                          "rejected": float(g["rejected"].mean())} for d, g in rows]
                        ).set_index("defect")


def _rewards(scores: PairScores, criterion: str, beta: float):
    """(chosen, rejected) rewards: beta * log(pi/ref) summed over the answer for methods with a
    reference (DPO's implicit reward), beta * average log-prob for ORPO and SimPO (what TRL
    logs as their rewards), the average log-prob itself for "likelihood"."""
    if criterion in METHODS and METHODS[criterion].reference:
        if scores.ref_chosen_logps is None:
            raise LabkitError(f"{criterion} scores by the implicit reward beta*log(pi/ref): pass "
                              "ref_model (the model training started from)")
        return (beta * (scores.chosen_logps - scores.ref_chosen_logps),
                beta * (scores.rejected_logps - scores.ref_rejected_logps))
    scale = 1.0 if criterion == "likelihood" else beta
    return (scale * scores.chosen_logps / scores.chosen_tokens,
            scale * scores.rejected_logps / scores.rejected_tokens)


def preference_accuracy(model, ref_model, tokenizer, pairs, method: str = "dpo", *,
                        beta: float | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Share of held-out pairs whose chosen answer gets the higher reward, overall ("all") and
    per defect, with the mean reward margin.

    The reward is the method's own: DPO's implicit reward beta*log(pi/ref) for methods with a
    reference (DPO, IPO, hinge, KTO; `ref_model` is the model training started from), the
    average log-prob per token for reference-free ORPO and SimPO (scaled by beta, as TRL logs
    it), or method="likelihood" for the plain average log-prob of any model (an SFT model
    included). `model` may also be a PairScores from `score_pairs` (then no tokenizer or pairs
    are needed); ties count as misses."""
    if not isinstance(method, str) or method not in CRITERIA:
        raise LabkitError(f"method={method!r} is unknown; valid: {', '.join(CRITERIA)}")
    _check_positive_int("batch_size", batch_size)
    beta = (METHODS[method].beta if method in METHODS else 1.0) if beta is None else \
        check_beta(beta, method)
    needs_ref = method in METHODS and METHODS[method].reference
    if isinstance(model, PairScores):
        scores = model
    else:
        if tokenizer is None:
            raise LabkitError("preference_accuracy needs the tokenizer to score a model")
        live_ref = needs_ref and ref_model is not None and not isinstance(ref_model, PairScores)
        scores = score_pairs(model, tokenizer, pairs, ref_model=ref_model if live_ref else None,
                             batch_size=batch_size)
    if needs_ref and scores.ref_chosen_logps is None and isinstance(ref_model, PairScores):
        scores = PairScores(scores.ids, scores.defects, scores.chosen_logps,
                            scores.rejected_logps, scores.chosen_tokens, scores.rejected_tokens,
                            ref_model.chosen_logps, ref_model.rejected_logps)
    chosen, rejected = _rewards(scores, method, beta)
    frame = pd.DataFrame({"defect": scores.defects, "win": (chosen > rejected).numpy(),
                          "margin": (chosen - rejected).numpy()})
    rows = [("all", frame)] + [(d, g) for d, g in frame.groupby("defect", sort=True)]
    return pd.DataFrame([{"defect": d, "pairs": len(g), "accuracy": float(g["win"].mean()),
                          "margin": float(g["margin"].mean())} for d, g in rows]
                        ).set_index("defect")


# What each pipeline holds while it trains the policy, read off the pipelines (lab 07's PPO loop
# and the TRL trainers here): the models it trains and the frozen ones, the separate training
# stages (RLHF trains a reward model first) and whether it samples answers while training. Lab
# 07's value model is a head on the policy's trunk (3 models); InstructGPT and TRL's former
# PPOTrainer use a separate value model (4).
PIPELINES = {
    "RLHF (PPO, lab 07)": {"models": "3-4", "trained": "policy, value",
                           "frozen": "reward model, reference", "stages": 2,
                           "samples": True},
    "DPO / IPO / hinge": {"models": "2", "trained": "policy", "frozen": "reference",
                          "stages": 1, "samples": False},
    "KTO": {"models": "2", "trained": "policy", "frozen": "reference",
            "stages": 1, "samples": False},
    "ORPO / SimPO": {"models": "1", "trained": "policy", "frozen": "-",
                     "stages": 1, "samples": False},
}
_PIPELINE_OF = {"dpo": "DPO / IPO / hinge", "ipo": "DPO / IPO / hinge",
                "hinge": "DPO / IPO / hinge", "kto": "KTO", "orpo": "ORPO / SimPO",
                "simpo": "ORPO / SimPO"}


def pipeline_table(runs: dict | None = None) -> pd.DataFrame:
    """Models each alignment pipeline holds while training the policy (RLHF with PPO vs the DPO
    family vs the reference-free methods), its training stages, whether it samples while
    training, and, for the methods trained in `runs` (name -> PreferenceRun), what the TRL
    trainer that ran held ("measured here": method models/weight copies) (LoRA's reference is the policy with
    its adapter off, so it costs forward passes, not weights)."""
    measured = {}
    for name, run in (runs or {}).items():
        row = _PIPELINE_OF.get(name)
        if row is None:
            raise LabkitError(f"runs has {name!r}; its keys must be methods: {', '.join(METHODS)}")
        measured.setdefault(row, []).append(f"{name} {run.models}/{run.weight_copies}")
    out = [{"pipeline": name, **facts,
            "measured here": " ".join(measured.get(name, [])) or "-"}
           for name, facts in PIPELINES.items()]
    return pd.DataFrame(out).set_index("pipeline")


def comparison_table(runs: dict, accuracies: dict) -> pd.DataFrame:
    """One row per method: held-out accuracy overall and per defect, time, memory, models."""
    validate.mapping(lambda run, name: validate.instance(run, name, PreferenceRun), empty=True)(runs, "runs")
    validate.mapping(validate.frame("accuracy"), empty=True)(accuracies, "accuracies")
    missing = [name for name in runs if name not in accuracies]
    if missing:
        raise LabkitError(f"accuracies has no entry for the runs {missing}")
    out = []
    for name, run in runs.items():
        acc = accuracies[name]["accuracy"]
        s = run.summary()
        out.append({"method": name, "accuracy": acc["all"],
                    **{f"acc_{d}": acc[d] for d in acc.index if d != "all"},
                    "wall_s": s["wall_s"], "cpu_s": s["cpu_s"], "peak_mib": s["peak_mib"],
                    "state_mib": s["state_mib"], "models_in_memory": s["models_in_memory"],
                    "weight_copies": s["weight_copies"], "final_loss": s["final_loss"]})
    return pd.DataFrame(out).set_index("method")


def beta_sweep(model, tokenizer, train_pairs, eval_pairs, betas, *, method: str = "dpo",
               steps: int, lr: float, batch_size: int, seed: int = 0, lora=True,
               runs: dict | None = None, progress=None) -> pd.DataFrame:
    """One short run per beta (the same pairs, steps and seed) and what it did on held-out
    pairs: accuracy and mean margin of the implicit reward, the token-level KL from the
    reference, and how far the chosen and rejected log-probs moved (nats per answer). `runs`
    maps betas already trained to their PreferenceRun, which are reused."""
    if not _method(method).reference:
        raise LabkitError(f"beta_sweep measures the KL from a reference; {method} has none "
                          "(use dpo, ipo, hinge or kto)")
    betas = sorted({check_beta(b, method) for b in validate.items(betas, "betas", empty=True)})
    validate.model(model), validate_pairs(eval_pairs)
    if not betas:
        raise LabkitError("betas is empty; pass a few values such as (0.01, 0.1, 1.0)")
    runs = dict(runs or {})
    rows = []
    for i, beta in enumerate(betas):
        run = runs.get(beta) or train_preference(
            method, model, tokenizer, train_pairs, steps=steps, lr=lr, beta=beta,
            batch_size=batch_size, seed=seed, lora=lora)
        scores = score_pairs(run.model, tokenizer, eval_pairs, ref_model=model)
        acc = preference_accuracy(scores, None, None, None, method, beta=beta)
        rows.append({"beta": beta, "accuracy": acc.loc["all", "accuracy"],
                     "margin": acc.loc["all", "margin"], "kl": scores.kl,
                     "chosen_shift": float((scores.chosen_logps - scores.ref_chosen_logps).mean()),
                     "rejected_shift": float((scores.rejected_logps
                                              - scores.ref_rejected_logps).mean()),
                     "final_loss": run.final_loss, "wall_s": run.wall_s, "cpu_s": run.cpu_s})
        if progress is not None:
            progress((i + 1) / len(betas))
    return pd.DataFrame(rows)


# --- figures ---------------------------------------------------------------------------------


def training_curves_figure(runs, title: str | None = None):
    """Per step: the loss, the reward margin, and how far the chosen and rejected log-probs
    moved from the reference (log pi/ref = reward / beta, methods with a reference only)."""
    from plotly.subplots import make_subplots

    runs = {runs.method: runs} if isinstance(runs, PreferenceRun) else runs
    validate.mapping(lambda run, name: validate.instance(run, name, PreferenceRun))(runs, "runs")
    # Short panel titles (the units and what is subtracted are on the y axes): three long
    # titles side by side run into each other at a notebook's width.
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "reward margin",
                                                        "change of log pi/ref"),
                        horizontal_spacing=0.1)
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for (name, run), colour in zip(runs.items(), colours * 3):
        h = run.history
        fig.add_scatter(x=h["step"], y=h["loss"], mode="lines+markers", name=name,
                        line={"color": colour}, legendgroup=name, row=1, col=1)
        fig.add_scatter(x=h["step"], y=h["margin"], mode="lines+markers", name=name,
                        line={"color": colour}, legendgroup=name, showlegend=False, row=1, col=2)
        if run.info.reference:
            for key, dash in (("chosen_reward", "solid"), ("rejected_reward", "dot")):
                fig.add_scatter(x=h["step"], y=h[key] / run.beta, mode="lines",
                                name=f"{name}: {key.split('_')[0]}", legendgroup=name,
                                line={"color": colour, "dash": dash}, row=1, col=3)
    fig.add_hline(y=0, line={"color": "#98a2b3", "width": 1}, row=1, col=3)
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="loss (method's units)", row=1, col=1)
    fig.update_yaxes(title_text="chosen - rejected (reward units)", row=1, col=2)
    fig.update_yaxes(title_text="log pi/ref per answer (nats)", row=1, col=3)
    fig.update_layout(title=title or "Preference training, per step (batch means)", height=380,
                      template="plotly_white")
    return fig


def preference_accuracy_figure(accuracies: dict, title: str = "Held-out preference accuracy"):
    """Grouped bars: accuracy overall and per defect, one colour per model or method."""
    import plotly.graph_objects as go

    validate.mapping(validate.frame("accuracy", "pairs"))(accuracies, "accuracies")

    fig = go.Figure()
    for name, table in accuracies.items():
        fig.add_bar(x=list(table.index), y=table["accuracy"], name=name,
                    text=[f"{v:.0%}" for v in table["accuracy"]], textposition="outside")
    fig.add_hline(y=0.5, line={"dash": "dot", "color": "#98a2b3"})
    pairs = int(next(iter(accuracies.values())).loc["all", "pairs"])
    fig.update_layout(title=f"{title} ({pairs} pairs)", barmode="group",
                      xaxis_title="defect of the rejected answer",
                      yaxis_title="chosen preferred (fraction of pairs)", yaxis_range=[0, 1.12],
                      template="plotly_white")
    return fig


SWEEP_PANELS = (("margin", "implicit reward margin (reward units)"),
                ("kl", "KL(pi || ref) (nats per token)"),
                ("accuracy", "held-out accuracy (fraction)"))


def beta_sweep_figure(sweep: pd.DataFrame, beta: float | None = None):
    """Margin, KL from the reference and accuracy against beta (log axis); the chosen beta is
    marked. Traces 0-2 are the curves, 3-5 the markers (a widget moves only those)."""
    from plotly.subplots import make_subplots

    if sweep is None or len(sweep) == 0:
        raise LabkitError("sweep is empty; compute it with labkit.align.beta_sweep")
    validate.frame("beta", *(key for key, _ in SWEEP_PANELS))(sweep, "sweep")
    beta = float(sweep["beta"].iloc[0]) if beta is None else check_beta(beta)
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t.split(" (")[0] for _, t in
                                                        SWEEP_PANELS])
    for col, (key, _) in enumerate(SWEEP_PANELS, 1):
        fig.add_scatter(x=sweep["beta"], y=sweep[key], mode="lines+markers", name=key,
                        line={"color": "#1f77b4"}, showlegend=False, row=1, col=col)
    row = nearest_beta(sweep, beta)
    for col, (key, _) in enumerate(SWEEP_PANELS, 1):
        fig.add_scatter(x=[row["beta"]], y=[row[key]], mode="markers", name=f"beta = {beta:g}",
                        marker={"size": 14, "color": "#d62728"}, showlegend=False, row=1, col=col)
    for col, (_, label) in enumerate(SWEEP_PANELS, 1):
        fig.update_xaxes(type="log", title_text="beta (unitless, log scale)", row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col)
    fig.update_layout(title=sweep_title(row), height=380, template="plotly_white")
    return fig


def nearest_beta(sweep: pd.DataFrame, beta: float) -> pd.Series:
    """The sweep's row whose beta is nearest to `beta` on a log scale."""
    if not beta > 0:
        raise LabkitError(f"beta={beta!r} is invalid; it must be > 0")
    distance = (sweep["beta"].map(math.log) - math.log(beta)).abs()
    return sweep.loc[distance.idxmin()]


def sweep_title(row) -> str:
    return (f"beta = {row['beta']:g}: margin {row['margin']:.3g}, KL {row['kl']:.3g} nats/token, "
            f"held-out accuracy {row['accuracy']:.0%}")


# --- the labkit losses against TRL's code ----------------------------------------------------


class _TokenTableLM(torch.nn.Module):
    """Stands in for a model with TRL's fused LM head: log p(token) is a fixed number per id."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None, labels=None, fused_lm_head=True, **_):
        labels = labels[:, 1:]
        mask = labels != -100
        log_probs = self.table[labels.clamp(min=0)] * mask
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=mask & False)


def _bare(cls, **attributes):
    """A TRL trainer with only the attributes its loss code reads (no model, data or optimizer)."""
    from collections import defaultdict

    gather = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                             gather_for_metrics=lambda x: x)
    trainer = object.__new__(cls)
    trainer.accelerator = gather
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size, trainer.aux_loss_enabled = 0, 1, False
    for name, value in attributes.items():
        setattr(trainer, name, value)
    return trainer


def trl_cross_check(*, seed: int = 0, pairs: int = 8, beta: float = 0.1, vocab: int = 40,
                    prompt: int = 3, answer: int = 6) -> pd.DataFrame:
    """Each labkit loss next to TRL 1.16's own loss code on the same random log-probs.

    TRL computes its losses inside trainer methods; they are called here on a trainer built
    without a model (`object.__new__`), fed by a stand-in whose per-token log-prob is a fixed
    number per token id, so both sides see exactly the same numbers (float64)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl import DPOTrainer, KTOTrainer
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer
    check_beta(beta), validate.integer(seed, "seed")
    for name, value in (("pairs", pairs), ("vocab", vocab), ("prompt", prompt), ("answer", answer)):
        positive_int(value, name)
    if vocab < 2:
        raise LabkitError(f"vocab={vocab} must be >= 2 (a chosen and a rejected token)")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    table = -3 * torch.rand(vocab, generator=g, dtype=f64) - 1e-3
    lm = _TokenTableLM(table)
    rows = 2 * pairs
    ids = torch.randint(0, vocab, (rows, prompt + answer), generator=g)
    lengths = torch.randint(1, answer + 1, (rows,), generator=g)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        mask[r, prompt:prompt + n] = 1
    summed = (table[ids] * mask).sum(1)
    ref = (summed + torch.randn(rows, generator=g, dtype=f64)).clamp(max=0)
    c, r = slice(0, pairs), slice(pairs, rows)
    out = []

    for name, loss_type in (("dpo", "sigmoid"), ("ipo", "ipo"), ("hinge", "hinge")):
        trainer = _bare(DPOTrainer, model=lm, beta=beta, loss_types=[loss_type],
                        loss_weights=[1.0], f_divergence_type="reverse_kl", ld_alpha=None,
                        precompute_ref_logps=True, use_weighting=False, label_smoothing=0.0)
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask,
                      ref_chosen_logps=ref[c], ref_rejected_logps=ref[r])
        theirs = trainer._compute_loss(lm, inputs, return_outputs=False)
        args = (summed[c], summed[r], ref[c], ref[r])
        if name == "ipo":  # TRL's IPO divides each log-ratio by its answer's length
            ours = ipo_loss(*args, beta=beta, chosen_lengths=lengths[c],
                            rejected_lengths=lengths[r])
        else:
            ours = (dpo_loss if name == "dpo" else hinge_loss)(*args, beta=beta)
        out.append((name, "DPOTrainer._compute_loss", ours.loss, theirs))

    # KTO: every row a single answer, desirable or not; the KL pairs rotate answers by one.
    desirable = torch.arange(rows) % 2 == 0
    kl_ids = torch.cat([ids[:, :prompt], ids[:, prompt:].roll(1, 0)], 1)
    kl_mask = torch.cat([mask[:, :prompt], mask[:, prompt:].roll(1, 0)], 1)
    kl_policy = (table[kl_ids] * kl_mask).sum(1)
    kl_ref = (kl_policy + torch.randn(rows, generator=g, dtype=f64)).clamp(max=0)
    trainer = _bare(KTOTrainer, model=lm, beta=beta, loss_type="kto", calculate_KL=True,
                    precompute_ref_logps=True, desirable_weight=1.0, undesirable_weight=1.0)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask,
                 KL_input_ids=kl_ids, KL_attention_mask=torch.ones_like(kl_ids),
                 KL_completion_mask=kl_mask, label=desirable, ref_logps=ref, ref_KL_logps=kl_ref)
    theirs = trainer._compute_loss(lm, batch, return_outputs=False)
    ours = kto_loss(summed, ref, desirable, kl_policy, kl_ref, beta=beta)
    out.append(("kto", "KTOTrainer._compute_loss", ours.loss, theirs))

    # ORPO and SimPO take per-token averages; their forward pass is replaced by the numbers.
    average = summed / lengths
    nll = torch.rand((), generator=g, dtype=f64) * 3
    zeros = torch.zeros(pairs, 2, 3)
    for name, cls, extra, nll_in in (
            ("orpo", ORPOTrainer, {}, nll),
            ("simpo", CPOTrainer, {"loss_type": "simpo", "simpo_gamma": SIMPO_GAMMA,
                                   "cpo_alpha": 0.0, "alpha": 0.0, "label_smoothing": 0.0},
             torch.tensor(0.0, dtype=f64))):
        loss_beta = METHODS[name].beta if name == "simpo" else beta
        trainer = _bare(cls, beta=loss_beta, **extra)
        trainer.concatenated_forward = (
            lambda model, b, nll_in=nll_in: (average[c], average[r], zeros, zeros, nll_in))
        theirs, _ = trainer.get_batch_loss_metrics(None, batch={})
        if name == "orpo":
            ours = orpo_loss(summed[c], summed[r], lengths[c], lengths[r], beta=loss_beta,
                             chosen_nll=nll)
        else:
            ours = simpo_loss(summed[c], summed[r], lengths[c], lengths[r], beta=loss_beta,
                              gamma=SIMPO_GAMMA)
        out.append((name, f"{cls.__name__}.get_batch_loss_metrics", ours.loss, theirs))

    return pd.DataFrame([{"method": m, "TRL code": where, "labkit": float(a), "TRL": float(b),
                          "abs_diff": abs(float(a) - float(b))} for m, where, a, b in out]
                        ).set_index("method")


# --- the shipped adapter ---------------------------------------------------------------------


def build_dpo_adapter(out=None, steps: int | None = None, *, echo=print) -> dict:
    """Train the shipped DPO adapter: LoRA DPO (+ NLL on the chosen answers, RPO: see
    DPO_ADAPTER_RECIPE) on the train split of the preference pairs,
    starting from the SFT model (base + the SFT adapter merged), saved as a PEFT adapter
    (safetensors) in <out>/models/dpo-adapter with README.md and metrics.json. Held-out
    preference accuracy is measured on every test pair for the SFT model and the DPO model."""
    from ..loaders import embedded_paths, load_adapter_model, load_records, load_tokenizer
    from ..samples import data_dir
    from .sft import generate_answers, save_adapter

    maybe(validate.path_like)(out, "out"), maybe(positive_int)(steps, "steps")
    validate.function(echo, "echo")
    recipe = {**DPO_ADAPTER_RECIPE, **({"steps": steps} if steps else {})}
    if not embedded_paths()["sft"].exists():
        raise LabkitError("the SFT adapter (data_samples/models/sft-adapter) is missing; DPO "
                          "starts from it: run `labkit train-models sft` first")
    target = Path(out or data_dir()) / "models" / "dpo-adapter"
    tok = load_tokenizer()
    sft = load_adapter_model("sft", merge=True)
    pairs = load_records("preferences")
    train = [p for p in pairs if p["split"] == "train"]
    test = [p for p in pairs if p["split"] == "test"]
    echo(f"dpo-adapter: {recipe['steps']} steps x {recipe['batch_size']} pairs of LoRA DPO "
         f"(beta {recipe['beta']}) from the SFT model, {len(train)} train pairs")
    run = train_preference("dpo", sft, tok, train, steps=recipe["steps"], lr=recipe["lr"],
                           beta=recipe["beta"], batch_size=recipe["batch_size"],
                           seed=recipe["seed"], lora=recipe["lora"],
                           warmup_steps=recipe["warmup_steps"], scheduler=recipe["scheduler"],
                           nll_weight=recipe["nll_weight"], device="cpu")
    scores = score_pairs(run.model, tok, test, ref_model=sft)
    table = pd.DataFrame({
        "pairs": preference_accuracy(scores, None, None, None, "dpo")["pairs"],
        "sft_likelihood": preference_accuracy(scores.reference(), None, None, None,
                                              "likelihood")["accuracy"],
        "dpo_likelihood": preference_accuracy(scores, None, None, None,
                                              "likelihood")["accuracy"],
        "dpo_implicit_reward": preference_accuracy(scores, None, None, None, "dpo",
                                                   beta=recipe["beta"])["accuracy"]})
    prompts = [p["prompt"] for p in test[:5]]
    samples = [{"prompt": q, "sft": a[0], "dpo": b[0]} for q, a, b in zip(
        prompts, generate_answers(sft, tok, prompts), generate_answers(run.model, tok, prompts))]
    metrics = {
        "adapter": "dpo", "recipe": recipe, **run.summary(),
        "device": f"CPU, {torch.get_num_threads()} threads, {platform.machine()}",
        "train_pairs": len(train), "pairs_seen": recipe["steps"] * recipe["batch_size"],
        "heldout_pairs": len(test), "kl_from_sft": scores.kl,
        "chosen_shift": float((scores.chosen_logps - scores.ref_chosen_logps).mean()),
        "rejected_shift": float((scores.rejected_logps - scores.ref_rejected_logps).mean()),
        "heldout_accuracy": {col: {k: float(v) for k, v in table[col].items()}
                             for col in table.columns if col != "pairs"},
        "history": run.history.round(5).to_dict("records"), "samples": samples,
    }
    save_adapter(run.model, target, base="labkit:sft-merged", metrics=metrics,
                 card=_adapter_card(metrics, table))
    acc = metrics["heldout_accuracy"]
    echo(f"dpo-adapter: final loss {metrics['final_loss']}, {metrics['wall_s']} s; held-out "
         f"likelihood accuracy SFT {acc['sft_likelihood']['all']:.3f} -> DPO "
         f"{acc['dpo_likelihood']['all']:.3f}; implicit reward {acc['dpo_implicit_reward']['all']:.3f}")
    return metrics


def _adapter_card(m: dict, table: pd.DataFrame) -> str:
    r = m["recipe"]
    lines = [
        "---", "license: mit", "library_name: peft", "base_model: labkit:sft-merged",
        "tags: [labkit, tiny, offline, dpo, lora]", "---", "# world-dpo (LoRA adapter)", "",
        "A LoRA adapter that aligns the shipped SFT model with Direct Preference Optimization "
        f"plus an NLL term on the chosen answers (RPO, Pang et al. 2024: TRL's `DPOTrainer` with "
        f"`loss_type=['sigmoid', 'sft']`, weights 1 and {r.get('nll_weight', 0)}) on the train "
        "split of the world's preference pairs "
        "(`preferences/pairs.jsonl`: a chosen answer against one with a wrong fact, a "
        "degenerate repetition, a rude tone, needless verbosity or unsafe advice). It applies "
        "on top of the SFT model with the SFT adapter merged (base + `models/sft-adapter`); "
        "the reference model during training was that merged SFT model. Load it with "
        "`labkit.loaders.load_model(\"dpo\")`.", "",
        "Why the NLL term: plain DPO with the same recipe raised held-out accuracy as well, but "
        "it pushed the rejected answers down by about 100 nats each and its greedy answers "
        "broke (a question about Bofaimora answered \"Lafemara lies in the Southern Isles.\", "
        "a how-to answered with an unrelated sentence); the NLL term keeps the chosen answers "
        "likely. Lab 08 shows plain DPO and its alternatives.", "",
        "## Recorded command", "", "    labkit train-models dpo", "",
        "## Config", "",
        f"- LoRA r {r['lora']['r']}, alpha {r['lora']['lora_alpha']}, dropout "
        f"{r['lora']['lora_dropout']}, on q/k/v/o/gate/up/down projections",
        f"- trainable parameters: {m['trainable_params']:,}",
        f"- beta {r['beta']}, NLL weight {r.get('nll_weight', 0)}, steps {r['steps']}, "
        f"batch {r['batch_size']} pairs "
        f"({m['pairs_seen']} of {m['train_pairs']} train pairs seen), peak lr {r['lr']}, "
        f"warmup {r['warmup_steps']}, {r['scheduler']} schedule, AdamW, grad clip 1.0, fp32, "
        f"seed {r['seed']}", "",
        "## Measured", "",
        f"- wall time: {m['wall_s']:.0f} s ({m['cpu_s']:.0f} CPU s) on {m['device']}",
        f"- final training loss: {m['final_loss']:.4f} (mean of the last 10% of steps; the DPO "
        f"term is log 2 = 0.693 at the start"
        + (f", plus {r['nll_weight']} x the mean NLL per chosen token)" if r.get("nll_weight")
           else ")"),
        f"- models in memory: policy + reference; with LoRA the reference is the same weights "
        f"with the adapter off ({m['weight_copies']} weight copy); counted training state "
        f"{m['state_mib']:.1f} MiB",
        f"- token-level KL(DPO || SFT) on the held-out answers: {m['kl_from_sft']:.4f} nats/token",
        f"- held-out log-prob change vs SFT (nats per answer): chosen {m['chosen_shift']:+.2f}, "
        f"rejected {m['rejected_shift']:+.2f}", "",
        f"## Held-out preference accuracy ({m['heldout_pairs']} test pairs)", "",
        "Likelihood: the answer with the higher average log-prob per token wins (any model). "
        "Implicit reward: DPO's beta*log(pi/ref) with the SFT model as reference.", "",
        "| defect | pairs | SFT (likelihood) | DPO (likelihood) | DPO (implicit reward) |",
        "|---|---|---|---|---|",
    ]
    for defect, row in table.iterrows():
        lines.append(f"| {defect} | {int(row['pairs'])} | {row['sft_likelihood']:.3f} | "
                     f"{row['dpo_likelihood']:.3f} | {row['dpo_implicit_reward']:.3f} |")
    lines += ["", "## Samples (greedy)", "", "| prompt | SFT | DPO |", "|---|---|---|"]
    for s in m["samples"]:
        cells = [str(s[k]).replace("|", "\\|").replace("\n", " ") for k in ("prompt", "sft",
                                                                          "dpo")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Scores are measured at the end of training and stored in "
                              "`metrics.json`.", ""])
