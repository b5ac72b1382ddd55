"""Reading a web crawl: WARC records in, HTML documents out, every skipped record explained.

Crawls are messy: request and metadata records sit between the responses, servers send PDFs
and images, charsets are missing or wrong, and files arrive truncated. The reader never raises
on bad input and never loses a record silently: each one is either yielded or recorded as a
drop with its reason. The reader frames the records itself (each gzip member inflated on its
own, each Content-Length checked against the record separator that must follow) and hands warcio
one record at a time, so a broken record or member costs that record only: reading resumes at
the next one.
"""

from __future__ import annotations

import codecs
import gzip
import io
import mmap
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from charset_normalizer import from_bytes
from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import BufferedReader
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from labkit.errors import LabkitError
from labkit.validate import checks, maybe, of_type, positive_int, stream

from .document import Accounting, Document, _accounting

STEP = "read_warc"
HTML_TYPES = ("text/html", "application/xhtml+xml")
KEPT_RECORD_TYPES = ("response", "conversion")
COMMON_CRAWL_MAX_PAYLOAD = 1 << 20  # Common Crawl truncates payloads at 1 MiB
_CHARSET = re.compile(rb"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)


# WHATWG Encoding Standard: the labels browsers decode with a superset codec. Latin-1 and ASCII
# pages are decoded as windows-1252 (curly quotes, dashes, euro sign in 0x80-0x9F), and so on.
WHATWG_LABELS = {
    **dict.fromkeys(("ansi_x3.4-1968", "ascii", "cp1252", "cp819", "csisolatin1", "ibm819",
                     "iso-8859-1", "iso-ir-100", "iso8859-1", "iso88591", "iso_8859-1",
                     "iso_8859-1:1987", "l1", "latin1", "us-ascii", "windows-1252",
                     "x-cp1252"), "windows-1252"),
    **dict.fromkeys(("cp1254", "csisolatin5", "iso-8859-9", "iso-ir-148", "iso8859-9",
                     "iso88599", "iso_8859-9", "iso_8859-9:1989", "l5", "latin5",
                     "windows-1254", "x-cp1254"), "windows-1254"),
    **dict.fromkeys(("dos-874", "iso-8859-11", "iso8859-11", "iso885911", "tis-620",
                     "windows-874"), "cp874"),
    **dict.fromkeys(("chinese", "csgb2312", "csiso58gb231280", "gb2312", "gb_2312",
                     "gb_2312-80", "gbk", "iso-ir-58", "x-gbk"), "gbk"),
    **dict.fromkeys(("cseuckr", "csksc56011987", "euc-kr", "iso-ir-149", "korean",
                     "ks_c_5601-1987", "ks_c_5601-1989", "ksc5601", "ksc_5601",
                     "windows-949"), "cp949"),
}
MAX_STRAY_SEQUENCES = 8  # invalid sequences a UTF-8 page may have and stay UTF-8 (more if long)
_LITERAL_FFFD = "\ufffd".encode()


class Decoded(NamedTuple):
    text: str
    encoding: str
    replacements: int  # U+FFFD put in for invalid byte sequences


def codec_for(label: str | None, from_meta: bool = False) -> str | None:
    """The Python codec for a declared charset label (WHATWG mapping), None if unusable."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if from_meta and label.startswith("utf-16"):
        return "utf-8"  # WHATWG: a <meta> can only be read if the bytes are ASCII-compatible
    name = WHATWG_LABELS.get(label, label)
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        return None
    return "utf-8" if canonical in ("utf-8", "utf-8-sig") else name


def _replacing(payload: bytes, codec: str) -> Decoded:
    text = payload.decode(codec, errors="replace")
    literal = payload.count(_LITERAL_FFFD) if codec.startswith("utf-8") else 0
    return Decoded(text, codec, text.count("\ufffd") - literal)


def _few_stray_bytes(decoded: Decoded, declared_utf8: bool) -> bool:
    """Valid UTF-8 but for a few bytes: a handful of invalid sequences (more on a long page), and,
    without a declaration, more valid multi-byte characters than invalid sequences (a legacy
    page, read as UTF-8, has nearly every non-ASCII byte invalid)."""
    valid = sum(ord(c) > 127 for c in decoded.text) - decoded.replacements
    allowed = max(MAX_STRAY_SEQUENCES, valid // 10)
    return decoded.replacements <= allowed and (declared_utf8 or valid > decoded.replacements)


@checks(payload=of_type(bytes), declared=maybe(of_type(str)))
def decode_html(payload: bytes, declared: str | None = None,
                from_meta: bool = False) -> Decoded | None:
    """(text, encoding, replacements) of a page, or None if no charset fits.

    Valid UTF-8 is UTF-8 whatever the declaration says. A declared charset is decoded as
    browsers do (WHATWG labels: iso-8859-1, latin1 and ascii mean windows-1252), invalid bytes
    replaced by U+FFFD and counted. A page declared UTF-8, or with no usable declaration, that is
    valid UTF-8 but for a few bytes stays UTF-8 with those bytes replaced: a detector would
    re-guess the whole page in a legacy charset and garble every accented letter. Detection
    (charset_normalizer) is only for the rest of the pages with no usable declaration.
    """
    try:
        return Decoded(payload.decode("utf-8-sig"), "utf-8-sig", 0)
    except UnicodeDecodeError:
        pass
    codec = codec_for(declared, from_meta)
    if codec is not None and codec != "utf-8":
        decoded = _replacing(payload, codec)
        if decoded.replacements <= max(MAX_STRAY_SEQUENCES, len(payload) // 1000):
            return decoded
        codec = None  # the declaration does not fit these bytes
    utf8 = _replacing(payload, "utf-8-sig")
    if _few_stray_bytes(utf8, declared_utf8=codec == "utf-8"):
        return utf8
    best = from_bytes(payload).best()
    return Decoded(str(best), best.encoding, 0) if best is not None else None


def _payload_document(record, doc_id: str, max_payload_bytes: int) -> Document | str:
    """The record as a Document, or the reason it is not one."""
    if record.rec_type not in KEPT_RECORD_TYPES:
        return f"record_type:{record.rec_type or 'missing'}"
    if record.rec_type == "response":
        http = record.http_headers  # warcio parses a missing header block as a bogus status line
        if http is None or not (http.protocol or "").upper().startswith("HTTP/"):
            return "no_http_headers"
        status = http.get_statuscode() or ""
        if status[:1] in ("4", "5"):  # an error page, not the page the URL names
            return f"http_status:{status}"
        encoding = (http.get_header("Content-Encoding") or "").strip().lower()
        if encoding not in ("", "identity", *BufferedReader.get_supported_decompressors()):
            # warcio would hand over the compressed bytes as they are (br without brotli)
            return f"unsupported_content_encoding:{encoding}"
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
    from_server = _CHARSET.search(content_type.encode("latin-1", "replace"))
    declared = from_server or _CHARSET.search(payload[:4096])
    decoded = decode_html(payload, declared.group(1).decode("ascii") if declared else None,
                          from_meta=declared is not None and from_server is None)
    if decoded is None:
        return "undecodable"
    headers = record.rec_headers
    metadata = {
        "url": headers.get_header("WARC-Target-URI"),
        "warc_date": headers.get_header("WARC-Date"),
        "content_type": mime,
        "encoding": decoded.encoding,
        "replacements": decoded.replacements,
    }
    # Ground-truth labels or other extras travel as X- headers of the record.
    metadata.update({k: v for k, v in headers.headers if k.lower().startswith("x-")})
    return Document(doc_id, decoded.text, metadata)


_NEXT_RECORD = re.compile(rb"\r\n\r\n(?=WARC/1\.[01]\r\n)")  # a record separator, then a record
_BLANK_LINES = re.compile(rb"[\r\n]*")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.M)
_RECORD_ID = re.compile(rb"^warc-record-id:[ \t]*(\S+)", re.IGNORECASE | re.M)
_GZIP_MEMBER = b"\x1f\x8b\x08"
_CHUNK = 1 << 16
_IN_MEMORY = 16 << 20  # a gzip member inflating to more goes to a temporary file


class _Segment(NamedTuple):
    """One record's bytes as the framing found them, or the reason there is no record."""

    offset: int  # in the file (of the gzip member, in a .warc.gz)
    data: bytes | None
    reason: str | None = None
    record_id: str | None = None


def _record_id(header: bytes) -> str | None:
    found = _RECORD_ID.search(header)
    return found.group(1).decode("latin-1") if found else None


def _next_line_at(buf, pos: int) -> int:
    """Where the next non-blank line starts (records may be followed by extra blank lines)."""
    return _BLANK_LINES.match(buf, pos).end()


def _plain_segments(buf, base: int, complete: bool, cap: int) -> Iterator[_Segment]:
    """The records of uncompressed WARC bytes, each framed by its Content-Length and checked.

    warcio trusts Content-Length: too small and it keeps the cut page (the rest of the block is
    skipped with a warning), too large and it glues the next record's header onto this page.
    Here a block must end in the record separator followed by the next `WARC/1.x` line (or the
    end); if it does not, the record is a drop and reading resumes at the next such line.
    `complete`: buf is a whole gzip member, which cannot run on past its end, not a file that
    may have been cut. A segment holds at most `cap` bytes (enough for headers and a payload
    over the limit).
    """
    size = len(buf)
    pos = _next_line_at(buf, 0)
    while pos < size:
        if buf[pos:pos + 5] != b"WARC/":
            yield _Segment(base + pos, None, "not_a_warc_record")
            nxt = _NEXT_RECORD.search(buf, pos)
            if nxt is None:
                return
            pos = nxt.end()
            continue
        header_end = buf.find(b"\r\n\r\n", pos)
        if header_end == -1:
            yield _Segment(base + pos, None, "truncated_record")
            return
        header = bytes(buf[pos:header_end])
        rid, length, block = _record_id(header), _CONTENT_LENGTH.search(header), header_end + 4
        if length is None:  # nothing to check it against: the record runs to the next one
            nxt = _NEXT_RECORD.search(buf, header_end)
            stop = nxt.end() if nxt else size
            yield _Segment(base + pos, bytes(buf[pos:min(stop, pos + cap)]), record_id=rid)
            pos = stop
            continue
        end = block + int(length.group(1))
        after = _next_line_at(buf, end + 4) if end + 4 <= size else size + 1
        if buf[end:end + 4] == b"\r\n\r\n" and (after == size or buf[after:after + 5] == b"WARC/"):
            yield _Segment(base + pos, bytes(buf[pos:min(end + 4, pos + cap)]), record_id=rid)
            pos = after
            continue
        nxt = _NEXT_RECORD.search(buf, block)
        real_end = nxt.start() if nxt else size - 4 * (buf[size - 4:] == b"\r\n\r\n")
        if end > size and nxt is None and not complete:
            reason = "truncated_record"  # the file stops inside the block
        elif real_end < end:
            reason = "content_length_too_large"
        else:
            reason = "content_length_too_small"
        yield _Segment(base + pos, None, reason, rid)
        if nxt is None:
            return
        pos = nxt.end()


def _starts_a_record(buf, pos: int) -> bool:
    """Whether a gzip member that inflates to a WARC record starts at `pos`."""
    try:
        return zlib.decompressobj(wbits=31).decompress(buf[pos:pos + 4096], 5) == b"WARC/"
    except zlib.error:
        return False


def _inflate(buf, pos: int, spill) -> int | str:
    """Inflate the gzip member at `pos` into the file `spill`: its end offset, or why not."""
    member = zlib.decompressobj(wbits=31)
    at, pending = pos, b""
    try:
        while not member.eof:
            if not pending:
                if at >= len(buf):
                    spill.write(member.flush())  # output zlib still held back
                    if member.eof:
                        break
                    return "truncated_gzip"
                pending = buf[at:at + _CHUNK]
                at += len(pending)
            spill.write(member.decompress(pending, _CHUNK))  # bounded output: no zip bomb
            pending = member.unconsumed_tail
    except zlib.error:
        return "corrupt_gzip"
    return at - len(member.unused_data)  # the last input ended at `at`


def _gzip_segments(buf, cap: int) -> Iterator[_Segment]:
    """The records of a .warc.gz, member by member (usually one record each, but a crawl
    gzipped whole is one member). A corrupt member is one drop, and reading resumes at the
    next member that inflates to a record (found by its header bytes 1f 8b 08)."""
    pos = 0
    while _BLANK_LINES.match(buf, pos).end() < len(buf):
        with tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY) as spill:
            end = _inflate(buf, pos, spill)
            if isinstance(end, str):
                yield _Segment(pos, None, end)
                nxt = buf.find(_GZIP_MEMBER, pos + 1)
                while nxt != -1 and not _starts_a_record(buf, nxt):
                    nxt = buf.find(_GZIP_MEMBER, nxt + 1)
                if end == "truncated_gzip" or nxt == -1:
                    return
                pos = nxt
                continue
            if spill.tell() < _IN_MEMORY:
                spill.seek(0)
                data = spill.read()
            else:
                spill.flush()
                data = mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                for segment in _plain_segments(data, pos, complete=True, cap=cap):
                    yield segment._replace(offset=pos)
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()
        pos = end


