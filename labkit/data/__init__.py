"""Stage 01, the data pipeline: crawl -> extract -> language -> quality -> dedup -> score -> PII
-> tokenize, each step a plain function over documents that says why it drops one.

A lab reads its sizes with `labkit.profile().settings("data").<field>`.
The same steps at crawl scale, on datatrove: `labkit.data.scale`, imported on its own so that
`import labkit.data` (in every worker process too) does not load datatrove.
"""

from .bpe import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    BPETokenizer,
    bytes_per_token,
    naive_train_bpe,
    split_chunks,
    train_bpe,
    train_hf_bpe,
)
from .dedup import (
    HASH_FAMILIES,
    candidate_probability,
    corpus_shingle_hashes,
    detection_by_similarity,
    estimated_jaccard,
    exact_dedup,
    jaccard,
    lsh_collides,
    minhash_dedup,
    minhash_parameters,
    minhash_signatures,
    multiply_shift_hash,
    mutate_words,
    near_duplicate_clusters,
    ngram_set,
    normalise_text,
    s_curve_figure,
    shingle_hashes,
    universal_hash,
)
from .document import (
    Accounting,
    Document,
    batch_step,
    funnel_figure,
    keep_if,
    run_pipeline,
    step_name,
)
from .extract import extract, extract_main_text, naive_strip_tags
from .langid import detect_language, language_filter
from .pii import pii_scrub, scrub_pii
from .quality import (
    c4_clean,
    c4_filter,
    fineweb_filter,
    fineweb_reason,
    gopher_quality,
    gopher_quality_reason,
    gopher_repetition,
    gopher_repetition_reason,
)
from .scoring import fit_quality_scorer, precision_recall, predict_scores, quality_score_filter
from .warc import decode_html, read_warc, write_warc

_COMMON = {
    "max_payload_bytes": 1 << 20,  # Common Crawl truncates payloads at 1 MiB
    "languages": ("en",),
    "min_language_score": 0.65,  # FineWeb
    "num_perm": 112,  # FineWeb MinHash: 14 bands x 8 rows over word 5-grams
    "bands": 14,
    "rows": 8,
    "ngram": 5,
    "minhash_seed": 1,
    "edu_threshold": 3.0,  # FineWeb-Edu keeps predicted score >= 3
    "scorer_alpha": 1.0,
    "bpe_pattern": "gpt4",
}

SETTINGS = {
    "cpu": {**_COMMON, "bpe_vocab_size": 512, "s_curve_pairs": 600},
    "gpu": {**_COMMON, "bpe_vocab_size": 4096, "s_curve_pairs": 3000},
}

__all__ = [
    "GPT2_PATTERN", "GPT4_PATTERN", "SETTINGS", "Accounting", "BPETokenizer", "Document",
    "HASH_FAMILIES", "batch_step", "bytes_per_token", "c4_clean", "c4_filter", "candidate_probability",
    "corpus_shingle_hashes", "decode_html", "detect_language", "detection_by_similarity", "estimated_jaccard", "exact_dedup",
    "extract", "extract_main_text", "fineweb_filter", "fineweb_reason", "fit_quality_scorer",
    "funnel_figure", "gopher_quality", "gopher_quality_reason", "gopher_repetition",
    "gopher_repetition_reason", "jaccard", "keep_if", "language_filter", "lsh_collides",
    "minhash_dedup", "minhash_parameters", "minhash_signatures", "multiply_shift_hash", "mutate_words", "naive_strip_tags",
    "naive_train_bpe", "near_duplicate_clusters", "ngram_set", "normalise_text", "pii_scrub",
    "precision_recall", "predict_scores", "quality_score_filter", "read_warc", "run_pipeline",
    "s_curve_figure", "scrub_pii", "shingle_hashes", "split_chunks", "step_name", "train_bpe", "train_hf_bpe",
    "universal_hash", "write_warc",
]
