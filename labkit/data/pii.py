"""PII removal: e-mail addresses and public IPv4 addresses replaced by placeholders.

Private, loopback and other reserved addresses (10.x, 192.168.x, 127.x, ...) identify nobody
and appear in documentation and tutorials, so only globally routable ones are replaced.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator

from labkit.validate import checks, keywords_of, text

from .document import Accounting, Document, _accounting, documents

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b")  # what email_spans finds
_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                  r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d]|\.\d)")


def _is_word(text: str, i: int) -> bool:
    """Whether text[i] is what `\\w` matches in a str pattern (alphanumeric or '_')."""
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] == "_")


def email_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each e-mail address, exactly where `EMAIL.finditer` finds them.

    EMAIL itself is quadratic on runs of address characters with no '@' ("a-a-a-...": at
    every word boundary it scans to the end of the run), so the search starts from each '@':
    the domain is matched just after it, the local part is the run of [\\w.+-] just before it
    (back to the previous match's end at most), from its first word boundary. A local part
    cannot hold an '@', so each character is looked at a bounded number of times.
    """
    spans: list[tuple[int, int]] = []
    end = 0
    at = text.find("@")
    while at != -1:
        domain = _DOMAIN.match(text, at + 1)
        if domain is not None:
            start = at
            while start > end and (_is_word(text, start - 1) or text[start - 1] in ".+-"):
                start -= 1
            while start < at and _is_word(text, start - 1) == _is_word(text, start):
                start += 1  # the match begins at a word boundary (EMAIL's leading \b)
            if start < at:
                spans.append((start, domain.end()))
                end = domain.end()
        at = text.find("@", at + 1)
    return spans


@checks(text=text, email_placeholder=text, ip_placeholder=text)
def scrub_pii(
    text: str, email_placeholder: str = "<EMAIL>", ip_placeholder: str = "<IP>"
) -> tuple[str, dict[str, int]]:
    """(text with e-mails and public IPv4 addresses replaced, counts of each replacement)."""
    spans = email_spans(text)
    pieces, last = [], 0
    for start, stop in spans:
        pieces += [text[last:start], email_placeholder]
        last = stop
    text, n_emails = "".join(pieces) + text[last:], len(spans)
    n_ips = 0

    def public_only(match: re.Match) -> str:
        nonlocal n_ips
        if ipaddress.ip_address(match.group()).is_global:
            n_ips += 1
            return ip_placeholder
        return match.group()

    text = IPV4.sub(public_only, text)
    return text, {"pii_emails": n_emails, "pii_ips": n_ips}


@checks(docs=documents, accounting=_accounting, placeholders=keywords_of(scrub_pii))
def pii_scrub(
    docs: Iterable[Document], accounting: Accounting, **placeholders
) -> Iterator[Document]:
    """Replace PII in every document (never drops); counts go to the metadata."""
    for doc in docs:
        text, counts = scrub_pii(doc.text, **placeholders)
        yield doc.updated(text=text, **counts)
