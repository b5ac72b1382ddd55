"""torchrun worker scripts: each file runs as `torchrun --nproc-per-node N <file> [options]`.

They share `common` (process group, seeded batches, result files) and `model` (the tiny Llama,
plain torch, equal to transformers' LlamaForCausalLM), and are started from notebooks by
`labkit.parallel.launch`.
"""
