"""What each objective can do at inference: a causal LM continues text, a masked LM fills blanks.

Continuation uses transformers' own `generate` (greedy, or top-k sampling under a fixed seed).
`mlm_generate_left_to_right` shows what generation with a masked LM would have to do: append a
[MASK], predict it, keep the guess, append another. The model was never trained to predict a
token with nothing to its right, and every guess becomes context for the next, so the result
is poor; that is why BERT-style encoders are used for understanding, not generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validate
from ..errors import LabkitError
from ..validate import checks, ints, maybe, positive, positive_int, text


def _tokenizer(value, name: str):
    if not callable(value):  # the labs' tokenizers are transformers tokenizers: tok(text) encodes
        raise LabkitError(f"{name} must be a transformers tokenizer, got {type(value).__name__}")
    return validate.tokenizer(value, name)


@checks(model=validate.model, tokenizer=_tokenizer, prompt=text, max_new_tokens=positive_int,
        top_k=maybe(positive_int), temperature=positive, seed=ints())
def continue_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 30,
    *,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> str:
    """The causal LM's continuation of `prompt` (new text only): greedy when top_k is None,
    else top-k sampling with `seed` (the global RNG is restored afterwards)."""
    if not model.can_generate():
        raise LabkitError(
            f"{type(model).__name__} cannot generate (no causal LM head); "
            "use fill_blanks for a masked LM"
        )
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    _check_fits(model, enc["input_ids"].shape[1], max_new_tokens)
    sampling = {"do_sample": True, "top_k": top_k, "temperature": temperature} if top_k else {
        "do_sample": False, "top_k": None, "temperature": None, "top_p": None,
    }  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
        finally:
            model.train(was_training)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@dataclass
class FilledBlanks:
    text: str  # the input with every [MASK] replaced by the model's top guess
    predictions: list[list[tuple[str, float]]]  # per blank, left to right: top-k (token, prob)


@checks(model=validate.model, tokenizer=_tokenizer, text=text, top_k=positive_int)
@torch.no_grad()
def fill_blanks(model, tokenizer, text: str, top_k: int = 5) -> FilledBlanks:
    """Predict every mask token in `text` at once (what a masked LM is trained to do); special
    tokens are never proposed, so probabilities are over ordinary tokens."""
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise LabkitError(
            "the tokenizer has no mask token; fill_blanks needs a masked-LM tokenizer"
        )
    device = next(model.parameters()).device
    enc = tokenizer(text, return_tensors="pt").to(device)
    ids = enc["input_ids"][0]
    where = (ids == mask_id).nonzero().flatten()
    if len(where) == 0:
        raise LabkitError(
            f"text {text!r} holds no {tokenizer.mask_token}; put one where a word is missing"
        )
    logits = _eval_logits(model, enc)[0, where]
    if top_k > logits.shape[-1] - len(tokenizer.all_special_ids):
        raise LabkitError(f"top_k={top_k} exceeds the {logits.shape[-1]} tokens of the vocabulary")
    logits[:, _special_ids(tokenizer, logits.shape[-1], device)] = -torch.inf  # a blank is a word
    probs = logits.softmax(-1)
    top = probs.topk(top_k, dim=-1)
    filled = ids.clone()
    filled[where] = top.indices[:, 0]
    predictions = [
        list(zip(tokenizer.convert_ids_to_tokens(i.tolist()), p.tolist()))
        for i, p in zip(top.indices, top.values)
    ]
    return FilledBlanks(tokenizer.decode(filled, skip_special_tokens=True), predictions)


@checks(model=validate.model, tokenizer=_tokenizer, prompt=text, max_new_tokens=positive_int)
@torch.no_grad()
def mlm_generate_left_to_right(model, tokenizer, prompt: str, max_new_tokens: int = 20) -> str:
    """Generate with a masked LM the only way it could: append [MASK] (before a final [SEP]),
    take the most likely non-special token, repeat. Returns the new text only."""
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise LabkitError("the tokenizer has no mask token; this needs a masked-LM tokenizer")
    device = next(model.parameters()).device
    ids = tokenizer(prompt)["input_ids"]
    tail = [ids.pop()] if ids and ids[-1] == tokenizer.sep_token_id else []
    _check_fits(model, len(ids) + len(tail), max_new_tokens)
    special = _special_ids(tokenizer, model.get_output_embeddings().out_features, device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids + new + [mask_id] + tail], device=device)
        logits = _eval_logits(model, {"input_ids": x})[0, len(ids) + len(new)]
        logits[special] = -torch.inf
        new.append(int(logits.argmax()))
    return tokenizer.decode(new, skip_special_tokens=True)


def _special_ids(tokenizer, vocab_size: int, device) -> torch.Tensor:
    ids = torch.tensor(tokenizer.all_special_ids, dtype=torch.long, device=device)
    return ids[ids < vocab_size]


def _eval_logits(model, inputs) -> torch.Tensor:
    was_training = model.training
    model.eval()  # no dropout: the same text gives the same guesses
    try:
        return model(**inputs).logits
    finally:
        model.train(was_training)


def _check_fits(model, prompt_len: int, max_new_tokens: int) -> None:
    context = getattr(model.config, "max_position_embeddings", None)
    if max_new_tokens < 1:
        raise LabkitError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if context is not None and prompt_len + max_new_tokens > context:
        raise LabkitError(
            f"prompt ({prompt_len} tokens) + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context max_position_embeddings={context}"
        )
