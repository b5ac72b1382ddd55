"""Whole-model quantization: every linear layer swapped for a QuantLinear that stores codes.

Linear layers are nn.Linear and, in GPT-2's family, transformers' Conv1D (the same map with the
weight stored transposed); a QuantLinear always holds the (out_features, in_features) weight.

A QuantLinear keeps only what a deployment would store: the integer codes (packed, `bits` bits
each, so 2 codes per byte at 4 bits), the scales (and zero points), plus the permutation
(GPTQ act-order) or input scales (AWQ) when the method needs them; it dequantizes the weight
in every forward pass. `stored_bytes` adds up those tensors as they are, so a size in the lab
is measured, not computed from a bit count.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..env import bnb_cpu_4bit_kernel_ok
from ..errors import LabkitError
from .awq import awq_quantize_model
from .gptq import gptq_quantize_model, in_features, is_linear, linear_layers, linear_weight
from .llm_int8 import DEFAULT_THRESHOLD, Int8Weight, int8_quantize_weight, llm_int8_matmul
from .nf4 import NF4Tensor, nf4_quantize
from .schemes import (
    QuantizedTensor,
    check_bits,
    check_group_size,
    dequantize_codes,
    pack_bits,
    quantize,
    unpack_bits,
)

METHODS = ("rtn", "absmax", "zeropoint", "nf4", "llm_int8", "gptq", "awq")
INTEGER_METHODS = ("rtn", "absmax", "zeropoint", "gptq", "awq")


class QuantLinear(nn.Module):
    """A linear layer holding quantized weight tensors (as buffers) and dequantizing in forward.

    method: "absmax" / "zeropoint" / "rtn" / "gptq" / "awq" (integer codes + scales),
    "nf4" (packed NF4 codes + block absmax) or "llm_int8" (int8 codes, int8 matmul with
    outlier decomposition). Build one with `from_quantized`, `from_nf4` or `from_int8`.
    """

    def __init__(self, in_features: int, out_features: int, method: str, bias=None, **meta):
        validate.positive_int(in_features, "in_features"), validate.positive_int(out_features, "out_features")
        validate.one_of(method, "method", METHODS)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method = method
        self.meta = meta
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)

    def extra_repr(self) -> str:
        bits = self.meta.get("bits")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"method={self.method}" + (f", bits={bits}" if bits else "")
        )

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_quantized(
        cls,
        q: QuantizedTensor,
        bias=None,
        method: str = "rtn",
        perm: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
    ) -> QuantLinear:
        out_features, in_features = q.shape
        layer = cls(in_features, out_features, method, bias, bits=q.bits, scheme=q.scheme)
        layer.meta["scales_shape"] = tuple(q.scales.shape)
        codes = q.codes.to(torch.int16)
        if q.scheme == "absmax":  # signed [-qmax, qmax] -> unsigned for packing
            codes = codes + 2 ** (q.bits - 1)
        layer.register_buffer("codes", _store_codes(codes, q.bits))
        layer.register_buffer("scales", q.scales.float().reshape(-1).clone())
        if q.zeros is not None:
            layer.register_buffer("zeros", _store_codes(q.zeros.to(torch.int16), q.bits))
        if perm is not None:
            layer.register_buffer(
                "perm", perm.to(torch.int32 if in_features > 32767 else torch.int16)
            )
        if input_scale is not None:
            layer.register_buffer("input_scale", input_scale.float().clone())
        return layer

    @classmethod
    def from_nf4(cls, t: NF4Tensor, bias=None) -> QuantLinear:
        out_features, in_features = t.shape
        layer = cls(
            in_features,
            out_features,
            "nf4",
            bias,
            bits=4,
            blocksize=t.blocksize,
            double_quant=t.double_quant,
        )
        layer.register_buffer("packed", t.packed.clone())
        if t.double_quant:
            layer.register_buffer("absmax_codes", t.absmax_codes.clone())
            layer.register_buffer("absmax_scales", t.absmax_scales.clone())
            layer.register_buffer("absmax_offset", t.absmax_offset.reshape(1).clone())
        else:
            layer.register_buffer("absmax", t.absmax.clone())
        return layer

    @classmethod
    def from_int8(cls, w: Int8Weight, bias=None, threshold: float = DEFAULT_THRESHOLD):
        out_features, in_features = w.codes.shape
        layer = cls(in_features, out_features, "llm_int8", bias, bits=8, threshold=threshold)
        layer.register_buffer("codes", w.codes.clone())
        layer.register_buffer("scales", w.scales.clone())
        return layer

    # -- use -----------------------------------------------------------------------------------

    def dequantized_weight(self) -> torch.Tensor:
        """The (out_features, in_features) float32 weight this layer computes with."""
        if self.method == "nf4":
            return self.nf4_tensor().dequantize()
        if self.method == "llm_int8":
            return Int8Weight(self.codes, self.scales).dequantize()
        bits = self.meta["bits"]
        numel = self.in_features * self.out_features
        codes = _load_codes(self.codes, bits, numel).reshape(self.out_features, self.in_features)
        if self.meta["scheme"] == "absmax":
            codes = codes - 2 ** (bits - 1)
        scales = self.scales.reshape(self.meta["scales_shape"])
        zeros = None
        if hasattr(self, "zeros"):
            zeros = _load_codes(self.zeros, bits, scales.numel()).reshape(scales.shape)
        w = dequantize_codes(codes, scales, zeros)
        if hasattr(self, "perm"):
            w = w[:, torch.argsort(self.perm.long())]
        if hasattr(self, "input_scale"):
            w = w / self.input_scale
        return w

    def nf4_tensor(self) -> NF4Tensor:
        dq = self.meta["double_quant"]
        return NF4Tensor(
            packed=self.packed,
            absmax=None if dq else self.absmax,
            absmax_codes=self.absmax_codes if dq else None,
            absmax_scales=self.absmax_scales if dq else None,
            absmax_offset=self.absmax_offset.reshape(()) if dq else None,
            shape=(self.out_features, self.in_features),
            blocksize=self.meta["blocksize"],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "llm_int8":
            w = Int8Weight(self.codes, self.scales)
            return llm_int8_matmul(x, w, self.bias, self.meta["threshold"])
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def _store_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """8-bit codes as one uint8 each; fewer bits packed densely (8 codes in `bits` bytes)."""
    return codes.to(torch.uint8).clone() if bits == 8 else pack_bits(codes, bits)


def _load_codes(stored: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    if bits == 8:
        return stored.reshape(-1).long()
    return unpack_bits(stored, bits, numel)


# ----------------------------------------------------------------------------------------------
# Sizes


def stored_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a checkpoint of `module` holds (its state_dict), each shared tensor
    (a tied embedding) counted once."""
    validate.model(module, "module")
    seen, total = set(), 0
    for t in module.state_dict(keep_vars=True).values():
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def linear_stored_bytes(model: nn.Module) -> int:
    """Bytes held by the linear layers alone (quantized or not), biases included."""
    validate.model(model)
    return sum(stored_bytes(m) for m in model.modules() if is_linear(m) or isinstance(m, QuantLinear))


