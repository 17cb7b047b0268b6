"""Order lifecycle scenarios: the bridge over MLLP, the `.wl` folder checked after each step
through real wlmscpfs + findscu, as a modality would see it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import drop_schema, pg_schema_url

from bridge.client import MllpClient, ack_code
from bridge.store import open_store

from orders import orm
from peers import FIXTURES, findscu_worklist, run_bridge, run_wlmscpfs, wait_for

pytestmark = pytest.mark.integration
KEYS = ["PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
        "RequestedProcedureID",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"]


class World:
    """One bridge and one wlmscpfs for the module; each test uses its own orders."""

    def __init__(self, bridge, wlm_port: int, tmp: Path, url: str | None):
        self.bridge, self.port, self.tmp = bridge, wlm_port, tmp
        self.url = url  # PostgreSQL, else the SQLite file in the bridge's data folder
        self.n = 0

    async def send(self, text: str | bytes) -> bytes:
        raw = text.encode("latin-1") if isinstance(text, str) else text
        async with MllpClient("127.0.0.1", self.bridge.mllp_port) as client:
            return await client.send(raw)

    def query(self, **match: str):
        self.n += 1
        keys = [k for k in KEYS if k not in match] + [f"{k}={v}" for k, v in match.items()]
        return findscu_worklist(self.port, "WORKLIST", keys, self.tmp / f"q{self.n}")

    def eventually(self, count: int, **match: str):
        return wait_for(lambda: (lambda r: r if len(r) == count else None)(self.query(**match))
                        or (count == 0 and self.query(**match) == [] and [None]),
                        timeout=15, interval=0.25)

    def outbox_rows(self) -> int:
        store = open_store(self.url or self.bridge.workdir / "data" / "bridge.sqlite")
        try:
            return store.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request, tmp_path_factory):
    """On each backend in turn (the `backends` rule, for a module-wide bridge): a fresh
    PostgreSQL schema for the second."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    folder = tmp / "wlm" / "WORKLIST"
    env = {"BRIDGE_SINKS__FOLDER__PATH": folder}
    url = pg_schema_url() if request.param == "postgres" else None
    if url:
        env["BRIDGE_STORE__URL"] = url
    try:
        with run_bridge(tmp / "bridge", env) as bridge, run_wlmscpfs(tmp / "wlm") as port:
            yield World(bridge, port, tmp, url)
    finally:
        if url:
            drop_schema(url)


def step(ds):
    return ds.ScheduledProcedureStepSequence[0]


async def test_new_resend_and_same_content_under_a_new_control_id(world: World) -> None:
    first = await world.send(orm("L1-1", order="L1", accession="L1ACC"))
    assert ack_code(first) == "AA"
    [ds] = world.eventually(1, AccessionNumber="L1ACC")
    assert str(ds.PatientName) == "DOE^JANE"
    rows = world.outbox_rows()
    # The same control ID again: the very same ACK, nothing written.
    again = await world.send(orm("L1-1", order="L1", accession="L1ACC", name="X^Y"))
    assert again == first
    # The same content under a new control ID: accepted, nothing written either.
    same = await world.send(orm("L1-2", order="L1", accession="L1ACC"))
    assert ack_code(same) == "AA" and world.outbox_rows() == rows
    assert str(world.eventually(1, AccessionNumber="L1ACC")[0].PatientName) == "DOE^JANE"


async def test_xo_reschedules_and_keeps_the_study_uid(world: World) -> None:
    # No ZDS: the study UID is derived from the accession number...
    assert ack_code(await world.send(orm("L2-1", order="L2", accession="L2ACC",
                                         study_uid=""))) == "AA"
    [before] = world.eventually(1, AccessionNumber="L2ACC")
    assert str(step(before).ScheduledProcedureStepStartDate) == "20240115"
    # ...and an XO that moves the exam and renames the procedure keeps that UID.
    xo = orm("L2-2", order="L2", accession="L2ACC", control="XO", status="SC", study_uid="",
             start="202401161400", description="CT head contrast")
    assert ack_code(await world.send(xo)) == "AA"
    after = wait_for(lambda: [d for d in world.query(AccessionNumber="L2ACC")
                              if str(step(d).ScheduledProcedureStepStartDate) == "20240116"],
                     interval=0.25)
    assert str(step(after[0]).ScheduledProcedureStepStartTime) == "1400"
    assert str(step(after[0]).ScheduledProcedureStepDescription) == "CT head contrast"
    assert after[0].StudyInstanceUID == before.StudyInstanceUID


