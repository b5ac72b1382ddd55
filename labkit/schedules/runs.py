"""Short runs of the tiny GPT for lab 05: one schedule per run, WSD branches, the range test.

Every run starts from the same initial weights and sees the same batches (fixed seeds), so two
runs differ only in the learning rate at each step. They go through the labs' one training loop
(`labkit.pretrain.train`) with a history row per step, so a spike is seen where it happens.

Runs use one CPU thread: at this width a second thread buys little, and on a shared machine a
thread that waits for a busy core costs more than it brings.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import LabkitError
from ..models import ModelShape, build_causal_lm
from ..pretrain.data import RandomBlocks, pack_blocks, pack_documents
from ..pretrain.loop import TrainConfig, adamw, eval_loss, train
from ..pretrain.objectives import causal_lm_labels
from .curves import fraction_to_steps, wsd_schedule


@dataclass(frozen=True)
class RunSetup:
    """What every run of the lab shares: tokens, held-out batches, model shape, batch shape."""

    stream: np.ndarray  # packed training token ids
    eval_batches: list[dict]  # fixed held-out batches: every run is scored on the same tokens
    vocab_size: int
    shape: ModelShape
    batch_size: int
    seq_len: int
    seed: int = 1234
    device: str = "cpu"
    dtype: str | None = None  # autocast dtype of the training loop (None: float32)

    def model(self):
        return build_causal_lm(self.vocab_size, self.shape, seed=self.seed).to(self.device)

    def batches(self) -> RandomBlocks:
        return RandomBlocks(self.stream, self.seq_len, self.batch_size, seed=self.seed,
                            device=self.device)

    def heldout_loss(self, model) -> float:
        return eval_loss(model, self.eval_batches)


def tiny_setup(settings, *, seed: int = 1234, device: str = "cpu", dtype=None, tokenizer=None,
               documents=None, heldout=None) -> RunSetup:
    """Tokenise the first `settings.n_documents` corpus documents once (and held-out text).

    `settings` is the profile's `settings("schedules")` (or any object with n_documents,
    d_model, n_layer, n_head, seq_len, batch_size, eval_batches); tokenizer and documents
    default to the embedded world's. `device` and `dtype` are the profile's (`profile.device`,
    `profile.train_dtype`).
    """
    from ..loaders import load_records, load_tokenizer

    tok = tokenizer or load_tokenizer()
    docs = documents if documents is not None else load_records("corpus")
    held = heldout if heldout is not None else load_records("heldout")
    n_docs = settings.n_documents
    if n_docs < 1:
        raise LabkitError(f"n_documents={n_docs}; valid: >= 1")
    texts = [d["text"] if isinstance(d, Mapping) else d for d in docs[:n_docs]]
    stream = pack_documents(tok(texts)["input_ids"], tok.eos_token_id)
    held_texts = [d["text"] if isinstance(d, Mapping) else d for d in held]
    held_stream = pack_documents(tok(held_texts)["input_ids"], tok.eos_token_id)
    blocks = pack_blocks(held_stream, settings.seq_len)
    n_eval = settings.eval_batches * settings.batch_size
    if len(blocks) < n_eval:
        raise LabkitError(f"eval_batches={settings.eval_batches} needs {n_eval} held-out blocks "
                          f"of {settings.seq_len} tokens, there are {len(blocks)}")
    eval_batches = [{"input_ids": b, "labels": causal_lm_labels(b)}
                    for b in blocks[:n_eval].split(settings.batch_size)]
    shape = ModelShape(d_model=settings.d_model, n_layer=settings.n_layer,
                       n_head=settings.n_head, max_len=settings.seq_len)
    return RunSetup(stream=stream, eval_batches=eval_batches, vocab_size=len(tok), shape=shape,
                    batch_size=settings.batch_size, seq_len=settings.seq_len, seed=seed,
                    device=str(device), dtype=None if dtype in (None, "float32") else str(dtype))


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_with_schedule(setup: RunSetup, schedule: Callable[[int], float], *, steps: int,
                        peak_lr: float, progress: Callable[[float], None] | None = None,
                        checkpoint_dir=None, resume: bool = False, model=None,
                        **overrides) -> pd.DataFrame:
    """One run: lr = peak_lr * schedule(step) for `steps` updates, a history row per step.

    `overrides` are other TrainConfig fields (e.g. grad_clip=None, betas=(0.9, 0.999)).

    Stops at the first non-finite loss (a diverged run has nothing more to show). The last row
    carries the held-out loss when the run reaches `steps`.
    """
    model = setup.model() if model is None else model
    config = TrainConfig(**{"steps": steps, "lr": peak_lr, "schedule": schedule, "log_every": 1,
                            "progress": False, "seed": setup.seed, "dtype": setup.dtype,
                            **overrides})

    def on_step(row: dict) -> bool:
        if progress is not None:
            progress(row["step"] / steps)
        return not math.isfinite(row["loss"])

    with one_thread():
        return train(model, setup.batches(), config, eval_fn=setup.heldout_loss, on_step=on_step,
                     checkpoint_dir=checkpoint_dir, resume=resume)


def run_summary(history: pd.DataFrame, *, tail: int = 10) -> dict:
    """The numbers of one run: final loss (mean of the last `tail` steps), max loss, NaN step."""
    losses = history["loss"].to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(losses))
    finite = losses[np.isfinite(losses)]
    last = history["eval_loss"].dropna()
    return {
        "steps": int(history["step"].iloc[-1]) if len(history) else 0,
        "final_loss": float(np.mean(losses[-tail:])) if not len(bad) else math.nan,
        "max_loss": float(finite.max()) if len(finite) else math.nan,
        "first_nan_step": int(history["step"].iloc[bad[0]]) if len(bad) else None,
        "heldout_loss": float(last.iloc[-1]) if len(last) else math.nan,
    }


def summary_table(histories: Mapping[str, pd.DataFrame], *, tail: int = 10) -> pd.DataFrame:
    """run_summary of each run, one row per run name."""
    rows = {name: run_summary(h, tail=tail) for name, h in histories.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def unigram_loss(stream, vocab_size: int | None = None) -> float:
    """Entropy of the token frequencies (nats per token): the loss of a model that ignores context.

    A run whose loss stalls here has learned which tokens are common and nothing else.
    """
    counts = np.bincount(np.asarray(stream, dtype=np.int64), minlength=vocab_size or 0)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def runs_figure(histories: Mapping[str, pd.DataFrame], *, title: str,
                references: Mapping[str, float] | None = None, smooth: int = 1,
                loss_range: tuple[float, float] | None = None):
    """Two panels per run: the LR it got at each step (log scale) and its training loss.

    `references` draws horizontal lines on the loss panel (e.g. the uniform guess ln V);
    `smooth` > 1 plots the mean of the last `smooth` steps instead of each step's loss.
    """
    from plotly.subplots import make_subplots

    loss_title = "training loss" + (f" (mean of {smooth} steps)" if smooth > 1 else "")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("learning rate", loss_title),
                        horizontal_spacing=0.1)
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f")
    for i, (name, h) in enumerate(histories.items()):
        colour = palette[i % len(palette)]
        loss = h["loss"].rolling(smooth, min_periods=1).mean() if smooth > 1 else h["loss"]
        fig.add_scatter(x=h["step"], y=h["lr"], mode="lines", name=name, legendgroup=name,
                        line={"color": colour}, row=1, col=1)
        fig.add_scatter(x=h["step"], y=loss, mode="lines", name=name, legendgroup=name,
                        line={"color": colour}, showlegend=False, row=1, col=2)
    for text, value in (references or {}).items():
        fig.add_hline(y=value, line_dash="dot", line_color="grey", annotation_text=text,
                      annotation_position="top right", row=1, col=2)
    fig.update_xaxes(title_text="optimizer step (updates)")
    fig.update_yaxes(title_text="learning rate (per update, log scale)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="loss (nats per token)", row=1, col=2)
    if loss_range is not None:
        fig.update_yaxes(range=list(loss_range), row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", height=430,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def wsd_branches(setup: RunSetup, *, total_steps: int, warmup_steps: int, peak_lr: float,
                 decay_fractions=(0.1, 0.025), decay_type: str = "1-sqrt",
                 min_lr_ratio: float = 0.0) -> dict[str, pd.DataFrame]:
    """WSD the way it is used: one stable run, cooled down from checkpoints (MiniCPM).

    The trunk (warmup, then the peak LR) is trained once, saved where each decay must start,
    and each branch resumes from there with its own decay to `total_steps`. A branch equals a
    WSD run from scratch with that decay (the loop resumes bit for bit); the trunk is shared,
    so the runs cost total_steps * (1 + sum(decay_fractions)) updates instead of one run each.
    Returns {"stable, no decay": trunk, "WSD, decay 10%": ..., ...}, histories of total_steps.
    """
    decays = sorted({fraction_to_steps(f, total_steps, "decay_fraction") for f in decay_fractions},
                    reverse=True)
    if not decays or min(decays) < 1:
        raise LabkitError(f"decay_fractions={tuple(decay_fractions)} give a decay under one step "
                          f"of total_steps={total_steps}; valid: fractions >= {1 / total_steps:.3g}")
    trunk = wsd_schedule(total_steps=total_steps, warmup_steps=warmup_steps, decay_steps=0,
                         min_lr_ratio=min_lr_ratio)
    runs = {}
    root = Path(tempfile.mkdtemp(prefix="labkit-wsd-"))
    try:
        stem, model, resume = root / "trunk", setup.model(), False
        for decay in decays:  # longest decay first: its branch point comes first
            start = total_steps - decay
            if start > 0:
                train_with_schedule(setup, trunk, steps=start, peak_lr=peak_lr, model=model,
                                    checkpoint_dir=stem, resume=resume)
                resume = True
            branch = root / f"decay-{decay}"
            if resume:
                shutil.copytree(stem, branch)
            schedule = wsd_schedule(total_steps=total_steps, warmup_steps=warmup_steps,
                                    decay_steps=decay, decay_type=decay_type,
                                    min_lr_ratio=min_lr_ratio)
            name = f"WSD, decay over the last {100 * decay / total_steps:g}% ({decay} steps)"
            runs[name] = train_with_schedule(setup, schedule, steps=total_steps, peak_lr=peak_lr,
                                             checkpoint_dir=branch, resume=resume)
        runs = {"stable, no decay": train_with_schedule(
            setup, trunk, steps=total_steps, peak_lr=peak_lr, model=model, checkpoint_dir=stem,
            resume=resume), **runs}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return runs


def range_test_step(setup: RunSetup) -> Callable[[float], float]:
    """train_step(lr) -> loss for `lr_range_test`: one AdamW update of a fresh tiny GPT.

    The optimizer is the training loop's (AdamW, weight decay on matrices, clipping at 1), so
    the LR the test picks is an LR for that loop.
    """
    model, batches = setup.model(), setup.batches()
    config = TrainConfig(seed=setup.seed)
    device = torch.device(setup.device)
    optimizer = adamw(model, config, device)
    params = [p for p in model.parameters() if p.requires_grad]
    # bf16 autocast as in the loop; fp16 would need a loss scaler, so fp16 profiles sweep in fp32
    dtype = torch.bfloat16 if setup.dtype in ("bfloat16", "bf16") else None
    torch.manual_seed(setup.seed)
    model.train()

    def train_step(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batches()
        with one_thread():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(input_ids=batch["input_ids"], labels=batch["labels"],
                             use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return train_step


def range_tests(setup: RunSetup, *, seeds, min_lr: float, max_lr: float, num_steps: int,
                **kwargs):
    """`lr_range_tests` of the tiny GPT, one fresh model and batch order per seed."""
    from dataclasses import replace

    from .range_test import lr_range_tests

    return lr_range_tests(lambda seed: range_test_step(replace(setup, seed=seed)), seeds,
                          min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, **kwargs)


def explorer_run_fn(setup: RunSetup, *, max_steps: int | None = None):
    """run_fn(settings, progress) -> (steps, losses) for widgets.schedules.ScheduleExplorer."""
    from .curves import make_schedule

    def run_fn(settings: dict, progress=None):
        steps = settings["total_steps"]
        if max_steps is not None and steps > max_steps:
            raise LabkitError(f"total steps = {steps} is too long for a run here; "
                              f"valid: <= {max_steps} (the profile's cap)")
        schedule = make_schedule(settings["schedule"], total_steps=steps,
                                 warmup_steps=settings["warmup_steps"],
                                 min_lr_ratio=settings["min_lr_ratio"],
                                 decay_steps=settings["decay_steps"],
                                 decay_type=settings["decay_type"],
                                 num_cycles=settings["num_cycles"])
        history = train_with_schedule(setup, schedule, steps=steps, peak_lr=settings["peak_lr"],
                                      progress=progress)
        return history["step"].tolist(), history["loss"].tolist()

    return run_fn
