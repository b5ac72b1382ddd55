"""Throughput of labkit's training loop next to a nanoGPT-style loop on the same model and batches.

    python benchmarks/bench_pretrain.py                 # CPU, a 4-layer 128-wide Llama, fp32
    python benchmarks/bench_pretrain.py --device cuda   # GPU, a GPT-2-small-sized Llama, bf16

Both loops run the same number of optimizer steps from the same initial weights on batches from
the same seeded sampler; each is warmed up first, and the rounds interleave the two loops
(ABBA...: alternate orders) so that a change of machine load hits both alike. On CPU the run
uses one thread by default and times each run in CPU seconds of this process
(time.process_time): on a shared machine wall time with two contending threads is mostly noise,
while the CPU seconds a loop spends are what it costs. On CUDA it times wall seconds after a
synchronize. The table gives the median and the best round, and their ratios to the nanoGPT
loop. MFU = tokens/s * FLOPs per token (6N + 12*L*d*T) / peak, with the peak measured as the
best matmul FLOP/s of this device (or --peak-tflops); on CPU tokens/s is per CPU second.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from labkit.models import ModelShape, build_causal_lm, count_parameters
from labkit.pretrain.data import RandomBlocks
from labkit.pretrain.loop import (
    TrainConfig,
    adamw,
    flops_per_token,
    measure_peak_flops,
    train,
    warmup_cosine,
)

PRESETS = {
    "cpu": dict(vocab=4096, shape=ModelShape(128, 4, 4, max_len=256), batch=8, seq=128, accum=2,
                steps=6, dtype=None),
    "cuda": dict(vocab=32000, shape=ModelShape(768, 12, 12, max_len=1024), batch=16, seq=1024,
                 accum=2, steps=30, dtype=torch.bfloat16),
}  # fmt: skip


def nanogpt_loop(model, get_batch, config: TrainConfig) -> float:
    """nanoGPT's train.py inner loop (minus DDP and logging), on a transformers model.

    Returns the last loss (synced once at the end, like nanoGPT's log_interval)."""
    device = next(model.parameters()).device
    optimizer = adamw(model, config, device)
    ctx = torch.autocast(device.type, dtype=config.dtype, enabled=config.dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == torch.float16)
    batch = get_batch()
    X, Y = batch["input_ids"], batch["labels"]
    model.train()
    for it in range(config.steps):
        lr = config.lr * warmup_cosine(it, config.warmup_steps, config.steps, config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(config.grad_accum):
            with ctx:
                loss = model(input_ids=X, labels=Y, use_cache=False).loss
                loss = loss / config.grad_accum
            batch = get_batch()  # prefetch while the GPU works on the forward pass
            X, Y = batch["input_ids"], batch["labels"]
            scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return loss.item() * config.grad_accum


def labkit_loop(model, get_batch, config: TrainConfig) -> float:
    return train(model, get_batch, config)["loss"].iloc[-1]


def timed(loop, p, device, stream, config, warmup_config) -> float:
    """Tokens per second of `loop`: per CPU second of this process on CPU (what the loop costs,
    whatever else runs on the machine), per wall second on a GPU."""
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    model = build_causal_lm(p["vocab"], p["shape"], seed=0).to(device)
    batches = RandomBlocks(stream, p["seq"], p["batch"], seed=1, device=device)
    loop(model, batches, warmup_config)
    sync(device)
    start = clock()
    loop(model, batches, config)
    sync(device)
    seconds = clock() - start
    return config.steps * config.grad_accum * p["batch"] * p["seq"] / seconds


def cpu_peak_flops(n: int, repeats: int = 5) -> float:
    """Best fp32 matmul FLOPs per CPU second of this process: the same clock as the CPU
    tokens/s, so that MFU compares like with like (measure_peak_flops uses wall time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2.0 * n**3 / best


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on CPU (default 1: CPU seconds then measure "
                             "the work, not the waiting of contending threads)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="vendor peak, TFLOP/s")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    p = PRESETS["cuda" if args.device.startswith("cuda") else "cpu"]
    steps = args.steps or p["steps"]
    stream = np.random.default_rng(0).integers(0, p["vocab"], 2_000_000).astype(np.int32)
    common = dict(lr=6e-4, warmup_steps=2, grad_accum=p["accum"], grad_clip=1.0, dtype=p["dtype"],
                  progress=False, peak_flops=1e12)  # fmt: skip
    config = TrainConfig(steps=steps, log_every=steps, **common)
    warmup_config = TrainConfig(steps=2, log_every=2, **common)

    dtype = p["dtype"] or torch.float32
    n = 2048 if args.device == "cpu" else 8192
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    elif args.device == "cpu":
        peak = cpu_peak_flops(n)
    else:
        peak = measure_peak_flops(args.device, dtype, n)
    probe = build_causal_lm(p["vocab"], p["shape"])
    fpt = flops_per_token(probe, p["seq"])
    source = "given" if args.peak_tflops else (
        "best matmul per CPU second" if args.device == "cpu" else "measured matmul")
    clock = "wall seconds" if args.device.startswith("cuda") else "CPU seconds (process_time)"
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"dtype={dtype} params={count_parameters(probe) / 1e6:.2f}M shape={p['shape']}; "
        f"timed in {clock}, rounds interleaved"
    )
    print(
        f"batch={p['batch']}x{p['seq']} tokens, grad_accum={p['accum']}, {steps} timed steps, "
        f"{args.rounds} rounds; peak={peak / 1e12:.2f} TFLOP/s ({source}); "
        f"FLOPs/token={fpt / 1e6:.1f}M"
    )

    loops = {"labkit.pretrain.train": labkit_loop, "nanoGPT-style loop": nanogpt_loop}
    results = {name: [] for name in loops}
    for r in range(args.rounds):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for name in order:
            results[name].append(timed(loops[name], p, args.device, stream, config, warmup_config))
    # On a shared machine the best round is the least disturbed one: compare both statistics.
    base = results["nanoGPT-style loop"]
    print(
        "\n| loop | tokens/s median | tokens/s best | MFU (median) | vs nanoGPT median | best |"
        "\n|---|---|---|---|---|---|"
    )
    for name, values in results.items():
        med, best = statistics.median(values), max(values)
        print(f"| {name} | {med:,.0f} | {best:,.0f} | {med * fpt / peak:.1%} | "
              f"{med / statistics.median(base):.3f}x | {best / max(base):.3f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
