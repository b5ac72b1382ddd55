"""benchmarks/gpu_check.py on the CPU: the smoke run through every part, and the pieces a GPU run
depends on (peak table, forced fp16 profile, T4's missing bf16, the lab cap, the wheelhouse).

The GPU run itself happens once on a lent machine; these tests make sure that what it executes
besides the CUDA calls works, and that its comparisons can fail."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

from labkit import profiles
from labkit.env import cuda_has_bf16
from labkit.errors import LabkitError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ----------------------------------------------------------------------------------------------
# the whole smoke run


@pytest.mark.slow
def test_cpu_smoke_runs_every_part_and_says_what_it_skipped(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LABKIT_NO_BF16", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert report["mode"] == "cpu-smoke"
    assert {k: v["status"] for k, v in parts.items()} == dict.fromkeys(
        ["card", "matmul", "quant", "bnb_load", "fp16_vs_bf16", "labs"], "ok")
    assert parts["card"]["forced_fp16_ok"] is True

    matmul = parts["matmul"]["results"]
    assert {(r["dtype"], r["n"]) for r in matmul} == {
        (d, n) for d in ("fp32", "tf32", "bf16", "fp16", "fp8") for n in (64, 128)}
    assert all(r["tflops"] > 0 and r["share"] is None for r in matmul)  # no CPU peak to share

    # The CPU kernels agree with labkit bit for bit (tests/test_quant_*.py), so the same
    # comparison code that will read the CUDA kernels must report exact here.
    quant = parts["quant"]
    assert quant["kernels"] == "CPU kernels"
    assert len(quant["nf4"]) == 4 and all(c["bit_exact"] for c in quant["nf4"])
    assert len(quant["int8"]) == 4 and all(c["bit_exact"] for c in quant["int8"])
    # fp16-exact inputs: 1.9e-5 measured; tests/test_quant_llm_int8.py bounds it by 3e-5
    assert all(c["linear8bitlt_max_diff_rel"] <= 3e-5 for c in quant["int8"])

    load = parts["bnb_load"]
    assert load["int8"]["layers"] == 42 and load["int8"]["layers_exact"] == 42
    assert abs(load["int8"]["loss"] - load["fp32_loss"]) < 0.01  # measured 3e-4

    runs = parts["fp16_vs_bf16"]["runs"]
    assert [r["dtype"] for r in runs] == ["float16", "bfloat16"]
    for r in runs:
        assert 0 <= r["skipped_steps"] <= r["steps"] == 6
        assert 5 < r["final_eval_loss"] < 9  # ln(3208) = 8.07 at the start
    assert parts["fp16_vs_bf16"]["curve_max_abs_diff"] < 0.05  # measured 2e-4 over 6 steps

    (lab,) = parts["labs"]["labs"]
    assert lab["status"] == "ok" and lab["cells_run"] == 2
    assert lab["cuda_initialized"] is False and lab["peak_gpu_alloc_mib"] == 0
    assert lab["resets_wrapped"] is True  # the kernel's torch.cuda reset notes the peak first
    assert gone(lab["kernel_pid"])
    assert [c["first_line"] for c in lab["slowest_cells"]].count("print(int(torch.ones(3).sum()))") == 1

    skipped = " | ".join(report["skipped"])
    for what in ("peak shares", "CUDA kernels", "nf4 load", "fp16 vs bf16 on a GPU",
                 "labs under the gpu profile"):
        assert what in skipped
    assert "part  " in proc.stdout and "verdict" in proc.stdout and "not done in this run" in proc.stdout


def test_without_cuda_the_gpu_run_refuses(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr


def test_bad_arguments_name_what_is_valid(gc, capsys):
    for argv, message in ((["--budget-s", "0"], "--budget-s"),
                          (["--skip", "labs,warp"], "warp: unknown part; valid: bnb_load")):
        with pytest.raises(SystemExit):
            gc.parse_args(argv)
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the lab child: cap, kill, cell log


@pytest.mark.slow
def test_a_lab_over_its_cap_is_killed_with_its_kernel(gc, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    # each cell stays under the per-cell timeout (cap - 5 s): only the cap can stop the lab
    nb.cells = [nbformat.v4.new_code_cell("x = 1")] + [
        nbformat.v4.new_code_cell("import time\ntime.sleep(25)") for _ in range(3)]
    path = tmp_path / "98_sleeps.ipynb"
    nbformat.write(nb, path)
    start = time.perf_counter()
    row = gc.run_one_lab(path, "cpu", cap_s=45, workdir=tmp_path)
    assert time.perf_counter() - start < 75
    assert row["status"] == "timeout" and row["detail"].startswith("killed at the 45 s cap"), row
    assert 1 <= row["cells_run"] <= 2 and row["slowest_cells"][-1]["first_line"] == "x = 1"
    assert gone(row["kernel_pid"])


class FakeCuda:
    """torch.cuda's allocator statistics, as a lab sees them."""

    def __init__(self):
        self.initialized, self.allocated, self.peak = False, 0, 0

    def is_initialized(self):
        return self.initialized

    def allocate(self, n):
        self.initialized, self.allocated = True, self.allocated + n
        self.peak = max(self.peak, self.allocated)

    def max_memory_allocated(self):
        return self.peak

    def max_memory_reserved(self):
        return self.peak + 1

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated


