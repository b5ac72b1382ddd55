"""Reading WARCs: round trips, charsets, and bad input that must become accounted drops."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.data import Accounting, extract, naive_strip_tags, read_warc, run_pipeline, write_warc
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
    assert encodings == ["windows-1252", "utf-8-sig", "cp1252", "cp1251"]
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
    docs, accounting = _read(junk)
    assert docs == [] and [r for *_, r in accounting.drops] == ["bad_record:ArchiveLoadFailed"]

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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(sorted(KINDS)), max_size=12),
    compress=st.booleans(),
    damage=st.sampled_from(["none", "truncate", "garbage"]),
    cut=st.floats(0.0, 1.0),
)
def test_property_nothing_vanishes_from_the_accounting(kinds, compress, damage, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_warc(Path(tmp) / "p.warc", [KINDS[k][0] for k in kinds], compress)
        data = path.read_bytes()
        if damage == "truncate":
            data = data[: int(len(data) * cut)]
        elif damage == "garbage":
            data += os.urandom(200)
        path.write_bytes(data)
        accounting = Accounting()
        kept, table = run_pipeline([extract], read_warc(path, accounting), accounting)
    # run_pipeline asserts in == kept + dropped per step; check it again, and the totals.
    assert (table["in"] == table["kept"] + table["dropped"]).all()
    assert table["kept"].iloc[-1] == len(kept)
    if damage == "none":
        if not compress and "no_warc_headers" in kinds:
            # Without a Content-Length an uncompressed record runs to the end of the file.
            kinds = kinds[: kinds.index("no_warc_headers") + 1]
        assert table["in"].iloc[0] == len(kinds)
        assert table["kept"].iloc[0] == sum(KINDS[k][1] is None for k in kinds)
