"""The tiny Llama the workers train: transformers' LlamaForCausalLM, written out in plain torch.

Same modules, parameter names, initialisation scheme and arithmetic as `transformers`'
LlamaForCausalLM with the config of `labkit.models.causal_lm_config` (RMSNorm, rotary positions,
SwiGLU MLP, tied embeddings, causal sdpa attention), so its state_dict loads into the library's
model and gives the same logits (tests/test_parallel_workers.py checks both). The tensor-parallel
plan addresses the same names (`self_attn.q_proj`, `mlp.down_proj`, ...), and the attention
reshapes to (..., -1, head_dim) as transformers does, so a rank holding half of q_proj's rows
simply computes half of the heads.

Why not import transformers: every torchrun launch imports what its workers need in the launcher
and forks the ranks from it; transformers adds about 5 CPU seconds and 80 MB per process to each
launch, more than the lab's whole training run on 2 ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

INIT_STD = 0.02  # transformers' initializer_range for Llama


class Output(NamedTuple):
    """What forward returns. A NamedTuple, not a plain object: FSDP finds the output tensors
    (to hook the backward pass that must gather the weights again) only in pytree containers."""

    logits: torch.Tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()  # the mean of squares in fp32, as transformers does under autocast too
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    """(cos, sin) of every position, for rotating queries and keys (RoPE, theta 10000)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, positions):
        freqs = positions[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.head_dim = d_model // n_head
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(d_model, d_model, bias=False) for _ in range(4)
        )

    def forward(self, hidden_states, position_embeddings):
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)  # -1: the heads this rank holds
        q, k, v = (
            proj(hidden_states).view(shape).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_ff: int):
        super().__init__()
        self.input_layernorm = RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_head)
        self.post_attention_layernorm = RMSNorm(d_model)
        self.mlp = MLP(d_model, d_ff)

    def forward(self, hidden_states, position_embeddings):
        # keyword call: the tensor-parallel plan prepares self_attn's `hidden_states` input
        h = hidden_states + self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
        )
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_layer: int, n_head: int, d_ff: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_head, d_ff) for _ in range(n_layer))
        self.norm = RMSNorm(d_model)
        self.rotary_emb = Rotary(d_model // n_head)


class TinyLlama(nn.Module):
    """`model(input_ids=ids).logits`, like a transformers causal LM (no loss, no cache)."""

    def __init__(self, vocab: int, d_model: int, n_layer: int, n_head: int, d_ff: int | None = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        d_ff = d_ff or int(round(8 * d_model / 3 / 32) * 32)  # labkit.models' SwiGLU width
        self.model = Decoder(vocab, d_model, n_layer, n_head, d_ff)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied, as in labkit.models
        for module in self.modules():  # transformers' _init_weights for Llama
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def forward(self, input_ids):
        h = self.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        rope = self.model.rotary_emb(h, positions)
        for layer in self.model.layers:
            h = layer(h, position_embeddings=rope)
        return Output(self.lm_head(self.model.norm(h)))
