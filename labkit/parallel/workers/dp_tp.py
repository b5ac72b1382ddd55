"""2-D parallelism: tensor parallel inside each group of --tp ranks, FSDP (ZeRO-3) across the
--dp groups, on one DeviceMesh, the way large runs combine them (with pipeline stages on top).

    torchrun --nproc-per-node 4 labkit/parallel/workers/dp_tp.py --dp 2 --tp 2

The ranks form a dp x tp grid: ranks 0,1 are one tensor-parallel group, 2,3 the next, and each
column (0,2 and 1,3) is a data-parallel group. Every decoder layer gets the Megatron plan of
tp.py on its row (each rank keeps 1/tp of the heads and of the MLP); FSDP2 then shards what each
rank holds over its column. A data-parallel group sees its own slice of the global batch; the
two ranks of a tensor-parallel group see the same slice. Rank 0 also trains the model in one
process on the whole batch: the losses agree, so the grid changes where the numbers live, not
the numbers.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import parallelize_module

from labkit.parallel.workers.common import (
    lm_loss,
    log,
    make_optimizer,
    mean_over_ranks,
    parser,
    run,
    save_result,
    setup,
    shard_rows,
    tensor_bytes,
    tiny_model,
    token_batch,
    train_single,
)
from labkit.parallel.workers.tp import PLAN


def build(args, ctx, mesh):
    model = tiny_model(args, device=ctx.device)
    for layer in model.model.layers:  # Megatron inside the row: 1/tp of every matrix
        parallelize_module(layer, mesh["tp"], PLAN)
    for layer in model.model.layers:  # ZeRO-3 across the column: 1/dp of what is left
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])  # embedding, final norm, output layer: FSDP only
    return model


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dp", type=int, default=2, help="data-parallel groups (FSDP)")
    p.add_argument("--tp", type=int, default=2, help="ranks per tensor-parallel group")
    args = p.parse_args()
    ctx = setup()
    if args.dp * args.tp != ctx.world:
        raise SystemExit(f"--dp {args.dp} x --tp {args.tp} must equal the {ctx.world} ranks")
    if args.n_head % args.tp:
        raise SystemExit(f"--n-head {args.n_head} must be divisible by --tp {args.tp}")
    mesh = init_device_mesh(ctx.device.type, (args.dp, args.tp), mesh_dim_names=("dp", "tp"))
    dp_rank, tp_rank = mesh["dp"].get_local_rank(), mesh["tp"].get_local_rank()
    model = build(args, ctx, mesh)
    opt = make_optimizer(model.parameters(), args)
    full = sum(p.numel() * p.element_size() for p in tiny_model(args).parameters())
    log(
        f"{ctx.world} ranks as a {args.dp} (data parallel, FSDP) x {args.tp} (tensor parallel) "
        f"grid: tensor-parallel groups {mesh['tp'].mesh.tolist()} on rank 0's row, "
        f"data-parallel groups along the columns"
    )

    losses = []
    for step in range(args.steps):
        batch = token_batch(step, args.batch, args.seq, args.vocab, args.seed)
        ids = shard_rows(batch, dp_rank, args.dp).to(ctx.device)  # same rows across a TP group
        loss = lm_loss(model, ids)
        held = sum(tensor_bytes(p) for p in model.parameters())  # between forward and backward
        opt.zero_grad()
        loss.backward()
        grads = sum(tensor_bytes(p.grad) for p in model.parameters())
        opt.step()
        # each TP group computed the loss of its data slice; the mean over all ranks is the
        # mean over the data slices (every slice is counted tp times)
        losses.append(mean_over_ranks(loss.item(), ctx.device))
        log(f"step {step}: loss {losses[-1]:.4f}")
    moments = sum(
        tensor_bytes(v)
        for state in opt.state.values()
        for k, v in state.items()
        if k != "step" and torch.is_tensor(v)
    )
    result = {
        "world": ctx.world,
        "dp": args.dp,
        "tp": args.tp,
        "coords": {"dp": dp_rank, "tp": tp_rank},
        "tp_groups": [[int(r) for r in row] for row in mesh.mesh.tolist()],
        "dp_groups": [[int(r) for r in col] for col in mesh.mesh.t().tolist()],
        "losses": losses,
        "bytes": {
            "parameters": sum(tensor_bytes(p) for p in model.parameters()),
            "parameters_in_step": held,
            "gradients": grads,
            "optimizer": moments,
        },
        "full_parameter_bytes": full,
    }
    if ctx.rank == 0:
        result["single_losses"] = ref = train_single(args)[1]
        result["max_loss_diff"] = max(abs(a - b) for a, b in zip(losses, ref))
        log(
            f"one process on the global batch: losses {', '.join(f'{x:.4f}' for x in ref)} "
            f"(max |difference| {result['max_loss_diff']:.1e})"
        )
    log(
        f"rank 0 holds {result['bytes']['parameters']:,} of {full:,} bytes of parameters "
        f"({result['bytes']['parameters'] / full:.0%})"
    )
    save_result(result)


if __name__ == "__main__":
    run(main)
