"""labkit.schedules: every curve equals transformers' scheduler at every step, bad input is named."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import optimization as hf

from labkit import LabkitError, profile
from labkit.schedules import (
    SCHEDULE_NAMES,
    as_lr_scheduler,
    constant,
    cosine_with_hard_restarts,
    cosine_with_warmup,
    curve_steps,
    fraction_to_steps,
    inverse_sqrt,
    linear_with_warmup,
    lr_range_test,
    lr_sweep,
    make_schedule,
    nanogpt_cosine,
    range_test_figure,
    schedule_figure,
    schedule_table,
    smooth_losses,
    suggest_lr,
    warmup_stable_decay,
)

EXAMPLES = settings(max_examples=60, deadline=None)


def _optimizer(lr: float = 1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _negative_lr_optimizer():
    opt = _optimizer()
    opt.param_groups[0]["lr"] = -0.1  # torch checks lr only in the constructor
    return opt


def _hf_lambda(factory, **kwargs):
    """The exact lr_lambda transformers builds (LambdaLR keeps it in lr_lambdas)."""
    return factory(_optimizer(), **kwargs).lr_lambdas[0]


@st.composite
def horizons(draw, min_total: int = 1):
    total = draw(st.integers(min_total, 400))
    warmup = draw(st.integers(0, total))
    return total, warmup


def _steps(total: int, warmup: int, *marks: int) -> list[int]:
    """Every step of the run plus the boundaries and well beyond the end."""
    edges = {0, warmup - 1, warmup, warmup + 1, total - 1, total, total + 1, 2 * total + 7}
    edges |= {m + d for m in marks for d in (-1, 0, 1)}
    return sorted({s for s in range(total + 1)} | {s for s in edges if s >= 0})


@EXAMPLES
@given(horizons())
def test_linear_equals_transformers(hw):
    total, warmup = hw
    ref = _hf_lambda(hf.get_linear_schedule_with_warmup, num_warmup_steps=warmup,
                     num_training_steps=total)
    for step in _steps(total, warmup):
        assert linear_with_warmup(step, total_steps=total, warmup_steps=warmup) == ref(step)


@EXAMPLES
@given(horizons(), st.sampled_from([0.5, 0.25, 1.0, 1.5]))
def test_cosine_equals_transformers(hw, cycles):
    total, warmup = hw
    ref = _hf_lambda(hf.get_cosine_schedule_with_warmup, num_warmup_steps=warmup,
                     num_training_steps=total, num_cycles=cycles)
    for step in _steps(total, warmup):
        got = cosine_with_warmup(step, total_steps=total, warmup_steps=warmup, num_cycles=cycles)
        assert got == ref(step)


@EXAMPLES
@given(horizons(), st.floats(0.0, 1.0))
def test_cosine_min_lr_equals_transformers(hw, ratio):
    total, warmup = hw
    ref = _hf_lambda(hf.get_cosine_with_min_lr_schedule_with_warmup, num_warmup_steps=warmup,
                     num_training_steps=total, min_lr_rate=ratio)
    for step in _steps(total, warmup):
        got = cosine_with_warmup(step, total_steps=total, warmup_steps=warmup, min_lr_ratio=ratio)
        assert got == ref(step)
    assert cosine_with_warmup(total, total_steps=total, warmup_steps=warmup,
                              min_lr_ratio=ratio) == pytest.approx(ratio if total > warmup else 1)


def test_cosine_climbs_back_after_the_end_like_transformers():
    # transformers does not clamp the cosine after num_training_steps: neither do we.
    ref = _hf_lambda(hf.get_cosine_schedule_with_warmup, num_warmup_steps=10,
                     num_training_steps=110)
    after = cosine_with_warmup(160, total_steps=110, warmup_steps=10)
    assert after == ref(160) == pytest.approx(0.5)
    assert cosine_with_warmup(110, total_steps=110, warmup_steps=10) == 0.0


@EXAMPLES
@given(horizons(), st.data())
def test_wsd_equals_transformers(hw, data):
    total, warmup = hw
    decay = data.draw(st.integers(0, total - warmup))
    decay_type = data.draw(st.sampled_from(["linear", "cosine", "1-sqrt"]))
    warmup_type = data.draw(st.sampled_from(["linear", "cosine", "1-sqrt"]))
    ratio = data.draw(st.floats(0.0, 1.0))
    ref = _hf_lambda(hf.get_wsd_schedule, num_warmup_steps=warmup, num_decay_steps=decay,
                     num_training_steps=total, warmup_type=warmup_type, decay_type=decay_type,
                     min_lr_ratio=ratio)
    for step in _steps(total, warmup, total - decay):
        got = warmup_stable_decay(step, total_steps=total, warmup_steps=warmup, decay_steps=decay,
                                  decay_type=decay_type, warmup_type=warmup_type,
                                  min_lr_ratio=ratio)
        assert got == ref(step)


@EXAMPLES
@given(st.integers(0, 300), st.one_of(st.none(), st.integers(1, 500)))
def test_inverse_sqrt_equals_transformers(warmup, timescale):
    ref = _hf_lambda(hf.get_inverse_sqrt_schedule, num_warmup_steps=warmup, timescale=timescale)
    for step in _steps(warmup + 50, warmup):
        assert inverse_sqrt(step, warmup_steps=warmup, timescale=timescale) == ref(step)


def test_inverse_sqrt_timescale_defaults_to_warmup():
    assert inverse_sqrt(400, warmup_steps=100) == pytest.approx(0.5)  # sqrt(100 / 400)
    assert inverse_sqrt(400, warmup_steps=100, timescale=100) == inverse_sqrt(400, warmup_steps=100)


@EXAMPLES
@given(horizons(), st.integers(1, 6))
def test_hard_restarts_equals_transformers(hw, cycles):
    total, warmup = hw
    ref = _hf_lambda(hf.get_cosine_with_hard_restarts_schedule_with_warmup,
                     num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles)
    for step in _steps(total, warmup):
        got = cosine_with_hard_restarts(step, total_steps=total, warmup_steps=warmup,
                                        num_cycles=cycles)
        assert got == ref(step)


@EXAMPLES
@given(st.integers(0, 300))
def test_constant_equals_transformers(warmup):
    plain = _hf_lambda(hf.get_constant_schedule)
    ref = _hf_lambda(hf.get_constant_schedule_with_warmup, num_warmup_steps=warmup)
    for step in _steps(warmup + 20, warmup):
        assert constant(step, warmup_steps=warmup) == ref(step)
        assert constant(step) == plain(step) == 1


def _nanogpt_get_lr(it, *, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    # karpathy/nanoGPT train.py, get_lr, verbatim
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@EXAMPLES
@given(horizons(min_total=2), st.floats(0.0, 1.0), st.floats(1e-5, 1.0))
def test_nanogpt_equals_nanogpt(hw, ratio, peak):
    total, warmup = hw
    warmup = min(warmup, total - 1)
    for step in _steps(total, warmup):
        got = nanogpt_cosine(step, total_steps=total, warmup_steps=warmup, min_lr_ratio=ratio,
                             peak_lr=peak)
        assert got == _nanogpt_get_lr(step, learning_rate=peak, warmup_iters=warmup,
                                      lr_decay_iters=total, min_lr=peak * ratio)


def test_nanogpt_reference_values():
    # nanoGPT's shakespeare-char config: lr 1e-3, warmup 100, decay 5000, min_lr 1e-4
    kw = {"total_steps": 5000, "warmup_steps": 100, "min_lr_ratio": 0.1, "peak_lr": 1e-3}
    assert nanogpt_cosine(0, **kw) == pytest.approx(1e-3 / 101)
    assert nanogpt_cosine(100, **kw) == pytest.approx(1e-3)
    assert nanogpt_cosine(2550, **kw) == pytest.approx(5.5e-4)
    assert nanogpt_cosine(9999, **kw) == pytest.approx(1e-4)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_as_lr_scheduler_drives_the_optimizer_like_transformers(name):
    total, warmup, peak = 60, 6, 3e-3
    fn = make_schedule(name, total_steps=total, warmup_steps=warmup, min_lr_ratio=0.1,
                       decay_steps=12, num_cycles=2)
    ours_opt, theirs_opt = _optimizer(peak), _optimizer(peak)
    ours = as_lr_scheduler(ours_opt, fn)
    theirs = {
        "constant": lambda o: hf.get_constant_schedule_with_warmup(o, warmup),
        "linear": lambda o: hf.get_linear_schedule_with_warmup(o, warmup, total),
        "cosine": lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(
            o, warmup, total, min_lr_rate=0.1),
        "nanogpt": None,
        "wsd": lambda o: hf.get_wsd_schedule(o, warmup, 12, num_training_steps=total,
                                             min_lr_ratio=0.1),
        "inverse_sqrt": lambda o: hf.get_inverse_sqrt_schedule(o, warmup),
        "cosine_restarts": lambda o: hf.get_cosine_with_hard_restarts_schedule_with_warmup(
            o, warmup, total, num_cycles=2),
    }[name]
    ref = theirs(theirs_opt) if theirs else None
    for step in range(total + 5):
        lr = ours_opt.param_groups[0]["lr"]
        assert lr == pytest.approx(peak * fn(step), rel=1e-12)
        if ref is not None:
            assert lr == theirs_opt.param_groups[0]["lr"]
        ours_opt.step()
        theirs_opt.step()
        ours.step()
        if ref is not None:
            ref.step()


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: linear_with_warmup(0, total_steps=0, warmup_steps=0), "total_steps"),
        (lambda: linear_with_warmup(0, total_steps=100, warmup_steps=101), "warmup_steps"),
        (lambda: cosine_with_warmup(0, total_steps=100, warmup_steps=-1), "warmup_steps"),
        (lambda: cosine_with_warmup(0, total_steps=100, warmup_steps=5, min_lr_ratio=1.2),
         "min_lr_ratio"),
        (lambda: cosine_with_warmup(0, total_steps=100, warmup_steps=5, min_lr_ratio=-0.1),
         "min_lr_ratio"),
        (lambda: cosine_with_warmup(-1, total_steps=100, warmup_steps=5), "step"),
        (lambda: cosine_with_warmup(2.5, total_steps=100, warmup_steps=5), "step"),
        (lambda: warmup_stable_decay(0, total_steps=100, warmup_steps=5, decay_steps=10,
                                     decay_type="exponential"), "decay_type"),
        (lambda: warmup_stable_decay(0, total_steps=100, warmup_steps=50, decay_steps=60),
         "decay_steps"),
        (lambda: nanogpt_cosine(0, total_steps=100, warmup_steps=10, peak_lr=-1e-3), "peak_lr"),
        (lambda: nanogpt_cosine(0, total_steps=100, warmup_steps=100), "warmup_steps"),
        (lambda: inverse_sqrt(0, warmup_steps=10, timescale=0), "timescale"),
        (lambda: cosine_with_hard_restarts(0, total_steps=10, warmup_steps=1, num_cycles=0),
         "num_cycles"),
        (lambda: make_schedule("exponential", total_steps=10, warmup_steps=1), "schedule"),
        (lambda: schedule_table({"c": lambda s: 1.0}, 10, peak_lr=-3e-4), "peak_lr"),
        (lambda: fraction_to_steps(1.5, 100), "warmup_fraction"),
        (lambda: as_lr_scheduler(_negative_lr_optimizer(), lambda s: 1.0), "lr"),
        (lambda: as_lr_scheduler(_optimizer(), "cosine"), "schedule_fn"),
    ],
)
def test_bad_input_names_the_parameter(call, names):
    with pytest.raises(LabkitError) as info:
        call()
    message = str(info.value)
    assert names in message and "\n" not in message
    assert "valid" in message or "must" in message or "leaves" in message


def test_error_messages_say_what_is_valid():
    with pytest.raises(LabkitError, match=r"warmup_steps=300 .*training.*valid: 0\.\.200"):
        cosine_with_warmup(0, total_steps=200, warmup_steps=300)
    with pytest.raises(LabkitError, match=r"decay_type 'exp'; valid: linear, cosine, 1-sqrt"):
        make_schedule("wsd", total_steps=10, warmup_steps=1, decay_type="exp")


def test_table_and_figure():
    fns = {n: make_schedule(n, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
           for n in SCHEDULE_NAMES}
    table = schedule_table(fns, 100, peak_lr=2e-3)
    assert list(table.columns) == list(SCHEDULE_NAMES) and len(table) == 101
    assert table.loc[10, "cosine"] == pytest.approx(2e-3)
    assert table.loc[100, "cosine"] == pytest.approx(2e-4)
    assert table.loc[100, "linear"] == 0.0
    fig = schedule_figure(table, warmup_steps=10, total_steps=100)
    assert fig.layout.title.text and "step" in fig.layout.xaxis.title.text
    assert "learning rate" in fig.layout.yaxis.title.text
    assert len(fig.data) == len(SCHEDULE_NAMES)


def test_curve_steps_keep_the_kinks():
    steps = curve_steps(10_000, max_points=101, marks=(237, 9000))
    assert steps[0] == 0 and steps[-1] == 10_000 and {236, 237, 8999, 9000} <= set(steps)
    assert len(steps) <= 101 + 4
    assert curve_steps(50) == list(range(51))


def test_fraction_to_steps():
    assert fraction_to_steps(0.05, 200) == 10
    assert fraction_to_steps(0.025, 200, "decay_fraction") == 5


def test_settings_for_both_profiles():
    for name in ("cpu", "gpu"):
        s = profile(name).settings("schedules")
        warmup = fraction_to_steps(s.warmup_fraction, s.total_steps)
        for sched in SCHEDULE_NAMES:
            fn = make_schedule(sched, total_steps=s.total_steps, warmup_steps=warmup,
                               min_lr_ratio=s.min_lr_ratio)
            assert 0 <= fn(s.total_steps // 2) <= 1
        assert s.range_min_lr < s.peak_lr < s.range_max_lr


# -- LR range test ---------------------------------------------------------------------------------


def test_sweep_is_exponential():
    lrs = lr_sweep(1e-4, 1.0, 5)
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_smoothing_is_bias_corrected_ema():
    assert smooth_losses([2.0, 2.0, 2.0], beta=0.9) == pytest.approx([2.0, 2.0, 2.0])
    # second value: (0.9*0.1*1 + 0.1*3) / (1 - 0.81) = 0.39 / 0.19
    assert smooth_losses([1.0, 3.0], beta=0.9)[1] == pytest.approx(0.39 / 0.19)


def _quadratic_trainer(curvature: float = 4.0, dim: int = 8, seed: int = 0):
    """Gradient descent on 0.5*a*|w|^2: stable for lr < 2/a, divergent above."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=gen, dtype=torch.float64)

    def train_step(lr: float) -> float:
        nonlocal w
        loss = 0.5 * curvature * float(w @ w)
        w = w - lr * curvature * w
        return loss

    return train_step


