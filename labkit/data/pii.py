"""PII removal: e-mail addresses and public IPv4 addresses replaced by placeholders.

Private, loopback and other reserved addresses (10.x, 192.168.x, 127.x, ...) identify nobody
and appear in documentation and tutorials, so only globally routable ones are replaced.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator

from .document import Accounting, Document

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                  r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d]|\.\d)")


def scrub_pii(
    text: str, email_placeholder: str = "<EMAIL>", ip_placeholder: str = "<IP>"
) -> tuple[str, dict[str, int]]:
    """(text with e-mails and public IPv4 addresses replaced, counts of each replacement)."""
    text, n_emails = EMAIL.subn(email_placeholder, text)
    n_ips = 0

    def public_only(match: re.Match) -> str:
        nonlocal n_ips
        if ipaddress.ip_address(match.group()).is_global:
            n_ips += 1
            return ip_placeholder
        return match.group()

    text = IPV4.sub(public_only, text)
    return text, {"pii_emails": n_emails, "pii_ips": n_ips}


def pii_scrub(
    docs: Iterable[Document], accounting: Accounting, **placeholders
) -> Iterator[Document]:
    """Replace PII in every document (never drops); counts go to the metadata."""
    for doc in docs:
        text, counts = scrub_pii(doc.text, **placeholders)
        yield doc.updated(text=text, **counts)
