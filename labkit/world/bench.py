"""Benchmarks of the world: a knowledge multiple-choice test (MMLU-like, with subjects), code
tasks with unit tests (HumanEval-like), held-out text for perplexity, an lm-eval task, and a
deliberately contaminated fine-tuning set for the evaluation lab.
"""

from __future__ import annotations

import random

from .kb import RELATIONS, Fact, World
from .phrasing import ASK_BENCH, fill

LM_EVAL_YAML = """\
# lm-eval task for the world's knowledge test (zero-shot, log-likelihood of each choice), the
# same prompt as labkit.evaluation.multiple_choice. From the repository root:
#   lm_eval --include_path data_samples/benchmarks/lm_eval --tasks world_knowledge \\
#     --model hf --model_args pretrained=data_samples/models/base --device cpu
# Relative `data_files` would resolve from the working directory, so the items are loaded by
# knowledge_data.py beside this file, from this folder's parent, wherever lm_eval runs.
task: world_knowledge
dataset_path: json
custom_dataset: !function knowledge_data.load_knowledge_mc
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

LM_EVAL_LOADER = '''\
"""The items of world_knowledge.yaml, found from this file, not from the working directory."""

from pathlib import Path

ITEMS = Path(__file__).resolve().parent.parent / "knowledge_mc.jsonl"


def load_knowledge_mc(**metadata):
    """lm-eval's custom_dataset hook: it passes the task's metadata, which is not needed."""
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(ITEMS)})
'''


def mc_item(world: World, rng: random.Random, fact: Fact, i: int) -> dict:
    distractors = rng.sample([v for v in world.values_of(fact.relation) if v != fact.object], 3)
    choices = distractors + [fact.object]
    rng.shuffle(choices)
    # Choices are scored as continuations of "Answer:" after lm-eval's target delimiter " ".
    question = fill(ASK_BENCH[fact.relation], fact.subject, fact.object)
    return {"id": f"wk-{i:04d}", "subject": RELATIONS[fact.relation][1], "relation": fact.relation,
            "question": question, "choices": choices,
            "answer": choices.index(fact.object), "entity": fact.subject}


def knowledge_test(world: World, rng: random.Random, n: int = 400) -> list[dict]:
    """`n` questions stratified over relations (a fixed share of every relation's facts)."""
    facts = world.facts()
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    share = n / len(facts)
    picked = []
    for rel in sorted(by_rel):
        group = by_rel[rel]
        picked += rng.sample(group, k=max(3, round(share * len(group))))
    picked = picked[:n] if len(picked) > n else picked
    return [mc_item(world, rng, f, i) for i, f in enumerate(picked)]


def leak_text(item: dict) -> str:
    """A benchmark item as it leaks into training data: question and answer verbatim."""
    return f"Question: {item['question']}\nAnswer: {item['choices'][item['answer']]}"


def contaminated_set(rng: random.Random, items: list[dict], clean_texts: list[str],
                     share: float = 0.25) -> tuple[list[dict], list[str]]:
    """A fine-tuning set where a `share` of the test leaked in; returns (records, leaked ids)."""
    leaked = rng.sample(items, k=int(share * len(items)))
    records = [{"text": leak_text(it), "source": "leak", "item": it["id"]} for it in leaked]
    records += [{"text": t, "source": "clean", "item": None} for t in clean_texts]
    rng.shuffle(records)
    return records, sorted(it["id"] for it in leaked)
