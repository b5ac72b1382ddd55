"""Multiple choice by log-likelihood, and agreement with lm-eval on the same task and model."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import LabkitError
from labkit.evaluation import (
    accuracy_by_subject,
    choice_logprobs,
    choice_scores_figure,
    encode_pair,
    load_items,
    render_prompt,
    run_lm_eval,
    score_items,
    validate_items,
    write_mc_task,
)
from labkit.models import ModelShape, build_causal_lm

CORPUS = [
    "The river Vella flows north through the valley of Zorn, past the mills and the old bridge.",
    "In the market of Zorn, traders sell salt, copper and wool; the copper comes from the hills.",
    "Question: Which way does the river flow?\nAnswer: north, through the valley.",
]
CHOICES = [
    ["north", "south", "east and then west", "nowhere"],
    ["salt", "copper from the hills", "wool", "glass beads"],
    ["the old bridge", "mills", "a valley", "Zorn"],
]


def make_items(count: int = 12) -> list[dict]:
    items = []
    for i in range(count):
        item = {
            "id": f"q{i:02d}",
            "subject": ["geography", "trade", "history"][i % 3],
            "question": f"Item {i}: which answer fits the valley of Zorn best?",
            "choices": CHOICES[i % 3],
            "answer": (i * 7) % 4,
        }
        if i % 4 == 1:
            item["context"] = CORPUS[i % 3]
        items.append(item)
    return items


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS * 5 + [" ".join(c) for c in CHOICES], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_causal_lm(len(tokenizer), ModelShape(d_model=32, n_layer=2, n_head=2, max_len=128))


def _lm_eval_encoder(tokenizer):
    """lm-eval's own `_encode_pair` and `tok_encode`, bound to a stand-in without a model."""
    from lm_eval.models.huggingface import HFLM

    fake = SimpleNamespace(
        backend="causal",
        tokenizer=tokenizer,
        add_bos_token=None,
        prefix_token_id=tokenizer.bos_token_id,
    )
    fake.tok_encode = lambda s, **kw: HFLM.tok_encode(fake, s, **kw)
    return lambda ctx, cont: HFLM._encode_pair(fake, ctx, cont)


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="abc Zorn:?\n", min_size=1, max_size=30).filter(str.strip),
    st.text(alphabet="abc north ", min_size=1, max_size=15),
)
def test_encode_pair_matches_lm_eval(tokenizer, context, continuation):
    theirs = _lm_eval_encoder(tokenizer)
    assert encode_pair(tokenizer, context, continuation) == theirs(context, continuation)


def test_whitespace_context_is_refused(tokenizer):
    # lm-eval would hand an empty context to the model and fail an assert there
    with pytest.raises(LabkitError, match="only whitespace"):
        encode_pair(tokenizer, "  ", "north")


def test_trailing_space_moves_to_continuation(tokenizer):
    ctx_ids, cont_ids = encode_pair(tokenizer, "Answer: ", "north")
    assert tokenizer.decode(ctx_ids) == "Answer:"
    assert tokenizer.decode(cont_ids) == " north"
    # the split of the jointly encoded string, not two separate encodings
    assert ctx_ids + cont_ids == tokenizer.encode("Answer: north")


def test_choice_logprobs_equal_one_at_a_time(tokenizer, model):
    prompt = render_prompt(make_items()[1])
    batched = choice_logprobs(model, tokenizer, prompt, CHOICES[1])
    for choice, score in zip(CHOICES[1], batched):
        ctx, cont = encode_pair(tokenizer, prompt, " " + choice)
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont[:-1]])).logits[0]
        logp = torch.log_softmax(logits, -1)[len(ctx) - 1 :]
        alone = logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
        assert score == pytest.approx(alone, abs=1e-4)


def test_render_prompt_matches_lm_eval_template(tokenizer):
    from lm_eval.utils import apply_template

    from labkit.evaluation import PROMPT_TEMPLATE

    for item in make_items(4):
        assert render_prompt(item) == apply_template(PROMPT_TEMPLATE, item)
    assert render_prompt(make_items()[1]).startswith(CORPUS[1] + "\n\nQuestion: ")


