"""GPTQ: beats round-to-nearest on the data it was calibrated on, layer by layer and end to end."""

from __future__ import annotations

import copy

import pytest
import torch

from labkit.errors import LabkitError
from labkit.models import ModelShape, build_causal_lm
from labkit.quant.apply import quantize_model
from labkit.quant.awq import awq_search
from labkit.quant.gptq import (
    InputStats,
    calibration_batches,
    capture_input_stats,
    decoder_blocks,
    dequantize_result,
    gptq_quantize_model,
    gptq_quantize_weight,
    input_stats,
    linear_layers,
    output_error,
    rtn_quantize_weight,
    sequential_quantize,
)
from labkit.quant.schemes import level_range

SHAPE = ModelShape(d_model=64, n_layer=2, n_head=4, d_ff=128)


@pytest.fixture(autouse=True)
def one_thread():
    """Small factorisations are far faster single-threaded on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def correlated_inputs(n=1024, d=128, seed=0):
    """Inputs on a low-dimensional subspace plus noise, with a few large channels."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, d, generator=g)
    x = torch.randn(n, 16, generator=g) @ basis + 0.05 * torch.randn(n, d, generator=g)
    x[:, :3] *= 8
    return x


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group_size, act_order):
    x = correlated_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    H = input_stats(x).hessian
    res = gptq_quantize_weight(W, H, bits, group_size, act_order=act_order, block_size=32)
    gptq_err = output_error(W, res.weight, H)
    rtn_err = output_error(W, rtn_quantize_weight(W, bits, group_size), H)
    assert gptq_err < 0.5 * rtn_err
    # output_error is the mean over tokens of ||W x - Q x||^2
    direct = ((x @ (W - res.weight).T) ** 2).sum(dim=1).mean()
    assert gptq_err == pytest.approx(direct.item(), rel=1e-3)
    # the stored codes (and permutation) reproduce the weight
    assert torch.allclose(dequantize_result(res), res.weight, atol=1e-6)
    lo, hi = level_range(bits, "zeropoint")
    assert int(res.quantized.codes.min()) >= lo and int(res.quantized.codes.max()) <= hi
    n_groups = 128 // group_size if group_size else 1
    assert res.quantized.scales.shape == (64, n_groups, 1)
    assert (res.perm is not None) == act_order


@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("scheme", ["zeropoint", "absmax"])
def test_uncorrelated_equal_variance_inputs_make_gptq_rtn(group_size, scheme):
    """With H = c I there is nothing to correct with: GPTQ reduces to round-to-nearest."""
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    res = gptq_quantize_weight(W, 3.0 * torch.eye(64), 4, group_size, scheme)
    assert torch.allclose(res.weight, rtn_quantize_weight(W, 4, group_size, scheme), atol=1e-6)


def test_dead_inputs_get_zero_weight():
    x = correlated_inputs(d=64)
    x[:, 5] = 0
    W = torch.randn(8, 64)
    res = gptq_quantize_weight(W, input_stats(x).hessian, 4)
    assert (res.weight[:, 5] == 0).all()
    assert torch.isfinite(res.weight).all()


def test_block_size_changes_speed_not_result():
    x = correlated_inputs()
    W = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    H = input_stats(x).hessian
    a = gptq_quantize_weight(W, H, 4, block_size=128).weight
    b = gptq_quantize_weight(W, H, 4, block_size=16).weight
    # lazy batch updates are exact algebra; only float rounding may flip a rare code
    assert (a != b).float().mean() < 0.01
    assert torch.allclose(a, b, atol=0.2)


def random_llama(seed=0):
    return build_causal_lm(256, SHAPE, seed=seed).eval()


def test_every_layer_of_a_random_llama_beats_rtn():
    model = random_llama()
    calib = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    results = gptq_quantize_model(model, calib, bits=4, group_size=None)
    assert list(results) == list(linear_layers(model))  # forward order, lm_head left out
    assert len(results) == 2 * 7
    for name, res in results.items():
        assert res.error < res.rtn_error, name
    # the model now computes with the quantized weights (what later layers were calibrated on)
    for name, layer in linear_layers(model).items():
        assert torch.equal(layer.weight, results[name].weight)