# ----------------------------------------------------------------------------------------------
# Whole models


def replace_linears(
    model: nn.Module, make: Callable[[str, nn.Module], nn.Module], include_lm_head=False
) -> nn.Module:
    """Swap each linear layer (nn.Linear or Conv1D; lm_head excluded unless asked) for
    make(name, layer)."""
    for name, linear in linear_layers(model, include_lm_head).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, linear))
    return model


def quantize_model(
    model: nn.Module,
    scheme: str,
    bits: int = 4,
    group_size: int | None = None,
    calib=None,
    *,
    include_lm_head: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    threshold: float = DEFAULT_THRESHOLD,
    double_quant: bool = True,
    inplace: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cache: bool = False,
) -> nn.Module:
    """A copy of `model` (or the model itself, inplace=True) with its linear layers quantized.

    scheme: "rtn" (= "zeropoint", GPTQ's round-to-nearest baseline), "absmax", "zeropoint",
    "nf4" (bits 4; group_size is the NF4 blocksize, 64 by default), "llm_int8" (bits 8),
    "gptq" and "awq" (both need `calib`, token ids (n, seq_len)). group_size None means one
    scale per output channel; otherwise it must divide every quantized layer's in_features.
    cache: GPTQ and AWQ keep their result in the user's cache (labkit.quant.cache).
    """
    validate.model(model)
    if scheme not in METHODS:
        raise LabkitError(f"scheme={scheme!r} is not known; valid: {', '.join(METHODS)}")
    check_bits(bits)
    if scheme == "nf4" and bits != 4:
        raise LabkitError(f"scheme 'nf4' is 4-bit; got bits={bits}")
    if scheme == "llm_int8" and bits != 8:
        raise LabkitError(f"scheme 'llm_int8' is 8-bit; got bits={bits}")
    if scheme in ("gptq", "awq") and calib is None:
        raise LabkitError(f"scheme {scheme!r} needs calib: calibration token ids (n, seq_len)")
    layers = linear_layers(model, include_lm_head)
    if not layers:
        raise LabkitError("the model has no linear layers (nn.Linear or Conv1D) to quantize")
    if group_size is not None and scheme in INTEGER_METHODS:
        for name, layer in layers.items():
            check_group_size(group_size, in_features(layer), name)

    model = model if inplace else copy.deepcopy(model)
    granularity = "group" if group_size else "channel"
    number_scheme = "absmax" if scheme == "absmax" else "zeropoint"

    if scheme in INTEGER_METHODS[:3]:

        def make(name, lin):
            w = linear_weight(lin).detach()
            q = quantize(w, bits, number_scheme, granularity, group_size, name)
            return QuantLinear.from_quantized(q, lin.bias, method=scheme)

    elif scheme == "nf4":

        def make(name, lin):
            t = nf4_quantize(linear_weight(lin).detach(), group_size or 64, double_quant, name)
            return QuantLinear.from_nf4(t, lin.bias)

    elif scheme == "llm_int8":

        def make(name, lin):
            w = int8_quantize_weight(linear_weight(lin).detach(), name)
            return QuantLinear.from_int8(w, lin.bias, threshold)

    elif scheme == "gptq":
        results = gptq_quantize_model(
            model,
            calib,
            bits,
            group_size,
            "zeropoint",
            act_order,
            damp=damp,
            include_lm_head=include_lm_head,
            progress=progress,
            cache=cache,
        )

        def make(name, lin):
            r = results[name]
            return QuantLinear.from_quantized(r.quantized, lin.bias, "gptq", perm=r.perm)

    else:  # awq
        results = awq_quantize_model(
            model,
            calib,
            bits,
            group_size,
            "zeropoint",
            include_lm_head=include_lm_head,
            progress=progress,
            cache=cache,
        )

        def make(name, lin):
            r = results[name]
            return QuantLinear.from_quantized(
                r.quantized, lin.bias, "awq", input_scale=r.input_scale
            )

    device = next(model.parameters()).device
    replace_linears(model, make, include_lm_head)
    return model.to(device)


