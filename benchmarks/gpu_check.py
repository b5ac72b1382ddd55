"""The gpu profile, measured on a real GPU (issue 22): one script, one printed table, one JSON.

    python benchmarks/gpu_check.py --out "$OUT"               # a CUDA machine: about 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gc  # no GPU: every path that needs no
                                                              # CUDA, on tiny sizes, in seconds
    python benchmarks/gpu_check.py --make-wheelhouse .whl     # the packages a bare GPU image lacks

Parts, in this order, each guarded (a failure is recorded and the rest still runs), all inside
one time budget (--budget-s); gpu_check.json is rewritten after every part, so a run cut short
still leaves what it measured:

1. card: name, compute capability, memory, versions, and what the gpu profile trains in, with
   bf16 and with bf16 pretended absent (LABKIT_NO_BF16=1, the Colab T4 path).
2. matmul: TFLOP/s of square products in fp32, tf32, bf16, fp16 and fp8 e4m3 (torch._scaled_mm,
   where the card has fp8 tensor cores) at a few sizes, with the share of the card's dense peak
   from its vendor data sheet.
3. quant kernels: labkit's NF4 and LLM.int8 pieces against bitsandbytes' kernels on the same
   device, bit for bit (on a GPU these are the CUDA kernels users run).
4. bnb load: the shipped base model through transformers' BitsAndBytesConfig (int8, nf4) with
   labkit.quant.load_bnb_model; its quantized weights against labkit's, its loss against fp32.
5. fp16 vs bf16: one tiny pretraining run (labkit.pretrain.train) in fp16 + GradScaler (forced,
   as on a T4) and in bf16, same initial weights and batches: final losses and skipped steps.
6. labs: each lab headless in a fresh kernel under the gpu profile (labkit.runner.run_lab in a
   child process, killed with its kernel at a wall-clock cap), with wall s, pass/fail, the
   kernel's torch.cuda.max_memory_allocated (an IPython startup file writes it after every cell,
   with each cell's seconds) and the device memory in use (nvidia-smi, every process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout where labkit is not installed
    sys.path.insert(0, str(REPO))

JSON_NAME = "gpu_check.json"
DEFAULT_LABS = "02,04,05,06,08,10,03,07,09,01,00"  # the labs whose gpu path differs come first
CELL_LOG_ENV = "LABKIT_GPU_CHECK_CELL_LOG"
BF16_TARGET = 0.70  # the bar: bf16 on a large square matmul reaches 70% of the peak

# ----------------------------------------------------------------------------------------------
# Dense peaks (no structured sparsity) in TFLOP/s from NVIDIA's data sheets. The sheets print
# tensor-core numbers "with sparsity"; the dense figure is half of that. fp32 is the non-tensor
# core figure. A card without a format has no entry for it. First match wins: specific names
# first, and word boundaries keep A10 from matching A100/A10G and L4 from matching L40S.

PEAK_SOURCE = "NVIDIA data sheets (dense, without sparsity)"
CARD_PEAKS = [
    (r"\bH200 NVL\b", "H200 NVL", dict(fp32=60, tf32=417.5, bf16=835.5, fp16=835.5, fp8=1670.5)),
    (r"\bH200\b", "H200 SXM", dict(fp32=67, tf32=494.5, bf16=989.5, fp16=989.5, fp8=1979)),
    (r"\bH100 NVL\b", "H100 NVL", dict(fp32=60, tf32=417.5, bf16=835.5, fp16=835.5, fp8=1670.5)),
    (r"\bH100 PCIe\b", "H100 PCIe", dict(fp32=51, tf32=378, bf16=756.5, fp16=756.5, fp8=1513)),
    (r"\bH100\b", "H100 SXM", dict(fp32=67, tf32=494.5, bf16=989.5, fp16=989.5, fp8=1979)),
    (r"\bA100\b", "A100", dict(fp32=19.5, tf32=156, bf16=312, fp16=312)),
    (r"\bL4\b", "L4", dict(fp32=30.3, tf32=60, bf16=121, fp16=121, fp8=242.5)),
    (r"\bT4\b", "T4", dict(fp32=8.1, fp16=65)),
    (r"\bA10\b", "A10", dict(fp32=31.2, tf32=62.5, bf16=125, fp16=125)),
]  # fmt: skip


def card_peaks(gpu_name: str | None) -> tuple[str | None, dict[str, float]]:
    """(the data sheet's card name, {dtype: dense TFLOP/s}) for a torch device name."""
    for pattern, card, peaks in CARD_PEAKS:
        if gpu_name and re.search(pattern, gpu_name):
            return card, peaks
    return None, {}


def peak_share(tflops: float, dtype: str, peaks: dict[str, float]) -> float | None:
    peak = peaks.get(dtype)
    return tflops / peak if peak and math.isfinite(tflops) else None


# ----------------------------------------------------------------------------------------------
# The run: a context with the budget, one guarded call per part, the table and the JSON


@dataclass
class Context:
    device: str  # "cuda" or, in the smoke run, "cpu"
    smoke: bool
    out: Path
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    report: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # what this run did not do, and why

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        print(f"  skipped: {what}", flush=True)


def run_part(ctx: Context, name: str, part, min_s: float) -> dict:
    """Run one part unless too little budget is left; record its result or its error."""
    entry: dict = {"status": "skipped", "seconds": 0.0, "rows": []}
    left = ctx.remaining()
    print(f"[{name}] {left:.0f} s of the budget left", flush=True)
    if left < min_s:
        entry["detail"] = f"not run: {left:.0f} s left of the budget, it needs ~{min_s:.0f} s"
        ctx.skip(f"part {name}: {entry['detail']}")
    else:
        t0 = time.perf_counter()
        try:
            entry.update(part(ctx))
            entry["status"] = "ok"
        except Exception as exc:  # one part's failure must not cost the others
            entry.update(status="error", detail=f"{type(exc).__name__}: {exc}"[:600],
                         traceback=traceback.format_exc()[-4000:])
            entry["rows"] = entry.get("rows", []) + [(name, "part failed", entry["detail"][:90], "ERROR")]
        entry["seconds"] = round(time.perf_counter() - t0, 1)
    ctx.report.setdefault("parts", {})[name] = entry
    write_report(ctx)
    print(f"[{name}] {entry['status']} in {entry['seconds']} s", flush=True)
    return entry


def write_report(ctx: Context) -> Path:
    ctx.report["elapsed_s"] = round(time.monotonic() - ctx.started, 1)
    ctx.report["skipped"] = ctx.skipped
    ctx.report["table"] = table_rows(ctx)
    path = ctx.out / JSON_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ctx.report, indent=2, default=str))
    os.replace(tmp, path)  # a run killed mid-write keeps the previous complete file
    return path