def test_range_test_stops_past_the_stability_limit_and_suggests_below_it():
    curvature = 4.0
    seen = []
    result = lr_range_test(_quadratic_trainer(curvature), min_lr=1e-4, max_lr=10.0, num_steps=80,
                           on_step=lambda i, lr, loss: seen.append(i))
    limit = 2 / curvature
    assert result.stop_reason == "diverged"
    assert limit < result.lrs[-1] < 10.0  # stopped after the limit, before the sweep ended
    assert seen == list(range(len(result.lrs)))
    assert result.steepest_lr is not None and result.steepest_lr < limit
    assert result.min_loss_lr / 10 < limit
    assert result.suggestion == result.steepest_lr
    fig = range_test_figure(result)
    assert fig.layout.xaxis.type == "log" and "learning rate" in fig.layout.xaxis.title.text
    assert "loss" in fig.layout.yaxis.title.text and fig.layout.title.text


def test_range_test_stops_on_nan():
    result = lr_range_test(lambda lr: math.nan if lr > 0.01 else 1.0 - lr, min_lr=1e-4,
                           max_lr=1.0, num_steps=30)
    assert result.stop_reason == "non-finite loss"
    assert math.isnan(result.losses[-1]) and result.lrs[-2] <= 0.01 < result.lrs[-1]


