"""Each construct of the mapping language (docs/mapping.md), on real published messages.

Expected values are read from the HL7 messages in tests/fixtures/hl7, field by field.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.decoding import decode
from bridge.dicomfile import to_dataset
from bridge.mapping.engine import NoProfile, apply_profile, select_profile
from bridge.mapping.loader import load_profile, load_profiles
from bridge.mapping.patient import PatientProfile
from bridge.mapping.rules import MappingFieldError
from bridge.message import Message

from mapping_helpers import item, items, mapped, message, profile, text_message, write

GHH = "msfhirconv__ORM-O01-01.hl7"  # PID-3 with two repetitions, PID-5 with two names
GHH_TWO = "msfhirconv__ORM-O01-03.hl7"  # two ORC/OBR groups
MESA = "dcm4che__ORM_O01_v231_2019.hl7"
MESA101 = "dcm4che14__ORM_O01_v231_MESA101.hl7"


# --- source paths -------------------------------------------------------------------------

def test_component_and_subcomponent(tmp_path: Path) -> None:
    # PID-3 = PATID1234^5^M11^test1&2.16.1&HCD^MR^...: component 4 is test1&2.16.1&HCD
    p = profile(tmp_path, """
        PatientID: PID-3.1
        IssuerOfPatientID: PID-3.4.1
        OtherPatientIDs: PID-3.4.2
    """)
    got = item(p, message(GHH))
    assert got == {"PatientID": "PATID1234", "IssuerOfPatientID": "test1",
                   "OtherPatientIDs": "2.16.1"}


def test_repetition_by_index_and_by_component_value(tmp_path: Path) -> None:
    # PID-3 repeats: PATID1234^...^MR^... ~ 123456789^^^USSSA^SS
    p = profile(tmp_path, """
        PatientID: PID-3[5=SS].1
        IssuerOfPatientID: PID-3[2].4
        OtherPatientIDs: PID-3[5=MR].1
    """)
    got = item(p, message(GHH))
    assert got == {"PatientID": "123456789", "IssuerOfPatientID": "USSSA",
                   "OtherPatientIDs": "PATID1234"}


def test_every_repetition_becomes_a_multi_value(tmp_path: Path) -> None:
    p = profile(tmp_path, "OtherPatientIDs: {from: 'PID-3[*].1'}\n")
    assert item(p, message(GHH))["OtherPatientIDs"] == "PATID1234\\123456789"


def test_segment_chosen_by_a_field_value(tmp_path: Path) -> None:
    # OMG eyecare: OBX|1|ST|^Body Weight||65|kg and OBX|2|ST|^Body Height||1.65|m
    head = "profile: t\nmatch: {message_type: OMG^O19}\norder: {key: ORC-2, control: ORC-1, " \
           "status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, """
        PatientWeight: OBX[3.2=Body Weight]-5
        PatientSize: OBX[2]-5
    """, head=head)
    got = item(p, message("dcm4che__OMG_O19-GeneralClinicalOrder-Eyecare_2022.hl7"))
    assert got == {"PatientWeight": "65", "PatientSize": "1.65"}


def test_segments_are_read_in_the_current_order_group(tmp_path: Path) -> None:
    # Two groups: OBR-4 24725-4^CT Head^LN, OBR-7 ...1200+0215; then 24590-2^MR Brain^LN, 1300
    p = profile(tmp_path, """
        PatientID: PID-3.1
        RequestedProcedureDescription: OBR-4.2
        ScheduledProcedureStepSequence:
          - ScheduledProcedureStepStartTime: {from: OBR-7, as: time}
    """)
    got = items(p, message(GHH_TWO))
    assert [(i["PatientID"], i["RequestedProcedureDescription"],
             i["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStartTime"])
            for i in got] == [("PATID1234", "CT Head", "1200"), ("PATID1234", "MR Brain", "1300")]
    orders = mapped(p, message(GHH_TWO)).orders
    assert [o.key for o in orders] == ["1101^GHHPlacer", "2203^GHHPlacer"]


def test_first_non_empty_source(tmp_path: Path) -> None:
    # MESA101: ORC-7.4 and OBR-27.4 empty, ORC-9 = 200004210950
    p = profile(tmp_path, """
        ScheduledProcedureStepSequence:
          - ScheduledProcedureStepStartDate: {from: [ORC-7.4, OBR-27.4, ORC-9], as: date}
    """)
    trace = mapped(p, message(MESA101)).traces[0]
    assert item(p, message(MESA101))["ScheduledProcedureStepSequence"] == [
        {"ScheduledProcedureStepStartDate": "20000421"}]
    assert trace.entries[0].source == "ORC-9"


def test_constant_and_default(tmp_path: Path) -> None:
    # MESA 2019: OBR-30 = WALK; OBR-31 (reason) empty
    p = profile(tmp_path, """
        InstitutionName: {value: General Hospital}
        ReasonForTheRequestedProcedure: {from: OBR-31, default: not given}
        ScheduledProcedureStepSequence:
          - ScheduledProcedureStepLocation: {from: OBR-30, default: ROOM 1}
    """)
    assert item(p, message(MESA)) == {
        "InstitutionName": "General Hospital", "ReasonForTheRequestedProcedure": "not given",
        "ScheduledProcedureStepSequence": [{"ScheduledProcedureStepLocation": "WALK"}]}


# --- transforms ---------------------------------------------------------------------------

def test_dates_times_and_time_zone(tmp_path: Path) -> None:
    # GHH_TWO: ORC-7.4 = 202110201126+0215; PID-7 = 198808181126+0215
    p = profile(tmp_path, """
        PatientBirthDate: {from: PID-7, as: date}
        TimezoneOffsetFromUTC: {from: ORC-7.4, as: timezone}
        ScheduledProcedureStepSequence:
          - ScheduledProcedureStepStartDate: {from: ORC-7.4, as: date}
            ScheduledProcedureStepStartTime: {from: ORC-7.4, as: time}
    """)
    first = items(p, message(GHH_TWO))[0]
    assert first == {"PatientBirthDate": "19880818", "TimezoneOffsetFromUTC": "+0215",
                     "ScheduledProcedureStepSequence": [{
                         "ScheduledProcedureStepStartDate": "20211020",
                         "ScheduledProcedureStepStartTime": "1126"}]}


def test_person_names(tmp_path: Path) -> None:
    # PID-5 = EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^...~Josh&&&&Bing^^stanley^^^^L
    # ORC-12 = 3850^ORDPROVIDER^JONES^A^^^ (XCN: ID first)
    p = profile(tmp_path, """
        PatientName: {from: PID-5, as: pn}
        PatientBirthName: {from: 'PID-5[7=L]', as: pn}
        RequestingPhysician: {from: ORC-12, as: xcn}
    """)
    assert item(p, message(GHH)) == {
        "PatientName": "EVERYMAN^ADAM^A^Dr.^III",  # DICOM: family^given^middle^prefix^suffix
        "PatientBirthName": "Josh^^stanley",
        "RequestingPhysician": "ORDPROVIDER^JONES^A"}


def test_code_items(tmp_path: Path) -> None:
    # MESA 2019 OBR-4 = P1^Procedure 1^ERL_MESA^X1_A1^SP Action Item X1_A1^DSS_MESA
    p = profile(tmp_path, """
        RequestedProcedureCodeSequence: {from: OBR-4, as: code}
        ScheduledProcedureStepSequence:
          - ScheduledProtocolCodeSequence: {from: OBR-4, as: code_alternate}
            ScheduledProcedureStepDescription: OBR-4.5
    """)
    assert item(p, message(MESA)) == {
        "RequestedProcedureCodeSequence": [{"CodeValue": "P1", "CodingSchemeDesignator":
                                            "ERL_MESA", "CodeMeaning": "Procedure 1"}],
        "ScheduledProcedureStepSequence": [{
            "ScheduledProtocolCodeSequence": [{
                "CodeValue": "X1_A1", "CodingSchemeDesignator": "DSS_MESA",
                "CodeMeaning": "SP Action Item X1_A1"}],
            "ScheduledProcedureStepDescription": "SP Action Item X1_A1"}]}


def test_incomplete_code_leaves_the_sequence_out_with_a_warning(tmp_path: Path) -> None:
    # openmrs: OBR-44 = ^CT ABDOMEN PANCREAS WITH IV CONTRAST (no code value)
    p = profile(tmp_path, """
        RequestedProcedureDescription: OBR-44.2
        RequestedProcedureCodeSequence: {from: OBR-44, as: code}
    """)
    msg = message("openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7")
    assert item(p, msg) == {"RequestedProcedureDescription":
                            "CT ABDOMEN PANCREAS WITH IV CONTRAST"}
    assert any("RequestedProcedureCodeSequence" in w and "incomplete code" in w
               for w in mapped(p, msg).warnings)


def test_code_items_from_every_repetition(tmp_path: Path) -> None:
    msg = text_message(
        "MSH|^~\\&|RIS|H|PACS|H|20240101||ORM^O01|1|P|2.3.1\n"
        "PID|||42\nORC|NW|A1\nOBR|1|A1||C1^Chest^LOCAL~C2^Abdomen^LOCAL\n")
    p = profile(tmp_path, "RequestedProcedureCodeSequence: {from: 'OBR-4[*]', as: code}\n")
    assert item(p, msg)["RequestedProcedureCodeSequence"] == [
        {"CodeValue": "C1", "CodingSchemeDesignator": "LOCAL", "CodeMeaning": "Chest"},
        {"CodeValue": "C2", "CodingSchemeDesignator": "LOCAL", "CodeMeaning": "Abdomen"}]


def test_explicit_code_item_and_empty_items_left_out(tmp_path: Path) -> None:
    # MESA 2019: OBR-4.4/.5/.6 = X1_A1 / SP Action Item X1_A1 / DSS_MESA; ZDS has no field 5
    p = profile(tmp_path, """
        ScheduledProcedureStepSequence:
          - ScheduledProtocolCodeSequence:
              - CodeValue: OBR-4.4
                CodingSchemeDesignator: OBR-4.6
                CodeMeaning: OBR-4.5
        ReferencedStudySequence:
          - ReferencedSOPClassUID: ZDS-5
            ReferencedSOPInstanceUID: ZDS-6
    """)
    assert item(p, message(MESA)) == {"ScheduledProcedureStepSequence": [{
        "ScheduledProtocolCodeSequence": [{"CodeValue": "X1_A1", "CodingSchemeDesignator":
                                           "DSS_MESA", "CodeMeaning": "SP Action Item X1_A1"}]}]}


def test_value_map_with_default(tmp_path: Path) -> None:
    # MESA 2019: ORC-7.6 = S; PID-8 = M
    p = profile(tmp_path, """
        RequestedProcedurePriority: {from: ORC-7.6, map: {S: STAT, R: ROUTINE}}
        PatientSex: {from: PID-8, map: {F: F}, map_default: O}
    """)
    assert item(p, message(MESA)) == {"RequestedProcedurePriority": "STAT", "PatientSex": "O"}


def test_lookup_table_from_a_csv_file(tmp_path: Path) -> None:
    # DMC NW: OBR-4 = 38067^CT BIOPSY (91-MIN OR MORE)^L
    (tmp_path / "codes.csv").write_text("code,modality,station\n38067,CT,CT_ROOM_1\n")
    p = profile(tmp_path, """
        ScheduledProcedureStepSequence:
          - Modality: {from: OBR-4.1, lookup: codes.csv}
            ScheduledStationAETitle: {from: OBR-4.1, lookup: {file: codes.csv, key: code,
                                      value: station}}
    """)
    msg = message("hapi-npac-dmc__ORM_O01_v22_NW-new.hl7")
    assert item(p, msg) == {"ScheduledProcedureStepSequence": [
        {"Modality": "CT", "ScheduledStationAETitle": "CT_ROOM_1"}]}
    entry = mapped(p, msg).traces[0].entries[0]
    assert entry.transforms == ["text", "lookup codes.csv"]


def test_regex_replace_with_backreferences(tmp_path: Path) -> None:
    # MESA101: PID-7 = 19980704; MESA 2019 OBR-2 = A103Z^MESA_ORDPLC
    p = profile(tmp_path, r"""
        PatientComments: {from: PID-7, replace: {'^(\d{4})(\d{2})(\d{2})$': '\3.\2.\1'}}
    """)
    assert item(p, message(MESA101)) == {"PatientComments": "04.07.1998"}


def test_template_joins_values(tmp_path: Path) -> None:
    # MESA 2019: OBR-4.1 = P1, OBR-4.2 = Procedure 1, OBR-24 = MR
    p = profile(tmp_path, """
        RequestedProcedureDescription: {template: '{OBR-24} {OBR-4.2} ({OBR-4.1})'}
    """)
    assert item(p, message(MESA)) == {"RequestedProcedureDescription": "MR Procedure 1 (P1)"}


def test_truncation_to_the_vr_length_warns_in_the_trace(tmp_path: Path) -> None:
    # WHI: ORC-3 = ACCESSION_a42990b7-4155-4404-81ef-e85158caed72 (46 characters)
    p = profile(tmp_path, "AccessionNumber: ORC-3.1\n")
    msg = message("lfh-hl7v2fhir__ORM_O01_v23_SN_DWI-MR.hl7")
    assert item(p, msg) == {"AccessionNumber": "ACCESSION_a42990"}
    assert mapped(p, msg).warnings == [
        "AccessionNumber: truncated from 46 to 16 characters (SH)"]


def test_text_lines_and_escapes(tmp_path: Path) -> None:
    # NTE-3 twice: "some text\.br\some text after \H\new line\N\\.br\issue Efferent-Health#82"
    # and "some text\X0D\\X0A\some text after new line\X0D\\X0A\issue Efferent-Health#81"
    p = profile(tmp_path, """
        RequestedProcedureComments: 'NTE[*]-3'
        ReasonForTheRequestedProcedure: NTE-3
    """)
    got = item(p, message("hl7dotnetcore__ORM_O01_v23_CRLF_escapes-X0D-H-N-br.hl7"))
    assert got["RequestedProcedureComments"] == (
        "some text\r\nsome text after new line\r\nissue Efferent-Health#82\r\n"
        "some text\r\nsome text after new line\r\nissue Efferent-Health#81")
    # LO holds no line breaks: each becomes one space
    assert got["ReasonForTheRequestedProcedure"] == \
        "some text some text after new line issue Efferent-Health#82"


def test_number_with_unit_is_cleaned_or_left_empty(tmp_path: Path) -> None:
    # veterinary OMI: OBX|1|TX|kg^Body Weight||15kg
    head = "profile: t\nmatch: {message_type: OMI^O23}\norder: {key: ORC-2, control: ORC-1, " \
           "status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, """
        PatientWeight: {from: 'OBX[3.2=Body Weight]-5', replace: {'[^0-9.]': ''}}
        PatientSize: 'OBX[3.2=Body Weight]-5'
    """, head=head)
    msg = message("dcm4che__OMI_O23_veterinary_2021-01_LF.hl7")
    assert item(p, msg) == {"PatientWeight": "15", "PatientSize": ""}
    assert "PatientSize: '15kg' is not a valid DS number: left empty" in mapped(p, msg).warnings


# --- conditions ---------------------------------------------------------------------------

def test_when_applies_a_rule_only_if_another_value_matches(tmp_path: Path) -> None:
    # OMG eyecare: PV1-15 = B6, OBR-24 = CT. MESA 2019: PV1-15 empty, OBR-24 = MR.
    head = "profile: t\nmatch: {message_type: [ORM^O01, OMG^O19]}\norder: {key: ORC-2, " \
           "control: ORC-1, status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, """
        PregnancyStatus: {value: '3', when: {PV1-15: B6}}
        PatientState: {value: CONTRAST, when: {OBR-24: {matches: '^(CT|MR)$'}}}
        MedicalAlerts: {value: not CT, when: {OBR-24: {not: CT}}}
        ConfidentialityCode: {value: SEEN, when: {PV1-15: [B6, B7], OBR-24: CT}}
    """, head=head)
    omg = item(p, message("dcm4che__OMG_O19-GeneralClinicalOrder-Eyecare_2022.hl7"))
    assert omg == {"PregnancyStatus": "3", "PatientState": "CONTRAST",
                   "ConfidentialityCode": "SEEN"}
    mesa = item(p, message(MESA))
    assert mesa == {"PatientState": "CONTRAST", "MedicalAlerts": "not CT"}


# --- sequences and items ------------------------------------------------------------------

def test_one_item_per_ipc_segment(tmp_path: Path) -> None:
    # The 2022-03 veterinary OMI with a second IPC added after the first (derived here).
    raw = (Path(__file__).parent / "fixtures/hl7/dcm4che__OMI_O23_veterinary_2022-03.hl7") \
        .read_bytes()
    ipc = b"IPC|ACC|RPID|1.2.392.200036.9125.0.199402091242.1|SPSID|CT|"
    extra = b"\rIPC|ACC|RPID|1.2.392.200036.9125.0.199402091242.1|SPSID2|MR||||STATION2"
    assert ipc in raw
    end = raw.index(b"\r", raw.index(ipc))
    from bridge.decoding import decode
    from bridge.message import Message
    msg = Message(decode(raw[:end] + extra + raw[end:]))
    p = profile(tmp_path, """
        AccessionNumber: IPC-1
        PatientID: PID-3.1
        ScheduledProcedureStepSequence:
          - Modality: IPC-5
            ScheduledProcedureStepID: IPC-4
            ScheduledStationAETitle: {from: IPC-9, default: ANY}
    """, head="profile: t\nmatch: {message_type: OMI^O23}\ngroups: {per: ORC, items: IPC}\n"
              "order: {key: ORC-2, control: ORC-1, status: ORC-5}\nattributes:\n")
    got = items(p, msg)
    assert [(i["AccessionNumber"], i["PatientID"], i["ScheduledProcedureStepSequence"][0])
            for i in got] == [
        ("ACC", "4711471151", {"Modality": "CT", "ScheduledProcedureStepID": "SPSID",
                               "ScheduledStationAETitle": "MODALITY"}),
        ("ACC", "4711471151", {"Modality": "MR", "ScheduledProcedureStepID": "SPSID2",
                               "ScheduledStationAETitle": "STATION2"})]


def test_required_value_missing_names_the_field_and_the_rule(tmp_path: Path) -> None:
    p = profile(tmp_path, """
        ScheduledProcedureStepSequence:
          - Modality: {from: OBR-24, required: true}
    """)
    (order,) = mapped(p, message("hl7dotnetcore__ORM_O01_v23_CRLF_escapes-X0D-H-N-br.hl7")) \
        .orders
    assert order.items == []
    assert str(order.error) == "Modality is required but OBR-24 is empty"
    assert order.error.path.text == "OBR-24"
    assert order.error.where == f"{tmp_path / 'test.yaml'}:7:7"


def test_missing_order_key_raises(tmp_path: Path) -> None:
    # OMG-O19-02: the first ORC has no ORC-2 (placer) and no OBR-2 either
    p = profile(tmp_path, "PatientID: PID-3.1\n", head=(
        "profile: t\nmatch: {message_type: OMG^O19}\norder: {key: [ORC-2, OBR-2], "
        "control: ORC-1, status: ORC-5}\nattributes:\n"))
    with pytest.raises(MappingFieldError) as err:
        mapped(p, message("msfhirconv__OMG-O19-02.hl7"))
    assert str(err.value) == "order.key is required but ORC-2 and OBR-2 are all empty"


# --- Study Instance UID -------------------------------------------------------------------

def test_study_uid_from_the_message_else_derived(tmp_path: Path) -> None:
    p = profile(tmp_path, "StudyInstanceUID: {from: ZDS-1.1, uid_from: [OBR-3.1, OBR-2.1]}\n")
    # MESA 2019: ZDS-1 = 1.113654.3.13.1026^100^Application^DICOM
    assert item(p, message(MESA)) == {"StudyInstanceUID": "1.113654.3.13.1026"}
    # DMC cancel and change: no ZDS; filler numbers 0000000511 and 0000000517
    cancel = item(p, message("hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7"))["StudyInstanceUID"]
    change = item(p, message("hapi-npac-dmc__ORM_O01_v22_XR-change.hl7"))["StudyInstanceUID"]
    again = item(p, message("hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7"))["StudyInstanceUID"]
    assert cancel == again != change
    for uid in (cancel, change):
        assert re.fullmatch(r"2\.25\.[1-9]\d*", uid) and len(uid) <= 64


def test_study_uid_root_is_configurable(tmp_path: Path) -> None:
    root = "1.2.826.0.1.3680043.10.1445"
    head = f"uid_root: '{root}'\n" + \
        "profile: test\nmatch: {message_type: ORM^O01}\n" \
        "order: {key: ORC-2, control: ORC-1, status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, """
        StudyInstanceUID: {from: ZDS-1.1, uid_from: OBR-3.1}
        ReferencedSOPInstanceUID: {uid_from: OBR-3.1, uid_root: '1.2.3'}
    """, head=head)
    got = item(p, message("hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7"))
    assert got["StudyInstanceUID"].startswith(root + ".")
    assert re.fullmatch(r"[\d.]+", got["StudyInstanceUID"])
    assert len(got["StudyInstanceUID"]) <= 64
    assert got["ReferencedSOPInstanceUID"].startswith("1.2.3.")


def test_study_uid_generated_when_nothing_identifies_the_study(tmp_path: Path) -> None:
    # DMC NW: no ZDS, empty OBR-3 (no filler number yet)
    p = profile(tmp_path, "StudyInstanceUID: {from: ZDS-1.1, uid_from: OBR-3.1, "
                          "uid_generate: true}\n")
    msg = message("hapi-npac-dmc__ORM_O01_v22_NW-new.hl7")
    first, second = item(p, msg)["StudyInstanceUID"], item(p, msg)["StudyInstanceUID"]
    assert first != second
    assert first.startswith("2.25.") and len(first) <= 64


# --- profiles: selection, extends, charset ------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    (MESA, "ihe-orm-o01"),
    ("openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7", "ihe-orm-o01"),
    ("hapi-npac-dmc__ORM_O01_v22_NW-new.hl7", "vendor-dmc-radis"),  # MSH-3 "DMCOE "
    ("lfh-hl7v2fhir__ORM_O01_v23_SN_DWI-MR.hl7", "vendor-whi-load-generator"),
    ("ans-teleradiologie__ORM_O01_v251_NW_flux1.hl7", "vendor-ans-teleradiologie"),
    ("ans-teleradiologie__OMI_O23_v251_SR_flux4.hl7", "vendor-ans-teleradiologie-omi"),
    ("dcm4che__OMI_O23_veterinary_2022-03.hl7", "ihe-omi-o23"),
    ("dcm4che__OMG_O19-GeneralClinicalOrder-Eyecare_2022.hl7", "ihe-omg-o19"),
])
def test_shipped_profile_selection(name: str, expected: str) -> None:
    profiles = load_profiles(Path(__file__).resolve().parent.parent / "mappings")
    assert select_profile(profiles, message(name)).name == expected


def test_no_profile_for_the_message_type() -> None:
    profiles = load_profiles(Path(__file__).resolve().parent.parent / "mappings")
    siu = "MSH|^~\\&|SCHED|H|BR|H|20240101||SIU^S12|S1|P|2.5\rSCH|1\r"
    with pytest.raises(NoProfile, match="SIU\\^S12 from SCHED/H"):
        select_profile(profiles, Message(decode(siu.encode())))


def test_most_specific_match_wins(tmp_path: Path) -> None:
    base = "order: {key: ORC-2, control: ORC-1, status: ORC-5}\nattributes: {}\n"
    write(tmp_path, "profile: any\nmatch: {message_type: ORM^O01}\n" + base, "a.yaml")
    write(tmp_path, "profile: v231\nmatch: {message_type: ORM^O01, version: 2.3.1}\n" + base,
          "b.yaml")
    write(tmp_path, "profile: mesa\nmatch: {message_type: ORM^O01, version: 2.3.1, "
                    "sending_application: MESA_OF, sending_facility: XYZ_RADIOLOGY}\n" + base,
          "c.yaml")
    profiles = load_profiles(tmp_path)
    assert select_profile(profiles, message(MESA)).name == "mesa"
    assert select_profile(profiles, message("openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7")) \
        .name == "v231"
    assert select_profile(profiles, message(GHH)).name == "any"  # version 2.6


def test_extends_states_only_the_differences(tmp_path: Path) -> None:
    write(tmp_path, """\
        profile: base
        match: {message_type: ORM^O01}
        uid_root: '1.2.40'
        order: {key: ORC-2, control: ORC-1, status: ORC-5}
        attributes:
          PatientID: PID-3.1
          PatientSex: PID-8
          StudyInstanceUID: {from: ZDS-1.1, uid_from: OBR-3.1}
          ScheduledProcedureStepSequence:
            - Modality: OBR-24
              ScheduledStationAETitle: {value: ANY}
        """, "base.yaml")
    child = write(tmp_path, """\
        profile: child
        extends: base
        match: {sending_application: DMCOE}
        attributes:
          PatientSex: {omit: true}
          AccessionNumber: OBR-3.1
          ScheduledProcedureStepSequence:
            - Modality: {value: CR}
        """, "child.yaml")
    p = load_profile(child)
    assert p.extends == "base"
    assert p.match.message_types == ["ORM^O01"] and p.match.sending_applications == ["DMCOE"]
    got = item(p, message("hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7"))
    assert got["PatientID"] == "N00804" and got["AccessionNumber"] == "0000000511"
    assert "PatientSex" not in got
    assert got["ScheduledProcedureStepSequence"] == [{"Modality": "CR",
                                                      "ScheduledStationAETitle": "ANY"}]
    assert got["StudyInstanceUID"].startswith("1.2.40.")  # the base's root is inherited
    profiles = load_profiles(tmp_path)
    assert select_profile(profiles, message("hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7")) \
        .name == "child"
    assert select_profile(profiles, message(MESA)).name == "base"


def test_charset_override_for_windows_1252_labelled_8859_1(tmp_path: Path) -> None:
    from bridge.mapping.dryrun import translate

    raw = ("MSH|^~\\&|CP|H|PACS|H|20240101||ORM^O01|7|P|2.3.1||||||8859/1\r"
           "PID|||42||M\x93ller^Ren\xe9\rORC|NW|A1\rOBR|1|A1||||||||||||||||||||||CT\r") \
        .encode("latin-1")
    attrs = "PatientName: {from: PID-5, as: pn}\n"
    plain = profile(tmp_path, attrs)
    run = translate(raw, [plain])
    assert run.mapped.orders[0].items[0]["PatientName"] == "M\x93ller^Ren\xe9"
    override = profile(tmp_path, attrs, head=HEAD_CP1252, name="cp.yaml")
    run = translate(raw, [override])
    item_ = run.mapped.orders[0].items[0]
    assert item_["PatientName"] == "M\u201cller^Ren\xe9"
    assert item_["SpecificCharacterSet"] == "ISO_IR 192"


HEAD_CP1252 = """\
profile: cp
charset: windows-1252
match: {message_type: ORM^O01, sending_application: CP}
order: {key: ORC-2, control: ORC-1, status: ORC-5}
attributes:
"""


def test_a_source_that_transforms_to_nothing_falls_through(tmp_path: Path) -> None:
    # veterinary OMI 2021: TQ1-7 = "S" (the priority, in the wrong field), ORC-9 = 200008161510
    p = profile(tmp_path, """
        ScheduledProcedureStepSequence:
          - ScheduledProcedureStepStartDate: {from: [TQ1-7, ORC-9], as: date}
    """, head="profile: t\nmatch: {message_type: OMI^O23}\n"
              "order: {key: ORC-2, control: ORC-1, status: ORC-5}\nattributes:\n")
    msg = message("dcm4che__OMI_O23_veterinary_2021-01_LF.hl7")
    assert item(p, msg) == {"ScheduledProcedureStepSequence": [
        {"ScheduledProcedureStepStartDate": "20000816"}]}
    assert mapped(p, msg).traces[0].entries[0].source == "ORC-9"


def test_person_name_group_longer_than_64_is_cut_with_a_warning(tmp_path: Path) -> None:
    # OMG eyecare OBR-34: ScheduledPerformingPhysicianNameFN^...GN^...MN^^DR^Md
    head = "profile: t\nmatch: {message_type: OMG^O19}\norder: {key: ORC-2, control: ORC-1, " \
           "status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, "ReferringPhysicianName: {from: OBR-34, as: pn}\n", head=head)
    msg = message("dcm4che__OMG_O19-GeneralClinicalOrder-Eyecare_2022.hl7")
    name = item(p, msg)["ReferringPhysicianName"]
    # XPN family^given^middle^suffix^prefix -> PN family^given^middle^prefix
    full = "ScheduledPerformingPhysicianNameFN^ScheduledPerformingPhysicianNameGN^" \
           "ScheduledPerformingPhysicianNameMN^DR"
    assert full.startswith(name) and len(name) <= 64
    assert mapped(p, msg).warnings == [
        f"ReferringPhysicianName: truncated from {len(full)} to 64 characters (PN)"]


def test_code_too_long_for_sh_is_left_out_with_a_warning(tmp_path: Path) -> None:
    # ANS flux4: OBR-4 = COMPLEMENT_POST_ACTE^...^TLR_OBR_PROCEDURE (20 and 17 characters)
    head = "profile: t\nmatch: {message_type: OMI^O23}\norder: {key: ORC-2, control: ORC-1, " \
           "status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, "RequestedProcedureCodeSequence: {from: OBR-4, as: code}\n",
                head=head)
    msg = message("ans-teleradiologie__OMI_O23_v251_SR_flux4.hl7")
    assert item(p, msg) == {}
    assert mapped(p, msg).warnings == [
        "RequestedProcedureCodeSequence: OBR-4: code 'COMPLEMENT_POST_ACTE' "
        "(TLR_OBR_PROCEDURE) does not fit SH (16 characters): left out"]


def test_binary_number_attribute_is_written_as_a_number(tmp_path: Path) -> None:
    import io

    import pydicom

    from bridge.dicomfile import part10_bytes

    # OMG eyecare: PV1-15 = B6 -> PregnancyStatus (US) 3
    head = "profile: t\nmatch: {message_type: OMG^O19}\norder: {key: ORC-2, control: ORC-1, " \
           "status: ORC-5}\nattributes:\n"
    p = profile(tmp_path, "PregnancyStatus: {value: '3', when: {PV1-15: B6}}\n", head=head)
    got = item(p, message("dcm4che__OMG_O19-GeneralClinicalOrder-Eyecare_2022.hl7"))
    ds = pydicom.dcmread(io.BytesIO(part10_bytes(got, "seed")))
    assert ds.PregnancyStatus == 3


# --- property: every HL7 timestamp gives a valid DICOM date, time and offset --------------

from datetime import datetime  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bridge.mapping.dicomdict import check_value  # noqa: E402
from bridge.mapping.transforms import to_date, to_time, to_timezone  # noqa: E402
from bridge.message import Separators  # noqa: E402


@given(moment=st.datetimes(min_value=datetime(1900, 1, 1)), digits=st.sampled_from([8, 10, 12, 14]),
       fraction=st.sampled_from(["", ".1", ".1234"]),
       zone=st.sampled_from(["", "+0215", "-0500", "+0000"]))
def test_any_hl7_timestamp_splits_into_valid_dicom_values(moment, digits: int, fraction: str,
                                                          zone: str) -> None:
    stamp = moment.strftime("%Y%m%d%H%M%S")[:digits]
    fraction = fraction if digits == 14 else ""
    raw = f"{stamp}{fraction}{zone}^S"  # a TS with its precision component
    seps = Separators()
    assert to_date(raw, seps) == stamp[:8]
    assert check_value("DA", to_date(raw, seps)) is None
    assert to_time(raw, seps) == stamp[8:] + fraction
    assert check_value("TM", to_time(raw, seps)) is None
    assert to_timezone(raw, seps) == zone


def test_referenced_study_sequence_shares_the_derived_study_uid(tmp_path: Path) -> None:
    # DMC change: no ZDS; filler number 0000000517 seeds both UIDs
    p = profile(tmp_path, """
        StudyInstanceUID: {from: ZDS-1.1, uid_from: OBR-3.1}
        ReferencedStudySequence:
          - ReferencedSOPClassUID: {value: 1.2.840.10008.3.1.2.3.1}
            ReferencedSOPInstanceUID: {from: ZDS-1.1, uid_from: OBR-3.1}
    """)
    got = item(p, message("hapi-npac-dmc__ORM_O01_v22_XR-change.hl7"))
    assert got["ReferencedStudySequence"] == [{
        "ReferencedSOPClassUID": "1.2.840.10008.3.1.2.3.1",
        "ReferencedSOPInstanceUID": got["StudyInstanceUID"]}]
    assert got["StudyInstanceUID"].startswith("2.25.")


def test_ascii_only_vrs_are_fitted_not_left_unwritable(tmp_path: Path) -> None:
    """A station AE title with accents or control characters: transliterated, with a
    warning, so the .wl file can be written (pydicom refuses anything else in an AE)."""
    file = write(tmp_path, "profile: p\nmatch: {message_type: ORM^O01}\n"
                 "order: {key: ORC-2, control: ORC-1, status: ORC-5}\n"
                 "attributes:\n  ScheduledProcedureStepSequence:\n"
                 "    - ScheduledStationAETitle: OBR-3\n", "p.yaml")
    text = ("MSH|^~\\&|R|H|B|I|||ORM^O01|1|P|2.3.1||||||UNICODE UTF-8\r"
            "ORC|NW|1\rOBR|1|1|STÄTION\x07É1")
    msg = Message(decode(text.encode("utf-8")))
    result = apply_profile(load_profile(file), msg, trace=True)
    step = result.orders[0].items[0]["ScheduledProcedureStepSequence"][0]
    assert step["ScheduledStationAETitle"] == "STATIONE1"
    assert any("cannot hold" in w for w in result.warnings)
    to_dataset(result.orders[0].items[0])  # writable



def test_a_warnings_only_trace_gives_the_same_items_and_warnings() -> None:
    """The processor's cheaper trace: the same items, warnings and counted warning keys as
    the full trace translate shows, with only the entries that carry a warning."""
    profiles = load_profiles(Path(__file__).parent.parent / "mappings")
    warned = 0
    for file in sorted((Path(__file__).parent / "fixtures" / "hl7").glob("*.hl7")):
        msg = message(file.name)
        try:
            chosen = select_profile(profiles, msg)
            if isinstance(chosen, PatientProfile):
                continue  # an ADT: patient profiles make no trace
            full = apply_profile(chosen, msg, trace=True)
        except (NoProfile, MappingFieldError):
            continue  # no profile for it, or refused: nothing traced
        lean = apply_profile(chosen, msg, trace="warnings")
        assert [o.items for o in lean.orders] == [o.items for o in full.orders], file.name
        assert lean.warnings == full.warnings, file.name
        assert lean.specific_warnings == full.specific_warnings, file.name
        assert [t.warning_keys() for t in lean.traces] == \
            [t.warning_keys() for t in full.traces], file.name
        assert [len(o.traces) for o in lean.orders] == [len(o.traces) for o in full.orders]
        assert all(e.warnings for t in lean.traces for e in t.entries), file.name
        warned += bool(full.warnings)
    assert warned >= 3  # the fixtures hold messages with warnings: the test compares some
