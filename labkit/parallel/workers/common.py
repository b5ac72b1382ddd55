"""What every worker shares: the process group, the tiny model, seeded batches and result files.

A worker is a plain script: `torchrun --nproc-per-node 2 labkit/parallel/workers/ddp.py`. When
`labkit.parallel.launch` starts it, LABKIT_RESULT_DIR names a folder where each rank leaves
`rank<r>.json` (its results) or `rank<r>.attempt<a>.error.json` (its traceback, with a
timestamp, so the launcher can tell which rank failed first).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

from labkit.parallel import SETTINGS

RESULT_DIR_ENV = "LABKIT_RESULT_DIR"


@dataclass(frozen=True)
class Ctx:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str


def parser(description: str) -> argparse.ArgumentParser:
    """The options every worker takes: model shape, batch, steps; defaults = the cpu profile."""
    cpu = SETTINGS["cpu"]
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--vocab", type=int, default=cpu["vocab"])
    p.add_argument("--d-model", type=int, default=cpu["d_model"])
    p.add_argument("--n-layer", type=int, default=cpu["n_layer"])
    p.add_argument("--n-head", type=int, default=cpu["n_head"])
    p.add_argument("--seq", type=int, default=cpu["seq"], help="tokens per sequence")
    p.add_argument("--batch", type=int, default=cpu["batch"], help="global batch (sequences)")
    p.add_argument("--steps", type=int, default=cpu["steps"])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def _exit_with_parent() -> None:
    # torchrun starts each worker in its own session, so a killed launcher would leave workers
    # orphaned (blocked in a collective forever); a worker whose parent changed ends itself.
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


_SERVING: Ctx | None = None  # set by serve.py: the group stays up between the jobs it runs


def setup() -> Ctx:
    """Join the process group: NCCL when every local rank has its own GPU, else gloo on CPU.
    Inside a worker group (serve.py) the group is already there: the job joins it."""
    if _SERVING is not None:
        return _SERVING
    _exit_with_parent()
    if hasattr(signal, "SIGUSR1"):  # `launch` asks for the stack of a rank that hangs
        faulthandler.register(signal.SIGUSR1, all_threads=False)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group(backend, **_store_of_this_attempt())
    return Ctx(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def _store_of_this_attempt() -> dict:
    """After a restart (torchrun --max-restarts), the keys of a store of their own.

    torchrun (torch 2.13) keeps its TCPStore across restarts and the workers' process-group keys
    carry no attempt number, so a restarted rank could read the dead group's address from the
    store and fail to connect ("Connection refused", or a hang). The first attempt is left as
    torch sets it up; later ones prefix their keys with the attempt."""
    attempt = _attempt()
    if attempt == 0:
        return {}
    from torch.distributed.constants import default_pg_timeout

    store, rank, world = next(dist.rendezvous("env://", timeout=default_pg_timeout))
    store.set_timeout(default_pg_timeout)
    prefixed = dist.PrefixStore(f"default_pg/attempt_{attempt}", store)
    return {"store": prefixed, "rank": rank, "world_size": world}


def log(*parts) -> None:
    """Rank 0 speaks for the group (the launcher streams rank 0's stdout into the notebook)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*parts, flush=True)


def _write_json(name: str, payload: dict) -> None:
    folder = os.environ.get(RESULT_DIR_ENV)
    if not folder:
        return
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, os.path.join(folder, name))  # atomic: the launcher never reads half a file


def _attempt() -> int:
    # torchrun --max-restarts: which try of the whole group this is (0 = the first)
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def save_result(result: dict) -> None:
    """This rank's results as JSON, when started by `launch` (plain torchrun: nothing)."""
    rank = int(os.environ.get("RANK", 0))
    _write_json(f"rank{rank}.json", {"rank": rank, "attempt": _attempt(), **result})


def run(main) -> None:
    """Run `main()`; on an exception leave a timestamped traceback for the launcher, re-raise."""
    try:
        main()
    except BaseException as exc:
        rank = int(os.environ.get("RANK", 0))
        _write_json(
            f"rank{rank}.attempt{_attempt()}.error.json",
            {
                "rank": rank,
                "attempt": _attempt(),
                "time": time.time(),
                "error": f"{type(exc).__name__}: {exc}".strip(),
                "traceback": traceback.format_exc(),
            },
        )
        raise
    if dist.is_initialized():
        # a rank that tears down while a slower peer is still connecting breaks the peer's
        # connection ("Connection closed by peer"): leave together
        dist.barrier()
        if _SERVING is None:  # a job of a worker group leaves the group up for the next one
            dist.destroy_process_group()
    sys.stdout.flush()


def tiny_model(args, seed: int | None = None, device="cpu", untie: bool = False):
    """The lab's tiny Llama (workers/model.py), identical on every rank (same seed). `untie`
    gives the output layer its own copy of the embedding matrix (for pipeline stages)."""
    from labkit.parallel.workers.model import TinyLlama

    torch.manual_seed(args.seed if seed is None else seed)
    model = TinyLlama(args.vocab, args.d_model, args.n_layer, args.n_head)
    if untie:
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    return model.to(device)


def token_batch(step: int, rows: int, seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """The global batch of one step: `rows` sequences of `seq`+1 tokens, a function of the step
    alone (so a resumed run sees the same data). Each row counts up from a random start by a
    stride of 1, 2 or 3: random, yet learnable in a few steps."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    start = torch.randint(0, vocab, (rows, 1), generator=g)
    stride = torch.randint(1, 4, (rows, 1), generator=g)
    return (start + stride * torch.arange(seq + 1)) % vocab


def shard_rows(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    if batch.shape[0] % world:
        raise SystemExit(f"--batch {batch.shape[0]} must be divisible by {world} ranks")
    n = batch.shape[0] // world
    return batch[rank * n : (rank + 1) * n]


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over tokens."""
    logits = model(input_ids=ids[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def make_optimizer(params, args):
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().cpu() for p in model.parameters()])


def train_single(args, steps: int | None = None, untie: bool = False, step_s: list | None = None):
    """The reference: one process, the whole global batch each step.
    Returns (model, losses, the gradients of step 0 flattened); `step_s` collects each step's
    wall time in seconds."""
    model = tiny_model(args, untie=untie)
    opt = make_optimizer(model.parameters(), args)
    losses, grads0 = [], None
    for step in range(args.steps if steps is None else steps):
        t0 = time.perf_counter()
        loss = lm_loss(model, token_batch(step, args.batch, args.seq, args.vocab, args.seed))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads0 = flat_grads(model)
        opt.step()
        losses.append(loss.item())
        if step_s is not None:
            step_s.append(time.perf_counter() - t0)
    return model, losses, grads0


def tensor_bytes(t) -> int:
    """Bytes this rank holds for `t` (a DTensor counts only its local shard)."""
    if t is None:
        return 0
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def mean_over_ranks(value: float, device="cpu") -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()
