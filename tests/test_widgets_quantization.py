"""The quantization explorers, headless: controls move the FigureWidget data in place, cached
rows are drawn without recomputing, new combinations are measured on demand with a progress
bar, invalid combinations show a message and raise nothing; the bench measures what it says."""

from __future__ import annotations

import html

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.evaluation import perplexity
from labkit.loaders import load_tokenizer
from labkit.models import ModelShape, build_causal_lm
from labkit.quant import QuantLinear, kv_cache_bytes, quantize_model, stored_bytes
from labkit.quant.tradeoff import gap_ratio, quantization_damage
from widgets.quantization import (
    FLOOR_PCT,
    GROUP_SIZES,
    ServingCalculator,
    TradeoffBench,
    TradeoffExplorer,
    combo_problem,
    config_key,
    config_label,
    decode_latency,
    dequantized_copy,
    tradeoff_table,
)

IN_FEATURES = [192, 512]  # the shipped base model's linear inputs


def row(scheme, bits, group, size_mb, ppl, acc=0.6, ms=10.0):
    return {"label": config_label(scheme, bits, group), "scheme": scheme, "bits": bits,
            "group_size": group, "stored_bytes": int(size_mb * 1e6), "size_mb": size_mb,
            "linear_bits": float(bits), "perplexity": ppl, "knowledge_acc": acc,
            "ms_per_token": ms, "cpu_ms_per_token": ms, "seconds": 1.0}


ROWS = [row("fp32", 32, None, 13.09, 1.2275, 0.57, 8.0), row("rtn", 8, None, 5.19, 1.2276),
        row("rtn", 4, None, 3.85, 1.2279), row("rtn", 2, None, 3.19, 1.3389, 0.5)]


@pytest.fixture()
def measured():
    calls = []

    def measure_fn(scheme, bits, group, progress):
        calls.append((scheme, bits, group))
        for k in range(5):
            progress(k / 4, "step")
        return row(scheme, bits, group, 3.52, 1.2320, 0.45, 70.0)

    return calls, measure_fn


def explorer(measure_fn=None, **kwargs):
    return TradeoffExplorer(tradeoff_table(ROWS), measure_fn=measure_fn, in_features=IN_FEATURES,
                            **kwargs)


def test_explorer_draws_cached_rows_and_moves_the_selection_in_place(measured):
    calls, measure_fn = measured
    e = explorer(measure_fn, scheme="rtn", bits=4)
    for control in e.controls:
        assert control.description
    assert "(bits)" in e.bits.description and "(weights)" in e.group.description
    points, front, selected = e.figure.data
    assert sorted(points.x) == sorted(r["size_mb"] for r in ROWS)
    # y: perplexity increase over fp32 in %, fp32 itself drawn at the log axis' floor
    increase = {r["label"]: 100 * (r["perplexity"] / 1.2275 - 1) for r in ROWS}
    assert list(selected.x) == [3.85] and selected.y[0] == pytest.approx(increase["rtn 4b"])
    assert dict(zip(points.x, points.y))[13.09] == FLOOR_PCT
    assert "perplexity increase over fp32" in e.figure.layout.yaxis.title.text
    # each smaller model is worse here: all four on the Pareto front, all labelled
    assert len(front.x) == 4 and all(points.text)
    assert "rtn 4b" in e.figure.layout.title.text and "rtn 4b" in e.readout.value
    figure_id = id(e.figure)

    e.bits.value = 8  # from the cache
    assert list(e.figure.data[2].x) == [5.19]
    assert e.figure.data[2].y[0] == pytest.approx(100 * (1.2276 / 1.2275 - 1))
    assert "rtn 8b" in e.figure.layout.title.text and "from the cache" in e.message.value
    assert e.button.disabled and calls == []

    e.scheme.value = "fp32"  # bits and group do not apply: disabled, baseline selected
    assert e.bits.disabled and e.group.disabled
    assert list(e.figure.data[2].x) == [13.09]
    assert id(e.figure) == figure_id and calls == []


def test_uncached_combination_is_measured_on_demand_with_progress(measured):
    calls, measure_fn = measured
    e = explorer(measure_fn, scheme="rtn", bits=4)
    seen = []
    e.progress.observe(lambda change: seen.append(change["new"]), names="value")
    e.bits.value = 3
    assert "not measured yet" in e.message.value and not e.button.disabled
    assert list(e.figure.data[2].x) == []  # nothing to highlight yet
    e.button.click()
    assert calls == [("rtn", 3, None)]
    assert seen[-1] == 1.0 and len(seen) >= 4  # the bar moved through the steps
    assert e.progress.layout.visibility == "hidden"
    assert len(e.figure.data[0].x) == len(ROWS) + 1
    assert list(e.figure.data[2].x) == [3.52] and e.button.disabled
    e.bits.value = 4
    e.bits.value = 3  # now cached: no second measurement
    assert calls == [("rtn", 3, None)]
    assert "rtn 3b" in e.table_html.value