def test_cell_log_keeps_the_lab_peak_across_the_labs_own_resets(gc, tmp_path, monkeypatch):
    log = tmp_path / "cells.json"
    monkeypatch.setenv(gc.CELL_LOG_ENV, str(log))
    events = {}
    shell = SimpleNamespace(events=SimpleNamespace(register=lambda name, fn: events.setdefault(name, fn)))
    exec(gc.CELL_LOG_STARTUP, {"get_ipython": lambda: shell})
    cuda = FakeCuda()
    cell = SimpleNamespace(success=True, info=SimpleNamespace(raw_cell="# set-up\nimport torch"))

    monkeypatch.delitem(sys.modules, "torch")  # the kernel before a cell imports torch
    events["pre_run_cell"](None)  # no torch yet: nothing to wrap, nothing to read
    events["post_run_cell"](cell)
    first = json.loads(log.read_text())
    assert first["cuda_initialized"] is False and first["max_memory_allocated"] == 0
    assert first["resets_wrapped"] is False and first["cells"][0]["first_line"] == "import torch"

    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    for step in range(2):  # a cell that peaks at 900, frees, and measures a block after a reset
        events["pre_run_cell"](None)
        cuda.allocate(900)
        cuda.allocate(-800)
        sys.modules["torch"].cuda.reset_peak_memory_stats()
        cuda.allocate(50)
        events["post_run_cell"](SimpleNamespace(success=step == 0, info=None))
    record = json.loads(log.read_text())
    # 100 + 50 left after the first cell, +900 in the second: 1,050 at the lab's peak
    assert cuda.max_memory_allocated() == 300  # the allocator alone forgot it at the reset
    assert record["max_memory_allocated"] == 1050 and record["max_memory_reserved"] == 1051
    assert record["cuda_initialized"] is True and record["resets_wrapped"] is True
    assert [c["ok"] for c in record["cells"]] == [True, True, False]
    assert record["pid"] == os.getpid()


def test_device_memory_sampler_reports_the_rise_above_its_start(gc, tmp_path):
    counter = tmp_path / "n"
    counter.write_text("1000")
    bump = (f"import pathlib; p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 100; "
            "p.write_text(str(n)); print(n)")
    with gc.DeviceMemorySampler([sys.executable, "-c", bump], interval=0.01) as sampler:
        time.sleep(1.5)
    last = int(counter.read_text())
    assert last >= 1300  # it sampled at least three times
    assert sampler.base == 1100 and sampler.peak == last and sampler.used_mib == last - 1100
    with gc.DeviceMemorySampler(["no-such-nvidia-smi-here"]) as missing:
        pass
    assert missing.available is False and missing.used_mib is None


# ----------------------------------------------------------------------------------------------
# the peak table


@pytest.mark.parametrize("name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L4", "L4"),
    ("Tesla T4", "T4"), ("NVIDIA A10", "A10"),
    ("NVIDIA A10G", None), ("NVIDIA L40S", None), ("NVIDIA GH200 480GB", None), (None, None),
])  # fmt: skip
def test_card_names_map_to_their_data_sheet(gc, name, card):
    found, peaks = gc.card_peaks(name)
    assert found == card
    if card:
        assert peaks["fp32"] < peaks["fp16"]  # tensor cores beat the fp32 units on every card
        assert peaks.get("bf16", peaks["fp16"]) == peaks["fp16"]  # same rate where both exist


def test_peak_shares(gc):
    _, h100 = gc.card_peaks("NVIDIA H100 80GB HBM3")
    assert gc.peak_share(692.65, "bf16", h100) == pytest.approx(0.70)
    assert gc.peak_share(1979 / 2, "fp8", h100) == pytest.approx(0.5)
    _, t4 = gc.card_peaks("Tesla T4")
    assert gc.peak_share(10.0, "bf16", t4) is None and gc.peak_share(10.0, "fp8", t4) is None
    assert gc.peak_share(float("nan"), "fp16", t4) is None


# ----------------------------------------------------------------------------------------------
# the comparisons can fail


def test_a_flipped_nf4_code_is_reported(gc):
    F = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert all(c["equal"] for c in gc.compare_nf4(w, packed, state).values())
    packed = packed.clone()
    packed.view(-1)[5] ^= 0x10  # one code's lowest bit, in a high nibble
    state.absmax = state.absmax.clone()
    state.absmax[3] *= 1.5
    checks = gc.compare_nf4(w, packed, state)
    assert checks["packed"] == {"equal": False, "detail": "1 of 1024 differ"}
    assert checks["absmax"]["equal"] is False and checks["absmax"]["detail"].startswith("1 of 32 differ")
    assert gc.same_bits(torch.zeros(3), torch.zeros(3, dtype=torch.float16)) == (
        False, "dtype torch.float32 vs torch.float16")


