"""The embedded world: consistent, deterministic, and shaped for the labs that use it."""

from __future__ import annotations

import json
import random
import re

import pytest

from labkit.loaders import load_dataset, load_records, load_tokenizer
from labkit.samples import sample_path
from labkit.world.instruct import heldout_entity
from labkit.world.kb import make_world


@pytest.fixture(scope="module")
def world():
    return make_world(7)


def test_world_is_consistent(world):
    names = set(world.by_name)
    assert 250 <= world.n_entities <= 400
    for c in world.countries:
        assert c.capital in c.cities and c.animal in names
    for t in world.cities:
        assert t.country in names and t.known_for in names
    for p in world.people:
        assert p.birthplace in names
    for i in world.inventions:
        assert i.inventor in names
    national = {c.animal: c.name for c in world.countries}
    for a in world.animals:
        assert a.home in names and national.get(a.name, a.home) == a.home


def test_world_is_deterministic(world):
    again = make_world(7)
    assert world.facts() == again.facts()
    assert make_world(8).facts() != world.facts()


def test_build_samples_reproduces_the_manifest():
    """Regenerating every data file gives the bytes recorded in MANIFEST.json."""
    from labkit.world.build import build_samples

    build_samples(check=True)


def test_crawl_labels_match_the_warc():
    from warcio.archiveiterator import ArchiveIterator

    labels = load_records(str(sample_path("crawl/labels.jsonl")))
    with open(sample_path("crawl/crawl.warc.gz"), "rb") as fh:
        records = [(r.rec_type, r.rec_headers.get_header("WARC-Target-URI")) for r in ArchiveIterator(fh)]
    assert records[0][0] == "warcinfo"
    assert [u for _, u in records[1:]] == [lab["url"] for lab in labels]
    kinds = {lab["kind"] for lab in labels}
    assert {"clean", "pii", "exact_dup", "near_dup", "spam", "lorem", "gibberish", "short",
            "non_english", "non_html", "boilerplate", "latin1"} <= kinds
    langs = {lab["language"] for lab in labels if lab["kind"] == "non_english"}
    assert len(langs) >= 4
    by_url = {lab["url"]: lab for lab in labels}
    for lab in labels:
        if lab["duplicate_of"]:
            original = by_url[lab["duplicate_of"]]
            assert original["keep"] and original["record"] < lab["record"]
    assert all(p["type"] in ("email", "phone", "ip") for lab in labels for p in lab["pii"])


def test_benchmark_shares_no_8gram_with_the_corpus():
    """The clean knowledge test is not contaminated: no 8-word window of any item is in the corpus."""
    def grams(text, n=8):
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    corpus = set()
    for doc in load_records("corpus"):
        corpus |= grams(doc["text"])
    items = load_records("knowledge_mc")
    assert len(items) >= 300
    leaks = [it["id"] for it in items
             if grams(it["question"] + " " + it["choices"][it["answer"]]) & corpus]
    assert leaks == []


def test_knowledge_test_is_well_formed():
    items = load_records("knowledge_mc")
    assert {it["subject"] for it in items} >= {"geography", "biology", "chemistry", "history", "technology"}
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert 0 <= it["answer"] < 4
    answers = [it["answer"] for it in items]
    assert max(answers.count(i) for i in range(4)) < 0.35 * len(items)  # no position bias


def test_contaminated_set_leaks_exactly_the_listed_items():
    records = load_records("contaminated_finetune")
    leaked = json.loads(sample_path("benchmarks/contaminated_ids.json").read_text())
    assert sorted(r["item"] for r in records if r["source"] == "leak") == leaked
    assert len(leaked) >= 50


def test_code_tasks_solutions_pass_and_are_unseen():
    tasks = load_records("code_tasks")
    corpus_text = "\n".join(d["text"] for d in load_records("corpus") if d["genre"] == "code")
    for t in tasks:
        scope: dict = {}
        exec(t["prompt"] + t["canonical_solution"] + "\n" + t["test"], scope)
        scope["check"](scope[t["entry_point"]])
        assert f"def {t['entry_point']}(" not in corpus_text
    with pytest.raises(AssertionError):
        scope = {}
        exec(tasks[0]["prompt"] + "    return None\n" + tasks[0]["test"], scope)
        scope["check"](scope[tasks[0]["entry_point"]])


def test_instruction_data_never_mentions_heldout_entities():
    questions = load_records("sft_eval")
    assert questions and all(heldout_entity(q["subject"]) for q in questions)
    curated = load_records("instructions_curated")
    assert len(curated) == 1000
    texts = ["\n".join(m["content"] for m in ex["messages"]) for ex in curated]
    seen = [q["id"] for q in questions for t in texts if q["subject"] in t and q["answer"] in t]
    assert seen == [], "an SFT evaluation fact appears in the curated instruction data"


def test_noisy_set_defects_are_labelled():
    noisy = load_records("instructions_noisy")
    assert len(noisy) == 10000
    defects = {ex["defect"] for ex in noisy}
    assert defects == {None, "wrong_fact", "truncated", "off_topic", "repetition"}
    assert sum(ex["defect"] is None for ex in noisy) < 0.4 * len(noisy)


def test_preference_pairs_have_labelled_defects():
    pairs = load_records("preferences")
    assert {p["defect"] for p in pairs} == {"wrong_fact", "repetition", "rude", "verbose", "unsafe"}
    assert all(p["chosen"] != p["rejected"] and p["prompt"] for p in pairs)
    test_share = sum(p["split"] == "test" for p in pairs) / len(pairs)
    assert 0.15 < test_share < 0.25
    wrong = [p for p in pairs if p["defect"] == "wrong_fact"]
    assert all(p["fact"][2] in p["chosen"] and p["fact"][2] not in p["rejected"] for p in wrong)


def test_tokenizer_has_chat_template_with_generation_markers():
    tok = load_tokenizer()
    assert "{% generation %}" in tok.chat_template
    assert 2000 <= len(tok) <= 8192
    msgs = [{"role": "user", "content": "Where is Tarsk?"}, {"role": "assistant", "content": "In Velmora."}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    answer = tok.decode([i for i, m in zip(ids, mask) if m])
    assert answer == "In Velmora.<|end|>"
    text = "The capital of Velmora is Tarsk. 🙂 東京"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_datasets_loader_and_bad_names():
    ds = load_dataset("knowledge_mc")
    assert len(ds) >= 300 and "question" in ds.column_names
    from labkit import LabkitError

    with pytest.raises(LabkitError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(LabkitError, match="offline"):
        load_dataset("someone/some-dataset")


def test_corpus_mentions_every_fact_often():
    docs = load_records("corpus")
    kb = json.loads(sample_path("world/knowledge_base.json").read_text())
    rng = random.Random(0)
    texts = [d["text"] for d in docs]
    for f in rng.sample(kb["facts"], 25):
        hits = sum(1 for t in texts if f["subject"] in t and f["object"] in t)
        assert hits >= 10, f"{f} co-occurs only {hits} times"


def test_train_models_names_every_valid_model_and_refuses_remeasuring_adapters(tmp_path):
    from labkit.errors import LabkitError
    from labkit.world.models import train_models

    with pytest.raises(LabkitError, match="valid: base, mlm, sft, dpo"):
        train_models(["gpt5"], out=tmp_path)
    with pytest.raises(LabkitError, match="--measure-only re-measures base and mlm only"):
        train_models(["sft"], out=tmp_path, measure_only=True)
