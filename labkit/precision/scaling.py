"""Loss scaling and master weights, the two rescues of 16-bit training, without a dataset.

- Master weights: an update smaller than half the gap (ulp) between a weight and its neighbour
  rounds away when the weight itself is kept in 16 bit; an fp32 master copy accumulates it.
- Loss scaling: torch.amp.GradScaler multiplies the loss so small gradients survive fp16, skips
  the step when a gradient overflowed, halves the scale then, and doubles it after
  `growth_interval` clean steps. ScalerRecorder writes down what it did, step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import validate
from ..errors import LabkitError
from ..validate import checks, of_type
from .formats import _format, cast, get_format, ulp


@dataclass
class VanishingUpdate:
    dtype: str
    weight: float
    update: float  # added once per step
    ulp: float  # gap from the stored weight to the next value of dtype
    low_precision: list[float]  # weight kept in dtype: w = w + update, rounded every step
    master: list[float]  # fp32 master weight, accumulates every update
    master_cast: list[float]  # the master rounded to dtype: what the forward pass uses

    @property
    def half_ulp(self) -> float:
        return self.ulp / 2

    @property
    def vanished(self) -> bool:
        """The 16-bit weight never moved although every update was nonzero."""
        return self.update != 0 and all(w == self.low_precision[0] for w in self.low_precision)

    def table(self):
        import pandas as pd

        return pd.DataFrame({f"{self.dtype} weight": self.low_precision,
                             "fp32 master": self.master,
                             f"master as {self.dtype}": self.master_cast},
                            index=pd.RangeIndex(len(self.master), name="step"))


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    try:
        return a + b  # torch's own arithmetic in the storage dtype (what the optimizer does)
    except (RuntimeError, NotImplementedError):
        # fp8 has no add on CPU: compute in fp32, round back, as an fp8 kernel would
        return (a.float() + b.float()).to(a.dtype)


@checks(dtype=_format)
def vanishing_update_demo(weight: float = 1.0, update: float = 1e-4, dtype="bf16",
                          steps: int = 100) -> VanishingUpdate:
    """Add `update` to `weight` `steps` times, keeping the weight in dtype vs in an fp32 master.

    In dtype, w + u rounds back to w whenever |u| < ulp(w)/2: the run stalls. The fp32 master
    accumulates the updates and its dtype copy moves once the sum crosses half an ulp.
    """
    f = get_format(dtype)
    if f.emulated:
        raise LabkitError("tf32 is a matmul mode, not a storage dtype; valid dtype: "
                          "fp32, fp16, bf16, fp8_e4m3fn, fp8_e5m2")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LabkitError(f"steps={steps!r} is out of range; valid: a whole number >= 1")
    for name, v in (("weight", weight), ("update", update)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LabkitError(f"{name}={v!r} is not a finite number")
    w_low = cast(torch.tensor([float(weight)]), f)
    u_low = cast(torch.tensor([float(update)]), f)
    w_master = torch.tensor([float(weight)], dtype=torch.float32)
    u_master = torch.tensor([float(update)], dtype=torch.float32)
    low, master, master_cast = [], [], []
    for _ in range(steps + 1):  # step 0 is the starting point
        low.append(float(w_low.float().item()))
        master.append(float(w_master.item()))
        master_cast.append(float(cast(w_master, f).float().item()))
        w_low = _add(w_low, u_low)
        w_master = w_master + u_master
    return VanishingUpdate(dtype=f.name, weight=float(weight), update=float(update),
                           ulp=ulp(low[0], f), low_precision=low, master=master,
                           master_cast=master_cast)


@checks(result=of_type(VanishingUpdate))
def vanishing_update_figure(result: VanishingUpdate, *, title: str | None = None):
    """The 16-bit weight (flat) next to the fp32 master and its 16-bit copy, vs step."""
    import plotly.graph_objects as go

    steps = list(range(len(result.master)))
    fig = go.Figure()
    fig.add_scatter(x=steps, y=result.low_precision, name=f"weight kept in {result.dtype}",
                    line={"width": 3})
    fig.add_scatter(x=steps, y=result.master, name="fp32 master weight", line={"dash": "dot"})
    fig.add_scatter(x=steps, y=result.master_cast, name=f"master as {result.dtype} (used)",
                    line={"shape": "hv"})
    fig.update_layout(
        title=title or (f"Update {result.update:.3g} per step vs half an ulp "
                        f"({result.half_ulp:.3g}) of {result.dtype} at {result.weight:g}"),
        xaxis_title="optimizer step (updates)", yaxis_title="weight value (parameter units)",
        template="plotly_white", height=400)
    return fig


@dataclass
class ScalerRecorder:
    """Wraps a GradScaler's step+update and records scale and skips, step by step.

    In the caller's own loop, replace `scaler.step(opt); scaler.update()` with
    `recorder.step(opt, loss)`.
    """

    scaler: torch.amp.GradScaler
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        of_type(torch.amp.GradScaler, "torch.amp.GradScaler (see grad_scaler)")(self.scaler, "scaler")

    def step(self, optimizer, loss: float | torch.Tensor | None = None) -> bool:
        """scaler.step(optimizer) and scaler.update(); returns whether the step was skipped."""
        scale = float(self.scaler.get_scale())
        self.scaler.step(optimizer)
        self.scaler.update()
        new_scale = float(self.scaler.get_scale())
        # GradScaler only ever lowers the scale (backoff_factor < 1 is enforced) when it found
        # inf/nan gradients and skipped optimizer.step()
        found_inf = self.scaler.is_enabled() and new_scale < scale
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float().item()
        self.rows.append({"step": len(self.rows), "loss": math.nan if loss is None else loss,
                          "scale": scale, "found_inf": found_inf, "scale_after": new_scale})
        return found_inf

    def history(self):
        """One row per step: loss, the scale used, whether inf/nan was found (step skipped)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["step", "loss", "scale", "found_inf",
                                                "scale_after"]).set_index("step")


