"""Multiple choice by log-likelihood, the way lm-eval scores MMLU-style tests.

Each choice is a continuation of the prompt; its score is the summed log-probability of its
tokens given the prompt. acc takes the argmax of the sums; acc_norm divides each sum by the
choice's length in characters first, so long answers are not punished for having more tokens.

Tokenization follows lm-eval's `_encode_pair` exactly, which is what makes the numbers agree:
the continuation is " " + choice; trailing spaces of the context move onto the continuation;
context + continuation is encoded as one string and split at the length of the encoded context
(encoding the two apart would tokenize the word boundary differently).

Two item shapes are accepted: MMLU's ({question, choices: [...], answer: index}) and ARC's
({question, choices: {text: [...], label: [...]}, answerKey: label}). Two ways of scoring:
"continuation" (the choices' own words, as lm-eval's ARC and this world's task) and "letters"
(MMLU's format in lm-eval: the choices listed as "A. ..." under the question, then " A", " B",
... scored after "Answer:").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import validate
from ..errors import LabkitError
from ..validate import checks, function, hf_tokenizer, maybe, text
from .perplexity import model_max_length

# The one prompt of the knowledge test, in Jinja so that lm-eval's task YAML uses the same text.
PROMPT_TEMPLATE = (
    "{% if context is defined and context %}{{ context }}\n\n{% endif %}"
    "Question: {{ question }}\nAnswer:"
)
TARGET_DELIMITER = " "
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# lm-eval's MMLU prompt (tasks/mmlu/default/_default_template_yaml), for any number of choices;
# its per-subject task files prepend the description, "_" in the subject name read as " ".
LETTER_TEMPLATE = (
    "{{ question.strip() }}{% for choice in choices %}\n"
    "{{ 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[loop.index0] }}. {{ choice }}{% endfor %}\nAnswer:"
)
MMLU_DESCRIPTION = (
    "The following are multiple choice questions (with answers) about "
    "{{ subject.replace('_', ' ') }}.\n\n"
)
SCORINGS = ("continuation", "letters")


def read_jsonl(path: str | Path, what: str = "items") -> list[dict]:
    """The objects of a JSONL file; one clear error for a missing, empty or malformed file."""
    path = Path(validate.path_like(path, "path"))
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
                raise LabkitError(f"{what} file {path}:{number} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LabkitError(f"{path}:{number} is a {type(row).__name__}, not a JSON object")
            rows.append(row)
    if not rows:
        raise LabkitError(f"{what} file {str(path)!r} is empty: expected one JSON object a line")
    return rows


def _from_arc(item: dict, name) -> dict:
    """An ARC-shaped item (choices {text, label}, answerKey) in MMLU's shape; labels kept."""
    choices = item["choices"]
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise LabkitError(f"item {name!r}: ARC-style choices need lists 'text' and 'label' of "
                          f"the same length, got keys {sorted(choices)}")
    if "answerKey" not in item and "answer" not in item:
        raise LabkitError(f"item {name!r} has no 'answerKey'; ARC-style items name the right "
                          f"label, one of {labels}")
    if "answerKey" in item:
        key = str(item["answerKey"]).strip()
        if key not in [str(label) for label in labels]:
            raise LabkitError(f"item {name!r}: answerKey={key!r} is not one of the labels {labels}")
        item = {**item, "answer": [str(label) for label in labels].index(key)}
    return {**item, "choices": texts, "labels": labels}


