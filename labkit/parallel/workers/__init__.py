"""torchrun worker scripts: each file runs as `torchrun --nproc-per-node N <file> [options]`.

They share `common` (process group, the tiny model, seeded batches, result files) and are
started from notebooks by `labkit.parallel.launch`.
"""
