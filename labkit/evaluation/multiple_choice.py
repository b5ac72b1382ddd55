"""Multiple choice by log-likelihood, the way lm-eval scores MMLU-style tests.

Each choice is a continuation of the prompt; its score is the summed log-probability of its
tokens given the prompt. acc takes the argmax of the sums; acc_norm divides each sum by the
choice's length in characters first, so long answers are not punished for having more tokens.

Tokenization follows lm-eval's `_encode_pair` exactly, which is what makes the numbers agree:
the continuation is " " + choice; trailing spaces of the context move onto the continuation;
context + continuation is encoded as one string and split at the length of the encoded context
(encoding the two apart would tokenize the word boundary differently).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import LabkitError
from .perplexity import model_max_length

# The one prompt of the knowledge test, in Jinja so that lm-eval's task YAML uses the same text.
PROMPT_TEMPLATE = (
    "{% if context is defined and context %}{{ context }}\n\n{% endif %}"
    "Question: {{ question }}\nAnswer:"
)
TARGET_DELIMITER = " "


def read_jsonl(path: str | Path, what: str = "items") -> list[dict]:
    """The objects of a JSONL file; one clear error for a missing, empty or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise LabkitError(f"{what} file {str(path)!r} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabkitError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LabkitError(f"{path}:{number} is a {type(row).__name__}, not a JSON object")
            rows.append(row)
    if not rows:
        raise LabkitError(f"{what} file {str(path)!r} is empty: expected one JSON object a line")
    return rows


def validate_items(items: Sequence[dict]) -> list[dict]:
    """Checked copies of multiple-choice items {id, subject, question, choices, answer}."""
    if not items:
        raise LabkitError("no multiple-choice items: expected at least one")
    checked = []
    for index, item in enumerate(items):
        name = item.get("id", index) if isinstance(item, dict) else index
        if not isinstance(item, dict):
            raise LabkitError(f"item {index} is a {type(item).__name__}, not a dict")
        for key in ("question", "choices", "answer"):
            if key not in item:
                raise LabkitError(f"item {name!r} has no {key!r}; needs question, choices, answer")
        choices = item["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
            raise LabkitError(f"item {name!r}: choices must be a list of non-empty strings")
        if len(choices) < 2:
            raise LabkitError(
                f"item {name!r} has {len(choices)} choice(s); multiple choice needs at least 2"
            )
        answer = item["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise LabkitError(f"item {name!r}: answer={answer!r} must be an integer index")
        if not 0 <= answer < len(choices):
            raise LabkitError(f"item {name!r}: answer={answer} not in 0..{len(choices) - 1}")
        checked.append({"id": name, "subject": "all", **item})
    return checked


def load_items(path: str | Path) -> list[dict]:
    return validate_items(read_jsonl(path, "multiple-choice"))


@lru_cache(maxsize=16)
def _compiled(template: str):
    from jinja2 import BaseLoader, Environment, StrictUndefined

    # lm-eval's Jinja settings (lm_eval.utils.env)
    env = Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template)


def render_prompt(item: dict, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt of one item, rendered as lm-eval renders `doc_to_text`."""
    return _compiled(template).render(**item)


def _encode(tokenizer, text: str) -> list[int]:
    # lm-eval's tok_encode: the tokenizer's own special tokens, unless the text already starts
    # with the prefix token (BOS, else EOS) written out.
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer, context: str, continuation: str, prefix_token: int | None = None):
    """(context_ids, continuation_ids) split the way lm-eval's causal models split them."""
    if not continuation:
        raise LabkitError("continuation is empty: nothing to score")
    if not context:
        # lm-eval conditions an empty context on a prefix token (BOS, else EOS).
        from .perplexity import prefix_token_id

        prefix = prefix_token_id(tokenizer, prefix_token)
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces == len(context):
        raise LabkitError(f"context {context!r} is only whitespace: give a prompt or ''")
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def choice_logprobs(
    model, tokenizer, context: str, choices: Sequence[str], delimiter: str = TARGET_DELIMITER
) -> np.ndarray:
    """Summed log-probability (nats) of each choice given the context, all choices in one batch."""
    import torch

    max_length = model_max_length(model)
    pairs = [encode_pair(tokenizer, context, delimiter + choice) for choice in choices]
    inputs, conts = [], []
    for ctx, cont in pairs:
        if not cont:
            raise LabkitError(f"a choice of {list(choices)!r} encodes to no tokens")
        # As lm-eval: keep the last max_length + 1 tokens, feed all but the last.
        inputs.append((ctx + cont)[-(max_length + 1) :][:-1])
        conts.append(cont)
    width = max(len(x) for x in inputs)
    # Right padding needs no attention mask in a causal model: real positions never look right.
    # lm-eval feeds its batches the same way (zeros on the right, no mask).
    batch = torch.zeros(len(inputs), width, dtype=torch.long)
    for row, x in enumerate(inputs):
        batch[row, : len(x)] = torch.tensor(x)
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=batch.to(device))
            logp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
    finally:
        model.train(was_training)
    scores = []
    for row, (x, cont) in enumerate(zip(inputs, conts)):
        positions = torch.arange(len(x) - len(cont), len(x))
        picked = logp[row, positions, torch.tensor(cont)]
        scores.append(float(picked.sum()))
    return np.array(scores)


def score_items(
    model,
    tokenizer,
    items: Sequence[dict],
    template: str = PROMPT_TEMPLATE,
    delimiter: str = TARGET_DELIMITER,
    progress: Callable[[int, int], None] | None = None,
):
    """One row per item: each choice's log-prob, the acc and acc_norm predictions and hits."""
    import pandas as pd

    rows = []
    checked = validate_items(items)
    for index, item in enumerate(checked):
        prompt = render_prompt(item, template)
        logprobs = choice_logprobs(model, tokenizer, prompt, item["choices"], delimiter)
        chars = np.array([len(c) for c in item["choices"]], dtype=float)
        pred, pred_norm = int(np.argmax(logprobs)), int(np.argmax(logprobs / chars))
        rows.append(
            {
                "id": item["id"],
                "subject": item["subject"],
                "answer": item["answer"],
                "logprobs": logprobs.tolist(),
                "chars": chars.astype(int).tolist(),
                "pred": pred,
                "pred_norm": pred_norm,
                "acc": float(pred == item["answer"]),
                "acc_norm": float(pred_norm == item["answer"]),
            }
        )
        if progress is not None:
            progress(index + 1, len(checked))
    return pd.DataFrame(rows)


def accuracy_by_subject(scores):
    """acc and acc_norm per subject, with an 'all' row (the mean over items, as lm-eval's)."""
    import pandas as pd

    if len(scores) == 0:
        raise LabkitError("scores is empty: score at least one item first")
    table = scores.groupby("subject", sort=True).agg(
        items=("acc", "size"), acc=("acc", "mean"), acc_norm=("acc_norm", "mean")
    )
    total = pd.DataFrame(
        {
            "items": [len(scores)],
            "acc": [scores["acc"].mean()],
            "acc_norm": [scores["acc_norm"].mean()],
        },
        index=pd.Index(["all"], name="subject"),
    )
    return pd.concat([table, total])


def choice_scores_figure(item: dict, logprobs: Sequence[float], title: str | None = None):
    """Each choice's summed log-prob and its per-character version; the answer in green."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    choices = item["choices"]
    if len(logprobs) != len(choices):
        raise LabkitError(f"{len(logprobs)} log-probs for {len(choices)} choices")
    scores = np.asarray(logprobs, dtype=float)
    per_char = scores / np.array([len(c) for c in choices])
    colors = ["#2ca02c" if i == item["answer"] else "#9aa0a6" for i in range(len(choices))]
    labels = [f"{'ABCDEFGH'[i] if i < 8 else i}. {c[:40]}" for i, c in enumerate(choices)]
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        subplot_titles=(
            f"acc picks {labels[int(np.argmax(scores))][:2]}",
            f"acc_norm picks {labels[int(np.argmax(per_char))][:2]}",
        ),
    )
    fig.add_trace(go.Bar(y=labels, x=scores, orientation="h", marker_color=colors), 1, 1)
    fig.add_trace(go.Bar(y=labels, x=per_char, orientation="h", marker_color=colors), 1, 2)
    fig.update_xaxes(title_text="summed log-prob (nats)", row=1, col=1)
    fig.update_xaxes(title_text="log-prob per character (nats/char)", row=1, col=2)
    fig.update_yaxes(title_text="choice", autorange="reversed", row=1, col=1)
    fig.update_layout(
        title=title or f"How each choice scores: {item['question'][:60]}",
        showlegend=False,
    )
    return fig
