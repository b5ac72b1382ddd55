"""Lab 04: number formats as the running torch implements them, loss scaling, master weights.

Every range, epsilon and rounding shown comes from torch itself (torch.finfo, casts, bit views).
"""

from .formats import (
    FORMAT_NAMES,
    Decomposition,
    Format,
    RangeShares,
    available_formats,
    cast,
    check_format_on_device,
    decompose,
    decompose_table,
    format_table,
    format_zones,
    fp16_underflow_share_analytic,
    get_format,
    highlight_shapes,
    kind_of,
    log_histogram,
    overflows,
    range_figure,
    range_shares,
    range_shares_table,
    round_to_tf32,
    sample_shares,
    sample_values,
    ulp,
    underflow_share_analytic,
    value_from_bits,
)
from .scaling import (
    STORAGE_MODES,
    ScalerRecorder,
    VanishingUpdate,
    fp16_gradient_storage,
    grad_scaler,
    grad_scaler_figure,
    gradient_storage,
    gradient_storage_runs,
    vanishing_update_demo,
    vanishing_update_figure,
)

SETTINGS = {
    "cpu": {
        "grad_sigma": 1e-6,  # std of the synthetic gradients: a few % flush to zero in fp16
        "sample_size": 1_000_000,  # synthetic gradient values for measured-vs-analytic shares
        "explorer_max_values": 20_000,  # values per tensor the explorer looks at: a seeded sample
        # (a share's standard error is at most 0.35 points; keeps an update under 50 ms)
        "histogram_bins": 190,  # half-decade bins over 1e-50..1e45
        "scaler_steps": 60,  # GradScaler demo: steps of the tiny model under fp16 autocast
        "scaler_init_scale": 2.0**16,  # torch's default
        "scaler_growth_interval": 10,  # torch's default is 2000: shortened so growth shows
        "master_weight_steps": 200,
        "master_weight_update": 1e-4,  # below half an ulp of 1.0 in bf16 (0.0039)
        "train_steps": 40,  # fp32 vs bf16 autocast comparison
        "matmul_size": 512,
        "matmul_repeats": 5,
        "corpus_docs": 1500,  # documents tokenised for the lab's batches
        "tiny_d_model": 64, "tiny_layers": 2, "tiny_heads": 2,  # the fresh tiny GPT
        "seq_len": 64, "batch_size": 16, "lr": 3e-3,
        "master_lr": 5e-5,  # Adam's update ~ lr: below half an ulp of most bf16 weights
        "master_steps": 6,  # the share of weights that move is the same after 4 or 20 steps
        "storage_steps": 3,  # the shipped model's training continued, gradients kept 4 ways
        "storage_batch": 4, "storage_lr": 1e-4,
        "bf16_budget": 2.5,  # a bf16 run may cost this many fp32 runs; fewer steps if slower
        "master_steps_least": 4,  # on a CPU that emulates bf16 (AVX2 only)
    },
    "gpu": {
        "grad_sigma": 1e-6,
        "sample_size": 10_000_000,
        "explorer_max_values": 1_000_000,
        "histogram_bins": 190,
        "scaler_steps": 300,
        "scaler_init_scale": 2.0**16,
        "scaler_growth_interval": 50,
        "master_weight_steps": 1000,
        "master_weight_update": 1e-4,
        "train_steps": 300,
        "matmul_size": 8192,
        "matmul_repeats": 20,
        "corpus_docs": 16000,
        "tiny_d_model": 256, "tiny_layers": 4, "tiny_heads": 4,
        "seq_len": 256, "batch_size": 32, "lr": 2e-3,
        "master_lr": 5e-5,
        "master_steps": 200,
        "storage_steps": 20,
        "storage_batch": 16, "storage_lr": 1e-4,
        "bf16_budget": 2.5,
        "master_steps_least": 20,
    },
}

__all__ = [
    "FORMAT_NAMES",
    "SETTINGS",
    "STORAGE_MODES",
    "Decomposition",
    "Format",
    "RangeShares",
    "ScalerRecorder",
    "VanishingUpdate",
    "available_formats",
    "cast",
    "check_format_on_device",
    "decompose",
    "decompose_table",
    "format_table",
    "format_zones",
    "fp16_gradient_storage",
    "fp16_underflow_share_analytic",
    "get_format",
    "grad_scaler",
    "grad_scaler_figure",
    "gradient_storage",
    "gradient_storage_runs",
    "highlight_shapes",
    "kind_of",
    "log_histogram",
    "overflows",
    "range_figure",
    "range_shares",
    "range_shares_table",
    "round_to_tf32",
    "sample_shares",
    "sample_values",
    "ulp",
    "underflow_share_analytic",
    "value_from_bits",
    "vanishing_update_demo",
    "vanishing_update_figure",
]