def table_rows(ctx: Context) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, entry in ctx.report.get("parts", {}).items():
        rows += [tuple(r) for r in entry.get("rows", [])]
        if entry["status"] == "skipped":
            rows.append((name, "not run", entry.get("detail", "")[:90], "SKIPPED"))
    return rows


def format_table(ctx: Context) -> str:
    rows = table_rows(ctx)
    head = ("part", "item", "result", "verdict")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(3)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    card = ctx.report.get("card") or ctx.device
    lines = [f"gpu_check on {card} ({ctx.report.get('mode')}), {ctx.report.get('elapsed_s', 0):.0f} s "
             f"of a {ctx.budget_s:.0f} s budget", fmt.format(*head)]
    lines.append("-" * len(lines[-1]))
    lines += [fmt.format(*r) for r in rows]
    if ctx.skipped:
        lines += ["", "not done in this run:"] + [f"  - {s}" for s in ctx.skipped]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# 1. the card and the profiles


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def part_card(ctx: Context) -> dict:
    import torch

    from labkit.env import detect, device_label
    from labkit.profiles import profile

    caps = detect()
    card, peaks = card_peaks(caps.gpu_name)
    ctx.report["card"] = caps.gpu_name or device_label()
    gpu, no_bf16 = profile("gpu"), profile("gpu", force_fp16=True)
    # fp16 + GradScaler is what the forced profile must give on CUDA; the CPU trains in fp32.
    want = ("float16", True) if ctx.device == "cuda" else ("float32", False)
    forced_ok = (no_bf16.train_dtype, no_bf16.grad_scaler) == want
    versions = {d: _version(d) for d in ("torch", "transformers", "bitsandbytes", "accelerate",
                                          "peft", "trl", "datasets", "nbclient", "ipykernel")}
    where = (f"cc {caps.compute_capability}, {caps.gpu_memory_gib:.1f} GiB, CUDA {torch.version.cuda}"
             if caps.device == "cuda" else f"{caps.cpu_cores} cores, {caps.ram_gib:.0f} GiB")
    rows = [
        ("card", ctx.report["card"], f"{where}, torch {torch.__version__}", ""),
        ("card", "peak table entry", f"{card} ({PEAK_SOURCE})" if card else "none for this device", ""),
        ("profile", "gpu", gpu.describe(), ""),
        ("profile", "gpu, LABKIT_NO_BF16=1", no_bf16.describe(), "ok" if forced_ok else "WRONG"),
    ]
    return {"caps": caps.as_dict(), "versions": versions, "peak_card": card, "peaks": peaks,
            "profile_gpu": gpu.describe(), "profile_no_bf16": no_bf16.describe(),
            "forced_fp16_ok": forced_ok, "rows": rows}


# ----------------------------------------------------------------------------------------------
# 2. matmul throughput


def _spin_up_clocks(seconds: float = 1.0) -> None:
    """An idle GPU sits at low clocks; a second of large products first, so the first measured
    size is not timed at idle clocks."""
    import torch

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def part_matmul(ctx: Context) -> dict:
    from labkit.env import detect
    from labkit.precision.measure import matmul_throughput

    caps = detect()
    card, peaks = card_peaks(caps.gpu_name)
    # (size, timed products): enough repeats that launch overhead and timer resolution vanish
    sizes = [(64, 3), (128, 3)] if ctx.smoke else [(1024, 100), (4096, 30), (8192, 15)]
    dtypes = ["fp32", "tf32", "bf16", "fp16"]
    if caps.fp8_matmul or ctx.smoke:  # on the CPU the fp8 row runs the same code, untimed by HW
        dtypes.append("fp8")
    else:
        ctx.skip(f"fp8 matmul: compute capability {caps.compute_capability} has no fp8 tensor "
                 "cores (needs 8.9+)")
    if ctx.device == "cuda":
        _spin_up_clocks()
    results, rows = [], []
    for n, repeats in sizes:
        frame = matmul_throughput(ctx.device, dtypes, n=n, repeats=repeats)
        for rec in frame.to_dict("records"):
            share = peak_share(rec["tflops"], rec["dtype"], peaks)
            rec.update(n=n, repeats=repeats, peak_tflops=peaks.get(rec["dtype"]), share=share)
            results.append(rec)
            text = f"{rec['tflops']:.4g} TFLOP/s"
            if share is not None:
                text += f" = {share:.0%} of {peaks[rec['dtype']]:g}"
            elif rec["note"]:
                text += f" ({rec['note'][:60]})"
            verdict = ""
            if rec["dtype"] == "bf16" and n == sizes[-1][0] and share is not None:
                verdict = "ok" if share >= BF16_TARGET else f"below {BF16_TARGET:.0%}"
            rows.append(("matmul", f"{rec['dtype']} {n}^3", text, verdict))
    if not peaks:
        ctx.skip(f"peak shares: no data-sheet peak for {caps.gpu_name or 'a CPU'}")
    return {"peak_card": card, "peak_source": PEAK_SOURCE, "results": results, "rows": rows}


