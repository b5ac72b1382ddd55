"""Lab 05: learning-rate schedules as functions of the step, as torch schedulers, and the
LR range test. Every schedule equals transformers' implementation where one exists."""

from .curves import (
    SCHEDULE_LABELS,
    SCHEDULE_NAMES,
    SHAPES,
    as_lr_scheduler,
    constant,
    constant_schedule,
    cosine_restarts_schedule,
    cosine_schedule,
    cosine_with_hard_restarts,
    cosine_with_warmup,
    curve_steps,
    fraction_to_steps,
    inverse_sqrt,
    inverse_sqrt_schedule,
    linear_schedule,
    linear_with_warmup,
    make_schedule,
    nanogpt_cosine,
    nanogpt_schedule,
    schedule_figure,
    schedule_table,
    warmup_stable_decay,
    wsd_schedule,
)
from .range_test import (
    RangeTest,
    RangeTests,
    lr_range_test,
    lr_range_tests,
    lr_sweep,
    range_test_figure,
    range_tests_figure,
    smooth_losses,
    spread_factor,
    suggest_lr,
)

# Short runs of the tiny GPT (labkit.models) that fit the profile. The peaks are for a tiny
# model trained with AdamW: small models take larger rates than the 1e-4..5e-4 of large LLMs.
# cpu: about 50 ms of CPU per update on 1 thread (measured on a shared 2-core machine); the lab's
# ~640 updates (failure runs 3 x 60, range tests 3 seeds x 40, WSD branches 180 + cosine 160)
# are ~32 s.
SETTINGS = {
    "cpu": {
        # the tiny GPT and its data (tokenised once per lab)
        "n_documents": 1500,  # ~100k training tokens
        "d_model": 64,
        "n_layer": 2,
        "n_head": 4,
        "batch_size": 8,  # 8 x 64 tokens: per CPU second it learns faster than 16 x 64
        "seq_len": 64,
        "eval_batches": 8,  # 4096 held-out tokens score every run
        # the schedule runs (explorer and WSD vs cosine)
        # optimizer updates per schedule run; at 140 the 10% cooldown's gain over the stable
        # run fell from 0.10 to 0.04 nats and the 2.5% one's to nothing (measured): keep 160
        "total_steps": 160,
        "warmup_fraction": 0.05,  # 5% warmup, the top of the usual 1-5%
        "peak_lr": 1e-2,  # where the range test's loss falls fastest for this model
        "min_lr_ratio": 0.1,  # cosine/WSD end at a tenth of the peak (nanoGPT's choice)
        "wsd_decay_fractions": (0.1, 0.025),  # MiniCPM: 10% recovers cosine, 2.5% does not
        "wsd_decay_type": "1-sqrt",
        "restart_cycles": 3,
        "max_run_steps": 1000,  # the explorer's train button refuses longer runs
        # what goes wrong: three short runs
        # 80 updates show all three (the spike, warmup's lower end, the stall); at 60 warmup's
        # held-out gain fell from 0.60 to 0.35 nats (measured), so the 80 of 23f4454 stay
        "failure_steps": 80,
        "failure_warmup_steps": 20,  # Adam's second moment (beta2 = 0.95) needs ~20 steps
        "too_high_lr": 0.1,  # without warmup: a spike above ln(vocab), stuck near unigram
        "too_low_lr": 1e-4,  # barely leaves the uniform guess in 100 steps
        # the LR range test
        "range_min_lr": 1e-5,
        "range_max_lr": 1.0,
        "range_steps": 40,  # 8 per decade: the 3 seeds' steepest descents agree within 1.4x
        "range_seeds": 3,  # one test is noisy: its lowest-loss LR moves 2-3x between seeds
        "curve_points": 1001,  # points per curve in the explorer
    },
    "gpu": {  # not yet measured on a GPU: a starting point, scaled up from the cpu numbers
        "n_documents": 16000,
        "d_model": 256,
        "n_layer": 4,
        "n_head": 4,
        "batch_size": 32,
        "seq_len": 256,
        "eval_batches": 2,  # the held-out text holds 87 blocks of 256 tokens
        "total_steps": 2000,
        "warmup_fraction": 0.02,
        "peak_lr": 3e-3,
        "min_lr_ratio": 0.1,
        "wsd_decay_fractions": (0.1, 0.025),
        "wsd_decay_type": "1-sqrt",
        "restart_cycles": 3,
        "max_run_steps": 20000,
        "failure_steps": 500,
        "failure_warmup_steps": 50,
        "too_high_lr": 0.1,
        "too_low_lr": 1e-5,
        "range_min_lr": 1e-6,
        "range_max_lr": 1.0,
        "range_steps": 200,
        "range_seeds": 3,
        "curve_points": 2001,
    },
}

__all__ = [
    "SCHEDULE_LABELS",
    "SCHEDULE_NAMES",
    "SETTINGS",
    "SHAPES",
    "RangeTest",
    "RangeTests",
    "as_lr_scheduler",
    "constant",
    "constant_schedule",
    "cosine_restarts_schedule",
    "cosine_schedule",
    "cosine_with_hard_restarts",
    "cosine_with_warmup",
    "curve_steps",
    "fraction_to_steps",
    "inverse_sqrt",
    "inverse_sqrt_schedule",
    "linear_schedule",
    "linear_with_warmup",
    "lr_range_test",
    "lr_range_tests",
    "lr_sweep",
    "make_schedule",
    "nanogpt_cosine",
    "nanogpt_schedule",
    "range_test_figure",
    "range_tests_figure",
    "schedule_figure",
    "schedule_table",
    "smooth_losses",
    "spread_factor",
    "suggest_lr",
    "warmup_stable_decay",
    "wsd_schedule",
]
