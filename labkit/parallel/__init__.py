"""Distributed training on the real engine: DDP, ZeRO/FSDP, tensor and pipeline parallelism.

The mechanisms run as plain torchrun worker scripts under `labkit/parallel/workers/` (gloo on
CPU, NCCL on GPUs); `launch` starts them from a notebook and collects each rank's results. The
3D memory planner (`planner`) covers what no laptop can run: 70B and 405B layouts.
"""

from __future__ import annotations

from .group import WorkerGroup, worker_group
from .launch import (
    LaunchResult,
    WorkerFailed,
    launch,
    room_for,
    torchrun_command,
    worker_script,
)
from .planner import (
    PRESETS,
    Cluster,
    Layout,
    MemoryPlan,
    ModelSpec,
    PlanError,
    activation_bytes_per_layer,
    bubble_fraction,
    ideal_schedule,
    memory_plan,
    model_preset,
    model_state_bytes,
    parameter_count,
    plan,
    suggest_layout,
    timeline_bubble,
)

# Both profiles use the same tiny Llama shape family; the gpu profile grows it and the step
# counts. nproc stays 2 on CPU: the labs share 2 cores, and 2 ranks show every mechanism.
SETTINGS = {
    "cpu": {
        "nproc": 2,
        "steps": 4,
        "vocab": 512,
        "d_model": 64,
        "n_layer": 2,
        "n_head": 4,
        "seq": 32,
        "batch": 8,
        "micro_batches": 4,
        "grid": (2, 2),  # the 2-D run: data-parallel groups x tensor-parallel ranks (4 processes)
        "timeout": 180,
    },
    "gpu": {
        "nproc": 2,
        "steps": 20,
        "vocab": 4096,
        "d_model": 256,
        "n_layer": 4,
        "n_head": 8,
        "seq": 128,
        "batch": 16,
        "micro_batches": 8,
        "grid": (2, 2),
        "timeout": 300,
    },
}

_FIGURES = (
    "pipeline_timeline_figure",
    "memory_breakdown_figure",
    "zero_memory_figure",
    "ddp_grad_norm_figure",
)


def __getattr__(name):
    # plotly loads only when a figure is asked for: worker processes import this package too.
    if name in _FIGURES:
        from . import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'labkit.parallel' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "SETTINGS",
    "Cluster",
    "LaunchResult",
    "Layout",
    "MemoryPlan",
    "ModelSpec",
    "PlanError",
    "WorkerFailed",
    "WorkerGroup",
    "activation_bytes_per_layer",
    "bubble_fraction",
    "ideal_schedule",
    "launch",
    "memory_plan",
    "model_preset",
    "model_state_bytes",
    "parameter_count",
    "plan",
    "room_for",
    "suggest_layout",
    "timeline_bubble",
    "torchrun_command",
    "worker_group",
    "worker_script",
    *_FIGURES,
]