def test_scores_acc_and_acc_norm(tokenizer, model):
    items = make_items()
    scores = score_items(model, tokenizer, items)
    assert len(scores) == len(items)
    for _, row in scores.iterrows():
        lp, chars = np.array(row["logprobs"]), np.array(row["chars"])
        assert row["pred"] == int(np.argmax(lp))
        assert row["pred_norm"] == int(np.argmax(lp / chars))
        assert row["acc"] == float(row["pred"] == row["answer"])
    table = accuracy_by_subject(scores)
    assert list(table.index) == ["geography", "history", "trade", "all"]
    assert table.loc["all", "acc"] == pytest.approx(scores["acc"].mean())
    assert table.loc["trade", "items"] == 4
    assert table.loc["trade", "acc_norm"] == pytest.approx(
        scores.loc[scores["subject"] == "trade", "acc_norm"].mean()
    )
    fig = choice_scores_figure(items[0], scores.loc[0, "logprobs"])
    assert fig.layout.title.text and "nats" in fig.layout.xaxis.title.text
    assert len(fig.data) == 2 and len(fig.data[0].x) == 4


def _alone(model, tokenizer, item) -> list[float]:
    """Each choice scored the way lm-eval feeds it: context + choice in one row of its own."""
    prompt, scores = render_prompt(item), []
    for choice in item["choices"]:
        ctx, cont = encode_pair(tokenizer, prompt, " " + choice)
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont[:-1]])).logits[0]
        logp = torch.log_softmax(logits, -1)[len(ctx) - 1 :]
        scores.append(logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item())
    return scores