@pytest.mark.parametrize(("control", "status"), [
    ("CA", "CA"), ("CA", ""), ("DC", "CA"), ("DC", "IP"), ("OC", "CA"), ("CR", ""),
    ("SC", "IP"), ("SC", "CM"), ("XO", "CM"), ("OD", ""), ("HD", ""),
])
async def test_orders_leave_the_worklist(world: World, control: str, status: str) -> None:
    order, acc = f"L3{control}{status}", f"L3{control}{status}ACC"
    assert ack_code(await world.send(orm(f"{order}-1", order=order, accession=acc))) == "AA"
    world.eventually(1, AccessionNumber=acc)
    msg = orm(f"{order}-2", order=order, accession=acc, control=control, status=status,
              modality="")  # a cancel or status message needs no item fields
    assert ack_code(await world.send(msg)) == "AA"
    world.eventually(0, AccessionNumber=acc)


async def test_started_order_can_come_back_when_rescheduled(world: World) -> None:
    await world.send(orm("L4-1", order="L4", accession="L4ACC"))
    world.eventually(1, AccessionNumber="L4ACC")
    await world.send(orm("L4-2", order="L4", accession="L4ACC", control="SC", status="IP"))
    world.eventually(0, AccessionNumber="L4ACC")
    await world.send(orm("L4-3", order="L4", accession="L4ACC", control="SC", status="SC"))
    world.eventually(1, AccessionNumber="L4ACC")


async def test_hold_and_release(world: World) -> None:
    await world.send(orm("L6-1", order="L6", accession="L6ACC"))
    world.eventually(1, AccessionNumber="L6ACC")
    assert ack_code(await world.send(orm("L6-2", order="L6", control="HD", status=""))) == "AA"
    world.eventually(0, AccessionNumber="L6ACC")
    assert ack_code(await world.send(orm("L6-3", order="L6", control="RL", status=""))) == "AA"
    world.eventually(1, AccessionNumber="L6ACC")


@pytest.mark.parametrize(("name", "err"), [
    # ORC-1 SR (a post-exam state request) is in no order-control table: AE at ORC-1, 103
    # (table value not found).
    ("ans-teleradiologie__OMI_O23_v251_SR_flux4.hl7", b"|ORC^1^1^1|103^"),
    # Five SC/CA order groups whose first ORC carries no order number: nothing to apply
    # them to, AE naming ORC-2 (the first source of the order key).
    ("msfhirconv__OMG-O19-02.hl7", b"|ORC^1^2^1|101^"),
])
async def test_corpus_status_messages_that_cannot_apply_are_ae(world: World, name: str,
                                                               err: bytes) -> None:
    ack = await world.send(_corpus(name))
    assert ack_code(ack) == "AE" and err in ack, ack


async def test_unknown_order_control_is_ae_and_changes_nothing(world: World) -> None:
    await world.send(orm("L5-1", order="L5", accession="L5ACC"))
    world.eventually(1, AccessionNumber="L5ACC")
    ack = await world.send(orm("L5-2", order="L5", accession="L5ACC", control="ZZ"))
    assert ack_code(ack) == "AE" and b"ERR||ORC^1^1^1|103^" in ack
    assert len(world.query(AccessionNumber="L5ACC")) == 1


