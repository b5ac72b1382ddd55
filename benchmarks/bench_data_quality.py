"""Clean vs raw crawl at longer training: does lab 02's data-quality result outlive its 40 steps?

Lab 02 section 6 trains its smallest sweep model for 40 steps on each of three corpora (the raw
crawl's extracted pages, lab 01's pipeline output, the clean pages by their labels at the
pipeline's size) and scores held-out clean text. At 40 steps every arm is still above its own
unigram baseline, so the result could be no more than "which corpus has the held-out text's
token frequencies". This runs the same recipe (model, batch, learning rate, warmup, seeds) for
longer and prints, per training length: each arm's mean held-out loss over the seeds, its
spread, how far it is below the unigram baseline of its own corpus (> 0: the model learned more
than token frequencies), and the paired per-seed gaps the lab's claims are made of.

    .venv/bin/python benchmarks/bench_data_quality.py                    # 40, 160, 640 steps, 3 seeds
    .venv/bin/python benchmarks/bench_data_quality.py --steps 40 1280 --seeds 5

One thread, as the lab on the cpu profile.
"""

from __future__ import annotations

import argparse
import time


def run(steps_list: list[int], seeds: int) -> None:
    import torch

    import labkit
    from labkit.loaders import load_records, load_tokenizer
    from labkit.models import build_causal_lm
    from labkit.pretrain import RandomBlocks, eval_loss, fixed_batches
    from labkit.pretrain.corpora import (
        CLEAN,
        PIPELINE,
        RAW,
        crawl_corpora,
        pack_texts,
        paired_gaps,
        train_on_corpora,
    )
    from labkit.pretrain.data import unigram_cross_entropy

    torch.set_num_threads(1)
    profile = labkit.profile()
    s = profile.settings("pretrain")
    tok = load_tokenizer()
    special_ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    held_stream = pack_texts(tok, [d["text"] for d in load_records("heldout")])
    held = fixed_batches(RandomBlocks(held_stream, s.seq_len, s.batch_size, seed=0), s.eval_batches)
    streams = {name: pack_texts(tok, [page.text for page in pages])
               for name, pages in crawl_corpora().items()}
    baselines = {name: unigram_cross_entropy(stream, held_stream, len(tok))
                 for name, stream in streams.items()}
    print(f"{profile.describe()}; model {s.sweep_shapes[0]}, batch {s.sweep_batch_size} x "
          f"{s.seq_len} tokens, lr {s.lr}, seeds {s.seed}..{s.seed + seeds - 1}")
    print("unigram baseline of each corpus on the held-out text (nats per token): "
          + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))
    for steps in steps_list:
        start = time.process_time()
        runs = train_on_corpora(
            streams, seeds=[s.seed + k for k in range(seeds)], steps=steps,
            batch_size=s.sweep_batch_size, seq_len=s.seq_len, lr=s.lr, device="cpu",
            eval_fn=lambda m: eval_loss(m, held),
            make_model=lambda seed: build_causal_lm(len(tok), s.sweep_shapes[0], seed=seed,
                                                    **special_ids))
        table = runs.groupby("corpus", sort=False)["held-out loss"].agg(["mean", "std", "min", "max"])
        table["below its unigram"] = [baselines[k] - table.loc[k, "mean"] for k in table.index]
        print(f"\n{steps} steps ({steps * s.sweep_batch_size * s.seq_len:,} training tokens per run, "
              f"{time.process_time() - start:.0f} CPU s):")
        print(table.round(3).to_string())
        clean_gap, pipe_gap = paired_gaps(runs, RAW, CLEAN), paired_gaps(runs, PIPELINE, RAW)
        print(f"raw - clean per seed: {[round(g, 3) for g in clean_gap]} "
              f"(clean wins {sum(g > 0 for g in clean_gap)} of {len(clean_gap)})")
        print(f"pipeline - raw per seed: {[round(g, 3) for g in pipe_gap]} "
              f"(raw wins {sum(g > 0 for g in pipe_gap)} of {len(pipe_gap)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 160, 640],
                        help="training lengths to compare (optimizer steps)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per corpus and length")
    args = parser.parse_args(argv)
    if args.seeds < 1 or any(n < 1 for n in args.steps):
        parser.error("--steps and --seeds must be whole numbers >= 1")
    run(args.steps, args.seeds)


if __name__ == "__main__":
    main()
