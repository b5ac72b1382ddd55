"""Token data for pre-training: pack documents into one stream, sample random blocks from it.

As in nanoGPT, the corpus is one long array of token ids (documents joined by EOS) and a batch is
`batch_size` random windows of `seq_len` tokens: no DataLoader, no padding, every position
carries loss. The samplers own a seeded torch.Generator and expose `state_dict()` so that the
training loop can checkpoint and resume the exact batch sequence.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..errors import LabkitError
from ..validate import (
    checks,
    device,
    function,
    integer,
    ints,
    nonnegative_int,
    positive_int,
    token_ids,
)
from .objectives import causal_lm_labels, check_mlm, mlm_mask


def _documents(value, name: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise LabkitError(f"{name} must be a list of token-id lists, got {type(value).__name__}")
    value = list(value)
    for i, doc in enumerate(value):
        token_ids(list(doc) if hasattr(doc, "__iter__") and not isinstance(doc, str) else doc,
                  f"{name}[{i}]", ndim=1)
    return value


def _int_dtype(value, name: str):
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise LabkitError(f"{name} must be a numpy integer dtype, got {value!r}") from None
    if not np.issubdtype(dtype, np.integer):
        raise LabkitError(f"{name}={value!r} cannot hold token ids; valid: an integer dtype")
    return dtype


@checks(documents=_documents, eos_id=nonnegative_int, dtype=lambda v, n: None if v is None else _int_dtype(v, n))
def pack_documents(
    documents: Iterable[Iterable[int]], eos_id: int, dtype: np.dtype | str | None = None
) -> np.ndarray:
    """One stream of token ids, EOS after every document (the model learns where one ends).

    The dtype is uint16 when every id fits (half the memory of int32, nanoGPT's choice), else
    int32.
    """
    parts = [np.asarray(list(doc), dtype=np.int64) for doc in documents]
    eos = np.array([eos_id], dtype=np.int64)
    stream = np.concatenate([x for doc in parts for x in (doc, eos)]) if parts else eos[:0]
    if stream.size and stream.min() < 0:
        raise LabkitError(f"token ids must be >= 0, got {int(stream.min())}")
    if dtype is None:
        dtype = np.uint16 if stream.size == 0 or stream.max() < 2**16 else np.int32
    elif stream.size and stream.max() > np.iinfo(dtype).max:
        raise LabkitError(f"dtype={np.dtype(dtype).name} cannot hold token id {int(stream.max())}; "
                          "leave dtype=None to choose one")
    return stream.astype(dtype)


def _stream(value, name: str):
    return token_ids(value, name, ndim=1)


@checks(stream=_stream, seq_len=positive_int)
def pack_blocks(stream: np.ndarray | torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into consecutive (n_blocks, seq_len) int64 blocks; the tail is dropped.

    For evaluation: a fixed, non-overlapping tiling of a validation stream.
    """
    data = torch.as_tensor(np.asarray(stream).astype(np.int64))
    n = len(data) // seq_len
    if n == 0:
        raise LabkitError(f"a stream of {len(data)} tokens holds no block of seq_len={seq_len}")
    return data[: n * seq_len].view(n, seq_len)


class RandomBlocks:
    """nanoGPT's get_batch: `batch_size` random windows of `seq_len` tokens from a packed stream.

    Calling it returns {"input_ids", "labels"} (labels = input ids; the model shifts them).
    """

    @checks(stream=_stream, seq_len=positive_int, batch_size=positive_int, seed=ints(), device=device)
    def __init__(
        self,
        stream: np.ndarray | torch.Tensor,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        stream = np.asarray(stream)
        if stream.ndim != 1:
            raise LabkitError(f"stream must be 1-D token ids, got shape {stream.shape}")
        if seq_len < 1 or batch_size < 1:
            raise LabkitError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
        if len(stream) <= seq_len:
            raise LabkitError(
                f"a stream of {len(stream)} tokens is too short for seq_len={seq_len}; "
                f"need more than {seq_len} tokens"
            )
        # torch lacks most uint16 kernels: widen once, index fast afterwards.
        self.data = torch.from_numpy(stream.astype(np.int64, copy=False))
        self.seq_len, self.batch_size, self.device = seq_len, batch_size, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._window = torch.arange(seq_len)

    def sample_cpu(self) -> torch.Tensor:
        """(batch_size, seq_len) int64 ids on the CPU, advancing the generator."""
        starts = torch.randint(
            len(self.data) - self.seq_len, (self.batch_size,), generator=self.generator
        )
        return self.data[starts[:, None] + self._window]

    def __call__(self) -> dict[str, torch.Tensor]:
        x = self.sample_cpu()
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return {"input_ids": x, "labels": causal_lm_labels(x)}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class MaskedBlocks:
    """Wraps a block sampler: the same windows, corrupted with BERT's 80/10/10 masking."""

    def __init__(
        self,
        blocks: RandomBlocks,
        vocab_size: int,
        mask_token_id: int,
        special_ids: Iterable[int] = (),
        p: float = 0.15,
        seed: int = 0,
    ):
        if not isinstance(blocks, RandomBlocks):
            raise LabkitError(f"blocks must be a RandomBlocks sampler, got {type(blocks).__name__}")
        check_mlm(vocab_size, mask_token_id, special_ids, p)
        integer(seed, "seed")
        self.blocks, self.vocab_size, self.mask_token_id = blocks, vocab_size, mask_token_id
        self.special_ids, self.p = tuple(special_ids), p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> dict[str, torch.Tensor]:
        x = self.blocks.sample_cpu()  # masking draws from a CPU generator
        corrupted, labels, _ = mlm_mask(
            x, self.vocab_size, self.mask_token_id, self.special_ids, self.p, self.generator
        )
        device = self.blocks.device
        return {"input_ids": corrupted.to(device), "labels": labels.to(device)}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "blocks": self.blocks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.blocks.load_state_dict(state["blocks"])


def unigram_cross_entropy(train_stream, held_stream, vocab_size: int) -> float:
    """Held-out NLL (nats per token) of predicting each token of `held_stream` by its add-one
    smoothed frequency in `train_stream`: the baseline a model beats once it uses context."""
    counts = np.bincount(np.asarray(train_stream, dtype=np.int64), minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(held_stream, dtype=np.int64)].mean())


@checks(get_batch=function, n=positive_int)
def fixed_batches(get_batch, n: int) -> list[dict[str, torch.Tensor]]:
    """Draw `n` batches once (e.g. for evaluation, so every eval sees the same tokens)."""
    return [get_batch() for _ in range(n)]
