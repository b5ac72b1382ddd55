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

from ..errors import LabkitError


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


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """Total NLL (nats) expressed in bits, per UTF-8 byte of the scored text."""
    if n_bytes <= 0:
        raise LabkitError(f"n_bytes={n_bytes}: need a non-empty text to measure bits per byte")
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


def disjoint_windows(n_tokens: int, window: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) over the stream prefix+tokens: input stream[begin:end] predicts
    stream[begin+1:end+1] and all of its predictions are new."""
    last = n_tokens  # the stream has n_tokens + 1 entries; predictions reach index n_tokens
    return [(b, min(b + window, last), min(b + window, last) - b) for b in range(0, last, window)]


def strided_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) of the HF strided recipe: windows begin every `stride` tokens, hold up
    to `window` tokens of input, and score only their last n_new (not yet scored) predictions."""
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
    import torch

    n_targets = len(stream) - 1
    nll = np.full(n_targets, np.nan)
    context = np.zeros(n_targets, dtype=np.int64)
    ids = torch.tensor(list(stream), dtype=torch.long)
    device = _model_device(model)
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for begin, end, n_new in plan:
        by_length.setdefault(end - begin, []).append((begin, end, n_new))
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            for length, group in by_length.items():
                for start in range(0, len(group), batch_size):
                    batch = group[start : start + batch_size]
                    inputs = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
                    targets = torch.stack([ids[b + 1 : e + 1] for b, e, _ in batch]).to(device)
                    logp = torch.log_softmax(_logits(model, inputs).float(), dim=-1)
                    token_nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                    token_nll = token_nll.double().cpu().numpy()
                    for row, (b, e, n_new) in enumerate(batch):
                        # target index j predicts stream[j + 1] from stream[b : j + 1]
                        nll[e - n_new : e] = token_nll[row, length - n_new :]
                        context[e - n_new : e] = np.arange(e - n_new, e) - b + 1
    finally:
        model.train(was_training)
    if np.isnan(nll).any():
        raise LabkitError("the window plan left tokens unscored; stride must be <= window")
    return nll, context


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

    nlls, contexts, forward, windows, n_bytes = [], [], 0, 0, 0
    for doc in docs:
        tokens = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise LabkitError(f"text {doc[:40]!r} encodes to no tokens")
        if disjoint:
            plan = disjoint_windows(len(tokens), window)
        else:
            plan = strided_windows(len(tokens), window, stride)
        nll, context = score_windows(model, [prefix, *tokens], plan, batch_size)
        nlls.append(nll)
        contexts.append(context)
        forward += sum(e - b for b, e, _ in plan)
        windows += len(plan)
        n_bytes += len(doc.encode("utf-8"))
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

    if not strides:
        raise LabkitError("strides is empty: give at least one stride in 1..window")
    rows = []
    for stride in sorted(set(int(s) for s in strides)):
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
