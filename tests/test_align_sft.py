"""Lab 06 (SFT): the loss mask, TRL training, LoRA and merging, answering and judging."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.align.sft import (
    assistant_mask,
    chat_token_ids,
    conversation_loss,
    conversations_dataset,
    evaluate_answers,
    generate_answers,
    judge,
    lora_config,
    loss_by_part,
    loss_mask_figure,
    loss_token_share,
    merge_lora,
    render_chat,
    repeated_bigram_share,
    sft_train,
    sft_trainer,
    summarize_answers,
    training_stream,
)
from labkit.errors import LabkitError
from labkit.loaders import embedded_paths, load_model, load_records, load_tokenizer
from labkit.models import ModelShape, build_causal_lm, count_parameters

SINGLE = [{"role": "user", "content": "What colour is a braswing?"},
          {"role": "assistant", "content": "The braswing is grey."}]
MULTI = [{"role": "system", "content": "You are a helpful assistant who knows the world well."},
         {"role": "user", "content": "Who invented the nispump?"},
         {"role": "assistant", "content": "The nispump was invented by Plidrourar Roez."},
         {"role": "user", "content": "What is the capital city of Takaara?"},
         {"role": "assistant", "content": "The capital of Takaara is Drolgate."}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models train faster on one thread, and a shared 2-core machine stays usable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    return build_causal_lm(len(tok), ModelShape(d_model=32, n_layer=1, n_head=2), seed=0,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)


@pytest.fixture(scope="module")
def curated():
    return load_records("instructions_curated")


def expected_mask(tok, messages) -> list[int]:
    """The assistant tokens found from the rendered text alone: every token whose characters
    lie inside an assistant turn's content or its closing <|end|>."""
    text = render_chat(tok, messages)
    spans, pos = [], 0
    for m in messages:
        opener = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
        pos = text.index(opener[m["role"]], pos) + len(opener[m["role"]])
        end = pos + len(m["content"]) + len("<|end|>")
        assert text[pos:end] == m["content"] + "<|end|>"
        if m["role"] == "assistant":
            spans.append((pos, end))
        pos = end
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == tok.apply_chat_template(messages, return_dict=True)["input_ids"]
    return [int(any(a <= s < b for a, b in spans)) for s, _ in enc["offset_mapping"]]


@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_mask_is_exactly_the_assistant_tokens(tok, messages):
    lab = assistant_mask(tok, messages)
    assert lab.mask == expected_mask(tok, messages)
    assert lab.labels == [t if m else -100 for t, m in zip(lab.input_ids, lab.mask)]
    # What carries loss, decoded, is each answer followed by its end-of-turn token.
    kept = "".join(t for t, m in zip(lab.tokens, lab.mask) if m)
    assert kept == "".join(m["content"] + "<|end|>" for m in messages if m["role"] == "assistant")
    assert sum(lab.mask) < len(lab.mask)


def test_mask_pinned_counts(tok):
    assert sum(assistant_mask(tok, SINGLE).mask) == 6  # The ·braswing ·is ·grey . <|end|>
    lab = assistant_mask(tok, MULTI)
    assert (sum(lab.mask), len(lab.mask)) == (17, 61)
    table = lab.table()
    assert list(table.columns) == ["position", "token", "id", "label", "loss"]
    assert table["loss"].sum() == 17


_text = st.text(alphabet="abcdefgh XYZ.,?!'\n", min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.tuples(_text, _text), min_size=1, max_size=3),
       system=st.one_of(st.none(), _text))
def test_mask_matches_rendered_text_for_any_conversation(tok, turns, system):
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, reply in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    assert assistant_mask(tok, messages).mask == expected_mask(tok, messages)


def test_all_tokens_carry_loss_without_assistant_only(tok):
    lab = assistant_mask(tok, MULTI, assistant_only=False)
    assert lab.labels == lab.input_ids and all(lab.mask)


def test_trl_builds_the_same_labels(tok, tiny, curated):
    convs = [r["messages"] for r in curated[:6]] + [MULTI]
    trainer = sft_trainer(copy.deepcopy(tiny), tok, convs, steps=2, lr=1e-3, batch_size=4)
    got = trainer.train_dataset["labels"]
    # the trainer sees the conversations in training_stream's order: steps x batch_size of them
    stream = training_stream(len(convs), lambda i: len(assistant_mask(tok, convs[i]).labels),
                             batch_size=4, steps=2, seed=0)
    assert len(got) == 8 and set(stream) == set(range(len(convs)))
    assert got == [assistant_mask(tok, convs[i]).labels for i in stream]


