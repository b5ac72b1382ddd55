"""Data parallel: every rank holds the whole model, sees 1/N of the batch, and DDP all-reduces
(averages) the gradients during backward, so every rank takes the same optimizer step.

    torchrun --nproc-per-node 2 labkit/parallel/workers/ddp.py --steps 4

A communication hook records each gradient bucket's norm before and after the all-reduce:
before, each rank's norm is its own; after, all ranks hold the same averaged gradient. Rank 0
then trains the same model in one process on the whole global batch and compares.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from labkit.parallel.workers.common import (
    flat_grads,
    lm_loss,
    log,
    make_optimizer,
    mean_over_ranks,
    parser,
    run,
    save_result,
    setup,
    shard_rows,
    tiny_model,
    token_batch,
    train_single,
)


def recording_allreduce(state: dict, bucket):
    """DDP's default hook (sum / world size), plus the bucket's norm before and after."""
    buf = bucket.buffer()
    state["before"].append(buf.norm().item())
    state["bytes"] += buf.numel() * buf.element_size()
    buf.div_(dist.get_world_size())
    fut = dist.all_reduce(buf, async_op=True).get_future()

    def after(fut):
        out = fut.value()[0]
        state["after"].append(out.norm().item())
        return out

    return fut.then(after)


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    ctx = setup()
    model = DDP(tiny_model(args, device=ctx.device))
    hook = {"before": [], "after": [], "bytes": 0}
    model.register_comm_hook(hook, recording_allreduce)
    opt = make_optimizer(model.parameters(), args)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"DDP on {ctx.world} ranks ({ctx.backend}), {n_params:,} parameters, "
        f"global batch {args.batch} x {args.seq} tokens"
    )

    losses, grad_norm_before, grad_norm_after, bytes_per_step, step_s = [], [], [], [], []
    for step in range(args.steps):
        batch = token_batch(step, args.batch, args.seq, args.vocab, args.seed)
        ids = shard_rows(batch, ctx.rank, ctx.world).to(ctx.device)
        hook["before"], hook["after"], hook["bytes"] = [], [], 0
        t0 = time.perf_counter()
        loss = lm_loss(model, ids)
        opt.zero_grad()
        loss.backward()  # the hook all-reduces bucket by bucket while backward runs
        if step == 0:
            grads0 = flat_grads(model.module)
        opt.step()
        step_s.append(time.perf_counter() - t0)
        # local loss is over this rank's rows; the global-batch loss is their mean
        losses.append(mean_over_ranks(loss.item(), ctx.device))
        grad_norm_before.append(sum(n**2 for n in hook["before"]) ** 0.5)
        grad_norm_after.append(sum(n**2 for n in hook["after"]) ** 0.5)
        bytes_per_step.append(hook["bytes"])
        log(
            f"step {step}: loss {losses[-1]:.4f}  grad norm on rank 0 before all-reduce "
            f"{grad_norm_before[-1]:.4f}, after {grad_norm_after[-1]:.4f}"
        )

    weights = torch.cat([p.detach().flatten().cpu() for p in model.module.parameters()])
    timed = step_s[1:] or step_s  # step 0 pays for DDP's bucket rebuild and lazy inits
    result = {
        "world": ctx.world,
        "backend": ctx.backend,
        "parameters": n_params,
        "losses": losses,
        "grad_norm_before": grad_norm_before,
        "grad_norm_after": grad_norm_after,
        "allreduce_bytes_per_step": bytes_per_step,
        "buckets": len(hook["after"]),
        "weight_sum": weights.double().sum().item(),
        "tokens_per_s": args.batch * args.seq * len(timed) / sum(timed),
    }
    if ctx.rank == 0:
        # the same job in one process (the other ranks wait idle at the final barrier): its
        # throughput is the baseline the data-parallel tokens/s compare with
        single_s = []
        ref_model, ref_losses, ref_grads0 = train_single(args, step_s=single_s)
        ref = torch.cat([p.detach().flatten() for p in ref_model.parameters()])
        timed_single = single_s[1:] or single_s
        result["tokens_per_s_single"] = args.batch * args.seq * len(timed_single) / sum(timed_single)
        result["single_losses"] = ref_losses
        result["max_grad_diff_step0"] = (grads0 - ref_grads0).abs().max().item()
        result["max_weight_diff"] = (weights - ref).abs().max().item()
        result["max_loss_diff"] = max(abs(a - b) for a, b in zip(losses, ref_losses))
        # Gradients agree to float rounding; Adam divides by sqrt(v), which magnifies that
        # rounding for near-zero gradients, so the weights agree to ~1e-4 after a few steps.
        log(
            f"single process on the global batch: max |difference| of step-0 gradients "
            f"{result['max_grad_diff_step0']:.1e}, of losses {result['max_loss_diff']:.1e}, "
            f"of final weights {result['max_weight_diff']:.1e}"
        )
    save_result(result)


if __name__ == "__main__":
    run(main)