def test_layers_are_calibrated_on_inputs_after_earlier_quantization():
    fp = random_llama()
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    batches = calibration_batches(calib)
    q = copy.deepcopy(fp)
    gptq_quantize_model(q, calib, bits=3, group_size=None)
    # the first layer sees embeddings only: identical inputs; a later one sees upstream errors
    first, later = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"
    h_fp = capture_input_stats(fp, fp.get_submodule(first), batches).hessian
    h_q = capture_input_stats(q, q.get_submodule(first), batches).hessian
    assert torch.equal(h_fp, h_q)
    h_fp = capture_input_stats(fp, fp.get_submodule(later), batches).hessian
    h_q = capture_input_stats(q, q.get_submodule(later), batches).hessian
    assert not torch.allclose(h_fp, h_q)


def kl_to_reference(ref_logits, logits) -> float:
    """Extra cross-entropy (nats/token) of the quantized model against the fp32 predictions."""
    return torch.nn.functional.kl_div(
        logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="batchmean"
    ).item()


def test_gptq_output_error_beats_rtn_with_correlated_calibration():
    """Text-like data (a small recurring vocabulary) gives correlated inputs: GPTQ's gap to
    fp32 is a fraction of RTN's at 4 and 3 bits (the shape of the GPTQ paper's table)."""
    model = random_llama()
    vocab = torch.arange(0, 256, 16)

    def sample(n, seed):
        g = torch.Generator().manual_seed(seed)
        return vocab[torch.randint(0, len(vocab), (n, 48), generator=g)]

    calib, held_out = sample(12, 1), sample(6, 2)
    with torch.no_grad():
        ref = model(held_out).logits
    for bits in (4, 3):
        gaps = {}
        for scheme in ("rtn", "gptq"):
            q = quantize_model(model, scheme, bits, None, calib=calib)
            with torch.no_grad():
                gaps[scheme] = kl_to_reference(ref, q(held_out).logits)
        assert gaps["gptq"] < 0.5 * gaps["rtn"], (bits, gaps)


def test_bad_input():
    W = torch.randn(8, 32)
    with pytest.raises(LabkitError, match="Hessian of shape"):
        gptq_quantize_weight(W, torch.eye(16))
    with pytest.raises(LabkitError, match="damp="):
        gptq_quantize_weight(W, torch.eye(32), damp=0)
    with pytest.raises(LabkitError, match="group_size=12"):
        gptq_quantize_weight(W, torch.eye(32), group_size=12)
    with pytest.raises(LabkitError, match="bits="):
        gptq_quantize_weight(W, torch.eye(32), bits=1)
    with pytest.raises(LabkitError, match="calib is None"):
        calibration_batches(None)
    with pytest.raises(LabkitError, match="integer token ids"):
        calibration_batches(torch.randn(2, 8))
    with pytest.raises(LabkitError, match="no calibration tokens"):
        _ = InputStats(4).hessian
    with pytest.raises(LabkitError, match="group_size=48"):
        gptq_quantize_model(random_llama(), torch.zeros(1, 4, dtype=torch.long), group_size=48)


@pytest.mark.parametrize("quantizer", ["gptq", "awq"])
def test_blockwise_calibration_equals_running_the_whole_model_per_layer(quantizer):
    """Cached block inputs, and one capture for layers fed the same tensor (q, k, v; gate, up),
    give bit for bit the weights of capturing every layer's inputs from the embeddings up."""
    model = random_llama()
    calib = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(3))
    seen = {True: [], False: []}

    def run(blockwise):
        def quantize_layer(name, layer, stats):
            seen[blockwise].append((name, stats.n_tokens))
            if quantizer == "awq":
                return awq_search(layer.weight.detach(), stats, 3, None).weight
            return gptq_quantize_weight(layer.weight.detach().float(), stats.hessian, 3).weight

        q = copy.deepcopy(model)
        sequential_quantize(q, calib, quantize_layer, batch_size=4, blockwise=blockwise)
        return q

    fast, slow = run(True), run(False)
    assert seen[True] == seen[False] and len(seen[True]) == 14
    assert all(n == 6 * 24 for _, n in seen[True])
    for name in linear_layers(model):
        assert torch.equal(fast.get_submodule(name).weight, slow.get_submodule(name).weight), name
    assert decoder_blocks(model)[0] == "model.layers"


