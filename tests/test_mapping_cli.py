"""`translate` and `check-mapping`, as a user runs them; expected values read from the HL7."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli import main

from mapping_helpers import FIXTURES, HEAD, ROOT, SHIPPED, write

CONFIG = ROOT / "config.yaml"
MESA = FIXTURES / "dcm4che__ORM_O01_v231_2019.hl7"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_translate_prints_dicom_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "translate", str(MESA), "--config", str(CONFIG))
    assert code == 0, err
    (item,) = json.loads(out)
    # PS3.18 F.2: tag keys, vr, Value lists; PN as {"Alphabetic": ...}
    assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^J1"}]}
    assert item["00100020"] == {"vr": "LO", "Value": ["583295"]}
    assert item["00080050"] == {"vr": "SH", "Value": ["MOF5026"]}
    assert item["0020000D"] == {"vr": "UI", "Value": ["1.113654.3.13.1026"]}
    (sps,) = item["00400100"]["Value"]
    assert sps["00080060"] == {"vr": "CS", "Value": ["MR"]}
    assert sps["00400009"] == {"vr": "SH", "Value": ["SPS2032"]}
    assert sps["00400002"] == {"vr": "DA", "Value": ["20000701"]}
    assert "profile ihe-orm-o01" in err


def test_translate_dump_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "translate", str(MESA), "--mapping",
                         str(SHIPPED / "ihe-orm-o01.yaml"), "--format", "dump", "--trace")
    assert code == 0, err
    assert "(0010,0020) LO [583295]" in out
    assert "(0040,0100) SQ (Sequence with 1 item)" in out
    assert "    (0008,0060) CS [MR]" in out
    # The trace: per attribute, the path it came from and the transforms it went through
    assert "ScheduledProcedureStepSequence[0].Modality = 'MR'  <- OBR-24 | text" in err
    assert "PatientName = 'DOE^J1'  <- PID-5 | pn" in err
    assert "RequestedProcedurePriority = 'STAT'  <- ORC-7.6 | text, map" in err
    assert "PregnancyStatus = (left out)  <- when | skipped: not (PV1-15 is 'B6')" in err


def test_translate_vendor_profile_shows_lookup_and_truncation(
        capsys: pytest.CaptureFixture[str]) -> None:
    msg = FIXTURES / "lfh-hl7v2fhir__ORM_O01_v23_SN_DWI-MR.hl7"
    code, out, err = run(capsys, "translate", str(msg), "--config", str(CONFIG), "--trace")
    assert code == 0, err
    (item,) = json.loads(out)
    assert item["00400100"]["Value"][0]["00080060"]["Value"] == ["MR"]  # 4916 in the CSV
    assert "profile vendor-whi-load-generator" in err
    assert "Modality = 'MR'  <- OBR-4.1 | text, lookup whi-procedures.csv" in err
    assert "warning: AccessionNumber: truncated from 36 to 16 characters (SH)" in err


def test_translate_missing_required_value_exits_2_naming_field_and_rule(
        capsys: pytest.CaptureFixture[str]) -> None:
    msg = FIXTURES / "hl7dotnetcore__ORM_O01_v23_CRLF_escapes-X0D-H-N-br.hl7"
    code, _out, err = run(capsys, "translate", str(msg), "--config", str(CONFIG))
    assert code == 2
    assert "Modality is required but OBR-24 is empty (rule at " \
           f"{SHIPPED / 'ihe-orm-o01.yaml'}:" in err


def test_translate_cancel_needs_no_items(capsys: pytest.CaptureFixture[str]) -> None:
    # ORC|CA|1410|3121||CA: no modality, but a cancel is applied by its key alone
    msg = FIXTURES / "nhapi-EncodingCharactersTests__ORM_O01_v23_CA-cancel_RX-addome.hl7"
    code, out, err = run(capsys, "translate", str(msg), "--config", str(CONFIG))
    assert code == 0, err
    assert json.loads(out) == []
    assert "order 1 (1410): ORC-1 'CA', ORC-5 'CA': CANCELED, needs no items" in err


def test_translate_message_without_profile_exits_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    siu = tmp_path / "siu.hl7"
    siu.write_text("MSH|^~\\&|SCHED|H|BR|H|20240101||SIU^S12|S1|P|2.5\rSCH|1\r")
    code, _, err = run(capsys, "translate", str(siu), "--config", str(CONFIG))
    assert code == 2
    assert "no mapping profile for SIU^S12 from SCHED/H" in err


def test_translate_adt_shows_the_patient_update(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "translate", str(FIXTURES / "dcm4che14__ADT_A40_v231_MESA.hl7"),
                       "--config", str(CONFIG))
    # MRG-1 T9020 merges into PID-3 583220, named DOE^J2 in PID-5.
    assert code == 0
    assert "A40 items of patient 'T9020' move to '583220'" in err
    assert "PatientName='DOE^J2'" in err


def test_translate_not_hl7_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.hl7"
    junk.write_text("hello")
    code, _, err = run(capsys, "translate", str(junk), "--config", str(CONFIG))
    assert code == 2
    assert "does not start with an MSH segment" in err


def test_translate_bad_mapping_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, HEAD + "  PatientsName: PID-5\n", "bad.yaml")
    code, _, err = run(capsys, "translate", str(MESA), "--mapping", str(bad))
    assert code == 1
    assert f"{bad}:5:3: 'PatientsName' is not a DICOM keyword" in err


def test_check_mapping_ok_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in SHIPPED.glob("*.yaml"))
    code, out, _ = run(capsys, "check-mapping", *files)
    assert code == 0
    assert f"{SHIPPED / 'vendor-dmc-radis.yaml'}: profile vendor-dmc-radis ok (ORM^O01, " \
           "extends ihe-orm-o01)" in out
    bad = write(tmp_path, HEAD + "  PatientID: {from: PID-3, requried: true}\n", "bad.yaml")
    code, out, err = run(capsys, "check-mapping", str(bad))
    assert code == 1
    assert f"{bad}:5:28: PatientID: unknown key 'requried'" in err


def test_the_first_mapping_of_the_docs_works(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    docs = (ROOT / "docs" / "mapping.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    mapping = write(tmp_path, example.replace("sending_application: MYRIS",
                                              "sending_application: MESA_OF"), "my-ris.yaml")
    code, out, err = run(capsys, "translate", str(MESA), "--mapping", str(mapping))
    assert code == 0, err
    (item,) = json.loads(out)
    assert item["00080050"]["Value"] == ["MOF5026"]  # OBR-18
    assert item["00400100"]["Value"][0]["00400009"]["Value"] == ["SPS2032"]  # OBR-20


# --- issue 16: mappings that cannot fail quietly ------------------------------------------

def _base_and(tmp_path: Path, child: str) -> Path:
    """A child profile next to a copy of the shipped ORM baseline, as an integrator has it."""
    (tmp_path / "ihe-orm-o01.yaml").write_text((SHIPPED / "ihe-orm-o01.yaml").read_text())
    return write(tmp_path, child, "site.yaml")


def test_check_mapping_fails_on_a_step_sequence_of_two_items(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 16.1: the station AE and the modality written as two list items replaced the whole
    # inherited step with a two-item sequence; check-mapping said "ok".
    site = _base_and(tmp_path, """\
        profile: site
        extends: ihe-orm-o01
        match: {sending_application: SITE}
        attributes:
          ScheduledProcedureStepSequence:
            - ScheduledStationAETitle: {value: CT01}
            - Modality: {from: OBR-21, required: true}
        """)
    code, out, err = run(capsys, "check-mapping", str(site))
    assert code == 1, out
    assert f"{site}:5:3: ScheduledProcedureStepSequence must have exactly one item" in err
    assert "this profile gives 2" in err
    # Written as one item, it merges with the base's step and keeps the rest.
    site.write_text(site.read_text().replace("    - Modality", "      Modality"))
    code, out, err = run(capsys, "check-mapping", str(site))
    assert code == 0, err
    assert "warning" not in out


def test_check_mapping_warns_about_items_a_peer_would_ignore(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 14.3: no source at all for a description or a code: every item would be skipped.
    bare = write(tmp_path, HEAD + """\
          PatientID: PID-3.1
          PatientName: PID-5
          RequestedProcedureID: OBR-19
          StudyInstanceUID: {from: ZDS-1.1, uid_from: OBR-18}
          ScheduledProcedureStepSequence:
            - Modality: OBR-24
              ScheduledStationAETitle: {value: ANY}
              ScheduledProcedureStepStartDate: {from: ORC-7.4, as: date}
              ScheduledProcedureStepStartTime: {from: ORC-7.4, as: time}
              ScheduledProcedureStepDescription: OBR-4.2
        """, "bare.yaml")
    code, out, err = run(capsys, "check-mapping", str(bare))
    assert code == 0, err
    assert f"  warning: {bare}:1:1: no rule for RequestedProcedureDescription nor " \
           "RequestedProcedureCodeSequence" in out
    assert f"  warning: {bare}:1:1: no rule for ScheduledProcedureStepSequence[0]." \
           "ScheduledProcedureStepID" in out


def test_translate_shows_required_and_lists_what_came_out_empty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 16.2: an RIS that puts the accession in OBR-3: AA with an empty AccessionNumber.
    from orders import orm

    message = tmp_path / "obr3.hl7"
    message.write_text(orm("E1", accession=""))
    code, _, err = run(capsys, "translate", str(message), "--config", str(CONFIG), "--trace")
    assert code == 0, err
    assert "AccessionNumber = ''  <- OBR-18 | text, optional, empty" in err
    assert "PatientID = 'P1'  <- PID-3.1 | text, required" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("# order 1, item 1: empty: ") and "AccessionNumber" in last
    assert "PatientID" not in last


def test_translate_shows_what_a_derived_uid_is_made_of(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 16.3: a derived UID depends on MSH-3/MSH-4 and the rule's path, not only the order.
    from orders import orm

    message = tmp_path / "nouid.hl7"
    message.write_text(orm("U1", study_uid=""))
    code, _, err = run(capsys, "translate", str(message), "--config", str(CONFIG), "--trace")
    assert code == 0, err
    assert "StudyInstanceUID = '2.25." in err and "<- uid from OBR-18" in err
    assert "    derived from: sender 'RIS|HOSP' (MSH-3|MSH-4), rule path 'OBR-18', value " \
           "'ACC1', root 2.25" in err
    # The same order from a renamed sending application gets another UID: that is why.
    other = tmp_path / "renamed.hl7"
    other.write_text(orm("U1", study_uid="", sender="RIS2"))
    _, out1, _ = run(capsys, "translate", str(message), "--config", str(CONFIG))
    _, out2, _ = run(capsys, "translate", str(other), "--config", str(CONFIG))
    assert json.loads(out1)[0]["0020000D"] != json.loads(out2)[0]["0020000D"]


def test_translate_and_check_mapping_suggest_keywords(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, HEAD + "  AccesionNumber: OBR-18\n", "typo.yaml")
    code, _, err = run(capsys, "check-mapping", str(bad))
    assert code == 1
    assert f"{bad}:5:3: 'AccesionNumber' is not a DICOM keyword (did you mean " \
           "AccessionNumber?)" in err