def test_loss_token_share_and_figure(tok, curated):
    share = loss_token_share(tok, [SINGLE, MULTI])
    assert share == pytest.approx((6 + 17) / (16 + 61))
    assert 0.2 < loss_token_share(tok, (r["messages"] for r in curated[:200])) < 0.8
    fig = loss_mask_figure(tok, MULTI, per_row=10)
    assert fig.layout.title.text.startswith("Loss on assistant tokens only: 17 of 61")
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert sum(v for row in fig.data[0].z for v in row if v is not None) == 17


def test_conversation_loss_matches_the_model_loss(tok, tiny):
    lab = assistant_mask(tok, MULTI)
    with torch.no_grad():
        ref = tiny(input_ids=torch.tensor([lab.input_ids]), labels=torch.tensor([lab.labels])).loss
    assert conversation_loss(tiny, tok, [MULTI]) == pytest.approx(float(ref), rel=1e-5)
    # A padded batch weighs every loss token once: the batch loss is the token-weighted mean.
    a, b = conversation_loss(tiny, tok, [SINGLE]), conversation_loss(tiny, tok, [MULTI])
    both = conversation_loss(tiny, tok, [SINGLE, MULTI])
    assert both == pytest.approx((6 * a + 17 * b) / 23, rel=1e-4)


def test_loss_by_part_splits_the_sequence_loss(tok, tiny):
    parts = loss_by_part(tiny, tok, [SINGLE, MULTI])
    # Answer tokens: exactly what assistant-only loss sees.
    assert parts["answer"] == pytest.approx(conversation_loss(tiny, tok, [SINGLE, MULTI]),
                                            rel=1e-5)
    assert parts["answer_tokens"] == 6 + 17
    # Every other predicted token (the first of each conversation has no prediction).
    assert parts["prompt_tokens"] == (16 - 1 - 6) + (61 - 1 - 17)
    every = conversation_loss(tiny, tok, [SINGLE, MULTI], assistant_only=False)
    weighted = (parts["answer"] * parts["answer_tokens"] + parts["prompt"] * parts["prompt_tokens"]
                ) / (parts["answer_tokens"] + parts["prompt_tokens"])
    assert weighted == pytest.approx(every, rel=1e-5)
    with pytest.raises(LabkitError, match="conversations is empty"):
        loss_by_part(tiny, tok, [])


def test_a_few_steps_lower_the_training_loss(tok, tiny, curated):
    batch = [r["messages"] for r in curated[:8]]
    before = conversation_loss(tiny, tok, batch)
    assert before == pytest.approx(8.07, abs=0.1)  # ln(3208): a random model guesses uniformly
    run = sft_train(tiny, tok, batch, steps=8, lr=1e-2, batch_size=8, seed=0)
    after = conversation_loss(run.model, tok, batch)
    assert after < before - 1.0
    assert run.trainable_params == run.total_params == count_parameters(tiny)
    assert list(run.history["step"]) == list(range(1, 9))
    assert run.history["loss"].iloc[-1] < run.history["loss"].iloc[0]
    # fp32 weights, gradients and AdamW's two moments: 16 bytes per weight
    assert run.state_mib == pytest.approx(16 * run.total_params / 2**20)
    # The input model was copied, not trained.
    assert conversation_loss(tiny, tok, batch) == pytest.approx(before)


def test_training_is_deterministic(tok, tiny, curated):
    batch = [r["messages"] for r in curated[:16]]
    runs = [sft_train(tiny, tok, batch, steps=3, lr=5e-3, batch_size=4, seed=7) for _ in range(2)]
    assert runs[0].history["loss"].tolist() == runs[1].history["loss"].tolist()


@pytest.fixture(scope="module")
def lora_run(tok, tiny, curated):
    batch = [r["messages"] for r in curated[:8]]
    return sft_train(tiny, tok, batch, steps=4, lr=2e-2, batch_size=4, lora={"r": 4}, seed=0)


