"""The one training loop of the labs, in the spirit of nanoGPT's train.py.

`train(model, get_batch, config)` runs AdamW on a transformers causal or masked LM: gradient
accumulation, gradient-norm clipping, a learning-rate schedule hook, an autocast hook (bf16, or
fp16 with a GradScaler), evaluation every N steps, checkpoint save/resume, tokens/s and MFU, and a
progress bar. It returns the history as a pandas DataFrame.

The loss is computed here from the logits, summed over the positions that carry loss and divided
by their count over the *whole* accumulated step, so accumulating k micro-batches gives the same
gradient as one k-times larger batch even when micro-batches hold different numbers of labelled
tokens (masked LM); dividing each micro-batch mean by k, as nanoGPT does, is only exact when
every micro-batch has the same count.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import validate
from ..errors import LabkitError
from ..schedules.curves import nanogpt_schedule
from ..validate import (
    among,
    checks,
    existing_dir,
    flag,
    fraction,
    function,
    integer,
    maybe,
    nonnegative,
    nonnegative_int,
    nums,
    of_type,
    path_like,
    positive,
    positive_int,
)
from .objectives import IGNORE_INDEX

MODEL_FILE, STATE_FILE = "model.safetensors", "state.pt"
_DTYPES = {
    None: None, "float32": None, "fp32": None, torch.float32: None,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, torch.bfloat16: torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, torch.float16: torch.float16,
}  # fmt: skip


HISTORY_COLUMNS = [
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "eval_loss",
    "elapsed_s",
]


@dataclass
class TrainConfig:
    steps: int = 200  # optimizer updates
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # the default cosine ends at lr * min_lr_ratio (nanoGPT: lr/10)
    schedule: Callable[[int], float] | None = None  # step (0-based) -> lr multiplier
    weight_decay: float = 0.1  # on weight matrices only, as in nanoGPT
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    dtype: str | torch.dtype | None = None  # autocast: None/"float32", "bf16", "fp16" (+scaler)
    objective: str = "auto"  # "causal", "masked" or "auto" (causal iff the model generates)
    log_every: int = 10  # a history row every N steps (the only .item() syncs)
    eval_every: int = 0  # eval_fn every N steps; 0: only after the last step
    checkpoint_every: int = 0  # with checkpoint_dir: every N steps; 0: only after the last step
    seed: int = 1234  # seeds torch's global RNG (dropout) on a fresh start
    peak_flops: float | None = None  # FLOP/s for MFU; None: measured matmul peak of this device
    progress: bool = True  # tqdm bar
    desc: str = "train"  # the bar's label

    def __post_init__(self):
        for name in ("steps", "grad_accum", "log_every"):
            positive_int(getattr(self, name), name)
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            nonnegative_int(getattr(self, name), name)
        positive(self.lr, "lr"), fraction(self.min_lr_ratio, "min_lr_ratio")
        nonnegative(self.weight_decay, "weight_decay"), integer(self.seed, "seed")
        maybe(function)(self.schedule, "schedule"), maybe(positive)(self.grad_clip, "grad_clip")
        maybe(positive)(self.peak_flops, "peak_flops"), _parse_dtype(self.dtype)
        among("auto", "causal", "masked")(self.objective, "objective")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise LabkitError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            nums(0.0, 1.0, high_open=True)(beta, f"betas[{i}]")


@checks(step=nonnegative_int, warmup_steps=nonnegative_int, total_steps=positive_int,
        min_ratio=fraction)
def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """nanoGPT's get_lr as a multiplier; the one copy lives in labkit.schedules. A run shorter
    than its warmup (a one-step check, say) stays on the warmup ramp, which never passes 1."""
    if warmup_steps >= total_steps:
        return min((step + 1) / (warmup_steps + 1), 1.0)
    return nanogpt_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                            min_lr_ratio=min_ratio)(step)


@checks(model=validate.model, seq_len=positive_int)
def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights (forward 2N, backward 4N) plus 12*L*d*T for
    attention scores (nanoGPT's estimate_mfu, PaLM appendix B). N leaves out embedding tables
    that are only looked up; a table tied to the output layer is a matmul and counts."""
    out = model.get_output_embeddings()
    out_weight = out.weight if out is not None else None
    n = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight is not out_weight:
            n -= module.weight.numel()
    cfg = model.config
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def _float_dtype(value, name: str):
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise LabkitError(f"{name} must be a floating-point torch dtype, got {value!r}")
    return value


