"""Pre-training (lab 02): the causal and masked objectives, token batches, the one training loop
of the labs, scaling laws, and what each objective can generate.

A lab reads its sizes from the profile: `s = labkit.profile().settings("pretrain")`, then e.g.
`build_causal_lm(vocab, s.causal_shape)` and `TrainConfig(steps=s.steps, lr=s.lr, ...)`, with
`dtype=profile.autocast_dtype`. The cpu numbers are sized so that the whole lab stays within
45 s of CPU (a vocabulary of a few thousand tokens; the output layer is most of the compute at
this width); the gpu numbers train each model in well under a minute.
"""

from ..models import ModelShape
from .data import MaskedBlocks, RandomBlocks, fixed_batches, pack_blocks, pack_documents
from .generate import FilledBlanks, continue_text, fill_blanks, mlm_generate_left_to_right
from .loop import (
    TrainConfig,
    check_batch,
    eval_loss,
    flops_per_token,
    load_checkpoint,
    measure_peak_flops,
    save_checkpoint,
    train,
    warmup_cosine,
)
from .objectives import (
    IGNORE_INDEX,
    causal_lm_labels,
    causal_mask,
    causal_mask_figure,
    corruption_kinds,
    mlm_corruption_figure,
    mlm_mask,
)
from .scaling import (
    CHINCHILLA,
    KNOWN_MODELS,
    OPTIMAL_TOKENS_PER_PARAM,
    LossLaw,
    PowerLawFit,
    chinchilla_loss,
    compute_optimal,
    compute_optimal_table,
    fit_power_law,
    isoflop_figure,
    power_law_figure,
    tokens_per_param_figure,
    tokens_per_param_table,
    tokens_per_parameter,
    training_flops,
)

SETTINGS = {
    "cpu": {
        # the two lab models: same shape, same tokens, same steps (= the same compute)
        "causal_shape": ModelShape(d_model=64, n_layer=2, n_head=4, max_len=128),
        "masked_shape": ModelShape(d_model=64, n_layer=2, n_head=4, max_len=128),
        "seq_len": 64,
        # 240 steps of 8 x 64 tokens: the 122,880 tokens of 120 x 16 at 23f4454 (~5 s of 1-thread
        # CPU per model); with a third of them the masked-minus-causal gap shrank from 2.4 to
        # 1.4 nats. Batches of 8 keep the held-out batches (eval_batches x 8 x 64) of section 7
        "batch_size": 8,
        "grad_accum": 1,
        "steps": 240,
        "lr": 3e-3,
        "warmup_steps": 20,
        "log_every": 10,
        "eval_every": 40,
        "eval_batches": 8,  # 8 x 8 x 64 = 4096 held-out tokens per score
        "mlm_probability": 0.15,
        # the scaling mini-sweep: three sizes, short runs
        "sweep_shapes": (
            ModelShape(d_model=32, n_layer=2, n_head=4, max_len=128),
            ModelShape(d_model=48, n_layer=2, n_head=4, max_len=128),
            ModelShape(d_model=64, n_layer=2, n_head=4, max_len=128),
        ),
        # 40 steps of 8 x 64 tokens per size; the data-quality experiment trains the smallest
        # size the same way on each corpus, 3 seeds each (less than one pass over any corpus)
        "sweep_steps": 40,
        "sweep_batch_size": 8,
        "quality_seeds": 3,
        "generate_tokens": 30,
        "seed": 1234,
    },
    "gpu": {
        "causal_shape": ModelShape(d_model=256, n_layer=6, n_head=8, max_len=512),
        "masked_shape": ModelShape(d_model=256, n_layer=6, n_head=8, max_len=512),
        "seq_len": 256,
        "batch_size": 32,
        "grad_accum": 1,
        "steps": 1000,
        "lr": 1e-3,
        "warmup_steps": 50,
        "log_every": 25,
        "eval_every": 200,
        "eval_batches": 8,
        "mlm_probability": 0.15,
        "sweep_shapes": (
            ModelShape(d_model=128, n_layer=4, n_head=4, max_len=512),
            ModelShape(d_model=256, n_layer=6, n_head=8, max_len=512),
            ModelShape(d_model=384, n_layer=8, n_head=8, max_len=512),
        ),
        "sweep_steps": 500,
        "sweep_batch_size": 32,
        "quality_seeds": 3,
        "generate_tokens": 60,
        "seed": 1234,
    },
}

__all__ = [
    "CHINCHILLA", "IGNORE_INDEX", "KNOWN_MODELS", "OPTIMAL_TOKENS_PER_PARAM", "SETTINGS", "FilledBlanks", "LossLaw", "MaskedBlocks",
    "PowerLawFit", "RandomBlocks", "TrainConfig", "causal_lm_labels", "causal_mask",
    "causal_mask_figure", "check_batch", "chinchilla_loss", "compute_optimal",
    "compute_optimal_table", "continue_text", "corruption_kinds", "eval_loss", "fill_blanks",
    "fit_power_law", "fixed_batches", "flops_per_token", "isoflop_figure", "load_checkpoint",
    "measure_peak_flops", "mlm_corruption_figure", "mlm_generate_left_to_right", "mlm_mask",
    "pack_blocks", "pack_documents", "power_law_figure", "save_checkpoint",
    "tokens_per_param_figure", "tokens_per_param_table", "tokens_per_parameter",
    "train", "training_flops", "warmup_cosine",
]  # fmt: skip
