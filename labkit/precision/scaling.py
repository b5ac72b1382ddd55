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

from ..errors import LabkitError
from .formats import cast, get_format, ulp


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
        if not isinstance(v, (int, float)) or not math.isfinite(v):
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


def grad_scaler(device: str = "cpu", **kwargs) -> torch.amp.GradScaler:
    """torch.amp.GradScaler for device; on CUDA-less machines 'cuda' would silently disable it."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LabkitError("GradScaler('cuda') disables itself without CUDA; valid here: 'cpu'")
    return torch.amp.GradScaler(device, **kwargs)


def grad_scaler_figure(history, *, title: str = "Dynamic loss scale (GradScaler)"):
    """log2 of the loss scale per step, skipped steps (inf/nan gradients) marked."""
    import plotly.graph_objects as go

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


class fp16_gradient_storage:
    """Within the block, every parameter gradient is stored in fp16 and read back: values above
    65504 become inf, values below 2^-25 become 0, the rest lose mantissa bits, as in an fp16
    backward pass. The forward and backward arithmetic stay in the model's dtype.

    Why: CPUs without fp16 matrix units run fp16 matmuls 50-500x slower than fp32 (lab 04's
    throughput table measures it), so a CPU cannot afford a real fp16 autocast run of more than a
    few steps. Storing the gradients in fp16 keeps what GradScaler reacts to, the gradient's range,
    at fp32 speed. On a GPU the lab uses real fp16 autocast instead.
    """

    def __init__(self, model: torch.nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise LabkitError("the model has no trainable parameters whose gradients could be stored in fp16")

    @staticmethod
    def _round(grad: torch.Tensor) -> torch.Tensor:
        return grad.to(torch.float16).to(grad.dtype)

    def __enter__(self):
        self.handles = [p.register_hook(self._round) for p in self.params]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
