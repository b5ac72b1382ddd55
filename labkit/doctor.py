"""`labkit doctor`: OK/WARN/FAIL per dependency, device and capability, with the fix for each."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import Requirement

from .samples import REPO_ROOT, data_dir

DIST = "llm-pipeline-labs"
FIX_INSTALL = "run `make lab` (or: pip install -c constraints.txt -e '.[dev]')"


@dataclass
class Row:
    item: str
    status: str  # OK, WARN or FAIL
    found: str
    fix: str = ""


def tested_versions() -> dict[str, str]:
    """The exact versions of constraints.txt (the tested set), by normalised name."""
    path = REPO_ROOT / "constraints.txt"
    pins: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.split("#")[0].split(";")[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def dependency_rows(extras: tuple[str, ...] = ("dev",)) -> list[Row]:
    try:
        requires = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return [Row(DIST, "FAIL", "not installed", FIX_INSTALL)]
    pins = tested_versions()
    rows = []
    for text in requires:
        req = Requirement(text)
        extra = None
        if req.marker is not None:
            extra = next((e for e in extras if req.marker.evaluate({"extra": e})), None)
            if extra is None and not req.marker.evaluate({"extra": ""}):
                continue
        label = req.name + (f" [{extra}]" if extra else "")
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            rows.append(Row(label, "WARN" if extra else "FAIL", "missing", FIX_INSTALL))
            continue
        base = version.split("+")[0]
        if req.specifier and not req.specifier.contains(base, prereleases=True):
            rows.append(Row(label, "FAIL", f"{version} (needs {req.specifier})", FIX_INSTALL))
            continue
        tested = pins.get(_norm(req.name))
        if tested and tested.split("+")[0] != base:
            rows.append(Row(label, "WARN", f"{version} (tested: {tested})", "pip install -c constraints.txt -e ."))
        else:
            rows.append(Row(label, "OK", version))
    return rows


def machine_rows() -> list[Row]:
    from .env import detect
    from .profiles import profile

    rows = []
    py = sys.version_info
    rows.append(Row("python", "OK" if py >= (3, 10) else "FAIL", sys.version.split()[0],
                    "" if py >= (3, 10) else "install Python 3.10 or newer"))
    caps = detect()
    if caps.device == "cuda":
        rows.append(Row("device", "OK", f"cuda: {caps.gpu_name}, {caps.gpu_memory_gib:.0f} GiB, sm {caps.compute_capability}"))
    else:
        rows.append(Row("device", "OK", f"{caps.device} (no CUDA GPU: labs use the cpu profile)"))
    rows.append(Row("cpu cores / RAM", "OK" if caps.ram_gib >= 1.9 else "WARN",
                    f"{caps.cpu_cores} cores, {caps.ram_gib:.1f} GiB",
                    "" if caps.ram_gib >= 1.9 else "labs need about 2 GiB of memory"))
    rows.append(Row("bf16", "OK" if caps.bf16 else "WARN", str(caps.bf16),
                    "" if caps.bf16 else "this GPU has no bf16: the gpu profile trains in fp16 with loss scaling"))
    rows.append(Row("fp16", "OK" if caps.fp16 else "WARN", str(caps.fp16)))
    rows.append(Row("fp8 matmul", "OK" if caps.fp8_matmul else "WARN", str(caps.fp8_matmul),
                    "" if caps.fp8_matmul else "needs an Ada/Hopper GPU; lab 04 shows fp8 as a storage format"))
    rows.append(Row("bitsandbytes kernels", "OK" if caps.bitsandbytes else "WARN", str(caps.bitsandbytes),
                    "" if caps.bitsandbytes else "pip install 'bitsandbytes>=0.46' (lab 10 falls back to labkit's own kernels)"))
    if caps.bitsandbytes and caps.device == "cpu":
        from .env import bnb_cpu_4bit_fused_bf16, bnb_cpu_4bit_kernel_ok

        ok = bnb_cpu_4bit_kernel_ok()
        rows.append(Row("bitsandbytes CPU 4-bit kernel", "OK" if ok else "WARN",
                        "agrees with its reference (probed)" if ok else
                        "wrong on this CPU for rows not a multiple of 64 (probed)",
                        "" if ok else "load_bnb_model refuses those NF4 models here; labkit's nf4 "
                        "or a GPU computes them right"))
        fused = bnb_cpu_4bit_fused_bf16()
        rows.append(Row("bitsandbytes CPU 4-bit matmul", "OK",
                        "fused bf16 kernel (AVX512-BF16)" if fused else "dequantize, then fp32",
                        "NF4 layers in eval mode compute in bf16 here: ~1e-3 from labkit's nf4 "
                        "on logits" if fused else ""))
    rows.append(Row("cpu capability", "OK", _cpu_capability()))
    prof = profile()
    rows.append(Row("profile", "OK", prof.describe()))
    return rows


def data_rows() -> list[Row]:
    root = data_dir()
    path = root / "MANIFEST.json"
    if not path.exists():
        return [Row("data_samples", "FAIL", f"no MANIFEST.json in {root}", "run `labkit build-samples`")]
    import json

    files = json.loads(path.read_text()).get("files", {})
    missing = [name for name in files if not (root / name).exists()]
    if missing:
        return [Row("data_samples", "FAIL", f"{len(missing)} of {len(files)} files missing: {missing[:3]}",
                    "run `labkit build-samples` (models: see data_samples/MANIFEST.json)")]
    return [Row("data_samples", "OK", f"{len(files)} files in {root}")]


def tool_rows() -> list[Row]:
    rows = []
    try:
        version = metadata.version("jupyterlab_widgets")
        rows.append(Row("jupyterlab widgets extension", "OK", version))
    except metadata.PackageNotFoundError:
        rows.append(Row("jupyterlab widgets extension", "FAIL", "missing", "pip install 'ipywidgets>=8'"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    rows.append(Row("chromium (browser tests only)", "OK" if chromium else "WARN", chromium or "not found",
                    "" if chromium else "apt-get install chromium (only `make test-browser` needs it)"))
    return rows


def _cpu_capability() -> str:
    import os

    import torch

    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    used = torch.backends.cpu.get_cpu_capability()
    return f"torch CPU kernels: {used}" + (f" (forced by ATEN_CPU_CAPABILITY={forced})" if forced else "")


def sandbox_rows() -> list[Row]:
    """The code sandbox's layers on this machine, in the mode lab 09 runs it (a probe program)."""
    from .evaluation.sandbox import sandbox_report

    try:
        report = sandbox_report()
    except Exception as exc:  # a machine where it cannot run at all: say so, do not stop
        return [Row("code sandbox", "WARN", f"probe failed: {type(exc).__name__}: {exc}")]
    fix = ""
    if report.missing:
        fix = ("no namespaces: run as root, allow unprivileged user namespaces (sysctl "
               "user.max_user_namespaces, kernel.unprivileged_userns_clone) or install "
               "bubblewrap; `labkit.evaluation.sandbox_report()` says what is not contained")
    return [
        Row("code sandbox mode", "OK", report.mode),
        Row("code sandbox layers", "OK" if report.complete else "WARN",
            ", ".join(report.layers) + (f"; missing: {', '.join(report.missing)}"
                                        if report.missing else ""), fix),
    ]