_SCALER_OPTIONS = {
    "init_scale": validate.positive,
    "growth_factor": validate.nums(1.0, low_open=True),
    "backoff_factor": validate.nums(0.0, 1.0, low_open=True, high_open=True),
    "growth_interval": validate.positive_int,
    "enabled": validate.flag,
}


def grad_scaler(device: str = "cpu", **kwargs) -> torch.amp.GradScaler:
    """torch.amp.GradScaler for device; on CUDA-less machines 'cuda' would silently disable it."""
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise LabkitError("GradScaler('cuda') disables itself without CUDA; valid here: device='cpu'")
    validate.device(device, "device")
    for key, value in kwargs.items():
        if key not in _SCALER_OPTIONS:
            raise LabkitError(f"unknown GradScaler option {key}={value!r}; valid: {', '.join(_SCALER_OPTIONS)}")
        _SCALER_OPTIONS[key](value, key)
    return torch.amp.GradScaler(device, **kwargs)


def grad_scaler_figure(history, *, title: str = "Dynamic loss scale (GradScaler)"):
    """log2 of the loss scale per step, skipped steps (inf/nan gradients) marked."""
    import pandas as pd
    import plotly.graph_objects as go

    if isinstance(history, ScalerRecorder):
        history = history.history()
    if not isinstance(history, pd.DataFrame) or not {"scale", "found_inf"} <= set(history):
        raise LabkitError("history must be ScalerRecorder.history() (a DataFrame with scale and "
                          f"found_inf), got {type(history).__name__}")
    if not (history["scale"] > 0).all():
        raise LabkitError("history scale must be > 0 at every step (log2 is drawn)")

    steps = list(history.index)
    fig = go.Figure()
    fig.add_scatter(x=steps, y=[math.log2(s) for s in history["scale"]], mode="lines",
                    name="loss scale", line={"shape": "hv"})
    skipped = history[history["found_inf"]]
    fig.add_scatter(x=list(skipped.index), y=[math.log2(s) for s in skipped["scale"]],
                    mode="markers", name="skipped: inf/nan gradient",
                    marker={"symbol": "x", "size": 9, "color": "#d62728"})
    fig.update_layout(title=f"{title}: {len(skipped)} of {len(history)} steps skipped",
                      xaxis_title="optimizer step (updates)",
                      yaxis_title="loss scale (log2, loss multiplied by 2^y)",
                      template="plotly_white", height=380)
    return fig


