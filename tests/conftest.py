"""Test-wide guards: no network, offline hubs, deterministic threads."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("LABKIT_PROFILE", "cpu")

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and self.family in (socket.AF_INET, socket.AF_INET6):
        try:
            ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise OSError(f"network access blocked in tests: connect to {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, request):
    """Every test runs with outbound connections refused (loopback stays open for servers)."""
    if request.node.get_closest_marker("network") is None:
        monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    yield


# Test modules whose assertions compare numbers that come out of float reductions or training:
# `make test-portable` reruns them under another ATEN_CPU_CAPABILITY, where the last bits differ.
NUMERIC_MODULES = {
    "test_align_dpo", "test_align_losses", "test_align_ppo", "test_align_reward", "test_align_rlhf",
    "test_align_sft", "test_evaluation_multiple_choice", "test_evaluation_perplexity",
    "test_lab05_runs", "test_parallel_workers", "test_precision", "test_pretrain_loop",
    "test_pretrain_objectives", "test_pretrain_scaling", "test_quant_apply", "test_quant_awq",
    "test_quant_gptq", "test_quant_llm_int8", "test_quant_nf4", "test_quant_schemes",
    "test_schedules", "test_standard_models",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in NUMERIC_MODULES:
            item.add_marker(pytest.mark.numeric)


@pytest.fixture
def bnb_fp32_path():
    """Sets a bitsandbytes model's 4-bit layers to dequantize and multiply in their compute
    dtype, the path every CPU without AVX512-BF16 takes; with it, bitsandbytes 0.50 switches an
    eval-mode layer to a fused bf16 kernel on its first forward pass
    (`labkit.env.bnb_cpu_4bit_fused_bf16`), and exact comparisons become bf16-rounding ones."""

    def fp32_path(model):
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return model

    return fp32_path
