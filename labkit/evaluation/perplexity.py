"""Perplexity of a text under a causal LM: exp of the mean negative log-likelihood per token.

A model sees at most `window` tokens at once, so a long text is scored in windows. Two ways:

- disjoint chunks: cut the text into consecutive windows; a token early in a chunk sees almost
  no context. lm-eval's rolling log-likelihood does this too (it only lets the last, partial
  chunk look back a full window).
- strided sliding window (the Hugging Face recipe): windows start every `stride` tokens and
  each scores only its new tokens, so every token but the first few sees at least
  window - stride tokens of context. Smaller stride: lower (fairer) perplexity, more compute.

Both score every token of the text exactly once: the text is preceded by a prefix token (BOS,
else EOS), as lm-eval does, so even the first token has something to condition on. With
stride == window the two are the same computation.

Perplexity depends on the tokenizer (a tokenizer with longer tokens has fewer, harder
predictions), so models with different tokenizers are compared in bits per byte: the total
NLL in bits divided by the UTF-8 bytes of the text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import validate
from ..errors import LabkitError
from ..validate import checks, maybe, nonnegative, nonnegative_int, positive_int


@dataclass(frozen=True)
class PerplexityResult:
    nll: np.ndarray  # nats, one per token of the text(s)
    context: np.ndarray  # how many tokens (prefix included) each prediction could see
    n_bytes: int  # UTF-8 bytes of the text(s)
    forward_tokens: int  # tokens fed through the model: the compute spent
    n_windows: int
    window: int
    stride: int

    @property
    def n_tokens(self) -> int:
        return int(self.nll.size)

    @property
    def total_nll(self) -> float:
        return float(self.nll.sum())

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.total_nll, self.n_bytes)


@checks(total_nll=nonnegative)
def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """Total NLL (nats) expressed in bits, per UTF-8 byte of the scored text."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, np.integer)) or n_bytes <= 0:
        raise LabkitError(f"n_bytes={n_bytes!r}: need a non-empty text to measure bits per byte")
    return float(total_nll) / math.log(2) / n_bytes


def model_max_length(model, default: int = 2048) -> int:
    """The longest input the model accepts, read from its config (as lm-eval resolves it)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def prefix_token_id(tokenizer, override: int | None = None) -> int:
    """The token each text is conditioned on first: `override`, else BOS, else EOS."""
    if override is not None:
        return int(override)
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise LabkitError(
        "the tokenizer has neither a bos_token nor an eos_token; pass prefix_token_id=<a token id>"
    )


@checks(n_tokens=nonnegative_int, window=positive_int)
def disjoint_windows(n_tokens: int, window: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) over the stream prefix+tokens: input stream[begin:end] predicts
    stream[begin+1:end+1] and all of its predictions are new."""
    last = n_tokens  # the stream has n_tokens + 1 entries; predictions reach index n_tokens
    return [(b, min(b + window, last), min(b + window, last) - b) for b in range(0, last, window)]


