"""Every lab's main functions on the standard Hugging Face causal-LM families (issue 19).

Each family is built from a small config with random weights: GPT-2 (Conv1D projections, q/k/v
fused in c_attn), Llama, Qwen2 (q/k/v biases), OPT (biases, learned positions), GPT-NeoX /
Pythia (q/k/v fused in one nn.Linear, partial rotary) and Mistral-style GQA (fewer key/value
heads than query heads). The tokenizer is trained here with `tokenizers` the way GPT-2's is
built: byte-level BPE, unk = bos = eos = <|endoftext|>, no pad token; one copy carries a ChatML
template (as Qwen's and SmolLM2's tokenizers do, with generation markers for assistant-only
loss), one has no chat template (as GPT-2's and Pythia's). Each model is saved with
save_pretrained and loaded back through labkit.loaders: nothing is downloaded.

Tolerances were measured on these models (fp32 on CPU) and carry a margin of 3x or more.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest
import torch

from labkit.align import (
    conversation_loss,
    evaluate_answers,
    generate_answers,
    reward_model_from,
    reward_scores,
    sample_responses,
    sequence_logprobs,
    sft_train,
    train_preference,
)
from labkit.align.sft import PLAIN_CHAT_TEMPLATE, lora_targets
from labkit.env import bnb_cpu_4bit_fused_bf16
from labkit.errors import LabkitError
from labkit.evaluation import encode_pair, perplexity, score_items
from labkit.loaders import _resolve, load_model, load_records, load_tokenizer
from labkit.models import STANDARD_FAMILIES, ModelShape, build_standard_lm
from labkit.quant import (
    QuantLinear,
    gptq_quantize_model,
    linear_stored_bytes,
    load_bnb_model,
    quantize_model,
)
from labkit.quant.gptq import (
    is_linear,
    linear_layers,
    linear_weight,
    rtn_quantize_weight,
    set_linear_weight,
)
from labkit.quant.tradeoff import TradeoffBench, quantization_damage, tradeoff_table
from labkit.yourmodel import CELLS, PRELUDE

VOCAB = 400
# GPT-2's context, so that every preference pair and conversation of the world fits
SHAPE = ModelShape(d_model=64, n_layer=2, n_head=4, d_ff=128, max_len=1024)
CHATML = (
    "{%- for message in messages -%}<|im_start|>{{ message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{%- else -%}{{ message['content'] }}<|im_end|>{%- endif -%}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gpt2_like_tokenizer(texts, chat_template: str | None):
    """Byte-level BPE as GPT-2's: unk = bos = eos = <|endoftext|>, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   model_max_length=SHAPE.max_len)
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """family -> saved folder (model + ChatML tokenizer); "plain" -> the template-less one."""
    root = tmp_path_factory.mktemp("standard-models")
    texts = [d["text"] for d in load_records("corpus")[:300]]
    chat = gpt2_like_tokenizer(texts, CHATML)
    plain = copy.deepcopy(chat)
    plain.chat_template = None
    plain.save_pretrained(root / "plain")
    out = {"plain": root / "plain"}
    for family in STANDARD_FAMILIES:
        model = build_standard_lm(family, len(chat), SHAPE, bos_token_id=chat.bos_token_id,
                                  eos_token_id=chat.eos_token_id)
        model.save_pretrained(root / family)
        chat.save_pretrained(root / family)
        out[family] = root / family
    return out


_LOADED: dict = {}


def loaded(folders, family):
    """(model, a fresh tokenizer) of a family; the model is loaded once and must not be changed
    (TRL sets a pad token on the tokenizer it is given, hence a fresh one each time)."""
    if family not in _LOADED:
        _LOADED[family] = load_model(str(folders[family]))
    return _LOADED[family], load_tokenizer(str(folders[family]))


@pytest.fixture(scope="session")
def world():
    heldout = [d["text"] for d in load_records("heldout")]
    return {
        "texts": [t[:300] for t in heldout[:3]],
        "items": load_records("knowledge_mc")[:4],
        "questions": load_records("sft_eval")[:3],
        "conversations": [c["messages"] for c in load_records("instructions_curated")[:4]],
        "pairs": [p for p in load_records("preferences") if p["split"] == "train"][:4],
    }


