"""Load-time checks of mapping files: each class of error, with its file:line:col.

In each case the line marked ``#<`` is where the error must point; the column is checked
where the case gives one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.mapping.loader import MappingError, load_files, load_profile, load_profiles

from mapping_helpers import write

HEAD = """\
profile: bad
match: {message_type: ORM^O01}
order: {key: ORC-2, control: ORC-1, status: ORC-5}
attributes:
"""

# (name, mapping text, expected message (a substring), expected column or None)
CASES = [
    ("not a DICOM keyword", HEAD + "  PatientsName: PID-5   #<\n",
     "'PatientsName' is not a DICOM keyword", 3),
    ("not an HL7 path", HEAD + "  PatientID: PID3.1   #<\n",
     "'PID3.1' is not an HL7 path: expected SEG-F, SEG-F.C or SEG-F.C.S", 14),
    ("bad selector", HEAD + "  PatientID: 'PID-3[x].1'   #<\n",
     "PID-3[x].1: [x] is not an index, '*' or 'N=value'", None),
    ("unknown rule key", HEAD + "  PatientID: {from: PID-3, requried: true}   #<\n",
     "PatientID: unknown key 'requried' (did you mean required?)", 28),
    ("unknown rule key, nothing close", HEAD + "  PatientID: {from: PID-3, zzz: true}   #<\n",
     "PatientID: unknown key 'zzz' (known: as, default, from, lookup, map, map_default, "
     "omit, replace, required, template, uid_from, uid_generate, uid_root, value, when)", 28),
    ("unknown top-level key", HEAD.replace("attributes:", "atributes: {}   #<\nattributes:"),
     "unknown key 'atributes'", 1),
    ("unknown transform", HEAD + "  PatientBirthDate: {from: PID-7, as: dat}   #<\n",
     "PatientBirthDate: unknown transform 'dat' (did you mean date?)", None),
    ("transform for another VR", HEAD + "  PatientID: {from: PID-7, as: date}   #<\n",
     "PatientID: 'as: date' makes a DA value, but PatientID is LO", None),
    ("code transform on a non-sequence", HEAD + "  PatientID: {from: OBR-4, as: code}   #<\n",
     "PatientID: 'as: code' makes a code sequence item, but PatientID is LO, not a sequence",
     None),
    ("code transform on a non-code sequence",
     HEAD + "  ScheduledProcedureStepSequence: {from: OBR-4, as: code}   #<\n",
     "ScheduledProcedureStepSequence is not a code sequence", None),
    ("two sources", HEAD + "  PatientID: {from: PID-3, value: X}   #<\n",
     "PatientID: give exactly one of from, value, template", 3),
    ("constant too long", HEAD + "  AccessionNumber: {value: ACCESSION-0123456789}   #<\n",
     "AccessionNumber: value 'ACCESSION-0123456789' is 20 characters, more than SH allows "
     "(16)", 28),
    ("bad CS in a map", HEAD + "  PatientSex: {from: PID-8, map: {M: male}}   #<\n",
     "PatientSex: map 'M' -> 'male' is not a valid CS", None),
    ("bad DA default", HEAD + "  PatientBirthDate: {from: PID-7, as: date, default: 19991332}"
                              "   #<\n",
     "PatientBirthDate: default '19991332' is not a DA date (YYYYMMDD)", None),
    ("bad TM constant", HEAD + "  ScheduledProcedureStepSequence:\n"
                               "    - ScheduledProcedureStepStartTime: {value: '25:00'}   #<\n",
     "'25:00' is not a TM time", None),
    ("bad UID constant", HEAD + "  StudyInstanceUID: {value: 1.2.03.4}   #<\n",
     "'1.2.03.4' is not a UID", None),
    ("AE title too long", HEAD + "  ScheduledProcedureStepSequence:\n"
                                 "    - ScheduledStationAETitle: {value: CT_SCANNER_ROOM_12}"
                                 "   #<\n",
     "'CT_SCANNER_ROOM_12' is 18 characters, more than AE allows (16)", None),
    ("bad uid_root", "uid_root: 1.2.x   #<\n" + HEAD,
     "uid_root: '1.2.x' is not a UID", 11),
    ("uid_from on a non-UID", HEAD + "  PatientID: {from: PID-3, uid_from: OBR-3}   #<\n",
     "PatientID: uid_from only applies to UIDs, and PatientID is LO", None),
    ("list of items for a non-sequence", HEAD + "  PatientID:   #<\n    - PatientName: PID-5\n",
     "PatientID is LO, not a sequence: it cannot hold a list of items", 3),
    ("scalar for a sequence", HEAD + "  ScheduledProcedureStepSequence: OBR-4   #<\n",
     "ScheduledProcedureStepSequence is a sequence: give a list of items", 3),
    ("attribute in the wrong sequence", HEAD + "  ScheduledProcedureStepSequence:\n"
                                               "    - PatientName: PID-5   #<\n",
     "PatientName does not belong in an item of ScheduledProcedureStepSequence", 7),
    ("SPS attribute at the top level", HEAD + "  Modality: OBR-24   #<\n",
     "Modality belongs inside ScheduledProcedureStepSequence", 3),
    ("non-code attribute in a code item", HEAD + "  RequestedProcedureCodeSequence:\n"
                                                 "    - CodeValue: OBR-4.1\n"
                                                 "      PatientID: PID-3   #<\n",
     "PatientID does not belong in an item of RequestedProcedureCodeSequence", 7),
    ("bad regular expression in replace",
     HEAD + "  PatientID: {from: PID-3.1, replace: {'([0-9': ''}}   #<\n",
     "PatientID: bad regular expression '([0-9'", None),
    ("bad regular expression in when",
     HEAD + "  PatientID: {from: PID-3.1, when: {PID-8: {matches: '(M'}}}   #<\n",
     "PatientID: when PID-8: bad regular expression", None),
    ("when is not a table", HEAD + "  PatientID: {from: PID-3.1, when: PID-8}   #<\n",
     "PatientID: when must map HL7 paths to the values they must have", None),
    ("map_default without a map", HEAD + "  PatientSex: {from: PID-8, map_default: O}   #<\n",
     "PatientSex: map_default needs a map or a lookup", None),
    ("omit without extends", HEAD + "  PatientSex: {omit: true}   #<\n",
     "PatientSex: omit only applies in a profile that extends another", 3),
    ("patient profile without patient",
     "profile: adt   #<\nkind: patient\nmatch: {message_type: ADT^A08}\nattributes: {}\n",
     "a patient profile needs 'patient' with 'id'", 1),
    ("order rules in a patient profile",
     "profile: adt\nkind: patient\npatient: {id: PID-3.1}\norder: {key: ORC-2}   #<\n",
     "unknown key 'order' in a patient profile", 1),
    ("unknown charset", "charset: latin-9   #<\n" + HEAD,
     "charset: 'latin-9' is not an HL7 character set this bridge knows", 10),
    ("no message type", HEAD.replace("match: {message_type: ORM^O01}",
                                     "match: {version: 2.3.1}   #<"),
     "match: message_type is missing", 1),
    ("unknown match key", HEAD.replace("match: {message_type: ORM^O01}",
                                       "match: {message_type: ORM^O01, sender: X}   #<"),
     "match: unknown key 'sender'", 32),
    ("bad group segment", "groups: {per: ORC, items: ipc}   #<\n" + HEAD,
     "groups: items: 'ipc' is not a segment name", None),
    ("no order", "profile: bad   #<\nmatch: {message_type: ORM^O01}\nattributes: {}\n",
     "'order' must give key, control and status rules", 1),
    ("unknown order key", HEAD.replace("status: ORC-5}", "status: ORC-5, id: ORC-4}   #<"),
     "order: unknown key 'id'", None),
    # issue 16.5: typos get a suggestion
    ("keyword typo", HEAD + "  AccesionNumber: OBR-18   #<\n",
     "'AccesionNumber' is not a DICOM keyword (did you mean AccessionNumber?)", 3),
    ("segment typo", HEAD + "  PatientID: PDI-3.1   #<\n",
     "PDI-3.1: 'PDI' is not an HL7 segment (did you mean PID?)", 14),
    ("top-level key typo", HEAD.replace("attributes:", "atributes: {}   #<\nattributes:"),
     "unknown key 'atributes' (did you mean attributes?)", 1),
    ("match key typo", HEAD.replace("match: {message_type: ORM^O01}",
                                    "match: {message_typ: ORM^O01}   #<"),
     "match: unknown key 'message_typ' (did you mean message_type?)", None),
    # issue 16.1: a step sequence of two items (a YAML slip) is refused
    ("two scheduled steps", HEAD + "  ScheduledProcedureStepSequence:   #<\n"
     "    - Modality: OBR-24\n    - ScheduledStationAETitle: {value: CT1}\n",
     "ScheduledProcedureStepSequence must have exactly one item (a worklist item is one "
     "scheduled step), this profile gives 2", 3),
    ("no scheduled step", HEAD + "  ScheduledProcedureStepSequence: []   #<\n",
     "this profile gives 0", 3),
    # issue 14.4: the backslash replacement cannot be a backslash
    ("backslash replaced by a backslash", "backslash: '\\'   #<\n" + HEAD,
     "backslash: '\\\\' cannot replace a backslash", 12),
]


def _expected_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if "#<" in line)


@pytest.mark.parametrize(("text", "message", "column"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_names_file_line_and_what(tmp_path: Path, text: str, message: str,
                                        column: int | None) -> None:
    file = write(tmp_path, text, "bad.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    line = _expected_line(text)
    where = f"{file}:{line}:{column}" if column else f"{file}:{line}:"
    matching = [p for p in err.value.problems if p.startswith(where) and message in p]
    assert matching, f"wanted {where} ... {message}; got {err.value.problems}"


def test_invalid_yaml_points_at_the_syntax_error(tmp_path: Path) -> None:
    file = write(tmp_path, HEAD + "  PatientID: {from: PID-3\n  PatientName: PID-5\n", "y.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    (problem,) = err.value.problems
    assert re.match(rf"{re.escape(str(file))}:6:\d+: not valid YAML: ", problem), problem


def test_duplicate_keyword_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path, HEAD + "  PatientID: PID-3.1\n  PatientID: PID-2.1\n", "d.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    (problem,) = err.value.problems
    assert problem.startswith(f"{file}:6:3: not valid YAML: ")
    assert "duplicate key" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    file = write(tmp_path, HEAD + "  PatientsName: PID-5\n  PatientID: {from: PID3}\n"
                                  "  PatientSex: {from: PID-8, map: {M: male}}\n", "m.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    assert [p.split(": ")[0] for p in err.value.problems] == [
        f"{file}:5:3", f"{file}:6:21", f"{file}:7:38"]


def test_lookup_file_missing(tmp_path: Path) -> None:
    file = write(tmp_path, HEAD + "  ScheduledProcedureStepSequence:\n"
                                  "    - Modality: {from: OBR-4.1, lookup: codes.csv}\n")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    (problem,) = err.value.problems
    assert problem.startswith(f"{file}:6:41: Modality: cannot read lookup table "
                              f"{tmp_path / 'codes.csv'}")


def test_lookup_table_values_are_checked_with_their_csv_line(tmp_path: Path) -> None:
    (tmp_path / "codes.csv").write_text("code,modality\n38067,CT\nKNEE,x-ray\n38067,MR\n")
    file = write(tmp_path, HEAD + "  ScheduledProcedureStepSequence:\n"
                                  "    - Modality: {from: OBR-4.1, lookup: codes.csv}\n")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    csv_file = tmp_path / "codes.csv"
    assert err.value.problems == [
        f"{csv_file}:3:1: Modality: 'x-ray' is not a valid CS (upper-case letters, digits, "
        "space and underscore only)",
        f"{csv_file}:4:1: Modality: key '38067' appears twice"]


def test_lookup_column_missing(tmp_path: Path) -> None:
    (tmp_path / "codes.csv").write_text("code,modality\n38067,CT\n")
    file = write(tmp_path, HEAD + "  ScheduledProcedureStepSequence:\n"
                                  "    - Modality: {from: OBR-4.1, lookup: {file: codes.csv, "
                                  "value: mod}}\n")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    (problem,) = err.value.problems
    assert problem.startswith(f"{file}:6:")
    assert "has no column 'mod' (columns: code, modality)" in problem


def test_extends_an_unknown_profile(tmp_path: Path) -> None:
    file = write(tmp_path, "profile: child\nextends: nowhere\nattributes: {}\n", "c.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(file)
    assert err.value.problems[0] == \
        f"{file}:2:10: extends: no profile named 'nowhere' in {tmp_path}"


def test_extends_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "profile: a\nextends: b\nattributes: {}\n", "a.yaml")
    write(tmp_path, "profile: b\nextends: a\nattributes: {}\n", "b.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(a)
    assert any("(a cycle)" in p for p in err.value.problems), err.value.problems


def test_errors_in_the_base_profile_carry_the_base_file(tmp_path: Path) -> None:
    base = write(tmp_path, HEAD.replace("profile: bad", "profile: base")
                 + "  PatientsName: PID-5\n", "base.yaml")
    child = write(tmp_path, "profile: child\nextends: base\nmatch: {sending_application: X}\n"
                            "attributes: {}\n", "child.yaml")
    with pytest.raises(MappingError) as err:
        load_profiles(tmp_path)
    assert err.value.problems == [
        f"{base}:5:3: 'PatientsName' is not a DICOM keyword (did you mean PatientName?)",
        f"{child}:2:10: extends: profile 'base' ({base}) has errors, listed with its file "
        "name"]


def test_two_files_with_the_same_profile_name(tmp_path: Path) -> None:
    a = write(tmp_path, HEAD.replace("profile: bad", "profile: same") + "  PatientID: PID-3\n",
              "a.yaml")
    b = write(tmp_path, HEAD.replace("profile: bad", "profile: same")
              .replace("ORM^O01}", "ORM^O01, version: 2.5}") + "  PatientID: PID-2\n", "b.yaml")
    with pytest.raises(MappingError) as err:
        load_files([a, b])
    assert err.value.problems == [f"{b}:1:1: profile name 'same' is also used by {a}"]


def test_two_profiles_with_the_same_match(tmp_path: Path) -> None:
    a = write(tmp_path, HEAD.replace("profile: bad", "profile: one"), "a.yaml")
    b = write(tmp_path, HEAD.replace("profile: bad", "profile: two"), "b.yaml")
    with pytest.raises(MappingError) as err:
        load_files([a, b])
    assert err.value.problems == [f"{b}:1:1: profile 'two' matches exactly the same messages "
                                  f"as 'one' ({a}): make one more specific"]


def test_shipped_mappings_are_valid() -> None:
    profiles = load_profiles(Path(__file__).resolve().parent.parent / "mappings")
    assert {p.name for p in profiles} >= {
        "ihe-orm-o01", "ihe-omi-o23", "ihe-omg-o19", "vendor-dmc-radis",
        "vendor-whi-load-generator", "vendor-ans-teleradiologie",
        "vendor-ans-teleradiologie-omi"}


def test_omit_of_an_attribute_the_base_does_not_have(tmp_path: Path) -> None:
    write(tmp_path, HEAD.replace("profile: bad", "profile: base") + "  PatientID: PID-3\n",
          "base.yaml")
    child = write(tmp_path, "profile: child\nextends: base\nmatch: {version: '2.2'}\n"
                            "attributes:\n  PatientSex: {omit: true}\n", "child.yaml")
    with pytest.raises(MappingError) as err:
        load_profile(child)
    assert err.value.problems == [
        f"{child}:5:3: PatientSex: the base profile has no such attribute here"]
