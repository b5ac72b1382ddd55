"""The foundation: profile, capability detection, samples, exercise checks, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import labkit
from labkit import LabkitError
from labkit.check import check_choice, check_function, check_value
from labkit.env import detect
from labkit.runner import find_labs


def test_default_profile_on_this_machine_is_cpu(monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    prof = labkit.profile()
    expected = "gpu" if detect().device == "cuda" else "cpu"
    assert prof.name == expected
    if prof.name == "cpu":
        assert prof.device == "cpu" and prof.train_dtype == "float32" and not prof.grad_scaler


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "gpu")
    assert labkit.profile().name == "gpu"
    monkeypatch.setenv("LABKIT_PROFILE", "CPU ")
    assert labkit.profile().name == "cpu"


def test_unknown_profile_is_one_clear_error():
    with pytest.raises(LabkitError) as err:
        labkit.profile("tpu")
    msg = str(err.value)
    assert "'tpu'" in msg and "cpu" in msg and "gpu" in msg and "\n" not in msg


def test_gpu_profile_dtype_follows_the_device(monkeypatch):
    from labkit import profiles

    class Caps:
        device, bf16 = "cuda", False

    monkeypatch.setattr(profiles, "detect", lambda: Caps)
    prof = profiles.profile("gpu")
    assert (prof.train_dtype, prof.grad_scaler) == ("float16", True)  # a T4: fp16 + scaler
    Caps.bf16 = True
    assert profiles.profile("gpu").train_dtype == "bfloat16"


def test_settings_of_unknown_stage_is_clear():
    with pytest.raises(LabkitError, match="unknown stage 'nope'"):
        labkit.profile("cpu").settings("nope")


def test_capabilities_are_consistent():
    caps = detect()
    assert caps.device in ("cpu", "cuda", "mps")
    assert caps.cpu_cores >= 1 and caps.ram_gib > 0.5
    assert (caps.gpu_name is None) == (caps.device != "cuda")


def test_seed_everything_makes_torch_repeat():
    import torch

    labkit.seed_everything(3)
    a = torch.randn(5)
    labkit.seed_everything(3)
    assert torch.equal(a, torch.randn(5))


def test_missing_sample_names_what_exists():
    with pytest.raises(LabkitError) as err:
        labkit.sample_path("corpus/nope.jsonl")
    msg = str(err.value)
    assert "corpus/nope.jsonl" in msg and "available:" in msg and "build-samples" in msg


def test_check_value_reports_difference():
    assert check_value("x", 0.5, 0.5)
    bad = check_value("x", 1.0, 0.5, hint="halve it")
    assert not bad and "expected 0.5" in str(bad) and "halve it" in str(bad)
    assert not check_value("x", None, 1.0)
    assert "not filled in" in str(check_value("x", None, 1.0))


def test_check_function_names_the_failing_case():
    def wrong(a, b):
        return a - b

    fb = check_function(wrong, lambda a, b: a + b, [(1, 0), (1, 2)])
    assert not fb and "(1, 2)" in str(fb) and "returned -1" in str(fb)
    assert check_function(lambda a, b: b + a, lambda a, b: a + b, [(1, 2)])

    def raises(a, b):
        raise ZeroDivisionError("boom")

    assert "ZeroDivisionError" in str(check_function(raises, lambda a, b: a, [(1, 2)]))

    def todo(a, b):
        raise NotImplementedError

    assert "not implemented" in str(check_function(todo, lambda a, b: a, [(1, 2)]))


def test_check_choice():
    assert check_choice("q", "b", "b")
    assert "not one of the options" in str(check_choice("q", "z", "b", options=["a", "b"]))


def test_unknown_lab_lists_valid_labs():
    with pytest.raises(LabkitError) as err:
        find_labs(["99"])
    assert "'99'" in str(err.value) and "00" in str(err.value)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, needle", [
    (("run-labs", "--only", "99"), "no lab matches '99'"),
    (("run-labs", "--only", "00", "--profile", "tpu"), "unknown profile 'tpu'"),
])
def test_cli_bad_input_is_one_line(args, needle):
    result = _cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("labkit: error:") and needle in lines[0]


def test_cli_missing_data_sample_is_one_line(tmp_path, monkeypatch):
    code = "import labkit; labkit.sample_path('corpus/train.jsonl.gz')"
    env = {**__import__("os").environ, "LABKIT_DATA": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "corpus/train.jsonl.gz" in result.stderr


def test_doctor_table_has_a_row_per_dependency():
    from labkit.doctor import dependency_rows, format_rows, run_doctor

    rows = run_doctor()
    names = {r.item.split(" ")[0] for r in dependency_rows()}
    assert {"torch", "transformers", "trl", "peft", "bitsandbytes", "ipywidgets"} <= names
    text = format_rows(rows)
    assert "status" in text and "OK" in text
    assert all(r.status in ("OK", "WARN", "FAIL") for r in rows)
    assert all(r.fix for r in rows if r.status == "FAIL")


def test_doctor_flags_a_version_outside_the_range(monkeypatch):
    from labkit import doctor

    real = doctor.metadata.version
    monkeypatch.setattr(doctor.metadata, "version",
                        lambda name: "1.0.0" if name == "transformers" else real(name))
    row = next(r for r in doctor.dependency_rows() if r.item == "transformers")
    assert row.status == "FAIL" and "needs" in row.found and row.fix


def test_network_is_blocked_in_tests():
    import socket

    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_offline_env_is_default():
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_runner_measures_a_tiny_notebook(tmp_path):
    import nbformat

    from labkit.runner import run_lab

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = bytearray(50_000_000)\nprint(len(x))"),
                                         nbformat.v4.new_code_cell(busy)])
    good = tmp_path / "98_tiny.ipynb"
    nbformat.write(nb, good)
    res = run_lab(good, cell_timeout=60)
    assert res.status == "ok" and res.wall_s > 0 and res.peak_mib > 40
    assert 1.0 <= res.cpu_s <= res.wall_s * 2 + 1  # the busy cell's CPU second is counted
    nb.cells.append(nbformat.v4.new_code_cell("1/0"))
    bad = tmp_path / "99_bad.ipynb"
    nbformat.write(nb, bad)
    res = run_lab(bad, cell_timeout=60)
    assert res.status == "error" and "ZeroDivisionError" in res.detail
    assert json.dumps(res.as_dict())


def test_pinning_refuses_a_checked_cell_that_returns_html():
    import nbformat

    from labkit.runner import CHECK_MARK, pinned_outputs

    cell = nbformat.v4.new_code_cell(f"{CHECK_MARK}\ntable")
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "  a\n0 1",
                                                                   "text/html": "<table/>"})]
    with pytest.raises(LabkitError, match="text/html besides text.*print"):
        pinned_outputs(cell)
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "0.5"})]
    assert pinned_outputs(cell)[0].data == {"text/plain": "0.5"}


def test_bitsandbytes_hub_kernel_notice_is_quiet_and_other_messages_pass(caplog):
    # bitsandbytes logs this from inside its import on AVX512-BF16 CPUs when the optional Hub
    # kernel cannot be fetched (offline); labkit drops that one message and nothing else.
    import logging

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make "
                    "sure you already `pip install kernels`", "No module named 'kernels'")
        log.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]


def test_importing_bitsandbytes_after_labkit_writes_nothing_to_stderr():
    pytest.importorskip("bitsandbytes")
    done = subprocess.run([sys.executable, "-c", "import labkit, bitsandbytes.functional"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "kernels-community" not in done.stderr, done.stderr