@pytest.fixture(scope="session")
def calib(folders):
    tok = load_tokenizer(str(folders["llama"]))
    ids = tok(" ".join(d["text"] for d in load_records("corpus")[:60]))["input_ids"]
    return torch.tensor(ids[: 16 * 64]).reshape(16, 64)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def kl(reference, other):
    """Mean KL(reference || other) of next-token distributions, nats."""
    p = torch.log_softmax(reference, -1)
    q = torch.log_softmax(other, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


families = pytest.mark.parametrize("family", STANDARD_FAMILIES)


# --- loading -------------------------------------------------------------------------------


@families
def test_loads_a_saved_folder_with_a_gpt2_style_tokenizer(folders, family):
    model, tok = loaded(folders, family)
    fresh = build_standard_lm(family, len(tok), SHAPE, bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(model, ids), logits(fresh, ids))
    # transformers' Qwen2Tokenizer sets pad = <|endoftext|> = eos, as Qwen's own tokenizer has
    assert tok.pad_token_id == (tok.eos_token_id if family == "qwen2" else None)
    assert tok.unk_token_id == tok.bos_token_id == tok.eos_token_id
    layers = linear_layers(model)
    kinds = {type(m).__name__ for m in layers.values()}
    assert kinds == ({"Conv1D"} if family == "gpt2" else {"Linear"})
    if family == "mistral":
        assert model.config.num_key_value_heads < model.config.num_attention_heads
    if family == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None


def test_a_pytorch_bin_only_folder_is_refused_with_the_conversion(folders, tmp_path):
    model, _ = loaded(folders, "gpt2")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(LabkitError, match="safetensors only") as err:
        load_model(str(tmp_path))
    assert "save_pretrained" in str(err.value) and "pytorch_model.bin" in str(err.value)


@pytest.mark.parametrize("hub_id", ["gpt2", "distilgpt2", "EleutherAI/pythia-14m"])
def test_hub_ids_with_and_without_a_slash(monkeypatch, hub_id):
    monkeypatch.setenv("LABKIT_ONLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert _resolve(hub_id, {"base": "models/base"}, "model") == (hub_id, False)
    monkeypatch.setenv("LABKIT_ONLINE", "0")
    with pytest.raises(LabkitError, match="LABKIT_ONLINE=1"):
        _resolve(hub_id, {"base": "models/base"}, "model")
    with pytest.raises(LabkitError, match="no such local path"):
        _resolve("../nowhere", {"base": "models/base"}, "model")


# --- evaluation: perplexity and multiple choice ----------------------------------------------


@families
def test_perplexity_equals_one_unpadded_forward_pass(folders, world, family):
    model, tok = loaded(folders, family)
    text = world["texts"][0]
    result = perplexity(model, tok, text)
    ids = [tok.eos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    logp = torch.log_softmax(logits(model, torch.tensor([ids[:-1]]))[0], -1)
    expected = -logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    np.testing.assert_allclose(result.nll, expected.double().numpy(), atol=1e-4)
    # random weights: about as surprised as a uniform guess over the vocabulary
    assert VOCAB / 3 < result.perplexity < 3 * VOCAB


@families
def test_multiple_choice_equals_each_choice_scored_alone(folders, world, family):
    model, tok = loaded(folders, family)
    scores = score_items(model, tok, world["items"])
    assert len(scores) == len(world["items"]) and scores["acc"].isin([0.0, 1.0]).all()
    item, row = world["items"][0], scores.iloc[0]
    prompt = f"Question: {item['question']}\nAnswer:"
    for choice, got in zip(item["choices"], row["logprobs"]):
        ctx, cont = encode_pair(tok, prompt, " " + choice)
        logp = torch.log_softmax(logits(model, torch.tensor([ctx + cont[:-1]]))[0], -1)
        picked = logp[len(ctx) - 1:].gather(1, torch.tensor(cont)[:, None])
        assert got == pytest.approx(float(picked.sum()), abs=1e-4)


# --- generation --------------------------------------------------------------------------------


@families
def test_generation_left_pads_with_eos_and_matches_one_by_one(folders, world, family):
    model, tok = loaded(folders, family)
    questions = [q["question"] for q in world["questions"]]
    for chat in (False, True):
        batch = generate_answers(model, tok, questions, max_new_tokens=6, chat=chat)
        alone = [generate_answers(model, tok, [q], max_new_tokens=6, chat=chat)[0]
                 for q in questions]
        assert batch == alone
    frame = evaluate_answers(model, tok, world["questions"], max_new_tokens=6)
    assert len(frame) == len(questions) and frame["exact"].dtype == bool


def test_end_of_turn_comes_from_the_template_not_from_a_name(folders):
    from labkit.align.sft import _end_of_turn_ids, _stop_ids

    chat = load_tokenizer(str(folders["llama"]))
    plain = load_tokenizer(str(folders["plain"]))
    im_end = chat.convert_tokens_to_ids("<|im_end|>")
    assert _end_of_turn_ids(chat) == [im_end] and _stop_ids(chat) == [im_end, chat.eos_token_id]
    # GPT-2 maps any unknown name (such as <|end|>) to unk = eos: only eos stops it
    assert _end_of_turn_ids(plain) == [] and _stop_ids(plain) == [plain.eos_token_id]
    plain.chat_template = PLAIN_CHAT_TEMPLATE
    assert _end_of_turn_ids(plain) == [plain.eos_token_id]


def test_chat_without_a_template_says_what_to_do(folders, world):
    model, _ = loaded(folders, "gpt2")
    plain = load_tokenizer(str(folders["plain"]))
    with pytest.raises(LabkitError, match="chat=False.*PLAIN_CHAT_TEMPLATE"):
        generate_answers(model, plain, ["Who?"], max_new_tokens=2)
    (text, ended), = generate_answers(model, plain, ["Who?"], max_new_tokens=3, chat=False)
    assert isinstance(text, str) and ended is False  # no template: no end of turn to reach
    plain.chat_template = PLAIN_CHAT_TEMPLATE
    assert len(evaluate_answers(model, plain, world["questions"], max_new_tokens=3)) == 3


# --- SFT, DPO, reward ----------------------------------------------------------------------------


@families
def test_sft_steps_lower_the_loss_full_and_lora(folders, world, family):
    model, tok = loaded(folders, family)
    convs = world["conversations"]
    before = conversation_loss(model, tok, convs)
    full = sft_train(model, tok, convs, steps=3, lr=1e-2, batch_size=len(convs))
    assert conversation_loss(full.model, tok, convs) < before - 0.05
    lora = sft_train(model, tok, convs, steps=3, lr=1e-2, batch_size=len(convs), lora=True)
    assert conversation_loss(lora.model, tok, convs) < before - 0.05
    # every linear layer carries an adapter (peft's "all-linear" outside Llama's names)
    wrapped = {n.rsplit(".", 1)[-1] for n in lora.config["lora"]["target_modules"]}
    assert wrapped == {n.rsplit(".", 1)[-1] for n in linear_layers(model)}
    assert (lora_targets(model) == "all-linear") == (family in ("gpt2", "opt", "gpt_neox"))
    assert 0 < lora.trainable_params < full.trainable_params


@families
def test_a_dpo_step_starts_at_ln2_and_widens_the_margin(folders, world, family):
    model, tok = loaded(folders, family)
    pairs = world["pairs"]
    run = train_preference("dpo", model, tok, pairs, steps=3, lr=5e-3, batch_size=len(pairs))
    losses = run.history["loss"].tolist()
    # policy == reference at step 1; OPT applies dropout functionally (config.dropout = 0.1),
    # which TRL's disable_dropout (nn.Dropout modules) does not reach: 0.681 measured
    assert losses[0] == pytest.approx(math.log(2), abs=0.03 if family == "opt" else 1e-4)
    assert losses[-1] < losses[0] - 0.05  # measured: 0.69 -> 0.40..0.47 on these families


@families
def test_reward_scores_pad_with_eos_and_do_not_depend_on_the_batch(folders, family):
    model, tok = loaded(folders, family)
    rm = reward_model_from(model, tok)
    assert rm.config.pad_token_id == tok.eos_token_id
    prompts = ["Where is Tarsk?", "Who founded the city of Velmora in the north?", "Why?"]
    answers = ["In Velmora.", "Nobody knows.", "Because the river floods every spring."]
    batch = reward_scores(rm, tok, prompts, answers)
    alone = torch.cat([reward_scores(rm, tok, [p], [a]) for p, a in zip(prompts, answers)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    assert len(set(batch.tolist())) == 3


@families
def test_rlhf_rollouts_left_pad_with_eos_and_score_as_unpadded(folders, family):
    model, tok = loaded(folders, family)
    prompts = ["Where is Tarsk?", "Who founded the city of Velmora in the north?"]
    rollout = sample_responses(model, tok, prompts, max_new_tokens=5, seed=0)
    padded = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask,
                               rollout.response_mask).sum(-1)
    for row in range(len(prompts)):
        keep = rollout.attention_mask[row].bool()
        ids, mask = rollout.input_ids[row][keep][None], rollout.response_mask[row][keep][None]
        alone = sequence_logprobs(model, ids, torch.ones_like(ids), mask).sum()
        assert float(padded[row]) == pytest.approx(float(alone), abs=1e-4)


# --- quantization ----------------------------------------------------------------------------

SCHEMES = [("rtn", 4, 32), ("absmax", 8, None), ("nf4", 4, None), ("llm_int8", 8, None),
           ("gptq", 4, 32), ("awq", 4, 32)]
# KL(fp32 || quantized) of next-token distributions, nats, on held-out tokens: 5x the largest
# measured over the six families (8-bit: 2.6e-7..1.9e-6; 4-bit: 2.3e-5..1.9e-4)
MAX_KL = {8: 1e-5, 4: 1e-3}


@families
@pytest.mark.parametrize("scheme,bits,group_size", SCHEMES)
def test_quantized_model_stays_close_to_fp32(folders, calib, family, scheme, bits, group_size):
    model, _ = loaded(folders, family)
    q = quantize_model(model, scheme, bits, group_size, calib=calib[:8])
    n_linear = len(linear_layers(model))
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == n_linear > 0
    assert not any(is_linear(m) for m in linear_layers(q).values())
    fp32_bytes = sum(4 * p.numel() for m in model.modules() if is_linear(m) for p in m.parameters())
    assert linear_stored_bytes(model) == fp32_bytes > linear_stored_bytes(q)
    held_out = calib[8:12]
    assert kl(logits(model, held_out), logits(q, held_out)) < MAX_KL[bits]


@families
def test_gptq_beats_round_to_nearest_on_layer_and_model_output(folders, calib, family):
    model, _ = loaded(folders, family)
    gptq = copy.deepcopy(model)
    results = gptq_quantize_model(gptq, calib, bits=3, group_size=None)
    assert set(results) == set(linear_layers(model))
    # summed layer output error, GPTQ / RTN: 0.58..0.74 measured; whole-model logits: 0.41..0.50
    assert sum(r.error for r in results.values()) < 0.9 * sum(r.rtn_error for r in results.values())
    rtn = copy.deepcopy(model)
    for layer in linear_layers(rtn).values():
        set_linear_weight(layer, rtn_quantize_weight(linear_weight(layer), 3, None))
    reference = logits(model, calib)
    gptq_error = (logits(gptq, calib) - reference).pow(2).mean()
    rtn_error = (logits(rtn, calib) - reference).pow(2).mean()
    assert gptq_error < 0.8 * rtn_error


@families
def test_nf4_and_int8_agree_with_bitsandbytes(folders, calib, family, bnb_fp32_path):
    model, _ = loaded(folders, family)
    ids = calib[:4]
    reference = logits(model, ids)
    nf4 = logits(quantize_model(model, "nf4", 4), ids)
    bnb_nf4 = logits(bnb_fp32_path(load_bnb_model(folders[family], "nf4", device="cpu")), ids)
    # the same codes and scales (GPT-2's Conv1D transposed as transformers' bnb loader does):
    # identical logits measured on every family
    torch.testing.assert_close(nf4, bnb_nf4, atol=1e-5, rtol=0)
    if bnb_cpu_4bit_fused_bf16():
        # bitsandbytes' own choice on this CPU: bf16 activations. Measured on an AVX512-BF16
        # CPU (AMD EPYC): max |difference| 0.0017-0.0036 on logits up to ~1.2, KL to labkit's
        # nf4 4e-8..2e-7 across the six families
        fused = logits(load_bnb_model(folders[family], "nf4", device="cpu"), ids)
        assert (fused - nf4).abs().max() < 0.01 and kl(nf4, fused) < 2e-6
    int8 = logits(quantize_model(model, "llm_int8", 8), ids)
    bnb_int8 = logits(load_bnb_model(folders[family], "int8", device="cpu"), ids)
    # KL to fp32 4e-7..1.9e-6 for both, between them 3e-7..1e-6 (int8 rounding of activations)
    assert kl(reference, bnb_int8) < 1e-5 and kl(reference, int8) < 1e-5
    assert kl(bnb_int8, int8) < 1e-5


@families
def test_tradeoff_bench_and_damage(folders, world, calib, family):
    model, tok = loaded(folders, family)
    bench = TradeoffBench(model, tok, world["texts"][:2], world["items"][:2], calib,
                          latency_tokens=2, keep_models=True)
    rows = [bench.measure(*c) for c in [("fp32", 32, None), ("rtn", 4, 32), ("gptq", 4, 32),
                                        ("nf4", 4, None)]]
    table = tradeoff_table(rows)
    fp32 = rows[0]
    for row in rows[1:]:
        assert row["stored_bytes"] < fp32["stored_bytes"]
        assert 4 < row["linear_bits"] < 7
        assert abs(math.log(row["perplexity"] / fp32["perplexity"])) < 0.05
    assert table["label"].iloc[-1] == "fp32"
    rtn = bench.models[("rtn", 4, 32)]
    damage = quantization_damage(model, {"fp32": model, "rtn": rtn}, tok, world["texts"])
    expected = perplexity(model, tok, world["texts"]).nll
    np.testing.assert_allclose(np.sort(damage["fp32"]["nll"]), np.sort(expected), atol=1e-4)
    assert np.abs(damage["fp32"]["kl"]).max() < 1e-5
    assert 0 < damage["rtn"]["kl"].mean() < MAX_KL[4]


# --- "Your own model": each lab's cell, run on a local standard model --------------------------

# The cells' sizes, shrunk to seconds; everything else is the cell's own code.
TINY = {"n_texts": 2, "n_items": 2, "gpus": 8, "tokens": 32, "d_model": 64, "steps": 3,
        "batch_size": 2, "lr": 1e-3, "questions": 2, "pairs": 2, "calib_samples": 2,
        "group_size": 32, "prompt": "The capital of Velmora is"}


# A word each cell's printed result must contain.
OUTPUT = {"00": "parameters", "01": "pii_scrub", "02": "nats per token", "03": "ZeRO-3",
          "04": "underflow", "05": "suggests a peak LR", "06": "exact_match", "07": "accuracy",
          "08": "accuracy", "09": "perplexity", "10": "gptq 4b g32"}


@pytest.fixture(scope="session")
def small_warc(tmp_path_factory):
    """The first 12 records of the embedded crawl, as a WARC file of one's own."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    from labkit.samples import sample_path

    path = tmp_path_factory.mktemp("crawl") / "mine.warc.gz"
    with open(sample_path("crawl/crawl.warc.gz"), "rb") as src, open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i, record in enumerate(ArchiveIterator(src)):
            if i == 12:
                break
            writer.write_record(record)
    return path


@pytest.mark.parametrize("lab", sorted(CELLS))
def test_own_model_cell_runs_on_a_local_gpt2(folders, small_warc, lab):
    cell = CELLS[lab]
    inputs = {k: TINY.get(k, v) for k, v in cell.inputs.items()}
    inputs["model_id"] = str(folders["gpt2"])
    inputs["warc_path"] = str(small_warc)
    namespace = dict(inputs)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(PRELUDE + cell.code, f"<lab {lab} cell>", "exec"), namespace)
    out = printed.getvalue()
    assert OUTPUT[lab] in out, out
    assert compile(cell.source(), f"<lab {lab} source>", "exec")
