"""The training loop: reproducible, resumable bit for bit, the same loss as transformers, clear
errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit import LabkitError
from labkit.models import ModelShape, build_causal_lm, build_masked_lm
from labkit.pretrain.data import MaskedBlocks, RandomBlocks
from labkit.pretrain.loop import (
    HISTORY_COLUMNS,
    MODEL_FILE,
    STATE_FILE,
    TrainConfig,
    check_batch,
    eval_loss,
    flops_per_token,
    measure_peak_flops,
    train,
    warmup_cosine,
)

V = 97
SHAPE = ModelShape(d_model=32, n_layer=2, n_head=4, max_len=64)
MASK_ID, EOS_ID = V - 1, 0
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On a shared 2-core machine two intra-op threads can run 10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stream():
    # Zipf-like unigram frequencies: something a few steps can learn.
    ids = np.arange(1, V - 1)
    weights = 1.0 / ids
    return np.random.default_rng(0).choice(ids, 5000, p=weights / weights.sum()).astype(np.uint16)


def causal_setup(stream, seed=0):
    return build_causal_lm(V, SHAPE, seed=seed), RandomBlocks(stream, 16, 4, seed=7)


def masked_setup(stream, seed=0):
    blocks = RandomBlocks(stream, 16, 4, seed=7)
    return build_masked_lm(V, SHAPE, seed=seed), MaskedBlocks(blocks, V, MASK_ID, [EOS_ID], seed=3)


SETUPS = {"causal": causal_setup, "masked": masked_setup}


def quiet(**kw) -> TrainConfig:
    base = dict(steps=8, lr=3e-3, warmup_steps=2, log_every=1, grad_accum=2, progress=False,
                peak_flops=1e12)  # fmt: skip
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_same_seed_gives_the_same_loss_trajectory(stream, objective):
    runs = [train(*SETUPS[objective](stream), quiet())["loss"].tolist() for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0]) == 8 and all(math.isfinite(x) for x in runs[0])
    assert runs[0][-1] < runs[0][0]  # it learns something (the unigram statistics at least)


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_resume_from_step_k_is_bit_identical(stream, objective, tmp_path):
    full = train(*SETUPS[objective](stream), quiet(), checkpoint_dir=tmp_path / "full")

    def crash_at_4(row):
        if row["step"] == 4:
            raise KeyboardInterrupt  # the kernel dies after step 4's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(*SETUPS[objective](stream), quiet(checkpoint_every=4), on_step=crash_at_4,
              checkpoint_dir=tmp_path / "cut")  # fmt: skip
    assert (tmp_path / "cut" / MODEL_FILE).exists() and (tmp_path / "cut" / STATE_FILE).exists()
    state = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert state["step"] == 4

    # A different initialisation and a fresh sampler: everything must come from the checkpoint.
    model, batches = SETUPS[objective](stream, seed=99)
    resumed = train(model, batches, quiet(checkpoint_every=4), checkpoint_dir=tmp_path / "cut",
                    resume=True)  # fmt: skip
    assert resumed["step"].tolist() == list(range(1, 9))
    assert resumed["loss"].tolist() == full["loss"].tolist()
    assert resumed["grad_norm"].tolist() == full["grad_norm"].tolist()
    final_full, _ = SETUPS[objective](stream, seed=5)
    from safetensors.torch import load_model

    load_model(final_full, str(tmp_path / "full" / MODEL_FILE))
    for a, b in zip(final_full.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_on_step_returning_true_stops_and_checkpoints(stream, tmp_path):
    history = train(*causal_setup(stream), quiet(), on_step=lambda row: row["step"] == 3,
                    checkpoint_dir=tmp_path)  # fmt: skip
    assert history["step"].tolist() == [1, 2, 3]
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 3


def padded_batch(seed=0, b=4, t=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V - 1, (b, t), generator=g)
    labels = ids.clone()
    labels[0, 15:] = -100  # padding of different lengths: micro-batches hold unequal counts
    labels[3, 5:] = -100
    return {"input_ids": ids, "labels": labels}


def first_row(model, batches, **kw):
    it = iter(batches)
    return train(model, lambda: next(it), quiet(steps=1, **kw)).iloc[0]


def first_logged_loss(model, batches, **kw):
    return first_row(model, batches, **kw)["loss"]


def test_causal_loss_equals_transformers_loss_with_accumulation():
    batch = padded_batch()
    reference = build_causal_lm(V, SHAPE)(**batch).loss.item()
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    assert first_logged_loss(build_causal_lm(V, SHAPE), halves, grad_accum=2) == pytest.approx(
        reference, rel=1e-6
    )
    assert first_logged_loss(build_causal_lm(V, SHAPE), [batch], grad_accum=1) == pytest.approx(
        reference, rel=1e-6
    )
    assert eval_loss(build_causal_lm(V, SHAPE), [batch]) == pytest.approx(reference, rel=1e-6)


def test_masked_loss_equals_transformers_loss():
    ids = padded_batch()["input_ids"]
    g = torch.Generator().manual_seed(1)
    from labkit.pretrain.objectives import mlm_mask

    corrupted, labels, _ = mlm_mask(ids, V, MASK_ID, [EOS_ID], generator=g)
    batch = {"input_ids": corrupted, "labels": labels}
    reference = build_masked_lm(V, SHAPE, **NO_DROPOUT)(**batch).loss.item()
    model = build_masked_lm(V, SHAPE, **NO_DROPOUT)
    assert first_logged_loss(model, [batch], grad_accum=1) == pytest.approx(reference, rel=1e-6)


def test_accumulated_gradient_equals_one_big_batch_gradient():
    """Token-weighted accumulation: two halves with unequal label counts give the gradient of
    the whole batch (its norm, before clipping, is logged), not a mean of two means."""
    batch = padded_batch()
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    whole = first_row(build_causal_lm(V, SHAPE), [batch], grad_accum=1)
    split = first_row(build_causal_lm(V, SHAPE), halves, grad_accum=2)
    assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)

    model = build_causal_lm(V, SHAPE)
    means = [model(**half).loss / 2 for half in halves]  # nanoGPT's loss / grad_accum
    sum(means).backward()
    naive = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert abs(naive - whole["grad_norm"]) > 1e-3 * whole["grad_norm"]


def test_history_columns_schedule_hook_and_eval(stream):
    seen = []
    history = train(
        *causal_setup(stream),
        quiet(steps=6, log_every=2, eval_every=3, schedule=lambda it: 0.5**it),
        eval_fn=lambda m: 1.5,
        on_step=seen.append,
    )
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["step"].tolist() == [2, 3, 4, 6]  # log steps plus eval steps
    assert history["lr"].tolist() == [3e-3 * 0.5 ** (s - 1) for s in (2, 3, 4, 6)]
    assert history["eval_loss"].fillna(0).tolist() == [0, 1.5, 0, 1.5]
    assert len(seen) == 4 and seen[-1]["step"] == 6
    assert (history["tokens_per_s"] > 0).all() and (history["mfu"] > 0).all()


def test_evaluation_does_not_perturb_training(stream):
    def noisy_eval(model):
        torch.rand(1000)  # consumes the global RNG the masked model's dropout draws from
        return 0.0

    plain = train(*masked_setup(stream), quiet())["loss"].tolist()
    evaluated = train(*masked_setup(stream), quiet(eval_every=2), eval_fn=noisy_eval)
    assert evaluated["loss"].tolist() == plain


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_hooks_train(stream, dtype, tmp_path):
    history = train(*causal_setup(stream), quiet(steps=4, dtype=dtype), checkpoint_dir=tmp_path)
    assert history["loss"].map(math.isfinite).all()
    scaler = torch.load(tmp_path / STATE_FILE, weights_only=True)["scaler"]
    assert (scaler is not None) == (dtype == "fp16")  # only fp16 needs loss scaling
    if dtype == "fp16":
        assert scaler["scale"] > 0


def test_warmup_cosine_reference_values():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(1 / 11)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(10 / 11)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_warmup_cosine_matches_transformers_after_warmup():
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100)
    for step in (10, 30, 77, 100):
        assert warmup_cosine(step, 10, 100, 0.0) == pytest.approx(sched.lr_lambdas[0](step))


def test_flops_per_token_by_hand():
    llama = build_causal_lm(V, SHAPE)
    n = sum(p.numel() for p in llama.parameters())  # tied embedding = the output matmul
    assert flops_per_token(llama, 16) == 6 * n + 12 * 2 * 32 * 16
    encoder = build_masked_lm(V, SHAPE)  # rotary positions: no lookup-only tables; tied decoder
    n = sum(p.numel() for p in encoder.parameters())
    assert flops_per_token(encoder, 16) == 6 * n + 12 * 2 * 32 * 16


def test_measure_peak_flops_is_plausible():
    peak = measure_peak_flops("cpu", torch.float32, n=256, repeats=3)
    assert 1e8 < peak < 1e14


def test_bad_inputs_raise_one_clear_error(stream, tmp_path):
    model = build_causal_lm(V, SHAPE)
    too_long = RandomBlocks(np.tile(stream, 2), 65, 2)
    with pytest.raises(LabkitError, match=r"sequence length 65 .*max_position_embeddings=64"):
        train(model, too_long, quiet())
    empty = {"input_ids": torch.zeros(0, 8, dtype=torch.long), "labels": torch.zeros(0, 8)}
    with pytest.raises(LabkitError, match=r"empty .*shape \(0, 8\)"):
        train(model, lambda: empty, quiet())
    big_vocab = RandomBlocks(np.arange(200, dtype=np.uint16), 8, 2)  # a 200-token tokenizer
    with pytest.raises(LabkitError, match=r"input_ids contain token id 1\d\d .*vocab_size=97"):
        train(model, big_vocab, quiet())
    labels = {"input_ids": torch.ones(1, 4, dtype=torch.long), "labels": torch.full((1, 4), 500)}
    with pytest.raises(LabkitError, match=r"labels contain token id 500"):
        check_batch(model, labels)
    with pytest.raises(LabkitError, match=r"must return a dict .*got tuple"):
        train(model, lambda: (torch.ones(1, 4), torch.ones(1, 4)), quiet())
    with pytest.raises(LabkitError, match=r"holds no checkpoint"):
        train(model, too_long, quiet(), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(LabkitError, match=r"steps=0"):
        train(model, too_long, quiet(steps=0))
    with pytest.raises(LabkitError, match=r"dtype='int8'"):
        train(model, too_long, quiet(dtype="int8"))
    with pytest.raises(LabkitError, match=r"objective='mlm'"):
        train(model, too_long, quiet(objective="mlm"))