def _segments(path: Path, cap: int) -> Iterator[_Segment]:
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:2] == b"\x1f\x8b":
            yield from _gzip_segments(buf, cap)
        else:
            yield from _plain_segments(buf, 0, complete=False, cap=cap)


def _parse(segment: _Segment):
    """warcio's record for one framed segment."""
    return next(iter(ArchiveIterator(io.BytesIO(segment.data))))


def _read_file(path: Path, accounting: Accounting, max_payload_bytes: int) -> Iterator[Document]:
    # A segment longer than this cannot hold a payload under the limit (headers are small).
    cap = max_payload_bytes + (1 << 20)
    for index, segment in enumerate(_segments(path, cap), 1):
        accounting.entered[STEP] += 1
        where = segment.record_id or f"{path.name}@{segment.offset}"
        if segment.reason is not None:
            accounting.drop(where, STEP, segment.reason)
            continue
        try:
            record = _parse(segment)
        except Exception as exc:  # warcio raises many kinds on malformed records
            accounting.drop(where, STEP, f"bad_record:{type(exc).__name__}")
            continue
        doc_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path.name}#{index}"
        result = _payload_document(record, doc_id, max_payload_bytes)
        if isinstance(result, str):
            accounting.drop(doc_id, STEP, result)
        else:
            accounting.passed[STEP] += 1
            yield result


