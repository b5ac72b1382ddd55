"""GPTQ: quantize a linear layer column by column, correcting later columns for each error.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ (Frantar et al. 2023) minimises the
layer's output error on calibration inputs X instead, ||W X - Q X||^2, whose curvature is the
Hessian H = 2 X X^T. Quantizing column j moves the output; the other, not yet quantized columns
can partly undo that move, and the optimal correction (Optimal Brain Surgeon) is

    err = (w_j - q_j) / [H^-1]_jj,        W[:, later] -= err * [H^-1]_j,later

Two practical steps make this fast and stable. The rows of the upper Cholesky factor of H^-1
hold exactly the [H^-1]_j,later terms needed as columns are eliminated in order, so one
factorisation replaces a matrix update per column. And the columns are processed in blocks of
128: inside a block the corrections are applied one column at a time, while the far columns
get all of a block's corrections in one matrix product ("lazy batch update").

Details from the reference implementation: damping adds 1% of the mean diagonal of H to its
diagonal (so the Cholesky exists); "dead" inputs that were always zero get H_jj = 1 and weight 0;
act-order quantizes the columns with the largest H_jj (the most active inputs) first; with a
group size, each group of consecutive columns gets its own scale and zero, computed from the
group's weights as they are when GPTQ reaches it (after earlier corrections).

`gptq_quantize_model` does this for every linear layer of a model in forward order, capturing
each layer's inputs with a forward hook after all earlier layers have been quantized, so that
each layer corrects for the errors upstream of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .. import validate
from ..errors import LabkitError
from .schemes import (
    QuantizedTensor,
    check_bits,
    check_finite,
    check_group_size,
    dequantize_codes,
    fake_quantize,
    level_range,
    round_to_codes,
    scale_and_zero,
)

# ----------------------------------------------------------------------------------------------
# Calibration inputs: what GPTQ (and AWQ) need to know about a layer's inputs


class InputStats:
    """Running sums over a layer's input vectors x (one per token): X^T X, sum |x|, count."""

    def __init__(self, in_features: int):
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
        self.n_tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        # one batch's sums in float32 (as GPTQ's reference code), the running total in float64
        self.xtx += (x.t() @ x).double().cpu()
        self.abs_sum += x.abs().sum(dim=0).double().cpu()
        self.n_tokens += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2 X^T X / n (averaged over tokens so that damping is scale-free)."""
        if self.n_tokens == 0:
            raise LabkitError("no calibration tokens reached this layer; pass calibration data")
        return (2 * self.xtx / self.n_tokens).float()

    @property
    def mean_abs(self) -> torch.Tensor:
        """Mean |x| per input channel: AWQ's activation magnitude."""
        return (self.abs_sum / max(self.n_tokens, 1)).float()


def input_stats(x: torch.Tensor) -> InputStats:
    """InputStats of a tensor of inputs (..., in_features)."""
    check_finite(x, "x")
    if x.dim() < 1 or x.numel() == 0:
        raise LabkitError(f"x must hold at least one input vector, got shape {tuple(x.shape)}")
    stats = InputStats(x.shape[-1])
    stats.add(x)
    return stats


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """Mean over calibration tokens of ||W x - W_hat x||^2, from H = 2 X^T X / n alone."""
    check_finite(w, "w"), check_finite(w_hat, "w_hat"), check_finite(hessian, "hessian")
    if w_hat.shape != w.shape or w.dim() != 2 or hessian.shape != (w.shape[1], w.shape[1]):
        raise LabkitError(f"w_hat must have the shape of w {tuple(w.shape)} and hessian "
                          f"({w.shape[-1]}, {w.shape[-1]}); got w_hat {tuple(w_hat.shape)}, "
                          f"hessian {tuple(hessian.shape)}")
    delta = (w.float() - w_hat.float()).double()
    return float(torch.einsum("ij,jk,ik->", delta, hessian.double(), delta) / 2)


# ----------------------------------------------------------------------------------------------
# One layer


@dataclass
class GPTQResult:
    """A GPTQ-quantized weight: codes in quantization order (act-order permutes columns)."""

    quantized: QuantizedTensor  # codes/scales/zeros over the (possibly permuted) columns
    perm: torch.Tensor | None  # column order used (act-order), None for the natural order
    weight: torch.Tensor  # the dequantized weight in the layer's own column order
    error: float | None = None  # output_error of GPTQ on the calibration inputs
    rtn_error: float | None = None  # output_error of round-to-nearest, same quantizer


