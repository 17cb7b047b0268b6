"""The built-in SCP inside the running bridge: orders arriving over MLLP are answered at
once (the index follows commits), MPPS takes items off the MWL and out of the .wl folder,
and a restart rebuilds the index from the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification

from bridge.scp.server import set_nodelay

from peers import (
    FIXTURES,
    WORKLIST_RETURN_KEYS,
    findscu_worklist,
    free_port,
    run_bridge,
    wait_for,
)

pytestmark = pytest.mark.integration

# The three orders of the walking-skeleton test, read from the HL7 by hand.
ORDERS = {
    "dcm4che14__ORM_O01_v231_MESA101.hl7": ("MOF5000", "1.113654.3.13.1000", "SPS2000"),
    "dcm4che__ORM_O01_v231_2019.hl7": ("MOF5026", "1.113654.3.13.1026", "SPS2032"),
    "openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7": ("", "1.2.826.0.1.3680043.8.2186.1.1.1",
                                                   "2"),
}


def _mpps_ae() -> AE:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(Verification)
    return ae


def mpps_in_progress(study_uid: str, sps_id: str, **attributes: str) -> Dataset:
    """An MPPS N-CREATE's dataset for one scheduled step, with `attributes` on top."""
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.ScheduledProcedureStepID = sps_id
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _status_in_store(workdir: Path, accession: str) -> str:
    db = sqlite3.connect(workdir / "data" / "bridge.sqlite")
    try:
        rows = db.execute("SELECT status, dataset FROM items").fetchall()
    finally:
        db.close()
    return next(status for status, dataset in rows if f'"{accession}"' in dataset)


def test_orders_mpps_and_restart(tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "worklists"
    overrides = {"BRIDGE_SCP__ENABLED": "true", "BRIDGE_SCP__PORT": port,
                 "BRIDGE_SINKS__FOLDER__PATH": folder}
    workdir = tmp_path / "bridge"
    with run_bridge(workdir, overrides) as bridge:
        result = bridge.send(*(FIXTURES / name for name in ORDERS))
        assert result.returncode == 0, result.stdout
        answers = findscu_worklist(port, "BRIDGE_MWL", WORKLIST_RETURN_KEYS, tmp_path / "a1")
        assert sorted(str(ds.StudyInstanceUID) for ds in answers) == \
            sorted(uid for _, uid, _ in ORDERS.values())
        wait_for(lambda: len(list(folder.glob("*.wl"))) == 3)

        ae = _mpps_ae()
        assoc = ae.associate("127.0.0.1", port, ae_title="BRIDGE_MWL",
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        uid = "1.2.826.0.1.3680043.10.1445.77.1"
        status, _ = assoc.send_n_create(mpps_in_progress("1.113654.3.13.1026", "SPS2032"),
                                        ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        # IN PROGRESS: STARTED in the store, off the MWL and out of the folder.
        assert _status_in_store(workdir, "MOF5026") == "STARTED"
        answers = findscu_worklist(port, "BRIDGE_MWL", WORKLIST_RETURN_KEYS, tmp_path / "a2")
        assert "MOF5026" not in [str(ds.AccessionNumber) for ds in answers]
        assert len(answers) == 2
        wait_for(lambda: len(list(folder.glob("*.wl"))) == 2)

        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        assoc.release()
        assert _status_in_store(workdir, "MOF5026") == "COMPLETED"
        assert "C-FIND from TESTSCU" in bridge.log()  # the per-query log line

    # A restart builds the index from the store: the completed item stays off.
    with run_bridge(workdir, overrides):
        answers = findscu_worklist(port, "BRIDGE_MWL", WORKLIST_RETURN_KEYS, tmp_path / "a3")
        assert sorted(str(ds.AccessionNumber) for ds in answers) == ["", "MOF5000"]


def test_mpps_in_progress_survives_a_bridge_restart(tmp_path: Path) -> None:
    """N-CREATE (IN PROGRESS), the bridge restarted, then N-SET (COMPLETED): the instance is
    in the store, so the N-SET is accepted and the item COMPLETED. Before, the restarted
    bridge answered 0x0112 (no such instance) and the item stayed STARTED for ever."""
    port = free_port()
    overrides = {"BRIDGE_SCP__ENABLED": "true", "BRIDGE_SCP__PORT": port,
                 "BRIDGE_SINKS__FOLDER__PATH": tmp_path / "worklists"}
    workdir = tmp_path / "bridge"
    uid = "1.2.826.0.1.3680043.10.1445.77.2"
    with run_bridge(workdir, overrides) as bridge:
        name = "dcm4che__ORM_O01_v231_2019.hl7"
        assert bridge.send(FIXTURES / name).returncode == 0
        _, study, sps = ORDERS[name]
        assoc = _mpps_ae().associate("127.0.0.1", port, ae_title="BRIDGE_MWL")
        status, _ = assoc.send_n_create(mpps_in_progress(study, sps),
                                        ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        assoc.release()
        assert _status_in_store(workdir, "MOF5026") == "STARTED"

    with run_bridge(workdir, overrides) as bridge:
        assoc = _mpps_ae().associate("127.0.0.1", port, ae_title="BRIDGE_MWL")
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        # Completed is final: a further N-SET is refused (0110), not taken as unknown.
        assert assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)[0].Status == 0x0110
        assoc.release()
        assert _status_in_store(workdir, "MOF5026") == "COMPLETED"
        # The RIS then sends an XO for the order (new MSH-10, new time): COMPLETED is final,
        # the item stays done and off the worklist; the journal says why.
        raw = (FIXTURES / name).read_bytes()
        xo = tmp_path / "xo.hl7"
        xo.write_bytes(raw.replace(b"|103106|", b"|103106XO|").replace(b"ORC|NW|", b"ORC|XO|")
                       .replace(b"200007010900", b"200007021000"))
        assert bridge.send(xo).returncode == 0
        assert _status_in_store(workdir, "MOF5026") == "COMPLETED"
        answers = findscu_worklist(port, "BRIDGE_MWL", WORKLIST_RETURN_KEYS, tmp_path / "a")
        assert "MOF5026" not in [str(ds.AccessionNumber) for ds in answers]
        db = sqlite3.connect(workdir / "data" / "bridge.sqlite")
        try:
            [note] = db.execute("SELECT error FROM journal WHERE control_id = '103106XO'"
                                ).fetchone()
        finally:
            db.close()
        assert "is COMPLETED; XO not applied" in note
