"""The walking skeleton, end to end with real peers: an ORM^O01 over MLLP becomes a .wl
file that DCMTK wlmscpfs and Orthanc 1.10.1 (ModalityWorklists plugin) serve to findscu."""

from __future__ import annotations

from pathlib import Path

import pytest

from peers import (
    FIXTURES,
    WORKLIST_RETURN_KEYS,
    findscu_worklist,
    run_bridge,
    run_orthanc,
    run_wlmscpfs,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.backends]


def on(store_target: str | None, **env: object) -> dict:
    """The bridge's environment overrides, on PostgreSQL when `store_target` names it."""
    return {**env, **({"BRIDGE_STORE__URL": store_target} if store_target else {})}

# What each message says, read from the HL7 by hand (field by field), and what a modality
# must therefore see.
EXPECTED = {
    "dcm4che14__ORM_O01_v231_MESA101.hl7": {
        "control_id": "101106",
        "PatientName": "WHITE^CHARLES", "PatientID": "583020", "PatientBirthDate": "19980704",
        "PatientSex": "M", "AccessionNumber": "MOF5000",
        "StudyInstanceUID": "1.113654.3.13.1000", "RequestedProcedureID": "RP1000",
        "RequestedProcedureDescription": "Procedure 1",
        "sps": {"Modality": "MR", "ScheduledProcedureStepID": "SPS2000",
                "ScheduledProcedureStepDescription": "SP Action Item X1_A1",
                # ORC-7.4 and OBR-27.4 are empty: ORC-9 (200004210950) is the fallback
                "ScheduledProcedureStepStartDate": "20000421",
                "ScheduledProcedureStepStartTime": "0950",
                "ScheduledStationAETitle": "ANY"},
    },
    "dcm4che__ORM_O01_v231_2019.hl7": {
        "control_id": "103106",
        "PatientName": "DOE^J1", "PatientID": "583295", "PatientBirthDate": "",
        "PatientSex": "M", "AccessionNumber": "MOF5026",
        "StudyInstanceUID": "1.113654.3.13.1026", "RequestedProcedureID": "RP1026",
        "RequestedProcedureDescription": "Procedure 1",
        "sps": {"Modality": "MR", "ScheduledProcedureStepID": "SPS2032",
                "ScheduledProcedureStepDescription": "SP Action Item X1_A1",
                "ScheduledProcedureStepStartDate": "20000701",
                "ScheduledProcedureStepStartTime": "0900",
                "ScheduledStationAETitle": "ANY"},
    },
    "openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7": {
        "control_id": "",  # MSH-10 is empty in this message
        "PatientName": "Patient^Johnny^D", "PatientID": "100-07",
        "PatientBirthDate": "19651007", "PatientSex": "M", "AccessionNumber": "",
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.2186.1.1.1", "RequestedProcedureID": "2",
        "RequestedProcedureDescription": "CT ABDOMEN PANCREAS WITH IV CONTRAST",
        "sps": {"Modality": "CT", "ScheduledProcedureStepID": "2",
                "ScheduledProcedureStepDescription": "CT ABDOMEN PANCREAS WITH IV CONTRAST",
                "ScheduledProcedureStepStartDate": "20130824",
                "ScheduledProcedureStepStartTime": "170000",
                "ScheduledStationAETitle": "ANY"},
    },
}


def _send_all(bridge) -> None:
    files = [FIXTURES / name for name in EXPECTED]
    result = bridge.send(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, expected in EXPECTED.items():
        block = result.stdout.split(f"# {FIXTURES / name}: ")[1].split("\n# ")[0]
        assert block.startswith("AA"), block
        msa = next(line for line in block.splitlines() if line.startswith("MSA|"))
        assert msa.split("|")[1:3] == ["AA", expected["control_id"]]


def _check_answers(answers) -> None:
    by_patient = {str(ds.PatientID): ds for ds in answers}
    assert len(answers) == len(EXPECTED), [str(ds.PatientID) for ds in answers]
    for expected in EXPECTED.values():
        ds = by_patient[expected["PatientID"]]
        for key in ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyInstanceUID", "RequestedProcedureID",
                    "RequestedProcedureDescription"):
            assert str(ds.get(key, "")) == expected[key], key
        sps = ds.ScheduledProcedureStepSequence[0]
        for key, value in expected["sps"].items():
            assert str(sps.get(key, "")) == value, key