def valid_group_sizes(model: nn.Module, candidates=(16, 32, 64, 128, 256), include_lm_head=False):
    """The candidate group sizes that divide every linear layer's in_features."""
    validate.model(model)
    candidates = [validate.positive_int(g, "candidates") for g in validate.items(candidates, "candidates")]
    dims = {in_features(m) for m in linear_layers(model, include_lm_head).values()}
    return [g for g in candidates if all(d % g == 0 for d in dims)]


# ----------------------------------------------------------------------------------------------
# The real kernels: a saved model loaded through transformers + bitsandbytes

BNB_MODES = ("int8", "nf4")


def load_bnb_model(path, mode: str = "int8", device: str | None = None, double_quant=True):
    """Load a saved causal LM with transformers' BitsAndBytesConfig: "int8" or "nf4".

    On CPU (bitsandbytes >= 0.46) both load. On some CPUs bitsandbytes 0.50's native CPU
    dequantize_4bit kernel reads the wrong block scale when a weight's row length is even and
    not a multiple of the blocksize (64), so such an NF4 model would silently compute wrong
    outputs: when the probe (`labkit.env.bnb_cpu_4bit_kernel_ok`) finds the kernel wrong on this
    machine, that case is refused with a LabkitError (on CUDA, and where the probe passes, it
    loads). On a CPU with AVX512-BF16, bitsandbytes runs NF4 layers in eval mode through a fused
    bf16 kernel whatever the compute dtype (`labkit.env.bnb_cpu_4bit_fused_bf16`): logits then
    differ from labkit's nf4 by bf16 rounding instead of float rounding.
    """
    if mode not in BNB_MODES:
        raise LabkitError(f"mode={mode!r} is not known; valid: {', '.join(BNB_MODES)}")
    path = Path(validate.path_like(path, "path"))
    if not (path / "config.json").is_file():
        raise LabkitError(
            f"{str(path)!r} is not a saved model folder (no config.json); save one with "
            "model.save_pretrained(folder) first"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    except ImportError as exc:
        raise LabkitError(f"load_bnb_model needs bitsandbytes and transformers: {exc}") from exc

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # fp32 on CPU (fastest there, and the same weights labkit quantizes); fp16 on a GPU, which
    # every GPU has (a T4 has no bf16) and LLM.int8's kernels expect.
    dtype = torch.float32 if str(device).startswith("cpu") else torch.float16
    if mode == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=DEFAULT_THRESHOLD)
        # On CPU the int8 matmul logs a cast warning on every call; it is expected, not news.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # the default is fp4
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, device_map={"": device}, dtype=dtype,
        use_safetensors=True, trust_remote_code=False,
    )
    model.eval()  # Linear8bitLt in training mode on CPU skips the outlier decomposition
    if mode == "nf4" and str(device).startswith("cpu") and bnb_cpu_4bit_kernel_ok() is False:
        import bitsandbytes as bnb

        for name, m in model.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                blocksize = m.weight.quant_state.blocksize
                if m.in_features % blocksize and m.in_features % 2 == 0:
                    raise LabkitError(
                        f"{name} has in_features={m.in_features}, not a multiple of the NF4 "
                        f"blocksize {blocksize}: bitsandbytes' CPU 4-bit kernel computes it "
                        "wrongly on this machine (probed); use in_features divisible by 64, a "
                        "GPU, or labkit's nf4"
                    )
    return model
