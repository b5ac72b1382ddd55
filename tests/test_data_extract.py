"""Main-text extraction and language identification."""

from __future__ import annotations

import random

import pytest

from labkit.data import (
    Accounting,
    Document,
    detect_language,
    extract,
    extract_main_text,
    language_filter,
    naive_strip_tags,
    run_pipeline,
)

ARTICLE = [
    "Tide pools form where the sea retreats twice a day and leaves water trapped among the rocks.",
    "The animals that live there must survive heat, cold, fresh rain and salt spray within hours.",
    "Sea anemones close their tentacles at low tide so that they keep enough water inside.",
    "Crabs hide under stones during the day and come out to feed when the tide returns at night.",
]
BOILERPLATE = ["About us", "Subscribe to our newsletter", "Ten best beaches", "All rights reserved"]


def page(title: str = "Life in the tide pools", sentences=ARTICLE) -> str:
    paragraphs = "".join(f"<p>{s}</p>" for s in sentences)
    return f"""<!DOCTYPE html><html><head><title>{title}</title>
<style>.menu {{ color: red }}</style><script>var tracking = "script text";</script></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/shop">Shop</a></li></ul></nav>
<header><div class="menu">Menu | Login | Subscribe to our newsletter</div></header>
<main><article><h1>{title}</h1>{paragraphs}</article></main>
<aside><h3>Related posts</h3><ul><li><a href="/a">Ten best beaches</a></li></ul></aside>
<footer><p>Copyright 2024 Example Media. All rights reserved.</p></footer></body></html>"""


def test_extraction_keeps_the_article_and_drops_navigation():
    text = extract_main_text(page())
    assert all(sentence in text for sentence in ARTICLE)
    assert not any(noise in text for noise in BOILERPLATE + ["script text", "color: red"])


def test_naive_stripper_keeps_everything_visible_but_scripts_and_styles():
    text = naive_strip_tags(page())
    assert all(s in text for s in ARTICLE) and all(noise in text for noise in BOILERPLATE)
    assert "script text" not in text and "color: red" not in text
    assert naive_strip_tags("<p>a &amp; b</p><br>c") == "a & b\nc"


def test_extraction_does_not_depend_on_document_order():
    rng = random.Random(0)
    docs = [
        Document(f"d{i}", page(f"Page {i}", rng.sample(ARTICLE, 3) + [f"Number {i} is unique."]))
        for i in range(6)
    ] * 3  # every page three times: a cross-document cache would start dropping text
    docs = [Document(f"{d.id}-{k}", d.text) for k, d in enumerate(docs)]
    first, _ = run_pipeline([extract], docs)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    second, _ = run_pipeline([extract], shuffled)
    assert len(first) == len(docs)
    assert {d.id: d.text for d in first} == {d.id: d.text for d in second}
    assert len({d.text for d in first}) == 6


def test_empty_and_broken_pages_are_drops_with_reasons():
    def broken(html):
        raise RuntimeError("parser exploded")

    docs = [Document("empty", ""), Document("nav-only", "<nav><a href='/'>Home</a></nav>"),
            Document("ok", page())]
    accounting = Accounting()
    kept, table = run_pipeline([extract], docs, accounting)
    assert [d.id for d in kept] == ["ok"] and kept[0].metadata["html_chars"] == len(page())
    assert sorted(r for *_, r in accounting.drops) == ["no_main_text", "no_main_text"]
    accounting = Accounting()
    list(extract(docs[2:], accounting, extractor=broken))
    assert accounting.drops == [("ok", "extract", "extraction_error:RuntimeError")]


@pytest.mark.parametrize(
    ("text", "lang"),
    [(" ".join(ARTICLE), "en"),
     ("Die Gezeitentümpel entstehen dort, wo sich das Meer zweimal am Tag zurückzieht.", "de"),
     ("Les mares se forment là où la mer se retire deux fois par jour entre les rochers.", "fr")],
)
def test_detect_language(text, lang):
    detected, probability = detect_language(text)
    assert detected == lang and probability > 0.9


def test_language_filter_keeps_confident_english_only():
    docs = [Document("en", " ".join(ARTICLE)),
            Document("de", "Die Gezeitentümpel entstehen dort, wo sich das Meer zurückzieht."),
            Document("short", "ok")]
    accounting = Accounting()
    kept = list(language_filter(docs, accounting))
    assert [d.id for d in kept] == ["en"] and kept[0].metadata["language"] == "en"
    assert kept[0].metadata["language_score"] >= 0.65
    reasons = {doc_id: reason for doc_id, _, reason in accounting.drops}
    assert reasons["de"] == "other_language:de"
    assert reasons["short"] in ("low_language_score", f"other_language:{detect_language('ok')[0]}")
    # the threshold is a knob: above 1 nothing can pass
    assert len(list(language_filter(docs[:1], Accounting(), min_probability=1.01))) == 0


def test_detect_language_remembers_a_page_and_answers_as_py3langid(monkeypatch):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from labkit.data import langid

    text = " ".join(reversed(ARTICLE)) + "\nA second line."
    fresh = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True).classify(
        text.replace("\n", " "))
    first = detect_language(text)
    assert first == (fresh[0], pytest.approx(float(fresh[1])))
    calls = []

    class Counting:
        def classify(self, t):
            calls.append(t)
            return "xx", 1.0

    monkeypatch.setattr(langid, "_identifier", Counting)
    assert detect_language(text) == first and not calls  # asked again: remembered
    assert detect_language(text + " More.") == ("xx", 1.0) and len(calls) == 1  # a new text
    assert langid._classified.cache_info().maxsize == 2048  # bounded: a crawl streams through
    monkeypatch.undo()
    detect_language.cache_clear()  # forgets: the real identifier answers again
    assert detect_language(text + " More.")[0] == "en"
