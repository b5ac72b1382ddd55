"""Lab 06's exercises: labels from the assistant mask, the masked mean loss, LoRA's parameter
count for a 7B model, and which rule of the judge a truncated answer breaks."""

from __future__ import annotations

import math
from functools import lru_cache

from . import Mistake, exercise


@lru_cache(maxsize=1)
def _conversations() -> list[list[int]]:
    """(input_ids, mask) of three world conversations (single-turn, with a system prompt,
    two-turn), from the world tokenizer's chat template."""
    from ..align.sft import assistant_mask
    from ..loaders import load_records, load_tokenizer

    tok = load_tokenizer()
    curated = load_records("instructions_curated")
    picks = [next(r for r in curated if r["category"] == kind)["messages"]
             for kind in ("fact_qa", "describe", "multi_turn")]
    picks[1] = [{"role": "system", "content": "You are a helpful assistant."}] + picks[1]
    return [(lab.input_ids, lab.mask) for lab in (assistant_mask(tok, m) for m in picks)]


def _labels(input_ids, mask):
    # PyTorch's cross_entropy ignores -100 (its ignore_index); the model shifts labels itself.
    return [t if m else -100 for t, m in zip(input_ids, mask)]


def _shifted(input_ids, mask):  # next-token targets written into the labels by hand
    return [t if m else -100 for t, m in zip(list(input_ids[1:]) + [-100], mask)]


def _inverted(input_ids, mask):
    return [-100 if m else t for t, m in zip(input_ids, mask)]


def _zero_for_ignored(input_ids, mask):
    return [t if m else 0 for t, m in zip(input_ids, mask)]


exercise(
    id="06.labels",
    name="my_labels",
    kind="function",
    prompt="my_labels(input_ids, mask): the token id where the mask is 1, and -100 elsewhere",
    reference=_labels,
    cases=lambda: _conversations(),
    hint="one label per input id: keep the id where mask is 1; -100 is what cross-entropy "
         "ignores",
    mistakes=[
        Mistake("labels shifted by one", _shifted,
                "a causal LM shifts the labels itself (logit t predicts label t+1): the label of "
                "position t is the token at t, not the next one"),
        Mistake("the mask inverted", _inverted,
                "mask = 1 marks the assistant's tokens, the ones that carry loss: keep their ids "
                "and put -100 on the prompt"),
        Mistake("0 instead of -100", _zero_for_ignored,
                "0 is a real token id (here <|endoftext|>): the model would learn to predict "
                "it on every prompt token; cross-entropy skips only its ignore_index, -100"),
    ],
)


def _masked_mean(token_losses, labels):
    kept = [loss for loss, label in zip(token_losses, labels) if label != -100]
    return sum(kept) / len(kept)


def _mean_over_all(token_losses, labels):
    return sum(token_losses) / len(token_losses)


def _sum_not_mean(token_losses, labels):
    return sum(loss for loss, label in zip(token_losses, labels) if label != -100)


def _loss_cases():
    def case(labels, losses):
        return (losses, labels)
    return [case([-100, -100, 7, 8], [3.0, 2.0, 1.0, 0.5]),
            case([5, -100, 6, -100, -100, 9], [0.2, 4.0, 0.4, 5.0, 3.0, 0.9]),
            case([-100] * 5 + [1, 2], [6.0, 5.5, 5.0, 4.5, 4.0, 1.5, 0.5]),
            case([11, 12, 13], [1.0, 2.0, 3.0])]


exercise(
    id="06.masked_loss",
    name="my_masked_loss",
    kind="function",
    prompt="my_masked_loss(token_losses, labels): the mean of the per-token losses over the "
           "tokens whose label is not -100 (nats per token)",
    reference=_masked_mean,
    cases=_loss_cases,
    hint="sum the losses where label != -100 and divide by how many there are, not by the "
         "sequence length",
    mistakes=[
        Mistake("a mean over every token", _mean_over_all,
                "the prompt tokens carry no loss: divide by the number of tokens whose label is "
                "not -100, or the masked tokens dilute the mean"),
        Mistake("a sum instead of a mean", _sum_not_mean,
                "the loss is a mean per token: a sum grows with the answer's length, so long "
                "answers would get larger gradients"),
    ],
)

LLAMA2_7B = {"layers": 32, "d": 4096, "ff": 11008, "r": 16}


def _lora_count(layers, d, ff, r, projections=("q", "k", "v", "o", "gate", "up", "down")):
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d),
              "gate": (d, ff), "up": (d, ff), "down": (ff, d)}
    return layers * sum(r * (d_in + d_out) for d_in, d_out in (shapes[p] for p in projections))


exercise(
    id="06.lora_count",
    name="my_lora_count",
    kind="value",
    prompt="the parameters LoRA with r = 16 trains on all seven projections (q, k, v, o, gate, "
           "up, down) of a Llama-2 7B: 32 layers, d = 4096, MLP width 11008, no embedding rows",
    reference=lambda: _lora_count(**LLAMA2_7B),
    hint="A is r x d_in and B is d_out x r: r * (d_in + d_out) per projection; the MLP's gate "
         "and up map d -> 11008, down maps 11008 -> d",
    mistakes=[
        Mistake("q and v only", _lora_count(**LLAMA2_7B, projections=("q", "v")),
                "the LoRA paper adapted only W_q and W_v; this lab (like QLoRA) adapts all "
                "seven projections"),
        Mistake("attention only", _lora_count(**LLAMA2_7B, projections=("q", "k", "v", "o")),
                "the MLP's gate, up and down projections get adapters too"),
        Mistake("r * d_in * d_out", 32 * 16 * (4 * 4096 * 4096 + 3 * 4096 * 11008),
                "that is r times a full matrix: LoRA's update B A has r * (d_in + d_out) "
                "parameters, which is the whole point"),
    ],
)

_JUDGE_RULES = ["ended_turn", "complete", "repetitive", "on_topic"]


def _failing_rule():
    from ..align.sft import judge

    verdict = judge("The belscope is use", ended_turn=True, subject="belscope")
    failing = [rule for rule in _JUDGE_RULES
               if (verdict[rule] if rule == "repetitive" else not verdict[rule])]
    return failing[0] if len(failing) == 1 else math.nan


exercise(
    id="06.judge_rule",
    name="my_failing_rule",
    kind="choice",
    prompt="an answer reads 'The belscope is use', the model ended its turn, and the question "
           "was about the belscope: which rule of the judge fails?",
    reference=_failing_rule,
    options=_JUDGE_RULES,
    explanation="the answer stops mid-word without a sentence end: a truncated answer, like the "
                "noisy set's 'truncated' defect",
    mistakes=[
        Mistake("ended_turn", "ended_turn",
                "the model did end its turn (ended_turn=True): the judge's other rules look at "
                "the text itself"),
        Mistake("on_topic", "on_topic",
                "the answer names its subject, the belscope; what is missing is the end of the "
                "sentence"),
    ],
)
