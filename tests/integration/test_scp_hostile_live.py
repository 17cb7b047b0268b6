"""The running bridge's SCP against a hostile modality: a query that used to hold a core for
minutes, idle connections from a scanner, and what reaches the bridge's log about queries
carrying patient data (log_phi is off in the shipped config)."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from bridge.scp.server import set_nodelay

from orders import orm
from peers import free_port, run_bridge

pytestmark = pytest.mark.integration

NAME, PATIENT_ID, BIRTH_DATE = "HOSTILE^PHILIPPA", "PHI778899", "19700101"
DESCRIPTION = "CT THORAX ABDOMEN BECKEN MIT KONTRASTMITTEL"


def c_find(port: int, query: Dataset) -> tuple[list[Dataset], int, float]:
    """Answers, final status and seconds of one C-FIND; a modality that waits 10 s at
    most for each response (pynetdicom's default is 30 s)."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.dimse_timeout = 10
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="BRIDGE_MWL",
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    assert assoc.is_established
    answers, final = [], None
    try:
        for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status is not None and "Status" in status, "no answer in time"
            if status.Status in (0xFF00, 0xFF01):
                answers.append(ds)
            else:
                final = status.Status
    finally:
        assoc.release()
    return answers, final, time.monotonic() - started


def worklist_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.RequestedProcedureDescription = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    step = Dataset()
    step.Modality = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def test_hostile_queries_against_the_running_bridge(tmp_path: Path) -> None:
    port = free_port()
    order = tmp_path / "order.hl7"
    order.write_text(orm("HOSTILE1", name=NAME, patient_id=PATIENT_ID, accession="HACC1",
                         description=DESCRIPTION))
    overrides = {"BRIDGE_SCP__ENABLED": "true", "BRIDGE_SCP__PORT": port,
                 "BRIDGE_SINKS__FOLDER__ENABLED": "false"}
    with run_bridge(tmp_path / "bridge", overrides) as bridge:
        sent = bridge.send(order)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        # Queries carrying the patient's data: answered, and the log keeps none of it.
        for query in (worklist_query(PatientName=NAME, PatientID=PATIENT_ID,
                                     PatientBirthDate=BIRTH_DATE),
                      worklist_query(PatientName="HOSTILE^PHIL*")):
            answers, final, _ = c_find(port, query)
            assert final == 0x0000
            assert [str(a.AccessionNumber) for a in answers] == ["HACC1"]

        # As a regular expression this held a core (and the GIL) for 19 minutes.
        answers, final, seconds = c_find(port, worklist_query(
            RequestedProcedureDescription="*?*?*?*?*?*?*?*?*?*?*?*?*?*?Z"))
        assert final == 0x0000 and answers == []
        assert seconds < 2.0

        # A scanner's 40 idle connections (more than the 32 association slots).
        with ExitStack() as stack:
            for _ in range(40):
                s = stack.enter_context(closing(socket.socket()))
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
            answers, final, seconds = c_find(port, worklist_query(AccessionNumber="HACC1"))
            assert final == 0x0000 and len(answers) == 1
            assert seconds < 5.0

        log = bridge.log()
    assert "C-FIND from CT01" in log and "PatientName~value" in log
    for value in (NAME, "HOSTILE", PATIENT_ID, BIRTH_DATE):
        assert value not in log, f"{value} in the bridge's log"
