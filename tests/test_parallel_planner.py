"""The 3D memory planner and the pipeline schedules: published numbers, formulas by hand, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.parallel import (
    PRESETS,
    Cluster,
    Layout,
    ModelSpec,
    PlanError,
    activation_bytes_per_layer,
    bubble_fraction,
    ideal_schedule,
    memory_plan,
    model_state_bytes,
    parameter_count,
    plan,
    suggest_layout,
    timeline_bubble,
)
from labkit.parallel.planner import GB, stage_parameters


@pytest.mark.parametrize("params, gb16, gb20", [(1e9, 16, 20), (7e9, 112, 140), (70e9, 1120, 1400)])
def test_mixed_precision_adam_table(params, gb16, gb20):
    assert sum(model_state_bytes(params).values()) / GB == pytest.approx(gb16)
    assert sum(model_state_bytes(params, fp32_grads=True).values()) / GB == pytest.approx(gb20)


def test_zero_stage_formulas_reproduce_the_zero_paper():
    # ZeRO paper, Figure 1: 7.5B parameters on 64 GPUs, K = 12
    p, n = 7.5e9, 64
    totals = [sum(model_state_bytes(p, n, z).values()) / GB for z in range(4)]
    assert totals == pytest.approx([120, 31.4, 16.6, 1.9], abs=0.05)
    z1, z2, z3 = (model_state_bytes(p, n, z) for z in (1, 2, 3))
    assert z1 == {"parameters": 2 * p, "gradients": 2 * p, "optimizer": 12 * p / n}
    assert z2 == {"parameters": 2 * p, "gradients": 2 * p / n, "optimizer": 12 * p / n}
    assert z3 == {"parameters": 2 * p / n, "gradients": 2 * p / n, "optimizer": 12 * p / n}


@settings(max_examples=60, deadline=None)
@given(
    h=st.sampled_from([64, 128, 768, 4096]), layers=st.integers(1, 96), v=st.integers(1, 200_000)
)
def test_gpt_parameter_formula(h, layers, v):
    gpt = ModelSpec("gpt", layers, h, heads=h // 64, vocab=v, mlp="gelu", tied=True)
    assert parameter_count(gpt) == h * v + layers * (12 * h**2 + 13 * h)


def test_presets_match_published_parameter_counts():
    assert parameter_count(PRESETS["7B"]) == 6_738_415_616  # Llama 2 7B, exactly
    published = {"1B": 1.236e9, "13B": 13.016e9, "70B": 70.554e9, "405B": 405.853e9}
    for name, count in published.items():
        assert parameter_count(PRESETS[name]) == pytest.approx(count, rel=1e-3)


def test_parameter_count_matches_transformers():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from labkit.models import ModelShape, build_causal_lm, count_parameters

    tiny = build_causal_lm(512, ModelShape(d_model=64, n_layer=2, n_head=4))
    assert parameter_count(PRESETS["tiny"]) == count_parameters(tiny) == 127_296
    # grouped-query attention and an untied head, as in Llama 3 (on the meta device: no memory)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        real = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    spec = ModelSpec("gqa", 3, 256, 8, 2, 704, 1000, 128, "swiglu", False)
    assert parameter_count(spec) == real


def test_activation_formula_by_hand():
    # GPT-3 175B shapes from Korthikanti et al.: s=2048, b=1, h=12288, a=96, t=8
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    sbh = s * b * h  # 25_165_824
    assert activation_bytes_per_layer(s, b, h, a) == sbh * (34 + 5 * 96 * 2048 / 12288)  # 114 sbh
    assert activation_bytes_per_layer(s, b, h, a) == 2_868_903_936
    assert activation_bytes_per_layer(s, b, h, a, t) == 23 * sbh  # 10 + 24/8 + 80/8
    assert activation_bytes_per_layer(s, b, h, a, t, sequence_parallel=True) == 14.25 * sbh
    assert activation_bytes_per_layer(s, b, h, a, t, True, "selective") == 4.25 * sbh
    assert activation_bytes_per_layer(s, b, h, a, t, True, "full") == 2 * sbh / 8


def test_plan_of_7b_on_one_gpu():
    p = memory_plan(PRESETS["7B"], Cluster(1, 1, 80), Layout(recompute="full"))
    n = 6_738_415_616
    assert (p.parameters_gb, p.gradients_gb, p.optimizer_gb) == pytest.approx(
        (2 * n / GB, 2 * n / GB, 12 * n / GB)
    )
    per_layer = 2 * 4096 * 1 * 4096  # full recomputation: each layer's input, 2 bytes
    assert p.activations_gb == pytest.approx(32 * per_layer / GB)
    assert p.bubble == 0 and not p.fits and p.total_gb > 107


def test_tp_divides_parameters_and_pp_splits_layers():
    spec, lay = PRESETS["13B"], Layout(micro_batches=16)
    one = memory_plan(spec, Cluster(1, 1, 80), lay)
    tp4 = memory_plan(spec, Cluster(4, 1, 80), Layout(tp=4, micro_batches=16))
    assert tp4.parameters_gb == pytest.approx(one.parameters_gb / 4)
    pp4 = memory_plan(spec, Cluster(4, 1, 80), Layout(pp=4, micro_batches=16))
    stages = stage_parameters(spec, 4)
    assert sum(stages) == parameter_count(spec)  # untied: the head is not a copy
    assert pp4.parameters_gb == pytest.approx(2 * max(stages) / GB)
    assert pp4.bubble == pytest.approx(3 / 19)


def test_pipeline_schedule_changes_activation_memory():
    spec, cluster = PRESETS["7B"], Cluster(4, 1, 80)
    gpipe = memory_plan(spec, cluster, Layout(pp=4, micro_batches=16, schedule="gpipe"))
    one_f_one_b = memory_plan(spec, cluster, Layout(pp=4, micro_batches=16, schedule="1f1b"))
    assert gpipe.activations_gb == pytest.approx(4 * one_f_one_b.activations_gb)  # m=16 vs p=4
    assert gpipe.bubble == one_f_one_b.bubble == pytest.approx(3 / 19)


@pytest.mark.parametrize(
    "cluster, layout, words",
    [
        (Cluster(0, 1, 80), Layout(), ["gpus_per_node=0", "at least 1"]),
        (Cluster(8, 0, 80), Layout(), ["nodes=0"]),
        (Cluster(8, 1, 0), Layout(dp=8), ["gpu_memory_gb=0"]),
        (Cluster(3, 1, 80), Layout(tp=3), ["tp=3", "heads=64", "valid tp: 1, 2, 4, 8"]),
        (Cluster(8, 12, 80), Layout(pp=96), ["pp=96", "layers=80", "1 to 80"]),
        (Cluster(8, 1, 80), Layout(dp=2, tp=2, pp=2, zero=9), ["zero=9", "0, 1, 2, 3"]),
        (Cluster(8, 2, 80), Layout(dp=2, tp=4, pp=1), ["dp*tp*pp = 2*4*1 = 8", "16 GPUs"]),
        (Cluster(8, 1, 80), Layout(dp=8, recompute="most"), ["recompute='most'", "selective"]),
        (
            Cluster(8, 1, 80),
            Layout(pp=8, schedule="interleaved", micro_batches=12),
            ["micro_batches=12", "multiple of pp=8"],
        ),
    ],
)
def test_bad_input_gives_a_clear_message(cluster, layout, words):
    result = plan("70B", cluster, layout)  # what the widget calls: never raises
    assert result.error and not result.fits
    for w in words:
        assert w in result.error
    assert "\n" not in result.error
    with pytest.raises(PlanError) as info:
        memory_plan(PRESETS["70B"], cluster, layout)
    assert isinstance(info.value, LabkitError) and str(info.value) == result.error


def test_bad_model_and_unknown_preset():
    assert (
        "hidden=100 is not divisible by heads=3"
        in plan(ModelSpec("x", 2, 100, 3), Cluster(1, 1, 80), Layout()).error
    )
    assert "presets: tiny, 1B" in plan("3B", Cluster(1, 1, 80), Layout()).error


def test_suggest_layout_finds_the_fewest_nodes():
    seven = suggest_layout("7B", Cluster(8, 4, 80), micro_batches=8)
    assert seven.fits and seven.cluster.nodes == 1 and seven.layout.pp == 1 and seven.layout.tp == 1
    big = suggest_layout("70B", Cluster(8, 16, 80), micro_batches=16)
    assert big.fits and big.error is None and big.gpus == big.cluster.gpus
    fewer = suggest_layout("70B", Cluster(8, big.cluster.nodes - 1, 80), micro_batches=16)
    assert not fewer.fits  # nothing fits on one node less
    assert "no layout on up to" in fewer.notes[-1]


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 6), m=st.integers(1, 12), schedule=st.sampled_from(["gpipe", "1f1b"]))
def test_ideal_schedules_have_the_formula_bubble(p, m, schedule):
    events = ideal_schedule(p, m, schedule)
    assert len(events) == 2 * p * m
    assert timeline_bubble(events) == pytest.approx(bubble_fraction(p, m), abs=1e-9)
    for s in range(p):  # every stage runs every micro-batch forward before its backward
        mine = [e for e in events if e["stage"] == s]
        for mb in range(m):
            f = next(e for e in mine if e["kind"] == "F" and e["microbatch"] == mb)
            b = next(e for e in mine if e["kind"] == "B" and e["microbatch"] == mb)
            assert f["end"] <= b["start"]


@pytest.mark.parametrize("p, k, v", [(2, 2, 2), (4, 2, 2), (4, 3, 2), (3, 1, 3)])
def test_interleaved_bubble(p, k, v):
    m = k * p
    events = ideal_schedule(p, m, "interleaved", chunks=v)
    assert len(events) == 2 * p * m * v
    assert timeline_bubble(events) == pytest.approx((p - 1) / (v * m + p - 1))
    assert timeline_bubble(events) < timeline_bubble(ideal_schedule(p, m, "1f1b"))


def test_1f1b_alternates_on_the_last_stage_gpipe_does_not():
    last = [e["kind"] for e in ideal_schedule(4, 8, "1f1b") if e["stage"] == 3]
    assert last[:4] == ["F", "B", "F", "B"]
    first = [e["kind"] for e in ideal_schedule(4, 8, "gpipe") if e["stage"] == 0]
    assert first == ["F"] * 8 + ["B"] * 8
