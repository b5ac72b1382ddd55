"""The model family of the labs: transformers classes built from small configs.

Causal models are Llama-architecture decoders (a GPT-style model with RMSNorm, rotary positions
and SwiGLU, all layers plain nn.Linear so peft, bitsandbytes, GPTQ and AWQ apply directly);
masked models are ModernBERT encoders (BERT's objective and bidirectional attention, with the
pre-norm, rotary, GeGLU blocks that make a tiny encoder train in minutes; the original post-norm
BERT plateaus near the unigram loss at this size). Both come from configs, never from a hub.
`build_standard_lm` builds tiny members of the other families users bring (GPT-2, Qwen2, OPT,
GPT-NeoX, Mistral), on which tests check that every labkit function taking a model works.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LabkitError


@dataclass(frozen=True)
class ModelShape:
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int | None = None  # default: 8/3 * d_model rounded to 32 (SwiGLU) or 4 * d_model (BERT)
    max_len: int = 256

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise LabkitError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")


def causal_lm_config(vocab_size: int, shape: ModelShape = ModelShape(), **special):
    from transformers import LlamaConfig

    d_ff = shape.d_ff or int(round(8 * shape.d_model / 3 / 32) * 32)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=d_ff,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_head,
        num_key_value_heads=shape.n_head,
        max_position_embeddings=shape.max_len,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        **special,
    )


def masked_lm_config(vocab_size: int, shape: ModelShape = ModelShape(), **special):
    from transformers import ModernBertConfig

    # ModernBERT's default special ids index a 50k vocabulary: keep them inside this one.
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        special.setdefault(key, 0)
    # Every layer attends globally (the context is short), so the encoder sees the whole block.
    return ModernBertConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_ff or 2 * shape.d_model,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_head,
        max_position_embeddings=shape.max_len,
        global_attn_every_n_layers=1,
        local_attention=shape.max_len,
        **special,
    )


def build_causal_lm(vocab_size: int, shape: ModelShape = ModelShape(), seed: int = 0, **special):
    """A freshly initialised causal LM (seeded, so two calls give identical weights)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(causal_lm_config(vocab_size, shape, **special))


def build_masked_lm(vocab_size: int, shape: ModelShape = ModelShape(), seed: int = 0, **special):
    import torch
    from transformers import ModernBertForMaskedLM

    torch.manual_seed(seed)
    return ModernBertForMaskedLM(masked_lm_config(vocab_size, shape, **special))


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- the families users bring ------------------------------------------------------------------
# Tiny members of the standard Hugging Face causal-LM families, for checking that every labkit
# function taking a model works beyond the labs' Llama: GPT-2's projections are Conv1D (weight
# stored (in, out), q/k/v fused in c_attn), Qwen2 has biases on q/k/v, OPT has biases everywhere
# and learned positions, GPT-NeoX (Pythia) fuses q/k/v in one nn.Linear and rotates a quarter of
# each head, Mistral shares each key/value head between query heads (GQA).

STANDARD_FAMILIES = ("gpt2", "llama", "qwen2", "opt", "gpt_neox", "mistral")


def standard_lm_config(family: str, vocab_size: int, shape: ModelShape | None = None, *,
                       bos_token_id: int | None = None, eos_token_id: int | None = None,
                       pad_token_id: int | None = None):
    """A small config of one standard family (`STANDARD_FAMILIES`); special ids default to
    None (GPT-2's tokenizer has no pad token, and bos = eos)."""
    import transformers

    if family not in STANDARD_FAMILIES:
        raise LabkitError(f"family={family!r} is not known; valid: {', '.join(STANDARD_FAMILIES)}")
    s = shape or ModelShape(d_model=64, n_layer=2, n_head=4, d_ff=128, max_len=256)
    d_ff = s.d_ff or 4 * s.d_model
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
           "pad_token_id": pad_token_id}
    common = {"vocab_size": vocab_size, "hidden_size": s.d_model, "num_hidden_layers": s.n_layer,
              "num_attention_heads": s.n_head, "max_position_embeddings": s.max_len, **ids}
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_embd=s.d_model,
                                       n_layer=s.n_layer, n_head=s.n_head, n_inner=d_ff,
                                       n_positions=s.max_len, **ids)
    if family == "opt":
        return transformers.OPTConfig(ffn_dim=d_ff, word_embed_proj_dim=s.d_model, **common)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(intermediate_size=d_ff, **common)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[family]
    kv_heads = s.n_head // 2 if family == "mistral" else s.n_head  # Mistral: grouped queries
    return cls(intermediate_size=d_ff, num_key_value_heads=kv_heads, **common)


def build_standard_lm(family: str, vocab_size: int, shape: ModelShape | None = None,
                      seed: int = 0, **special_ids):
    """A freshly initialised (seeded) model of one standard family, from its small config."""
    import torch
    from transformers import AutoModelForCausalLM

    config = standard_lm_config(family, vocab_size, shape, **special_ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()
