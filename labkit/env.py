"""What this machine can do: device, number formats, kernels, cores and memory."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Capabilities:
    device: str  # "cuda", "mps" or "cpu": where the labs put tensors
    gpu_name: str | None
    gpu_memory_gib: float | None
    compute_capability: tuple[int, int] | None
    bf16: bool  # bf16 arithmetic runs (and autocast supports it) on `device`
    fp16: bool
    fp8_matmul: bool  # hardware fp8 tensor-core matmul (Ada/Hopper and newer)
    bitsandbytes: bool  # bitsandbytes imports and quantizes on this device
    cpu_cores: int
    ram_gib: float
    torch_version: str
    python_version: str

    def as_dict(self) -> dict:
        return asdict(self)


def _ram_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def _bitsandbytes_works(device: str) -> bool:
    try:
        import bitsandbytes.functional as bnbf
        import torch

        q, state = bnbf.quantize_4bit(torch.ones(64, device=device), quant_type="nf4")
        return bool(torch.allclose(bnbf.dequantize_4bit(q, state), torch.ones(64, device=device)))
    except Exception:
        return False


@lru_cache(maxsize=1)
def detect() -> Capabilities:
    """Probe the running machine once; later calls return the cached answer."""
    import torch

    gpu_name = gpu_mem = cc = None
    if torch.cuda.is_available():
        device = "cuda"
        props = torch.cuda.get_device_properties(0)
        gpu_name, gpu_mem = props.name, props.total_memory / 2**30
        cc = torch.cuda.get_device_capability(0)
        bf16 = torch.cuda.is_bf16_supported()
        fp16 = True
        fp8 = cc >= (8, 9)
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, bf16, fp16, fp8 = "mps", True, True, False
    else:
        # CPU autocast supports bf16 and fp16 (slowly without AMX), fp8 only as storage.
        device, bf16, fp16, fp8 = "cpu", True, True, False
    return Capabilities(
        device=device,
        gpu_name=gpu_name,
        gpu_memory_gib=gpu_mem,
        compute_capability=cc,
        bf16=bf16,
        fp16=fp16,
        fp8_matmul=fp8,
        bitsandbytes=_bitsandbytes_works(device),
        cpu_cores=os.cpu_count() or 1,
        ram_gib=_ram_gib(),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
    )


def device_label() -> str:
    """A short name of the device for figure titles and printed numbers."""
    caps = detect()
    if caps.device == "cuda":
        return f"{caps.gpu_name}"
    if caps.device == "mps":
        return "Apple GPU (mps)"
    return f"CPU ({caps.cpu_cores} cores, {platform.processor() or platform.machine()})"
