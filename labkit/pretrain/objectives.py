"""The two pre-training objectives: which positions a token may see, and which carry loss.

Causal LM: position i attends to positions <= i and predicts token i+1. The labels are the input
ids themselves (padding set to -100); transformers shifts them inside the model, and so does the
loop in `loop.py`. Masked LM (BERT, Devlin et al. 2019): every position sees every other; 15% of
tokens are chosen, of those 80% become [MASK], 10% a random token and 10% stay unchanged, and only
the chosen positions carry loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import LabkitError
from ..validate import (
    checks,
    integer,
    maybe,
    nums,
    of_type,
    positive_int,
    same_shape,
    tensors,
    texts,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

IGNORE_INDEX = -100  # what torch's cross_entropy (and transformers) skip

# The kind of each position after MLM corruption, as drawn by `mlm_corruption_figure`.
KEPT, MASKED, RANDOM, UNCHANGED = 0, 1, 2, 3
KIND_NAMES = ("not chosen (no loss)", "[MASK] (80%)", "random token (10%)", "unchanged (10%)")


@checks(n=positive_int)
def causal_mask(n: int) -> torch.Tensor:
    """(n, n) bool: row i (query) may attend to column j (key) iff j <= i."""
    if n < 1:
        raise LabkitError(f"causal_mask needs n >= 1, got n={n}")
    return torch.ones(n, n, dtype=torch.bool).tril()


@checks(input_ids=tensors("int"), pad_token_id=maybe(integer), attention_mask=maybe(tensors()))
def causal_lm_labels(
    input_ids: torch.Tensor,
    pad_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Labels for next-token prediction: the input ids, with padding set to -100.

    Not shifted: the model compares logits[:, i] with labels[:, i + 1] itself.
    """
    if attention_mask is not None:
        same_shape(input_ids, attention_mask, "input_ids", "attention_mask")
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    elif pad_token_id is not None:
        labels[input_ids == pad_token_id] = IGNORE_INDEX
    return labels


