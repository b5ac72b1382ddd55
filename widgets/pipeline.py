"""Pipeline explorer: toggle the steps of lab 01's pipeline, move their thresholds, and watch the
funnel, the dropped and kept examples, and each step's precision/recall against the labels.

An update reruns the whole pipeline through `labkit.data.run_pipeline` (so the accounting is
checked: in == kept + dropped at every step), but every expensive per-document result
(extraction, language scores, rule verdicts, MinHash signatures, quality scores) is computed once
per distinct text and cached; only the thresholds are applied again. Each cached step reports
under the name of the labkit step it stands for and keeps and drops exactly what that step
would (tests check this); only metadata the explorer does not show (language score, counts) is
left out, because copying it for every document on every update is most of an update's time.
"""

from __future__ import annotations

import hashlib
import html
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from labkit.data import (
    Accounting,
    Document,
    c4_clean,
    detect_language,
    extract_main_text,
    fineweb_reason,
    funnel_figure,
    gopher_quality_reason,
    gopher_repetition_reason,
    minhash_signatures,
    naive_strip_tags,
    near_duplicate_clusters,
    normalise_text,
    predict_scores,
    run_pipeline,
    scrub_pii,
)
from labkit.data.evaluate import label_outcomes, pipeline_precision_recall, step_precision_recall
from labkit.data.quality import _WORD, GOPHER_STOP_WORDS, words_of
from labkit.errors import LabkitError

STEPS = ("language_filter", "gopher_repetition", "gopher_quality", "c4_filter",
         "fineweb_filter", "exact_dedup", "minhash_dedup", "quality_score_filter", "pii_scrub")
EXTRACTORS = {"trafilatura": extract_main_text, "naive": naive_strip_tags}
_STYLE = {"description_width": "260px"}  # the longest label, "MinHash bands x rows (112 hashes)", is 235 px
_LAYOUT = W.Layout(width="500px")


def _message(kind: str, text: str) -> str:
    colour = {"error": "#b42318", "info": "#475467", "ok": "#1a7f37"}[kind]
    return f'<span style="color:{colour}">{html.escape(text)}</span>'


def band_options(num_perm: int) -> list[tuple[str, tuple[int, int]]]:
    """Every (bands, rows) with bands * rows == num_perm, labelled with its threshold
    (1/b)^(1/r): the similarity where the S-curve is steepest."""
    pairs = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    return [(f"{b} x {r}  (s* = {(1 / b) ** (1 / r):.2f})", (b, r)) for b, r in pairs]


def _snippet(text: str, n: int = 110) -> str:
    flat = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= n else flat[:n - 1] + "…"


def _named(name: str):
    def decorate(fn):
        fn.__name__ = name
        return fn
    return decorate


