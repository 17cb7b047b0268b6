"""The SCP against hostile or broken peers, pynetdicom (and raw sockets) playing them over
real connections: keys of the wrong VR, a query that would search for ever, idle
connections, floods from one address, and what the log may say about a query."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import pytest
from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from bridge.config import ScpConfig
from bridge.scp.index import WorklistIndex
from bridge.scp.server import WorklistScp, all_visible_statuses, set_nodelay
from bridge.store import ItemWrite

# Patient data that must never reach the log while log_phi is off.
NAME, PATIENT_ID, BIRTH_DATE = "MOZART^WOLFGANG", "MWA484763", "17560127"


def item(n: int, description: str = "CT THORAX", name: str = "DOE^JOHN") -> ItemWrite:
    data = {"SpecificCharacterSet": "ISO_IR 192", "PatientName": name,
            "PatientID": f"P{n}", "PatientBirthDate": "19700101",
            "AccessionNumber": f"A{n}", "StudyInstanceUID": f"1.2.826.0.1.3680043.9.{n}",
            "RequestedProcedureDescription": description,
            "ScheduledProcedureStepSequence": [{
                "Modality": "CT", "ScheduledStationAETitle": "CT1",
                "ScheduledProcedureStepStartDate": "20240102",
                "ScheduledProcedureStepID": f"S{n}"}]}
    return ItemWrite(f"k{n}", f"o{n}", "SCHEDULED", True, data)


ITEMS = [item(1, "CT THORAX ABDOMEN BECKEN MIT KONTRASTMITTEL"),
         item(2, "CT SCHAEDEL NATIV Z"),
         item(3, "MRT KNIE", NAME)]


class Server:
    def __init__(self, config: ScpConfig, items: list[ItemWrite], log_phi: bool = False):
        index = WorklistIndex(all_visible_statuses(config))
        index.apply(items)
        self.scp = WorklistScp(config, index, log_phi=log_phi)
        self.port = self.scp.start()


@pytest.fixture
def serve() -> Iterator:
    """serve(config, items, log_phi) -> a running Server, stopped after the test."""
    servers: list[Server] = []

    def start(config: ScpConfig | None = None, items: list[ItemWrite] = ITEMS,
              log_phi: bool = False) -> Server:
        servers.append(Server(config or ScpConfig(port=0), items, log_phi))
        return servers[-1]

    yield start
    for s in servers:
        s.scp.stop()


def find(port: int, query: Dataset, syntax: str = ExplicitVRLittleEndian,
         source: str = "127.0.0.1") -> tuple[list[Dataset], Dataset]:
    """Answers and the final status dataset of one C-FIND, in one transfer syntax."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="BRIDGE_MWL",
                         bind_address=(source, 0),
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    assert assoc.is_established, "association refused"
    answers, final = [], None
    try:
        for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status is not None and "Status" in status, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ds)
            else:
                final = status
    finally:
        assoc.release()
    assert final is not None
    return answers, final


def query(*elements: DataElement, **top: str) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    for k, v in top.items():
        setattr(ds, k, v)
    for elem in elements:
        ds.add(elem)
    return ds


def idle_sockets(port: int, count: int, source: str) -> list[socket.socket]:
    """Connections that never send a byte, as a port scanner or a stuck client leaves."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# --- issue 15.8: keys of the wrong VR, values of NUL only --------------------------------


@pytest.mark.parametrize(("element", "syntax"), [
    (DataElement(0x00100010, "OB", b"DOE*"), ExplicitVRLittleEndian),    # PN sent as OB
    (DataElement(0x00100020, "OW", b"P1"), ExplicitVRLittleEndian),      # LO sent as OW
    (DataElement(0x00100020, "SQ", Sequence([Dataset()])), ExplicitVRLittleEndian),
    (DataElement(0x00100010, "PN", "\x00"), ExplicitVRLittleEndian),     # a single NUL
    (DataElement(0x00100010, "PN", "\x00"), ImplicitVRLittleEndian),
    (DataElement(0x0020000D, "UI", "\x00", validation_mode=IGNORE), ExplicitVRLittleEndian),
])
def test_wrong_vr_or_nul_key_is_refused_not_universal(
        serve, caplog: pytest.LogCaptureFixture, element: DataElement, syntax: str) -> None:
    server = serve()
    with caplog.at_level(logging.WARNING, logger="bridge.scp.server"):
        answers, final = find(server.port, query(element), syntax)
    # Before: the key read as empty, and every item came back with success.
    assert answers == []
    assert final.Status == 0xA900  # PS3.4 K.4.1.1.4: identifier does not match SOP class
    assert final.OffendingElement == element.tag  # one tag: pydicom gives it alone
    assert final.ErrorComment
    refused = [r.getMessage() for r in caplog.records if "refused (A900)" in r.getMessage()]
    assert len(refused) == 1 and "DOE" not in refused[0] and "P1" not in refused[0]


def test_same_keys_sent_right_still_match(serve) -> None:
    server = serve()
    answers, final = find(server.port, query(DataElement(0x00100010, "PN", "DOE*\x00")))
    assert final.Status == 0x0000
    assert sorted(str(a.AccessionNumber) for a in answers) == ["A1", "A2"]


# --- issue 15.1: no query holds the SCP ---------------------------------------------------


def test_pathological_wildcard_answers_at_once(serve) -> None:
    server = serve()
    started = time.monotonic()
    answers, final = find(server.port, query(
        RequestedProcedureDescription="*?*?*?*?*?*?*?*?*?*?*?*?*?*?Z"))
    assert time.monotonic() - started < 2.0
    assert final.Status == 0x0000
    assert [str(a.AccessionNumber) for a in answers] == ["A2"]  # the one ending in Z


def test_a_query_over_its_cpu_budget_ends_with_a700(serve, caplog) -> None:
    # 3,000 items scanned with a wildcard, with a budget far below what that takes.
    items = [item(n) for n in range(3000)]
    server = serve(ScpConfig(port=0, max_query_seconds=0.001), items)
    with caplog.at_level(logging.INFO, logger="bridge.scp.server"):
        answers, final = find(server.port, query(PatientName="*X*Y*"))
    assert final.Status == 0xA700  # PS3.4 K.4.1.1.4: refused, out of resources
    assert "max_query_seconds" in final.ErrorComment
    assert answers == []
    assert any("time limit reached" in r.getMessage() for r in caplog.records)


# --- issue 14.7: what the query log says ----------------------------------------------------


def phi_query() -> Dataset:
    return query(PatientName=NAME, PatientID=PATIENT_ID, PatientBirthDate=BIRTH_DATE)


def test_query_log_has_no_patient_data_without_log_phi(serve, caplog) -> None:
    server = serve()
    with caplog.at_level(logging.DEBUG, logger="bridge.scp"):
        find(server.port, phi_query())
        find(server.port, query(PatientName="MOZ*", PatientBirthDate="17560101-17561231"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "C-FIND from MODALITY" in text
    assert "PatientName~value" in text and "PatientBirthDate~range" in text
    for value in (NAME, PATIENT_ID, BIRTH_DATE, "MOZ", "1756"):
        assert value not in text


def test_invalid_values_reach_no_log_through_pydicom(serve, caplog, recwarn) -> None:
    # pydicom's validation, had it decoded these, would warn with the value itself
    # ("Invalid value for VR UI: '...'") on the pydicom logger, outside our log lines.
    server = serve()
    with caplog.at_level(logging.DEBUG):
        answers, final = find(server.port, query(
            DataElement(0x0020000D, "UI", NAME, validation_mode=IGNORE),
            DataElement(0x00080050, "SH", PATIENT_ID * 3, validation_mode=IGNORE),
            DataElement(0x00291010, "UI", BIRTH_DATE + "^X", validation_mode=IGNORE)))
    assert final.Status == 0x0000 and answers == []
    scp_side = "\n".join(r.getMessage() for r in caplog.records
                         if r.name.startswith(("bridge", "pydicom")))
    for value in (NAME, PATIENT_ID, BIRTH_DATE):
        assert value not in scp_side


def test_query_log_values_with_log_phi_are_cut(serve, caplog) -> None:
    server = serve(log_phi=True)
    with caplog.at_level(logging.INFO, logger="bridge.scp.server"):
        find(server.port, phi_query())
        find(server.port, query(DataElement(0x00100010, "PN", "X" * 60_000 + "*",
                                            validation_mode=IGNORE)))
        find(server.port, query(PatientID="P1\r\n2026-01-01 INFO forged line"))
    lines = [r.getMessage() for r in caplog.records if "C-FIND" in r.getMessage()]
    assert f"PatientName={NAME}" in lines[0] and f"PatientID={PATIENT_ID}" in lines[0]
    assert "(60001 chars)" in lines[1] and len(lines[1]) < 500
    assert "\n" not in lines[2] and "P1\\x0d\\x0a2026" in lines[2]


# --- issue 15.3: idle connections, floods from one address ----------------------------------


def test_idle_connections_do_not_lock_out_a_modality(serve) -> None:
    # 40 idle connections were more than the 32 association slots: a modality's C-FIND
    # was rejected until pynetdicom's 30 s timeout freed them.
    server = serve()
    with ExitStack() as stack:
        for s in idle_sockets(server.port, 40, "127.0.0.2"):
            stack.enter_context(closing(s))
        time.sleep(0.3)  # let the SCP accept (or close) all of them
        assert server.scp.peers.open_connections("127.0.0.2") <= 8
        started = time.monotonic()
        answers, final = find(server.port, query(AccessionNumber="A3"))
        assert final.Status == 0x0000 and len(answers) == 1
        assert time.monotonic() - started < 5.0


def test_per_peer_limit_closes_extra_connections(serve, caplog) -> None:
    server = serve(ScpConfig(port=0, max_associations_per_peer=2))
    with caplog.at_level(logging.WARNING, logger="bridge.scp.server"), ExitStack() as stack:
        held = idle_sockets(server.port, 2, "127.0.0.3")
        for s in held:
            stack.enter_context(closing(s))
        time.sleep(0.2)
        extra = [stack.enter_context(closing(s))
                 for s in idle_sockets(server.port, 20, "127.0.0.3")]
        assert all(closed_by_peer(s, 2.0) for s in extra)
        assert not closed_by_peer(held[0], 0.2)  # the first two are kept
        # A modality at that address is refused too; one elsewhere is served.
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ModalityWorklistInformationFind)
        refused = ae.associate("127.0.0.1", server.port, bind_address=("127.0.0.3", 0))
        assert not refused.is_established
        assert find(server.port, query(AccessionNumber="A1"))[1].Status == 0x0000
    # A flood makes one log line with a count, not one line per connection.
    lines = [r.getMessage() for r in caplog.records if "max_associations_per_peer" in
             r.getMessage()]
    assert len(lines) == 1 and "127.0.0.3" in lines[0]


def test_connections_that_never_associate_are_closed_after_acse_timeout(serve) -> None:
    server = serve(ScpConfig(port=0, acse_timeout=0.5))
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(s))
                 for s in idle_sockets(server.port, 4, "127.0.0.4")]
        # pynetdicom's own default was 30 s.
        assert all(closed_by_peer(s, 5.0) for s in socks)
    deadline = time.monotonic() + 5
    while server.scp.peers.open_connections("127.0.0.4") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.scp.peers.open_connections("127.0.0.4") == 0