def test_lora_changes_only_adapter_parameters(tok, tiny, lora_run):
    before = dict(tiny.named_parameters())
    chat_rows = [tok.convert_tokens_to_ids(t) for t in
                 ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")]
    lora_b = 0
    for name, p in lora_run.model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad, name
            if "lora_B" in name:  # initialised to zero, so any change shows
                lora_b += 1
                assert p.abs().max() > 0, name
        elif "trainable_tokens_delta" in name:  # the chat tokens' embedding rows, trained
            assert p.requires_grad and p.shape == (4, 32)
            assert not torch.equal(p, before["model.embed_tokens.weight"][chat_rows])
        else:
            assert not p.requires_grad, name
            base_name = (name.removeprefix("base_model.model.").replace(".base_layer", "")
                         .replace(".token_adapter", ""))
            assert torch.equal(p, before[base_name]), name
    assert lora_b == 7  # q, k, v, o, gate, up, down of the one layer
    # r * (d_in + d_out) per adapted projection of the one layer, plus 4 chat rows of width d
    d, ff = 32, 96
    expected = 4 * ((d + d) * 4 + (d + ff) * 2 + (ff + d)) + 4 * d
    assert lora_run.trainable_params == expected
    assert lora_run.total_params == count_parameters(tiny)
    assert lora_run.config["lora"]["r"] == 4
    assert lora_run.config["lora"]["trainable_tokens"] == {"embed_tokens": chat_rows}


def test_merged_model_equals_the_adapter_model(tok, lora_run):
    from peft import PeftModel

    lab = assistant_mask(tok, MULTI)
    ids = torch.tensor([lab.input_ids])
    merged = merge_lora(lora_run.model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert isinstance(lora_run.model, PeftModel)  # the input stays an adapter model
    with torch.no_grad():
        want = lora_run.model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad():  # and the adapter did change the function
        base = lora_run.model.get_base_model()
        with lora_run.model.disable_adapter():
            plain = base(input_ids=ids).logits
    assert (plain - want).abs().max() > 1e-4


def test_saved_adapter_reloads_to_the_same_model(tiny, lora_run, tmp_path):
    from peft import PeftModel

    lora_run.model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(copy.deepcopy(tiny), tmp_path)
    ids = torch.tensor([[4, 61, 394, 6, 5, 444, 6]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, lora_run.model(input_ids=ids).logits)


def test_build_sft_adapter_smoke(tmp_path):
    from labkit.samples import data_dir

    if not (data_dir() / "models" / "base" / "model.safetensors").exists():
        pytest.skip("the shipped base model is not built (labkit train-models base)")
    from labkit.align.sft import build_sft_adapter

    metrics = build_sft_adapter(tmp_path, steps=2, heldout=4, echo=lambda *_: None)
    target = tmp_path / "models" / "sft-adapter"
    assert {p.name for p in target.iterdir()} >= {"adapter_model.safetensors",
                                                  "adapter_config.json", "README.md",
                                                  "metrics.json"}
    assert metrics["heldout_questions"] == 4 and metrics["recipe"]["steps"] == 2
    assert "labkit train-models sft" in (target / "README.md").read_text()


# --- the shipped base model: SFT beats base, curated beats noisy ------------------------------


@pytest.fixture(scope="module")
def world_base():
    if not (embedded_paths()["base"] / "model.safetensors").exists():
        pytest.skip("the shipped base model is not built (labkit train-models base)")
    return load_model("base")


def test_shipped_sft_adapter_beats_the_base_model(tok, world_base):
    from labkit.loaders import load_adapter_model

    adapter = embedded_paths()["sft"]
    if not (adapter / "adapter_model.safetensors").exists():
        pytest.skip("the shipped SFT adapter is not built (labkit train-models sft)")
    heldout = load_records("sft_eval")
    questions = heldout[:40]
    summary = summarize_answers({
        "base": evaluate_answers(world_base, tok, questions),
        "sft": evaluate_answers(load_adapter_model("sft", merge=True), tok, questions)})
    assert summary.loc["base", "correct"] <= 0.05  # it never ends a turn
    assert summary.loc["sft", "correct"] >= 0.85
    assert summary.loc["sft", "correct"] >= summary.loc["base", "correct"] + 0.8
    # The model card's scores, on every held-out question, pinned.
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["heldout_questions"] == len(heldout)
    assert metrics["exact_match"]["base"] == pytest.approx(0.022, abs=0.03)
    assert metrics["exact_match"]["sft"] == pytest.approx(0.978, abs=0.03)
    assert metrics["judge_ok"]["sft"] == pytest.approx(0.984, abs=0.03)


def test_curated_beats_noisy_at_equal_steps(tok, world_base):
    """LIMA at the lab's cpu budget: the lab's two LoRA runs, the same steps and the same number
    of conversations, from the curated and from the noisy set."""
    from labkit.align import SETTINGS

    cfg = SETTINGS["cpu"]
    n = cfg["sft_steps"] * cfg["sft_batch"]
    rng = random.Random(1234)  # the lab's seed and order: curated first, then noisy
    data = {"curated": rng.sample(load_records("instructions_curated"), n),
            "noisy": rng.sample(load_records("instructions_noisy"), n)}
    questions = load_records("sft_eval")[:cfg["eval_questions"]]
    frames = {"base": evaluate_answers(world_base, tok, questions,
                                       max_new_tokens=cfg["max_new_tokens"])}
    for name, convs in data.items():
        run = sft_train(world_base, tok, convs, steps=cfg["sft_steps"],
                        batch_size=cfg["sft_batch"], lr=cfg["lora_lr"], seed=1234,
                        lora={"r": cfg["lora_r"], "lora_alpha": cfg["lora_alpha"]},
                        warmup_steps=cfg["sft_warmup"], device="cpu")
        frames[name] = evaluate_answers(run.model, tok, questions,
                                        max_new_tokens=cfg["max_new_tokens"])
    s = summarize_answers(frames)
    assert s.loc["curated", "correct"] >= s.loc["base", "correct"] + 0.15
    assert s.loc["curated", "correct"] >= s.loc["noisy", "correct"] + 0.08
    assert s.loc["curated", "judge_ok"] >= s.loc["noisy", "judge_ok"] + 0.25
    # Pinned (measured on CPU, one thread): curated 0.27 right and well-formed, 0.77 judged
    # well-formed; noisy 0.10 and 0.28.
    assert s.loc["curated", "correct"] == pytest.approx(0.27, abs=0.1)
    assert s.loc["curated", "judge_ok"] == pytest.approx(0.77, abs=0.1)
    assert s.loc["noisy", "judge_ok"] == pytest.approx(0.28, abs=0.1)


def test_lora_config_defaults(tok):
    assert chat_token_ids(tok) == [3, 4, 5, 6]  # <|system|> <|user|> <|assistant|> <|end|>
    assert lora_config(True).trainable_token_indices is None
    assert lora_config(True, chat_tokens=[3, 4]).trainable_token_indices == {"embed_tokens": [3, 4]}
    cfg = lora_config({"r": 16})
    assert cfg.r == 16 and cfg.lora_alpha == 16 and cfg.lora_dropout == 0.0
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj"}


def test_repeated_bigram_share():
    assert repeated_bigram_share("a b a b a b") == pytest.approx(1 - 2 / 5)
    assert repeated_bigram_share("The braswing is grey.") == 0.0
    assert repeated_bigram_share("grey") == 0.0
    seed_pattern = ("Quantum computing quantum mechanics quantum bits quantum computing quantum "
                    "mechanics quantum bits")
    assert repeated_bigram_share(seed_pattern) == pytest.approx(5 / 11)  # 6 distinct of 11


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "dd", "e"]), max_size=30))
def test_repeated_bigram_share_is_a_share(words):
    share = repeated_bigram_share(" ".join(words))
    assert 0.0 <= share < 1.0
    if len(set(zip(words, words[1:]))) == max(len(words) - 1, 0):
        assert share == 0.0