class PipelineExplorer:
    """Controls -> cached labkit steps -> funnel FigureWidget + precision/recall + examples.

    `docs` are documents as `read_warc` yields them (HTML text, metadata["url"]); `main_text`
    (doc id -> extracted text) saves extracting them again. `labels` (the crawl's label records)
    turn on precision/recall; `scorer` (from `fit_quality_scorer`) turns on the score filter;
    `source` (the Accounting `read_warc` filled) and `urls` (doc id -> URL for its drops, from
    `record_urls`) put the reader's row at the top of the funnel. `cache` starts the per-text
    caches from results already computed, e.g. {"language": {text: detect_language(text)}}.
    """

    def __init__(self, docs: Iterable[Document], labels: Sequence[Mapping] | None = None, *,
                 scorer=None, main_text: Mapping[str, str] | None = None,
                 source: Accounting | None = None, urls: Mapping[str, str] | None = None,
                 cache: Mapping[str, Mapping] | None = None, settings=None, examples: int = 2):
        if settings is None:
            from labkit import profile

            settings = profile().settings("data")
        self.docs = list(docs)
        if not self.docs:
            raise LabkitError("docs is empty; give the documents read_warc yields")
        self.labels = list(labels or [])
        self.scorer, self.source, self.examples = scorer, source, examples
        self.settings = settings
        self.urls = {d.id: d.metadata.get("url", "") for d in self.docs}
        self.urls.update(urls or {})
        self._kinds = {label["url"]: label.get("kind", "") for label in self.labels}
        self.languages = tuple(settings.languages)
        self.num_perm, self.seed, self.ngram = settings.num_perm, settings.minhash_seed, settings.ngram
        # per-extractor: doc id -> main text (None: the extractor raised)
        self._main: dict[str, dict[str, str | None]] = {"trafilatura": dict(main_text or {})}
        self._cache: dict[str, dict] = defaultdict(dict)  # feature -> text -> value
        for feature, values in (cache or {}).items():
            self._cache[feature].update(values)
        self.last_seconds = 0.0
        self.status = ""  # the last update's outcome as plain text
        self.table = None
        self.precision_recall = None

        self.extractor = W.Dropdown(
            options=[("trafilatura (FineWeb settings)", "trafilatura"),
                     ("naive tag stripper (keeps menus)", "naive")],
            value="trafilatura", description="main-text extractor", style=_STYLE, layout=_LAYOUT)
        self.min_language = W.FloatSlider(
            value=settings.min_language_score, min=0.0, max=1.0, step=0.01,
            description="min P(English) (probability)", style=_STYLE, layout=_LAYOUT)
        self.min_words = W.IntSlider(value=50, min=0, max=300, step=5,
                                     description="Gopher min words (words)", style=_STYLE,
                                     layout=_LAYOUT)
        self.max_words = W.BoundedIntText(value=100_000, min=0, max=10_000_000,
                                          description="Gopher max words (words)", style=_STYLE,
                                          layout=_LAYOUT)
        self.min_stop_words = W.IntSlider(value=2, min=0, max=10,
                                          description="Gopher min stop words (count)",
                                          style=_STYLE, layout=_LAYOUT)
        self.min_alpha = W.FloatSlider(value=0.8, min=0.0, max=1.0, step=0.05,
                                       description="Gopher alpha share (fraction)",
                                       style=_STYLE, layout=_LAYOUT)
        options = band_options(self.num_perm)
        default = (settings.bands, settings.rows)
        self.bands_rows = W.Dropdown(
            options=options, value=default if default in dict(options).values() else options[0][1],
            description=f"MinHash bands x rows ({self.num_perm} hashes)", style=_STYLE,
            layout=_LAYOUT)
        self.edu_threshold = W.FloatSlider(
            value=settings.edu_threshold, min=0.0, max=5.0, step=0.1,
            description="edu score cut-off (points of 5)", style=_STYLE, layout=_LAYOUT)
        self.toggles = {step: W.Checkbox(value=True, description=step, indent=False,
                                         layout=W.Layout(width="220px")) for step in STEPS}
        if scorer is None:
            self.toggles["quality_score_filter"].value = False
            self.toggles["quality_score_filter"].disabled = True
            self.toggles["quality_score_filter"].description = "quality_score_filter (no scorer)"
        self.message = W.HTML()
        self.scores_html = W.HTML()
        self.examples_html = W.HTML()
        self.controls = [self.extractor, self.min_language, self.min_words, self.max_words,
                         self.min_stop_words, self.min_alpha, self.bands_rows, self.edu_threshold,
                         *self.toggles.values()]

        self.figure = go.FigureWidget(funnel_figure(
            self._placeholder_table(), title="Documents kept at each pipeline step"))
        self.figure.update_layout(template="plotly_white", height=440,
                                  margin={"l": 190, "r": 30, "t": 60, "b": 50})
        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()

    # -- the cached steps -------------------------------------------------------------------

    def _placeholder_table(self):
        import pandas as pd

        return pd.DataFrame({"step": ["extract"], "in": [len(self.docs)], "kept": [0]})

    def _fill(self, feature: str, texts: Iterable[str], compute) -> dict:
        """The cache of `feature`, with every missing text computed (in one batch)."""
        cache = self._cache[feature]
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cache.update(zip(missing, compute(missing)))
        return cache

    def main_texts(self, extractor: str) -> dict[str, str | None]:
        """doc id -> main text under `extractor`; extracted once, on first use."""
        if extractor not in EXTRACTORS:
            raise LabkitError(f"extractor={extractor!r}; valid: {', '.join(EXTRACTORS)}")
        found = self._main.setdefault(extractor, {})
        for doc in self.docs:
            if doc.id not in found:
                try:
                    found[doc.id] = EXTRACTORS[extractor](doc.text)
                except Exception:  # a parser failure on one page: the step reports it
                    found[doc.id] = None
        return found

    def steps(self, params: dict) -> list:
        """The enabled steps with `params`, as functions `run_pipeline` can compose."""
        main = self.main_texts(params["extractor"])

        @_named("extract")
        def extract(docs, accounting):
            for doc in docs:
                text = main[doc.id]
                if text is None:
                    accounting.drop(doc.id, "extract", "extraction_error:cached")
                elif not text.strip():
                    accounting.drop(doc.id, "extract", "no_main_text")
                else:
                    yield Document(doc.id, text, doc.metadata)

        @_named("language_filter")
        def language_filter(docs, accounting):
            docs = list(docs)
            cache = self._fill("language", (d.text for d in docs),
                               lambda ts: [detect_language(t) for t in ts])
            for doc in docs:
                lang, prob = cache[doc.text]
                if lang not in self.languages:
                    accounting.drop(doc.id, "language_filter", f"other_language:{lang}")
                elif prob < params["min_language"]:
                    accounting.drop(doc.id, "language_filter", "low_language_score")
                else:
                    yield doc

        def verdicts(name: str, rule):
            @_named(name)
            def step(docs, accounting):
                docs = list(docs)
                cache = self._fill(name, (d.text for d in docs), lambda ts: [rule(t) for t in ts])
                for doc in docs:
                    if cache[doc.text] is None:
                        yield doc
                    else:
                        accounting.drop(doc.id, name, cache[doc.text])
            return step

        @_named("gopher_quality")
        def gopher_quality(docs, accounting):
            # The word-count and stop-word rules are the ones with controls: their inputs are
            # cached, the other rules' verdict (checked between them, in labkit's order) too.
            docs = list(docs)
            cache = self._fill("gopher_stats", (d.text for d in docs),
                               lambda ts: [self._gopher_stats(t) for t in ts])
            lo, hi, stops = params["min_words"], params["max_words"], params["min_stop_words"]
            alpha = params.get("min_alpha", 0.8)
            for doc in docs:
                n_words, n_stop, other, alpha_share = cache[doc.text]
                reason = ("gopher_short_doc" if lo and n_words < lo else
                          "gopher_long_doc" if hi and n_words > hi else
                          other or ("gopher_below_alpha_threshold" if alpha and alpha_share < alpha
                                    else None)
                          or ("gopher_too_few_stop_words" if stops and n_stop < stops else None))
                if reason is None:
                    yield doc
                else:
                    accounting.drop(doc.id, "gopher_quality", reason)

        @_named("c4_filter")
        def c4_filter(docs, accounting):
            docs = list(docs)
            cache = self._fill("c4", (d.text for d in docs), lambda ts: [
                c4_clean(t)[:2] for t in ts])
            for doc in docs:
                text, reason = cache[doc.text]
                if reason:
                    accounting.drop(doc.id, "c4_filter", reason)
                else:
                    yield Document(doc.id, text, doc.metadata)

        @_named("exact_dedup")
        def exact_dedup(docs, accounting):
            docs = list(docs)
            cache = self._fill("exact_key", (d.text for d in docs), lambda ts: [
                hashlib.blake2b(normalise_text(t).encode(), digest_size=16).digest() for t in ts])
            first: dict[bytes, str] = {}
            for doc in docs:
                key = cache[doc.text]
                if key in first:
                    accounting.drop(doc.id, "exact_dedup", f"exact_duplicate_of:{first[key]}")
                else:
                    first[key] = doc.id
                    yield doc

        @_named("minhash_dedup")
        def minhash_dedup(docs, accounting):
            docs = list(docs)
            cache = self._fill("signature", (d.text for d in docs), lambda ts: list(
                minhash_signatures(ts, self.num_perm, self.seed, self.ngram)))
            bands, rows = params["bands_rows"]
            signatures = (np.stack([cache[d.text] for d in docs]) if docs
                          else np.empty((0, self.num_perm), dtype=np.uint64))
            roots = near_duplicate_clusters(signatures, bands, rows)
            for i, doc in enumerate(docs):
                if roots[i] == i:
                    yield doc
                else:
                    accounting.drop(doc.id, "minhash_dedup",
                                    f"near_duplicate_of:{docs[roots[i]].id}")

        @_named("quality_score_filter")
        def quality_score_filter(docs, accounting):
            docs = list(docs)
            cache = self._fill("score", (d.text for d in docs),
                               lambda ts: list(predict_scores(self.scorer, ts)))
            for doc in docs:
                score = cache[doc.text]
                if score >= params["edu_threshold"]:
                    yield doc
                else:
                    accounting.drop(doc.id, "quality_score_filter", "low_edu_score")

        @_named("pii_scrub")
        def pii_scrub(docs, accounting):
            docs = list(docs)
            cache = self._fill("pii", (d.text for d in docs), lambda ts: list(map(scrub_pii, ts)))
            for doc in docs:
                yield Document(doc.id, cache[doc.text][0], doc.metadata)

        available = {
            "language_filter": language_filter,
            "gopher_repetition": verdicts("gopher_repetition", gopher_repetition_reason),
            "gopher_quality": gopher_quality, "c4_filter": c4_filter,
            "fineweb_filter": verdicts("fineweb_filter", fineweb_reason),
            "exact_dedup": exact_dedup, "minhash_dedup": minhash_dedup,
            "quality_score_filter": quality_score_filter, "pii_scrub": pii_scrub,
        }
        return [extract] + [available[s] for s in STEPS if s in params["steps"]]

    @staticmethod
    def _gopher_stats(text: str) -> tuple[int, int, str | None, float]:
        words = words_of(text)
        n_words = sum(1 for w in words if _WORD.search(w))
        other = gopher_quality_reason(text, min_doc_words=None, max_doc_words=None,
                                      min_stop_words=None, min_alpha_words_ratio=None)
        # As labkit's rule: the share of all tokens (punctuation included) with a letter.
        alpha_share = sum(any(c.isalpha() for c in w) for w in words) / max(1, len(words))
        return n_words, sum(w in GOPHER_STOP_WORDS for w in words), other, alpha_share

    # -- reading the controls and running ---------------------------------------------------

    def params(self) -> dict:
        """The controls as step parameters (raises LabkitError for impossible ones)."""
        lo, hi = self.min_words.value, self.max_words.value
        if hi and lo and hi < lo:
            raise LabkitError(f"Gopher max words = {hi} is below min words = {lo}; "
                              "valid: max >= min (0 turns a bound off)")
        steps = tuple(s for s in STEPS if self.toggles[s].value)
        if "quality_score_filter" in steps and self.scorer is None:
            raise LabkitError("the quality score filter needs a scorer; pass scorer=...")
        return {"extractor": self.extractor.value, "min_language": self.min_language.value,
                "min_words": lo, "max_words": hi, "min_stop_words": self.min_stop_words.value,
                "min_alpha": self.min_alpha.value,
                "bands_rows": tuple(self.bands_rows.value),
                "edu_threshold": self.edu_threshold.value, "steps": steps}

    def run(self, params: dict | None = None):
        """(kept documents, per-step table, accounting) for `params` (default: the controls)."""
        params = self.params() if params is None else params
        accounting = Accounting()
        if self.source is not None:  # the reader's row and drops come first
            for step in self.source.entered:
                accounting.register(step)
                accounting.entered[step] = self.source.entered[step]
                accounting.passed[step] = self.source.passed[step]
            accounting.drops.extend(self.source.drops)
        kept, table = run_pipeline(self.steps(params), self.docs, accounting)
        return kept, table, accounting

    def update(self, change=None) -> bool:
        """Rerun and redraw in place; a bad setting (or any failure) shows a message instead."""
        start = time.perf_counter()
        try:
            params = self.params()
            kept, table, accounting = self.run(params)
            pr = overall = None
            if self.labels:
                outcomes = label_outcomes(self.labels, accounting, kept, self.urls)
                pr = step_precision_recall(outcomes, table["step"], params["edu_threshold"])
                overall = pipeline_precision_recall(
                    outcomes, params["edu_threshold"] if "quality_score_filter" in params["steps"]
                    else None)
        except LabkitError as exc:
            self.status = str(exc)
            self.message.value = _message("error", self.status)
            return False
        except Exception as exc:  # never a traceback in the learner's face
            self.status = f"{type(exc).__name__}: {exc}"
            self.message.value = _message("error", self.status)
            return False
        fresh = funnel_figure(table)
        with self.figure.batch_update():
            self.figure.data[0].x = fresh.data[0].x
            self.figure.data[0].y = fresh.data[0].y
        self.table, self.precision_recall = table, pr
        self.scores_html.value = self._scores_html(pr, overall)
        self.examples_html.value = self._examples_html(kept, accounting, params)
        self.last_seconds = time.perf_counter() - start
        first = int(table["in"].iloc[0])
        self.status = (f"kept {len(kept)} of {first} records ({100 * len(kept) / first:.1f}%)"
                       + (f"; pipeline precision {overall['precision']:.2f}, recall "
                          f"{overall['recall']:.2f}" if overall else ""))
        self.message.value = _message(
            "ok", f"{self.status}; updated in {1000 * self.last_seconds:.0f} ms")
        return True

    # -- the tables ---------------------------------------------------------------------------

    @staticmethod
    def _scores_html(pr, overall) -> str:
        if pr is None:
            return "<i>no labels given: precision/recall off</i>"

        def pct(v) -> str:
            return "" if v != v else f"{100 * v:.0f}%"  # NaN: nothing dropped or no class

        head = ("<tr><th>step</th><th>dropped</th><th>precision<br>(should have gone)</th>"
                "<th>reason class reaching the step</th><th>recall<br>(caught)</th>"
                "<th>dropped, by label kind</th></tr>")
        rows = []
        for r in pr.itertuples():
            reason_class = f"{r.reason_class} ({r.class_in})" if r.reason_class else ""
            kinds = ", ".join(f"{k} {v}" for k, v in r.dropped_kinds.items())
            rows.append(f"<tr><td>{html.escape(r.step)}</td><td>{r.dropped}</td>"
                        f"<td>{pct(r.precision)}</td><td>{html.escape(reason_class)}</td>"
                        f"<td>{pct(r.recall)}</td><td>{html.escape(kinds)}</td></tr>")
        total = (f"<p><b>whole pipeline</b>: precision {pct(overall['precision'])} of the kept "
                 f"records should be kept, recall {pct(overall['recall'])} of those were kept "
                 f"(F1 {overall['f1']:.2f})</p>")
        return f'<table style="font-size:12px">{head}{"".join(rows)}</table>{total}'

    def _examples_html(self, kept, accounting, params) -> str:
        kinds = self._kinds
        main = self._main[params["extractor"]]
        by_reason: dict[tuple[str, str], list[str]] = defaultdict(list)
        for doc_id, step, reason in accounting.drops:
            by_reason[(step, reason.split(":")[0])].append(doc_id)

        def row(step: str, reason: str, ids: list[str], count: int) -> str:
            cells = []
            for doc_id in ids[:self.examples]:
                url = self.urls.get(doc_id, "")
                text = main.get(doc_id) or ""
                kind = kinds.get(url, "")
                cells.append(f"<div><code>{html.escape(url)}</code>"
                             f"{f' <b>[{html.escape(kind)}]</b>' if kind else ''}<br>"
                             f"{html.escape(_snippet(text))}</div>")
            return (f"<tr><td>{html.escape(step)}</td><td>{html.escape(reason)}</td>"
                    f"<td>{count}</td><td>{''.join(cells)}</td></tr>")

        rows = [row(s, r, ids, len(ids)) for (s, r), ids in by_reason.items()]
        rows.append(row("(kept)", "passed every step", [d.id for d in kept], len(kept)))
        head = "<tr><th>step</th><th>reason</th><th>records</th><th>examples</th></tr>"
        return f'<table style="font-size:12px">{head}{"".join(rows)}</table>'

    # -- display ------------------------------------------------------------------------------

    @cached_property
    def widget(self) -> W.Widget:
        left = W.VBox([self.extractor, self.min_language, self.min_words, self.max_words,
                       self.min_stop_words, self.min_alpha, self.bands_rows,
                       self.edu_threshold])
        right = W.VBox([W.HTML("<b>steps</b>"), *self.toggles.values()])
        return W.VBox([W.HBox([left, right], layout=W.Layout(flex_flow="row wrap")), self.message, self.figure,
                       W.HTML("<b>Each step against the crawl's labels</b>"), self.scores_html,
                       W.HTML("<b>What was dropped, and why (examples)</b>"),
                       self.examples_html])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def pipeline_explorer(docs, labels=None, **kwargs) -> PipelineExplorer:
    """The explorer with the current profile's settings (see PipelineExplorer)."""
    return PipelineExplorer(docs, labels, **kwargs)
