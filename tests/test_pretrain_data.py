"""Packing documents into a stream and sampling batches from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.pretrain.data import (
    MaskedBlocks,
    RandomBlocks,
    fixed_batches,
    pack_blocks,
    pack_documents,
)

EOS = 2


def test_pack_documents_puts_eos_after_every_document():
    stream = pack_documents([[5, 6], [7], []], eos_id=EOS)
    assert stream.tolist() == [5, 6, EOS, 7, EOS, EOS]
    assert stream.dtype == np.uint16
    assert pack_documents([[70000]], eos_id=EOS).dtype == np.int32  # does not fit 16 bits
    assert pack_documents([], eos_id=EOS).size == 0
    with pytest.raises(LabkitError, match="-3"):
        pack_documents([[1, -3]], eos_id=EOS)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(3, 60000), max_size=20), max_size=20))
def test_pack_documents_round_trips(docs):
    stream = pack_documents(docs, eos_id=EOS).tolist()
    assert len(stream) == sum(map(len, docs)) + len(docs)
    split, current = [], []
    for token in stream:
        if token == EOS:
            split.append(current)
            current = []
        else:
            current.append(token)
    assert split == docs and current == []


def test_pack_blocks_tiles_the_stream():
    blocks = pack_blocks(np.arange(10, dtype=np.uint16), 4)
    assert blocks.dtype == torch.int64 and blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(LabkitError, match="seq_len=20"):
        pack_blocks(np.arange(10), 20)


def test_random_blocks_are_windows_of_the_stream_and_seeded():
    stream = np.arange(1000, dtype=np.uint16)  # window i..i+T is recognisable
    a, b = RandomBlocks(stream, 16, 8, seed=3), RandomBlocks(stream, 16, 8, seed=3)
    batch = a()
    x = batch["input_ids"]
    assert x.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x, batch["labels"])  # the model does the shift
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))  # contiguous windows
    assert int(x.max()) < 1000
    assert torch.equal(x, b()["input_ids"])
    assert not torch.equal(a()["input_ids"], x)


def test_sampler_state_round_trip_resumes_the_sequence():
    stream = np.arange(5000, dtype=np.int32)
    blocks = MaskedBlocks(RandomBlocks(stream, 8, 4, seed=1), 5000, 4, [0, 1], seed=2)
    blocks()
    state = blocks.state_dict()
    expected = [blocks() for _ in range(3)]
    fresh = MaskedBlocks(RandomBlocks(stream, 8, 4, seed=9), 5000, 4, [0, 1], seed=9)
    fresh.load_state_dict(state)
    for want, got in zip(expected, (fresh() for _ in range(3))):
        assert all(torch.equal(want[k], got[k]) for k in ("input_ids", "labels"))


def test_masked_blocks_corrupt_and_label_only_chosen_positions():
    stream = np.random.default_rng(0).integers(5, 300, 20000).astype(np.uint16)
    batch = MaskedBlocks(RandomBlocks(stream, 64, 32, seed=0), 300, 4, [0, 1, 2], seed=0)()
    chosen = batch["labels"] != -100
    assert 0.10 < chosen.float().mean().item() < 0.20
    assert (batch["input_ids"][chosen] == 4).float().mean().item() > 0.7
    assert (batch["input_ids"][~chosen] != 4).all()


def test_fixed_batches_draw_once():
    batches = fixed_batches(RandomBlocks(np.arange(100), 4, 2, seed=0), 3)
    assert len(batches) == 3 and batches[0]["input_ids"].shape == (2, 4)


def test_random_blocks_reject_bad_input():
    with pytest.raises(LabkitError, match="too short for seq_len=16"):
        RandomBlocks(np.arange(10), 16, 2)
    with pytest.raises(LabkitError, match="batch_size=0"):
        RandomBlocks(np.arange(100), 16, 0)
    with pytest.raises(LabkitError, match="1-D"):
        RandomBlocks(np.zeros((4, 40)), 16, 2)
