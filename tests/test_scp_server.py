"""The SCP over a real association, pynetdicom playing the modality: options per calling
AE, character sets, concurrency, MPPS. The items are written here by hand, and so is what
each query must return."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)

from bridge.config import ScpAeOptions, ScpConfig
from bridge.lifecycle import Status
from bridge.scp.index import WorklistIndex
from bridge.scp.server import WorklistScp, all_visible_statuses, set_nodelay
from bridge.store import ItemWrite, Store, open_store


def item(accession: str, name: str, station: str, status: str = "SCHEDULED",
         charset: str = "ISO_IR 192") -> ItemWrite:
    data = {"SpecificCharacterSet": charset, "PatientName": name, "PatientID": f"P{accession}",
            "AccessionNumber": accession, "StudyInstanceUID": f"1.2.826.0.1.3680043.9.{accession}",
            "ScheduledProcedureStepSequence": [{
                "Modality": "CT", "ScheduledStationAETitle": station,
                "ScheduledProcedureStepStartDate": "20240102",
                "ScheduledProcedureStepStartTime": "0900",
                "ScheduledProcedureStepID": f"S{accession}"}]}
    return ItemWrite(f"k{accession}", f"o{accession}", status, status == "SCHEDULED", data)


ITEMS = [
    item("1", "ŁUKASZ^ŻÓŁĆ", "CT1"),
    item("2", "Müller^Jürgen", "CT1"),
    item("3", "DOE^JOHN", "CT2"),
    item("4", "DOE^JANE", "CT2", status="ARRIVED"),
    item("5", "ROE^RICHARD", "CT2", status="STARTED"),
    item("6", "Иванов^Пётр", "MR1"),
]


class StoreMpps:
    """MPPS kept in a real Store, called from association threads (service.py does the same
    through the bridge's store thread); commits go to the index, as in the bridge."""

    def __init__(self, store: Store, index: WorklistIndex):
        self.store, self.index = store, index
        self.lock = threading.Lock()
        self.changes: list[tuple[list[str], Status]] = []

    def create(self, uid: str, calling_ae: str, item_keys: list[str], attributes: dict) -> bool:
        with self.lock:
            writes = self.store.mpps_create(uid, calling_ae, item_keys, attributes,
                                            "STARTED", False)
        self._applied(writes or [], Status.STARTED)
        return writes is not None

    def update(self, uid: str, state: str, modifications: dict) -> None:
        status = {"COMPLETED": Status.COMPLETED, "DISCONTINUED": Status.DISCONTINUED}.get(state)
        with self.lock:
            _, writes = self.store.mpps_set(uid, state, modifications,
                                            None if status is None else (status.value, False,
                                                                         True))
        self._applied(writes, status)

    def _applied(self, writes: list[ItemWrite], status: Status | None) -> None:
        if writes and status is not None:
            self.changes.append(([w.item_key for w in writes], status))
        self.index.apply(writes)


class Server:
    def __init__(self, config: ScpConfig, items: list[ItemWrite], store: Store | None = None):
        store = store or Store(Path(":memory:"))
        self.target: str | Path = ""  # where the store is: opened again after a restart
        self.index = WorklistIndex(all_visible_statuses(config))
        self.index.apply(items)
        store.write_items(items)
        self.mpps = StoreMpps(store, self.index)
        self.scp = WorklistScp(config, self.index, self.mpps)
        self.port = self.scp.start()

    @property
    def changes(self) -> list[tuple[list[str], Status]]:
        return self.mpps.changes


@pytest.fixture
def server(tmp_path: Path, store_target) -> Iterator[Server]:
    """The MPPS tests (marked `backends`) run on SQLite and PostgreSQL; the others on
    SQLite (`store_target` None)."""
    config = ScpConfig(
        port=0, allowed_calling_aes=[],
        calling_aes={
            "LIMITED": ScpAeOptions(max_answers=2),
            "CT1": ScpAeOptions(fill_station_ae=True),
            "LEGACY": ScpAeOptions(response_charset="ISO_IR 100"),
            "FOLLOW": ScpAeOptions(response_charset="query"),
            "CASELESS": ScpAeOptions(pn_case_insensitive=True),
            "NURSE": ScpAeOptions(visible_statuses=["SCHEDULED", "ARRIVED", "STARTED"]),
        })
    target = store_target or tmp_path / "scp.sqlite"
    store = open_store(target)
    s = Server(config, ITEMS, store)
    s.target = target
    yield s
    s.scp.stop()
    store.close()


def modality(calling: str) -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    return ae


def associate(port: int, calling: str = "MODALITY"):
    assoc = modality(calling).associate("127.0.0.1", port, ae_title="BRIDGE_MWL",
                                        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    assert assoc.is_established
    return assoc


def find(port: int, query: Dataset, calling: str = "MODALITY"
         ) -> tuple[list[Dataset], int]:
    assoc = associate(port, calling)
    answers, final = [], None
    try:
        for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ds)
            else:
                final = status.Status
    finally:
        assoc.release()
    return answers, final


def query(**top: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    for k, v in top.items():
        setattr(ds, k, v)
    step = Dataset()
    step.ScheduledStationAETitle = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def accessions(answers: list[Dataset]) -> list[str]:
    return sorted(str(ds.AccessionNumber) for ds in answers)


def test_visible_statuses_default_and_per_ae(server: Server) -> None:
    answers, final = find(server.port, query())
    assert final == 0x0000
    assert accessions(answers) == ["1", "2", "3", "4", "6"]  # STARTED 5 is hidden
    nurse, _ = find(server.port, query(), "NURSE")
    assert accessions(nurse) == ["1", "2", "3", "4", "5", "6"]


def test_max_answers_exactly_n_then_fe00(server: Server) -> None:
    answers, final = find(server.port, query(), "LIMITED")
    assert len(answers) == 2
    assert final == 0xFE00
    # Fewer matches than the limit: all of them, and success.
    answers, final = find(server.port, query(AccessionNumber="3"), "LIMITED")
    assert accessions(answers) == ["3"] and final == 0x0000


def test_fill_station_ae_with_calling_ae(server: Server) -> None:
    ds = Dataset()
    ds.AccessionNumber = ""  # no SPS sequence at all, no station named
    answers, _ = find(server.port, ds, "CT1")
    assert accessions(answers) == ["1", "2"]
    assert all("ScheduledProcedureStepSequence" not in a for a in answers)
    # The option is CT1's only: another modality sees everything.
    assert len(find(server.port, ds, "CT9")[0]) == 5


def test_response_charset_transliterates(server: Server) -> None:
    answers, _ = find(server.port, query(), "LEGACY")
    names = {str(a.AccessionNumber): a for a in answers}
    for a in answers:
        assert a.SpecificCharacterSet == "ISO_IR 100"
    # Ł and Ż and Ć are not in Latin-1: L, Z, C; Ó is, and stays.
    assert str(names["1"].PatientName) == "LUKASZ^ZÓLC"
    assert str(names["2"].PatientName) == "Müller^Jürgen"
    assert str(names["6"].PatientName) == "Ivanov^Petr"
    # Without the option, the item's own character set and text.
    plain, _ = find(server.port, query(AccessionNumber="1"))
    assert plain[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(plain[0].PatientName) == "ŁUKASZ^ŻÓŁĆ"


def test_pn_case_insensitive_per_ae(server: Server) -> None:
    assert find(server.port, query(PatientName="doe*"))[0] == []
    answers, _ = find(server.port, query(PatientName="doe*"), "CASELESS")
    assert accessions(answers) == ["3", "4"]


def test_allowed_calling_aes_reject_others() -> None:
    s = Server(ScpConfig(port=0, allowed_calling_aes=["CT1"]), ITEMS)
    try:
        rejected = modality("INTRUDER").associate("127.0.0.1", s.port)
        assert rejected.is_rejected
        assert len(find(s.port, query(), "CT1")[0]) == 5
    finally:
        s.scp.stop()


def test_echo(server: Server) -> None:
    assoc = associate(server.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_queries_served_concurrently(server: Server) -> None:
    """While one association is open with its query's answers still being read, another
    association is accepted and its query answered in full: associations do not queue
    behind each other (Orthanc runs worklist queries one at a time)."""
    slow = associate(server.port)
    responses = slow.send_c_find(query(), ModalityWorklistInformationFind)
    status, _ = next(responses)
    assert status.Status == 0xFF00
    answers, final = find(server.port, query(AccessionNumber="3"))
    assert accessions(answers) == ["3"] and final == 0x0000
    rest = [ds for st, ds in responses if st.Status == 0xFF00]
    assert len(rest) + 1 == 5
    slow.release()


def test_log_line_per_query(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.scp.server"):
        find(server.port, query(PatientName="DOE*"), "CT7")
    line = next(r.getMessage() for r in caplog.records if "C-FIND" in r.getMessage())
    assert "from CT7" in line and "2 answer(s)" in line
    # log_phi is off by default: the key and its kind of matching, not the name.
    assert "PatientName~wildcard" in line and "DOE" not in line


def mpps_create(accession: str) -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID = f"1.2.826.0.1.3680043.9.{accession}"
    step.AccessionNumber = accession
    step.ScheduledProcedureStepID = f"S{accession}"
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID = "PPS1"
    return ds


@pytest.mark.backends
def test_mpps_in_progress_then_completed(server: Server) -> None:
    assoc = associate(server.port, "CT2")
    uid = "1.2.826.0.1.3680043.9.999.1"
    status, _ = assoc.send_n_create(mpps_create("3"), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    assert server.changes == [(["k3"], Status.STARTED)]
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000
    assert server.changes[-1] == (["k3"], Status.COMPLETED)
    # An N-SET for an instance nobody created.
    status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid + ".2")
    assert status.Status == 0x0112
    assoc.release()
    assert "3" not in accessions(find(server.port, query())[0])


def test_response_character_sets() -> None:
    from bridge.scp.server import response

    name = {0x00100010: ("PN", "Łukasz^Müller")}
    # Declared Latin-1 but holding Ł (a mislabelled feed): what Latin-1 lacks is
    # transliterated, the rest kept, the declared set kept.
    ds = response(name, "ISO_IR 100", "")
    assert (ds.SpecificCharacterSet, str(ds.PatientName)) == ("ISO_IR 100", "Lukasz^Müller")
    # No declared set and non-ASCII text: say UTF-8 rather than send undeclared bytes.
    ds = response(name, "", "")
    assert (ds.SpecificCharacterSet, str(ds.PatientName)) == ("ISO_IR 192", "Łukasz^Müller")
    # Plain ASCII and nothing declared: SpecificCharacterSet is there, empty.
    ds = response({0x00100010: ("PN", "DOE^JOHN")}, "", "")
    assert "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet


@pytest.mark.backends
def test_mpps_survives_a_restart_of_the_scp(server: Server) -> None:
    """N-CREATE, then the SCP (and its store connection) replaced by new ones on the same
    database file, then N-SET COMPLETED: found in the store, accepted, the item COMPLETED.
    The old SCP kept instances in memory and answered 0x0112 here."""
    uid = "1.2.826.0.1.3680043.9.999.3"
    assoc = associate(server.port, "CT2")
    create = mpps_create("2")
    assert assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)[0].Status == 0
    assoc.release()
    server.scp.stop()
    server.mpps.store.close()

    store = open_store(server.target)  # the restarted bridge opens the same database
    try:
        index = WorklistIndex(frozenset({"SCHEDULED", "ARRIVED"}))
        index.load(store.items_with_status(index.statuses))
        scp = WorklistScp(ScpConfig(port=0), index, StoreMpps(store, index))
        port = scp.start()
        try:
            assoc = associate(port, "CT2")
            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            done.PerformedProcedureStepEndDate = "20240102"
            status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
            assert status.Status == 0x0000
            # A COMPLETED step may no longer be updated (PS3.4 F.7.2.2): 0110, not 0000.
            status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
            assert status.Status == 0x0110
            assoc.release()
        finally:
            scp.stop()
        item = store.item("k2")
        assert (item.status, item.visible, item.final) == ("COMPLETED", False, True)
        mpps = store.mpps(uid)
        assert (mpps.state, mpps.calling_ae, mpps.item_keys) == ("COMPLETED", "CT2", ["k2"])
        # The N-CREATE's attributes and the N-SET's modifications are both kept.
        assert mpps.attributes["00400253"]["Value"] == ["PPS1"]  # PerformedProcedureStepID
        assert mpps.attributes["00400250"]["Value"] == ["20240102"]
        assert store.mpps_of_item("k2") == [uid]
    finally:
        store.close()


@pytest.mark.backends
def test_mpps_duplicate_instance(server: Server) -> None:
    assoc = associate(server.port, "CT2")
    uid = "1.2.826.0.1.3680043.9.999.2"
    assert assoc.send_n_create(mpps_create("4"), ModalityPerformedProcedureStep,
                               uid)[0].Status == 0x0000
    assert assoc.send_n_create(mpps_create("4"), ModalityPerformedProcedureStep,
                               uid)[0].Status == 0x0111
    assoc.release()


def test_cancel_stops_the_answers_with_fe00(server: Server) -> None:
    """C-CANCEL: pynetdicom reports it through is_cancelled; the answers stop there."""
    from bridge.scp.query import parse

    cancel_after_first = iter([False, True])
    out = list(server.scp.find(parse(query()), "MODALITY",
                               lambda: next(cancel_after_first, True)))
    assert [status for status, _ in out] == [0xFF00, 0xFE00]
    assert out[0][1] is not None and out[1][1] is None


def test_nagle_is_off_on_the_scp_side(server: Server) -> None:
    """Without TCP_NODELAY a C-FIND waits about 40 ms on delayed ACKs (REFERENCE.md 8)."""
    import socket

    assoc = associate(server.port)
    try:
        accepted = wait_for_association(server)
        sock = accepted.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def wait_for_association(server: Server):
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        active = server.scp._server.active_associations
        if active:
            return active[0]
        time.sleep(0.01)
    raise TimeoutError("no association on the SCP side")


def test_response_charset_of_the_query(server: Server) -> None:
    latin = query(AccessionNumber="1")
    latin.SpecificCharacterSet = "ISO_IR 100"
    answers, _ = find(server.port, latin, "FOLLOW")
    assert answers[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(answers[0].PatientName) == "LUKASZ^ZÓLC"
    # A query that declares nothing gets the item's own set.
    answers, _ = find(server.port, query(AccessionNumber="1"), "FOLLOW")
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(answers[0].PatientName) == "ŁUKASZ^ŻÓŁĆ"
