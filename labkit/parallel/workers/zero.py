"""ZeRO and FSDP: shard the optimizer state (ZeRO-1), the gradients (ZeRO-2) and the parameters
(ZeRO-3) over the data-parallel ranks, and measure what each rank really holds.

    torchrun --nproc-per-node 2 labkit/parallel/workers/zero.py --modes ddp,zero1,zero2,zero3

ddp   DDP + AdamW: every rank holds everything (ZeRO-0).
zero1 DDP + ZeroRedundancyOptimizer: each rank keeps Adam state for its share of the tensors.
zero2 FSDP2 fully_shard(reshard_after_forward=False): gradients and optimizer state sharded;
      parameters gathered once per step and kept whole from forward through backward.
zero3 FSDP2 fully_shard(reshard_after_forward=True): parameters sharded too, gathered layer by
      layer in forward and again in backward.
Bytes come from the tensors themselves (a DTensor counts its local shard, `.to_local()`), next
to the formula for fp32 training with Adam: 4 bytes of weights, 4 of gradients, 8 of Adam
moments per parameter (labs on GPUs use the mixed-precision 2 + 2 + 12).
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

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
)

MODES = ("ddp", "zero1", "zero2", "zero3")


def formula(mode: str, params: int, n: int) -> dict:
    """ZeRO paper's per-rank bytes for fp32 Adam: weights 4P, gradients 4P, moments 8P."""
    w, g, o = 4 * params, 4 * params, 8 * params
    shard = {"ddp": (1, 1, 1), "zero1": (1, 1, n), "zero2": (1, n, n), "zero3": (n, n, n)}[mode]
    return {"parameters": w / shard[0], "gradients": g / shard[1], "optimizer": o / shard[2]}


def build(mode: str, args, ctx):
    model = tiny_model(args, device=ctx.device)
    if mode in ("ddp", "zero1"):
        model = DDP(model)
        if mode == "ddp":
            return model, make_optimizer(model.parameters(), args)
        return model, ZeroRedundancyOptimizer(
            model.parameters(), torch.optim.AdamW, lr=args.lr, weight_decay=0.0
        )
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    reshard = mode == "zero3"
    for layer in model.model.layers:  # one all-gather unit per decoder layer
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    # set explicitly: left unset, FSDP2 keeps the root's parameters whole after forward
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model, make_optimizer(model.parameters(), args)


def optimizer_state(opt) -> dict:
    local = opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt
    return local.state


def train_and_measure(mode: str, args, ctx) -> dict:
    model, opt = build(mode, args, ctx)
    losses, held = [], 0
    for step in range(args.steps):
        batch = token_batch(step, args.batch, args.seq, args.vocab, args.seed)
        loss = lm_loss(model, shard_rows(batch, ctx.rank, ctx.world).to(ctx.device))
        # between forward and backward: what the parameters occupy while the step is running
        held = sum(tensor_bytes(p) for p in model.parameters())
        opt.zero_grad()
        loss.backward()
        grads = sum(tensor_bytes(p.grad) for p in model.parameters())
        opt.step()
        losses.append(mean_over_ranks(loss.item(), ctx.device))
    moments = sum(
        tensor_bytes(v)
        for state in optimizer_state(opt).values()
        for k, v in state.items()
        if k != "step" and torch.is_tensor(v)
    )
    return {
        "losses": losses,
        "measured": {
            "parameters": sum(tensor_bytes(p) for p in model.parameters()),
            "parameters_in_step": held,
            "gradients": grads,
            "optimizer": moments,
        },
    }


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; valid: {', '.join(MODES)}")
    ctx = setup()
    params = sum(p.numel() for p in tiny_model(args).parameters())
    log(f"{params:,} parameters on {ctx.world} ranks; bytes rank 0 holds during a step:")
    out = {"world": ctx.world, "parameters": params, "modes": {}}
    for mode in modes:
        res = train_and_measure(mode, args, ctx)
        res["formula"] = formula(mode, params, ctx.world)
        out["modes"][mode] = res
        m, f = res["measured"], res["formula"]
        same = all(
            m["parameters_in_step" if k == "parameters" else k] == int(v) for k, v in f.items()
        )
        log(  # short lines: a notebook wraps wide ones mid-number
            f"  {mode:<6} params {m['parameters_in_step']:>9,} grads {m['gradients']:>9,} "
            f"Adam {m['optimizer']:>9,} {'= formula' if same else '~ formula'}, "
            f"loss {res['losses'][-1]:.4f}"
        )
    save_result(out)


if __name__ == "__main__":
    run(main)