def validate_items(items: Sequence[dict]) -> list[dict]:
    """Checked copies of multiple-choice items {id, subject, question, choices, answer}.

    ARC-shaped items (choices {text, label}, answerKey) come back in that shape too, with their
    labels under "labels".
    """
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Sequence):
        raise LabkitError(f"items must be a list of item dicts, got {type(items).__name__}")
    if not items:
        raise LabkitError("no multiple-choice items: expected at least one")
    checked = []
    for index, item in enumerate(items):
        name = item.get("id", index) if isinstance(item, dict) else index
        if not isinstance(item, dict):
            raise LabkitError(f"item {index} is a {type(item).__name__}, not a dict")
        if isinstance(item.get("choices"), dict):
            item = _from_arc(item, name)
        for key in ("question", "choices", "answer"):
            if key not in item:
                raise LabkitError(f"item {name!r} has no {key!r}; needs question, choices, answer "
                                  "(or ARC's choices {text, label} and answerKey)")
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
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # lm-eval's Jinja settings (lm_eval.utils.env), sandboxed: a caller's template may not reach
    # Python internals (__class__, __globals__, ...) and through them run code
    env = SandboxedEnvironment(loader=BaseLoader(), undefined=StrictUndefined,
                               keep_trailing_newline=True)
    return env.from_string(template)