def test_orders_served_by_wlmscpfs(tmp_path: Path, store_target) -> None:
    # wlmscpfs serves <dfp>/<called AE>/: the flat folder sink writes into that AE folder.
    folder = tmp_path / "wlm" / "WORKLIST"
    with run_bridge(tmp_path / "bridge", on(store_target, BRIDGE_SINKS__FOLDER__PATH=folder)
                    ) as bridge:
        _send_all(bridge)
        wait_for(lambda: len(list(folder.glob("*.wl"))) == len(EXPECTED))
        assert (folder / "lockfile").exists()
        with run_wlmscpfs(tmp_path / "wlm") as port:
            answers = findscu_worklist(port, "WORKLIST", WORKLIST_RETURN_KEYS,
                                       tmp_path / "answers")
            _check_answers(answers)
            # A selective query: one accession number, one answer.
            one = findscu_worklist(port, "WORKLIST",
                                   [*WORKLIST_RETURN_KEYS[:5], "AccessionNumber=MOF5026",
                                    *WORKLIST_RETURN_KEYS[6:]], tmp_path / "one")
            assert [str(ds.PatientID) for ds in one] == ["583295"]


def test_orders_served_by_wlmscpfs_by_station_layout(tmp_path: Path, store_target) -> None:
    root = tmp_path / "wlm"
    with run_bridge(tmp_path / "bridge", on(store_target, BRIDGE_SINKS__FOLDER__PATH=root,
                                            BRIDGE_SINKS__FOLDER__LAYOUT="by_station_ae")) \
            as bridge:
        _send_all(bridge)
        wait_for(lambda: len(list((root / "ANY").glob("*.wl"))) == len(EXPECTED))
        assert (root / "ANY" / "lockfile").exists()
        with run_wlmscpfs(root) as port:
            _check_answers(findscu_worklist(port, "ANY", WORKLIST_RETURN_KEYS,
                                            tmp_path / "answers"))


def test_orders_served_by_orthanc(tmp_path: Path, store_target) -> None:
    folder = tmp_path / "orthanc-worklists"
    with run_bridge(tmp_path / "bridge", on(store_target, BRIDGE_SINKS__FOLDER__PATH=folder)
                    ) as bridge:
        _send_all(bridge)
        wait_for(lambda: len(list(folder.glob("*.wl"))) == len(EXPECTED))
        with run_orthanc(tmp_path / "orthanc", folder) as port:
            _check_answers(findscu_worklist(port, "ORTHANC", WORKLIST_RETURN_KEYS,
                                            tmp_path / "answers"))


def test_failures_answer_ae_ar_and_keep_serving(tmp_path: Path, store_target) -> None:
    """A message with no modality gets AE naming OBR-24, a scheduling message (no profile
    for SIU) gets AR 200; the same connection then still takes an order."""
    siu = tmp_path / "siu.hl7"
    siu.write_text("MSH|^~\\&|SCHED|H|BR|H|20240101||SIU^S12|S1|P|2.5\rSCH|1\r")
    with run_bridge(tmp_path / "bridge", on(store_target)) as bridge:
        result = bridge.send(FIXTURES / "msfhirconv__ORM-O01-03.hl7", siu,
                             FIXTURES / "dcm4che__ORM_O01_v231_2019.hl7")
        blocks = result.stdout.split("# ")[1:]
        assert [b.split(": ")[1][:2] for b in blocks] == ["AE", "AR", "AA"]
        err_ae = next(line for line in blocks[0].splitlines() if line.startswith("ERR|"))
        assert err_ae.split("|")[2] == "OBR^1^24^1"
        assert err_ae.split("|")[3].startswith("101^")
        err_ar = next(line for line in blocks[1].splitlines() if line.startswith("ERR|"))
        assert err_ar.split("|")[2:4] == ["MSH^1^9^1", "200^Unsupported message type^HL70357"]
        assert result.returncode == 1  # send exits 1 when any ACK is not AA
        folder = bridge.workdir / "data" / "worklists"
        wait_for(lambda: len(list(folder.glob("*.wl"))) == 1)