def test_suggestion_rules():
    lrs = lr_sweep(1e-4, 1.0, 41)
    # a loss that falls fastest at lr = 1e-2 (a logistic in log10 lr), rises after 1e-1
    smoothed = [1 / (1 + math.exp(3 * (math.log10(x) + 2))) + max(0, math.log10(x) + 1) ** 2
                for x in lrs]
    assert suggest_lr(lrs, smoothed, "steepest") == pytest.approx(1e-2, rel=0.3)
    best = min(range(41), key=smoothed.__getitem__)
    assert suggest_lr(lrs, smoothed, "min/10") == pytest.approx(lrs[best] / 10)
    with pytest.raises(LabkitError, match="rule"):
        suggest_lr(lrs, smoothed, "valley")


@pytest.mark.parametrize(
    "kwargs", [{"min_lr": -1e-5}, {"min_lr": 1.0, "max_lr": 0.1}, {"num_steps": 1},
               {"divergence_factor": 0.5}, {"beta": 1.0}])
def test_range_test_bad_input(kwargs):
    with pytest.raises(LabkitError):
        lr_range_test(lambda lr: 1.0, **kwargs)


# -- several seeds, and the figures' log axes ------------------------------------------------------


def _noisy_quadratic(seed: int):
    """A quadratic trainer whose loss carries seeded noise, like a minibatch loss."""
    trainer = _quadratic_trainer(4.0, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)

    def train_step(lr: float) -> float:
        return trainer(lr) * (1 + 0.05 * float(torch.randn((), generator=gen)))

    return train_step


