"""Calibrated quantizations (GPTQ, AWQ) kept in a content-addressed cache on this machine.

A lab that quantizes the same model with the same calibration text every run builds the same
codes every run: a deterministic artifact. With `cache=True`, `gptq_quantize_model` and
`awq_quantize_model` store each layer's codes, scales and zeros (and AWQ's input scales) under
the user's cache directory (labkit.pretrain.cache: $LABKIT_CACHE_DIR, else ~/.cache/labkit), in
a file named by a hash of everything the result depends on:

- the model's weights (every tensor of its state dict, by name, dtype, shape and bytes) and the
  calibration token ids;
- the method's settings (bits, group size, scheme, damping, ...);
- the source of the code that computes it (gptq.py, awq.py, schemes.py);
- torch's version, the CPU kernel set (ATEN_CPU_CAPABILITY), the thread count and the device,
  which change float rounding and so, now and then, a rounded code.

Change any of them and a new entry is computed; a stale entry is never read. Entries are
loaded with torch.load(weights_only=True). Nothing is written into the repository, and a cache
that cannot be written costs only the recomputation. `EVENTS` records, in this process, what
each call did ("computed" or "from the cache", and its CPU seconds), for a lab to say so.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import torch

from ..pretrain.cache import cache_dir, content_key

HERE = Path(__file__).resolve().parent
SOURCES = ("gptq.py", "awq.py", "schemes.py")
FORMAT = 1  # bump when what an entry holds changes shape

EVENTS: list[dict] = []  # {"method", "key", "how": "computed" | "from the cache", "cpu_s"}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def calibration_key(method: str, model: torch.nn.Module, calib, settings: dict) -> str:
    """The hash naming one calibrated quantization: model weights, calibration ids, settings,
    source code and the numeric environment (see the module docstring)."""
    from .gptq import _device_of, calibration_batches

    parts: list = [f"quant-{method}-{FORMAT}", repr(sorted(settings.items())), torch.__version__,
                   torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(),
                   str(_device_of(model))]
    parts += [(HERE / name).read_text(encoding="utf-8") for name in SOURCES]
    for name, t in model.state_dict().items():
        parts += [name, str(t.dtype), tuple(t.shape), _tensor_bytes(t)]
    for batch in calibration_batches(calib, 1 << 30):
        parts += [tuple(batch.shape), _tensor_bytes(batch.long())]
    return content_key(*parts)


def _path(method: str, key: str) -> Path:
    return cache_dir() / "quant" / f"{method}-{key[:32]}.pt"


def load_state(method: str, key: str) -> dict | None:
    """The stored state of an entry, or None (absent, unreadable, or from another format)."""
    try:
        state = torch.load(_path(method, key), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None  # a missing or damaged entry is recomputed
    return state if isinstance(state, dict) and state.get("key") == key else None


def store_state(method: str, key: str, state: dict) -> bool:
    """Write an entry atomically (write, then rename); False when the cache is not writable."""
    path = _path(method, key)
    buffer = io.BytesIO()
    torch.save({**state, "key": key}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def cached_quantization(method: str, model, calib, settings: dict, cache: bool, compute,
                        to_state, from_state, include_lm_head: bool = False, progress=None) -> dict:
    """`compute()` ({layer name: result}, quantizing `model` in place), or, with `cache` and an
    entry for this key, the stored results, their weights written into `model` as compute()
    would have left them. to_state/from_state turn one layer's result into tensors and back."""
    import time

    from .gptq import linear_layers, set_linear_weight

    start = time.process_time()
    key = calibration_key(method, model, calib, settings) if cache else ""
    state = load_state(method, key) if cache else None
    layers = linear_layers(model, include_lm_head)
    if state is not None and set(state.get("layers", {})) == set(layers):
        results = {name: from_state(state["layers"][name]) for name in layers}
        for k, (name, layer) in enumerate(layers.items(), 1):
            set_linear_weight(layer, results[name].weight)
            if progress is not None:
                progress(k, len(layers), name)
        EVENTS.append({"method": method, "key": key, "how": "from the cache",
                       "cpu_s": time.process_time() - start})
        return results
    results = compute()
    if cache:
        store_state(method, key, {"layers": {n: to_state(r) for n, r in results.items()}})
    EVENTS.append({"method": method, "key": key, "how": "computed",
                   "cpu_s": time.process_time() - start})
    return results