def _special_ids(value, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise LabkitError(f"{name} must be a list of token ids, got {type(value).__name__}")
    return tuple(integer(i, f"{name}[{k}]", low=0) for k, i in enumerate(value))


def check_mlm(vocab_size, mask_token_id, special_ids, p) -> None:
    """The arguments of BERT's corruption, checked where a sampler is built and where it runs."""
    positive_int(vocab_size, "vocab_size")
    integer(mask_token_id, "mask_token_id", low=0, high=vocab_size - 1)
    if any(i >= vocab_size for i in _special_ids(special_ids, "special_ids")):
        raise LabkitError(f"special_ids {list(special_ids)} reach outside the vocabulary [0, {vocab_size})")
    nums(0.0, 1.0, low_open=True, high_open=True)(p, "p")


@checks(input_ids=tensors("int"), generator=maybe(of_type(torch.Generator)))
def mlm_mask(
    input_ids: torch.Tensor,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Iterable[int] = (),
    p: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's corruption: returns (corrupted_ids, labels, chosen).

    `chosen` marks the positions picked with probability `p` (never a special token);
    `labels` holds the original id there and -100 elsewhere; of the chosen positions 80% become
    `mask_token_id`, 10% a random ordinary token and 10% keep their id. All draws come from
    `generator` (on the device of `input_ids`), so a seeded generator gives the same corruption.
    """
    check_mlm(vocab_size, mask_token_id, special_ids, p)
    if input_ids.numel() and int(input_ids.min()) < 0:
        raise LabkitError(f"input_ids hold a negative id {int(input_ids.min())}; valid: ids >= 0")
    if input_ids.numel() and int(input_ids.max()) >= vocab_size:
        raise LabkitError(
            f"input_ids contain id {int(input_ids.max())} >= vocab_size={vocab_size}: "
            "tokenizer and model vocabularies differ"
        )
    special = torch.tensor(sorted({*special_ids, mask_token_id}), device=input_ids.device)
    device = input_ids.device

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device)

    chosen = (uniform() < p) & ~torch.isin(input_ids, special)
    to_mask = chosen & (uniform() < 0.8)
    # Half of the remaining 20% get a random token, the other half stay as they are.
    to_random = chosen & ~to_mask & (uniform() < 0.5)
    ordinary = torch.arange(vocab_size, device=device)
    ordinary = ordinary[~torch.isin(ordinary, special)]
    pick = torch.randint(len(ordinary), input_ids.shape, generator=generator, device=device)

    corrupted = input_ids.clone()
    corrupted[to_mask] = mask_token_id
    corrupted[to_random] = ordinary[pick][to_random]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[chosen] = input_ids[chosen]
    return corrupted, labels, chosen


def corruption_kinds(
    input_ids: torch.Tensor, corrupted_ids: torch.Tensor, chosen: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """Per position: KEPT, MASKED, RANDOM or UNCHANGED (a random draw equal to the original
    token reads as UNCHANGED, which is what the model sees)."""
    for name, t in (("input_ids", input_ids), ("corrupted_ids", corrupted_ids), ("chosen", chosen)):
        tensors()(t, name)
    same_shape(input_ids, corrupted_ids, "input_ids", "corrupted_ids")
    same_shape(input_ids, chosen, "input_ids", "chosen")
    integer(mask_token_id, "mask_token_id")
    kinds = torch.full_like(input_ids, KEPT)
    kinds[chosen & (corrupted_ids == mask_token_id)] = MASKED
    kinds[chosen & (corrupted_ids != mask_token_id) & (corrupted_ids != input_ids)] = RANDOM
    kinds[chosen & (corrupted_ids == input_ids)] = UNCHANGED
    return kinds


def _positions(tokens: Sequence[str]) -> list[str]:
    # Plotly merges equal category labels; the index keeps repeated tokens apart.
    return [f"{i}:{t}" for i, t in enumerate(tokens)]


def causal_mask_figure(tokens: Sequence[str]) -> go.Figure:
    """Heatmap of the causal mask over one sentence: which keys each query may attend to."""
    tokens = texts(tokens, "tokens")
    import plotly.graph_objects as go

    names = _positions(tokens)
    mask = causal_mask(len(tokens)).int().tolist()
    text = [["sees" if v else "" for v in row] for row in mask]
    fig = go.Figure(
        go.Heatmap(
            z=mask,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            colorscale=[[0, "#f0f0f0"], [1, "#2b6cb0"]],
            showscale=False,
            xgap=1,
            ygap=1,
            hovertemplate="query %{y}<br>key %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Causal LM: each token attends only to itself and earlier tokens",
        xaxis_title="key position: token attended to",
        yaxis_title="query position: token predicting the next one",
        yaxis_autorange="reversed",
    )
    return fig


def mlm_corruption_figure(
    tokens: Sequence[str], corrupted_tokens: Sequence[str], kinds: torch.Tensor | Sequence[int]
) -> go.Figure:
    """Heatmap of one sentence before/after BERT corruption, coloured by what happened to each
    token; only coloured columns carry loss (their label is the original token)."""
    import plotly.graph_objects as go

    tokens, corrupted_tokens = texts(tokens, "tokens"), texts(corrupted_tokens, "corrupted_tokens")
    if isinstance(kinds, (str, bytes)) or not hasattr(kinds, "__len__"):
        raise LabkitError(f"kinds must be corruption_kinds' output, got {type(kinds).__name__}")
    kinds = [integer(k, f"kinds[{i}]", low=KEPT, high=UNCHANGED)
             for i, k in enumerate(kinds.tolist() if torch.is_tensor(kinds) else kinds)]
    if len(tokens) != len(corrupted_tokens) or len(tokens) != len(kinds):
        raise LabkitError(
            f"tokens ({len(tokens)}), corrupted_tokens ({len(corrupted_tokens)}) and kinds "
            f"({len(kinds)}) must have the same length"
        )
    kinds = [int(k) for k in kinds]
    loss_row = [t if k != KEPT else "" for t, k in zip(tokens, kinds)]
    colors = ["#f0f0f0", "#c53030", "#d69e2e", "#2f855a"]
    scale = [[i / 3, c] for i, c in enumerate(colors)]
    fig = go.Figure(
        go.Heatmap(
            z=[kinds, kinds, kinds],
            x=list(range(len(tokens))),
            y=["original", "model input", "label (loss)"],
            text=[list(tokens), list(corrupted_tokens), loss_row],
            texttemplate="%{text}",
            customdata=[[KIND_NAMES[k] for k in kinds]] * 3,
            zmin=0,
            zmax=3,
            colorscale=scale,
            showscale=False,
            xgap=2,
            ygap=2,
            hovertemplate="position %{x}<br>%{text}<br>%{customdata}<extra></extra>",
        )
    )
    for kind, color in enumerate(colors):  # a legend for the four colours
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=KIND_NAMES[kind],
                marker=dict(size=12, color=color, symbol="square"),
            )
        )
    fig.update_layout(
        title="Masked LM: 15% of tokens chosen (80% [MASK], 10% random, 10% unchanged)",
        xaxis_title="token position",
        yaxis_title="row",
        yaxis_autorange="reversed",
        legend_orientation="h",
        legend_y=-0.25,
    )
    return fig
