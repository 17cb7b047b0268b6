"""Status back to the RIS, end to end: the bridge as a subprocess, pynetdicom as the
modality (MPPS), and a RIS (ris_sim.py, python-hl7's MLLP) that is down at first.

MPPS IN PROGRESS while the RIS is down; the RIS comes up and gets the message once; the
bridge restarts; MPPS COMPLETED; the RIS gets the second message once. Both carry the
order's identifiers exactly as the RIS sent them, for an ORM^O01 and an OMI^O23 order, and
both follow their HL7 version's structure (hl7apy's tables, bridge/validate.py).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from integration.test_scp_bridge import mpps_in_progress
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from ris_sim import RisSimulator

from bridge.validate import check_bytes

from orders import orm
from peers import free_port, run_bridge, wait_for

pytestmark = pytest.mark.integration

MPPS_UID = "1.2.826.0.1.3680043.10.1445.88.1"

ORM = orm("ORM1", order="PLR7", placer="PLR7^RISNS", accession="ACCR7", rp_id="RPR7",
          sps_id="SPSR7", study_uid="1.2.3.77")
OMI = "\r".join([
    "MSH|^~\\&|RIS|HOSP|BRIDGE|IMG|20240101120000||OMI^O23^OMI_O23|OMI1|P|2.5.1||||||8859/1",
    "PID|||P2^^^HOSP^MR~NI55^^^INS^NI||ROE^RICHARD||19800202|M",
    "PV1||O",
    "ORC|NW|PLO1^RISNS|FLO1^IMGNS||SC",
    "TQ1|||||||202401151030",
    "OBR||PLO1^RISNS|FLO1^IMGNS|MRHEAD^MR Head^LOCAL",
    "IPC|ACCO1^RISNS|RPO1|1.2.3.78|SPSO1|MR|MRH^MR head^LOCAL|MR1|ROOM1|MR01",
]) + "\r"

# (order message, outbound profile, what the RIS must get back: placer, filler, PID-3,
# accession/RP/SPS as sent, study UID, SPS ID)
CASES = {
    "ORM^O01": (ORM, "outbound-orm-status", "PLR7^RISNS", "FPLR7^IMG", "P1^^^HOSP",
                ("ACCR7", "RPR7", "SPSR7"), "1.2.3.77", "SPSR7"),
    "OMI^O23": (OMI, "outbound-omi-status", "PLO1^RISNS", "FLO1^IMGNS",
                "P2^^^HOSP^MR~NI55^^^INS^NI", ("ACCO1^RISNS", "RPO1", "1.2.3.78", "SPSO1"),
                "1.2.3.78", "SPSO1"),
}


def _mpps(study_uid: str, sps_id: str) -> Dataset:
    return mpps_in_progress(study_uid, sps_id, PerformedProcedureStepStartDate="20240115",
                            PerformedProcedureStepStartTime="103005",
                            PerformedStationAETitle="CT_ROOM_1", Modality="CT")


def _send_mpps(port: int, dataset: Dataset, create: bool) -> int:
    ae = AE(ae_title="CT_ROOM_1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="BRIDGE_MWL")
    assert assoc.is_established
    try:
        if create:
            status, _ = assoc.send_n_create(dataset, ModalityPerformedProcedureStep, MPPS_UID)
        else:
            status, _ = assoc.send_n_set(dataset, ModalityPerformedProcedureStep, MPPS_UID)
    finally:
        assoc.release()
    return int(status.Status)


def _outbound(workdir: Path) -> list[tuple[str, str, int]]:
    db = sqlite3.connect(workdir / "data" / "bridge.sqlite")
    try:
        return db.execute("SELECT event, state, attempts FROM outbound ORDER BY id").fetchall()
    finally:
        db.close()


def _fields(message, name: str) -> list[str]:
    line = next(s for s in str(message).split("\r") if s.startswith(name + "|"))
    return line.split("|")


@pytest.mark.parametrize("case", sorted(CASES))
def test_mpps_status_reaches_the_ris_once_across_an_outage_and_a_restart(
        tmp_path: Path, case: str) -> None:
    order, profile, placer, filler, pid3, identifiers, study, sps = CASES[case]
    scp_port, ris_port = free_port(), free_port()
    ris = RisSimulator(ris_port)  # down until started
    workdir = tmp_path / "bridge"
    overrides = {"BRIDGE_SCP__ENABLED": "true", "BRIDGE_SCP__PORT": scp_port,
                 "BRIDGE_SINKS__FOLDER__PATH": tmp_path / "worklists",
                 "BRIDGE_RIS__ENABLED": "true", "BRIDGE_RIS__PORT": ris_port,
                 "BRIDGE_RIS__PROFILE": profile, "BRIDGE_RIS__MIN_BACKOFF": "0.2",
                 "BRIDGE_RIS__MAX_BACKOFF": "1", "BRIDGE_RIS__ACK_TIMEOUT": "5"}
    order_file = tmp_path / "order.hl7"
    order_file.write_bytes(order.encode("latin-1"))
    try:
        with run_bridge(workdir, overrides) as bridge:
            result = bridge.send(order_file)
            assert result.returncode == 0, result.stdout
            assert _send_mpps(scp_port, _mpps(study, sps), create=True) == 0
            # The RIS is down: the message waits and is retried, never given up.
            wait_for(lambda: [r for r in _outbound(workdir) if r[2] >= 2], timeout=20)
            assert _outbound(workdir)[0][:2] == ("in_progress", "pending")
            ris.start()
            wait_for(lambda: _outbound(workdir)[0][1] == "sent", timeout=20)
            time.sleep(1.5)  # room for a wrong second send
            assert ris.count() == 1

        with run_bridge(workdir, overrides):
            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            done.PerformedProcedureStepEndDate = "20240115"
            done.PerformedProcedureStepEndTime = "104510"
            assert _send_mpps(scp_port, done, create=False) == 0
            wait_for(lambda: ris.count() >= 2, timeout=20)
            wait_for(lambda: [r[1] for r in _outbound(workdir)] == ["sent", "sent"])
            time.sleep(1.5)
            assert ris.count() == 2
    finally:
        ris.stop()

    started, completed = ris.messages()
    for message, status in ((started, "IP"), (completed, "CM")):
        raw = str(message).encode("latin-1")
        report = check_bytes(raw, "8859/1")
        assert report.ok, [str(p) for p in report.problems]
        msh, orc, obr = (_fields(message, n) for n in ("MSH", "ORC", "OBR"))
        assert msh[8].split("^")[:2] == case.split("^")  # MSH-9 (MSH-1 is the "|")
        assert (orc[1], orc[5]) == ("SC", status)
        assert (orc[2], orc[3], obr[2], obr[3]) == (placer, filler, placer, filler)
        assert _fields(message, "PID")[3] == pid3
        assert obr[7] == "20240115103005"  # the step's start
        if case == "ORM^O01":
            assert tuple(obr[18:21]) == identifiers
            assert obr[21] == "CT_ROOM_1"  # the performing station
        else:
            ipc = _fields(message, "IPC")
            assert tuple(ipc[1:5]) == identifiers
            assert ipc[9] == "CT_ROOM_1"
    assert _fields(started, "ORC")[9] == "20240115103005"
    assert _fields(completed, "ORC")[9] == "20240115104510"
    assert _fields(completed, "OBR")[8] == "20240115104510"
    assert _fields(started, "MSH")[9] != _fields(completed, "MSH")[9]  # MSH-10
