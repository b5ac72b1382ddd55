"""Tensor parallel (Megatron-LM): split each decoder layer's matrices over the ranks, so every
rank computes a slice of the heads and of the MLP, with two all-reduces per layer per pass.

    torchrun --nproc-per-node 2 labkit/parallel/workers/tp.py

Column-parallel q/k/v and gate/up projections (each rank owns some output features = some
heads) feed row-parallel o and down projections (each rank owns the matching input features);
their partial sums meet in one all-reduce after attention and one after the MLP (Megatron's
"g"). Backward mirrors it: one all-reduce of the input gradient before each block ("f"). The
layer is parallelized with DTensor's parallelize_module; CommDebugMode counts the collectives,
and the outputs and gradients are compared with the same layer unsharded.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    parallelize_module,
)

from labkit.parallel.workers.common import log, parser, run, save_result, setup, tiny_model

# Megatron's "f": the block input enters as one replicated DTensor, so the column-parallel
# projections' input gradients (partial sums) add up locally and meet in a single all-reduce
# per block; without it DTensor all-reduces q, k, v, gate and up separately (5, not 2).
REPLICATED_INPUT = {"use_local_output": False}
PLAN = {
    "self_attn": PrepareModuleInput(
        input_kwarg_layouts={"hidden_states": Replicate()},
        desired_input_kwarg_layouts={"hidden_states": Replicate()},
        **REPLICATED_INPUT,
    ),
    "mlp": PrepareModuleInput(
        input_layouts=(Replicate(),), desired_input_layouts=(Replicate(),), **REPLICATED_INPUT
    ),
    "self_attn.q_proj": ColwiseParallel(),
    "self_attn.k_proj": ColwiseParallel(),
    "self_attn.v_proj": ColwiseParallel(),
    "self_attn.o_proj": RowwiseParallel(),  # partial sums -> all-reduce
    "mlp.gate_proj": ColwiseParallel(),
    "mlp.up_proj": ColwiseParallel(),
    "mlp.down_proj": RowwiseParallel(),  # partial sums -> all-reduce
}


def collectives(comm: CommDebugMode) -> dict:
    return {str(op).split(".")[-1]: n for op, n in comm.get_comm_counts().items()}


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    ctx = setup()
    if args.n_head % ctx.world:
        raise SystemExit(f"--n-head {args.n_head} must be divisible by {ctx.world} ranks")
    model = tiny_model(args, device=ctx.device)  # same seed, same weights on every rank
    layer = model.model.layers[0]
    reference = copy.deepcopy(layer)
    mesh = init_device_mesh(ctx.device.type, (ctx.world,), mesh_dim_names=("tp",))
    parallelize_module(layer, mesh, PLAN)
    # HF's attention reshapes to (..., -1, head_dim), so each rank just sees fewer heads

    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.seq, args.d_model, generator=g).to(ctx.device)
    probe = torch.randn(args.batch, args.seq, args.d_model, generator=g).to(ctx.device)
    positions = torch.arange(args.seq, device=ctx.device)[None]
    rope = model.model.rotary_emb(x, positions)

    def forward_backward(module, counted: bool):
        inp = x.clone().requires_grad_(True)
        fwd, bwd = (CommDebugMode(), CommDebugMode()) if counted else (nullcontext(),) * 2
        with fwd:
            out = module(inp, position_embeddings=rope)  # mask None: sdpa applies causal
        loss = (out * probe).sum()  # a fixed random projection: every output element matters
        with bwd:
            loss.backward()
        return (out.detach(), inp.grad, *(collectives(c) if counted else {} for c in (fwd, bwd)))

    out_tp, dx_tp, fwd_comm, bwd_comm = forward_backward(layer, counted=True)
    out_ref, dx_ref, _, _ = forward_backward(reference, counted=False)

    grad_diff, shapes, local_bytes, full_bytes = {}, {}, 0, 0
    for (name, p), ref in zip(layer.named_parameters(), reference.parameters()):
        full_grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grad_diff[name] = (full_grad - ref.grad).abs().max().item()
        local = p.to_local() if hasattr(p, "to_local") else p
        shapes[name] = {"local": list(local.shape), "full": list(ref.shape)}
        local_bytes += local.numel() * local.element_size()
        full_bytes += ref.numel() * ref.element_size()

    result = {
        "world": ctx.world,
        "heads_per_rank": args.n_head // ctx.world,
        "max_output_diff": (out_tp - out_ref).abs().max().item(),
        "max_input_grad_diff": (dx_tp - dx_ref).abs().max().item(),
        "max_weight_grad_diff": max(grad_diff.values()),
        "weight_grad_diff": grad_diff,
        "forward_collectives": fwd_comm,
        "backward_collectives": bwd_comm,
        "shapes": shapes,
        "layer_bytes_local": local_bytes,
        "layer_bytes_full": full_bytes,
    }
    q, o = shapes["self_attn.q_proj.weight"], shapes["self_attn.o_proj.weight"]
    log(
        f"one decoder layer on {ctx.world} ranks: {result['heads_per_rank']} of {args.n_head} "
        f"heads each; q_proj {q['local']} of {q['full']}, o_proj {o['local']} of {o['full']}"
    )
    log(f"collectives: forward {fwd_comm}, backward {bwd_comm}")
    log(
        f"vs the unsharded layer: max |output diff| {result['max_output_diff']:.1e}, "
        f"max |weight grad diff| {result['max_weight_grad_diff']:.1e}, "
        f"max |input grad diff| {result['max_input_grad_diff']:.1e}"
    )
    save_result(result)


if __name__ == "__main__":
    run(main)
