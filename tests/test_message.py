"""HL7 access by path, checked against python-hl7 (the reference parser) on real messages."""

from __future__ import annotations

from pathlib import Path

import hl7
import pytest

from bridge.decoding import decode
from bridge.message import Message, PathError, Separators, read_raw, unescape
from bridge.message import Path as HL7Path

FIXTURES = Path(__file__).parent / "fixtures" / "hl7"
SEPS = Separators()


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.hl7")), ids=lambda p: p.name)
def test_fields_and_components_agree_with_python_hl7(path: Path) -> None:
    decoded = decode(path.read_bytes())
    ours = Message(decoded)
    ref = hl7.parse(decoded.text)
    assert len(ours.segments) == len(ref)
    for mine, theirs in zip(ours.segments, ref, strict=True):
        assert mine.name == str(theirs[0])
        for n in range(1, len(theirs)):
            if mine.name == "MSH" and n <= 2:
                continue  # python-hl7 keeps the separators there as-is
            assert mine[n] == str(theirs[n]), f"{mine.name}-{n}"
            # Component 1..3 of the first repetition, through the path reader.
            for c in (1, 2, 3):
                want = ""
                rep = str(theirs[n]).split("~")[0].split("^")
                if c <= len(rep):
                    want = rep[c - 1]
                got = read_raw([mine], HL7Path.parse(f"{mine.name}-{n}.{c}"), ours.seps)
                assert got == ([want] if got else []) and (got or not want), f"{mine.name}-{n}.{c}"


def test_header_accessors() -> None:
    msg = Message(decode((FIXTURES / "dcm4che__ORM_O01_v231_2019.hl7").read_bytes()))
    assert (msg.message_type, msg.control_id, msg.version) == ("ORM^O01", "103106", "2.3.1")
    assert msg.header(3) == "MESA_OF" and msg.header(4) == "XYZ_RADIOLOGY"


def test_truncation_character_in_msh2_is_not_a_separator() -> None:
    msg = Message(decode((FIXTURES / "hapi-ParserTest__ORM_O01_v27_truncation-char.hl7")
                         .read_bytes()))
    assert msg.seps == Separators("|", "^", "~", "\\", "&")
    assert msg.msh[2] == "^~\\&#"


@pytest.mark.parametrize(("raw", "text"), [
    (r"a\F\b\S\c\T\d\R\e\E\f", "a|b^c&d~e\\f"),
    (r"line\X0D0A\next", "line\r\nnext"),
    (r"some text\.br\more", "some text\r\nmore"),
    (r"x\H\bold\N\y", "xboldy"),
    (r"SSAET\SSAET2", r"SSAET\SSAET2"),  # a DICOM multi-value written raw: kept
    (r"dangling\ ", "dangling\\ "),
    (r"bad\Xzz\hex", r"bad\Xzz\hex"),
])
def test_unescape(raw: str, text: str) -> None:
    assert unescape(raw, SEPS) == text


def test_selectors_pick_repetitions_and_segments() -> None:
    text = ("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\r"
            "PID|||111^^^H^PI~222^^^H^MR~333^^^X^MR\r"
            "OBX|1|NM|29463-7^Body Weight^LN||72|kg\r"
            "OBX|2|NM|8302-2^Body Height^LN||1.80|m")
    msg = Message(decode(text.encode()))

    def read(p: str) -> list[str]:
        return read_raw(msg.segments, HL7Path.parse(p), msg.seps)

    assert read("PID-3.1") == ["111"]
    assert read("PID-3[2].1") == ["222"]
    assert read("PID-3[5=MR].1") == ["222"]  # the first repetition whose type is MR
    assert read("PID-3[*].1") == ["111", "222", "333"]
    assert read("OBX[3.2=Body Height]-5") == ["1.80"]
    assert read("OBX[2]-6") == ["m"]
    assert read("OBX[3.1=nope]-5") == []
    assert read("ZZZ-1") == []


@pytest.mark.parametrize("bad", ["PID", "PID-0", "PID-3.0", "pid-3", "PID-3[x]", "PID-3.1.2.3"])
def test_bad_paths_are_rejected(bad: str) -> None:
    with pytest.raises(PathError):
        HL7Path.parse(bad)


ONE_CHAR_MSH2 = ("MSH|^|RIS|HOSP|BRIDGE|IMG|20240101||ORM^O01|C1|P|2.3.1\r"
                 "PID|||P1^^^HOSP~P2||DOE^J1&X||19700101\r")


def test_a_short_msh2_declares_only_what_it_holds() -> None:
    # Read from fixed offsets, "MSH|^|RIS" made "|" the repetition separator and "R" the
    # escape character: DOE^J1 came out as DO^J1.
    msg = Message(decode(ONE_CHAR_MSH2.encode()))
    assert msg.seps == Separators("|", "^", "~", "\\", "&")
    assert msg.header(3) == "RIS" and msg.control_id == "C1"
    pid = msg.first("PID")
    assert pid is not None and pid[5] == "DOE^J1&X"
    assert read_raw(msg.segments, HL7Path.parse("PID-5.2.1"), msg.seps) == ["J1"]
    assert read_raw(msg.segments, HL7Path.parse("PID-3[2].1"), msg.seps) == ["P2"]
    two = Message(decode(ONE_CHAR_MSH2.replace("MSH|^|", "MSH|#!|").encode()))
    assert two.seps == Separators("|", "#", "!", "\\", "&")


def test_separators_left_at_defaults_must_not_collide() -> None:
    from bridge.decoding import DecodeError

    for header in ("MSH|~|", "MSH~^|", "MSH|^&|"):
        with pytest.raises(DecodeError):
            decode(ONE_CHAR_MSH2.replace("MSH|^|", header).encode())


def test_indented_segments_are_read() -> None:
    text = ("MSH|^~\\&|RIS|H|B|I|||ORM^O01|C1|P|2.3.1\r  PID|||P1\r\t ORC|NW|PL1\n"
            "    OBR|1|PL1||||||||||||||||ACC1\r")
    msg = Message(decode(text.encode()))
    assert [s.name for s in msg.segments] == ["MSH", "PID", "ORC", "OBR"]
    assert read_raw(msg.segments, HL7Path.parse("OBR-18"), msg.seps) == ["ACC1"]


def test_segments_know_their_occurrence_and_groups() -> None:
    text = ("MSH|^~\\&|RIS|H|B|I|||ORM^O01|C1|P|2.3.1\rPID|||P1\rORC|NW|A\rOBR|1|A\r"
            "ORC|NW|B\rNTE|1\rOBR|1|B\rORC|NW|C\r")
    msg = Message(decode(text.encode()))
    assert [(s.name, s.sequence) for s in msg.segments[2:]] == [
        ("ORC", 1), ("OBR", 1), ("ORC", 2), ("NTE", 1), ("OBR", 2), ("ORC", 3)]
    assert [s.name for s in msg.group("ORC", 2)] == ["ORC", "NTE", "OBR"]
    assert [s.name for s in msg.group("ORC", 3)] == ["ORC"]
    assert msg.group("ORC", 4) == []
    # A path read in group 2 is that group's OBR; in group 3 (no OBR) the message's first.
    obr = msg.locate(HL7Path.parse("OBR-2"), "ORC", 2)
    assert obr is not None and (obr.sequence, obr[2]) == (2, "B")
    obr = msg.locate(HL7Path.parse("OBR-2"), "ORC", 3)
    assert obr is not None and obr.sequence == 1
