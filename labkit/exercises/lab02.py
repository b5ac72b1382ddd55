"""Lab 02's exercises: why BERT leaves some chosen tokens visible, the causal loss by hand, the
FLOPs of a training run, and GPT-3's tokens per parameter."""

from __future__ import annotations

import math

from ..pretrain.scaling import tokens_per_parameter, training_flops
from . import Mistake, exercise

exercise(
    id="02.why_80_10_10",
    name="my_reason",
    kind="choice",
    prompt="why does BERT leave 10% of the chosen tokens unchanged and put a random token in "
           "another 10%, instead of [MASK] everywhere? ('a', 'b' or 'c')",
    reference=lambda: "b",
    options=("a", "b", "c"),
    explanation="Devlin et al. 2019, section 3.1: [MASK] never appears when the model is used "
                "later, so the mix reduces the mismatch between pre-training and fine-tuning, "
                "and the model cannot trust that a visible token is the original",
    mistakes=[
        Mistake("a compute saving", "a",
                "the model reads every position whatever it holds: a [MASK], a random token or "
                "the original cost the same; the loss positions (15%) do not change either"),
        Mistake("a limit of attention", "c",
                "attention works with any number of [MASK] tokens (some recipes mask 40% or "
                "more); the 80/10/10 mix is about the inputs the model sees later"),
    ],
)


def _cases_causal_loss():
    import torch

    gen = torch.Generator().manual_seed(0)
    cases = []
    for batch, length, vocab in ((2, 5, 11), (1, 8, 7), (3, 4, 50), (2, 2, 3)):
        logits = torch.randn(batch, length, vocab, generator=gen) * 2
        ids = torch.randint(0, vocab, (batch, length), generator=gen)
        cases.append((logits, ids))
    return cases


def transformers_causal_loss(logits, input_ids):
    """transformers' own causal-LM loss (what LlamaForCausalLM returns for labels=input_ids)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    return float(ForCausalLMLoss(logits, input_ids, vocab_size=logits.shape[-1]))


def _unshifted(logits, input_ids):
    import torch.nn.functional as F

    return float(F.cross_entropy(logits.flatten(0, 1), input_ids.flatten()))


def _shifted_backwards(logits, input_ids):
    import torch.nn.functional as F

    return float(F.cross_entropy(logits[:, 1:].flatten(0, 1), input_ids[:, :-1].flatten()))


def _in_bits(logits, input_ids):
    return transformers_causal_loss(logits, input_ids) / math.log(2)


exercise(
    id="02.causal_loss",
    name="my_causal_loss",
    kind="function",
    prompt="the mean cross-entropy (nats) of position i's logits against token i+1: drop the "
           "last position's logits and the first label",
    reference=transformers_causal_loss,
    cases=_cases_causal_loss,
    hint="F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())",
    rtol=1e-5,
    atol=1e-6,
    mistakes=[
        Mistake("labels not shifted", _unshifted,
                "scoring position i against token i asks the model to copy its own input: the "
                "target of position i is token i+1 (logits[:, :-1] against input_ids[:, 1:])"),
        Mistake("labels shifted the wrong way", _shifted_backwards,
                "logits[:, 1:] against input_ids[:, :-1] asks each position for the token "
                "*before* it; drop the last logits and the first label instead"),
        Mistake("the loss in bits", _in_bits,
                "language-model losses are in nats (natural log, what F.cross_entropy returns); "
                "dividing by ln 2 gives bits"),
    ],
)


exercise(
    id="02.training_flops",
    name="my_training_flops",
    kind="function",
    prompt="the training FLOPs of N parameters on D tokens: C = 2ND (forward) + 4ND (backward)",
    reference=training_flops,
    cases=lambda: [(70e9, 1.4e12), (175e9, 300e9), (1e6, 2e7), (3_272_640, 5_734_400)],
    hint="each weight does a multiply and an add per token forward (2 FLOPs), twice that backward",
    mistakes=[
        Mistake("the forward pass only", lambda n, d: 2.0 * n * d,
                "2ND is one forward pass over the data; training also runs the backward pass, "
                "which costs twice the forward (gradients for the inputs and for the weights)"),
        Mistake("a backward pass as cheap as the forward", lambda n, d: 4.0 * n * d,
                "the backward pass computes two products per weight (the gradient of the input "
                "and of the weight): 4ND, so 6ND in all"),
    ],
)

GPT3_PARAMS, GPT3_TOKENS = 175e9, 300e9

exercise(
    id="02.tokens_per_param",
    name="my_gpt3_tokens_per_param",
    kind="value",
    prompt="GPT-3 (175B parameters) was trained on 300B tokens: how many tokens per parameter?",
    reference=lambda: tokens_per_parameter(GPT3_PARAMS, GPT3_TOKENS),
    hint="tokens divided by parameters (Chinchilla's rule of thumb is about 20)",
    rtol=1e-3,
    mistakes=[
        Mistake("parameters per token", GPT3_PARAMS / GPT3_TOKENS,
                "that is parameters per token; tokens per parameter is D / N = 300e9 / 175e9"),
    ],
)
