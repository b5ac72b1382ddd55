"""Reading WARCs: round trips, charsets, and bad input that must become accounted drops."""

from __future__ import annotations

import gzip
import os
import random
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.data import (
    Accounting,
    decode_html,
    extract,
    naive_strip_tags,
    read_warc,
    run_pipeline,
    write_warc,
)
from labkit.errors import LabkitError

PAGE = (
    "<html><head><title>Tides</title></head><body><nav>Home | About</nav>"
    "<article><p>Tide pools form where the sea retreats twice a day among the rocks.</p>"
    "<p>Anemones close their tentacles at low tide to keep water inside.</p></article>"
    "</body></html>"
)
FRENCH = "<html><body><p>Crème brûlée, déjà vu et naïveté à la française.</p></body></html>"
RUSSIAN = ("<html><body><p>Москва является столицей России и крупнейшим городом страны. "
           "В городе много музеев, театров и парков, которые посещают туристы со всего мира."
           "</p></body></html>")
NO_HTTP_HEADERS = (  # a response record whose block has no HTTP status line and headers
    b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://a.example/\r\n"
    b"Content-Type: application/http; msgtype=response\r\nContent-Length: 21\r\n\r\n"
    b"<html>no headers</h>\n\r\n\r\n"
)
NO_WARC_HEADERS = b"WARC/1.0\r\n\r\n\r\n\r\n"  # a record with no headers at all

# Record kinds a crawl contains, each with the reader's verdict: None = kept, else the reason.
KINDS = {
    "html": ({"url": "http://a.example/1", "body": PAGE}, None),
    "xhtml": ({"url": "http://a.example/2", "body": PAGE,
               "content_type": "application/xhtml+xml"}, None),
    "conversion": ({"url": "http://a.example/3", "body": PAGE, "record_type": "conversion",
                    "content_type": "text/html"}, None),
    "cp1252": ({"url": "http://a.example/4", "body": FRENCH.encode("cp1252"),
                "content_type": "text/html; charset=windows-1252"}, None),
    # mostly English with stray invalid bytes: strict UTF-8 fails, detection rescues the page
    "invalid_utf8": ({"url": "http://a.example/10", "content_type": "text/html",
                      "body": PAGE.encode().replace(b"twice", b"tw\xffice\xfe")}, None),
    "pdf": ({"url": "http://a.example/5.pdf", "body": b"%PDF-1.4 binary",
             "content_type": "application/pdf"}, "non_html:application/pdf"),
    "request": ({"url": "http://a.example/6", "record_type": "request"}, "record_type:request"),
    "metadata": ({"url": "http://a.example/7", "body": "fetchTimeMs: 12",
                  "record_type": "metadata", "content_type": "application/warc-fields"},
                 "record_type:metadata"),
    "empty": ({"url": "http://a.example/8", "body": b""}, "empty_payload"),
    "binary": ({"url": "http://a.example/9", "body": random.Random(0).randbytes(3000)},
               "undecodable"),
    "no_http_headers": ({"raw": NO_HTTP_HEADERS}, "no_http_headers"),
    "no_warc_headers": ({"raw": NO_WARC_HEADERS}, "record_type:missing"),
}


def _read(path, **kwargs):
    accounting = Accounting()
    docs = list(read_warc(path, accounting, **kwargs))
    return docs, accounting


def test_round_trip_keeps_text_ids_and_metadata(tmp_path):
    records = [{"url": f"http://site.example/{i}", "body": PAGE.replace("Tides", f"Tides {i}"),
                "headers": {"X-Labkit-Label": f"label-{i}"}} for i in range(3)]
    path = write_warc(tmp_path / "crawl.warc.gz", records)
    docs, accounting = _read(path)
    assert [d.text for d in docs] == [r["body"] for r in records]
    assert [d.metadata["url"] for d in docs] == [r["url"] for r in records]
    assert [d.metadata["X-Labkit-Label"] for d in docs] == ["label-0", "label-1", "label-2"]
    assert all(d.id.startswith("<urn:uuid:") for d in docs) and len({d.id for d in docs}) == 3
    assert docs[0].metadata["encoding"] == "utf-8-sig"
    assert accounting.table().iloc[0][["in", "kept", "dropped"]].tolist() == [3, 3, 0]