@checks(device=lambda v, n: str(validate.device(v, n)), dtype=_float_dtype, n=positive_int,
        repeats=positive_int)
@lru_cache(maxsize=8)
def measure_peak_flops(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 10
) -> float:
    """Best measured FLOP/s of an n x n matmul on `device`: the ceiling MFU is quoted against
    when no vendor peak is given (on CPU no datasheet number is reachable by torch anyway)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # warm-up: thread pools, kernel selection
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def is_causal(model, objective: str = "auto") -> bool:
    if objective not in ("auto", "causal", "masked"):
        raise LabkitError(f"objective={objective!r}; valid: 'auto', 'causal', 'masked'")
    if objective == "auto":
        return bool(getattr(model, "can_generate", lambda: False)())
    return objective == "causal"


def check_batch(model, batch) -> None:
    """One clear LabkitError for a batch the model cannot train on (run on the first step)."""
    validate.model(model)
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise LabkitError(
            f"batch: get_batch() must return a dict with 'input_ids' and 'labels', got {got}"
        )
    ids, labels = batch["input_ids"], batch["labels"]
    for name, t in (("input_ids", ids), ("labels", labels)):
        if not torch.is_tensor(t):
            raise LabkitError(f"batch {name} must be a tensor of token ids, got {type(t).__name__}")
    if ids.ndim != 2 or ids.numel() == 0:
        raise LabkitError(
            f"empty or malformed batch: input_ids has shape {tuple(ids.shape)}; "
            "need (batch_size >= 1, seq_len >= 1)"
        )
    if labels.shape != ids.shape:
        raise LabkitError(
            f"batch labels shape {tuple(labels.shape)} != input_ids shape {tuple(ids.shape)}"
        )
    for name, t in (("input_ids", ids), ("labels", labels)):
        if t.is_floating_point() or t.is_complex():
            raise LabkitError(f"batch {name} must hold integer token ids, got {t.dtype}")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and ids.shape[1] > context:
        raise LabkitError(
            f"sequence length {ids.shape[1]} exceeds the model's context "
            f"max_position_embeddings={context}; use seq_len <= {context}"
        )
    vocab = model.get_input_embeddings().num_embeddings
    for name, t in (("input_ids", ids), ("labels", labels[labels != IGNORE_INDEX])):
        if t.numel() and (int(t.max()) >= vocab or int(t.min()) < 0):
            bad = int(t.max()) if int(t.max()) >= vocab else int(t.min())
            raise LabkitError(
                f"{name} contain token id {bad} outside the model's vocabulary [0, {vocab}) "
                f"(vocab_size={vocab}): tokenizer and model vocabularies differ"
            )


def _targets(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """The label scored against each position's logits: the next token for a causal LM (the
    same shift transformers does), the token itself for a masked LM."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX) if causal else labels


def _loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # float32 logits for the softmax, as transformers does under autocast.
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _batches(value, name: str) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise LabkitError(f"{name} must be a list of batches (dicts), got {type(value).__name__}")
    value = list(value)
    if not value:
        raise LabkitError(f"{name} is empty; valid: at least one batch")
    for i, batch in enumerate(value):
        if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
            raise LabkitError(f"{name}[{i}] must be a dict with 'input_ids' and 'labels'")
    return value


@checks(model=validate.model, batches=_batches, objective=among("auto", "causal", "masked"),
        dtype=lambda v, n: (_parse_dtype(v), v)[1])