# ----------------------------------------------------------------------------------------------
# 3. labkit's NF4 and LLM.int8 against bitsandbytes' kernels, bit for bit


def same_bits(ours, theirs) -> tuple[bool, str]:
    """Identical dtype, shape and every bit; else a short reason."""
    import torch

    theirs = theirs.to(ours.device)
    if ours.dtype != theirs.dtype:
        return False, f"dtype {ours.dtype} vs {theirs.dtype}"
    if ours.shape != theirs.shape:
        return False, f"shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    if torch.equal(ours, theirs):
        return True, ""
    differ = ours != theirs
    if ours.is_floating_point():
        gap = (ours.float() - theirs.float()).abs().max().item()
        return False, f"{int(differ.sum())} of {ours.numel()} differ, max |diff| {gap:.3g}"
    return False, f"{int(differ.sum())} of {ours.numel()} differ"


def compare_nf4(w, packed, state) -> dict:
    """labkit's NF4 of `w` against bitsandbytes' (packed, quant_state) of the same tensor."""
    from labkit.quant.nf4 import nf4_quantize

    t = nf4_quantize(w, state.blocksize, double_quant=bool(state.nested))
    checks = {"packed": same_bits(t.packed, packed.reshape(-1))}
    if state.nested:
        checks["absmax_codes"] = same_bits(t.absmax_codes, state.absmax)
        checks["absmax_scales"] = same_bits(t.absmax_scales, state.state2.absmax)
        checks["absmax_offset"] = same_bits(t.absmax_offset.reshape(()), state.offset.reshape(()))
    else:
        checks["absmax"] = same_bits(t.absmax, state.absmax)
    return {k: {"equal": ok, "detail": why} for k, (ok, why) in checks.items()}


def nf4_cases(ctx: Context) -> list[dict]:
    import bitsandbytes.functional as F
    import torch

    from labkit.quant.nf4 import nf4_dequantize, nf4_quantize

    if ctx.smoke:  # even row lengths: bnb's CPU kernel takes a torch.compile'd path for odd ones
        shapes, dtypes = [(64, 64), (48, 128)], [torch.float32]
    else:
        shapes = [(64, 64), (3, 65), (33, 129), (300, 300), (1024, 4096), (4096, 4096)]
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
    cases = []
    for shape in shapes:
        g = torch.Generator().manual_seed(sum(shape))
        base = torch.randn(*shape, generator=g) * 0.05
        for dtype in dtypes:
            w = base.to(dtype).to(ctx.device)
            for dq in (False, True):
                packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                compress_statistics=dq)
                checks = compare_nf4(w, packed, state)
                ours = nf4_dequantize(nf4_quantize(w, 64, dq)).to(dtype)
                ok, why = same_bits(ours, F.dequantize_4bit(packed, state).reshape(shape))
                checks["dequantized"] = {"equal": ok, "detail": why}
                cases.append({"shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                              "double_quant": dq, "checks": checks,
                              "bit_exact": all(c["equal"] for c in checks.values())})
    return cases


def int8_problem(seed: int, n_outliers: int, n=24, d_in=128, d_out=96):
    """The CPU test's case: fp16-exact inputs, whole outlier columns with |x| >= 6.5 (so which
    columns are outliers and every row's absmax are the same in both implementations)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(d_out, d_in, generator=g) * 0.05).half().float()
    b = (torch.randn(d_out, generator=g) * 0.1).half().float()
    x = torch.randn(n, d_in, generator=g)
    cols = torch.randperm(d_in, generator=g)[:n_outliers]
    signs = torch.sign(torch.randn(n, n_outliers, generator=g))
    x[:, cols] = signs * (6.5 + 10 * torch.rand(n, n_outliers, generator=g))
    return W, b, x.half().float()


def int8_cases(ctx: Context) -> list[dict]:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch

    from labkit.quant.llm_int8 import (
        int8_quantize_weight,
        llm_int8_matmul,
        outlier_columns,
        rowwise_absmax_int8,
    )

    dev = ctx.device
    cases = []
    for seed in range(2 if ctx.smoke else 5):
        for n_outliers in (0, 4):
            W, b, x = int8_problem(seed, n_outliers)
            W, b, x = W.to(dev), b.to(dev), x.to(dev)
            ours_w = int8_quantize_weight(W)
            CB, SCB, _ = F.int8_vectorwise_quant(W.half())
            CA, SCA, bnb_cols = F.int8_vectorwise_quant(x.half(), threshold=6.0)
            cols = outlier_columns(x, 6.0)
            bnb_cols = (bnb_cols if bnb_cols is not None else torch.empty(0, dtype=torch.long, device=dev))
            regular = x.clone()
            regular[:, cols] = 0
            x_codes, x_scales = rowwise_absmax_int8(regular)
            CA = CA.clone()
            CA[:, bnb_cols.to(dev).long()] = 0  # as MatMul8bitLt does: outliers go the fp16 way
            acc = F.int8_linear_matmul(CA, CB)  # int32 accumulate of A @ B^T in bnb's kernel
            ours_acc = x_codes.double() @ ours_w.codes.double().t()  # exact integers
            checks = {
                "weight_codes": same_bits(ours_w.codes, CB),
                "weight_scales": same_bits(ours_w.scales, SCB.float()),
                "outlier_columns": same_bits(cols.cpu().long(), bnb_cols.cpu().long()),
                "input_codes": same_bits(x_codes, CA),
                "input_scales": same_bits(x_scales, SCA.float()),
                "int32_accumulator": same_bits(ours_acc, acc.double()),
            }
            # End to end against the layer users run (fp16 on a GPU): close, not bit-exact
            # (bnb computes the scaling and the outlier product in fp16).
            lin = bnb.nn.Linear8bitLt(W.shape[1], W.shape[0], bias=True, has_fp16_weights=False,
                                      threshold=6.0)
            dtype = torch.float16 if dev == "cuda" else torch.float32
            lin.weight = bnb.nn.Int8Params(W.cpu().to(dtype), requires_grad=False,
                                           has_fp16_weights=False)
            lin.bias = torch.nn.Parameter(b.cpu().to(dtype), requires_grad=False)
            lin = lin.to(dev).eval()  # quantization happens in .to(device)
            with torch.no_grad():
                y_bnb = lin(x.to(dtype)).float()
            y = llm_int8_matmul(x, ours_w, b)
            y_fp = x @ W.t() + b
            rel = ((y - y_bnb).abs().max() / y_fp.abs().max()).item()
            cases.append({"seed": seed, "n_outliers": n_outliers,
                          "checks": {k: {"equal": ok, "detail": why} for k, (ok, why) in checks.items()},
                          "bit_exact": all(ok for ok, _ in checks.values()),
                          "linear8bitlt_max_diff_rel": rel})
    return cases


def part_quant_kernels(ctx: Context) -> dict:
    where = "CUDA kernels" if ctx.device == "cuda" else "CPU kernels"
    if ctx.smoke:
        ctx.skip("NF4/int8 against bitsandbytes' CUDA kernels: no GPU (the smoke run compares its "
                 "CPU kernels through the same code)")
    nf4, int8 = nf4_cases(ctx), int8_cases(ctx)

    def summary(cases, what):
        exact = sum(c["bit_exact"] for c in cases)
        bad = [c for c in cases if not c["bit_exact"]]
        first = ""
        if bad:
            failing = {k: v["detail"] for k, v in bad[0]["checks"].items() if not v["equal"]}
            first = f"; first miss {({k: v for k, v in bad[0].items() if k != 'checks'})}: {failing}"
        return (what, f"{exact}/{len(cases)} cases bit-exact ({where}){first}"[:160],
                "ok" if exact == len(cases) else "NOT EXACT")

    worst = max(c["linear8bitlt_max_diff_rel"] for c in int8)
    rows = [("quant", *summary(nf4, "nf4 vs bnb (codes, absmax, dequant)")),
            ("quant", *summary(int8, "int8 vs bnb (codes, scales, int32 acc)")),
            ("quant", "llm_int8_matmul vs Linear8bitLt", f"max |diff| {worst:.2e} x max|y|", "")]
    return {"kernels": where, "nf4": nf4, "int8": int8, "rows": rows}


# ----------------------------------------------------------------------------------------------
# 4. the shipped base model through BitsAndBytesConfig


def heldout_blocks(n_blocks: int, seq_len: int):
    from labkit.loaders import load_records, load_tokenizer
    from labkit.pretrain.data import pack_blocks, pack_documents

    tok = load_tokenizer()
    docs = [d["text"] for d in load_records("heldout")[: 8 * n_blocks]]  # ~75 tokens each
    stream = pack_documents(tok(docs, add_special_tokens=False)["input_ids"], tok.eos_token_id)
    return pack_blocks(stream, seq_len)[:n_blocks]


def lm_loss(model, ids) -> float:
    import torch

    with torch.no_grad():
        ids = ids.to(next(model.parameters()).device)
        return float(model(input_ids=ids, labels=ids).loss)


def compare_loaded_weights(qmodel, ref, mode: str, load_dtype) -> tuple[int, int, list[str]]:
    """Each quantized layer of the loaded model against labkit's quantization of the same
    weight (cast to the load dtype first, as transformers does): (exact, layers, misses)."""
    import bitsandbytes as bnb
    import torch

    from labkit.quant.llm_int8 import int8_quantize_weight

    ref_modules = dict(ref.named_modules())
    exact, total, misses = 0, 0, []
    for name, m in qmodel.named_modules():
        if mode == "nf4" and isinstance(m, bnb.nn.Linear4bit):
            # Params4bit quantizes what it is given: the weight cast to the load dtype, or, should
            # transformers quantize before casting, the checkpoint's fp32; either is a match.
            for dtype in dict.fromkeys([load_dtype, torch.float32]):
                w = ref_modules[name].weight.detach().to(dtype).to(m.weight.device)
                checks = compare_nf4(w, m.weight.data, m.weight.quant_state)
                ok = all(c["equal"] for c in checks.values())
                if ok:
                    break
            why = {k: c["detail"] for k, c in checks.items() if not c["equal"]}
        elif mode == "int8" and isinstance(m, bnb.nn.Linear8bitLt):
            if m.weight.dtype != torch.int8:
                ok, why = False, f"weight kept as {m.weight.dtype} (not quantized in storage)"
            else:
                # Int8Params casts the weight to fp16 before quantizing, whatever the load dtype
                w = ref_modules[name].weight.detach().to(load_dtype).half().float()
                ours = int8_quantize_weight(w.to(m.weight.device))
                ok_c, why_c = same_bits(ours.codes, m.weight.data)
                # the first forward moves the scales from the weight to the layer's state
                scb = m.weight.SCB if getattr(m.weight, "SCB", None) is not None else m.state.SCB
                ok_s, why_s = same_bits(ours.scales, scb.float())
                ok, why = ok_c and ok_s, {"codes": why_c, "scales": why_s}
        else:
            continue
        total += 1
        exact += ok
        if not ok:
            misses.append(f"{name}: {why}")
    return exact, total, misses


def part_bnb_load(ctx: Context) -> dict:
    import torch

    from labkit.loaders import MODELS, load_model
    from labkit.quant import load_bnb_model
    from labkit.samples import sample_path

    path = sample_path(MODELS["base"])
    ids = heldout_blocks(2, 64) if ctx.smoke else heldout_blocks(16, 256)
    ref = load_model("base", device=ctx.device)
    ref_loss = lm_loss(ref, ids)
    modes = ["int8"] if ctx.smoke else ["int8", "nf4"]
    if ctx.smoke:
        ctx.skip("nf4 load of the base model: bitsandbytes quantizes it slowly on a CPU (the GPU "
                 "run loads int8 and nf4)")
    load_dtype = torch.float16 if ctx.device == "cuda" else torch.float32  # as load_bnb_model
    rows = [("bnb load", "base model fp32", f"loss {ref_loss:.4f} on {ids.numel()} tokens", "")]
    results = {"fp32_loss": ref_loss, "tokens": ids.numel()}
    for mode in modes:
        t0 = time.perf_counter()
        model = load_bnb_model(path, mode, device=ctx.device)
        seconds = time.perf_counter() - t0
        loss = lm_loss(model, ids)
        exact, total, misses = compare_loaded_weights(model, ref, mode, load_dtype)
        memory = model.get_memory_footprint() / 2**20
        results[mode] = {"loss": loss, "load_s": seconds, "layers": total, "layers_exact": exact,
                         "misses": misses[:10], "memory_mib": memory}
        rows.append(("bnb load", f"base model {mode} on {ctx.device}",
                     f"loss {loss:.4f} ({loss - ref_loss:+.4f}), {memory:.1f} MiB, "
                     f"{exact}/{total} layers = labkit bit for bit",
                     "ok" if total and exact == total else "NOT EXACT"))
        del model
    return {**results, "rows": rows}


# ----------------------------------------------------------------------------------------------
# 5. fp16 + GradScaler against bf16 on one tiny training run


def part_fp16_vs_bf16(ctx: Context) -> dict:
    import numpy as np
    import torch

    from labkit.loaders import load_records, load_tokenizer
    from labkit.models import ModelShape, build_causal_lm
    from labkit.pretrain.data import RandomBlocks, fixed_batches, pack_documents
    from labkit.pretrain.loop import TrainConfig, eval_loss, train
    from labkit.profiles import profile

    if ctx.smoke:
        size = dict(docs=60, shape=ModelShape(32, 2, 4, max_len=64), seq=32, batch=4, steps=6)
        # The cpu profile trains in fp32, so the smoke run names the two dtypes itself.
        runs = [("fp16 + GradScaler", "float16"), ("bf16", "bfloat16")]
        ctx.skip("fp16 vs bf16 on a GPU: the smoke run trains both dtypes on the CPU (autocast), "
                 "with the dtypes named, not taken from the profile")
    else:
        size = dict(docs=2000, shape=ModelShape(256, 4, 4, max_len=256), seq=256, batch=32,
                    steps=300)
        forced, native = profile("gpu", force_fp16=True), profile("gpu")
        runs = [("fp16 + GradScaler (LABKIT_NO_BF16)", forced.train_dtype),
                (f"{native.train_dtype} (profile)", native.train_dtype)]
    tok = load_tokenizer()
    texts = [d["text"] for d in load_records("corpus")[: size["docs"]]]
    stream = pack_documents(tok(texts, add_special_tokens=False)["input_ids"], tok.eos_token_id)
    held = [d["text"] for d in load_records("heldout")[:200]]
    held_stream = pack_documents(tok(held, add_special_tokens=False)["input_ids"], tok.eos_token_id)
    vocab = len(tok)
    results, rows, curves = [], [], {}
    for label, dtype in runs:
        model = build_causal_lm(vocab, size["shape"], seed=0).to(ctx.device)
        batches = RandomBlocks(stream, size["seq"], size["batch"], seed=1, device=ctx.device)
        evals = fixed_batches(RandomBlocks(held_stream, size["seq"], size["batch"], seed=2), 4)
        # MFU's peak: measured once per dtype on a GPU; a CPU's fp16 matmul is too slow to bother
        config = TrainConfig(steps=size["steps"], lr=3e-3, warmup_steps=max(1, size["steps"] // 10),
                             dtype=dtype, log_every=1, progress=False,
                             peak_flops=1e12 if ctx.smoke else None)
        t0 = time.perf_counter()
        hist = train(model, batches, config,
                     eval_fn=lambda m, d=dtype, e=evals: eval_loss(m, e, dtype=d))
        seconds = time.perf_counter() - t0
        # A step GradScaler skips is one whose gradients hold an inf/nan: its grad norm (logged
        # every step, measured after unscaling) is not finite. A fused AdamW skips inside the
        # kernel, so counting optimizer.step() calls would not see it.
        skipped = int((~np.isfinite(hist["grad_norm"].to_numpy())).sum())
        tail = max(1, len(hist) // 10)
        final_train = float(hist["loss"].iloc[-tail:].mean())
        final_eval = float(hist["eval_loss"].iloc[-1])
        curves[label] = hist["loss"].to_numpy()
        results.append({"run": label, "dtype": dtype, "steps": size["steps"], "seconds": seconds,
                        "skipped_steps": skipped, "final_train_loss": final_train,
                        "final_eval_loss": final_eval,
                        "loss_every_10": [round(float(v), 4) for v in hist["loss"].iloc[::10]]})
        rows.append(("fp16 vs bf16", label,
                     f"eval loss {final_eval:.4f}, train loss {final_train:.4f} (last {tail}), "
                     f"{skipped} of {size['steps']} steps skipped, {seconds:.1f} s", ""))
        del model
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    window = min(10, size["steps"])  # compare 10-step means: single steps are noisy
    a, b = (np.convolve(c, np.ones(window) / window, mode="valid") for c in curves.values())
    gap = float(np.nanmax(np.abs(a - b)))
    eval_gap = results[0]["final_eval_loss"] - results[1]["final_eval_loss"]
    rows.append(("fp16 vs bf16", "the two curves", f"max |diff| of 10-step means {gap:.4f}, "
                 f"final eval loss fp16 - other {eval_gap:+.4f}", ""))
    return {"model": str(size["shape"]), "seq_len": size["seq"], "batch_size": size["batch"],
            "runs": results, "curve_max_abs_diff": gap, "final_eval_gap": eval_gap, "rows": rows}


# ----------------------------------------------------------------------------------------------
# 6. the labs, headless, each in a child process with a cap

# An IPython startup file (the kernel runs $IPYTHONDIR/profile_default/startup/*.py at start):
# after every cell it rewrites a JSON with each cell's seconds and the CUDA allocator's peak, so
# the numbers survive a kernel killed at the cap. It never imports torch or starts CUDA itself.
# Labs reset the allocator's peak to measure one block (labkit.precision.measure, labkit.align.
# sft), so torch.cuda.reset_peak_memory_stats is wrapped to note the lab's peak before each reset.
CELL_LOG_STARTUP = '''
def _labkit_gpu_check_hooks():
    import json, os, sys, time

    path, cells, started = os.environ["@CELL_LOG_ENV@"], [], [None]
    peaks = {"allocated": 0, "reserved": 0}

    def note_peaks():
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return False
        peaks["allocated"] = max(peaks["allocated"], torch.cuda.max_memory_allocated())
        peaks["reserved"] = max(peaks["reserved"], torch.cuda.max_memory_reserved())
        return True

    def keep_peaks_across_resets():
        torch = sys.modules.get("torch")
        reset = getattr(getattr(torch, "cuda", None), "reset_peak_memory_stats", None)
        if reset is None or getattr(reset, "keeps_lab_peak", False):
            return reset is not None

        def reset_peak_memory_stats(*args, **kwargs):
            note_peaks()
            return reset(*args, **kwargs)

        reset_peak_memory_stats.keeps_lab_peak = True
        torch.cuda.reset_peak_memory_stats = reset_peak_memory_stats
        return True

    def pre_run_cell(info=None):
        keep_peaks_across_resets()
        started[0] = time.perf_counter()

    def post_run_cell(result=None):
        seconds = time.perf_counter() - started[0] if started[0] else float("nan")
        source = getattr(getattr(result, "info", None), "raw_cell", "") or ""
        lines = [s.strip() for s in source.splitlines() if s.strip() and not s.strip().startswith("#")]
        cells.append({"seconds": round(seconds, 3), "first_line": (lines[0] if lines else "")[:80],
                      "ok": bool(getattr(result, "success", True))})
        wrapped = keep_peaks_across_resets()
        record = {"pid": os.getpid(), "cells": cells, "cuda_initialized": note_peaks(),
                  "max_memory_allocated": peaks["allocated"], "max_memory_reserved": peaks["reserved"],
                  "resets_wrapped": wrapped}
        with open(path + ".tmp", "w") as fh:
            json.dump(record, fh)
        os.replace(path + ".tmp", path)

    shell = get_ipython()  # noqa: F821 (defined in IPython's namespace)
    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)


_labkit_gpu_check_hooks()
del _labkit_gpu_check_hooks
'''.replace("@CELL_LOG_ENV@", CELL_LOG_ENV)


def make_ipython_dir(root: Path) -> Path:
    startup = root / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-labkit-gpu-check.py").write_text(CELL_LOG_STARTUP)
    return root / "ipython"


class DeviceMemorySampler:
    """Peak of the GPU's memory in use (nvidia-smi, all processes: kernel, torchrun workers)
    above what was in use when sampling began; None without nvidia-smi."""

    def __init__(self, command: list[str] | None = None, interval: float = 0.5):
        default = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        self.command = command or default
        self.interval, self.base, self.peak = interval, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which(self.command[0]) is not None

    def sample(self) -> float | None:
        try:
            out = subprocess.run(self.command, capture_output=True, text=True, timeout=5).stdout
            return float(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _run(self):
        while not self._stop.is_set():
            value = self.sample()
            if value is not None:
                self.base = value if self.base is None else self.base
                self.peak = value if self.peak is None else max(self.peak, value)
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    @property
    def used_mib(self) -> float | None:
        return None if self.peak is None else self.peak - self.base


def kill_tree(proc: subprocess.Popen) -> None:
    """End the child and every process under it (the kernel, torchrun workers)."""
    import psutil

    try:
        procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.Error:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    proc.wait(timeout=10)


def run_one_lab(path: Path, profile_name: str, cap_s: float, workdir: Path, no_bf16=False) -> dict:
    """Run one lab in a child process (labkit.runner.run_lab, a fresh kernel) for at most
    `cap_s` seconds; the kernel reports each cell's time and the CUDA peak through its log."""
    ipython_dir = make_ipython_dir(workdir)
    cell_log, result = workdir / f"{path.stem}.cells.json", workdir / f"{path.stem}.result.json"
    env = {**os.environ, "LABKIT_PROFILE": profile_name, "IPYTHONDIR": str(ipython_dir),
           CELL_LOG_ENV: str(cell_log), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if no_bf16:
        env["LABKIT_NO_BF16"] = "1"
    cell_timeout = max(5, int(cap_s) - 5)  # a single endless cell ends cleanly inside the cap
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_lab", str(path), "--_result",
           str(result), "--_cell-timeout", str(cell_timeout)]
    log = workdir / f"{path.stem}.log"
    start = time.perf_counter()
    with open(log, "wb") as fh, DeviceMemorySampler() as sampler:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=cap_s)
            killed = False
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            killed = True
    wall = time.perf_counter() - start
    cells = json.loads(cell_log.read_text()) if cell_log.exists() else {}
    row = {"lab": path.stem, "status": "error", "wall_s": round(wall, 1), "detail": "",
           "peak_gpu_alloc_mib": round(cells.get("max_memory_allocated", 0) / 2**20, 1),
           "peak_gpu_reserved_mib": round(cells.get("max_memory_reserved", 0) / 2**20, 1),
           "gpu_used_mib": sampler.used_mib, "cuda_initialized": cells.get("cuda_initialized"),
           "cells_run": len(cells.get("cells", [])), "kernel_pid": cells.get("pid"),
           "resets_wrapped": cells.get("resets_wrapped"),
           "slowest_cells": sorted(cells.get("cells", []), key=lambda c: -c["seconds"])[:3],
           "cap_s": round(cap_s, 1), "log_tail": log.read_text(errors="replace")[-1500:]}
    if killed:
        row.update(status="timeout", detail=f"killed at the {cap_s:.0f} s cap after "
                                            f"{row['cells_run']} cells")
    elif result.exists():
        r = json.loads(result.read_text())
        row.update(status=r["status"], detail=r["detail"], kernel_wall_s=r["wall_s"],
                   peak_rss_mib=r["peak_mib"], cpu_s=r["cpu_s"])
    else:
        row["detail"] = f"the runner exited with code {proc.returncode} without a result"
    return row


def smoke_notebook(directory: Path) -> Path:
    """A two-cell lab for the smoke run: the same child, kernel, startup file and cell log."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nimport torch\nprint(os.environ['LABKIT_PROFILE'])"),
                nbformat.v4.new_code_cell("# a comment line first\nprint(int(torch.ones(3).sum()))")]
    path = directory / "99_gpu_check_smoke.ipynb"
    nbformat.write(nb, path)
    return path


def part_labs(ctx: Context, labs: str, lab_cap_s: float, no_bf16: bool = False,
              min_lab_s: float = 30) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_labs_"))
    if ctx.smoke:
        paths, profile_name = [smoke_notebook(workdir)], "cpu"
        ctx.skip("labs under the gpu profile: the smoke run runs a two-cell notebook under the cpu "
                 "profile through the same child process, kernel hook and cap")
    else:
        from labkit.runner import find_labs

        paths, profile_name = find_labs([k for k in labs.split(",") if k.strip()]), "gpu"
    results, rows = [], []
    for path in paths:
        cap = min(lab_cap_s, ctx.remaining() - 5)
        if cap < min_lab_s:
            ctx.skip(f"lab {path.stem}: {max(ctx.remaining(), 0):.0f} s left of the budget")
            results.append({"lab": path.stem, "status": "not run", "detail": "budget"})
            continue
        print(f"  {path.stem}: cap {cap:.0f} s ...", flush=True)
        row = run_one_lab(path, profile_name, cap, workdir, no_bf16)
        print(f"  {path.stem}: {row['status']} in {row['wall_s']} s, CUDA peak "
              f"{row['peak_gpu_alloc_mib']} MiB {row['detail'][:120]}", flush=True)
        results.append(row)
        slow = row["slowest_cells"][0] if row["slowest_cells"] else None
        used = "" if row["gpu_used_mib"] is None else f", device {row['gpu_used_mib']:.0f} MiB"
        rows.append(("lab", row["lab"],
                     f"{row['wall_s']:.1f} s, peak {row['peak_gpu_alloc_mib']:.0f} MiB alloc{used}"
                     + (f"; slowest cell {slow['seconds']:.0f} s: {slow['first_line'][:40]}" if slow else ""),
                     "pass" if row["status"] == "ok" else row["status"].upper()))
        write_report(ctx)
    return {"labs": results, "profile": profile_name, "no_bf16": no_bf16, "rows": rows}


def lab_child(path: str, result: str, cell_timeout: int) -> int:
    """The child process of one lab: labkit's runner in a fresh kernel, its result as JSON."""
    from labkit.runner import run_lab

    r = run_lab(Path(path), cell_timeout=cell_timeout)
    Path(result).write_text(json.dumps(r.as_dict()))
    return 0


# ----------------------------------------------------------------------------------------------
# The wheelhouse: what the device image (Python 3.12, torch, transformers, accelerate, pandas,
# scikit-learn, ... already there) lacks to run the labs; carried as wheels, installed with
# pip --target. Versions are the tested ones from constraints.txt.

DEVICE_PACKAGES = [
    "bitsandbytes", "ipykernel", "ipython", "ipython_pygments_lexers", "jedi", "parso",
    "prompt_toolkit", "wcwidth", "pexpect", "ptyprocess", "stack-data", "executing", "asttokens",
    "pure_eval", "matplotlib-inline", "traitlets", "comm", "nest-asyncio2", "jupyter_client",
    "jupyter_core", "pyzmq", "tornado", "nbclient", "nbformat", "fastjsonschema", "jsonschema",
    "jsonschema-specifications", "referencing", "rpds-py", "ipywidgets", "jupyterlab_widgets",
    "plotly", "datasets", "dill", "multiprocess", "fsspec", "trl", "peft",
]  # fmt: skip
PLATFORMS = ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_26_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(names: list[str], constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    missing = [n for n in names if _canonical(n) not in pins]
    if missing:
        raise SystemExit(f"gpu_check: no pin in {constraints.name} for {', '.join(missing)}")
    return {n: pins[_canonical(n)] for n in names}


def slim_bitsandbytes_wheel(wheel: Path, keep_cuda: str = "13") -> tuple[int, int]:
    """Drop the native libraries for other CUDA majors and for ROCm from a bitsandbytes wheel
    (it ships one per toolkit, ~120 MB unpacked), and their RECORD lines. (bytes before, after)"""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{keep_cuda}\d*)\.")
    drop = re.compile(r"libbitsandbytes_\w+\.(so|dll|dylib)$")
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist()
                   if drop.search(i.filename) and not keep.search(i.filename)}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(ln for ln in lines if ln.split(",")[0] not in dropped) + "\n").encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size


def make_wheelhouse(directory: Path, python_version: str = "3.12", keep_cuda: str = "13") -> int:
    directory.mkdir(parents=True, exist_ok=True)
    pins = pinned_versions(DEVICE_PACKAGES)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(directory)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [f"{n}=={v}" for n, v in pins.items()]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    for wheel in directory.glob("bitsandbytes-*.whl"):
        before, after = slim_bitsandbytes_wheel(wheel, keep_cuda)
        print(f"{wheel.name}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB (CUDA {keep_cuda}.x + CPU)")
    total = sum(p.stat().st_size for p in directory.glob("*.whl"))
    print(f"{len(list(directory.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {directory}")
    return 0


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for gpu_check.json (default: $OUT, else ./gpu_check_out)")
    p.add_argument("--budget-s", type=float, default=480,
                   help="total seconds for all parts; labs get what the other parts leave")
    p.add_argument("--labs", default=DEFAULT_LABS, help=f"labs to run, in order (default {DEFAULT_LABS})")
    p.add_argument("--lab-cap-s", type=float, default=150, help="seconds one lab may take")
    p.add_argument("--no-bf16", action="store_true",
                   help="run the labs as on a card without bf16 (LABKIT_NO_BF16=1: fp16 + GradScaler)")
    p.add_argument("--skip", default="", help="parts to leave out, e.g. labs or matmul,labs")
    p.add_argument("--cpu-smoke", "--dry-run", dest="smoke", action="store_true",
                   help="no GPU: run every path that needs no CUDA on tiny sizes, say what is skipped")
    p.add_argument("--make-wheelhouse", metavar="DIR",
                   help="download the wheels the device image lacks (then carry DIR)")
    p.add_argument("--python-version", default="3.12", help="the device's Python (wheelhouse)")
    p.add_argument("--_lab", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_cell-timeout", type=int, default=600, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.lab_cap_s <= 0:
        p.error(f"--budget-s ({args.budget_s}) and --lab-cap-s ({args.lab_cap_s}) must be > 0")
    known = {"card", "matmul", "quant", "bnb_load", "fp16_vs_bf16", "labs"}
    unknown = {s.strip() for s in args.skip.split(",") if s.strip()} - known
    if unknown:
        p.error(f"--skip {', '.join(sorted(unknown))}: unknown part; valid: {', '.join(sorted(known))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._lab:
        return lab_child(args._lab, args._result, args._cell_timeout)
    if args.make_wheelhouse:
        return make_wheelhouse(Path(args.make_wheelhouse), args.python_version)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --cpu-smoke to exercise the rest",
              file=sys.stderr)
        return 2
    if args.smoke:  # tiny products on a shared CPU: one thread beats two contending ones
        torch.set_num_threads(1)
    out = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device="cpu" if args.smoke else "cuda", smoke=args.smoke, out=out,
                  budget_s=args.budget_s)
    ctx.report.update(mode="cpu-smoke" if args.smoke else "gpu", budget_s=args.budget_s,
                      argv=sys.argv[1:] if argv is None else list(argv))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    parts = [
        ("card", part_card, 5),
        ("matmul", part_matmul, 15),
        ("quant", part_quant_kernels, 15),
        ("bnb_load", part_bnb_load, 20),
        ("fp16_vs_bf16", part_fp16_vs_bf16, 20),
        ("labs", lambda c: part_labs(c, args.labs, args.lab_cap_s, args.no_bf16), 30),
    ]
    for name, part, min_s in parts:
        if name in skip:
            ctx.skip(f"part {name}: --skip")
            continue
        run_part(ctx, name, part, min_s)
        if ctx.device == "cuda":
            torch.cuda.empty_cache()  # the labs' kernels get the memory this process cached
    path = write_report(ctx)
    print()
    print(format_table(ctx))
    print(f"\nwritten: {path}")
    return 0 if all(e["status"] == "ok" for e in ctx.report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