@pytest.mark.parametrize("compress", [True, False])
def test_every_record_kind_is_kept_or_dropped_with_its_reason(tmp_path, compress):
    path = write_warc(tmp_path / "mix.warc", [record for record, _ in KINDS.values()], compress)
    docs, accounting = _read(path)
    assert len(docs) == sum(reason is None for _, reason in KINDS.values())
    expected = sorted(reason for _, reason in KINDS.values() if reason)
    assert sorted(reason for _, _, reason in accounting.drops) == expected
    assert accounting.entered["read_warc"] == len(KINDS)
    rescued = next(d for d in docs if d.metadata["url"] == "http://a.example/10")
    assert rescued.metadata["encoding"] != "utf-8-sig" and "Anemones close" in rescued.text


def test_charset_fallback_decodes_declared_and_utf8_first(tmp_path):
    path = write_warc(tmp_path / "c.warc.gz", [
        KINDS["cp1252"][0],
        # declared latin-1 but really UTF-8: strict UTF-8 is tried first and wins
        {"url": "http://a.example/u", "body": FRENCH.encode(),
         "content_type": "text/html; charset=iso-8859-1"},
        # no charset from the server, but one in a <meta> tag
        {"url": "http://a.example/m", "content_type": "text/html",
         "body": FRENCH.replace("<html>", '<html><meta charset="cp1252">').encode("cp1252")},
        # no charset anywhere and not UTF-8: detection decides
        {"url": "http://a.example/d", "body": RUSSIAN.encode("cp1251"),
         "content_type": "text/html"},
    ])
    docs, _ = _read(path)
    encodings = [d.metadata["encoding"] for d in docs]
    # a <meta> cp1252 is the WHATWG label for windows-1252
    assert encodings == ["windows-1252", "utf-8-sig", "windows-1252", "cp1251"]
    assert all("Crème brûlée, déjà vu" in d.text for d in docs[:3])
    assert docs[3].text == RUSSIAN


def test_truncated_gzip_keeps_whole_records_and_counts_the_cut_one(tmp_path):
    records = [{"url": f"http://a.example/{i}", "body": PAGE * 20} for i in range(5)]
    path = write_warc(tmp_path / "t.warc.gz", records)
    data = path.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 40):
        path.write_bytes(data[:cut])
        docs, accounting = _read(path)
        assert [reason for *_, reason in accounting.drops] == ["truncated_gzip"]
        assert accounting.entered["read_warc"] == len(docs) + 1
        assert all(d.text == PAGE * 20 for d in docs)


def test_truncated_uncompressed_record_is_dropped(tmp_path):
    path = write_warc(tmp_path / "t.warc", [{"url": "http://a.example/", "body": PAGE * 20}],
                      compress=False)
    path.write_bytes(path.read_bytes()[:-500])
    docs, accounting = _read(path)
    assert docs == [] and [r for *_, r in accounting.drops] == ["truncated_record"]


def test_random_bytes_and_corrupt_members_are_drops_not_crashes(tmp_path):
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(random.Random(1).randbytes(5000))
    with pytest.raises(LabkitError, match="not a WARC file"):
        _read(junk)

    path = write_warc(tmp_path / "c.warc.gz", [{"url": "http://a.example/", "body": PAGE}] * 2)
    path.write_bytes(path.read_bytes() + b"trailing bytes that are not gzip")
    docs, accounting = _read(path)
    assert len(docs) == 2 and [r for *_, r in accounting.drops] == ["corrupt_gzip"]


def test_a_10_mb_single_line_page_is_dropped_as_too_large(tmp_path):
    big = "<html><body><p>" + "word " * 2_000_000 + "</p></body></html>"
    path = write_warc(tmp_path / "big.warc.gz", [{"url": "http://a.example/big", "body": big},
                                                 KINDS["html"][0]])
    docs, accounting = _read(path)
    assert len(docs) == 1 and [r for *_, r in accounting.drops] == ["payload_too_large"]
    docs, _ = _read(path, max_payload_bytes=20 << 20)
    assert len(docs[0].text) == len(big)
    assert len(naive_strip_tags(docs[0].text)) == len("word " * 2_000_000) - 1


def test_empty_file_and_bad_arguments(tmp_path):
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    docs, accounting = _read(empty)
    assert docs == [] and accounting.drops == []
    with pytest.raises(LabkitError, match="not a file"):
        read_warc(tmp_path / "missing.warc.gz")
    with pytest.raises(LabkitError, match="max_payload_bytes"):
        read_warc(empty, max_payload_bytes=0)


def _record_bytes(tmp: Path, record: dict) -> bytes:
    """One record as write_warc writes it, uncompressed."""
    return write_warc(tmp / "one.warc", [record], compress=False).read_bytes()