def run_doctor() -> list[Row]:
    return machine_rows() + dependency_rows() + data_rows() + tool_rows() + sandbox_rows()


def format_rows(rows: list[Row], width: int = 96) -> str:
    """The doctor's table, at most `width` characters wide (a notebook cell shows about 100):
    a long finding wraps under its column, and a row's fix goes on its own indented line."""
    import textwrap

    w_item = max(len(r.item) for r in rows)
    w_found = max(12, width - w_item - 10)
    lines = [f"{'check':<{w_item}}  status  found (-> what to do)", "-" * width]
    for r in rows:
        found = textwrap.wrap(r.found, w_found, break_on_hyphens=False) or [""]
        lines.append(f"{r.item:<{w_item}}  {r.status:<6}  {found[0]}".rstrip())
        lines += [" " * (w_item + 10) + more for more in found[1:]]
        if r.fix and r.status != "OK":
            lines += textwrap.wrap(r.fix, width, break_on_hyphens=False,
                                   initial_indent=" " * (w_item + 10) + "-> ",
                                   subsequent_indent=" " * (w_item + 13))
    fails = sum(r.status == "FAIL" for r in rows)
    warns = sum(r.status == "WARN" for r in rows)
    lines.append(f"{len(rows)} checks: {len(rows) - fails - warns} OK, {warns} WARN, {fails} FAIL")
    return "\n".join(lines)