@torch.no_grad()
def eval_loss(model, batches: Sequence[Mapping], objective: str = "auto", dtype=None) -> float:
    """Mean loss per labelled token over `batches` (model in eval mode: no dropout)."""
    causal, device, was_training = is_causal(model, objective), _device(model), model.training
    total = count = 0.0
    model.eval()
    try:
        for batch in batches:
            inputs, targets = _on_device(batch, device, causal)
            with _autocast(device, _parse_dtype(dtype)):
                logits = model(**inputs).logits
            total += float(_loss_sum(logits, targets))
            count += float((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1.0)


@checks(model=validate.model, get_batch=function, config=maybe(of_type(TrainConfig)),
        eval_fn=maybe(function), on_step=maybe(function), checkpoint_dir=maybe(path_like),
        resume=flag)
def train(
    model,
    get_batch: Callable[[], Mapping[str, torch.Tensor]],
    config: TrainConfig | None = None,
    *,
    eval_fn: Callable[[torch.nn.Module], float] | None = None,
    on_step: Callable[[dict], bool | None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Train `model` on batches from `get_batch()` and return the history, one row per logged
    step: step, loss (mean since the previous row), lr, grad_norm (before clipping),
    tokens_per_s, mfu, eval_loss, elapsed_s. Rows come every `log_every` steps and at every
    eval and checkpoint step.

    A batch is {"input_ids", "labels"[, "attention_mask"]}, labels unshifted with -100 where
    no loss. `eval_fn(model) -> float` runs in eval mode under no_grad with its own RNG stream.
    `on_step(row)` runs after each row (after its checkpoint); returning True stops training.
    `resume=True` continues from the checkpoint in `checkpoint_dir`; a `get_batch` with
    state_dict()/load_state_dict() (the samplers in data.py) resumes its batch sequence too,
    which makes a resumed run bit-identical to an uninterrupted one on CPU.
    """
    config = config or TrainConfig()
    _check_config(config, checkpoint_dir, resume)
    device, dtype = _device(model), _parse_dtype(config.dtype)
    causal = is_causal(model, config.objective)
    schedule = config.schedule or (
        lambda it: warmup_cosine(it, config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    optimizer = adamw(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    params = [p for p in model.parameters() if p.requires_grad]
    start, history = 0, []
    if resume:  # checkpoints are written at logged steps, so no logging window is open
        start, history = load_checkpoint(checkpoint_dir, model, optimizer, scaler, get_batch)
    else:
        torch.manual_seed(config.seed)
    peak = config.peak_flops or measure_peak_flops(str(device), dtype or torch.float32)
    window_loss, window_steps, window_tokens = torch.zeros((), device=device), 0, 0
    was_training, fpt = model.training, None
    model.train()
    bar = tqdm(total=config.steps, initial=start, desc=config.desc, unit="step",
               disable=not config.progress)  # fmt: skip
    t_window = t_start = time.perf_counter()
    elapsed0 = history[-1]["elapsed_s"] if history else 0.0
    try:
        for it in range(start, config.steps):
            step = it + 1
            log_now = step % config.log_every == 0 or step == config.steps
            lr = config.lr * schedule(it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = [get_batch() for _ in range(config.grad_accum)]
            if fpt is None:  # the first step checks what the model is fed
                for batch in micro:
                    check_batch(model, batch)
                fpt = flops_per_token(model, micro[0]["input_ids"].shape[1])
            micro = [_on_device(batch, device, causal) for batch in micro]
            n_items = sum((t != IGNORE_INDEX).sum() for _, t in micro).clamp_min(1)
            step_loss = torch.zeros((), device=device)
            for inputs, targets in micro:
                with _autocast(device, dtype):
                    logits = model(**inputs).logits
                loss = _loss_sum(logits, targets) / n_items  # this micro-batch's share of the mean
                scaler.scale(loss).backward()
                step_loss += loss.detach()
            grad_norm = None
            if config.grad_clip or log_now:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            window_loss += step_loss
            window_steps += 1
            window_tokens += sum(inputs["input_ids"].numel() for inputs, _ in micro)
            bar.update()

            eval_now = eval_fn is not None and (
                step == config.steps or (config.eval_every and step % config.eval_every == 0)
            )
            save_now = checkpoint_dir is not None and (
                step == config.steps
                or (config.checkpoint_every and step % config.checkpoint_every == 0)
            )
            if not (log_now or eval_now or save_now):
                continue
            loss_value = window_loss.item() / window_steps  # the sync, once per logged step
            seconds = time.perf_counter() - t_window
            row = {
                "step": step, "loss": loss_value, "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                "tokens_per_s": window_tokens / seconds,
                "mfu": window_tokens * fpt / seconds / peak,
                "eval_loss": _evaluate(model, eval_fn, device) if eval_now else math.nan,
                "elapsed_s": elapsed0 + time.perf_counter() - t_start,
            }  # fmt: skip
            history.append(row)
            window_loss, window_steps, window_tokens = torch.zeros((), device=device), 0, 0
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if save_now:
                save_checkpoint(
                    checkpoint_dir, model, optimizer, scaler, get_batch, step, history, config
                )
            stop = bool(on_step(row)) if on_step is not None else False
            if stop and checkpoint_dir is not None and not save_now:
                save_checkpoint(
                    checkpoint_dir, model, optimizer, scaler, get_batch, step, history, config
                )
            t_window = time.perf_counter()
            if stop:
                break
    finally:
        bar.close()
        model.train(was_training)
    return pd.DataFrame(history, columns=HISTORY_COLUMNS)


def adamw(model, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases), as nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")


@checks(directory=path_like, model=validate.model, config=of_type(TrainConfig))
def save_checkpoint(directory, model, optimizer, scaler, get_batch, step, history, config) -> Path:
    """Weights as safetensors; optimizer, step, RNG and batch-sampler state as a torch file made
    only of tensors and plain Python values, so `torch.load(weights_only=True)` can read it."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "batches": get_batch.state_dict() if hasattr(get_batch, "state_dict") else None,
        },
        "history": history,
        "config": {f.name: _plain(getattr(config, f.name)) for f in fields(config)},
    }
    # Write-then-rename: a run killed mid-save leaves the previous checkpoint intact.
    save_model(model, str(directory / (MODEL_FILE + ".tmp")))
    torch.save(state, directory / (STATE_FILE + ".tmp"))
    os.replace(directory / (MODEL_FILE + ".tmp"), directory / MODEL_FILE)
    os.replace(directory / (STATE_FILE + ".tmp"), directory / STATE_FILE)
    return directory


@checks(directory=existing_dir, model=validate.model)
def load_checkpoint(directory, model, optimizer, scaler, get_batch):
    """Restore what save_checkpoint wrote; returns (step, history)."""
    from safetensors.torch import load_model

    directory = Path(directory)
    if not (directory / MODEL_FILE).exists() or not (directory / STATE_FILE).exists():
        raise LabkitError(
            f"resume=True but {directory} holds no checkpoint ({MODEL_FILE} + {STATE_FILE}); "
            "train once with checkpoint_dir set, or pass resume=False"
        )
    device = _device(model)
    load_model(model, str(directory / MODEL_FILE), device=str(device))
    state = torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    if state["rng"]["batches"] is not None and hasattr(get_batch, "load_state_dict"):
        get_batch.load_state_dict(state["rng"]["batches"])
    return state["step"], list(state["history"])


def _plain(value):
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return repr(value)  # callables and dtypes are recorded for the reader, not restored


def _evaluate(model, eval_fn, device) -> float:
    # A private RNG stream: evaluation must not change the training run that follows it.
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        model.eval()
        try:
            with torch.no_grad():
                return float(eval_fn(model))
        finally:
            model.train()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _on_device(batch: Mapping, device: torch.device, causal: bool):
    """(model inputs, targets) on `device`; a causal model runs without its KV cache."""
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
    if causal:
        inputs["use_cache"] = False
    return inputs, _targets(batch["labels"].to(device, non_blocking=True), causal)


def _autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _parse_dtype(dtype):
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise LabkitError(
            f"dtype={dtype!r}; valid: None/'float32', 'bf16'/'bfloat16', 'fp16'/'float16'"
        ) from None


def _check_config(config: TrainConfig, checkpoint_dir, resume: bool) -> None:
    config.__post_init__()  # fields may have been changed since the config was built
    if resume and checkpoint_dir is None:
        raise LabkitError("resume=True needs checkpoint_dir (where the checkpoint was saved)")
    _parse_dtype(config.dtype)