@pytest.mark.parametrize("share_context", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_packed_scoring_equals_one_question_at_a_time(tokenizer, model, batch_size, share_context,
                                                      monkeypatch):
    """Many questions' choices share forward passes: with share_context, each question's
    context runs once and its choices continue from the KV cache; without, every choice is a
    row of a right-padded batch. Either way each choice's log-prob is lm-eval's (context +
    choice alone), and so are the verdicts. A logits budget smaller than one batch splits it
    (GPT-2's 50k vocabulary)."""
    from labkit.evaluation import multiple_choice

    items = make_items(12)
    alone = [_alone(model, tokenizer, it) for it in items]
    seen = []
    packed = score_items(model, tokenizer, items, batch_size=batch_size,
                         progress=lambda done, total: seen.append((done, total)))
    if not share_context:
        monkeypatch.setattr(multiple_choice, "_returns_cache", lambda model: False)
        seen.clear()
        packed = score_items(model, tokenizer, items, batch_size=batch_size,
                             progress=lambda done, total: seen.append((done, total)))
    for mine, one in zip(packed["logprobs"], alone):
        # float32 rounding only (another batch shape, a cached context): 4e-6 on sums near -34
        # here; 3e-6 on the shipped base model's 399 questions
        np.testing.assert_allclose(mine, one, rtol=1e-6, atol=1e-5)
    assert list(packed["pred"]) == [int(np.argmax(a)) for a in alone]
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    monkeypatch.setattr(multiple_choice, "LOGITS_BUDGET", 40 * len(tokenizer))
    split = score_items(model, tokenizer, items, batch_size=batch_size)
    np.testing.assert_allclose(np.stack(split["logprobs"]), np.stack(packed["logprobs"]), rtol=1e-6,
                               atol=1e-5)


def test_a_context_longer_than_the_model_is_truncated_as_lm_eval_does(tokenizer):
    """Context + choice past the model's length keeps the last max_length + 1 tokens (its
    context is then not the item's own: such requests are scored padded, never shared)."""
    short = build_causal_lm(len(tokenizer), ModelShape(d_model=32, n_layer=2, n_head=2, max_len=16))
    item = {**make_items(1)[0], "context": CORPUS[0] + " " + CORPUS[1]}
    ctx, cont = encode_pair(tokenizer, render_prompt(item), " " + item["choices"][0])
    assert len(ctx) + len(cont) > 17
    with torch.no_grad():
        logits = short(torch.tensor([(ctx + cont)[-17:][:-1]])).logits[0]
    logp = torch.log_softmax(logits, -1)[-len(cont):]
    expected = logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
    got = score_items(short, tokenizer, [item])["logprobs"][0][0]
    assert got == pytest.approx(expected, abs=1e-5)


def test_bad_items_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LabkitError, match="empty"):
        load_items(empty)
    with pytest.raises(LabkitError, match="empty"):
        write_mc_task(tmp_path / "tasks", "world_mc", empty)
    with pytest.raises(LabkitError, match="at least 2"):
        validate_items([{"question": "q", "choices": ["only"], "answer": 0}])
    with pytest.raises(LabkitError, match="not in 0..1"):
        validate_items([{"question": "q", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(LabkitError, match="no 'choices'"):
        validate_items([{"question": "q", "answer": 0}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{not json\n')
    with pytest.raises(LabkitError, match="broken.jsonl:2"):
        load_items(broken)
    with pytest.raises(LabkitError, match="does not exist"):
        load_items(tmp_path / "missing.jsonl")
    with pytest.raises(LabkitError, match="task name"):
        write_mc_task(tmp_path / "tasks", "bad name", broken)


def test_labkit_accuracy_equals_lm_eval(tmp_path, tokenizer, model):
    """The same task, the same model: labkit's scorer and lm_eval.simple_evaluate agree.
    (About 15 s here, under the 20 s line for @pytest.mark.slow.)"""
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    items = make_items()
    data = write_jsonl(tmp_path / "world_mc.jsonl", items)
    yaml_path = write_mc_task(tmp_path / "tasks", "world_mc", {"test": data})
    assert "dataset_path: json" in yaml_path.read_text()

    run = run_lm_eval(model_dir, tmp_path / "tasks", ["world_mc"])
    ours = score_items(model, tokenizer, load_items(data))

    assert run.metric("world_mc", "acc") == ours["acc"].mean()
    assert run.metric("world_mc", "acc_norm") == ours["acc_norm"].mean()
    assert set(run.table["metric"]) == {"acc", "acc_norm"}
    # per item and per choice: the same log-likelihoods
    samples = run.samples["world_mc"].sort_values("doc_id").reset_index(drop=True)
    assert len(samples) == len(items)
    for doc_id, row in samples.iterrows():
        assert row["target"] == items[doc_id]["answer"]
        assert row["logprobs"] == pytest.approx(ours.loc[doc_id, "logprobs"], abs=1e-4)
        assert row["acc"] == ours.loc[doc_id, "acc"]
        assert row["acc_norm"] == ours.loc[doc_id, "acc_norm"]
    # both accuracies are informative here: some items right, some wrong
    assert 0 < ours["acc"].mean() < 1

    with pytest.raises(LabkitError, match="not found"):
        run_lm_eval(model_dir, tmp_path / "tasks", ["no_such_task"])


def test_offline_hubs_restores_environment(monkeypatch):
    from labkit.evaluation import offline_hubs

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with offline_hubs():
        assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_DATASETS_OFFLINE" not in os.environ


# ------------------------------------------------ ARC-shaped items and MMLU's letter scoring
def _lm_eval_task_config(relative: str) -> dict:
    """One of lm-eval's own task files (the installed package's), as a dict."""
    from pathlib import Path

    import lm_eval
    import yaml

    text = (Path(lm_eval.__file__).parent / "tasks" / relative).read_text()
    return yaml.safe_load(text)


def arc_items(count: int = 12) -> list[dict]:
    """make_items in ARC's shape: choices {text, label}, answerKey (labels A-D or 1-4)."""
    items = []
    for i, item in enumerate(make_items(count)):
        labels = list("ABCD") if i % 2 else ["1", "2", "3", "4"]
        items.append({"id": item["id"], "question": item["question"],
                      "choices": {"text": item["choices"], "label": labels},
                      "answerKey": labels[item["answer"]]})
    return items


def test_arc_items_become_mmlu_shaped():
    checked = validate_items(arc_items(4))
    assert [c["choices"] for c in checked] == [i["choices"] for i in make_items(4)]
    assert [c["answer"] for c in checked] == [i["answer"] for i in make_items(4)]
    assert checked[1]["labels"] == list("ABCD") and checked[0]["labels"] == ["1", "2", "3", "4"]
    bad = {**arc_items(1)[0], "answerKey": "E"}
    with pytest.raises(LabkitError, match="answerKey='E' is not one of the labels"):
        validate_items([bad])
    with pytest.raises(LabkitError, match="same length"):
        validate_items([{**bad, "choices": {"text": ["a", "b"], "label": ["A"]}}])
    with pytest.raises(LabkitError, match="no 'answerKey'"):
        validate_items([{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}])


def test_letter_prompt_is_lm_evals_mmlu_prompt():
    from lm_eval.utils import apply_template

    from labkit.evaluation import LETTER_TEMPLATE, MMLU_DESCRIPTION

    mmlu = _lm_eval_task_config("mmlu/default/_default_template_yaml")
    for item in make_items(4):
        item = {**item, "question": f"  {item['question']} "}  # MMLU strips the question
        assert render_prompt(item, LETTER_TEMPLATE) == apply_template(mmlu["doc_to_text"], item)
    anatomy = _lm_eval_task_config("mmlu/default/mmlu_anatomy.yaml")
    assert render_prompt({"subject": "anatomy"}, MMLU_DESCRIPTION) == anatomy["description"]
    with pytest.raises(LabkitError, match="scoring='words'"):
        score_items(None, None, make_items(1), scoring="words")


def test_letters_and_arc_scores_equal_lm_eval(tmp_path, tokenizer, model):
    """lm-eval's own MMLU and ARC-Easy prompt formats on local data, against labkit's
    letter scoring and its ARC-shaped items: the same log-likelihoods, the same accuracies."""
    import yaml

    from labkit.evaluation import MMLU_DESCRIPTION

    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    mmlu_items = [{**item, "subject": "valley_trade"} for item in make_items()]
    data = {"letters": write_jsonl(tmp_path / "letters.jsonl", mmlu_items),
            "arc": write_jsonl(tmp_path / "arc.jsonl", arc_items())}
    mmlu = _lm_eval_task_config("mmlu/default/_default_template_yaml")
    arc = _lm_eval_task_config("arc/arc_easy.yaml")
    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True}
               for m in ("acc", "acc_norm")]
    tasks = {
        "letters": {**{k: mmlu[k] for k in ("output_type", "doc_to_text", "doc_to_choice",
                                            "doc_to_target")},
                    "description": "The following are multiple choice questions (with answers) "
                                   "about valley trade.\n\n"},
        "arc": {k: arc[k] for k in ("output_type", "doc_to_text", "doc_to_choice",
                                    "doc_to_target")},
    }
    (tmp_path / "tasks").mkdir()
    for name, config in tasks.items():
        config = {"task": f"mc_{name}", "dataset_path": "json",
                  "dataset_kwargs": {"data_files": {"test": str(data[name])}},
                  "test_split": "test", **config, "metric_list": metrics,
                  "metadata": {"version": 1.0}}
        (tmp_path / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(config))
    run = run_lm_eval(model_dir, tmp_path / "tasks", ["mc_letters", "mc_arc"])

    ours = {"letters": score_items(model, tokenizer, mmlu_items, scoring="letters",
                                   description=MMLU_DESCRIPTION),
            "arc": score_items(model, tokenizer, arc_items())}
    for name, scores in ours.items():
        for metric in ("acc", "acc_norm"):
            assert run.metric(f"mc_{name}", metric) == scores[metric].mean(), (name, metric)
        theirs = run.samples[f"mc_{name}"].sort_values("doc_id").reset_index(drop=True)
        for doc_id, row in theirs.iterrows():
            assert row["target"] == scores.loc[doc_id, "answer"]
            assert row["logprobs"] == pytest.approx(scores.loc[doc_id, "logprobs"], abs=1e-4)
    letters = ours["letters"]
    assert (letters["acc"] == letters["acc_norm"]).all()  # one character per letter
    assert letters["logprobs"].tolist() != ours["arc"]["logprobs"].tolist()


def test_shipped_lm_eval_task_runs_from_any_directory(tmp_path, monkeypatch):
    """data_samples/benchmarks/lm_eval/world_knowledge.yaml, as the stock `lm_eval
    --include_path` reads it, from a directory that is not the repository root: its items load
    and the first 6 score as labkit scores them."""
    import sys

    from transformers import AutoTokenizer

    from labkit.loaders import load_model
    from labkit.samples import sample_path

    task_dir = sample_path("benchmarks/lm_eval")
    lines = (task_dir / "world_knowledge.yaml").read_text().splitlines()
    assert not [line for line in lines if "data_files" in line and not line.startswith("#")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in data_samples
    run = run_lm_eval(sample_path("models/base"), task_dir, ["world_knowledge"], limit=6)
    model = load_model("base")
    tokenizer = AutoTokenizer.from_pretrained(sample_path("models/base"))
    ours = score_items(model, tokenizer,
                       load_items(sample_path("benchmarks/knowledge_mc.jsonl"))[:6])
    assert run.metric("world_knowledge", "acc") == ours["acc"].mean()
    assert run.metric("world_knowledge", "acc_norm") == ours["acc_norm"].mean()
    theirs = run.samples["world_knowledge"].sort_values("doc_id").reset_index(drop=True)
    assert theirs["target"].tolist() == ours["answer"].tolist()