def test_judge_rules():
    assert judge("The braswing is grey.", True)["judge_ok"]
    assert not judge("The braswing is grey.", False)["judge_ok"]  # never ended its turn
    assert not judge("The belscope is use", True)["judge_ok"]  # truncated
    loop = "What a What colour What braswing What braswing What colour What colour"
    verdict = judge(loop + ".", True)
    assert verdict["repetitive"] and not verdict["judge_ok"]
    assert judge("```python\ndef f(x):\n    return x\n```", True)["judge_ok"]


def test_generation_batched_equals_one_by_one(tok, tiny):
    questions = ["Who invented the nispump?", "What colour is a tuling?",
                 "In which part of the world is Kraara?"]
    batched = generate_answers(tiny, tok, questions, max_new_tokens=8, batch_size=3)
    single = [generate_answers(tiny, tok, [q], max_new_tokens=8)[0] for q in questions]
    assert batched == single


def test_memorised_answer_stops_and_scores(tok, tiny):
    conv = [{"role": "user", "content": "What colour is a braswing?"},
            {"role": "assistant", "content": "The braswing is grey."}]
    run = sft_train(tiny, tok, [conv] * 8, steps=30, lr=2e-2, batch_size=8, seed=0)
    df = evaluate_answers(run.model, tok, [
        {"id": "q0", "question": conv[0]["content"], "answer": "grey"}], max_new_tokens=12)
    row = df.iloc[0]
    assert row["response"] == "The braswing is grey."
    assert row["exact"] and row["ended_turn"] and row["judge_ok"]
    summary = summarize_answers({"memorised": df})
    assert summary.loc["memorised", "exact_match"] == 1.0