def rtn_quantize_weight(w, bits=4, group_size=None, scheme="zeropoint", name="weight"):
    """Round-to-nearest with GPTQ's quantizer: the baseline GPTQ is measured against."""
    if group_size is not None:
        check_group_size(group_size, w.shape[-1] if torch.is_tensor(w) else 0, name)
    granularity = "group" if group_size else "channel"
    return fake_quantize(w, bits, scheme, granularity, group_size, name)


def gptq_quantize_weight(
    w: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    scheme: str = "zeropoint",
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    name: str = "weight",
) -> GPTQResult:
    """GPTQ for one weight (out_features, in_features) given H (in_features, in_features)."""
    check_bits(bits)
    check_finite(w, name)
    check_finite(hessian, "hessian")
    level_range(bits, scheme)
    if w.dim() != 2 or hessian.shape != (w.shape[1], w.shape[1]):
        raise LabkitError(
            f"{name}: weight {tuple(w.shape)} needs a Hessian of shape "
            f"({w.shape[-1]}, {w.shape[-1]}), got {tuple(hessian.shape)}"
        )
    validate.nums(0.0, 1.0, low_open=True, high_open=True)(damp, "damp")
    validate.positive_int(block_size, "block_size")
    rows, cols = w.shape
    if group_size:
        check_group_size(group_size, cols, name)

    W = w.detach().float().clone()
    H = hessian.detach().float().clone()

    # Inputs that were always zero carry no information: pin them, and zero their weights.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    try:
        # Upper Cholesky factor of H^-1: row j holds the corrections for column j's error.
        H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        U = torch.linalg.cholesky(H_inv, upper=True)
    except torch.linalg.LinAlgError as exc:
        raise LabkitError(
            f"{name}: the damped Hessian is not positive definite; raise damp={damp} (e.g. 0.1)"
        ) from exc

    codes = torch.zeros_like(W, dtype=torch.int8 if scheme == "absmax" else torch.uint8)
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    if not group_size:  # one scale per output channel, from the whole (dead-zeroed) row
        scale, zero = scale_and_zero(W, bits, scheme)
        scales, zeros = [scale], [zero]

    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        W_block = W[:, b0:b1].clone()
        err_block = torch.zeros_like(W_block)
        for i in range(b1 - b0):
            j = b0 + i
            if group_size and j % group_size == 0:
                # This group's scale, from its columns as they are now (already corrected).
                group = torch.cat([W_block[:, i:], W[:, b1:]], dim=1)[:, :group_size]
                scale, zero = scale_and_zero(group, bits, scheme)
                scales.append(scale)
                zeros.append(zero)
            column = W_block[:, i : i + 1]
            q = round_to_codes(column, scale, zero, bits, scheme)
            q_value = (q.float() - (zero.float() if zero is not None else 0)) * scale
            codes[:, j] = q[:, 0]
            Q[:, j] = q_value[:, 0]
            err = (column[:, 0] - q_value[:, 0]) / U[j, j]
            # Spread the error over the rest of the block now ...
            W_block[:, i:] -= err.unsqueeze(1) * U[j, j:b1].unsqueeze(0)
            err_block[:, i] = err
        # ... and over all later blocks at once.
        W[:, b1:] -= err_block @ U[b0:b1, b1:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    quantized = QuantizedTensor(
        codes=codes,
        scales=torch.stack(scales, dim=1),  # (rows, n_groups, 1)
        zeros=torch.stack(zeros, dim=1) if scheme == "zeropoint" else None,
        bits=bits,
        scheme=scheme,
        granularity="group" if group_size else "channel",
        group_size=group_size,
        shape=(rows, cols),
    )
    return GPTQResult(quantized=quantized, perm=perm, weight=Q)


def dequantize_result(result: GPTQResult) -> torch.Tensor:
    """The weight from the stored codes (a check that codes, scales and perm are consistent)."""
    q = result.quantized
    w = dequantize_codes(q.codes, q.scales, q.zeros)
    return w if result.perm is None else w[:, torch.argsort(result.perm)]


def quantized_state(q: QuantizedTensor) -> dict:
    """A QuantizedTensor as plain tensors and numbers (for the cache)."""
    return {"codes": q.codes, "scales": q.scales, "zeros": q.zeros, "bits": q.bits,
            "scheme": q.scheme, "granularity": q.granularity, "group_size": q.group_size,
            "shape": list(q.shape)}


def quantized_from_state(state: dict) -> QuantizedTensor:
    return QuantizedTensor(state["codes"], state["scales"], state["zeros"], state["bits"],
                           state["scheme"], state["granularity"], state["group_size"],
                           tuple(state["shape"]))


def _result_state(res: GPTQResult) -> dict:
    return {"quantized": quantized_state(res.quantized), "perm": res.perm, "error": res.error,
            "rtn_error": res.rtn_error}


def _result_from_state(state: dict) -> GPTQResult:
    res = GPTQResult(quantized_from_state(state["quantized"]), state["perm"], torch.empty(0),
                     state["error"], state["rtn_error"])
    res.weight = dequantize_result(res)  # the same arithmetic as GPTQ's own Q: bit for bit
    return res


# ----------------------------------------------------------------------------------------------
# A whole model, layer by layer


def is_linear(module: nn.Module) -> bool:
    """An nn.Linear, or transformers' Conv1D: GPT-2's projections compute the same x W^T + b
    but store the weight transposed, (in_features, out_features). Quantizers treat it as a
    linear layer with that weight transposed (as AutoGPTQ and bitsandbytes' replacement do)."""
    # A Conv1D exists only once transformers.pytorch_utils is imported: no import needed here.
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The (out_features, in_features) weight of an nn.Linear or a Conv1D (a transposed view)."""
    return layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()


def in_features(layer: nn.Module) -> int:
    return linear_weight(layer).shape[1]


@torch.no_grad()
def set_linear_weight(layer: nn.Module, w: torch.Tensor) -> None:
    """Write an (out_features, in_features) weight into an nn.Linear or a Conv1D."""
    linear_weight(layer).copy_(w.to(layer.weight.dtype))


def linear_layers(model: nn.Module, include_lm_head: bool = False) -> dict[str, nn.Module]:
    """The model's linear layers (nn.Linear, or Conv1D in GPT-2's family) in registration
    (= forward) order, lm_head left out."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: m
        for name, m in model.named_modules()
        if is_linear(m) and (include_lm_head or (m is not head and name != "lm_head"))
    }


