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
    cpu_cores: int
    ram_gib: float
    torch_version: str
    python_version: str

    @property
    def bitsandbytes(self) -> bool:
        """bitsandbytes imports and quantizes on this device. Probed on first use only: the
        import pulls in torch._dynamo and costs seconds that only lab 10 and doctor need."""
        return _bitsandbytes_works(self.device)

    def as_dict(self) -> dict:
        return {**asdict(self), "bitsandbytes": self.bitsandbytes}


def _ram_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


@lru_cache(maxsize=4)
def _bitsandbytes_works(device: str) -> bool:
    try:
        import bitsandbytes.functional as bnbf
        import torch

        q, state = bnbf.quantize_4bit(torch.ones(64, device=device), quant_type="nf4")
        return bool(torch.allclose(bnbf.dequantize_4bit(q, state), torch.ones(64, device=device)))
    except Exception:
        return False


# Forces the answer of the probe below ("ok" or "wrong"): for tests of both branches.
BNB_CPU_4BIT_OVERRIDE = "LABKIT_BNB_CPU_4BIT"


@lru_cache(maxsize=1)
def _probe_bnb_cpu_dequantize_4bit() -> bool | None:
    import torch

    try:
        import bitsandbytes.functional as bnbf
        from bitsandbytes.backends.default import ops as reference_ops
    except Exception:
        return None
    # The shape that exposes it: rows of even length that are not a multiple of the blocksize.
    w = torch.randn(7, 96, generator=torch.Generator().manual_seed(0))
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    native = bnbf.dequantize_4bit(packed, state)
    compute = getattr(reference_ops._dequantize_4bit_compute, "__wrapped__",
                      reference_ops._dequantize_4bit_compute)  # uncompiled: no torch.compile
    code = bnbf.get_4bit_type("nf4", device="cpu")
    reference = compute(packed.reshape(-1), state.absmax, code, 64, state.shape, torch.float32)
    return bool(torch.equal(native, reference.reshape(w.shape)))


def bnb_cpu_4bit_kernel_ok() -> bool | None:
    """Whether bitsandbytes' native CPU `dequantize_4bit` agrees with its own pure-PyTorch
    reference on this machine (None: bitsandbytes is not installed).

    bitsandbytes 0.50's CPU kernel reads the wrong block scale when a row's length is even and
    not a multiple of the blocksize, on some CPUs only (its native code dispatches on the CPU's
    features), so the only honest answer is to run it once on a small case and compare.
    """
    forced = os.environ.get(BNB_CPU_4BIT_OVERRIDE, "").strip().lower()
    if forced in ("ok", "wrong"):
        return forced == "ok"
    return _probe_bnb_cpu_dequantize_4bit()


def bnb_cpu_4bit_fused_bf16() -> bool | None:
    """Whether bitsandbytes' 4-bit layers compute in bf16 on this CPU (None: not installed).

    On a CPU with AVX512-BF16, bitsandbytes 0.50's Linear4bit repacks its weight on the first
    forward pass in eval mode without gradients and from then on runs a fused kernel that casts
    the activations to bf16, whatever `bnb_4bit_compute_dtype` says: its outputs then differ
    from an fp32 computation with the same codes by bf16 rounding (~1e-3 on logits of a few
    units). Elsewhere it dequantizes and multiplies in the compute dtype."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except Exception:
        return None
    return bool(has_avx512bf16())


def cuda_has_bf16() -> bool:
    """Whether the CUDA card computes in bf16 natively (Ampere, sm 8.0, and newer).

    torch.cuda.is_bf16_supported() defaults to including_emulation=True, which answers True on
    a T4 (sm 7.5) because bf16 tensors can be made there; its bf16 matmuls are emulated and slow,
    so the gpu profile must see "no bf16" and train in fp16 with loss scaling.
    """
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


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
        bf16 = cuda_has_bf16()
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
