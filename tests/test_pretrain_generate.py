"""Generation: a causal LM trained by the loop continues text; a masked LM fills blanks."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from labkit import LabkitError
from labkit.models import ModelShape, build_causal_lm, build_masked_lm
from labkit.pretrain.data import RandomBlocks, pack_documents
from labkit.pretrain.generate import continue_text, fill_blanks, mlm_generate_left_to_right
from labkit.pretrain.loop import TrainConfig, train

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] <eos> the cat sat on mat a dog ran to park".split()
SHAPE = ModelShape(d_model=32, n_layer=2, n_head=4, max_len=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]", eos_token="<eos>",
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained_causal(tokenizer):
    docs = ["the cat sat on the mat", "a dog ran to the park"]
    stream = pack_documents([tokenizer(d)["input_ids"] for d in docs] * 200, tokenizer.eos_token_id)
    model = build_causal_lm(len(WORDS), SHAPE, eos_token_id=5, bos_token_id=None, pad_token_id=0)
    config = TrainConfig(steps=50, lr=1e-2, warmup_steps=5, log_every=25, progress=False)
    history = train(model, RandomBlocks(stream, 16, 8, seed=0), config)
    assert history["loss"].iloc[-1] < 0.5  # two memorised sentences
    return model


def test_causal_model_trained_by_the_loop_continues_the_sentence(trained_causal, tokenizer):
    assert continue_text(trained_causal, tokenizer, "the cat", 4) == "sat on the mat"
    assert continue_text(trained_causal, tokenizer, "a dog", 8).startswith("ran to the park")


def test_greedy_continuation_equals_a_manual_argmax_loop(tokenizer):
    model = build_causal_lm(len(WORDS), SHAPE, seed=3, eos_token_id=None, bos_token_id=None)
    ids = tokenizer("the cat")["input_ids"]
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    expected = tokenizer.decode(ids[2:], skip_special_tokens=True)
    assert continue_text(model, tokenizer, "the cat", 6) == expected


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tokenizer):
    model = build_causal_lm(len(WORDS), SHAPE, seed=3, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = continue_text(model, tokenizer, "the", 12, top_k=8, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert a == continue_text(model, tokenizer, "the", 12, top_k=8, seed=5)
    others = {continue_text(model, tokenizer, "the", 12, top_k=8, seed=s) for s in range(6, 10)}
    assert others - {a}  # a different seed draws a different text


def test_fill_blanks_predicts_each_mask_from_the_logits(tokenizer):
    model = build_masked_lm(len(WORDS), SHAPE, seed=1)
    result = fill_blanks(model, tokenizer, "the cat [MASK] on the [MASK]", top_k=3)
    model.eval()
    with torch.no_grad():
        logits = model(**tokenizer("the cat [MASK] on the [MASK]", return_tensors="pt")).logits[0]
    logits[:, :6] = -torch.inf  # special tokens are never proposed
    best = [WORDS[int(logits[i].argmax())] for i in (2, 5)]
    assert [p[0][0] for p in result.predictions] == best
    assert result.text.split() == ["the", "cat", best[0], "on", "the", best[1]]
    probs = [p for _, p in result.predictions[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    with pytest.raises(LabkitError, match="holds no \\[MASK\\]"):
        fill_blanks(model, tokenizer, "the cat sat")


def test_mlm_left_to_right_generation_appends_one_guess_at_a_time(tokenizer):
    model = build_masked_lm(len(WORDS), SHAPE, seed=1)
    text = mlm_generate_left_to_right(model, tokenizer, "the cat", 5)
    ids = tokenizer("the cat")["input_ids"]
    model.eval()
    for _ in range(5):
        with torch.no_grad():
            logits = model(torch.tensor([ids + [4]])).logits[0, -1]
        logits[:6] = -torch.inf  # special tokens are never chosen
        ids.append(int(logits.argmax()))
    assert text == tokenizer.decode(ids[2:])
    assert len(text.split()) == 5


def test_generation_rejects_bad_requests(tokenizer):
    bert = build_masked_lm(len(WORDS), SHAPE)
    with pytest.raises(LabkitError, match="cannot generate"):
        continue_text(bert, tokenizer, "the cat")
    llama = build_causal_lm(len(WORDS), SHAPE)
    with pytest.raises(LabkitError, match="max_position_embeddings=32"):
        continue_text(llama, tokenizer, "the cat", 40)