def _with_content_length(raw: bytes, delta: int) -> bytes:
    header, sep, rest = raw.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length: *(\d+)", header)
    new = str(max(0, int(found.group(1)) + delta)).encode()
    return header[:found.start(1)] + new + header[found.end(1):] + sep + rest


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(sorted(KINDS)), max_size=12),
    compress=st.booleans(),
    damage=st.sampled_from(["none", "truncate", "garbage", "length", "corrupt_member"]),
    cut=st.floats(0.0, 1.0),
    delta=st.sampled_from([-7, -1, 1, 30, 5000]),
)
def test_property_nothing_vanishes_from_the_accounting(kinds, compress, damage, cut, delta):
    with tempfile.TemporaryDirectory() as tmp:
        raws = [_record_bytes(Path(tmp), KINDS[k][0]) for k in kinds]
        damaged = None  # the one record whose damage must cost that record only
        with_length = [i for i, raw in enumerate(raws) if b"Content-Length" in raw]
        if damage == "length" and with_length:
            damaged = with_length[int(cut * (len(with_length) - 1))]
            raws[damaged] = _with_content_length(raws[damaged], delta)
        members = [gzip.compress(raw) for raw in raws] if compress else raws
        if damage == "corrupt_member" and compress and members:
            damaged = int(cut * (len(members) - 1))
            middle = len(members[damaged]) // 2
            members[damaged] = (members[damaged][:middle] + bytes([members[damaged][middle] ^ 0xFF])
                                + members[damaged][middle + 1:])
        data = b"".join(members)
        if damage == "truncate":
            data = data[: int(len(data) * cut)]
        elif damage == "garbage":
            data += os.urandom(200)
        path = Path(tmp) / "p.warc"
        path.write_bytes(data)
        accounting = Accounting()
        if damage == "garbage" and not kinds:
            with pytest.raises(LabkitError, match="not a WARC file"):
                read_warc(path, accounting)
            return
        kept, table = run_pipeline([extract], read_warc(path, accounting), accounting)
    # run_pipeline asserts in == kept + dropped per step; check it again, and the totals.
    assert (table["in"] == table["kept"] + table["dropped"]).all()
    assert table["kept"].iloc[-1] == len(kept)
    if damage == "none" or damaged is not None:
        # every record is read, whatever comes before it; only the damaged one may go
        assert table["in"].iloc[0] == len(kinds)
        expected = [KINDS[k][1] is None for k in kinds]
        if damaged is not None and (damage == "corrupt_member" or delta):
            expected[damaged] = False
        assert table["kept"].iloc[0] == sum(expected)


# ---------------------------------------------------- crafted inputs: charsets and framing
GERMAN = ("<html><body><p>Grüße aus München: für Sie ein Café, naïve Ideen, déjà vu und "
          "Straßenbahn.</p></body></html>")
SMART = "<html><body><p>“Quotes” – a dash, 5 € and an ellipsis…</p></body></html>"


def _stray(body: str) -> bytes:
    """Valid UTF-8 but for three stray bytes (a lone lead byte, a lone continuation, 0xff)."""
    raw = body.encode()
    return raw.replace(b"aus", b"a\xc3us").replace(b"Ideen", b"Id\x80een").replace(b"und",
                                                                               b"u\xffnd")


def _page(url: str, body, **extra) -> dict:
    return {"url": f"http://crafted.example/{url}", "body": body, **extra}


def _framed(tmp: Path, name: str, middle: bytes, compress: bool) -> Path:
    """good page, `middle` (raw record bytes), good page: one file."""
    raws = [_record_bytes(tmp, _page("before", PAGE)), middle, _record_bytes(tmp, _page("after",
                                                                                      PAGE))]
    data = b"".join(gzip.compress(r) for r in raws) if compress else b"".join(raws)
    path = tmp / f"{name}.warc{'.gz' if compress else ''}"
    path.write_bytes(data)
    return path


