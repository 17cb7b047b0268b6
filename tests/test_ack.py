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
