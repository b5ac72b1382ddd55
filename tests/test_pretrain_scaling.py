"""Chinchilla's loss law and compute-optimal split; power-law fits on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from labkit import LabkitError
from labkit.pretrain.scaling import (
    CHINCHILLA,
    PowerLawFit,
    chinchilla_loss,
    compute_optimal,
    compute_optimal_table,
    fit_power_law,
    isoflop_figure,
    power_law_figure,
    tokens_per_parameter,
    training_flops,
)


def test_chinchilla_loss_by_hand():
    # Chinchilla itself, 70B parameters on 1.4T tokens:
    # 406.4 / 7e10^0.34 = 406.4 / 4867.6 = 0.08349; 410.7 / 1.4e12^0.28 = 410.7 / 2517.2 = 0.16316
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.69 + 0.08349 + 0.16316, abs=2e-5)
    # 1B parameters on 20B tokens: 406.4 / 1e9^0.34 = 406.4 / 1148.2 = 0.35396;
    # 410.7 / 2e10^0.28 = 410.7 / 766.10 = 0.53609
    assert chinchilla_loss(1e9, 20e9) == pytest.approx(1.69 + 0.35396 + 0.53609, abs=2e-5)
    assert chinchilla_loss(1e40, 1e40) == pytest.approx(CHINCHILLA.E, abs=1e-6)  # the floor E


def test_flops_and_tokens_per_parameter():
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23)
    assert tokens_per_parameter(70e9, 1.4e12) == pytest.approx(20.0)
    with pytest.raises(LabkitError, match="n_params must be finite and > 0"):
        training_flops(0, 10)


@pytest.mark.parametrize("flops", [1e18, 1e21, 5.76e23])
def test_closed_form_optimum_matches_numeric_minimisation(flops):
    n_opt, d_opt = compute_optimal(flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops)
    numeric = minimize_scalar(
        lambda log_n: chinchilla_loss(np.exp(log_n), flops / (6 * np.exp(log_n))),
        bounds=(np.log(1e3), np.log(flops / 6 / 1e3)), method="bounded",
        options={"xatol": 1e-10},
    )  # fmt: skip
    assert np.exp(numeric.x) == pytest.approx(n_opt, rel=1e-4)


def test_compute_optimal_table_reference_values():
    table = compute_optimal_table([1e18, 5.76e23])
    assert table["n_params"].tolist() == pytest.approx([8.0582e7, 3.2190e10], rel=1e-4)
    assert table["tokens_per_param"].tolist() == pytest.approx([25.667, 92.647], rel=1e-4)
    assert table["loss"].is_monotonic_decreasing


def test_power_law_fit_recovers_known_parameters():
    compute = np.logspace(12, 18, 9)
    pure = PowerLawFit(a=25.0, b=0.07)
    fit = fit_power_law(compute, pure(compute))
    assert (fit.a, fit.b, fit.c) == pytest.approx((25.0, 0.07, 0.0), rel=1e-9)

    offset = PowerLawFit(a=300.0, b=0.15, c=1.8)
    fit = fit_power_law(compute, offset(compute), with_offset=True)
    assert (fit.a, fit.b, fit.c) == pytest.approx((300.0, 0.15, 1.8), rel=1e-4)

    noisy = offset(compute) * np.exp(np.random.default_rng(0).normal(0, 0.002, compute.size))
    fit = fit_power_law(compute, noisy, with_offset=True)
    assert fit.b == pytest.approx(0.15, rel=0.15) and fit.c == pytest.approx(1.8, rel=0.1)
    assert fit.formula().startswith("L = ")


def test_power_law_fit_rejects_bad_input():
    with pytest.raises(LabkitError, match="needs >= 2 points, got 1"):
        fit_power_law([1e12], [3.0])
    with pytest.raises(LabkitError, match="loss must be finite and > 0"):
        fit_power_law([1e12, 1e13], [3.0, -1.0])


def test_figures_have_titles():
    fig = isoflop_figure([1e18, 1e20])
    assert fig.layout.title.text and "parameters" in fig.layout.xaxis.title.text
    assert len(fig.data) == 3
    compute = [1e12, 1e13, 1e14]
    fig = power_law_figure(compute, [4.0, 3.5, 3.1], fit_power_law(compute, [4.0, 3.5, 3.1]))
    assert "FLOPs" in fig.layout.xaxis.title.text and fig.data[1].name.startswith("L = ")


def test_tokens_per_param_table_and_figure():
    from labkit.pretrain.scaling import (
        KNOWN_MODELS,
        OPTIMAL_TOKENS_PER_PARAM,
        tokens_per_param_figure,
        tokens_per_param_table,
    )

    table = tokens_per_param_table(list(KNOWN_MODELS) + [("tiny", 3e6, 6e6)])
    row = table.set_index("model")
    assert row.loc["GPT-3 175B", "tokens_per_param"] == pytest.approx(300 / 175)
    assert row.loc["Chinchilla 70B", "tokens_per_param"] == pytest.approx(20.0)
    assert row.loc["Chinchilla 70B", "vs_optimal"] == pytest.approx(1.0)
    assert row.loc["tiny", "tokens_per_param"] == 2.0 and row.loc["tiny", "source"] == ""
    # Chinchilla's verdict on its predecessors: all below 20 tokens per parameter
    for name in ("GPT-3 175B", "Gopher 280B", "MT-NLG 530B"):
        assert row.loc[name, "tokens_per_param"] < OPTIMAL_TOKENS_PER_PARAM
    assert row.loc["Llama 2 7B", "tokens_per_param"] > OPTIMAL_TOKENS_PER_PARAM
    fig = tokens_per_param_figure(table, groups={"papers": [m[0] for m in KNOWN_MODELS],
                                                 "ours": ["tiny"]})
    assert [t.name for t in fig.data] == [f"compute-optimal: D = {OPTIMAL_TOKENS_PER_PARAM:g} N",
                                          "papers", "ours"]
    line = fig.data[0]
    assert np.allclose(np.asarray(line.y) / np.asarray(line.x), OPTIMAL_TOKENS_PER_PARAM)
    assert fig.layout.xaxis.type == fig.layout.yaxis.type == "log"
    for axis, column in ((fig.layout.xaxis, "parameters"), (fig.layout.yaxis, "tokens")):
        lo, hi = axis.range  # every point inside, and a sensible span
        assert lo < np.log10(table[column].min()) and np.log10(table[column].max()) < hi
        assert hi - lo < 12
    with pytest.raises(LabkitError, match="models\\[0\\]"):
        tokens_per_param_table([("x", 1e6)])
    with pytest.raises(LabkitError, match="tokens"):
        tokens_per_param_table([("x", 1e6, -5)])
    with pytest.raises(LabkitError, match="empty"):
        tokens_per_param_table([])