def render_prompt(item: dict, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt of one item, rendered as lm-eval renders `doc_to_text`."""
    from jinja2 import TemplateError

    validate.of_type(dict)(item, "item"), text(template, "template")
    try:
        return _compiled(template).render(**item)
    except TemplateError as exc:  # SecurityError (sandbox), UndefinedError, TemplateSyntaxError
        raise LabkitError(f"template cannot render this item: {type(exc).__name__}: {exc}") from None


def _encode(tokenizer, text: str) -> list[int]:
    # lm-eval's tok_encode: the tokenizer's own special tokens, unless the text already starts
    # with the prefix token (BOS, else EOS) written out.
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


@checks(tokenizer=hf_tokenizer, context=text, continuation=text, prefix_token=maybe(validate.nonnegative_int))
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


def _request(ctx: list[int], cont: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """(model input, continuation ids) of one request, truncated as lm-eval truncates."""
    if not cont:
        raise LabkitError("a continuation encodes to no tokens: nothing to score")
    # As lm-eval: keep the last max_length + 1 tokens, feed all but the last.
    return (ctx + cont)[-(max_length + 1) :][:-1], cont


LOGITS_BUDGET = 2**25  # floats of logits per forward pass (128 MiB): GPT-2's 50k vocabulary


def _rows_per_pass(model, width: int, batch_size: int) -> int:
    """batch_size, or fewer rows where the batch's logits would pass LOGITS_BUDGET."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 50_000
    return max(1, min(batch_size, LOGITS_BUDGET // (width * vocab)))


def continuation_logprobs(model, requests: Sequence[tuple[list[int], list[int]]],
                          batch_size: int = 64,
                          progress: Callable[[int, int], None] | None = None,
                          share_context: bool = True) -> np.ndarray:
    """Summed log-probability (nats) of each continuation after its context: `requests` are
    (context_ids, continuation_ids) pairs (encode_pair's), scored about `batch_size`
    continuations to a forward pass; `progress(done, total)` is called after each pass.

    lm-eval feeds context + continuation for every choice. With `share_context` (and a model
    that returns a KV cache), the choices of one question run their shared context once and
    only their own tokens after it, reading the context's keys and values from the cache: the
    same arithmetic on 3-4x fewer tokens, equal to lm-eval's log-probs up to float rounding
    (tests/test_evaluation_multiple_choice.py and tests/test_standard_models.py check it).
    Otherwise, and for requests longer than the model, requests are sorted by length and
    right-padded into one forward pass per batch (a causal model never looks right).
    """
    import torch

    validate.model(model), validate.positive_int(batch_size, "batch_size")
    max_length = model_max_length(model)
    rows = [_request(list(ctx), list(cont), max_length) for ctx, cont in requests]
    scores = np.full(len(rows), np.nan)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], len(rows))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rest = list(range(len(rows)))
            if share_context and _returns_cache(model):
                groups: dict[tuple, list[int]] = {}
                for i, (ctx, cont) in enumerate(requests):
                    if len(ctx) + len(cont) <= max_length + 1:  # not truncated: ctx is its own
                        groups.setdefault(tuple(ctx), []).append(i)
                shared = _shared_context_logprobs(model, groups, rows, batch_size, scores, tick)
                rest = [i for i in rest if i not in shared]
            _padded_logprobs(model, rows, rest, batch_size, scores, tick)
    finally:
        model.train(was_training)
    return scores


def _padded_logprobs(model, rows, indices, batch_size, scores, tick) -> None:
    """Each (input, continuation) row as one row of a right-padded batch, longest first."""
    import torch

    order = sorted(indices, key=lambda i: -len(rows[i][0]))
    device = next(iter(model.parameters())).device
    start = 0
    while start < len(order):
        width = len(rows[order[start]][0])  # the longest of the batch (sorted)
        batch = order[start : start + _rows_per_pass(model, width, batch_size)]
        start += len(batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)  # lm-eval pads with 0
        for row, i in enumerate(batch):
            ids[row, : len(rows[i][0])] = torch.tensor(rows[i][0])
        logits = model(input_ids=ids.to(device)).logits
        for row, i in enumerate(batch):
            x, cont = rows[i]
            # only the positions that predict the continuation: log_softmax of those
            span = logits[row, len(x) - len(cont) : len(x)].float()
            scores[i] = _summed(span, cont)
        tick(len(batch))


def _summed(logits, cont) -> float:
    """Summed log-prob of the tokens `cont`, each predicted by its row of `logits`."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    return float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum())


def _cache_argument(model) -> str:
    """The forward() keyword of the KV cache: `cache` (transformers >= 5.2x), else the older
    `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returns_cache(model) -> bool:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "use_cache" in params and _cache_argument(model) in params


def _shared_context_logprobs(model, groups, rows, batch_size, scores, tick) -> set[int]:
    """Score each group of requests with one context: the contexts (of equal length, so no
    padding) run once with use_cache; the cache is repeated for each continuation, which then
    feeds all its tokens but the last, right-padded. Returns the requests it scored (none if
    the model gives back no cache it can repeat)."""
    import torch

    device = next(iter(model.parameters())).device
    argument = _cache_argument(model)
    by_length: dict[int, list[tuple]] = {}
    for ctx in groups:
        by_length.setdefault(len(ctx), []).append(ctx)
    scored: set[int] = set()
    for length, contexts in sorted(by_length.items(), reverse=True):
        chunk, n_rows = [], 0
        for k, ctx in enumerate(contexts):
            chunk.append(ctx)
            n_rows += len(groups[ctx])
            width = max(len(rows[i][1]) for c in chunk for i in groups[c])
            last = k == len(contexts) - 1
            if not last and n_rows < _rows_per_pass(model, length + width, batch_size):
                continue
            out = model(torch.tensor([list(c) for c in chunk], device=device), use_cache=True)
            cache = out.get("cache", None)
            cache = out.get("past_key_values", None) if cache is None else cache
            if not hasattr(cache, "batch_select_indices"):
                return scored  # no cache to reuse: the caller scores the rest padded
            members = [(row, i) for row, c in enumerate(chunk) for i in groups[c]]
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
            feed_width = max(len(rows[i][1]) for _, i in members) - 1
            if feed_width > 0:
                cache.batch_select_indices(torch.tensor([row for row, _ in members], device=device))
                feed = torch.zeros(len(members), feed_width, dtype=torch.long)
                for r, (_, i) in enumerate(members):
                    cont = rows[i][1]
                    feed[r, : len(cont) - 1] = torch.tensor(cont[:-1])
                logits = model(feed.to(device), use_cache=True, **{argument: cache}).logits
            for r, (row, i) in enumerate(members):
                cont = rows[i][1]
                scores[i] = float(first[row, cont[0]]) + (
                    _summed(logits[r, : len(cont) - 1], cont[1:]) if len(cont) > 1 else 0.0)
                scored.add(i)
            tick(len(members))
            chunk, n_rows = [], 0
    return scored


def choice_logprobs(
    model, tokenizer, context: str, choices: Sequence[str], delimiter: str = TARGET_DELIMITER
) -> np.ndarray:
    """Summed log-probability (nats) of each choice given the context, all choices in one batch."""
    validate.model(model), hf_tokenizer(tokenizer), text(context, "context"), text(delimiter, "delimiter")
    choices = validate.texts(choices, "choices")
    pairs = [encode_pair(tokenizer, context, delimiter + choice) for choice in choices]
    for _, cont in pairs:
        if not cont:
            raise LabkitError(f"a choice of {list(choices)!r} encodes to no tokens")
    return continuation_logprobs(model, pairs, batch_size=len(pairs))


def scored_choices(item: dict, scoring: str = "continuation") -> list[str]:
    """What is scored after the prompt: the choices' words, or their letters (MMLU)."""
    if scoring == "letters":
        if len(item["choices"]) > len(LETTERS):
            raise LabkitError(f"{len(item['choices'])} choices: letters go up to {len(LETTERS)}")
        return list(LETTERS[: len(item["choices"])])
    return list(item["choices"])


def score_items(
    model,
    tokenizer,
    items: Sequence[dict],
    template: str | None = None,
    delimiter: str = TARGET_DELIMITER,
    progress: Callable[[int, int], None] | None = None,
    scoring: str = "continuation",
    description: str = "",
    batch_size: int = 128,
):
    """One row per item: each choice's log-prob, the acc and acc_norm predictions and hits.

    scoring="continuation" scores the choices' words after PROMPT_TEMPLATE; "letters" lists
    them under the question (LETTER_TEMPLATE) and scores " A", " B", ... as lm-eval's MMLU does
    (acc_norm then equals acc: every letter is one character). `template` replaces the prompt;
    `description` (Jinja over the item, e.g. MMLU_DESCRIPTION) goes before it, as lm-eval's
    task `description`. `batch_size` choices (of any items) share one padded forward pass.
    """
    import pandas as pd

    if scoring not in SCORINGS:
        raise LabkitError(f"scoring={scoring!r}; valid: {', '.join(SCORINGS)}")
    validate.model(model), hf_tokenizer(tokenizer), maybe(text)(template, "template")
    text(delimiter, "delimiter"), maybe(function)(progress, "progress"), text(description, "description")
    if template is None:
        template = LETTER_TEMPLATE if scoring == "letters" else PROMPT_TEMPLATE
    validate.positive_int(batch_size, "batch_size")
    checked = validate_items(items)
    # Every choice of every item is one request; they are scored many to a forward pass.
    requests, owner = [], []
    for index, item in enumerate(checked):
        prompt = render_prompt(item, description + template)
        for choice in scored_choices(item, scoring):
            ctx, cont = encode_pair(tokenizer, prompt, delimiter + choice)
            if not cont:
                raise LabkitError(f"item {item['id']!r}: choice {choice!r} encodes to no tokens")
            requests.append((ctx, cont))
            owner.append(index)
    report = None if progress is None else (
        lambda done, total: progress(len(checked) * done // total, len(checked)))
    scores = continuation_logprobs(model, requests, batch_size, report)
    owner = np.array(owner)
    rows = []
    for index, item in enumerate(checked):
        choices = scored_choices(item, scoring)
        logprobs = scores[owner == index]
        chars = np.array([len(c) for c in choices], dtype=float)
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
    return pd.DataFrame(rows)


def accuracy_by_subject(scores):
    """acc and acc_norm per subject, with an 'all' row (the mean over items, as lm-eval's)."""
    import pandas as pd

    if len(validate.frame("subject", "acc", "acc_norm", empty=True)(scores, "scores")) == 0:
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

    item = validate_items([item])[0]
    choices = item["choices"]
    logprobs = validate.numbers(logprobs, "logprobs")
    if len(logprobs) != len(choices):
        raise LabkitError(f"logprobs: {len(logprobs)} log-probs for {len(choices)} choices")
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
