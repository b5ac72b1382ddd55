"""LIMA at tiny scale, with seeds: a small curated set against a much larger noisy set, at equal
steps (lab 06 section 5 runs one seed of each; this measures how much the result moves).

Every run is LoRA SFT from the shipped base model with the lab's cpu-profile recipe (steps,
batch, learning rate, rank), so every run sees the same number of conversations:

- curated, small: `curated_small` conversations of the curated set (seen several times);
- noisy, large: conversations drawn from the whole noisy set (10,000; each seen once);
- curated, as many as seen: steps x batch distinct curated conversations (each seen once),
  the lab's section 3 data, for reference.

Each seed draws its own subset and trainer seed. The held-out questions and the judge are the
lab's. Prints one row per run and the mean, min and max per arm.

    .venv/bin/python benchmarks/bench_lima.py --seeds 5
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path


def run(seeds: int, arms: list[str]) -> None:
    import pandas as pd
    import torch
    import transformers

    from labkit.align import SETTINGS, evaluate_answers, sft_train, summarize_answers
    from labkit.loaders import load_model, load_records, load_tokenizer

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    cfg = SETTINGS["cpu"]
    tok, base = load_tokenizer(), load_model("base")
    curated, noisy = load_records("instructions_curated"), load_records("instructions_noisy")
    questions = load_records("sft_eval")[: cfg["eval_questions"]]
    n_seen = cfg["sft_steps"] * cfg["sft_batch"]
    rows = []
    for seed in range(seeds):
        rng = random.Random(1000 + seed)
        data = {"curated, small": rng.sample(curated, cfg["curated_small"]),
                "noisy, large": noisy,
                "curated, as many as seen": rng.sample(curated, n_seen)}
        for arm in arms:
            cpu = time.process_time()
            trained = sft_train(base, tok, data[arm], steps=cfg["sft_steps"],
                                batch_size=cfg["sft_batch"], lr=cfg["lora_lr"], seed=1000 + seed,
                                lora={"r": cfg["lora_r"], "lora_alpha": cfg["lora_alpha"]},
                                warmup_steps=cfg["sft_warmup"], device="cpu")
            frame = evaluate_answers(trained.model, tok, questions,
                                     max_new_tokens=cfg["max_new_tokens"])
            s = summarize_answers({arm: frame}).loc[arm]
            rows.append({"arm": arm, "seed": seed, "distinct": len(set(
                map(str, data[arm]))) if arm != "noisy, large" else len(noisy),
                "exact": s["exact_match"], "judge": s["judge_ok"], "both": s["correct"],
                "cpu_s": time.process_time() - cpu})
            print(f"{arm:26s} seed {seed}: exact {s['exact_match']:.2f} judge "
                  f"{s['judge_ok']:.2f} both {s['correct']:.2f} "
                  f"({rows[-1]['cpu_s']:.1f} CPU s)", flush=True)
    table = pd.DataFrame(rows)
    print("\nper arm over", seeds, "seeds (mean [min, max]):")
    for arm, g in table.groupby("arm", sort=False):
        cells = "  ".join(f"{k} {g[k].mean():.2f} [{g[k].min():.2f}, {g[k].max():.2f}]"
                          for k in ("exact", "judge", "both"))
        print(f"  {arm:26s} {cells}")
    if {"curated, small", "noisy, large"} <= set(table["arm"]):
        pivot = table.pivot(index="seed", columns="arm", values=["both", "judge"])
        for k in ("both", "judge"):
            gap = pivot[k]["curated, small"] - pivot[k]["noisy, large"]
            print(f"  curated small - noisy large, {k}: mean {gap.mean():+.2f}, "
                  f"min {gap.min():+.2f}, max {gap.max():+.2f} (per seed: "
                  f"{', '.join(f'{g:+.2f}' for g in gap)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--arms", nargs="*",
                        default=["curated, small", "noisy, large", "curated, as many as seen"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    run(args.seeds, args.arms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
