"""Deployment memory calculator and the quantization figures."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from labkit.errors import LabkitError
from labkit.quant.figures import (
    error_vs_bits_figure,
    levels_histogram_figure,
    pareto_figure,
    pareto_front,
)
from labkit.quant.schemes import reconstruction_errors
from labkit.quant.serving import (
    GPUS,
    PRESETS,
    ModelSpec,
    bits_per_weight,
    gpu_fit_table,
    kv_cache_bytes,
    serving_figure,
    serving_memory,
    smallest_gpu,
    weight_bytes,
)

N_7B = 6_738_415_616  # Llama-2-7B parameters
N_70B = 68_976_648_192  # Llama-2-70B parameters


def test_weights_at_each_precision_by_hand():
    assert weight_bytes(N_7B, "fp16") == N_7B * 2  # 13.48 GB, the "~13.5 GB" of a 7B in fp16
    assert serving_memory("7B", "fp16").weights_gb == pytest.approx(13.4768, abs=1e-4)
    assert serving_memory("7B", "fp32").weights_gb == pytest.approx(26.9537, abs=1e-4)
    assert serving_memory("7B", "int8").weights_gb == pytest.approx(6.7384, abs=1e-4)
    # int4 with group 128: 4 bits + (fp16 scale + 4-bit zero) / 128 = 4.15625 bits per weight
    assert bits_per_weight("int4", 128) == 4 + 20 / 128
    assert serving_memory("7B", "int4").weights_gb == pytest.approx(N_7B * 4.15625 / 8 / 1e9)
    assert serving_memory("70B", "int4", group_size=64).weights_gb == pytest.approx(
        N_70B * (4 + 20 / 64) / 8 / 1e9
    )
    assert bits_per_weight("nf4") == pytest.approx(4.127, abs=1e-3)


def test_kv_cache_formula_on_known_configurations():
    # Llama-2-7B: 32 layers x 32 kv heads x 128 dims, fp16 -> 0.5 MiB per token
    assert kv_cache_bytes(32, 32, 128, context=1, batch=1, bytes_per_value=2) == 524_288
    assert kv_cache_bytes(32, 32, 128, 4096, 1, 2) == 2**31  # 4k context: 2 GiB
    assert serving_memory("7B", "fp16", 4096, 1).kv_cache_gb == pytest.approx(2.147483648)
    # Llama-2-70B with GQA: 80 layers x 8 kv heads x 128 -> 320 KiB per token, 8x less than MHA
    assert kv_cache_bytes(80, 8, 128, 1) == 327_680
    est = serving_memory("70B", "fp16", context=4096, batch=8)
    assert est.kv_cache_gb == pytest.approx(80 * 8 * 128 * 2 * 2 * 4096 * 8 / 1e9)
    assert est.total_gb == pytest.approx(est.weights_gb + est.kv_cache_gb)


def test_which_gpus_fit():
    table = gpu_fit_table("7B", context=4096, batch=1).set_index("precision")
    # 7B fp16 + 4k KV = 15.6 GB: not a T4 (16 GB, 14.4 usable), an L4 / A10 / 4090 (24 GB)
    assert not table.loc["fp16", "T4 16GB"] and table.loc["fp16", "L4 24GB"]
    assert table.loc["int4", "T4 16GB"]  # int4 7B: 3.5 + 2.1 GB
    table70 = gpu_fit_table("70B", context=4096, batch=1).set_index("precision")
    # 70B fp16 = 138 GB of weights: no single GPU; int4 = 35.8 + 1.3 GB: an 80 GB card, not 40
    assert not table70.loc["fp16", list(GPUS)].any()
    assert table70.loc["int4", "A100 80GB"] and not table70.loc["int4", "A100 40GB"]
    # int8: 68.98 + 1.34 = 70.3 GB <= 0.9 x 80 = 72: just fits an 80 GB card
    assert table70.loc["int8", "H100 80GB"] and not table70.loc["int8", "A100 40GB"]
    assert table70.loc["int8", "total_gb"] == pytest.approx((N_70B + 80 * 8 * 128 * 4 * 4096) / 1e9)
    assert smallest_gpu(15.62) in ("L4 24GB", "A10 24GB", "RTX 4090 24GB")
    assert smallest_gpu(500) is None


def test_custom_model_spec():
    spec = ModelSpec("tiny", 1_000_000, 4, 4, 2, 32)
    est = serving_memory(spec, "fp32", context=128, batch=2, kv_bytes=4)
    assert est.weights_gb == pytest.approx(4e6 / 1e9)
    assert est.kv_cache_gb == pytest.approx(2 * 4 * 2 * 32 * 128 * 2 * 4 / 1e9)
    assert set(PRESETS) >= {"7B", "70B"}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: serving_memory("7.5B"), "model='7.5B'"),
        (lambda: serving_memory("7B", "int3"), "precision='int3'"),
        (lambda: serving_memory("7B", context=0), "context=0"),
        (lambda: serving_memory("7B", batch=-1), "batch=-1"),
        (lambda: serving_memory("7B", batch=True), "batch=True"),
        (lambda: serving_memory("7B", kv_bytes=0), "bytes_per_value=0"),
        (lambda: serving_memory("7B", "int4", group_size=0), "group_size=0"),
        (lambda: serving_memory(ModelSpec("x", 10, 2, 6, 4, 8)), "n_kv_heads=4 must divide"),
        (lambda: serving_memory(ModelSpec("x", 0, 2, 4, 4, 8)), "n_params=0"),
        (lambda: gpu_fit_table("7B", headroom=1.5), "headroom=1.5"),
        (lambda: weight_bytes(-5), "n_params=-5"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(LabkitError, match=match):
        call()


def assert_titled(fig):
    layout = fig.layout
    assert layout.title.text and layout.xaxis.title.text and layout.yaxis.title.text
    assert "(" in layout.xaxis.title.text and "(" in layout.yaxis.title.text  # units


def test_serving_figure():
    fig = serving_figure("70B", context=8192, batch=4)
    assert_titled(fig)
    assert "Llama-2-70B" in fig.layout.title.text
    weights, kv = fig.data[0], fig.data[1]
    assert list(weights.x) == ["fp32", "fp16", "int8", "int4"]
    assert kv.y[1] == pytest.approx(serving_memory("70B", "fp16", 8192, 4).kv_cache_gb)


def test_error_and_histogram_figures():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    table = reconstruction_errors(w, bits_list=(8, 4, 2), group_size=16)
    fig = error_vs_bits_figure(table)
    assert_titled(fig)
    assert len(fig.data) == 6  # 2 schemes x 3 granularities
    assert list(fig.data[0].x) == [2, 4, 8]  # absmax, per tensor, by bits
    assert fig.data[0].y[0] == pytest.approx(100 * table.rel_rms_error.iloc[2])
    hist = levels_histogram_figure(w, bits=3, scheme="absmax", granularity="tensor")
    assert_titled(hist)
    assert len(set(hist.data[1].x.tolist())) <= 7  # 3-bit absmax: 2**3 - 1 levels
    with pytest.raises(LabkitError, match="needs columns"):
        error_vs_bits_figure(pd.DataFrame({"bits": [4]}))


def test_pareto():
    sizes, quality = [10, 20, 30, 15, 40], [50, 30, 31, 60, 20]
    assert sorted(pareto_front(sizes, quality)) == [0, 1, 4]
    table = pd.DataFrame({"label": list("abcde"), "size_mb": sizes, "perplexity": quality})
    fig = pareto_figure(table)
    assert_titled(fig)
    assert list(fig.data[1].x) == [10, 20, 40]
    with pytest.raises(LabkitError, match="no column 'ppl'"):
        pareto_figure(table, quality="ppl")
    with pytest.raises(LabkitError, match="empty"):
        pareto_figure(table.iloc[:0])
