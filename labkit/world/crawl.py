"""The raw web crawl: clean documents wrapped in realistic HTML noise, plus the pages a data
pipeline must remove or repair, written as a real .warc.gz with a ground-truth label per record.
"""

from __future__ import annotations

import html
import io
import random
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources

from .documents import GENRE_EDU, Document

SITES = ["worldpedia.example", "atlas-of-everything.example", "traveller-notes.example",
         "handy-guides.example", "storyhouse.example", "codebits.example"]
LANGUAGES = ["fr", "de", "es", "it", "nl", "pt"]
SPAM_WORDS = ["best", "cheap", "buy", "deal", "discount", "lantern", "free", "offer", "top",
              "online", "sale", "now", "price", "shop"]
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
         "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.")
COMMENTS = ["Great article, thanks for sharing!", "I visited last year and loved it.",
            "First!!!", "Can someone explain the second paragraph?", "This helped me a lot.",
            "Not sure this is right, my teacher said otherwise."]


@dataclass
class CrawlLabel:
    record: int  # position in the WARC (0 = warcinfo)
    url: str
    kind: str  # clean, pii, latin1, exact_dup, near_dup, spam, lorem, gibberish, short,
    #            non_english, boilerplate, non_html
    keep: bool  # what a perfect pipeline keeps
    doc_id: str | None = None  # the (first) clean document inside, if any
    doc_ids: list[str] = field(default_factory=list)  # every clean document on the page
    duplicate_of: str | None = None  # url of the original page
    language: str = "en"
    edu_score: int = 0  # the teacher's 0-5 educational value
    pii: list[dict] = field(default_factory=list)  # {"type", "value", "public"}
    content_type: str = "text/html; charset=utf-8"


def _paragraphs(text: str) -> str:
    out = []
    for block in text.split("\n\n"):
        if block.startswith(("def ", "CAPITALS", "LANGUAGES", "CURRENCIES")) or "\n    " in block:
            out.append(f"<pre><code>{html.escape(block)}</code></pre>")
        elif "\n" in block and all(line[:2].rstrip(".").isdigit() or line[:1].isdigit()
                                   for line in block.splitlines() if line):
            items = "".join(f"<li>{html.escape(line.split('. ', 1)[-1])}</li>" for line in block.splitlines())
            out.append(f"<ol>{items}</ol>")
        else:
            for line in block.splitlines():
                if line.strip():
                    out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def wrap_html(rng: random.Random, site: str, title: str, body_html: str, *, lang: str = "en",
              charset: str = "utf-8", comments: bool = True) -> str:
    """A page with navigation, cookie banner, ads, comments and footer around the article."""
    nav_items = rng.sample(["Home", "About", "Contact", "Blog", "Shop", "Archive", "Login",
                            "Newsletter", "Help", "Careers"], k=6)
    nav = " | ".join(f'<a href="/{n.lower()}">{n}</a>' for n in nav_items)
    cookie = rng.choice([
        "We use cookies to improve your experience. By continuing you accept our cookie policy.",
        "This site uses cookies. Accept all cookies? Manage preferences.",
        "Cookies help us deliver our services. Read our terms of use and privacy policy."])
    ad = rng.choice(["Sponsored: Buy cheap lanterns today! 50% off all models.",
                     "Advertisement - Subscribe now and get your first month free.",
                     "Ad: The best travel deals, only this week."])
    parts = [f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="{charset}">',
             f"<title>{html.escape(title)} - {site}</title>\n</head>\n<body>",
             f'<div class="cookie-banner">{cookie}</div>',
             f'<header><nav class="menu">{nav}</nav></header>',
             f'<aside class="ad">{ad}</aside>',
             f"<main><article>\n<h1>{html.escape(title)}</h1>\n{body_html}\n</article></main>"]
    if comments and rng.random() < 0.6:
        cs = "".join(f'<div class="comment"><p>{c}</p></div>'
                     for c in rng.sample(COMMENTS, k=rng.randint(1, 3)))
        parts.append(f'<section id="comments" class="comments"><h2>Comments</h2>{cs}</section>')
    year = rng.randint(2015, 2025)
    parts.append(f'<footer><p>© {year} {site}. All rights reserved.</p>'
                 f'<p><a href="/privacy">Privacy</a> · <a href="/terms">Terms of use</a></p></footer>')
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _pii_lines(rng: random.Random) -> tuple[list[str], list[dict]]:
    user = rng.choice(["info", "contact", "hello", "mira.k", "office", "t.berg"])
    domain = rng.choice(["example.org", "mail.example.net", "worldpost.example"])
    email = f"{user}@{domain}"
    public_ip = f"{rng.choice([23, 45, 81, 93, 151, 185])}.{rng.randint(1, 254)}.{rng.randint(0, 254)}.{rng.randint(1, 254)}"
    private_ip = rng.choice([f"192.168.{rng.randint(0, 9)}.{rng.randint(2, 254)}",
                             f"10.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(2, 254)}"])
    phone = f"+{rng.randint(30, 49)} {rng.randint(100, 999)} {rng.randint(1000, 9999)} {rng.randint(100, 999)}"
    lines = [f"For questions about this page, write to {email} or call {phone}.",
             f"Our mirror server answers at {public_ip}; the office printer is at {private_ip}."]
    pii = [{"type": "email", "value": email, "public": True},
           {"type": "phone", "value": phone, "public": True},
           {"type": "ip", "value": public_ip, "public": True},
           {"type": "ip", "value": private_ip, "public": False}]
    return lines, pii