def test_range_tests_of_several_seeds():
    from labkit.schedules import lr_range_tests, spread_factor

    result = lr_range_tests(_noisy_quadratic, [0, 1, 2], min_lr=1e-4, max_lr=10.0, num_steps=60)
    assert list(result.runs) == [0, 1, 2]
    assert len({tuple(r.losses) for r in result.runs.values()}) == 3  # each seed its own run
    assert result.lrs == result.runs[0].lrs[:len(result.lrs)]
    common = len(result.lrs)
    assert common == min(len(r.smoothed) for r in result.runs.values())
    for i in (0, common // 2, common - 1):  # the mean of the smoothed curves, step by step
        assert result.mean_smoothed[i] == pytest.approx(
            sum(r.smoothed[i] for r in result.runs.values()) / 3)
    assert result.pick == suggest_lr(result.lrs, result.mean_smoothed, "steepest")
    assert result.pick < 2 / 4.0  # below the stability limit of the quadratic
    assert result.mean_min_loss_lr == result.lrs[min(range(common),
                                                     key=result.mean_smoothed.__getitem__)]
    table = result.table()
    assert list(table.index) == ["0", "1", "2", "mean of the seeds"]
    assert table.loc["mean of the seeds", "steepest descent LR"] == result.pick
    assert spread_factor(result.steepest_lrs.values()) >= 1.0
    # the same seeds give the same tests
    again = lr_range_tests(_noisy_quadratic, [0, 1, 2], min_lr=1e-4, max_lr=10.0, num_steps=60)
    assert again.mean_smoothed == result.mean_smoothed


@pytest.mark.parametrize("seeds", [[], [1, 1], "12", [1.5], None, [True]])
def test_range_tests_refuse_bad_seeds(seeds):
    from labkit.schedules import lr_range_tests

    with pytest.raises(LabkitError, match="seed"):
        lr_range_tests(_noisy_quadratic, seeds, num_steps=5)


def test_spread_factor():
    from labkit.schedules import spread_factor

    assert spread_factor([0.01, 0.02, 0.04]) == pytest.approx(4.0)
    assert spread_factor([0.01, None, math.nan, 0.03]) == pytest.approx(3.0)
    assert math.isnan(spread_factor([0.01])) and math.isnan(spread_factor([]))


def _x_span_decades(fig) -> float:
    lo, hi = fig.layout.xaxis.range
    return hi - lo


def test_range_test_figures_keep_the_log_axis_on_the_lrs_tested():
    # The bug this guards against: a vline at log10(lr) on a log axis is a shape at a negative
    # LR, and plotly's autorange then spans 1e-54 to 1e9.
    from labkit.schedules import lr_range_tests, range_tests_figure

    single = lr_range_test(_quadratic_trainer(4.0), min_lr=1e-4, max_lr=10.0, num_steps=80)
    several = lr_range_tests(_noisy_quadratic, [0, 1], min_lr=1e-4, max_lr=10.0, num_steps=40)
    for fig, lrs in ((range_test_figure(single), single.lrs),
                     (range_tests_figure(several), several.runs[0].lrs)):
        assert fig.layout.xaxis.type == "log"
        lo, hi = fig.layout.xaxis.range  # log10 units on a log axis
        assert lo <= math.log10(min(lrs)) and math.log10(max(lrs)) <= hi
        assert _x_span_decades(fig) < math.log10(max(lrs) / min(lrs)) + 1
        xs = [x for trace in fig.data for x in (trace.x or ())]
        assert all(x > 0 for x in xs)  # every mark is at an LR, not at its logarithm
        assert not fig.layout.shapes and not fig.layout.annotations  # nothing to overprint
        assert all(trace.name and not trace.name.startswith("trace") for trace in fig.data)
        assert fig.layout.title.text and "learning rate" in fig.layout.xaxis.title.text
    names = [t.name for t in range_tests_figure(several).data]
    assert "mean of the seeds" in names and any(n.startswith("pick") for n in names)
    with pytest.raises(LabkitError, match="RangeTests"):
        range_tests_figure(single)