class _Discard:
    def write(self, data: bytes) -> None:
        pass


def _first_member_whole(path: Path) -> bool:
    """Whether the first gzip member of a file inflates without error (its CRC checks out)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return isinstance(_inflate(buf, 0, _Discard()), int)


def _warc_paths(value, name: str) -> list[Path]:
    """Existing files that begin like a WARC (b"WARC/", plain or gzipped): another file would
    read as an empty crawl. An empty or damaged gzip file passes: its damage is an accounted drop."""
    if isinstance(value, (str, Path)):
        value = [value]
    if isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
        raise LabkitError(f"{name} must be a .warc(.gz) path or a list of them, got {type(value).__name__}")
    paths = [Path(p) if isinstance(p, (str, Path)) else p for p in value]
    if not paths:
        raise LabkitError(f"{name} is empty; valid: one or more .warc or .warc.gz files")
    for path in paths:
        if not isinstance(path, Path) or not path.is_file():
            raise LabkitError(f"{name}: {str(path)!r} is not a file; give a .warc or .warc.gz")
        with open(path, "rb") as f:
            head = f.read(512)
        if head[:2] == b"\x1f\x8b":
            try:
                head = zlib.decompressobj(wbits=31).decompress(head, 5)
            except zlib.error:
                continue
            if not head.startswith(b"WARC/") and not _first_member_whole(path):
                continue  # a corrupt first record, not another kind of file
        if head and not head.startswith(b"WARC/") and not b"WARC/".startswith(head):  # cut short
            raise LabkitError(f"{name}: {str(path)!r} is not a WARC file (it does not start with "
                              "'WARC/'); give a .warc or .warc.gz")
    return paths


def _records(value, name: str):
    for i, rec in enumerate(stream(value, name, of=dict, what="record dicts")):
        if "raw" not in rec and "url" not in rec:
            raise LabkitError(f"{name}[{i}] has no 'url' (or 'raw' bytes); keys: {sorted(rec)}")
        yield rec


def _writable(value, name: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise LabkitError(f"{name} must be a file path, got {value!r}")
    if not Path(value).expanduser().parent.is_dir():
        raise LabkitError(f"{name} {str(value)!r}: the directory {str(Path(value).parent)!r} does not exist")
    return Path(value).expanduser()


@checks(paths=_warc_paths, accounting=maybe(_accounting), max_payload_bytes=positive_int)
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


@checks(path=_writable, records=_records)
def write_warc(path: str | Path, records: Iterable[dict], compress: bool = True) -> Path:
    """Write records to a WARC (one gzip member per record when compressed).

    A record is a dict: `url`, `body` (str or bytes), optional `content_type` (default
    "text/html; charset=utf-8"), `record_type` (default "response"; "conversion", "request",
    "resource", "metadata" also work), `headers` (extra WARC headers, e.g. X- labels) and, for
    a response, `status` (default "200 OK") and `http_headers` (extra HTTP headers, e.g.
    Content-Encoding: the body is written as given).
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
                    rec.get("status", "200 OK"),
                    [("Content-Type", ctype), ("Content-Length", str(len(body))),
                     *dict(rec.get("http_headers", {})).items()],
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
