"""Pending C-FIND responses written directly (bridge/scp/direct.py) against pynetdicom's
own path: the same PDUs for the same messages, the same answers over a real association,
identifiers re-encoded when an item changes, and cancel honoured."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityWorklistInformationFind
from test_scp_encoding import ANSWER
from test_scp_server import ITEMS, Server, query

from bridge.config import ScpAeOptions, ScpConfig
from bridge.scp.direct import (
    ResponseWriter,
    identifier,
    pdata,
    pending_command_set,
)
from bridge.scp.query import parse
from bridge.scp.server import WorklistScp, response, set_nodelay
from bridge.store import ItemWrite

MWL = str(ModalityWorklistInformationFind)
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def pynetdicom_pdus(identifier_bytes: bytes, message_id: int, max_pdu: int) -> bytes:
    """What pynetdicom sends for one pending C-FIND-RSP."""
    rsp = C_FIND()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MWL
    rsp.Status = 0xFF00
    rsp.Identifier = BytesIO(identifier_bytes)
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    out = b""
    for primitive in msg.encode_msg(1, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 7])
def test_pdus_are_those_pynetdicom_sends(max_pdu: int) -> None:
    data = identifier(ANSWER, "ISO_IR 192", "", True)
    sent: list[bytes] = []
    writer = ResponseWriter(sent.append, 1, 513, MWL, max_pdu)
    writer.pending(data)
    writer.flush()
    assert b"".join(sent) == pynetdicom_pdus(data, 513, max_pdu)
    assert pdata(1, pending_command_set(513, MWL), True, max_pdu) == \
        pynetdicom_pdus(data, 513, max_pdu)[:len(pdata(1, pending_command_set(513, MWL),
                                                         True, max_pdu))]


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize(("item_charset", "target"), [
    ("ISO_IR 100", ""), ("ISO_IR 192", ""), ("ISO_IR 192", "ISO_IR 100"), ("", ""),
    ("", "ISO_IR 6"), ("GB18030", ""),
    # ISO 2022 code extensions: pydicom encodes them, written directly all the same.
    ("ISO 2022 IR 6\\ISO 2022 IR 100", ""),
])
def test_identifier_is_what_pynetdicom_encodes(implicit: bool, item_charset: str,
                                               target: str) -> None:
    expected = encode(response(ANSWER, item_charset, target, implicit), implicit, True)
    assert identifier(ANSWER, item_charset, target, implicit) == expected


def two_step_item() -> ItemWrite:
    data = {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "TWO^STEPS",
            "PatientID": "P9", "AccessionNumber": "9",
            "ScheduledProcedureStepSequence": [
                {"Modality": "CT", "ScheduledStationAETitle": "CT2",
                 "ScheduledProcedureStepStartDate": "20240102",
                 "ScheduledProcedureStepID": "S9a"},
                {"Modality": "MR", "ScheduledStationAETitle": "MR1",
                 "ScheduledProcedureStepStartDate": "20240102",
                 "ScheduledProcedureStepID": "S9b"}]}
    return ItemWrite("k9", "o9", "SCHEDULED", True, data)


@pytest.fixture
def server():
    config = ScpConfig(
        port=0, allowed_calling_aes=[],
        calling_aes={
            "LIMITED": ScpAeOptions(max_answers=2),
            "CT1": ScpAeOptions(fill_station_ae=True),
            "LEGACY": ScpAeOptions(response_charset="ISO_IR 100"),
            "FOLLOW": ScpAeOptions(response_charset="query"),
            "CASELESS": ScpAeOptions(pn_case_insensitive=True),
        })
    s = Server(config, [*ITEMS, two_step_item()])
    yield s
    s.scp.stop()


def find(port: int, ds: Dataset, calling: str = "MODALITY", syntax: str = IMPLICIT_LE,
         max_pdu: int = 16382) -> tuple[list[bytes], int | None]:
    """Each answer as the bytes of its dataset (explicit VR), and the final status."""
    ae = AE(ae_title=calling)
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(ModalityWorklistInformationFind, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="BRIDGE_MWL",
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    assert assoc.is_established
    answers, final = [], None
    try:
        for status, answer in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            if status.Status == 0xFF00:
                answers.append(encode(answer, False, True))
            else:
                final = status.Status
    finally:
        assoc.release()
    return answers, final


def sps_query(**step_values: str) -> Dataset:
    ds = query()
    ds.SpecificCharacterSet = ""
    ds.PatientID = ""
    step = ds.ScheduledProcedureStepSequence[0]
    step.Modality = ""
    step.ScheduledProcedureStepID = ""
    for k, v in step_values.items():
        setattr(step, k, v)
    return ds


def name_query(name: str, charset: str = "") -> Dataset:
    ds = query(PatientName=name)
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


CASES = [
    ("MODALITY", sps_query()),
    ("MODALITY", sps_query(Modality="MR")),
    ("MODALITY", query(AccessionNumber="1")),
    ("LEGACY", sps_query()),
    ("FOLLOW", name_query("*", "ISO_IR 100")),
    ("FOLLOW", name_query("*")),
    ("CT1", sps_query()),
    ("CASELESS", name_query("doe*")),
    ("LIMITED", sps_query()),
]


@pytest.mark.parametrize("syntax", [IMPLICIT_LE, EXPLICIT_LE])
@pytest.mark.parametrize("max_pdu", [16382, 4096])
def test_direct_answers_equal_pynetdicom_answers(server: Server, syntax: str,
                                                 max_pdu: int) -> None:
    for calling, ds in CASES:
        server.scp.direct = False
        expected = find(server.port, ds, calling, syntax, max_pdu)
        server.scp.direct = True
        first = find(server.port, ds, calling, syntax, max_pdu)
        again = find(server.port, ds, calling, syntax, max_pdu)  # from the cache
        assert first == expected, (calling, ds)
        assert again == expected, (calling, ds)
        assert expected[0], calling  # every case has answers


def test_a_large_answer_in_many_fragments(server: Server) -> None:
    # A long comment makes the identifier larger than the peer's PDU (4096 bytes).
    changed = dict(server.index.get("k3").data, PatientComments="x" * 9000)
    server.index.apply([ItemWrite("k3", "o3", "SCHEDULED", True, changed)])
    ds = query(AccessionNumber="3")
    ds.PatientComments = ""
    answers, final = find(server.port, ds, max_pdu=4096)
    assert final == 0x0000 and len(answers) == 1
    assert b"x" * 9000 in answers[0]


def test_changed_item_is_encoded_anew(server: Server) -> None:
    ds = query(AccessionNumber="3")
    before, _ = find(server.port, ds)
    assert len(server.scp.answers) == 1  # cached
    assert b"DOE^JOHN" in before[0]
    changed = dict(server.index.get("k3").data, PatientName="DOE^JONATHAN")
    server.index.apply([ItemWrite("k3", "o3", "SCHEDULED", True, changed)])
    after, _ = find(server.port, ds)
    assert b"DOE^JONATHAN" in after[0] and b"DOE^JOHN\x20" not in after[0]
    # Gone from the worklist: no answer, whatever the cache holds.
    server.index.apply([ItemWrite("k3", "o3", "COMPLETED", False, changed)])
    assert find(server.port, ds) == ([], 0x0000)


def test_only_matching_sequence_items_whatever_was_cached(server: Server) -> None:
    everything, _ = find(server.port, sps_query(ScheduledProcedureStepID="S9*"))
    assert len(everything) == 1
    assert b"S9a" in everything[0] and b"S9b" in everything[0]
    mr_only, _ = find(server.port, sps_query(ScheduledProcedureStepID="S9*", Modality="MR"))
    assert b"S9b" in mr_only[0] and b"S9a" not in mr_only[0]
    # And the other way round: the partial answer was not kept for the shape.
    again, _ = find(server.port, sps_query(ScheduledProcedureStepID="S9*"))
    assert again == everything


def test_cancel_stops_direct_answers(server: Server) -> None:
    """C-CANCEL seen after the first answer: one pending response written, then FE00."""
    sent: list[bytes] = []
    writer = ResponseWriter(sent.append, 1, 5, MWL, 0)
    cancel_after_first = iter([False, True])
    status, _ = server.scp.find_direct(parse(sps_query()), "MODALITY",
                                       lambda: next(cancel_after_first, True), True, writer)
    assert status == 0xFE00
    data = b"".join(sent)
    command = pdata(1, pending_command_set(5, MWL), True, 0)
    assert data.count(command) == 1


def test_written_answers_stop_when_the_peer_is_gone(server: Server) -> None:
    calls: list[int] = []

    def broken(data: bytes) -> None:
        calls.append(len(data))
        raise ConnectionResetError

    writer = ResponseWriter(broken, 1, 5, MWL, 0)
    scp: WorklistScp = server.scp
    status, _ = scp.find_direct(parse(sps_query()), "MODALITY", lambda: False, True, writer)
    assert writer.failed and len(calls) == 1
    assert status == 0x0000  # pynetdicom then finds the connection closed
