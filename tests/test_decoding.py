"""Bytes to text: MSH-18, defaults, mislabelled UTF-8, BOM and segment separators."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge import logthrottle
from bridge.decoding import DecodeError, UnknownCharset, decode, lookup_charset, peek_control_id

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "hl7"
FIXTURES = Path(__file__).parent / "fixtures" / "hl7"


def msh(msh18: str, body: str = "PID|||1||Müller^Jörg") -> str:
    return f"MSH|^~\\&|RIS|H|BR|H|20240101||ORM^O01|1|P|2.3.1||||||{msh18}\r{body}"


def test_latin1_declared_and_used() -> None:
    d = decode(msh("8859/1").encode("latin-1"))
    assert "Müller^Jörg" in d.text
    assert (d.charset.codec, d.charset.dicom, d.sniffed_utf8) == ("latin-1", "ISO_IR 100", False)


def test_utf8_declared_in_its_three_spellings() -> None:
    for term in ("UNICODE UTF-8", "UTF-8", "UNICODE"):
        d = decode(msh(term).encode("utf-8"))
        assert "Müller^Jörg" in d.text and d.charset.dicom == "ISO_IR 192"


def test_empty_or_blank_msh18_uses_the_configured_default() -> None:
    assert decode(msh("").encode("latin-1")).charset.codec == "latin-1"
    blank = decode(msh(" ").encode("iso8859-2"), default_charset="8859/2")
    assert blank.charset.dicom == "ISO_IR 101"


def test_utf8_bytes_under_a_latin1_label_are_read_as_utf8() -> None:
    d = decode(msh("8859/1").encode("utf-8"))
    assert "Müller^Jörg" in d.text and d.sniffed_utf8 and d.charset.dicom == "ISO_IR 192"
    # ...unless the site turns detection off: then the label wins (mojibake, as sent).
    d = decode(msh("8859/1").encode("utf-8"), detect_utf8=False)
    assert "MÃ¼ller" in d.text


def test_the_mislabelled_utf8_warning_is_logged_once_then_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    # A sender mislabels every message: one line per interval and label, not one per message.
    logthrottle.flush_all(all_windows=True)  # no window left open by another test
    caplog.set_level(logging.WARNING, logger="bridge.decoding")
    for _ in range(3):
        assert decode(msh("8859/1").encode("utf-8")).sniffed_utf8
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.decoding"]
    assert lines == ["MSH-18 says '8859/1' but the bytes are UTF-8: decoding as UTF-8"]
    caplog.clear()
    logthrottle.flush_all(all_windows=True)  # what the listener does once an interval
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.decoding"]
    assert len(lines) == 1 and "[2 more like this" in lines[0]
    assert "Müller" not in lines[0]  # the count line quotes no patient data either


def test_a_per_sender_override_replaces_msh18() -> None:
    raw = msh("8859/1", "PID|||1||Иванов^Пётр").encode("iso8859-5")
    d = decode(raw, override="8859/5", detect_utf8=False)
    assert "Иванов^Пётр" in d.text and d.charset.dicom == "ISO_IR 144"


def test_unknown_charset_and_non_hl7_input() -> None:
    with pytest.raises(UnknownCharset):
        decode(msh("EBCDIC").encode())
    with pytest.raises(DecodeError):
        decode(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(DecodeError):
        decode(b"")


def test_separators_bom_and_padding_are_normalised() -> None:
    body = "MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.3\nPID|||1\r\nPV1||O\r"
    d = decode(b"\xef\xbb\xbf\r\n" + body.encode())
    assert d.text.split("\r") == ["MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.3", "PID|||1", "PV1||O"]


def test_charset_table_matches_reference_section_4() -> None:
    expected = {"8859/1": "ISO_IR 100", "8859/2": "ISO_IR 101", "8859/5": "ISO_IR 144",
                "8859/7": "ISO_IR 126", "8859/9": "ISO_IR 148", "UNICODE UTF-8": "ISO_IR 192",
                "ISO IR87": "\\ISO 2022 IR 87", "GB 18030-2000": "GB18030",
                "KS X 1001": "\\ISO 2022 IR 149"}
    for term, dicom in expected.items():
        assert lookup_charset(term).dicom == dicom


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.hl7")) or sorted(FIXTURES.glob("*.hl7")),
                         ids=lambda p: p.name)
def test_every_corpus_message_decodes(path: Path) -> None:
    d = decode(path.read_bytes())
    assert d.text.startswith("MSH") and "\n" not in d.text and "\ufeff" not in d.text


@pytest.mark.parametrize(("raw", "control_id"), [
    (b"MSH|^~\\&|A|B|C|D|||ORM^O01|C1|P|2.3.1\rPID|||1", "C1"),
    (b"\xef\xbb\xbf\r\nMSH#^~\\&#A#B#C#D###ORM^O01#X^Y#P", "X^Y"),  # raw, as sent
    (b"MSH|^^~\\&|A|B|C|D|||ORM^O01|C2|P", "C2"),  # unusable MSH-2: MSH-10 still readable
    (b"MSH|^~\\&|A|B|C|D|||ORM^O01|C3\nPID", "C3"),
    (b"MSH|^~\\&|A|B|C|D|||ORM^O01|C4", ""),  # may be cut short (the first bytes of a frame)
    (b"MSH|^~\\&|A|B|C|D|||ORM^O01\r|C5|", ""),
    (b"MSH\r|^~\\&|A|B|C|D|||ORM^O01|C6|", ""),
    (b"PID|^~\\&|A|B|C|D|||ORM^O01|C7|", ""),
])
def test_peek_control_id(raw: bytes, control_id: str) -> None:
    assert peek_control_id(raw) == control_id
