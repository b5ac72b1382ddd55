"""Reading a web crawl: WARC records in, HTML documents out, every skipped record explained.

Crawls are messy: request and metadata records sit between the responses, servers send PDFs
and images, charsets are missing or wrong, and files arrive truncated. The reader never raises
on bad input and never loses a record silently: each one is either yielded or recorded as a
drop with its reason.
"""

from __future__ import annotations

import gzip
import io
import itertools
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from charset_normalizer import from_bytes
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from labkit.errors import LabkitError

from .document import Accounting, Document

STEP = "read_warc"
HTML_TYPES = ("text/html", "application/xhtml+xml")
KEPT_RECORD_TYPES = ("response", "conversion")
COMMON_CRAWL_MAX_PAYLOAD = 1 << 20  # Common Crawl truncates payloads at 1 MiB
_CHARSET = re.compile(rb"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)


def decode_html(payload: bytes, declared: str | None = None) -> tuple[str, str] | None:
    """(text, encoding): strict UTF-8 first, then the declared charset, then detection."""
    for encoding in ("utf-8-sig", declared):
        if encoding:
            try:
                return payload.decode(encoding), encoding
            except (UnicodeDecodeError, LookupError):
                pass
    best = from_bytes(payload).best()
    return (str(best), best.encoding) if best is not None else None


def _gzip_damage(path: Path) -> tuple[int, str] | None:
    """(offset, reason) of the first truncated or corrupt gzip member, None if all are whole.

    warcio stops without a word at a truncated member, so the members are checked first.
    Output is thrown away as it is produced, so memory stays small even for huge pages.
    """
    start, pos, fed = 0, 0, False
    member = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 13):
            while chunk:
                fed = True
                try:
                    member.decompress(chunk)
                except zlib.error:
                    return start, "corrupt_gzip"
                if not member.eof:
                    pos += len(chunk)
                    break
                pos += len(chunk) - len(member.unused_data)
                chunk, start, fed = member.unused_data, pos, False
                member = zlib.decompressobj(wbits=31)
    return (start, "truncated_gzip") if fed else None


def _payload_document(record, doc_id: str, max_payload_bytes: int) -> Document | str:
    """The record as a Document, or the reason it is not one."""
    if record.rec_type not in KEPT_RECORD_TYPES:
        return f"record_type:{record.rec_type or 'missing'}"
    if record.rec_type == "response":
        http = record.http_headers  # warcio parses a missing header block as a bogus status line
        if http is None or not (http.protocol or "").upper().startswith("HTTP/"):
            return "no_http_headers"
        content_type = http.get_header("Content-Type") or ""
    else:
        content_type = record.rec_headers.get_header("Content-Type") or ""
    mime = content_type.split(";")[0].strip().lower()
    if mime not in HTML_TYPES:
        return f"non_html:{mime or 'missing'}"
    try:
        payload = record.content_stream().read(max_payload_bytes + 1)
    except Exception as exc:  # bad chunked or content encodings raise many kinds
        return f"bad_payload:{type(exc).__name__}"
    if len(payload) > max_payload_bytes:
        return "payload_too_large"
    if getattr(record.raw_stream, "limit", 0) > 0:  # block shorter than its Content-Length
        return "truncated_record"
    if not payload.strip():
        return "empty_payload"
    # The charset the server declared, else the one the page declares in a <meta> tag.
    declared = _CHARSET.search(content_type.encode("latin-1", "replace")) or _CHARSET.search(
        payload[:4096])
    decoded = decode_html(payload, declared.group(1).decode("ascii") if declared else None)
    if decoded is None:
        return "undecodable"
    text, encoding = decoded
    headers = record.rec_headers
    metadata = {
        "url": headers.get_header("WARC-Target-URI"),
        "warc_date": headers.get_header("WARC-Date"),
        "content_type": mime,
        "encoding": encoding,
    }
    # Ground-truth labels or other extras travel as X- headers of the record.
    metadata.update({k: v for k, v in headers.headers if k.lower().startswith("x-")})
    return Document(doc_id, text, metadata)


def _read_file(path: Path, accounting: Accounting, max_payload_bytes: int) -> Iterator[Document]:
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    damage = _gzip_damage(path) if is_gzip else None
    stop_at = damage[0] if damage else float("inf")
    with open(path, "rb") as f:
        archive = ArchiveIterator(f)
        records = iter(archive)
        for index in itertools.count(1):
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception as exc:  # warcio raises many kinds on malformed records
                # The reader cannot find the next record after a broken one: the rest is one drop.
                if not damage:
                    accounting.entered[STEP] += 1
                    accounting.drop(f"{path.name}#{index}", STEP, f"bad_record:{type(exc).__name__}")
                break
            # archive.offset is where this record starts (get_record_offset() would first read
            # the record to its end)
            if archive.offset >= stop_at:
                break
            accounting.entered[STEP] += 1
            doc_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path.name}#{index}"
            result = _payload_document(record, doc_id, max_payload_bytes)
            if isinstance(result, str):
                accounting.drop(doc_id, STEP, result)
            else:
                accounting.passed[STEP] += 1
                yield result
    if damage:
        accounting.entered[STEP] += 1
        accounting.drop(f"{path.name}@{damage[0]}", STEP, damage[1])


def read_warc(
    paths: str | Path | Iterable[str | Path],
    accounting: Accounting | None = None,
    max_payload_bytes: int = COMMON_CRAWL_MAX_PAYLOAD,
) -> Iterator[Document]:
    """HTML documents from one or more .warc(.gz) files; everything else is an accounted drop.

    Keeps `response` and `conversion` records whose content type is text/html or xhtml. The
    document id is the WARC-Record-ID; metadata holds url, date, content type, the encoding used
    and any X- headers of the record.
    """
    if max_payload_bytes < 1:
        raise LabkitError(f"max_payload_bytes={max_payload_bytes!r}; valid: a positive byte count")
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise LabkitError(f"WARC path {str(path)!r} is not a file; give a .warc or .warc.gz")
    accounting = accounting if accounting is not None else Accounting()
    accounting.register(STEP)
    return (doc for path in paths for doc in _read_file(path, accounting, max_payload_bytes))


def write_warc(path: str | Path, records: Iterable[dict], compress: bool = True) -> Path:
    """Write records to a WARC (one gzip member per record when compressed).

    A record is a dict: `url`, `body` (str or bytes), optional `content_type` (default
    "text/html; charset=utf-8"), `record_type` (default "response"; "conversion", "request",
    "resource", "metadata" also work) and `headers` (extra WARC headers, e.g. X- labels).
    A dict with only `raw` (bytes) is written verbatim, to craft malformed records in tests.
    """
    path = Path(path)
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=compress)
        for rec in records:
            if "raw" in rec:
                f.write(gzip.compress(rec["raw"]) if compress else rec["raw"])
                continue
            body = rec.get("body", b"")
            body = body.encode("utf-8") if isinstance(body, str) else body
            rtype = rec.get("record_type", "response")
            ctype = rec.get("content_type", "text/html; charset=utf-8")
            http = None
            if rtype == "response":
                http = StatusAndHeaders(
                    "200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                    protocol="HTTP/1.1",
                )
            elif rtype == "request":
                http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.org")],
                                        is_http_request=True)
            record = writer.create_warc_record(
                rec["url"], rtype, payload=io.BytesIO(body),
                warc_content_type="" if http else ctype,
                warc_headers_dict=dict(rec.get("headers", {})), http_headers=http,
            )
            writer.write_record(record)
    return path
