"""The workers' tiny Llama (plain torch) is transformers' LlamaForCausalLM: same parameter names
and shapes, and with the same weights the same logits and gradients."""

from __future__ import annotations

import pytest
import torch

from labkit.models import ModelShape, causal_lm_config
from labkit.parallel.workers.model import TinyLlama


def _pair(vocab=512, d_model=64, n_layer=2, n_head=4, seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    ours = TinyLlama(vocab, d_model, n_layer, n_head)
    config = causal_lm_config(vocab, ModelShape(d_model=d_model, n_layer=n_layer, n_head=n_head))
    config._attn_implementation = "sdpa"
    theirs = LlamaForCausalLM(config)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # every name and shape matches
    return ours, theirs


@pytest.mark.parametrize("shape", [(512, 64, 2, 4), (97, 48, 3, 2), (300, 32, 1, 8)])
def test_same_logits_and_gradients_as_transformers_llama(shape):
    ours, theirs = _pair(*shape)
    ids = torch.randint(0, shape[0], (3, 17), generator=torch.Generator().manual_seed(1))
    a, b = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, rtol=1e-4, atol=1e-6)


def test_parameter_count_is_a_tied_llama_s():
    ours, theirs = _pair()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 127_296
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_initialisation_follows_transformers_scheme():
    torch.manual_seed(0)
    model = TinyLlama(4096, 256, 2, 4)
    w = model.model.layers[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.equal(model.model.norm.weight, torch.ones(256))


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="not divisible"):
        TinyLlama(100, 30, 1, 4)
