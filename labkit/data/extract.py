"""Main-text extraction: the article without the menus, footers and ads around it.

FineWeb extracts with trafilatura. `deduplicate=False` matters: with True, trafilatura keeps a
cache across documents and drops text it has seen before, so a page's output would depend on the
order pages arrive in. `naive_strip_tags` shows what extraction buys: it keeps every word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser

import trafilatura

from labkit.validate import checks, function, text

from .document import Accounting, Document, _accounting, documents

_INVISIBLE = {"script", "style", "noscript", "template", "head"}
_BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
           "article", "header", "footer", "nav", "aside", "ul", "ol", "table", "title"}


@checks(html=text)
def extract_main_text(html: str) -> str:
    """The main text of a page as trafilatura sees it, with FineWeb's settings; '' if none."""
    text = trafilatura.extract(
        html, favor_precision=True, include_comments=False, deduplicate=False
    )
    return text or ""


class _TextCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in _INVISIBLE
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.hidden -= tag in _INVISIBLE and self.hidden > 0
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


@checks(html=text)
def naive_strip_tags(html: str) -> str:
    """Every visible piece of text, one block per line: navigation and footers included."""
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    lines = (re.sub(r"\s+", " ", line).strip() for line in "".join(collector.parts).split("\n"))
    return "\n".join(line for line in lines if line)


@checks(docs=documents, accounting=_accounting, extractor=function)
def extract(
    docs: Iterable[Document],
    accounting: Accounting,
    extractor: Callable[[str], str] = extract_main_text,
) -> Iterator[Document]:
    """Replace each document's HTML by its main text; no text left is a drop."""
    for doc in docs:
        try:
            text = extractor(doc.text)
        except Exception as exc:  # a parser failure on one page must not stop the crawl
            accounting.drop(doc.id, "extract", f"extraction_error:{type(exc).__name__}")
            continue
        if not text.strip():
            accounting.drop(doc.id, "extract", "no_main_text")
            continue
        yield doc.updated(text=text, html_chars=len(doc.text))
