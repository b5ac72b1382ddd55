"""The worker scripts on 2 CPU processes (gloo): DDP = one process, ZeRO/FSDP shards 1/N,
tensor parallel = the unsharded layer, pipeline = the unpipelined model, resume = no crash."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.parallel import WorkerFailed, launch

pytestmark = pytest.mark.slow
TIMEOUT = 300  # 2 shared cores: generous, the jobs take 15-40 s


def _args(**kw):
    from labkit.parallel.workers.common import parser

    words = [w for k, v in kw.items() for w in (f"--{k.replace('_', '-')}", str(v))]
    return parser("test").parse_args(words)


def test_ddp_equals_one_process_on_the_global_batch():
    from labkit.parallel.workers.common import train_single

    r = launch("ddp", nproc=2, args={"steps": 3}, timeout=TIMEOUT, echo=None)
    r0, r1 = r.results
    params = r0["parameters"]
    assert params == 127_296
    # every rank applies the same averaged gradient...
    assert r0["grad_norm_after"] == r1["grad_norm_after"]
    assert r0["weight_sum"] == r1["weight_sum"] and r0["losses"] == r1["losses"]
    # ...computed from different local gradients, all-reduced in one bucket of fp32 gradients
    assert all(abs(a - b) > 1e-3 for a, b in zip(r0["grad_norm_before"], r1["grad_norm_before"]))
    assert r0["allreduce_bytes_per_step"] == [4 * params] * 3 and r0["buckets"] == 1
    # the single-process run on the whole batch, computed here independently
    _, ref_losses, _ = train_single(_args(steps=3))
    np.testing.assert_allclose(r0["losses"], ref_losses, rtol=0, atol=1e-5)
    assert r0["max_grad_diff_step0"] < 1e-6
    assert r0["max_weight_diff"] < 5e-4  # Adam magnifies rounding in near-zero gradients
    assert r0["tokens_per_s"] > 0 and r0["tokens_per_s_single"] > 0


def test_zero_and_fsdp_hold_one_nth_of_the_state():
    r = launch("zero", nproc=2, args={"steps": 2}, timeout=TIMEOUT, echo=None)
    p = r.results[0]["parameters"]
    for res in r.results:
        modes = res["modes"]
        for mode in ("zero2", "zero3"):  # FSDP2 shards dim 0 evenly: exactly 1/N here
            m = modes[mode]["measured"]
            assert m["gradients"] == 4 * p / 2 and m["optimizer"] == 8 * p / 2
            assert m["parameters"] == 4 * p / 2  # at rest, after the step
        assert modes["zero3"]["measured"]["parameters_in_step"] == 4 * p / 2
        assert modes["zero2"]["measured"]["parameters_in_step"] == 4 * p  # kept whole for backward
        assert modes["ddp"]["measured"] == {
            "parameters": 4 * p,
            "parameters_in_step": 4 * p,
            "gradients": 4 * p,
            "optimizer": 8 * p,
        }
        z1 = modes["zero1"]["measured"]
        assert z1["gradients"] == 4 * p and z1["optimizer"] == pytest.approx(8 * p / 2, rel=0.02)
        for mode in modes:  # sharding changes memory, not the math
            np.testing.assert_allclose(modes[mode]["losses"], modes["ddp"]["losses"], atol=1e-5)
    # ZeroRedundancyOptimizer splits whole tensors: uneven, but the shards add up to the whole
    assert sum(x["modes"]["zero1"]["measured"]["optimizer"] for x in r.results) == 8 * p


def test_tensor_parallel_layer_equals_the_unsharded_layer():
    r = launch("tp", nproc=2, timeout=TIMEOUT, echo=None)
    for res in r.results:
        assert res["max_output_diff"] < 1e-5
        assert res["max_input_grad_diff"] < 1e-5 and res["max_weight_grad_diff"] < 1e-5
        # Megatron: one all-reduce after attention and one after the MLP, mirrored in backward
        assert res["forward_collectives"] == {"all_reduce": 2}
        assert res["backward_collectives"] == {"all_reduce": 2}
        assert res["shapes"]["self_attn.q_proj.weight"] == {"local": [32, 64], "full": [64, 64]}
        assert res["shapes"]["mlp.down_proj.weight"] == {"local": [64, 80], "full": [64, 160]}
        assert res["heads_per_rank"] == 2


def test_pipeline_losses_equal_the_unpipelined_model():
    r = launch("pp", nproc=2, args={"steps": 2, "micro_batches": 4}, timeout=TIMEOUT, echo=None)
    ref = r.results[0]["reference_losses"]
    for name in ("gpipe", "1f1b"):
        np.testing.assert_allclose(r.results[1]["schedules"][name]["losses"], ref, atol=1e-5)
        for stage, res in enumerate(r.results):
            events = res["schedules"][name]["events"]
            kinds = [e["kind"] for e in events]
            assert sorted(e["microbatch"] for e in events if e["kind"] == "F") == [0, 1, 2, 3]
            assert kinds.count("B") == 4 and {e["stage"] for e in events} == {stage}
            assert all(e["end"] > e["start"] >= 0 for e in events)
            if name == "gpipe":
                assert kinds == ["F"] * 4 + ["B"] * 4
            elif stage == 1:  # the last stage of 1F1B turns each micro-batch around at once
                assert kinds == ["F", "B"] * 4
    # the stage 1 forward of a micro-batch starts after stage 0 finished it (activations sent)
    f0 = {
        e["microbatch"]: e for e in r.results[0]["schedules"]["1f1b"]["events"] if e["kind"] == "F"
    }
    f1 = {
        e["microbatch"]: e for e in r.results[1]["schedules"]["1f1b"]["events"] if e["kind"] == "F"
    }
    assert all(f1[mb]["start"] >= f0[mb]["end"] - 1.0 for mb in f0)  # 1 ms: clock alignment


def test_resume_after_a_crash_reproduces_the_losses(tmp_path):
    ckpt = tmp_path / "ckpt"
    crashed = launch(
        "checkpoint",
        nproc=2,
        args={"ckpt_dir": ckpt, "steps": 5, "crash_at": 3},
        timeout=TIMEOUT,
        echo=None,
        check=False,
    )
    assert crashed.status == "failed" and crashed.failed_rank == 1
    assert "simulated crash at step 3" in crashed.traceback
    assert [line.split(":")[0] for line in crashed.log if line.startswith("step")] == [
        "step 0",
        "step 1",
        "step 2",
    ]
    assert (ckpt / "latest").read_text() == "2"

    resumed = launch(
        "checkpoint", nproc=2, args={"ckpt_dir": ckpt, "steps": 5}, timeout=TIMEOUT, echo=None
    )
    res = resumed.results[0]
    assert res["resumed_from"] == 2 and res["steps"] == [3, 4]
    np.testing.assert_allclose(res["losses"], res["uninterrupted_losses"][3:], atol=1e-5)
    logged = [
        float(line.split("loss ")[1].split()[0]) for line in crashed.log if line.startswith("step")
    ]
    np.testing.assert_allclose(logged, res["uninterrupted_losses"][:3], atol=1e-4)


def test_torchrun_restarts_the_group_which_resumes(tmp_path):
    r = launch(
        "checkpoint",
        nproc=2,
        args={"ckpt_dir": tmp_path / "ckpt", "steps": 4, "crash_at": 2},
        max_restarts=1,
        timeout=TIMEOUT,
        echo=None,
    )
    res = r.results[0]
    assert r.ok and r.restarts == 1 and res["attempt"] == 1
    assert res["resumed_from"] == 1 and res["steps"] == [2, 3]
    assert any(line.startswith("resumed from") for line in r.log)
    np.testing.assert_allclose(res["losses"], res["uninterrupted_losses"][2:], atol=1e-5)


def test_dp_tp_grid_trains_like_one_process_and_holds_its_share():
    """2-D: tensor parallel inside rows of 2 ranks, FSDP across them, on a 2 x 2 DeviceMesh."""
    from labkit.parallel.workers.common import train_single

    r = launch("dp_tp", nproc=4, args={"steps": 3, "dp": 2, "tp": 2}, timeout=TIMEOUT, echo=None)
    r0 = r.results[0]
    assert r0["tp_groups"] == [[0, 1], [2, 3]] and r0["dp_groups"] == [[0, 2], [1, 3]]
    assert [tuple(x["coords"].values()) for x in r.results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    _, ref_losses, _ = train_single(_args(steps=3))
    for res in r.results:  # every rank reports the mean loss over the data slices
        np.testing.assert_allclose(res["losses"], ref_losses, rtol=0, atol=1e-5)
    # fp32 bytes: decoder matrices / (dp*tp), norms and the tied embedding / dp (FSDP only)
    d, ff, layers, vocab = 64, 160, 2, 512
    matrices = layers * (4 * d * d + 3 * d * ff)
    norms = (2 * layers + 1) * d
    expected = 4 * (matrices // 4 + norms // 2 + vocab * d // 2)
    assert r0["full_parameter_bytes"] == 4 * 127_296
    for res in r.results:
        assert res["bytes"]["parameters"] == res["bytes"]["gradients"] == expected
        assert res["bytes"]["optimizer"] == 2 * expected  # Adam's two moments
    with pytest.raises(WorkerFailed, match="must equal the 2 ranks"):
        launch("dp_tp", nproc=2, args={"steps": 1, "dp": 2, "tp": 2}, timeout=TIMEOUT, echo=None)