def _corpus(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")


@pytest.mark.parametrize(("name", "placer"), [
    ("hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7", "003631.0018.001^DMCOE"),
    ("nhapi-EncodingCharactersTests__ORM_O01_v23_CA-cancel_RX-addome.hl7", "1410"),
    ("ans-teleradiologie__ORM_O01_v251_CA_flux2.hl7", "OPN101^^1.2.250.1.748.12345678.12^ISO"),
])
async def test_corpus_cancels_remove_the_order_they_name(world: World, name: str,
                                                         placer: str) -> None:
    acc = f"C{abs(hash(name)) % 10**8}"
    nw = orm(f"{acc}-nw", order=acc, placer=placer, accession=acc)
    assert ack_code(await world.send(nw)) == "AA"
    world.eventually(1, AccessionNumber=acc)
    assert ack_code(await world.send(_corpus(name))) == "AA"
    world.eventually(0, AccessionNumber=acc)


async def test_corpus_xr_change_replaces_the_order(world: World) -> None:
    placer = "003626.0004.001^DMCOE"
    await world.send(orm("XR-nw", order="XR", placer=placer, accession="XRACC",
                         patient_id="XRPAT", description="OLD DESCRIPTION"))
    world.eventually(1, AccessionNumber="XRACC")
    # The XR names the same placer order; its OBR-4.2 is "KNEE-RIGHT AP LAT", its patient
    # N00804 (PID-3). The order's old item goes away. This sender (DMCOE) has its own
    # profile, mappings/vendor-dmc-radis.yaml: the accession is the filler number, OBR-3.1.
    assert ack_code(await world.send(_corpus("hapi-npac-dmc__ORM_O01_v22_XR-change.hl7"))) \
        == "AA"
    world.eventually(0, AccessionNumber="XRACC")
    [new] = world.eventually(1, PatientID="N00804")
    assert str(step(new).ScheduledProcedureStepDescription) == "KNEE-RIGHT AP LAT"
    assert new.AccessionNumber == "0000000517"


async def test_a08_renames_the_patient_on_live_items(world: World) -> None:
    # The 2019 MESA order is for patient 583295 named DOE^J1; the A08 renames him.
    assert ack_code(await world.send(_corpus("dcm4che__ORM_O01_v231_2019.hl7"))) == "AA"
    world.eventually(1, AccessionNumber="MOF5026", PatientName="DOE^J1")
    assert ack_code(await world.send(_corpus("dcm4che__ADT_A08_hl7snd_2017.hl7"))) == "AA"
    [ds] = world.eventually(1, AccessionNumber="MOF5026", PatientName="SILVERHEELS^JAY")
    assert ds.PatientID == "583295"


@pytest.mark.parametrize(("name", "acc"), [("dcm4che__ADT_A40-PatientMerge_2022.hl7", "MA40"),
                                           ("dcm4che__ADT_A47-ChangePatientID_2022.hl7", "MA47")])
async def test_merge_and_change_of_id_move_items_to_the_new_id(world: World, name: str,
                                                              acc: str) -> None:
    await world.send(orm(f"{acc}-1", order=acc, accession=acc, patient_id="OLD_PID_1",
                         name="Old_Smith^Lucy^Mark"))
    world.eventually(1, AccessionNumber=acc, PatientID="OLD_PID_1")
    assert ack_code(await world.send(_corpus(name))) == "AA"
    [ds] = world.eventually(1, AccessionNumber=acc, PatientID="NEW_PID_1")
    # Both messages name the patient Smith^Lucy^Mark or New_Smith^Lucy^Mark in PID-5.
    assert str(ds.PatientName).endswith("Smith^Lucy^Mark")


async def test_a40_with_two_pid_mrg_pairs_merges_both(world: World) -> None:
    for old in ("56789", "569"):
        await world.send(orm(f"B{old}", order=f"B{old}", accession=f"B{old}", patient_id=old))
        world.eventually(1, AccessionNumber=f"B{old}", PatientID=old)
    assert ack_code(await world.send(_corpus("msfhirconv__ADT-A40-02.hl7"))) == "AA"
    world.eventually(1, AccessionNumber="B56789", PatientID="12345")
    world.eventually(1, AccessionNumber="B569", PatientID="145")