def test_loaded_nf4_layers_are_compared_with_labkit(gc):
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 32))
    q = torch.nn.Sequential(*[
        bnb.nn.Linear4bit(lin.in_features, lin.out_features, quant_type="nf4",
                          compress_statistics=dq) for lin, dq in zip(ref, (False, True))])
    for lin, qlin in zip(ref, q):
        qlin.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False,
                                        quant_type="nf4",
                                        compress_statistics=qlin.weight.compress_statistics)
    q = q.to("cpu")  # quantizes
    assert gc.compare_loaded_weights(q, ref, "nf4", torch.float32) == (2, 2, [])
    with torch.no_grad():
        ref[1].weight[0, 0] += 0.5  # labkit now quantizes another weight than bnb holds
    exact, total, misses = gc.compare_loaded_weights(q, ref, "nf4", torch.float32)
    assert (exact, total) == (1, 2) and misses[0].startswith("1: ")


# ----------------------------------------------------------------------------------------------
# the forced fp16 profile and the T4's bf16


def fake_caps(device="cuda", bf16=True):
    return SimpleNamespace(device=device, bf16=bf16)


def test_forced_fp16_profile_on_a_bf16_card(monkeypatch):
    monkeypatch.setattr(profiles, "detect", lambda: fake_caps())
    monkeypatch.delenv("LABKIT_NO_BF16", raising=False)
    native = profiles.profile("gpu")
    assert (native.train_dtype, native.grad_scaler) == ("bfloat16", False)
    forced = profiles.profile("gpu", force_fp16=True)
    assert (forced.device, forced.train_dtype, forced.grad_scaler) == ("cuda", "float16", True)
    assert forced.autocast_dtype is torch.float16 and "loss scaling" in forced.describe()
    for value, dtype in (("1", "float16"), ("true", "float16"), ("0", "bfloat16"), ("", "bfloat16")):
        monkeypatch.setenv("LABKIT_NO_BF16", value)
        assert profiles.profile("gpu").train_dtype == dtype
    monkeypatch.setenv("LABKIT_NO_BF16", "1")
    assert profiles.profile("gpu", force_fp16=False).train_dtype == "bfloat16"  # argument wins
    assert profiles.profile("cpu").train_dtype == "float32"  # the CPU trains in fp32 regardless
    monkeypatch.setattr(profiles, "detect", lambda: fake_caps(bf16=False))  # a T4
    monkeypatch.delenv("LABKIT_NO_BF16")
    assert (profiles.profile("gpu").train_dtype, profiles.profile("gpu").grad_scaler) == ("float16", True)


def test_no_bf16_variable_must_be_a_boolean(monkeypatch):
    monkeypatch.setenv("LABKIT_NO_BF16", "maybe")
    with pytest.raises(LabkitError, match=r"LABKIT_NO_BF16='maybe' is not a boolean; valid: 1, true"):
        profiles.profile("cpu")


@pytest.mark.parametrize("major, emulated, expected", [(7, True, False), (8, True, True), (9, False, True)])
def test_a_t4_has_no_bf16_even_though_torch_can_emulate_it(monkeypatch, major, emulated, expected):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda d: emulated)
    assert torch.cuda.is_bf16_supported() is (major >= 8 or emulated)  # what torch answers
    assert cuda_has_bf16() is expected


# ----------------------------------------------------------------------------------------------
# the wheelhouse for the bare GPU image


def test_every_device_package_has_a_tested_pin(gc):
    pins = gc.pinned_versions(gc.DEVICE_PACKAGES)
    assert pins["bitsandbytes"] == "0.50.2" and len(pins) == len(gc.DEVICE_PACKAGES)
    with pytest.raises(SystemExit, match="no pin in constraints.txt for not-a-package"):
        gc.pinned_versions(["not-a-package"])


def test_slim_wheel_keeps_cuda13_and_cpu_and_fixes_record(gc, tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
             "bitsandbytes/libbitsandbytes_cuda118.so", "bitsandbytes/libbitsandbytes_cuda126.so",
             "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes/libbitsandbytes_cuda132.so",
             "bitsandbytes/libbitsandbytes_rocm72.so"]
    record = "bitsandbytes-0.50.2.dist-info/RECORD"
    with zipfile.ZipFile(wheel, "w") as z:
        for n in names:
            z.writestr(n, b"x" * 1000)
        z.writestr(record, "\n".join(f"{n},sha256=abc,1000" for n in names) + f"\n{record},,\n")
    before, after = gc.slim_bitsandbytes_wheel(wheel)
    assert after < before
    kept = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
            "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes/libbitsandbytes_cuda132.so"]
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == sorted([*kept, record])
        listed = [line.split(",")[0] for line in z.read(record).decode().splitlines()]
    assert listed == [*kept, record]
