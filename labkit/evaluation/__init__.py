"""Evaluation: perplexity, multiple choice by log-likelihood, pass@k in a sandbox, lm-eval,
and contamination. A lab reads its sizes from `labkit.profile().settings("evaluation")`."""

from .contamination import (
    NgramIndex,
    build_ngram_index,
    clean_subset,
    clean_vs_contaminated,
    find_leaks,
    item_text,
    word_ngrams,
)
from .harness import LmEvalRun, offline_hubs, run_lm_eval, write_mc_task
from .multiple_choice import (
    LETTER_TEMPLATE,
    MMLU_DESCRIPTION,
    PROMPT_TEMPLATE,
    accuracy_by_subject,
    choice_logprobs,
    choice_scores_figure,
    encode_pair,
    load_items,
    read_jsonl,
    render_prompt,
    score_items,
    validate_items,
)
from .passk import (
    evaluate_distinct,
    mean_naive_pass_at_k,
    mean_pass_at_k,
    naive_pass_at_k,
    pass_at_k,
    pass_at_k_table,
)
from .perplexity import (
    PerplexityResult,
    bits_per_byte,
    disjoint_windows,
    perplexity,
    stride_figure,
    stride_sweep,
    strided_windows,
)
from .sandbox import (
    OUTCOMES,
    SandboxLimits,
    SandboxReport,
    SandboxResult,
    check_program,
    drops_privileges,
    evaluate_completions,
    humaneval_program,
    load_code_tasks,
    sandbox_processes,
    sandbox_report,
)

SETTINGS = {
    "cpu": {
        "window": 128,  # tokens per forward pass for perplexity
        "strides": [16, 32, 64, 128],
        "batch_size": 8,
        "n_samples": 5,  # completions per code task (n of pass@k)
        "ks": [1, 2, 5],
        "timeout_s": 3.0,  # wall clock per sandboxed program
        "memory_mb": 512,
        "workers": 2,  # sandboxed programs at once
        "ngram_n": 13,
        "lm_eval_limit": None,  # items per lm-eval task (None: all)
        "device": "cpu",
        # lab 09 (added for the notebook; the keys above are the library's defaults)
        "ppl_docs": 16,  # held-out documents joined into the text perplexity is measured on
        "widget_windows": [32, 64, 128],  # window grid of the stride widget (tokens)
        "widget_strides": [16, 32, 64, 128],  # stride grid of the stride widget (tokens)
        "code_tasks": 8,  # code tasks sampled (of 40)
        "top_k": 10,  # top-k sampling of code completions
        "temperature": 0.8,
        "max_new_tokens": 32,  # per completion; a function body here is 5-15 tokens
        "finetune_steps": 60,  # the contaminated fine-tune (optimizer updates, ~0.9 epochs)
        "finetune_lr": 1e-3,  # half the base model's pre-training peak
        "finetune_batch": 8,  # sequences per update
        "finetune_seq_len": 32,  # tokens per sequence: a leaked question and answer is ~20
        "ngram_sizes": [8, 9, 10, 11, 12, 13],  # the detector sweep (GPT-3 uses 8 to 13)
        "demo_timeout_s": 1.0,  # wall clock of the live adversarial sandbox demos
    },
    "gpu": {
        "window": 512,
        "strides": [64, 128, 256, 512],
        "batch_size": 32,
        "n_samples": 20,
        "ks": [1, 5, 10, 20],
        "timeout_s": 5.0,
        "memory_mb": 1024,
        "workers": 8,
        "ngram_n": 13,
        "lm_eval_limit": None,
        "device": "cuda",
        "ppl_docs": 300,
        "widget_windows": [64, 128, 256],
        "widget_strides": [16, 32, 64, 128, 256],
        "code_tasks": 40,
        "top_k": 10,
        "temperature": 0.8,
        "max_new_tokens": 48,
        "finetune_steps": 120,
        "finetune_lr": 1e-3,
        "finetune_batch": 16,
        "finetune_seq_len": 32,
        "ngram_sizes": [8, 9, 10, 11, 12, 13],
        "demo_timeout_s": 1.0,
    },
}

__all__ = [
    "LETTER_TEMPLATE",
    "MMLU_DESCRIPTION",
    "OUTCOMES",
    "PROMPT_TEMPLATE",
    "SETTINGS",
    "LmEvalRun",
    "NgramIndex",
    "PerplexityResult",
    "SandboxLimits",
    "SandboxReport",
    "SandboxResult",
    "accuracy_by_subject",
    "bits_per_byte",
    "build_ngram_index",
    "check_program",
    "choice_logprobs",
    "choice_scores_figure",
    "clean_subset",
    "clean_vs_contaminated",
    "disjoint_windows",
    "drops_privileges",
    "encode_pair",
    "evaluate_completions",
    "evaluate_distinct",
    "find_leaks",
    "humaneval_program",
    "item_text",
    "load_code_tasks",
    "load_items",
    "mean_naive_pass_at_k",
    "mean_pass_at_k",
    "naive_pass_at_k",
    "offline_hubs",
    "pass_at_k",
    "pass_at_k_table",
    "perplexity",
    "read_jsonl",
    "render_prompt",
    "run_lm_eval",
    "sandbox_processes",
    "sandbox_report",
    "score_items",
    "stride_figure",
    "stride_sweep",
    "strided_windows",
    "validate_items",
    "word_ngrams",
    "write_mc_task",
]
