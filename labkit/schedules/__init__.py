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
    lr_range_test,
    lr_sweep,
    range_test_figure,
    smooth_losses,
    suggest_lr,
)

# Short runs of the tiny GPT (labkit.models) that fit the profile. The peaks are for a tiny
# model trained with AdamW: small models take larger rates than the 1e-4..5e-4 of large LLMs.
SETTINGS = {
    "cpu": {
        # the tiny GPT and its data (tokenised once per lab)
        "n_documents": 1500,
        "d_model": 64,
        "n_layer": 2,
        "n_head": 4,
        "eval_batches": 4,
        "total_steps": 200,  # optimizer updates per schedule run
        "warmup_fraction": 0.05,  # 5% warmup, the top of the usual 1-5%
        "peak_lr": 3e-3,
        "min_lr_ratio": 0.1,  # cosine/WSD end at a tenth of the peak (nanoGPT's choice)
        "wsd_decay_fractions": (0.1, 0.025),  # MiniCPM: 10% recovers cosine, 2.5% does not
        "wsd_decay_type": "1-sqrt",
        "restart_cycles": 3,
        "too_high_lr": 0.1,  # without warmup this peak spikes or diverges
        "too_low_lr": 1e-5,  # this one plateaus
        "range_min_lr": 1e-5,
        "range_max_lr": 1.0,
        "range_steps": 60,
        "batch_size": 16,
        "seq_len": 64,
        "curve_points": 1001,  # points per curve in the explorer
    },
    "gpu": {
        "n_documents": 16000,
        "d_model": 256,
        "n_layer": 4,
        "n_head": 4,
        "eval_batches": 16,
        "total_steps": 2000,
        "warmup_fraction": 0.02,
        "peak_lr": 1e-3,
        "min_lr_ratio": 0.1,
        "wsd_decay_fractions": (0.1, 0.025),
        "wsd_decay_type": "1-sqrt",
        "restart_cycles": 3,
        "too_high_lr": 0.05,
        "too_low_lr": 1e-6,
        "range_min_lr": 1e-6,
        "range_max_lr": 1.0,
        "range_steps": 200,
        "batch_size": 32,
        "seq_len": 256,
        "curve_points": 2001,
    },
}

__all__ = [
    "SCHEDULE_LABELS",
    "SCHEDULE_NAMES",
    "SETTINGS",
    "SHAPES",
    "RangeTest",
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
    "lr_sweep",
    "make_schedule",
    "nanogpt_cosine",
    "nanogpt_schedule",
    "range_test_figure",
    "schedule_figure",
    "schedule_table",
    "smooth_losses",
    "suggest_lr",
    "warmup_stable_decay",
    "wsd_schedule",
]