@pytest.mark.parametrize(
    "scheme, bits, group, expected",
    [
        ("rtn", 1, None, "bits = 1 is not supported"),
        ("rtn", 9, None, "2 to 8 bits"),
        ("rtn", 4, 128, "group size 128 does not divide the 192 inputs"),
        ("gptq", 4, 256, "valid here: per output channel, 16, 32, 64"),
        ("nf4", 3, None, "NF4 is a 4-bit format"),
        ("llm_int8", 4, None, "LLM.int8 is an 8-bit scheme"),
        ("llm_int8", 8, 64, "choose 'per output channel'"),
    ],
)
def test_invalid_combination_shows_a_message_and_keeps_the_figure(measured, scheme, bits,
                                                                 group, expected):
    calls, measure_fn = measured
    e = explorer(measure_fn, scheme="rtn", bits=4)
    points_before = list(e.figure.data[0].x)
    e.scheme.value, e.bits.value, e.group.value = scheme, bits, group
    assert expected in html.unescape(e.message.value)
    assert "#b42318" in e.message.value  # shown as an error
    assert e.button.disabled and list(e.figure.data[2].x) == []
    assert list(e.figure.data[0].x) == points_before
    assert e.measure_selected() is False and calls == []


def test_failing_measurement_shows_the_error_and_the_widget_lives():
    def broken(scheme, bits, group, progress):
        raise RuntimeError("out of memory")

    e = explorer(broken, scheme="absmax", bits=4, group_size=64)
    assert e.measure_selected() is False
    assert "RuntimeError: out of memory" in e.message.value and not e.button.disabled
    e.scheme.value = "rtn"
    e.group.value = None
    assert "from the cache" in e.message.value


def test_explorer_needs_a_baseline_row():
    with pytest.raises(LabkitError, match="fp32 row"):
        TradeoffExplorer(tradeoff_table(ROWS[1:]), in_features=IN_FEATURES)
    with pytest.raises(LabkitError, match="lack columns"):
        tradeoff_table([{"label": "fp32"}])


def test_config_keys_and_labels():
    assert config_key("fp32", 7, 64) == ("fp32", 32, None)
    assert config_key("nf4", 4, None) == ("nf4", 4, 64)
    assert config_label("nf4", 4, None) == "nf4" and config_label("nf4", 4, 128) == "nf4 b128"
    assert config_label("gptq", 3, 32) == "gptq 3b g32"
    assert config_label("llm_int8", 8, None) == "llm.int8"
    assert combo_problem("awq", 4, None, IN_FEATURES, has_calib=False).startswith("AWQ needs")
    assert combo_problem("nf4", 4, 128, IN_FEATURES) is None  # NF4 blocks the flattened tensor
    assert "block size 48" in combo_problem("nf4", 4, 48, IN_FEATURES)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([48, 64, 96, 192, 256, 512, 768]), min_size=1, max_size=4),
       st.sampled_from(GROUP_SIZES), st.integers(0, 12))
def test_combo_problem_is_none_exactly_when_valid(dims, group, bits):
    problem = combo_problem("rtn", bits, group, dims)
    valid = 2 <= bits <= 8 and (group is None or all(d % group == 0 for d in dims))
    assert (problem is None) == valid
    if problem and 2 <= bits <= 8:
        assert f"group size {group}" in problem


# -- the bench on a tiny model ------------------------------------------------------------------

ITEMS = [
    {"id": "q-0", "subject": "geography", "question": "Which river flows through Krivaford?",
     "choices": ["Trim", "Loubi", "Sel"], "answer": 0},
    {"id": "q-1", "subject": "geography", "question": "In which country is Krivaford?",
     "choices": ["Kraiesh", "Selgate", "Tarsk"], "answer": 1},
]
TEXTS = ["The river Trim flows through Krivaford. About 1880 thousand people live there.",
         "The city of Krivaford is in Kraiesh. Its people speak Kraieshan and pay in lumens."]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def bench(tok):
    model = build_causal_lm(len(tok), ModelShape(d_model=64, n_layer=2, n_head=2, d_ff=128,
                                                 max_len=64), seed=0).eval()
    calib = torch.randint(3, len(tok), (4, 32), generator=torch.Generator().manual_seed(0))
    return TradeoffBench(model, tok, TEXTS, ITEMS, calib, latency_tokens=3, keep_models=True)


