"""labkit's LLM.int8() matmul against bitsandbytes.nn.Linear8bitLt(threshold=6.0) on CPU.

Measured on this CPU (bitsandbytes 0.50.2, 30 seeds, 24x128 inputs, 96 outputs, 4 outlier
columns):
- inputs and weights exactly representable in fp16, outlier columns entirely >= 6: max
  |labkit - bnb| <= 1.0e-5 x max|y|; what is left is float rounding and bnb's constant
  6.200124e-05 for 1/127**2 (= 6.2000124e-05, 1.8e-5 relative too large);
- raw fp32 inputs with outlier columns only partly >= 6: max |labkit - bnb| <= 1.25% of max|y|,
  both about 0.75-0.85% relative (Frobenius) error to the fp32 product. bnb casts inputs and
  weights to fp16 before quantizing, and its activation row scales include the sub-threshold
  values of outlier columns (labkit leaves whole outlier columns out, as in the paper), so
  labkit's error is slightly lower.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from labkit.errors import LabkitError
from labkit.quant.llm_int8 import (
    int8_quantize_weight,
    llm_int8_matmul,
    outlier_columns,
    outlier_fraction,
)

bnb = pytest.importorskip("bitsandbytes")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast to fp16"


def bnb_linear(W, bias=None):
    out_f, in_f = W.shape
    lin = bnb.nn.Linear8bitLt(
        in_f, out_f, bias=bias is not None, has_fp16_weights=False, threshold=6.0
    )
    lin.weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        lin.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
    return lin.to("cpu").eval()  # quantization happens in .to(device); eval: int8 path on CPU


def problem(seed, n=24, d_in=128, d_out=96, n_outliers=4, whole_columns=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g) * 0.05
    b = torch.randn(d_out, generator=g) * 0.1
    x = torch.randn(n, d_in, generator=g)
    cols = torch.randperm(d_in, generator=g)[:n_outliers]
    if whole_columns:
        signs = torch.sign(torch.randn(n, n_outliers, generator=g))
        x[:, cols] = signs * (6.5 + 10 * torch.rand(n, n_outliers, generator=g))
    else:
        x[:, cols] *= 10
    return W, b, x, cols


def test_weight_codes_equal_bitsandbytes():
    W = (torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.05).half()
    codes, scales, _ = bnb.functional.int8_vectorwise_quant(W)
    ours = int8_quantize_weight(W.float())
    assert torch.equal(ours.codes, codes)
    assert torch.equal(ours.scales, scales)


def test_outlier_columns_equal_bitsandbytes():
    W, b, x, cols = problem(1, whole_columns=False)
    _, _, bnb_cols = bnb.functional.int8_vectorwise_quant(x.half(), threshold=6.0)
    assert torch.equal(outlier_columns(x, 6.0), bnb_cols)
    assert set(outlier_columns(x, 6.0).tolist()) == set(cols.tolist())
    assert outlier_fraction(x, 6.0) == 4 / 128


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_outliers", [0, 4])
def test_matches_linear8bitlt_on_fp16_exact_inputs(seed, n_outliers):
    W, b, x, _ = problem(seed, n_outliers=n_outliers)
    x, W = x.half().float(), W.half().float()
    with torch.no_grad():
        y_bnb = bnb_linear(W, b)(x)
    y = llm_int8_matmul(x, int8_quantize_weight(W), b)
    y_fp = x @ W.T + b
    assert (y - y_bnb).abs().max() <= 3e-5 * y_fp.abs().max()


@pytest.mark.parametrize("seed", range(5))
def test_close_to_linear8bitlt_on_raw_inputs(seed):
    W, b, x, _ = problem(seed, whole_columns=False)
    with torch.no_grad():
        y_bnb = bnb_linear(W, b)(x)
    y = llm_int8_matmul(x, int8_quantize_weight(W), b)
    y_fp = x @ W.T + b
    assert (y - y_bnb).abs().max() <= 0.025 * y_fp.abs().max()
    err, err_bnb = (y - y_fp).norm() / y_fp.norm(), (y_bnb - y_fp).norm() / y_fp.norm()
    assert err < 0.012 and err_bnb < 0.012
    assert err <= err_bnb * 1.05


def test_3d_input_and_batch_of_one_row():
    W, b, x, _ = problem(3)
    w8 = int8_quantize_weight(W)
    y3 = llm_int8_matmul(x.reshape(2, 12, 128), w8, b)
    assert y3.shape == (2, 12, 96)
    assert torch.allclose(y3.reshape(24, 96), llm_int8_matmul(x, w8, b))
    with torch.no_grad():
        y_bnb = bnb_linear(W.half().float(), b)(x[:1].half().float())
    y1 = llm_int8_matmul(x[:1].half().float(), int8_quantize_weight(W.half().float()), b)
    assert (y1 - y_bnb).abs().max() <= 3e-5 * y1.abs().max()


def test_outlier_decomposition_is_what_saves_accuracy():
    W, b, x, _ = problem(4)
    x[:, :2] *= 8  # a few huge features, as in the 6.7B+ models of the paper
    w8 = int8_quantize_weight(W)
    y_fp = x @ W.T + b
    err_int8 = (llm_int8_matmul(x, w8, b, threshold=6.0) - y_fp).norm()
    err_no_outliers = (llm_int8_matmul(x, w8, b, threshold=0.0) - y_fp).norm()
    assert err_int8 < err_no_outliers / 3


def test_zero_rows_and_bad_input():
    W, b, x, _ = problem(5)
    x[0] = 0
    y = llm_int8_matmul(x, int8_quantize_weight(W), b)
    assert torch.isfinite(y).all() and torch.allclose(y[0], b)
    w8 = int8_quantize_weight(torch.zeros(8, 16))
    assert torch.equal(w8.dequantize(), torch.zeros(8, 16))
    with pytest.raises(LabkitError, match="threshold=-1"):
        llm_int8_matmul(x, int8_quantize_weight(W), b, threshold=-1)
    x[1, 1] = math.nan
    with pytest.raises(LabkitError, match="input contains 1 nan"):
        llm_int8_matmul(x, int8_quantize_weight(W), b)
    with pytest.raises(LabkitError, match="2-D"):
        int8_quantize_weight(torch.randn(4))