def check_model_inputs(model, calib, bits, scheme, batch_size) -> None:
    """The arguments every whole-model quantizer takes, checked before any layer is touched."""
    validate.model(model), check_bits(bits), level_range(bits, scheme)
    validate.maybe(validate.positive_int)(batch_size, "batch_size")
    calibration_batches(calib, batch_size or 8)


# Calibration values (sequences x tokens x hidden size) that go through a block in one batch
# when no batch_size is given: 64 MiB of hidden states in fp32. The shipped model's 128 x 128
# tokens (hidden 192) and GPT-2 on 32 x 128 fit; a 7B model's 2048-token sequences go 2 at a time.
ONE_PASS_VALUES = 2**24


def sequences_per_batch(model: nn.Module, calib) -> int:
    """How many calibration sequences make one batch of at most ONE_PASS_VALUES values."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hidden = embeddings.weight.shape[1] if embeddings is not None else 1024
    lengths = [b.shape[-1] for b in calibration_batches(calib, 1 << 30)]
    return max(1, ONE_PASS_VALUES // (max(lengths) * hidden))


def calibration_batches(calib, batch_size: int = 8) -> list[torch.Tensor]:
    """Token-id batches from a LongTensor (n, seq_len), a list of such tensors or of lists."""
    if calib is None:
        raise LabkitError("calib is None: GPTQ/AWQ need calibration token ids (n, seq_len)")
    if torch.is_tensor(calib):
        if calib.dim() == 1:
            calib = calib.unsqueeze(0)
        if calib.dim() != 2 or calib.is_floating_point() or calib.numel() == 0:
            raise LabkitError(
                f"calib must be integer token ids shaped (n, seq_len), got {tuple(calib.shape)} "
                f"{calib.dtype}"
            )
        return list(calib.split(batch_size))
    if isinstance(calib, (str, bytes, dict)) or not isinstance(calib, Iterable):
        raise LabkitError(f"calib must be token ids (n, seq_len), got {type(calib).__name__}")
    batches = [validate.token_ids(c, f"calib[{i}]") for i, c in enumerate(calib)]
    batches = [torch.as_tensor(c) for c in batches]
    if not batches:
        raise LabkitError("calib is empty: pass at least one sequence of token ids")
    return [b if b.dim() == 2 else b.unsqueeze(0) for b in batches]


class _StopForward(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def capture_input_stats(model: nn.Module, layer: nn.Module, batches: Iterable) -> InputStats:
    """Run the calibration batches through the model up to `layer` and collect its inputs."""
    stats = InputStats(in_features(layer))

    def hook(module, args):
        stats.add(args[0])
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        for batch in batches:
            try:
                model(batch.to(_device_of(model)))
            except _StopForward:
                pass
    finally:
        handle.remove()
    return stats


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's stack of transformer blocks and its path (HF decoder layouts), if any."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return path, blocks
    return None


@torch.no_grad()
def _first_block_inputs(model: nn.Module, block: nn.Module, batches) -> list[tuple]:
    """(args, kwargs) of the first block's call for each calibration batch, without a KV cache.

    The hidden states and the extras the model computes once (rotary position embeddings, the
    attention mask) are kept, so each block can be re-run on its own.
    """
    captured = []

    def hook(module, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        captured.append((args, {**kwargs, "use_cache": False}))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(batch.to(_device_of(model)), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def _shared_input_group(block, layers, names, inputs) -> tuple[list[str], InputStats]:
    """Run the block on its cached inputs up to names[0]; collect its inputs' statistics, and
    take along the layers right after it that are fed the very same tensor (q, k and v read one
    normalised hidden state, gate and up another). Their inputs cannot depend on each other's
    weights, so one capture serves the whole group exactly."""
    stats, group, state = InputStats(in_features(layers[names[0]])), [], {}

    def hook(module, args, name):
        x = args[0]
        if "x" not in state:  # names[0], always the first of them the forward pass reaches
            state["x"] = x
            stats.add(x)
        elif x is not state["x"] or (state["batch"] > 0 and name not in group):
            raise _StopForward
        if state["batch"] == 0:
            group.append(name)

    handles = [layers[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        for k, (args, kwargs) in enumerate(inputs):
            state.clear()
            state["batch"] = k
            try:
                block(*args, **kwargs)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return group, stats


@torch.no_grad()
def _quantize_block_in_one_pass(block, names, layers, quantize_layer, inputs, done) -> tuple:
    """Run the block once on its (single batch of) inputs, quantizing each linear layer in a
    hook the moment its input arrives: the forward pass then goes on with the quantized weight,
    so every later layer sees its upstream layers' errors, exactly as layer-by-layer capture.
    Layers fed the very same tensor (q, k, v; gate, up) share one InputStats."""
    (args, kwargs), = inputs
    shared = {}

    def hook(module, hook_args, name):
        if name in done:  # a layer called twice in one forward pass is quantized once
            return
        x = hook_args[0]
        if shared.get("x") is not x:
            shared["x"], shared["stats"] = x, InputStats(in_features(module))
            shared["stats"].add(x)
        set_linear_weight(module, quantize_layer(name, module, shared["stats"]))
        done.append(name)

    handles = [layers[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        out = block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    missed = [n for n in names if n not in done]
    if missed:
        raise LabkitError(f"no calibration tokens reached {', '.join(missed)} in a forward pass")
    return ((out[0] if isinstance(out, tuple) else out,) + tuple(args[1:]), kwargs)


def _blockwise_quantize(model, batches, layers, quantize_layer, progress, path, blocks) -> None:
    """sequential_quantize, one block at a time: each block's inputs are computed once and
    cached, so the calibration text runs through the model about once instead of once per
    layer (GPTQ's reference implementation does the same). Same inputs, same result.

    With one batch, each block runs once and its layers are quantized inside that pass; with
    several, the block runs from its start up to each group of layers that share an input."""
    inputs = _first_block_inputs(model, blocks[0], batches)
    done = []
    if len(inputs) == 1:
        for i, block in enumerate(blocks):
            names = [n for n in layers if n.startswith(f"{path}.{i}.")]
            before = len(done)
            inputs = [_quantize_block_in_one_pass(block, names, layers, quantize_layer, inputs,
                                                  done)]
            if progress is not None:
                for k, name in enumerate(done[before:], before + 1):
                    progress(k, len(layers), name)
        return
    done = 0
    for i, block in enumerate(blocks):
        remaining = [n for n in layers if n.startswith(f"{path}.{i}.")]
        while remaining:
            group, stats = _shared_input_group(block, layers, remaining, inputs)
            for name in group:
                set_linear_weight(layers[name], quantize_layer(name, layers[name], stats))
                done += 1
                if progress is not None:
                    progress(done, len(layers), name)
            remaining = [n for n in remaining if n not in group]
        if i == len(blocks) - 1:
            break  # the last block's outputs feed no layer that is quantized
        with torch.no_grad():
            outputs = [block(*args, **kwargs) for args, kwargs in inputs]
        inputs = [((out[0] if isinstance(out, tuple) else out,) + tuple(args[1:]), kwargs)
                  for out, (args, kwargs) in zip(outputs, inputs)]


def sequential_quantize(
    model: nn.Module,
    calib,
    quantize_layer: Callable[[str, nn.Module, InputStats], torch.Tensor],
    include_lm_head: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    blockwise: bool = True,
) -> None:
    """For each linear layer in forward order: capture its inputs, quantize, write back.

    `quantize_layer(name, layer, stats)` returns the dequantized weight; it replaces the layer's
    weight in place, so the next layer's inputs already carry this layer's quantization error.
    With `blockwise` (and a model whose linear layers all sit in its transformer blocks), block
    inputs are cached; otherwise the calibration batches run from the embeddings to each layer.
    batch_size: calibration sequences per forward pass; None takes as many as fit
    ONE_PASS_VALUES, so a small calibration set is one batch and each block runs once.
    """
    validate.maybe(validate.positive_int)(batch_size, "batch_size")
    batches = calibration_batches(calib, batch_size or sequences_per_batch(model, calib))
    was_training = model.training
    model.eval()
    layers = linear_layers(model, include_lm_head)
    found = decoder_blocks(model) if blockwise else None
    if found is not None:
        path, blocks = found
        inside = {n for n in layers for i in range(len(blocks)) if n.startswith(f"{path}.{i}.")}
        if inside != set(layers) or not isinstance(batches[0], torch.Tensor):
            found = None
    try:
        if found is not None:
            _blockwise_quantize(model, batches, layers, quantize_layer, progress, *found)
            return
        for k, (name, layer) in enumerate(layers.items()):
            stats = capture_input_stats(model, layer, batches)
            set_linear_weight(layer, quantize_layer(name, layer, stats))
            if progress is not None:
                progress(k + 1, len(layers), name)
    finally:
        model.train(was_training)


def gptq_quantize_model(
    model: nn.Module,
    calib,
    bits: int = 4,
    group_size: int | None = 128,
    scheme: str = "zeropoint",
    act_order: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    include_lm_head: bool = False,
    batch_size: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cache: bool = False,
) -> dict[str, GPTQResult]:
    """GPTQ over every linear layer, sequentially; the model's weights become the quantized ones.

    Returns {layer name: GPTQResult} with each layer's GPTQ and RTN output errors measured on
    the same captured calibration inputs. cache=True keeps the result in the user's cache,
    keyed by the weights, calibration ids, settings, code and numeric environment
    (labkit.quant.cache), and reads it from there next time.
    """
    from .cache import cached_quantization

    check_model_inputs(model, calib, bits, scheme, batch_size)
    for name, layer in linear_layers(model, include_lm_head).items():
        if group_size:
            check_group_size(group_size, in_features(layer), name)
    results: dict[str, GPTQResult] = {}

    def quantize_layer(name, layer, stats):
        H = stats.hessian
        W = linear_weight(layer).detach().float().cpu()
        res = gptq_quantize_weight(
            W, H, bits, group_size, scheme, block_size, damp, act_order, name
        )
        res.error = output_error(W, res.weight, H)
        res.rtn_error = output_error(W, rtn_quantize_weight(W, bits, group_size, scheme, name), H)
        results[name] = res
        return res.weight

    def compute():
        sequential_quantize(model, calib, quantize_layer, include_lm_head, batch_size, progress)
        return results

    settings = {"bits": bits, "group_size": group_size, "scheme": scheme, "act_order": act_order,
                "block_size": block_size, "damp": damp, "include_lm_head": include_lm_head,
                "batch_size": batch_size}
    return cached_quantization("gptq", model, calib, settings, cache, compute, _result_state,
                               _result_from_state, include_lm_head, progress)
