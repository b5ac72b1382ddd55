"""Figures and widgets of lab 03: a control changes -> the figure's data changes."""

from __future__ import annotations

import pytest

from labkit.parallel import Cluster, Layout, ideal_schedule, plan
from labkit.parallel.figures import (
    ddp_grad_norm_figure,
    memory_breakdown_figure,
    pipeline_timeline_figure,
    zero_memory_figure,
)


def test_timeline_figure_from_events():
    events = ideal_schedule(2, 4, "1f1b", forward=1.5, backward=3.0)
    fig = pipeline_timeline_figure(events)
    assert (
        fig.layout.xaxis.title.text == "time (ms)"
        and fig.layout.yaxis.title.text == "pipeline stage"
    )
    assert "idle fraction 20.0%" in fig.layout.title.text  # (p-1)/(m+p-1) = 1/5
    fwd, bwd = fig.data
    assert fwd.name == "forward" and len(fwd.x) == len(bwd.x) == 8
    assert set(fwd.x) == {1.5} and set(bwd.x) == {3.0}
    stage0 = [t for t, y in zip(fwd.text, fwd.y) if y == "stage 0"]
    assert stage0 == ["0", "1", "2", "3"]


def test_memory_figures():
    p = plan("70B", Cluster(8, 8, 80), Layout(dp=8, tp=8, zero=3))
    fig = memory_breakdown_figure([p])
    assert [t.name for t in fig.data] == ["parameters", "gradients", "optimizer", "activations"]
    assert sum(t.y[0] for t in fig.data) == pytest.approx(p.total_gb)
    assert fig.layout.shapes[0].y0 == 80 and "(GB)" in fig.layout.yaxis.title.text
    zero = {
        "world": 2,
        "parameters": 100,
        "modes": {
            "zero3": {
                "measured": {
                    "parameters": 200,
                    "parameters_in_step": 200,
                    "gradients": 200,
                    "optimizer": 400,
                },
                "formula": {"parameters": 200.0, "gradients": 200.0, "optimizer": 400.0},
            }
        },
    }
    zfig = zero_memory_figure(zero)
    assert list(zfig.data[0].x) == ["ZeRO-3 measured", "ZeRO-3 formula"]
    assert list(zfig.data[2].y) == [0.4, 0.4] and "(kB)" in zfig.layout.yaxis.title.text
    g = ddp_grad_norm_figure([{"rank": 0, "grad_norm_before": [2, 3], "grad_norm_after": [1, 1]}])
    assert [t.name for t in g.data] == ["rank 0 before", "rank 0 after"]


def test_bubble_widget_updates_the_timeline():
    from widgets.parallel import pipeline_bubble_widget

    w = pipeline_bubble_widget(stages=4, micro_batches=8)
    assert "27.3%" in w.status.value  # 3/11
    before = list(w.figure.data[0].base)
    w.controls["stages"].value = 2
    assert len(w.figure.data[0].base) == 2 * 8 and list(w.figure.data[0].base) != before
    assert "11.1%" in w.status.value and set(w.figure.layout.yaxis.categoryarray) == {
        "stage 0",
        "stage 1",
    }
    w.controls["schedule"].value = "interleaved"
    assert (
        len(w.figure.data[0].base) == 2 * 8 * 2
        and "(p&minus;1)/(2&middot;8+p&minus;1)" in w.status.value
    )
    assert not w.controls["chunks"].disabled
    w.controls["micro_batches"].value = 5  # not a multiple of 2 stages
    assert "micro_batches=5 is not a multiple of stages=2" in w.status.value
    assert len(w.figure.data[0].base) == 0
    for c in w.controls.values():
        assert c.description


def test_planner_widget_controls_change_the_bar():
    from widgets.parallel import planner_widget

    w = planner_widget()
    assert "fits" in w.status.value and w.plan.error is None  # opens on a valid 3D layout
    assert (w.plan.layout.dp, w.plan.layout.tp, w.plan.layout.pp) == (2, 8, 4)
    params0 = w.figure.data[0].y[0]
    w.controls["zero"].value = 3
    assert w.figure.data[0].y[0] == pytest.approx(params0 / 2)  # parameters sharded over DP=2
    w.controls["gpu_memory_gb"].value = 40
    assert (
        w.figure.layout.shapes[0].y0 == 40
        and "GPU memory 40 GB" in w.figure.layout.annotations[0].text
    )
    w.controls["tp"].value = 3
    assert "tp=3 does not divide heads=64" in w.status.value and w.figure.data[0].y[0] == 0
    w.controls["tp"].value = 8
    w.controls["model"].value = "7B"
    assert w.controls["layers"].value == 32 and w.controls["hidden"].value == 4096
    w.controls["layers"].value = 16  # editing a field makes a custom model
    assert w.controls["model"].value == "custom" and w.plan.model.layers == 16
    w.controls["gpus_per_node"].value = 0
    assert "gpus_per_node=0" in w.status.value


def test_planner_widget_suggest_sets_a_fitting_layout():
    from widgets.parallel import planner_widget

    w = planner_widget(model="70B", cluster=Cluster(8, 16, 80), layout=Layout(dp=128, zero=0))
    assert "does not fit" in w.status.value
    w.suggest_button.click()
    assert w.plan.fits and "fits" in w.status.value
    assert w.controls["dp"].value * w.controls["tp"].value * w.controls["pp"].value == (
        8 * w.controls["nodes"].value
    )
    assert w.controls["nodes"].value < 16


@pytest.mark.parametrize("preset", ["tiny", "1B", "7B", "13B", "70B", "405B"])
def test_planner_widget_opens_every_preset_on_a_valid_layout(preset):
    from widgets.parallel import nearest_valid_layout, planner_widget

    w = planner_widget()
    w.controls["model"].value = preset
    assert w.plan.error is None and "cannot compute" not in w.status.value
    assert w.plan.gpus == 64  # the cluster stays; DP takes the GPUs TP and PP no longer use
    if preset == "tiny":  # 4 heads and 2 layers: TP 8 and PP 4 cannot stay
        assert "changed to DP8 TP4 PP2" in w.status.value and w.figure.data[0].y[0] > 0
    assert nearest_valid_layout(w.plan.model, w.cluster(), w.layout()) == w.layout()


def test_lab_03_own_model_cell_runs_the_tested_code_only_when_asked():
    """The notebook's "Your own model" cell is labkit.yourmodel's (which
    tests/test_standard_models.py runs on a local GPT-2), guarded so that CI never runs it."""
    import textwrap
    from pathlib import Path

    import nbformat

    from labkit.yourmodel import cell

    path = Path(__file__).resolve().parents[1] / "labs" / "03_distributed_training.ipynb"
    source = next(c.source for c in nbformat.read(path, as_version=4).cells
                  if c.get("id") == "own-model")
    assert source.startswith("RUN_OWN_MODEL = False")
    assert textwrap.indent(cell("03").code.rstrip("\n"), "    ") in source
    assert "\nif RUN_OWN_MODEL:\n" in source