def _mutate(rng: random.Random, text: str, edits: int) -> str:
    """A near duplicate: a few words replaced or dropped, a sentence appended."""
    words = text.split(" ")
    for _ in range(edits):
        i = rng.randrange(len(words))
        if rng.random() < 0.5:
            words[i] = rng.choice(["really", "also", "still", "very", "often", "quite"])
        else:
            words.pop(i)
    return " ".join(words) + rng.choice(["", " Updated edition.", " (Mirror copy.)"])


def _gibberish(rng: random.Random) -> str:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789#@$%&*"
    return " ".join("".join(rng.choice(chars) for _ in range(rng.randint(2, 18)))
                    for _ in range(rng.randint(80, 300)))


def _spam(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(15, 40)):
        lines.append(" ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(3, 8))))
    return "\n".join(lines)


def _foreign(rng: random.Random, lang: str) -> str:
    paras = resources.files("labkit.world").joinpath(f"lang/{lang}.txt").read_text("utf-8").splitlines()
    paras = [p for p in paras if p.strip()]
    return "\n\n".join(rng.sample(paras, k=min(len(paras), rng.randint(2, 4))))


def _http_response(body: bytes, content_type: str) -> tuple[list[tuple[str, str]], bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Server", "nginx")]
    return headers, body


@dataclass
class CrawlPage:
    url: str
    body: bytes
    label: CrawlLabel


@dataclass
class Article:
    """One page's worth of clean documents: a web page holds several, as real ones do."""

    id: str
    title: str
    text: str
    genres: list[str]
    doc_ids: list[str]


def _strip_title(doc: Document) -> str:
    first, _, rest = doc.text.partition("\n")
    return rest.lstrip("\n") if first.strip() == doc.title else doc.text


def group_articles(rng: random.Random, docs: list[Document]) -> list[Article]:
    """Pack documents into pages of 2-4 (short single documents fail web-scale quality rules,
    which were tuned on pages of hundreds of words)."""
    articles, i = [], 0
    while i < len(docs):
        group = docs[i:i + rng.randint(2, 4)]
        i += len(group)
        parts = [_strip_title(group[0])]
        parts += [f"{d.title}\n\n{_strip_title(d)}" for d in group[1:]]
        articles.append(Article(f"page-{group[0].id}", group[0].title, "\n\n".join(parts),
                                [d.genre for d in group], [d.id for d in group]))
    return articles


def make_pages(rng: random.Random, docs: list[Document]) -> list[CrawlPage]:
    """Every page of the crawl, in crawl order, with its label."""
    pages: list[CrawlPage] = []
    originals: list[tuple[str, Article, str]] = []  # (url, article, html)

    def edu(article: Article) -> int:
        mean = sum(GENRE_EDU[g] for g in article.genres) / len(article.genres)
        return max(0, min(5, round(mean) + rng.choice([-1, 0, 0, 0, 1])))

    for doc in group_articles(rng, docs):
        site = rng.choice(SITES)
        url = f"https://{site}/{doc.id}"
        kind, pii, text = "clean", [], doc.text
        if rng.random() < 0.06:
            lines, pii = _pii_lines(rng)
            text = text + "\n\n" + "\n".join(lines)
            kind = "pii"
        page = wrap_html(rng, site, doc.title, _paragraphs(text))
        label = CrawlLabel(0, url, kind, True, doc.doc_ids[0], doc_ids=doc.doc_ids,
                           edu_score=edu(doc), pii=pii)
        if kind == "clean" and rng.random() < 0.03:
            label.kind, label.content_type = "latin1", "text/html"
            body = page.replace('charset="utf-8"', 'charset="windows-1252"').encode("cp1252", "replace")
        else:
            body = page.encode("utf-8")
        pages.append(CrawlPage(url, body, label))
        originals.append((url, doc, page))

    extra: list[CrawlPage] = []
    for url, doc, page in rng.sample(originals, k=len(originals) // 10):
        site = rng.choice(SITES)
        extra.append(CrawlPage(f"https://{site}/copy/{doc.id}", page.encode("utf-8"),
                               CrawlLabel(0, f"https://{site}/copy/{doc.id}", "exact_dup", False,
                                          doc.doc_ids[0], doc.doc_ids, duplicate_of=url)))
    for url, doc, _ in rng.sample([o for o in originals if len(o[1].text.split()) > 60],
                                  k=len(originals) // 10):
        site = rng.choice(SITES)
        mirror = f"https://mirror.{site}/{doc.id}"
        text = _mutate(rng, doc.text, edits=rng.randint(1, 4))
        body = wrap_html(rng, site, doc.title, _paragraphs(text)).encode("utf-8")
        extra.append(CrawlPage(mirror, body, CrawlLabel(0, mirror, "near_dup", False,
                                                        doc.doc_ids[0], doc.doc_ids,
                                                        duplicate_of=url)))
    n_junk = max(20, len(originals) // 25)
    for i in range(n_junk):
        site = rng.choice(SITES)
        cases = [
            ("spam", "Best cheap deals", _spam(rng), "en"),
            ("lorem", "Coming soon", "\n\n".join([LOREM] * rng.randint(2, 5)), "la"),
            ("gibberish", "Untitled", _gibberish(rng), "xx"),
            ("short", rng.choice(["Page not found", "Coming soon", "Login"]),
             rng.choice(["Sorry, this page does not exist.", "Under construction.", "Please log in."]), "en"),
        ]
        for kind, title, text, lang in cases:
            url = f"https://{site}/{kind}/{i}"
            body = wrap_html(rng, site, title, _paragraphs(text), comments=False).encode("utf-8")
            extra.append(CrawlPage(url, body, CrawlLabel(0, url, kind, False, language=lang)))
        lang = LANGUAGES[i % len(LANGUAGES)]
        url = f"https://{site}/{lang}/{i}"
        body = wrap_html(rng, site, {"fr": "Actualités", "de": "Nachrichten", "es": "Noticias",
                                     "it": "Notizie", "nl": "Nieuws", "pt": "Notícias"}[lang],
                         _paragraphs(_foreign(rng, lang)), lang=lang).encode("utf-8")
        extra.append(CrawlPage(url, body, CrawlLabel(0, url, "non_english", False, language=lang)))
        url = f"https://{site}/links/{i}"
        links = "\n".join(f"<li><a href='/p/{rng.randint(1, 999)}'>{rng.choice(SPAM_WORDS).title()} "
                          f"{rng.randint(1, 99)}</a></li>" for _ in range(rng.randint(20, 60)))
        body = wrap_html(rng, site, "Site map", f"<ul>{links}</ul>", comments=False).encode("utf-8")
        extra.append(CrawlPage(url, body, CrawlLabel(0, url, "boilerplate", False)))
        if i % 2 == 0:
            ctype, payload = rng.choice([
                ("application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"),
                ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(64))),
                ("application/json", b'{"status": "ok", "items": []}'),
                ("text/plain", b"User-agent: *\nDisallow: /private/\n"),
            ])
            url = f"https://{site}/files/{i}"
            extra.append(CrawlPage(url, payload, CrawlLabel(0, url, "non_html", False,
                                                            language="", content_type=ctype)))
    # Interleave the extra pages at random places, as a crawler meets them.
    for page in extra:
        pages.insert(rng.randrange(len(pages) + 1), page)
    # Duplicates must come after their originals for a streaming deduplicator to keep the original.
    position = {p.url: i for i, p in enumerate(pages)}
    pages.sort(key=lambda p: (position[p.label.duplicate_of] + 0.5) if p.label.duplicate_of
               else position[p.url])
    for i, page in enumerate(pages, start=1):
        page.label.record = i
    return pages


def write_warc(path, pages: list[CrawlPage], seed: int) -> None:
    """Write the pages as a gzipped WARC, byte-identical for the same pages and seed."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    rng = random.Random(seed)

    def record_id() -> str:
        return f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = writer.create_warcinfo_record("world-crawl.warc.gz", {
            "software": "labkit.world", "format": "WARC File Format 1.1",
            "description": "The embedded world's raw web crawl"})
        info.rec_headers.replace_header("WARC-Date", "2026-01-01T00:00:00Z")
        info.rec_headers.replace_header("WARC-Record-ID", record_id())
        writer.write_record(info)
        for i, page in enumerate(pages):
            headers, body = _http_response(page.body, page.label.content_type)
            http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
            rec = writer.create_warc_record(
                page.url, "response", payload=io.BytesIO(body), http_headers=http,
                warc_headers_dict={"WARC-Date": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                                   "WARC-Record-ID": record_id()})
            writer.write_record(rec)


def label_dicts(pages: list[CrawlPage]) -> list[dict]:
    return [asdict(p.label) for p in pages]
