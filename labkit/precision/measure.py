"""Measurements for the mixed-precision lab: real tensors of a model, matmul throughput per
dtype, and training runs in fp32, bf16 autocast, fp16 autocast with loss scaling, and pure bf16.

Everything is measured on the device it runs on and says which device that was.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from .. import validate
from ..errors import LabkitError

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}


# The MLP's output projection in the standard families: Llama/Qwen2/Mistral, GPT-2, GPT-NeoX, OPT.
MLP_DOWN_PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", ".fc2")


def capture_tensors(model, batch: dict) -> dict[str, torch.Tensor]:
    """Weights, activations and gradients of one real forward/backward pass, flattened.

    The activations are the inputs of every MLP down-projection (captured with forward hooks);
    the gradients are those of every weight matrix after backward on the batch's loss.
    """
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, args, _out: acts.append(args[0].detach().flatten()))
             for name, m in model.named_modules() if name.endswith(MLP_DOWN_PROJECTIONS)]
    model.zero_grad(set_to_none=True)
    try:
        model.train()
        out = model(**batch)
        out.loss.backward()
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    mats = [p for p in model.parameters() if p.dim() == 2]
    tensors = {
        "weights": torch.cat([p.detach().flatten() for p in mats]),
        "activations": torch.cat(acts),
        "gradients": torch.cat([p.grad.detach().flatten() for p in mats if p.grad is not None]),
    }
    model.zero_grad(set_to_none=True)
    return tensors


@dataclass
class MatmulResult:
    dtype: str
    seconds: float
    tflops: float
    note: str = ""


def matmul_throughput(device: str = "cpu", dtypes=("fp32", "tf32", "bf16", "fp16", "fp8"),
                      n: int = 512, repeats: int = 5):
    """TFLOP/s of an n x n x n matmul per dtype on `device` (2n^3 FLOPs per product).

    On CUDA the time comes from CUDA events; on the CPU from perf_counter around whole
    products. fp8 uses torch._scaled_mm (e4m3 inputs, unit scales) where the device supports it;
    tf32 is a mode of fp32 matmuls, switched on only for that row.
    """
    import pandas as pd

    rows = []
    for name in dtypes:
        try:
            seconds, note = _time_matmul(device, name, n, repeats)
            rows.append(MatmulResult(name, seconds, 2 * n**3 / seconds / 1e12, note))
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            rows.append(MatmulResult(name, float("nan"), float("nan"),
                                     f"not supported here: {str(exc).splitlines()[0][:80]}"))
    return pd.DataFrame([r.__dict__ for r in rows])


def _time_matmul(device: str, name: str, n: int, repeats: int) -> tuple[float, str]:
    cuda = device.startswith("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    a32 = torch.randn(n, n, generator=g).to(device)
    b32 = torch.randn(n, n, generator=g).to(device)
    note = ""
    if name == "fp8":
        a = a32.to(torch.float8_e4m3fn)
        b = b32.to(torch.float8_e4m3fn).t().contiguous().t()  # _scaled_mm wants column-major b
        one = torch.ones((), device=device)

        def product():
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        note = "torch._scaled_mm, e4m3 inputs" + ("" if cuda else " (CPU: no fp8 hardware)")
    else:
        a, b = a32.to(DTYPES[name]), b32.to(DTYPES[name])

        def product():
            return a @ b
    old = torch.backends.cuda.matmul.allow_tf32 if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    elif name == "tf32":
        note = "CPU: tf32 is a GPU tensor-core mode; this is plain fp32"
    try:
        product()  # warm-up (and the first call's kernel selection)
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                product()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / repeats, note
        t0 = time.perf_counter()
        for _ in range(repeats):
            product()
        return (time.perf_counter() - t0) / repeats, note
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = old


def bf16_slowdown(model, batch: dict, repeats: int = 1) -> float:
    """How many times longer a forward and backward pass of `model` on `batch` takes under bf16
    autocast than in fp32, on this device: the one-off timing a lab uses to size its bf16 runs.

    CPUs with native bf16 (AVX512-BF16, AMX) or oneDNN's AVX-512 kernels run the lab's tiny
    model about 1-2x slower in bf16 than in fp32; an AVX2-only CPU has no bf16 matrix kernels
    and takes about 7x as long. CPU time of this process on a CPU (a busy shared machine's wall
    clock also counts other processes), CUDA-synchronised wall time on a GPU.
    """
    validate.positive_int(repeats, "repeats")
    device = next(model.parameters()).device.type
    cuda = device == "cuda"

    def one(dtype):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    def clock():
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    seconds = {}
    for dtype in (None, torch.bfloat16):
        one(dtype)  # warm-up: kernel selection, allocator
        start = clock()
        for _ in range(repeats):
            one(dtype)
        seconds[dtype] = clock() - start
    return seconds[torch.bfloat16] / max(seconds[None], 1e-9)


def steps_within(steps: int, slowdown: float, budget: float = 2.5, least: int = 5,
                 multiple: int = 5) -> int:
    """The step count of a run that is `slowdown` times slower than fp32: all `steps` when
    slowdown <= budget, else as many as fit in `budget` fp32 runs' time, rounded down to a
    `multiple` (so the logged steps line up with fp32's) and never fewer than `least`."""
    validate.positive_int(steps, "steps"), validate.positive(budget, "budget")
    validate.positive_int(least, "least"), validate.positive(slowdown, "slowdown")
    validate.positive_int(multiple, "multiple")
    if slowdown <= budget:
        return steps
    fitted = int(steps * budget / slowdown) // multiple * multiple
    return min(steps, max(least, fitted))


class PeakMemory:
    """Peak memory of a block: torch's allocator on CUDA, resident set size (sampled) on CPU."""

    def __init__(self, device: str = "cpu", interval: float = 0.005):
        self.device, self.interval, self.peak_bytes = device, interval, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss - self.base)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()


def saved_activation_bytes(model, batch: dict, dtype: str | None = None) -> int:
    """Bytes autograd keeps for the backward pass during one forward pass of `model` on `batch`
    (under autocast to `dtype` when given): the activation memory mixed precision halves.

    Counted with torch's saved-tensor hooks, so it reads the same on every device, unlike a CPU
    process's resident memory, which the allocator's reuse of freed blocks hides. A tensor saved
    by several operations counts once; parameters count too (autocast saves their 16-bit copies).
    """
    if dtype is not None and dtype not in ("bf16", "fp16"):
        raise LabkitError(f"autocast dtype {dtype!r} is not one of: bf16, fp16 (or None for fp32)")
    device = next(model.parameters()).device.type
    seen: set = set()
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if dtype is None:
            loss = model(**batch).loss
        else:
            with torch.autocast(device, dtype=DTYPES[dtype]):
                loss = model(**batch).loss
    del loss
    return total


def pure_low_precision_step(model, batch, optimizer) -> float:
    """One step with the weights themselves in 16 bit (no fp32 master copy)."""
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def changed_share(before: dict[str, torch.Tensor], model) -> float:
    """Share of weight-matrix entries that differ from `before` (a state_dict copy)."""
    changed = total = 0
    for name, p in model.named_parameters():
        if p.dim() == 2:
            changed += int((p.detach().float() != before[name].float()).sum())
            total += p.numel()
    if total == 0:
        raise LabkitError("the model has no weight matrices to compare")
    return changed / total
