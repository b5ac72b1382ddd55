"""The scale profile: chosen once at the top of a lab, read for every size and step count.

`cpu` (the default) fits 2 cores and 2 GiB; `gpu` is picked when CUDA is present or when asked
for with LABKIT_PROFILE=gpu. Each stage package keeps its own numbers in a `SETTINGS` dict keyed
by profile name, so a lab reads `profile.settings("schedules").steps` instead of a literal.

On a card without bf16 (a Colab T4) the gpu profile trains in fp16 with a GradScaler. To run that
path on a card that has bf16, pretend it is absent: `profile(force_fp16=True)`, or
LABKIT_NO_BF16=1 in the environment (which also reaches lab kernels started from it).
"""

from __future__ import annotations

import importlib
import os
import random
from dataclasses import dataclass
from types import SimpleNamespace

from .env import detect
from .errors import LabkitError

PROFILES = ("cpu", "gpu")
NO_BF16_ENV = "LABKIT_NO_BF16"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    train_dtype: str  # "float32", "bfloat16" or "float16": what training autocasts to
    grad_scaler: bool  # fp16 training needs dynamic loss scaling
    seed: int = 1234

    @property
    def autocast_dtype(self):
        import torch

        return None if self.train_dtype == "float32" else getattr(torch, self.train_dtype)

    def settings(self, stage: str) -> SimpleNamespace:
        """Sizes and step counts of one stage (`labkit.<stage>.SETTINGS[profile]`)."""
        try:
            module = importlib.import_module(f"labkit.{stage}")
        except ModuleNotFoundError as exc:
            raise LabkitError(f"unknown stage {stage!r}: no module labkit.{stage}") from exc
        table = getattr(module, "SETTINGS", None)
        if not table or self.name not in table:
            raise LabkitError(f"labkit.{stage} defines no SETTINGS for profile {self.name!r}")
        return SimpleNamespace(**table[self.name])

    def describe(self) -> str:
        return (
            f"profile {self.name!r}: device={self.device}, training dtype={self.train_dtype}"
            + (" with loss scaling" if self.grad_scaler else "")
        )


def bf16_pretended_absent() -> bool:
    """$LABKIT_NO_BF16 as a boolean (unset or empty: False)."""
    value = os.environ.get(NO_BF16_ENV, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise LabkitError(
            f"{NO_BF16_ENV}={os.environ[NO_BF16_ENV]!r} is not a boolean; valid: "
            f"{', '.join(v for v in _TRUE + _FALSE if v)} (or unset)"
        )
    return value in _TRUE


def _training_dtype(device: str, force_fp16: bool = False) -> tuple[str, bool]:
    caps = detect()
    if device == "cuda":
        # A Colab T4 has no bf16: fp16 with loss scaling there (or wherever bf16 is pretended away).
        return ("bfloat16", False) if caps.bf16 and not force_fp16 else ("float16", True)
    # On CPU, fp32 is fastest for tiny models (bf16 autocast without AMX only adds casts).
    return "float32", False


def profile(name: str | None = None, force_fp16: bool | None = None) -> Profile:
    """The scale profile: `name`, else $LABKIT_PROFILE, else `gpu` with CUDA and `cpu` without.

    `force_fp16=True` (default: $LABKIT_NO_BF16) trains a CUDA profile in fp16 with loss scaling
    as on a card without bf16; it changes nothing on the CPU, which trains in fp32.
    """
    caps = detect()
    chosen = name or os.environ.get("LABKIT_PROFILE") or ("gpu" if caps.device == "cuda" else "cpu")
    chosen = chosen.strip().lower()
    if chosen not in PROFILES:
        raise LabkitError(f"unknown profile {chosen!r}; valid profiles: {', '.join(PROFILES)}")
    device = caps.device if chosen == "gpu" else "cpu"
    if force_fp16 is None:
        force_fp16 = bf16_pretended_absent()
    dtype, scaler = _training_dtype(device, bool(force_fp16))
    return Profile(name=chosen, device=device, train_dtype=dtype, grad_scaler=scaler)


def seed_everything(seed: int = 1234) -> int:
    """Seed Python, NumPy and torch (all devices) so a lab prints the same numbers twice."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed
