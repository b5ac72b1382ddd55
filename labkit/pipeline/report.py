"""The report card: every stage's key number for your model next to the shipped model's, with
what each gap is due to (mostly compute: FLOPs = 6 N D for N parameters and D training tokens).

`report_card(result)` is one table (numbers, not strings: `card_text` formats it),
`report_figure(result)` one plotly figure, `compute_table(result)` what each model cost, and
`write_report` puts all three in the run directory (report.md, report.json, figure.html).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..errors import LabkitError

CHANCE = 0.25  # four choices per knowledge question
CARD_COLUMNS = ["stage", "measure", "yours", "shipped", "better", "due_to"]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96): unlike p +- z*se it stays
    inside [0, 1] and does not collapse to a point at 0 or n correct."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LabkitError(f"n={n!r}: valid is a positive number of trials")
    if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct <= n:
        raise LabkitError(f"correct={correct!r}: valid is an integer in 0..n={n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n correct one end is exactly 0 or 1; rounding would leave it a hair inside
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def _ratio(a: float, b: float) -> str:
    if not a or not b:
        return "n/a"
    r = b / a
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x"


def _count(x: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _metrics(result) -> dict:
    return {s.name: result.metrics(s.name) for s in result.stages}


def report_card(result) -> pd.DataFrame:
    """One row per stage's key number: yours, the shipped model's, which is better, and why
    the two differ."""
    m = _metrics(result)
    missing = [s for s in ("data", "pretrain", "sft", "dpo", "evaluate", "quantize", "shipped")
               if s not in m]
    if missing:
        raise LabkitError(f"the report card needs the stages {missing}; run the whole pipeline")
    data, pre, sft, dpo = m["data"], m["pretrain"], m["sft"], m["dpo"]
    ev, sh, quant = m["evaluate"], m["shipped"], m["quantize"]["rows"]
    comp = sh["compute"]
    flops_gap = _ratio(pre["flops_6nd"], comp["flops_6nd"])
    scale = (f"compute: shipped base {_count(comp['flops_6nd'])}FLOPs "
             f"({_count(comp['parameters'])} params x {_count(comp['tokens_seen'])} tokens), yours "
             f"{_count(pre['flops_6nd'])}FLOPs ({_count(pre['parameters'])} x "
             f"{_count(pre['tokens_seen'])}): {flops_gap} less")
    rows = [
        ("data", "pre-training corpus (tokens)", pre["corpus_tokens"], comp["corpus_tokens"],
         "higher",
         f"yours: {data['crawl_kept']} pages kept of the crawl's first {data['crawl_pages']:,} "
         f"HTML pages ({data['records_in']:,} records) + {data['topup_documents']:,} of "
         f"{data['topup_sampled']:,} top-up documents from the clean corpus (after the same "
         "filter); shipped: the whole "
         f"clean corpus ({comp['corpus_documents']:,} documents)"),
        ("tokenizer", "held-out bytes per token", ev["heldout"]["bytes_per_token"],
         sh["heldout"]["bytes_per_token"], "higher",
         f"vocabulary {m['tokenizer']['vocab_size']:,} vs {comp['vocab_size']:,} tokens, trained "
         f"on {m['tokenizer']['trained_on_chars'] / 1e6:.2f} MB of text"),
        ("pretrain", "training compute (FLOPs = 6ND)", pre["flops_6nd"], comp["flops_6nd"],
         "", f"{pre['train_wall_s']:.0f} s on {pre['device']} vs {comp['train_wall_s']:.0f} s on "
             f"{comp['device']}"),
        ("pretrain", "held-out bits per byte", ev["heldout"]["bits_per_byte"],
         sh["heldout"]["bits_per_byte"], "lower", scale),
        ("evaluate", "knowledge test accuracy (chance 0.25)", ev["knowledge"]["acc"],
         sh["knowledge"]["acc"], "higher",
         f"95% CI yours [{ev['knowledge']['ci95'][0]:.3f}, {ev['knowledge']['ci95'][1]:.3f}], "
         f"shipped [{sh['knowledge']['ci95'][0]:.3f}, {sh['knowledge']['ci95'][1]:.3f}] over "
         f"{ev['knowledge']['items']} questions; facts are learned from repeated reading: "
         f"{pre['epochs']:.1f} epochs of {_count(pre['corpus_tokens'])} tokens vs "
         f"{comp['tokens_seen'] / comp['corpus_tokens']:.1f} of {_count(comp['corpus_tokens'])}"),
        ("sft", "held-out questions: right and well-formed", ev["answers"]["sft"]["correct"],
         sh["answers"]["sft"]["correct"], "higher",
         f"SFT on {sft['dataset']} data: {sft['conversations_seen']:,} conversations "
         f"({sft['method']}) vs {comp['sft_conversations_seen']:,} ({comp['sft_method']}); the "
         "facts themselves come from pre-training"),
        ("sft", "held-out answers well-formed (judge)", ev["answers"]["sft"]["judge_ok"],
         sh["answers"]["sft"]["judge_ok"], "higher",
         f"{sft['examples_with_defects']} of your {sft['examples']} SFT conversations had a "
         "defect (truncated, off-topic, wrong fact, repetition)"),
        ("dpo", "held-out preference accuracy (likelihood)", ev["preferences"]["dpo_likelihood"],
         sh["preferences"]["dpo_likelihood"], "higher",
         f"your SFT model {ev['preferences']['sft_likelihood']:.3f} -> DPO; {dpo['pairs_seen']:,} "
         f"pairs seen vs {comp['dpo_pairs_seen']:,}, from a weaker SFT model"),
    ]
    for k, value in ev["code"]["pass_at_k"].items():
        rows.append(("evaluate", f"pass@{k} (code tasks, sandboxed)", value,
                     sh["code"]["pass_at_k"].get(k, math.nan), "higher",
                     f"{ev['code']['tasks']} tasks x {ev['code']['samples']} samples; code "
                     f"is learned in pre-training ({flops_gap} less compute); task solutions "
                     f"found in the corpus: yours {ev['code']['flagged_tasks']}, shipped "
                     f"{sh['code']['flagged_tasks']}"))
    rows.append(("evaluate", "knowledge items found in the corpus (contamination)",
                 ev["knowledge"]["flagged_items"], sh["knowledge"]["flagged_items"], "lower",
                 f"word {result.config['eval']['contamination_n']}-grams of each rendered "
                 "question + answer looked up in the pre-training corpus"))
    shipped_quant = sh["quant"]
    fp32, fp32_shipped = quant["fp32"], shipped_quant["fp32"]
    for label, row in quant.items():
        if label == "fp32" or label not in shipped_quant:
            continue
        ours = 100 * (row["perplexity"] / fp32["perplexity"] - 1)
        theirs = 100 * (shipped_quant[label]["perplexity"] / fp32_shipped["perplexity"] - 1)
        rows.append(("quantize", f"{label}: perplexity change vs fp32 (%)", ours, theirs, "lower",
                     f"{row['linear_bits']:.2f} bits per linear weight; size "
                     f"{row['stored_bytes'] / 1e6:.2f} MB of {fp32['stored_bytes'] / 1e6:.2f} "
                     f"(shipped {shipped_quant[label]['stored_bytes'] / 1e6:.2f} of "
                     f"{fp32_shipped['stored_bytes'] / 1e6:.2f})"))
    return pd.DataFrame(rows, columns=CARD_COLUMNS)


def _fmt(measure: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if "FLOPs" in measure or "tokens)" in measure:
        return _count(value)
    if "(%)" in measure:
        return f"{value:+.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}"


def card_text(card: pd.DataFrame, with_reasons: bool = True, width: int = 96) -> str:
    """The card as aligned plain text: one row per measure, and below it, numbered, what each
    gap is due to, wrapped at `width` characters (a notebook cell shows about 100)."""
    import textwrap

    shown = card.assign(yours=[_fmt(m, v) for m, v in zip(card["measure"], card["yours"])],
                        shipped=[_fmt(m, v) for m, v in zip(card["measure"], card["shipped"])])
    columns = ["stage", "measure", "yours", "shipped"]
    if not with_reasons:
        return shown[columns].to_string(index=False)
    shown = shown.assign(why=[f"[{i}]" for i in range(1, len(shown) + 1)])
    lines = [shown[columns + ["why"]].to_string(index=False), "", "what each gap is due to:"]
    for i, reason in enumerate(shown["due_to"], 1):
        lines += textwrap.wrap(str(reason), width, initial_indent=f"[{i}] ".ljust(5),
                               subsequent_indent=" " * 5, break_on_hyphens=False)
    return "\n".join(lines)


def compute_table(result) -> pd.DataFrame:
    """What each model cost: parameters, training tokens, FLOPs (6ND) and wall time."""
    m = _metrics(result)
    pre, comp, sft, dpo = m["pretrain"], m["shipped"]["compute"], m["sft"], m["dpo"]
    return pd.DataFrame([
        {"model": "your base", "parameters": pre["parameters"], "tokens": pre["tokens_seen"],
         "flops_6nd": pre["flops_6nd"], "wall_s": pre["train_wall_s"], "device": pre["device"]},
        {"model": "shipped base", "parameters": comp["parameters"], "tokens": comp["tokens_seen"],
         "flops_6nd": comp["flops_6nd"], "wall_s": comp["train_wall_s"], "device": comp["device"]},
        {"model": "your SFT", "parameters": sft["trainable_params"], "tokens": math.nan,
         "flops_6nd": math.nan, "wall_s": sft["wall_s"], "device": pre["device"]},
        {"model": "shipped SFT", "parameters": math.nan, "tokens": math.nan,
         "flops_6nd": math.nan, "wall_s": comp["sft_wall_s"], "device": comp["device"]},
        {"model": "your DPO", "parameters": dpo["trainable_params"], "tokens": math.nan,
         "flops_6nd": math.nan, "wall_s": dpo["wall_s"], "device": pre["device"]},
        {"model": "shipped DPO", "parameters": math.nan, "tokens": math.nan,
         "flops_6nd": math.nan, "wall_s": comp["dpo_wall_s"], "device": comp["device"]},
    ])


def stage_table(result) -> pd.DataFrame:
    """Which stages ran in this run and which were skipped, with their cost."""
    return pd.DataFrame([{"stage": s.name, "status": s.status, "wall_s": round(s.seconds, 1),
                          "cpu_s": round(s.cpu_seconds, 1), "key": s.key[:12]}
                         for s in result.stages])


def report_figure(result):
    """Yours next to shipped: scores (fractions), held-out bits per byte, training compute."""
    from plotly.subplots import make_subplots

    m = _metrics(result)
    ev, sh = m["evaluate"], m["shipped"]
    k = min(ev["code"]["pass_at_k"], key=int)
    scores = {
        "knowledge acc": (ev["knowledge"], sh["knowledge"]),
        "SFT: right and well-formed": (ev["answers"]["sft"]["correct"],
                                       sh["answers"]["sft"]["correct"]),
        "DPO: preference acc": (ev["preferences"]["dpo_likelihood"],
                                sh["preferences"]["dpo_likelihood"]),
        f"pass@{k}": (ev["code"]["pass_at_k"][k], sh["code"]["pass_at_k"].get(k, math.nan)),
    }
    fig = make_subplots(rows=1, cols=3, column_widths=[0.6, 0.2, 0.2],
                        # the narrow columns get short titles on two lines: long ones ran
                        # into each other in a notebook-wide figure
                        subplot_titles=("scores (fraction, higher is better)",
                                        "held-out bits/byte<br>(lower is better)",
                                        "training FLOPs<br>(6ND, log scale)"))
    for i, (who, colour) in enumerate((("yours", "#d62728"), ("shipped", "#1f77b4"))):
        values, errors = [], []
        for value in scores.values():
            v = value[i]
            if isinstance(v, dict):  # knowledge: accuracy with its 95% interval
                values.append(v["acc"])
                errors.append((v["ci95"][1] - v["acc"], v["acc"] - v["ci95"][0]))
            else:
                values.append(v)
                errors.append((0.0, 0.0))
        fig.add_bar(x=list(scores), y=values, name=who, marker_color=colour, legendgroup=who,
                    error_y={"type": "data", "array": [e[0] for e in errors],
                             "arrayminus": [e[1] for e in errors]}, row=1, col=1)
        bpb = (ev if who == "yours" else sh)["heldout"]["bits_per_byte"]
        fig.add_bar(x=["bits/byte"], y=[bpb], name=who, marker_color=colour, legendgroup=who,
                    showlegend=False, row=1, col=2)
        flops = m["pretrain"]["flops_6nd"] if who == "yours" else sh["compute"]["flops_6nd"]
        fig.add_bar(x=["FLOPs"], y=[flops], name=who, marker_color=colour, legendgroup=who,
                    showlegend=False, row=1, col=3)
    fig.add_hline(y=CHANCE, line_dash="dot", annotation_text="chance (knowledge)", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], title_text="fraction", row=1, col=1)
    fig.update_yaxes(title_text="bits per byte", row=1, col=2)
    fig.update_yaxes(type="log", title_text="FLOPs", row=1, col=3)
    fig.update_xaxes(title_text="measure", row=1, col=1)
    fig.update_layout(barmode="group", height=420, template="plotly_white",
                      title=f"Your model vs the shipped one ({m['pretrain']['device']}; "
                            "bars: 95% interval of the knowledge accuracy)")
    return fig


def write_report(result) -> Path:
    """report.md, report.json and figure.html in the run directory (replaced atomically)."""
    from .run import _write_json

    folder: Path = result.run_dir
    card = report_card(result)
    lines = ["# Capstone report card", "", "```", card_text(card), "```", "",
             "## Compute", "", "```", compute_table(result).to_string(index=False), "```", "",
             "## Stages of this run", "", "```", stage_table(result).to_string(index=False),
             "```", "", f"Run: {result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU "
             "(this process).", ""]
    tmp = folder / ".report.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(folder / "report.md")
    _write_json(folder / "report.json", {"card": card.to_dict("records"),
                                         "compute": compute_table(result).to_dict("records"),
                                         "stages": stage_table(result).to_dict("records")})
    html = folder / ".figure.html.tmp"
    report_figure(result).write_html(html, include_plotlyjs="cdn")
    html.replace(folder / "figure.html")
    return folder / "report.md"


def load_card(run_dir) -> pd.DataFrame:
    """The card of the last run in `run_dir`, from its report.json (no model is loaded)."""
    path = Path(run_dir) / "report.json"
    if not path.exists():
        raise LabkitError(f"no report in {run_dir}: run `labkit pipeline run CONFIG --run-dir "
                          f"{run_dir}` first")
    return pd.DataFrame(json.loads(path.read_text())["card"], columns=CARD_COLUMNS)