# --- bad input ---------------------------------------------------------------------------------


def test_conversation_without_assistant_turn(tok, tiny):
    no_answer = [{"role": "user", "content": "Hello?"}]
    with pytest.raises(LabkitError, match="no assistant turn"):
        assistant_mask(tok, no_answer)
    with pytest.raises(LabkitError, match="conversation 1 has no assistant turn"):
        sft_train(tiny, tok, [SINGLE, no_answer], steps=1, lr=1e-3, batch_size=1)


def test_bad_messages(tok):
    with pytest.raises(LabkitError, match="bad message"):
        assistant_mask(tok, [{"role": "robot", "content": "hi"}])
    with pytest.raises(LabkitError, match="non-empty list"):
        assistant_mask(tok, "What colour is a braswing?")


def test_empty_dataset(tok, tiny):
    import datasets

    with pytest.raises(LabkitError, match="dataset is empty"):
        sft_train(tiny, tok, [], steps=1, lr=1e-3, batch_size=1)
    with pytest.raises(LabkitError, match="dataset is empty"):
        conversations_dataset(datasets.Dataset.from_list([{"messages": SINGLE}]).select([]))
    with pytest.raises(LabkitError, match="no 'messages' column"):
        conversations_dataset(datasets.Dataset.from_list([{"text": "hello"}]))


def test_template_without_generation_markers(tok, tiny):
    plain = copy.deepcopy(tok)
    plain.chat_template = (tok.chat_template.replace("{% generation %}", "")
                           .replace("{% endgeneration %}", ""))
    with pytest.raises(LabkitError, match="generation"):
        assistant_mask(plain, SINGLE)
    with pytest.raises(LabkitError, match="generation"):
        sft_train(tiny, plain, [SINGLE], steps=1, lr=1e-3, batch_size=1)
    # Loss on every token needs no markers.
    assert assistant_mask(plain, SINGLE, assistant_only=False).labels == \
        tok.apply_chat_template(SINGLE, return_dict=True)["input_ids"]


def test_other_bad_input(tok, tiny):
    with pytest.raises(LabkitError, match="steps=0"):
        sft_train(tiny, tok, [SINGLE], steps=0, lr=1e-3, batch_size=1)
    with pytest.raises(LabkitError, match="lr="):
        sft_train(tiny, tok, [SINGLE], steps=1, lr=5, batch_size=1)
    with pytest.raises(LabkitError, match="lora="):
        lora_config("yes")
    with pytest.raises(LabkitError, match="PeftModel"):
        merge_lora(tiny)
    with pytest.raises(LabkitError, match="questions is empty"):
        evaluate_answers(tiny, tok, [])
    with pytest.raises(LabkitError, match="answer"):
        evaluate_answers(tiny, tok, [{"question": "Who?"}])
    with pytest.raises(LabkitError, match="context"):
        generate_answers(tiny, tok, ["Who invented the nispump?"], max_new_tokens=300)