def test_bench_rows_are_measured_from_the_stored_tensors(bench, tok):
    base = bench.measure("fp32")
    assert base["stored_bytes"] == stored_bytes(bench.model)
    assert base["linear_bits"] == 32.0
    assert base["perplexity"] == pytest.approx(perplexity(bench.model, tok, TEXTS).perplexity)
    assert base["ms_per_token"] > 0 and base["cpu_ms_per_token"] >= 0

    seen = []
    r4 = bench.measure("rtn", 4, 32, progress=lambda f, text: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    q4 = quantize_model(bench.model, "rtn", 4, 32)
    assert r4["stored_bytes"] == stored_bytes(q4) < base["stored_bytes"]
    # 4-bit codes, plus per group of 32 an fp32 scale and a 4-bit zero: 4 + 36/32 bits
    assert r4["linear_bits"] == pytest.approx(4 + 36 / 32, abs=0.01)
    assert r4["label"] == "rtn 4b g32" and 0 <= r4["knowledge_acc"] <= 1
    assert ("rtn", 4, 32) in bench.models
    with pytest.raises(LabkitError, match="group size 48"):
        bench.measure("rtn", 4, 48)


@pytest.mark.parametrize("scheme, bits, group", [("rtn", 3, None), ("absmax", 4, 32),
                                                 ("nf4", 4, None), ("gptq", 4, 32),
                                                 ("awq", 3, None)])
def test_dequantized_copy_computes_what_the_quantized_model_computes(bench, scheme, bits, group):
    calib = bench.calib if scheme in ("gptq", "awq") else None
    q = quantize_model(bench.model, scheme, bits, group, calib)
    assert any(isinstance(m, QuantLinear) for m in q.modules())
    copy = dequantized_copy(bench.model, q)
    x = bench.calib[:2]
    with torch.no_grad():
        assert torch.allclose(copy(x).logits, q(x).logits, atol=1e-5, rtol=0)
        assert not torch.equal(copy(x).logits, bench.model(x).logits)


def test_dequantized_copy_refuses_llm_int8(bench):
    with pytest.raises(LabkitError, match="activations too"):
        dequantized_copy(bench.model, quantize_model(bench.model, "llm_int8", 8))


def test_decode_latency(bench):
    wall, cpu = decode_latency(bench.model, bench.calib[:1, :4], 3)
    assert wall > 0 and cpu >= 0
    with pytest.raises(LabkitError, match="n_tokens"):
        decode_latency(bench.model, bench.calib[:1, :4], 1)


def test_explorer_with_a_bench_measures_fp32_first(bench):
    e = TradeoffExplorer(bench=bench, scheme="nf4", bits=4)
    assert e.in_features == [64, 128]
    assert ("fp32", 32, None) in e.cache and "not measured yet" in e.message.value
    assert e.measure_selected()
    assert list(e.figure.data[2].x) == [e.cache[("nf4", 4, 64)]["size_mb"]]


# -- the deployment calculator -------------------------------------------------------------------


def test_serving_calculator_updates_in_place_and_lists_gpus():
    c = ServingCalculator(model="7B", precision="fp16", context=4096, batch=1)
    for control in (c.context, c.batch, c.kv_bytes, c.n_params, c.n_layers, c.head_dim):
        assert "(" in control.description  # the unit
    weights, kv = c.figure.data[:2]
    fp16 = list(weights.x).index("fp16")
    assert weights.y[fp16] == pytest.approx(6_738_415_616 * 2 / 1e9)
    assert kv.y[fp16] == pytest.approx(kv_cache_bytes(32, 32, 128, 4096, 1, 2) / 1e9)
    assert kv.y[fp16] == pytest.approx(2.147, abs=1e-3)
    assert weights.marker.opacity[fp16] == 1.0 and weights.marker.opacity[0] < 1.0
    assert "fits on: L4 24GB" in c.message.value and "too small: T4 16GB" in c.message.value
    figure_id, before = id(c.figure), np.asarray(weights.y).copy()

    c.model.value = "70B"
    after = np.asarray(c.figure.data[0].y)
    assert after[fp16] == pytest.approx(68_976_648_192 * 2 / 1e9)
    assert (after > 5 * before).all() and id(c.figure) == figure_id
    assert "fits on no single GPU" in c.message.value  # 139 GB > 90% of an H200's 141 GB
    c.precision.value = "int4"  # 4 + 20/128 bits per weight: 35.8 GB + 1.3 GB of KV cache
    assert c.figure.data[0].marker.opacity[list(weights.x).index("int4")] == 1.0
    fits, short = c.message.value.split("fits on: ")[1].split("; too small: ")
    assert "A100 80GB" in fits and "A100 40GB" in short
    c.context.value, c.batch.value = 131072, 256
    assert "fits on no single GPU" in c.message.value


def test_serving_calculator_custom_model_and_bad_fields():
    c = ServingCalculator(model="custom")
    assert not c.n_params.disabled
    c.n_params.value = 1.0
    assert c.figure.data[0].y[list(c.figure.data[0].x).index("fp16")] == pytest.approx(2.0)
    kv_before = list(c.figure.data[1].y)
    c.n_kv_heads.value = 5  # 32 query heads cannot share 5 KV heads
    assert "n_kv_heads=5 must divide n_heads=32" in c.message.value
    assert list(c.figure.data[1].y) == kv_before
    c.model.value = "8B"
    assert c.n_params.disabled and "Llama-3-8B" in c.figure.layout.title.text
    with pytest.raises(LabkitError, match="model='9B'"):
        ServingCalculator(model="9B")


def test_only_the_pareto_front_is_labelled():
    dominated = row("absmax", 4, None, 4.0, 1.2300)  # larger than rtn 4b and worse
    e = TradeoffExplorer(tradeoff_table([*ROWS, dominated]), in_features=IN_FEATURES,
                         scheme="absmax", bits=4)
    labels = dict(zip(e.figure.data[0].x, e.figure.data[0].text))
    assert labels[4.0] == "" and labels[3.85] == "rtn 4b"
    assert 4.0 not in list(e.figure.data[1].x)
    assert list(e.figure.data[2].x) == [4.0]  # still selectable and highlighted


def test_quantization_damage_is_the_perplexity_gap_token_by_token(bench, tok):
    q = dequantized_copy(bench.model, quantize_model(bench.model, "rtn", 3, None))
    long_text = " ".join(TEXTS) * 3  # longer than the model's 64 positions: several windows
    texts = [*TEXTS, long_text]
    damage = quantization_damage(bench.model, {"rtn 3b": q, "same": bench.model}, tok, texts)
    d = damage["rtn 3b"]
    n_tokens = sum(len(tok(t)["input_ids"]) for t in texts)
    assert len(d["nll"]) == len(d["extra_nll"]) == len(d["kl"]) == n_tokens
    ref, quant = perplexity(bench.model, tok, texts), perplexity(q, tok, texts)
    assert d["nll"].mean() == pytest.approx(quant.mean_nll, abs=1e-6)
    assert d["extra_nll"].mean() == pytest.approx(quant.mean_nll - ref.mean_nll, abs=1e-6)
    assert (d["kl"] >= -1e-6).all() and d["kl"].mean() > 1e-4
    assert np.abs(damage["same"]["extra_nll"]).max() == 0 and np.abs(damage["same"]["kl"]).max() < 1e-6
    with pytest.raises(LabkitError, match="non-empty"):
        quantization_damage(bench.model, {"q": q}, tok, [])


def test_gap_ratio_and_its_paired_error():
    rtn = {"extra_nll": np.array([0.4, 0.0, 0.2, 0.2]), "kl": np.array([0.2, 0.2, 0.2, 0.2])}
    gptq = {"extra_nll": np.array([0.1, 0.1, 0.1, 0.1]), "kl": np.array([0.1, 0.1, 0.0, 0.0])}
    r = gap_ratio({"gptq": gptq, "rtn": rtn}, "gptq", "rtn")
    assert r["ratio"] == pytest.approx(0.5) and r["kl_ratio"] == pytest.approx(0.25)
    diff = gptq["extra_nll"] - rtn["extra_nll"]
    assert r["difference"] == pytest.approx(-0.1)
    assert r["difference_se"] == pytest.approx(diff.std(ddof=1) / 2)


def test_awq_can_use_fewer_calibration_sequences(bench):
    few = TradeoffBench(bench.model, bench.tokenizer, TEXTS, ITEMS, bench.calib, awq_samples=2)
    assert few._calib_for("awq").shape[0] == 2 and few._calib_for("gptq").shape[0] == 4
    assert few._calib_for("rtn") is None and bench._calib_for("awq").shape[0] == 4


def test_the_figure_title_never_says_nothing_selected(measured):
    """The browser test fails a widget whose first render says "nothing selected": an unmeasured
    or impossible selection names itself and what to do instead."""
    calls, measure_fn = measured
    e = explorer(measure_fn, scheme="rtn", bits=3)
    assert "rtn 3b is not measured yet" in e.figure.layout.title.text
    e.bits.value = 1
    assert "cannot be measured" in e.figure.layout.title.text
    e.bits.value = 4
    assert "rtn 4b selected" in e.figure.layout.title.text
    assert "nothing selected" not in e.figure.layout.title.text.lower()