class gradient_storage:
    """Within the block, every parameter gradient is stored in a 16-bit format and read back
    (fp16: values above 65504 become inf, values below 2^-25 become 0, the rest lose mantissa
    bits, as in an fp16 backward pass; bf16: fp32's range, 8 bits of precision). The forward and
    backward arithmetic stay in the model's dtype. `flushed` and `nonzero` count, since the block
    was entered, the gradient values that were nonzero before storage and those of them that the
    format turned into zero (underflow).

    Why: CPUs without fp16 matrix units run fp16 matmuls 50-500x slower than fp32 (lab 04's
    throughput table measures it), so a CPU cannot afford a real fp16 autocast run of more than a
    few steps. Storing the gradients in fp16 keeps what GradScaler reacts to, the gradient's range,
    at fp32 speed. On a GPU the lab uses real fp16 autocast instead.
    """

    def __init__(self, model: torch.nn.Module, dtype="fp16"):
        validate.model(model)
        self.format = _format(dtype, "dtype")
        if self.format.name not in ("fp16", "bf16"):
            raise LabkitError(f"dtype={dtype!r}: gradients can be stored in fp16 or bf16 here")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise LabkitError(f"the model has no trainable parameters whose gradients could be "
                              f"stored in {self.format.name}")
        self.flushed = self.nonzero = 0

    def _round(self, grad: torch.Tensor) -> torch.Tensor:
        stored = grad.to(self.format.dtype)
        nonzero = grad != 0
        self.nonzero += int(nonzero.sum())
        self.flushed += int((nonzero & (stored == 0)).sum())
        return stored.to(grad.dtype)

    @property
    def flushed_share(self) -> float:
        """Share of the nonzero gradient values that the format flushed to zero."""
        return self.flushed / self.nonzero if self.nonzero else 0.0

    def __enter__(self):
        self.flushed = self.nonzero = 0
        self.handles = [p.register_hook(self._round) for p in self.params]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def fp16_gradient_storage(model: torch.nn.Module) -> gradient_storage:
    """`gradient_storage(model, "fp16")`: every gradient stored in fp16 within the block."""
    return gradient_storage(model, "fp16")


STORAGE_MODES = ("fp32", "bf16", "fp16", "fp16+scaler")


def _storage_modes(value, name: str) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise LabkitError(f"{name} must be a non-empty list of: {', '.join(STORAGE_MODES)}")
    bad = [m for m in value if m not in STORAGE_MODES]
    if bad:
        raise LabkitError(f"{name}: unknown {bad}; valid: {', '.join(STORAGE_MODES)}")
    return tuple(value)


def gradient_storage_runs(model: torch.nn.Module, batches, *, lr: float = 1e-4,
                          modes=STORAGE_MODES, init_scale: float = 2.0**16):
    """Continue training a copy of `model` on the same `batches` once per mode, and record per
    step the loss and the share of gradient values the storage format flushed to zero.

    Modes: "fp32" (the reference), "bf16" and "fp16" (every gradient stored in that format, no
    loss scaling), "fp16+scaler" (stored in fp16, loss scaled by torch.amp.GradScaler starting
    at `init_scale`). The arithmetic is the model's own (fp32), so the modes differ only in the
    range and precision the gradients are kept in: exactly the question loss scaling answers.
    Returns one row per mode and step: loss, flushed_share, scale, skipped.
    """
    import copy

    import pandas as pd

    validate.model(model)
    validate.positive(lr, "lr")
    validate.positive(init_scale, "init_scale")
    modes = _storage_modes(modes, "modes")
    batches = list(batches) if isinstance(batches, (list, tuple)) else None
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise LabkitError("batches must be a non-empty list of model inputs (dicts with "
                          "input_ids and labels)")
    device = next(model.parameters()).device.type
    rows = []
    for mode in modes:
        m = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
        scaler = grad_scaler(device, init_scale=init_scale) if mode == "fp16+scaler" else None
        storage = None if mode == "fp32" else gradient_storage(m, mode.split("+")[0])
        for step, batch in enumerate(batches):
            loss = m(**batch).loss
            scale = float(scaler.get_scale()) if scaler else 1.0
            if storage is None:
                loss.backward()
            else:
                with storage:
                    (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            rows.append({"mode": mode, "step": step, "loss": float(loss.detach()),
                         "flushed_share": storage.flushed_share if storage else 0.0,
                         "scale": scale,
                         "skipped": bool(scaler and scaler.get_scale() < scale)})
    return pd.DataFrame(rows)
