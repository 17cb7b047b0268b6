"""`.wl` files written directly (dicomfile.part10_bytes) must be byte for byte what pydicom
writes from a Dataset (part10_with_pydicom), the reference wlmscpfs and Orthanc read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from bridge.dicomfile import part10_bytes, part10_with_pydicom
from bridge.mapping.dryrun import MessageError, translate
from bridge.mapping.loader import load_profiles
from bridge.scp.importing import item_from_dataset

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
HL7 = sorted((CORPUS / "hl7").glob("*.hl7")) or sorted((ROOT / "tests/fixtures/hl7").glob("*.hl7"))


def corpus_items() -> list[dict]:
    profiles = load_profiles(ROOT / "mappings")
    items = []
    for path in HL7:
        try:
            run = translate(path.read_bytes(), profiles)
        except (MessageError, ValueError):
            continue
        items += [item for order in run.mapped.orders for item in order.items]
    return items


def test_every_corpus_item_is_written_as_pydicom_writes_it() -> None:
    items = corpus_items()
    assert len(items) >= 10  # the corpus was found and mapped
    for n, item in enumerate(items):
        assert part10_bytes(item, f"seed{n}") == part10_with_pydicom(item, f"seed{n}"), item


def test_dcmtk_worklists_are_written_as_pydicom_writes_them(tmp_path: Path) -> None:
    dumps = sorted((CORPUS / "worklists").glob("*.dump"))
    assert dumps, f"no DCMTK worklist dumps in {CORPUS / 'worklists'} (shared/ beside the checkout)"
    for dump in dumps:
        out = tmp_path / f"{dump.stem}.wl"
        subprocess.run(["dump2dcm", "+te", str(dump), str(out)], check=True,
                       capture_output=True)
        item = item_from_dataset(pydicom.dcmread(out, force=True))
        assert part10_bytes(item, dump.stem) == part10_with_pydicom(item, dump.stem), dump


@pytest.mark.parametrize("item", [
    # numbers: one, several, one not a number (dropped), none valid, padded DS
    {"PatientID": "P1", "PregnancyStatus": "4", "PatientWeight": "70.5",
     "PatientSize": "1.75"},
    {"PatientID": "P1", "ReferencedSegmentNumber": "1\\2\\x", "PregnancyStatus": "x"},
    {"PatientID": "P1", "PatientWeight": " 70.5 "},
    # empty values, odd lengths, UI padded with NUL, multi-valued text, LT backslash
    {"PatientName": "", "AccessionNumber": "A1", "StudyInstanceUID": "1.2.3",
     "OtherPatientIDs": "A\\B", "ImagingServiceRequestComments": "a\\b"},
    # character sets: Latin-1, UTF-8, none with ASCII, a set the text does not fit,
    # ISO 2022 code extensions, Japanese
    {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jürgen"},
    {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Łukasz^Żółć"},
    {"PatientName": "DOE^JOHN"},
    {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Łukasz"},
    {"SpecificCharacterSet": "ISO 2022 IR 6\\ISO 2022 IR 87",
     "PatientName": "Yamada^Tarou=山田^太郎"},
    {"SpecificCharacterSet": "ISO_IR 13", "PatientName": "ﾔﾏﾀﾞ^ﾀﾛｳ"},
    # nested sequences, an empty one, an unknown keyword
    {"PatientID": "P1", "ReferencedStudySequence": [],
     "ScheduledProcedureStepSequence": [
         {"Modality": "CT", "ScheduledProtocolCodeSequence": [
             {"CodeValue": "X1", "CodeMeaning": "Schädel"}]},
         {"Modality": "MR"}],
     "NotAKeyword": "ignored"},
    # a value longer than a short header allows
    {"PatientID": "P1", "PatientComments": "x" * 70000},
])
def test_edge_cases_as_pydicom_writes_them(item: dict) -> None:
    assert part10_bytes(item, "seed") == part10_with_pydicom(item, "seed")
