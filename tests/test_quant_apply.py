"""Whole-model quantization: QuantLinear swap, measured stored bytes, the bitsandbytes loaders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.errors import LabkitError
from labkit.models import ModelShape, build_causal_lm
from labkit.quant.apply import (
    METHODS,
    QuantLinear,
    linear_stored_bytes,
    load_bnb_model,
    quantize_model,
    stored_bytes,
    valid_group_sizes,
)
from labkit.quant.llm_int8 import int8_quantize_weight
from labkit.quant.nf4 import nf4_quantize
from labkit.quant.schemes import fake_quantize

SHAPE = ModelShape(d_model=64, n_layer=2, n_head=4, d_ff=128)
LINEARS_PER_LAYER = 7


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return build_causal_lm(256, SHAPE, seed=0).eval()


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (8, 32), generator=g), torch.randint(0, 256, (4, 32), generator=g)


def kl(ref_logits, logits):
    return torch.nn.functional.kl_div(
        logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="batchmean"
    ).item()


def quant_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize(
    "scheme,bits,group_size",
    [
        ("rtn", 4, 32),
        ("absmax", 8, None),
        ("zeropoint", 3, 64),
        ("absmax", 2, 16),
        ("nf4", 4, None),
        ("llm_int8", 8, None),
        ("gptq", 4, 32),
        ("awq", 4, 32),
    ],
)
def test_every_linear_swapped_and_model_still_works(model, tokens, scheme, bits, group_size):
    calib, held_out = tokens
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, scheme, bits, group_size, calib=calib)
    layers = quant_layers(q)
    assert len(layers) == SHAPE.n_layer * LINEARS_PER_LAYER
    assert isinstance(q.lm_head, nn.Linear) and not isinstance(q.lm_head, QuantLinear)
    assert all(layer.method == scheme for layer in layers.values())
    assert not any(isinstance(m, nn.Linear) for n, m in q.named_modules() if n != "lm_head")
    # the original model is untouched (quantize_model works on a copy by default)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        ref, out = model(held_out).logits, q(held_out).logits
    assert torch.isfinite(out).all()
    assert kl(ref, out) < {8: 1e-4, 4: 0.01, 3: 0.03, 2: 0.5}[bits]


def test_more_bits_less_damage(model, tokens):
    _, held_out = tokens
    with torch.no_grad():
        ref = model(held_out).logits
        gaps = [kl(ref, quantize_model(model, "rtn", b, None)(held_out).logits) for b in (8, 4, 2)]
    assert gaps[0] < gaps[1] < gaps[2]


def test_quantlinear_computes_with_the_stored_codes(model, tokens):
    calib, _ = tokens
    name = "model.layers.1.mlp.down_proj"
    w = model.get_submodule(name).weight.detach()
    x = torch.randn(3, 5, w.shape[1])
    for scheme, bits, gs in [("rtn", 3, 32), ("absmax", 4, None), ("zeropoint", 8, 64)]:
        layer = quantize_model(model, scheme, bits, gs).get_submodule(name)
        number = "absmax" if scheme == "absmax" else "zeropoint"
        expected = fake_quantize(w, bits, number, "group" if gs else "channel", gs)
        assert torch.equal(layer.dequantized_weight(), expected)
        assert torch.allclose(layer(x), x @ expected.T, atol=1e-5)
    nf4_layer = quantize_model(model, "nf4", 4).get_submodule(name)
    assert torch.equal(nf4_layer.dequantized_weight(), nf4_quantize(w, 64, True).dequantize())
    int8_layer = quantize_model(model, "llm_int8", 8).get_submodule(name)
    assert torch.equal(int8_layer.codes, int8_quantize_weight(w).codes)
    gptq = quantize_model(model, "gptq", 4, 32, calib=calib, act_order=True)
    assert hasattr(gptq.get_submodule(name), "perm")


def test_stored_bytes_are_measured(model):
    """4-bit packed: 1/8 of the fp32 weight bytes plus fp32 scales and packed zero points."""
    q = quantize_model(model, "zeropoint", 4, 32)
    for name, layer in quant_layers(q).items():
        fp32 = model.get_submodule(name).weight
        n, n_groups = fp32.numel(), fp32.numel() // 32
        assert stored_bytes(layer) == n // 2 + 4 * n_groups + math.ceil(n_groups * 4 / 8)
        ratio = stored_bytes(layer) / (4 * n)
        assert 1 / 8 < ratio < 1 / 8 + 1 / 32 + 1 / 256 + 1e-9  # codes + scales + zeros
    # nf4 with double quantization: 4.127 bits per weight; int8: 1 byte + a scale per row
    nf4 = quantize_model(model, "nf4", 4)
    for name, layer in quant_layers(nf4).items():
        n = model.get_submodule(name).weight.numel()
        blocks = n // 64
        assert stored_bytes(layer) == n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4
    int8 = quantize_model(model, "llm_int8", 8)
    for name, layer in quant_layers(int8).items():
        w = model.get_submodule(name).weight
        assert stored_bytes(layer) == w.numel() + 4 * w.shape[0]
    # whole model: the embedding (tied with lm_head) is counted once, and stays fp32
    total_fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert stored_bytes(model) == total_fp32
    embed = model.model.embed_tokens.weight.numel() * 4
    quantized_linear = sum(stored_bytes(m) for m in quant_layers(q).values())
    assert stored_bytes(q) == total_fp32 - (linear_stored_bytes(model) - embed) + quantized_linear


def test_stored_bytes_shrink_with_bits(model):
    sizes = [stored_bytes(quantize_model(model, "rtn", b, None)) for b in (8, 6, 4, 3, 2)]
    assert sizes == sorted(sizes, reverse=True)
    for bits in (8, 6, 3, 2):  # b bits per code, also for 3 and 6: 8 codes in b bytes
        for name, layer in quant_layers(quantize_model(model, "rtn", bits, None)).items():
            rows, n = layer.out_features, layer.out_features * layer.in_features
            codes, zeros = math.ceil(n * bits / 8), math.ceil(rows * bits / 8)
            assert stored_bytes(layer) == codes + 4 * rows + zeros, (bits, name)
    assert linear_stored_bytes(model) == sum(
        m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear)
    )


def test_lm_head_on_request_and_inplace(model):
    q = quantize_model(model, "absmax", 8, None, include_lm_head=True)
    assert isinstance(q.lm_head, QuantLinear)
    import copy

    m2 = copy.deepcopy(model)
    out = quantize_model(m2, "absmax", 8, None, inplace=True)
    assert out is m2 and isinstance(m2.model.layers[0].mlp.up_proj, QuantLinear)


def test_valid_group_sizes(model):
    assert valid_group_sizes(model) == [16, 32, 64]
    odd = build_causal_lm(64, ModelShape(d_model=64, n_layer=1, n_head=4, d_ff=96))
    assert valid_group_sizes(odd) == [16, 32]


def test_bad_input(model, tokens):
    calib, _ = tokens
    with pytest.raises(LabkitError, match="scheme='int3'"):
        quantize_model(model, "int3", 3)
    assert "gptq" in METHODS
    with pytest.raises(LabkitError, match="bits=9"):
        quantize_model(model, "rtn", 9)
    with pytest.raises(LabkitError, match="'nf4' is 4-bit"):
        quantize_model(model, "nf4", 3)
    with pytest.raises(LabkitError, match="'llm_int8' is 8-bit"):
        quantize_model(model, "llm_int8", 4)
    with pytest.raises(LabkitError, match="needs calib"):
        quantize_model(model, "gptq", 4)
    with pytest.raises(LabkitError, match="group_size=128 does not divide the 64.*q_proj"):
        quantize_model(model, "rtn", 4, 128)
    broken = build_causal_lm(256, SHAPE, seed=0)
    with torch.no_grad():
        broken.model.layers[0].mlp.gate_proj.weight[0, 0] = float("nan")
    with pytest.raises(LabkitError, match="model.layers.0.mlp.gate_proj contains 1 nan"):
        quantize_model(broken, "rtn", 4)


# -- the real kernels through transformers --------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_causal_lm(256, SHAPE, seed=0).save_pretrained(path)
    return path


def test_bnb_nf4_load_equals_labkit_nf4(saved, model, tokens, bnb_fp32_path):
    pytest.importorskip("bitsandbytes")
    _, held_out = tokens
    bnb_model = bnb_fp32_path(load_bnb_model(saved, "nf4", device="cpu"))
    ours = quantize_model(model, "nf4", 4)
    for name, layer in quant_layers(ours).items():
        bnb_layer = bnb_model.get_submodule(name)
        assert type(bnb_layer).__name__ == "Linear4bit"
        state = bnb_layer.weight.quant_state
        assert state.quant_type == "nf4" and state.nested
        assert torch.equal(bnb_layer.weight.data.reshape(-1), layer.packed)
        assert torch.equal(state.absmax, layer.absmax_codes)
        assert torch.equal(state.state2.absmax, layer.absmax_scales)
    with torch.no_grad():
        diff = (bnb_model(held_out).logits - ours(held_out).logits).abs().max()
    assert diff < 1e-4  # same weights; only the order of float operations differs


def test_bnb_int8_load_close_to_labkit_llm_int8(saved, model, tokens):
    pytest.importorskip("bitsandbytes")
    _, held_out = tokens
    bnb_model = load_bnb_model(saved, "int8", device="cpu")
    assert type(bnb_model.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"
    ours = quantize_model(model, "llm_int8", 8)
    with torch.no_grad():
        ref, b, o = model(held_out).logits, bnb_model(held_out).logits, ours(held_out).logits
    # bnb quantizes fp16-cast inputs and weights; both stay within int8 error of fp32
    assert (b - o).abs().max() < 0.02 * ref.abs().max()
    assert kl(ref, o) < 1e-4 and kl(ref, b) < 1e-4


def test_bnb_nf4_on_cpu_refuses_rows_not_multiple_of_64_only_where_the_kernel_is_wrong(
    tmp_path, monkeypatch
):
    """The refusal follows the probe of bitsandbytes' CPU kernel: forced both ways here."""
    pytest.importorskip("bitsandbytes")
    build_causal_lm(64, ModelShape(d_model=64, n_layer=1, n_head=4, d_ff=96)).save_pretrained(
        tmp_path
    )
    monkeypatch.setenv("LABKIT_BNB_CPU_4BIT", "wrong")
    with pytest.raises(LabkitError, match="down_proj has in_features=96.*on this machine"):
        load_bnb_model(tmp_path, "nf4", device="cpu")
    monkeypatch.setenv("LABKIT_BNB_CPU_4BIT", "ok")
    model = load_bnb_model(tmp_path, "nf4", device="cpu")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"


def test_bnb_loader_bad_input(tmp_path):
    with pytest.raises(LabkitError, match="mode='fp4'"):
        load_bnb_model(tmp_path, "fp4")
    with pytest.raises(LabkitError, match="no config.json"):
        load_bnb_model(tmp_path / "missing", "int8")
