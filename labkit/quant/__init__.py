"""Stage 10, quantization: how few bits a model's weights need, and what each bit costs.

schemes (absmax / zero-point, per tensor / channel / group), nf4 (QLoRA's NormalFloat with
double quantization, bit-identical to bitsandbytes), llm_int8 (int8 matmul with outlier
decomposition), gptq and awq (calibration-based 4/3-bit), apply (swap a model's linear layers
for QuantLinear, measure stored bytes, load the real bitsandbytes kernels), serving (the memory
to serve 7B/70B models), figures.
"""

from .apply import (
    METHODS,
    QuantLinear,
    linear_stored_bytes,
    load_bnb_model,
    quantize_model,
    stored_bytes,
    valid_group_sizes,
)
from .awq import awq_quantize_model, awq_search
from .gptq import (
    gptq_quantize_model,
    gptq_quantize_weight,
    input_stats,
    output_error,
    rtn_quantize_weight,
)
from .llm_int8 import int8_quantize_weight, llm_int8_matmul, outlier_columns
from .nf4 import NF4_LEVELS, nf4_dequantize, nf4_quantize
from .schemes import (
    QuantizedTensor,
    absmax_quantize,
    dequantize,
    fake_quantize,
    quantize,
    reconstruction_errors,
    zeropoint_quantize,
)
from .serving import GPUS, PRESETS, gpu_fit_table, kv_cache_bytes, serving_memory, weight_bytes

SETTINGS = {
    "cpu": {
        "bits": [8, 6, 4, 3, 2],  # the "JPEG slider" of section 1
        "schemes": ["rtn", "absmax", "nf4", "llm_int8", "gptq", "awq"],
        "group_sizes": [None, 32, 64, 128],  # None = one scale per output channel
        # the GPTQ paper's 128 segments, shorter: ~10 s of one core per calibrated model (the
        # calibration text runs through each transformer block once, inputs cached)
        "calib_samples": 128,  # calibration sequences for GPTQ/AWQ
        "awq_calib_samples": 16,  # the AWQ paper: 16 sequences beat GPTQ with 192
        "calib_seq_len": 128,
        "eval_samples": 16,  # held-out documents for the table's perplexity (~1,250 tokens)
        # GPTQ vs RTN (section 5): every held-out document (~22,400 tokens), because the 4-bit
        # gaps are ~1e-3 nats per token and 1,250 tokens cannot resolve them
        "damage_samples": 300,
        "mc_items": 60,  # knowledge-test questions (a seeded sample of the 399)
        "gptq_block_size": 128,
        "gptq_damp": 0.01,
        "awq_grid": 20,
        "nf4_blocksize": 64,
        "int8_threshold": 6.0,
        "latency_tokens": 6,  # tokens generated to time latency per token (median of 5 steps)
    },
    "gpu": {
        "bits": [8, 6, 4, 3, 2],
        "schemes": ["rtn", "absmax", "nf4", "llm_int8", "gptq", "awq"],
        "group_sizes": [None, 32, 64, 128],
        "calib_samples": 128,  # the GPTQ paper's 128 segments
        "awq_calib_samples": 128,
        "calib_seq_len": 256,  # the shipped model's whole context (the paper: 2048)
        "eval_samples": 64,
        "damage_samples": 300,
        "mc_items": 399,  # the whole knowledge test
        "gptq_block_size": 128,
        "gptq_damp": 0.01,
        "awq_grid": 20,
        "nf4_blocksize": 64,
        "int8_threshold": 6.0,
        "latency_tokens": 128,
    },
}

__all__ = [
    "GPUS",
    "METHODS",
    "NF4_LEVELS",
    "PRESETS",
    "SETTINGS",
    "QuantLinear",
    "QuantizedTensor",
    "absmax_quantize",
    "awq_quantize_model",
    "awq_search",
    "dequantize",
    "fake_quantize",
    "gptq_quantize_model",
    "gptq_quantize_weight",
    "gpu_fit_table",
    "input_stats",
    "int8_quantize_weight",
    "kv_cache_bytes",
    "linear_stored_bytes",
    "llm_int8_matmul",
    "load_bnb_model",
    "nf4_dequantize",
    "nf4_quantize",
    "outlier_columns",
    "output_error",
    "quantize",
    "quantize_model",
    "reconstruction_errors",
    "rtn_quantize_weight",
    "serving_memory",
    "stored_bytes",
    "valid_group_sizes",
    "weight_bytes",
    "zeropoint_quantize",
]