@checks(n_tokens=nonnegative_int, window=positive_int, stride=positive_int)
def strided_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) of the HF strided recipe: windows begin every `stride` tokens, hold up
    to `window` tokens of input, and score only their last n_new (not yet scored) predictions."""
    if stride > window:  # windows would leave tokens between them unscored
        raise LabkitError(f"stride={stride}: valid is 1..window={window}")
    plan, done = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        plan.append((begin, end, end - done))
        done = end
        if end == n_tokens:
            break
    return plan


def _logits(model, input_ids):
    out = model(input_ids=input_ids)
    return out.logits if hasattr(out, "logits") else out[0]


def _model_device(model):
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def score_windows(model, stream: Sequence[int], plan, batch_size: int = 8):
    """Token NLLs (nats) and context lengths of stream[1:] scored by the windows of `plan`."""
    (nll,), (context,) = score_streams(model, [stream], [plan], batch_size)
    return nll, context


def score_streams(model, streams: Sequence[Sequence[int]], plans, batch_size: int = 8):
    """score_windows for several streams (documents) at once: the windows of all of them share
    batches, longest first, right-padded. A causal model never looks right, so padding changes
    no real position's prediction (beyond float rounding), and short documents cost one forward
    pass per `batch_size` of them instead of one each. Returns (nlls, contexts), one array each
    per stream."""
    import torch

    jobs = [(s, b, e, n_new) for s, plan in enumerate(plans) for b, e, n_new in plan]
    nlls = [np.full(len(stream) - 1, np.nan) for stream in streams]
    contexts = [np.zeros(len(stream) - 1, dtype=np.int64) for stream in streams]
    ids = [torch.tensor(list(stream), dtype=torch.long) for stream in streams]
    order = sorted(range(len(jobs)), key=lambda j: jobs[j][1] - jobs[j][2])  # longest first
    device = _model_device(model)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = [jobs[j] for j in order[start : start + batch_size]]
                width = max(e - b for _, b, e, _ in batch)
                inputs = torch.zeros(len(batch), width, dtype=torch.long)
                targets = torch.zeros(len(batch), width, dtype=torch.long)
                for row, (s, b, e, _) in enumerate(batch):
                    inputs[row, : e - b], targets[row, : e - b] = ids[s][b:e], ids[s][b + 1 : e + 1]
                logp = torch.log_softmax(_logits(model, inputs.to(device)).float(), dim=-1)
                token_nll = -logp.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)
                token_nll = token_nll.double().cpu().numpy()
                for row, (s, b, e, n_new) in enumerate(batch):
                    # target index j predicts stream[j + 1] from stream[b : j + 1]
                    nlls[s][e - n_new : e] = token_nll[row, e - b - n_new : e - b]
                    contexts[s][e - n_new : e] = np.arange(e - n_new, e) - b + 1
    finally:
        model.train(was_training)
    if any(np.isnan(nll).any() for nll in nlls):
        raise LabkitError("the window plan left tokens unscored; stride must be <= window")
    return nlls, contexts


def perplexity(
    model,
    tokenizer,
    texts: str | Sequence[str],
    window: int | None = None,
    stride: int | None = None,
    prefix_token: int | None = None,
    batch_size: int = 8,
) -> PerplexityResult:
    """Perplexity of `texts` (one string or several documents, each scored on its own).

    window: tokens per forward pass (default: the model's maximum length).
    stride: tokens between window starts (HF strided recipe); None gives disjoint chunks, and
        stride == window computes exactly the same thing by the strided recipe.
    """
    validate.model(model), validate.hf_tokenizer(tokenizer), positive_int(batch_size, "batch_size")
    maybe(positive_int)(window, "window"), maybe(positive_int)(stride, "stride")
    maybe(nonnegative_int)(prefix_token, "prefix_token")
    if not isinstance(texts, (str, list, tuple)):
        raise LabkitError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    docs = [texts] if isinstance(texts, str) else list(texts)
    if not docs or not all(isinstance(d, str) and d for d in docs):
        raise LabkitError("texts must be a non-empty string or a list of non-empty strings")
    limit = model_max_length(model)
    window = limit if window is None else int(window)
    if not 1 <= window <= limit:
        raise LabkitError(f"window={window}: valid is 1..{limit} (the model's maximum length)")
    disjoint = stride is None
    stride = window if disjoint else int(stride)
    if not 1 <= stride <= window:
        raise LabkitError(f"stride={stride}: valid is 1..window={window}")
    prefix = prefix_token_id(tokenizer, prefix_token)

    streams, plans, forward, windows, n_bytes = [], [], 0, 0, 0
    for doc in docs:
        tokens = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise LabkitError(f"text {doc[:40]!r} encodes to no tokens")
        if disjoint:
            plan = disjoint_windows(len(tokens), window)
        else:
            plan = strided_windows(len(tokens), window, stride)
        streams.append([prefix, *tokens])
        plans.append(plan)
        forward += sum(e - b for b, e, _ in plan)
        windows += len(plan)
        n_bytes += len(doc.encode("utf-8"))
    nlls, contexts = score_streams(model, streams, plans, batch_size)
    return PerplexityResult(
        nll=np.concatenate(nlls),
        context=np.concatenate(contexts),
        n_bytes=n_bytes,
        forward_tokens=forward,
        n_windows=windows,
        window=window,
        stride=stride,
    )


def stride_sweep(model, tokenizer, texts, window: int, strides: Sequence[int], batch_size=8):
    """One row per stride: perplexity, bits per byte, mean context and compute (forward tokens)."""
    import pandas as pd

    positive_int(window, "window")
    strides = validate.items(strides, "strides", what="strides in 1..window", empty=True)
    if not strides:
        raise LabkitError("strides is empty: give at least one stride in 1..window")
    rows = []
    for stride in sorted({positive_int(s, "strides") for s in strides}):
        result = perplexity(model, tokenizer, texts, window, stride, batch_size=batch_size)
        rows.append(
            {
                "stride": stride,
                "perplexity": result.perplexity,
                "bits_per_byte": result.bits_per_byte,
                "mean_context": float(result.context.mean()),
                "forward_tokens": result.forward_tokens,
                "windows": result.n_windows,
                "tokens": result.n_tokens,
            }
        )
    return pd.DataFrame(rows)


def stride_figure(sweep, device: str = "cpu", title: str | None = None):
    """Perplexity (left axis) and compute in forward tokens (right axis) against the stride."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    validate.frame("stride", "perplexity", "forward_tokens")(sweep, "sweep")
    validate.text(device, "device")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=sweep["stride"], y=sweep["perplexity"], mode="lines+markers", name="perplexity"
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Bar(x=sweep["stride"], y=sweep["forward_tokens"], name="forward tokens", opacity=0.35),
        secondary_y=True,
    )
    fig.update_layout(
        title=title or f"Perplexity vs stride: smaller strides buy context with compute ({device})",
        legend={"orientation": "h", "y": -0.2},
    )
    fig.update_xaxes(title_text="stride (tokens)")
    fig.update_yaxes(title_text="perplexity (per token)", secondary_y=False)
    fig.update_yaxes(title_text="compute (forward tokens)", secondary_y=True)
    return fig
