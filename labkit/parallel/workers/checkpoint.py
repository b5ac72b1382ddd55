"""Fault tolerance: a DDP run saves a distributed checkpoint after every step; killed mid-way and
started again, it resumes from the last checkpoint and continues with the same losses.

    torchrun --nproc-per-node 2 labkit/parallel/workers/checkpoint.py --ckpt-dir ckpt --crash-at 3
    torchrun --nproc-per-node 2 labkit/parallel/workers/checkpoint.py --ckpt-dir ckpt

torch.distributed.checkpoint (DCP) writes each rank's part of the model and optimizer state in
parallel; `get_state_dict`/`set_state_dict` give the same keys for DDP, FSDP or a plain module.
The step counter is saved too, and each step's batch is a function of the step alone, so the
resumed run sees exactly the data the uninterrupted one would have. `--crash-at k` makes rank
`--crash-rank` die abruptly (os._exit, as a lost node would) at step k of the first attempt;
under `torchrun --max-restarts 1` torchrun itself restarts the group, which then resumes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
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
    tiny_model,
    token_batch,
    train_single,
)


def last_complete_step(folder: Path) -> int | None:
    marker = folder / "latest"
    return int(marker.read_text()) if marker.exists() else None


def save(folder: Path, step: int, model, opt, rank: int) -> None:
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save(
        {"model": model_sd, "optim": optim_sd, "step": torch.tensor(step)},
        checkpoint_id=folder / f"step-{step}",
    )
    dist.barrier()  # every rank has written its part before the checkpoint counts as complete
    if rank == 0:
        tmp = folder / "latest.tmp"
        tmp.write_text(str(step))
        os.replace(tmp, folder / "latest")


def load(folder: Path, step: int, model, opt) -> None:
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd, "step": torch.tensor(0)}
    dcp.load(state, checkpoint_id=folder / f"step-{step}")  # fills the tensors in place
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def main():
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(steps=6)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument(
        "--crash-at", type=int, default=-1, help="step at which a rank dies (first attempt)"
    )
    p.add_argument("--crash-rank", type=int, default=1)
    args = p.parse_args()
    ctx = setup()
    folder = Path(args.ckpt_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model = DDP(tiny_model(args, device=ctx.device))
    opt = make_optimizer(model.parameters(), args)

    done = last_complete_step(folder)
    start = 0 if done is None else done + 1
    if done is not None:
        load(folder, done, model, opt)
        log(f"resumed from {folder / f'step-{done}'}: continuing at step {start}")
    else:
        log(f"no checkpoint in {folder}: starting at step 0")
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    steps, losses = [], []
    for step in range(start, args.steps):
        if step == args.crash_at and first_attempt and done is None and ctx.rank == args.crash_rank:
            print(f"rank {ctx.rank}: simulated crash at step {step}", file=sys.stderr, flush=True)
            os._exit(3)  # no cleanup, no exception: what a dead node looks like
        batch = token_batch(step, args.batch, args.seq, args.vocab, args.seed)
        loss = lm_loss(model, shard_rows(batch, ctx.rank, ctx.world).to(ctx.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(step)
        losses.append(mean_over_ranks(loss.item(), ctx.device))
        save(folder, step, model, opt, ctx.rank)
        log(f"step {step}: loss {losses[-1]:.4f} (checkpoint saved)")

    result = {"world": ctx.world, "resumed_from": done, "steps": steps, "losses": losses}
    if ctx.rank == 0:  # the uninterrupted run, in one process on the global batch
        result["uninterrupted_losses"] = train_single(args)[1]
    save_result(result)


if __name__ == "__main__":
    run(main)
