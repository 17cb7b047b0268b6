"""ACKs, read back with python-hl7 as a RIS would."""

from __future__ import annotations

import hl7

from bridge.ack import AckError, ErrorLocation, build_ack
from bridge.decoding import decode
from bridge.message import Message

ORDER = ("MSH|^~\\&|RIS|HOSP|BRIDGE|IMG|20240101120000||ORM^O01|CTRL42|P|2.3.1||||||8859/1\r"
         "PID|||1")


def test_aa_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    ack = hl7.parse(build_ack("AA", "A1", Message(decode(ORDER.encode()))))
    msh, msa = ack.segment("MSH"), ack.segment("MSA")
    assert [str(msh[i]) for i in (3, 4, 5, 6)] == ["BRIDGE", "IMG", "RIS", "HOSP"]
    assert str(msh[9]) == "ACK^O01^ACK" and str(msh[10]) == "A1" and str(msh[12]) == "2.3.1"
    assert str(msh[18]) == "8859/1"
    assert (str(msa[1]), str(msa[2])) == ("AA", "CTRL42")


def test_ae_carries_an_err_segment_naming_the_field() -> None:
    err = AckError(101, "PatientID is required but PID-3.1 is empty",
                   ErrorLocation("PID", 3, component=1))
    ack = hl7.parse(build_ack("AE", "A2", Message(decode(ORDER.encode())), err))
    seg = ack.segment("ERR")
    assert str(seg[2]) == "PID^1^3^1^1"
    assert str(seg[3]) == "101^Required field missing^HL70357"
    assert str(seg[4]) == "E"
    assert "PID-3.1 is empty" in str(seg[8])
    assert str(ack.segment("MSA")[1]) == "AE"


def test_error_text_with_separators_is_escaped() -> None:
    err = AckError(200, "no profile for ADT^A40|x", ErrorLocation("MSH", 9))
    text = build_ack("AR", "A3", Message(decode(ORDER.encode())), err)
    assert "ADT\\S\\A40\\F\\x" in text
    assert str(hl7.parse(text).segment("ERR")[2]) == "MSH^1^9^1"


def test_ar_for_something_that_is_not_hl7() -> None:
    ack = hl7.parse(build_ack("AR", "A4", None, AckError(100, "not HL7")))
    assert str(ack.segment("MSA")[1]) == "AR" and str(ack.segment("MSH")[9]) == "ACK"


def _frame_safe(ack: str) -> bool:
    """No control character but the segment separator: nothing that ends an MLLP frame."""
    return all(c == "\r" or (ord(c) >= 0x20 and c != "\x7f") for c in ack)


def test_control_characters_never_reach_the_ack() -> None:
    # A message carrying 0x1C produced an ACK frame that ended before its MSA.
    order = ORDER.replace("CTRL42", "C\x1cT\x0b2").replace("RIS|HOSP", "R\x1dIS|HO\x00SP")
    err = AckError(103, "order control Z\x1cZ\x0b\n is unknown", ErrorLocation("ORC", 1))
    text = build_ack("AE", "A5", Message(decode(order.encode())), err)
    assert _frame_safe(text), repr(text)
    ack = hl7.parse(text)
    msa, err_seg = ack.segment("MSA"), ack.segment("ERR")
    assert str(msa[2]) == "C\\X1C\\T\\X0B\\2"  # hex escapes: the RIS can read them back
    assert str(msa[3]) == "order control Z\\X1C\\Z\\X0B\\  is unknown"
    assert str(err_seg[8]) == str(msa[3])
    assert str(ack.segment("MSH")[5]) == "R\\X1D\\IS"


def test_control_id_of_an_unreadable_message_is_echoed_safely() -> None:
    text = build_ack("AR", "A6", None, AckError(100, "bad separators"), control_id="X|Y\x1c")
    assert _frame_safe(text)
    assert str(hl7.parse(text).segment("MSA")[2]) == "X\\F\\Y\\X1C\\"


def test_short_msh2_ack_declares_every_separator() -> None:
    order = ORDER.replace("MSH|^~\\&|", "MSH|^|")
    ack = hl7.parse(build_ack("AA", "A7", Message(decode(order.encode()))))
    assert str(ack.segment("MSH")[2]) == "^~\\&"
    assert str(ack.segment("MSA")[2]) == "CTRL42"