def test_mixed_precision_follows_the_card_not_its_emulation(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on a T4 (emulated bf16); the trainers ask
    labkit.env.cuda_has_bf16 (native only) and honour LABKIT_NO_BF16, as the profile does."""
    import labkit.env
    from labkit.align.sft import mixed_precision

    monkeypatch.delenv("LABKIT_NO_BF16", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 says
    monkeypatch.setattr(labkit.env, "cuda_has_bf16", lambda: False)  # what it computes natively
    assert mixed_precision("cuda") == {"bf16": False, "fp16": True}
    monkeypatch.setattr(labkit.env, "cuda_has_bf16", lambda: True)  # an A100
    assert mixed_precision("cuda:0") == {"bf16": True, "fp16": False}
    monkeypatch.setenv("LABKIT_NO_BF16", "1")  # the T4 path, forced on a card with bf16
    assert mixed_precision("cuda") == {"bf16": False, "fp16": True}
    assert mixed_precision("cpu") == {"bf16": False, "fp16": False}  # fp32 on CPU
    assert mixed_precision("cuda", bf16=True) == {"bf16": True, "fp16": False}  # asked for
    assert mixed_precision("cuda", bf16=False) == {"bf16": False, "fp16": False}


def test_no_trainer_asks_torch_whether_bf16_is_supported():
    from pathlib import Path

    import labkit.align

    for path in Path(labkit.align.__file__).parent.glob("*.py"):
        code = [line for line in path.read_text().splitlines()
                if not line.lstrip().startswith("#")]
        assert not any("is_bf16_supported(" in line and "not asked" not in line
                       for line in code), path.name


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=40),
       batch=st.integers(1, 8), steps=st.integers(1, 12), seed=st.integers(0, 50))
def test_training_stream_is_whole_epochs_of_length_buckets(lengths, batch, steps, seed):
    from labkit.align.sft import training_stream

    asked = []
    stream = training_stream(len(lengths), lambda i: asked.append(i) or lengths[i],
                             batch_size=batch, steps=steps, seed=seed)
    assert len(stream) == steps * batch
    assert len(asked) == len(set(asked)) <= len(lengths)  # each length computed once, if drawn
    n = len(lengths)
    for start in range(0, len(stream), n):  # every epoch draws each item at most once
        epoch = stream[start:start + n]
        assert len(set(epoch)) == len(epoch)
    assert training_stream(len(lengths), lengths.__getitem__, batch_size=batch, steps=steps,
                           seed=seed) == stream  # seeded


def test_training_stream_pads_less_than_random_batches():
    from labkit.align.sft import training_stream

    lengths = [random.Random(i).choice([12, 20, 30, 45, 60, 150]) for i in range(256)]
    stream = training_stream(len(lengths), lengths.__getitem__, batch_size=8, steps=32, seed=0)
    batches = [stream[i:i + 8] for i in range(0, len(stream), 8)]
    padded = sum(8 * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths[i] for b in batches for i in b) < 1.1
    shuffled = random.Random(0).sample(range(256), 256)
    random_padded = sum(8 * max(lengths[i] for i in shuffled[k:k + 8]) for k in range(0, 256, 8))
    assert random_padded / sum(lengths) > 1.5
    # the batches come in a random order, not shortest first
    firsts = [max(lengths[i] for i in b) for b in batches]
    assert firsts != sorted(firsts)


def test_sft_trainer_trains_on_the_stream(tok, tiny, curated):
    trainer = sft_trainer(copy.deepcopy(tiny), tok, curated[:40], steps=3, lr=1e-3,
                          batch_size=4, seed=0)
    assert len(trainer.train_dataset) == 12  # exactly steps x batch_size conversations
    assert trainer.args.train_sampling_strategy == "sequential"


def test_compact_summary_fits_a_cell(tok, tiny):
    from labkit.align.sft import compact_summary

    frame = evaluate_answers(tiny, tok, load_records("sft_eval")[:3], max_new_tokens=4)
    table = compact_summary(summarize_answers({"a model with a long name, all tokens": frame}))
    assert list(table.columns) == ["exact", "judge", "both", "ended", "complete", "loops",
                                   "on_topic"]
    assert max(map(len, table.to_string().splitlines())) <= 90
