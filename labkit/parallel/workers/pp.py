"""Pipeline parallel: each rank holds a stage (a slice of the layers); micro-batches flow
forward through the stages and gradients flow back, with torch.distributed.pipelining.

    torchrun --nproc-per-node 2 labkit/parallel/workers/pp.py --schedules gpipe,1f1b

GPipe runs all forwards, then all backwards; 1F1B starts backwards as soon as it can, so each
stage keeps at most p micro-batches of activations; interleaved 1F1B (--schedules interleaved,
needs n_layer >= 2 x ranks) gives each rank 2 model chunks. Every forward and backward of every
micro-batch is timed (the stage's forward_one_chunk / backward_one_chunk are wrapped), giving the
timeline of the last step; rank 0 also trains the unpipelined model for the same losses.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from labkit.parallel import SETTINGS
from labkit.parallel.workers.common import (
    log,
    make_optimizer,
    parser,
    run,
    save_result,
    setup,
    tiny_model,
    token_batch,
    train_single,
)

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved": ScheduleInterleaved1F1B}


class Stage(nn.Module):
    """Decoder layers [lo, hi) of `model`; the first stage embeds, the last adds norm and head."""

    def __init__(self, model, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        self.embed = model.model.embed_tokens if first else None
        self.layers = nn.ModuleList(model.model.layers[lo:hi])
        self.rotary = model.model.rotary_emb
        self.norm = model.model.norm if last else None
        self.head = model.lm_head if last else None

    def forward(self, x):
        h = self.embed(x) if self.embed is not None else x
        rope = self.rotary(h, torch.arange(h.shape[1], device=h.device)[None])
        for layer in self.layers:
            h = layer(h, position_embeddings=rope)  # mask None: sdpa applies the causal mask
        return self.head(self.norm(h)) if self.head is not None else h


def loss_fn(logits, target):
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def timed(stage, rank: int, world: int, events: list, clock: list):
    """Wrap the stage's forward/backward of one micro-batch to record when each ran."""
    for kind, name in (("F", "forward_one_chunk"), ("B", "backward_one_chunk")):
        original = getattr(stage, name)

        def wrapper(chunk_id, *a, _original=original, _kind=kind, **kw):
            start = time.perf_counter()
            out = _original(chunk_id, *a, **kw)
            end = time.perf_counter()
            events.append(
                dict(
                    stage=rank,
                    chunk=stage.stage_index // world,
                    microbatch=chunk_id,
                    kind=_kind,
                    start=(start - clock[0]) * 1e3,
                    end=(end - clock[0]) * 1e3,
                )
            )
            return out

        setattr(stage, name, wrapper)


def train_pipelined(name: str, args, ctx) -> dict:
    chunks = 2 if name == "interleaved" else 1
    n_virtual = ctx.world * chunks
    model = tiny_model(args, device=ctx.device, untie=True)
    bounds = torch.linspace(0, args.n_layer, n_virtual + 1).round().int().tolist()
    stages, events, clock = [], [], [0.0]
    for c in range(chunks):
        vs = c * ctx.world + ctx.rank  # Megatron's placement: chunk c of rank r is stage c*p + r
        # untied: the embedding and the output layer live on different stages (Megatron keeps
        # two copies and all-reduces their gradients)
        module = Stage(model, bounds[vs], bounds[vs + 1], vs == 0, vs == n_virtual - 1)
        stage = PipelineStage(module, vs, n_virtual, ctx.device)
        timed(stage, ctx.rank, ctx.world, events, clock)
        stages.append(stage)
    params = [p for s in stages for p in s.submod.parameters()]
    opt = make_optimizer(params, args)
    schedule = SCHEDULES[name](
        stages if chunks > 1 else stages[0], args.micro_batches, loss_fn=loss_fn
    )
    is_last = any(s.is_last for s in stages)
    is_first = any(s.is_first for s in stages)
    losses = []
    for step in range(args.steps):
        ids = token_batch(step, args.batch, args.seq, args.vocab, args.seed).to(ctx.device)
        events.clear()  # keep the last step's timeline: the first one pays for shape inference
        mb_losses = [] if is_last else None
        opt.zero_grad()
        dist.barrier()
        # One time origin for every rank: perf_counter reads the machine's monotonic clock, the
        # same in every process, but ranks leave the barrier at different moments (ms apart on
        # a busy machine), so each rank's own "now" would shift its timeline against the others
        origin = torch.tensor([time.perf_counter()], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(origin, op=dist.ReduceOp.MIN)
        clock[0] = origin.item()
        schedule.step(  # contiguous: torch <= 2.11 checks micro-batch strides against stage 0's
            *([ids[:, :-1].contiguous()] if is_first else []),
            target=ids[:, 1:].contiguous() if is_last else None,
            losses=mb_losses,
        )
        opt.step()
        if is_last:
            losses.append(torch.stack(mb_losses).mean().item())
    shared = [losses]
    dist.broadcast_object_list(shared, src=ctx.world - 1)  # the loss lives on the last stage
    return {"losses": shared[0], "events": sorted(events, key=lambda e: e["start"])}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--micro-batches", type=int, default=SETTINGS["cpu"]["micro_batches"])
    p.add_argument(
        "--schedules", default="gpipe,1f1b", help="comma-separated: " + ", ".join(SCHEDULES)
    )
    args = p.parse_args()
    names = [s.strip() for s in args.schedules.split(",") if s.strip()]
    if bad := [s for s in names if s not in SCHEDULES]:
        raise SystemExit(f"--schedules: unknown {bad}; valid: {', '.join(SCHEDULES)}")
    if args.batch % args.micro_batches:
        raise SystemExit(
            f"--batch {args.batch} must be divisible by --micro-batches {args.micro_batches}"
        )
    ctx = setup()
    if "interleaved" in names and args.n_layer < 2 * ctx.world:
        raise SystemExit(f"interleaved needs --n-layer >= {2 * ctx.world} (2 chunks per rank)")
    if args.n_layer < ctx.world:
        raise SystemExit(f"--n-layer {args.n_layer} < {ctx.world} stages: each stage needs a layer")
    log(
        f"{ctx.world} pipeline stages, {args.micro_batches} micro-batches of "
        f"{args.batch // args.micro_batches} sequences"
    )
    out = {"world": ctx.world, "micro_batches": args.micro_batches, "schedules": {}}
    for name in names:
        out["schedules"][name] = res = train_pipelined(name, args, ctx)
        log(f"  {name:<11} losses {', '.join(f'{x:.4f}' for x in res['losses'])}")
    if ctx.rank == 0:
        out["reference_losses"] = ref = train_single(args, untie=True)[1]
        log(f"  {'unpipelined':<11} losses {', '.join(f'{x:.4f}' for x in ref)}")
    save_result(out)


if __name__ == "__main__":
    run(main)
