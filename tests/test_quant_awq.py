"""AWQ scale search: never worse than RTN on calibration data, better with salient channels."""

from __future__ import annotations

import pytest
import torch

from labkit.errors import LabkitError
from labkit.models import ModelShape, build_causal_lm
from labkit.quant.awq import awq_quantize_model, awq_scales, awq_search
from labkit.quant.gptq import input_stats, output_error, rtn_quantize_weight


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def salient_inputs(n=512, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, :4] *= 30  # a few channels with large activations (AWQ's "salient" channels)
    return x


def test_scales_normalised():
    mean_abs = torch.rand(64, generator=torch.Generator().manual_seed(0)) * 10 + 0.1
    for alpha in (0.0, 0.35, 0.95):
        s = awq_scales(mean_abs, alpha)
        assert (s.max() * s.min()).sqrt().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(awq_scales(mean_abs, 0.0), torch.ones(64))
    ratio = awq_scales(mean_abs, 0.5)[0] / awq_scales(mean_abs, 0.5)[1]
    assert ratio.item() == pytest.approx((mean_abs[0] / mean_abs[1]).sqrt().item(), rel=1e-5)


@pytest.mark.parametrize("bits,group_size", [(4, 32), (3, None), (4, None)])
def test_search_beats_rtn_with_salient_channels(bits, group_size):
    x = salient_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    stats = input_stats(x)
    res = awq_search(W, stats, bits, group_size)
    assert list(res.errors) == [k / 20 for k in range(20)]  # 20-point grid in [0, 1)
    assert res.alpha > 0
    assert res.errors[res.alpha] == min(res.errors.values())
    rtn = output_error(W, rtn_quantize_weight(W, bits, group_size), stats.hessian)
    assert res.rtn_error == pytest.approx(rtn, rel=1e-6)  # alpha = 0 is plain RTN
    assert res.errors[res.alpha] < 0.8 * rtn
    # the effective weight is dequantize(W * s) / s, from the stored codes
    assert torch.allclose(res.quantized.dequantize() / res.input_scale, res.weight)


def test_whole_model_never_worse_than_rtn_per_layer():
    model = build_causal_lm(256, ModelShape(d_model=64, n_layer=1, n_head=4, d_ff=128)).eval()
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    results = awq_quantize_model(model, calib, bits=4, group_size=32)
    assert len(results) == 7
    for name, res in results.items():
        assert res.errors[res.alpha] <= res.rtn_error, name
        assert torch.equal(model.get_submodule(name).weight, res.weight)


def test_bad_input():
    stats = input_stats(torch.randn(16, 32))
    with pytest.raises(LabkitError, match="n_grid"):
        awq_search(torch.randn(8, 32), stats, n_grid=0)
    with pytest.raises(LabkitError, match="64 input channels but statistics for 32"):
        awq_search(torch.randn(8, 64), stats, group_size=None)
    with pytest.raises(LabkitError, match="group_size=24"):
        awq_search(torch.randn(8, 32), stats, group_size=24)