def _corrupt_member(tmp: Path) -> Path:
    members = [gzip.compress(_record_bytes(tmp, _page(u, PAGE))) for u in ("before", "x", "after")]
    bad = bytearray(members[1])
    bad[len(bad) // 2] ^= 0xFF
    path = tmp / "corrupt_member.warc.gz"
    path.write_bytes(members[0] + bytes(bad) + members[2])
    return path


# name -> (build(tmp) -> WARC path, expected): expected is ("kept", text it holds, encoding,
# replacements) for the crafted page, or ("dropped", reason) with the pages around it kept.
CRAFTED = {
    "utf8_3_stray_bytes_undeclared": (
        lambda t: write_warc(t / "a.warc.gz", [_page("x", _stray(GERMAN),
                                                     content_type="text/html")]),
        ("kept", "für Sie ein Café, naïve", "utf-8-sig", 3)),
    "utf8_3_stray_bytes_declared_utf8": (
        lambda t: write_warc(t / "b.warc.gz", [_page("x", _stray(GERMAN))]),
        ("kept", "Grüße", "utf-8-sig", 3)),
    **{f"declared_{label}_cp1252_bytes": (
        lambda t, label=label: write_warc(t / "c.warc.gz", [_page(
            "x", SMART.encode("cp1252"), content_type=f"text/html; charset={label}")]),
        ("kept", "“Quotes” – a dash, 5 € and an ellipsis…", "windows-1252", 0))
       for label in ("iso-8859-1", "latin1", "ascii", "us-ascii")},
    "declared_unknown_label_cp1251": (
        lambda t: write_warc(t / "d.warc.gz", [_page("x", RUSSIAN.encode("cp1251"),
                                                     content_type="text/html; charset=x-nope")]),
        ("kept", "Москва является столицей", "cp1251", 0)),
    **{f"content_length_{how}_{kind}": (
        lambda t, how=how, kind=kind: _framed(
            t, f"cl_{how}", _with_content_length(_record_bytes(t, _page("x", PAGE)),
                                                 -40 if how == "too_small" else 40),
            compress=kind == "gz"),
        ("dropped", f"content_length_{how}"))
       for how in ("too_small", "too_large") for kind in ("plain", "gz")},
    "corrupt_gzip_member": (_corrupt_member, ("dropped", "corrupt_gzip")),
    "content_encoding_br": (
        lambda t: write_warc(t / "e.warc.gz", [_page("x", b"\x1b\x0f\x00\xf8\xa5@\x02",
                                                     http_headers={"Content-Encoding": "br"})]),
        ("dropped", "unsupported_content_encoding:br")),
    "content_encoding_gzip": (
        lambda t: write_warc(t / "f.warc.gz", [_page("x", gzip.compress(PAGE.encode()),
                                                     http_headers={"Content-Encoding": "gzip"})]),
        ("kept", "Tide pools form", "utf-8-sig", 0)),
    **{f"http_{code.split()[0]}": (
        lambda t, code=code: write_warc(t / "g.warc.gz", [_page("x", PAGE, status=code)]),
        ("dropped", f"http_status:{code.split()[0]}"))
       for code in ("404 Not Found", "503 Service Unavailable")},
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_input(tmp_path, name):
    build, expected = CRAFTED[name]
    docs, accounting = _read(build(tmp_path))
    assert accounting.entered["read_warc"] == len(docs) + len(accounting.drops)
    crafted = [d for d in docs if d.metadata["url"].endswith("/x")]
    if expected[0] == "kept":
        _, text, encoding, replacements = expected
        assert len(crafted) == 1 and text in crafted[0].text
        assert (crafted[0].metadata["encoding"], crafted[0].metadata["replacements"]) == (
            encoding, replacements)
        assert accounting.drops == []
    else:
        assert crafted == [] and [r for *_, r in accounting.drops] == [expected[1]]
    around = sorted(d.metadata["url"].rsplit("/", 1)[1] for d in docs if d not in crafted)
    assert around in ([], ["after", "before"])
    if name.startswith(("content_length", "corrupt")):
        assert around == ["after", "before"]  # reading resumed after the damaged record


def test_an_html_file_is_not_a_warc(tmp_path):
    page = tmp_path / "page.warc"
    page.write_text(PAGE)
    with pytest.raises(LabkitError, match="not a WARC file"):
        read_warc(page)
    page.write_bytes(gzip.compress(PAGE.encode()))
    with pytest.raises(LabkitError, match="not a WARC file"):
        read_warc(page)


def test_mostly_utf8_is_never_reguessed_whole():
    # a page in a legacy charset has nearly every non-ASCII byte invalid as UTF-8: detection
    legacy = GERMAN.encode("cp1252")
    decoded = decode_html(legacy)
    assert decoded.encoding != "utf-8-sig" and "für Sie ein Café" in decoded.text
    # the same page as UTF-8 with one stray byte stays UTF-8, the byte replaced and counted
    for stray in (b"\xff", b"\x80", b"\xc3", b"\xe2\x82"):
        decoded = decode_html(GERMAN.encode().replace(b"Ideen", b"Id" + stray + b"een"))
        assert decoded == (GERMAN.replace("Ideen", "Id\ufffdeen"), "utf-8-sig", 1)
    # a page that only declares UTF-8 but is random bytes is still undecodable
    assert decode_html(random.Random(0).randbytes(3000), "utf-8") is None
