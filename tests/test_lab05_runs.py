"""labkit.schedules.runs: the short runs of lab 05 are reproducible, WSD branches equal WSD runs
from scratch, a diverging run stops at its first NaN, and the helpers report what they measured."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from labkit import LabkitError
from labkit.models import ModelShape
from labkit.pretrain.objectives import causal_lm_labels
from labkit.schedules import (
    cosine_schedule,
    lr_range_test,
    make_schedule,
    wsd_schedule,
)
from labkit.schedules.runs import (
    RunSetup,
    explorer_run_fn,
    range_test_step,
    run_summary,
    runs_figure,
    summary_table,
    tiny_setup,
    train_with_schedule,
    unigram_loss,
    wsd_branches,
)

V, SEQ, BATCH = 61, 16, 4


@pytest.fixture(scope="module")
def setup() -> RunSetup:
    rng = np.random.default_rng(0)
    # a learnable stream: a repeated pattern with some noise
    stream = np.tile(np.arange(V), 60)
    noise = rng.random(stream.size) < 0.1
    stream[noise] = rng.integers(0, V, noise.sum())
    held = torch.as_tensor(np.tile(np.arange(V), 4)[: 2 * BATCH * SEQ]).view(-1, SEQ)
    eval_batches = [{"input_ids": b, "labels": causal_lm_labels(b)} for b in held.split(BATCH)]
    return RunSetup(stream=stream, eval_batches=eval_batches, vocab_size=V,
                    shape=ModelShape(d_model=16, n_layer=1, n_head=2, max_len=SEQ),
                    batch_size=BATCH, seq_len=SEQ, seed=7)


def test_tiny_setup_tokenises_the_world_once():
    settings = SimpleNamespace(n_documents=20, d_model=32, n_layer=1, n_head=2, seq_len=32,
                               batch_size=4, eval_batches=2)
    s = tiny_setup(settings, seed=3)
    assert s.vocab_size > 1000  # the world's tokenizer, not a toy one
    assert 1000 < len(s.stream) < 20 * 2000
    assert len(s.eval_batches) == 2
    assert all(b["input_ids"].shape == (4, 32) for b in s.eval_batches)
    assert s.shape == ModelShape(d_model=32, n_layer=1, n_head=2, max_len=32)
    assert s.dtype is None and s.device == "cpu"
    with pytest.raises(LabkitError, match="eval_batches"):
        tiny_setup(SimpleNamespace(**{**vars(settings), "eval_batches": 10_000}))
    with pytest.raises(LabkitError, match="n_documents"):
        tiny_setup(SimpleNamespace(**{**vars(settings), "n_documents": 0}))


def test_unigram_loss():
    assert unigram_loss([0, 1, 2, 3] * 5) == pytest.approx(math.log(4))
    assert unigram_loss([5] * 9) == pytest.approx(0.0)
    # a uniform guess over more tokens than occur is worse than the unigram model
    assert unigram_loss([0, 0, 1], vocab_size=10) == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))


def test_a_run_follows_its_schedule_and_is_reproducible(setup):
    schedule = cosine_schedule(total_steps=12, warmup_steps=3, min_lr_ratio=0.1)
    a = train_with_schedule(setup, schedule, steps=12, peak_lr=3e-3)
    b = train_with_schedule(setup, schedule, steps=12, peak_lr=3e-3)
    assert a["step"].tolist() == list(range(1, 13))  # a row per step
    np.testing.assert_allclose(a["lr"], [3e-3 * schedule(t) for t in range(12)], rtol=1e-12)
    assert a["loss"].tolist() == b["loss"].tolist()  # bit for bit on CPU
    assert math.isfinite(a["eval_loss"].iloc[-1]) and a["eval_loss"].iloc[:-1].isna().all()
    assert a["loss"].iloc[-3:].mean() < a["loss"].iloc[0]  # it learns
    assert torch.get_num_threads() >= 1  # the one-thread context restores the setting


def test_progress_and_overrides(setup):
    seen = []
    h = train_with_schedule(setup, lambda t: 1.0, steps=5, peak_lr=1e-3, progress=seen.append,
                            grad_clip=None)
    assert seen == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert len(h) == 5


def test_a_diverging_run_stops_at_its_first_nan(setup):
    h = train_with_schedule(setup, lambda t: 1.0, steps=30, peak_lr=1e30)
    summary = run_summary(h)
    assert len(h) < 30
    assert not math.isfinite(h["loss"].iloc[-1])
    assert summary["first_nan_step"] == h["step"].iloc[-1]
    assert math.isnan(summary["final_loss"]) and math.isnan(summary["heldout_loss"])


def test_run_summary_numbers():
    h = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [5.0, 9.0, 4.0, 2.0],
                      "eval_loss": [math.nan, math.nan, math.nan, 2.5]})
    s = run_summary(h, tail=2)
    assert s == {"steps": 4, "final_loss": 3.0, "max_loss": 9.0, "first_nan_step": None,
                 "heldout_loss": 2.5}
    table = summary_table({"a": h, "b": h})
    assert list(table.index) == ["a", "b"] and table.loc["a", "max_loss"] == 9.0


def test_wsd_branches_equal_wsd_runs_from_scratch(setup):
    total, warmup, peak = 40, 4, 3e-3
    runs = wsd_branches(setup, total_steps=total, warmup_steps=warmup, peak_lr=peak,
                        decay_fractions=(0.1, 0.25), decay_type="1-sqrt", min_lr_ratio=0.1)
    assert list(runs) == ["stable, no decay", "WSD, decay over the last 25% (10 steps)",
                          "WSD, decay over the last 10% (4 steps)"]
    for decay, name in ((10, "WSD, decay over the last 25% (10 steps)"),
                        (4, "WSD, decay over the last 10% (4 steps)")):
        fn = wsd_schedule(total_steps=total, warmup_steps=warmup, decay_steps=decay,
                          decay_type="1-sqrt", min_lr_ratio=0.1)
        scratch = train_with_schedule(setup, fn, steps=total, peak_lr=peak)
        branch = runs[name]
        assert branch["step"].tolist() == list(range(1, total + 1))
        assert branch["loss"].tolist() == scratch["loss"].tolist()
        assert branch["eval_loss"].iloc[-1] == scratch["eval_loss"].iloc[-1]
        np.testing.assert_allclose(branch["lr"], scratch["lr"], rtol=1e-12)
    stable = runs["stable, no decay"]
    assert (stable["lr"].iloc[warmup:] == peak).all()
    # the branches share the stable phase with the trunk
    assert stable["loss"].iloc[:30].tolist() == runs[
        "WSD, decay over the last 25% (10 steps)"]["loss"].iloc[:30].tolist()
    with pytest.raises(LabkitError, match="decay_fractions"):
        wsd_branches(setup, total_steps=10, warmup_steps=1, peak_lr=1e-3,
                     decay_fractions=(0.01,))


def test_range_test_step_drives_a_range_test(setup):
    result = lr_range_test(range_test_step(setup), min_lr=1e-4, max_lr=1.0, num_steps=15)
    again = lr_range_test(range_test_step(setup), min_lr=1e-4, max_lr=1.0, num_steps=15)
    assert result.losses == again.losses
    assert result.losses[0] == pytest.approx(math.log(V), abs=0.3)  # starts near a uniform guess
    assert all(math.isfinite(v) for v in result.losses)
    assert result.lrs[0] == pytest.approx(1e-4)


def test_explorer_run_fn_trains_what_the_widget_asks(setup):
    from widgets.schedules import ScheduleExplorer

    run_fn = explorer_run_fn(setup, max_steps=50)
    settings = {"schedule": "cosine", "total_steps": 8, "warmup_steps": 2, "peak_lr": 3e-3,
                "min_lr_ratio": 0.1, "decay_steps": 1, "decay_type": "linear", "num_cycles": 2}
    steps, losses = run_fn(settings)
    schedule = make_schedule("cosine", total_steps=8, warmup_steps=2, min_lr_ratio=0.1)
    expected = train_with_schedule(setup, schedule, steps=8, peak_lr=3e-3)
    assert steps == list(range(1, 9)) and losses == expected["loss"].tolist()
    with pytest.raises(LabkitError, match="total steps"):
        run_fn({**settings, "total_steps": 51})

    cfg = SimpleNamespace(total_steps=6, warmup_fraction=0.2, peak_lr=3e-3, min_lr_ratio=0.1,
                          wsd_decay_fractions=(0.5,), wsd_decay_type="linear",
                          restart_cycles=2, curve_points=101)
    explorer = ScheduleExplorer(settings=cfg, run_fn=run_fn, schedules=("cosine", "wsd"))
    assert explorer.train()
    assert len(explorer.cache) == 2 and explorer.progress.value == 1.0
    visible = [t for t in explorer.loss_figure.data if t.visible]
    assert len(visible) == 2 and all(len(t.y) == 6 for t in visible)


def test_runs_figure(setup):
    h = pd.DataFrame({"step": [1, 2, 3], "loss": [8.0, math.nan, 6.0], "lr": [1e-3, 2e-3, 3e-3]})
    fig = runs_figure({"a": h, "b": h}, title="runs", references={"ln V": 8.0}, smooth=2)
    assert fig.layout.title.text == "runs"
    assert len(fig.data) == 4 and [t.showlegend for t in fig.data] == [None, False, None, False]
    assert fig.layout.yaxis.type == "log" and "step" in fig.layout.xaxis.title.text
    assert "nats" in fig.layout.yaxis2.title.text and "mean of 2 steps" in str(fig.layout)
    assert list(fig.data[1].y) == [8.0, 8.0, 6.0]  # a rolling mean skips the NaN


def test_range_tests_give_each_seed_its_own_model_and_batches(setup):
    from labkit.schedules.runs import range_tests

    result = range_tests(setup, seeds=[7, 8], min_lr=1e-4, max_lr=1.0, num_steps=12)
    first, second = result.runs[7], result.runs[8]
    assert first.losses != second.losses  # other initial weights and batches
    # seed 7 is the setup's own seed: its test is the single range test of that setup
    single = lr_range_test(range_test_step(setup), min_lr=1e-4, max_lr=1.0, num_steps=12)
    assert first.losses == single.losses
    assert result.pick is not None and 1e-4 <= result.pick <= 1.0