@pytest.mark.parametrize("quantizer", ["gptq", "awq"])
def test_one_pass_per_block_equals_capturing_every_layer_from_the_embeddings(quantizer):
    """A calibration set that fits one batch runs through each block once, its layers quantized
    inside that pass as their inputs arrive: bit for bit the weights (and the per-layer
    statistics) of running the whole model up to every layer, one layer at a time."""
    model = random_llama()
    calib = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(5))
    seen = {}

    def run(blockwise, batch_size):
        key = (blockwise, batch_size)
        seen[key] = []

        def quantize_layer(name, layer, stats):
            seen[key].append((name, stats.n_tokens, stats.xtx.sum().item()))
            if quantizer == "awq":
                return awq_search(layer.weight.detach(), stats, 3, None).weight
            return gptq_quantize_weight(layer.weight.detach().float(), stats.hessian, 3).weight

        q = copy.deepcopy(model)
        sequential_quantize(q, calib, quantize_layer, batch_size=batch_size, blockwise=blockwise)
        return q

    one_pass, multi_pass, slow = run(True, None), run(True, 3), run(False, 6)
    assert seen[(True, None)] == seen[(False, 6)] and len(seen[(False, 6)]) == 14
    assert [n for n, *_ in seen[(True, 3)]] == [n for n, *_ in seen[(False, 6)]]
    for name in linear_layers(model):
        assert torch.equal(one_pass.get_submodule(name).weight, slow.get_submodule(name).weight)
        # two batches of 3 sum X^T X in another order: the same weights up to float rounding
        assert torch.allclose(multi_pass.get_submodule(name).weight,
                              slow.get_submodule(name).weight, atol=0.05), name
    # the quantized model computes with the quantized weights of every layer
    assert not torch.equal(one_pass.get_submodule("model.layers.1.mlp.down_proj").weight,
                           model.get_submodule("model.layers.1.mlp.down_proj").weight)


def test_calibration_batches_fit_the_one_pass_budget():
    from labkit.quant import gptq

    model = random_llama()  # hidden size 64
    calib = torch.zeros(128, 128, dtype=torch.long)
    # 128 x 128 x 64 values: one batch
    assert len(calibration_batches(calib, gptq.sequences_per_batch(model, calib))) == 1
    assert gptq.sequences_per_batch(model, torch.zeros(4, 2**19, dtype=torch.long)) == 1
    assert gptq.sequences_per_batch(model, torch.zeros(9, 2**16, dtype=torch.long)) == 4


@pytest.mark.parametrize("scheme", ["gptq", "awq"])
def test_cached_calibration_is_the_computed_one_and_any_input_change_recomputes(
        scheme, tmp_path, monkeypatch):
    from labkit.quant import cache

    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    model = random_llama()
    calib = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(6))

    def run(m=model, c=calib, bits=3, **kw):
        before = len(cache.EVENTS)
        q = quantize_model(m, scheme, bits, 32, calib=c, cache=True, **kw)
        return q, [e["how"] for e in cache.EVENTS[before:]]

    first, how = run()
    assert how == ["computed"] and len(list(tmp_path.glob("quant/*.pt"))) == 1
    again, how = run()
    assert how == ["from the cache"]
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name  # codes, scales, zeros (and AWQ's input scales)
    for name in linear_layers(model):  # what the QuantLinear computes with
        assert torch.equal(first.get_submodule(name).dequantized_weight(),
                           again.get_submodule(name).dequantized_weight())
    # new weights, new calibration text, new settings: computed again, never a stale entry
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert run(m=other)[1] == ["computed"]
    assert run(c=calib.flip(0))[1] == ["computed"]
    assert run(bits=4)[1] == ["computed"]
    assert run()[1] == ["from the cache"]
    # a damaged entry is recomputed (and rewritten), not an error
    for path in tmp_path.glob("quant/*.pt"):
        path.write_bytes(b"not a torch file")
    assert run()[1] == ["computed"] and run()[1] == ["from the cache"]
    # without cache=True nothing is read or written
    before = sorted(tmp_path.glob("quant/*.pt"))
    quantize_model(model, scheme, 3, 32, calib=calib)
    assert sorted(tmp_path.glob("quant/*.pt")) == before


def test_layers_outside_the_blocks_fall_back_to_whole_model_capture():
    model = random_llama()
    calib = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))
    names = []
    sequential_quantize(model, calib, lambda n, layer, s: names.append(n) or layer.weight.detach(),
                        include_lm_head=True)
    assert names[-1] == "lm_head" and len(names) == 15
