"""Generated worklist items as `.wl` files, the same for the bridge and for wlmscpfs.

Every value is fixed-width, so one template per modality is written with pydicom and each
file is that template with its placeholders replaced: 100,000 files take seconds, not the
minutes a `save_as` per file would. `spec(i)` says what item i holds, so tests derive their
expectations from it rather than from any server's answers.
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path

from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

SURNAMES = ("SMITH", "JONES", "BROWN", "DAVIS", "MOORE")  # all five letters
MODALITIES = ("CT", "MR", "US", "CR")
STATIONS = 20
FIRST_DAY = datetime.date(2024, 1, 1)
UID_ROOT = "1.2.826.0.1.3680043.10.1445.9."

# keyword -> placeholder of the width of every generated value
_PLACEHOLDERS = {
    "AccessionNumber": "A#########",
    "PatientID": "P#######",
    "PatientName": "#####^G#######",
    "PatientBirthDate": "1#######",
    "PatientSex": "#",
    "StudyInstanceUID": UID_ROOT + "##########",
    "RequestedProcedureID": "RP########",
    "ScheduledStationAETitle": "STN##",
    "ScheduledProcedureStepStartDate": "2#######",
    "ScheduledProcedureStepStartTime": "T#####",
    "ScheduledProcedureStepID": "SPS########",
    "ScheduledStationName": "ROOM##",
}


def spec(i: int, days: int = 10) -> dict[str, str]:
    """What generated item `i` holds (its modality is MODALITIES[i % 4])."""
    day = FIRST_DAY + datetime.timedelta(days=i % days)
    return {
        "AccessionNumber": f"A{i:09d}",
        "PatientID": f"P{i // 2:07d}",
        "PatientName": f"{SURNAMES[i % len(SURNAMES)]}^G{i:07d}",
        "PatientBirthDate": f"19{50 + i % 50:02d}0{1 + i % 9}15",
        "PatientSex": "MF"[i % 2],
        "StudyInstanceUID": f"{UID_ROOT}1{i:09d}",  # no leading zero in a UID component
        "RequestedProcedureID": f"RP{i:08d}",
        # Stations vary within a day: 1,000 items a day are 50 per station at 100 days.
        "ScheduledStationAETitle": f"STN{i // days % STATIONS:02d}",
        "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
        "ScheduledProcedureStepStartTime": f"{8 + i % 10:02d}{(i * 7) % 60:02d}00",
        "ScheduledProcedureStepID": f"SPS{i:08d}",
        "ScheduledStationName": f"ROOM{i // days % STATIONS:02d}",
        "Modality": MODALITIES[i % len(MODALITIES)],
    }


def _template(modality: str) -> bytes:
    # The placeholders are not valid values, by design: no warnings about them.
    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        return _build_template(modality)
    finally:
        config.settings.reading_validation_mode = mode


def _build_template(modality: str) -> bytes:
    p = _PLACEHOLDERS
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = p["AccessionNumber"]
    ds.PatientName = p["PatientName"]
    ds.PatientID = p["PatientID"]
    ds.PatientBirthDate = p["PatientBirthDate"]
    ds.PatientSex = p["PatientSex"]
    ds.StudyInstanceUID = p["StudyInstanceUID"]
    ds.RequestedProcedureDescription = f"{modality} PROCEDURE"
    ds.RequestedProcedureID = p["RequestedProcedureID"]
    ds.RequestedProcedurePriority = "ROUTINE"
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = p["ScheduledStationAETitle"]
    step.ScheduledProcedureStepStartDate = p["ScheduledProcedureStepStartDate"]
    step.ScheduledProcedureStepStartTime = p["ScheduledProcedureStepStartTime"]
    step.ScheduledProcedureStepDescription = f"{modality} STEP"
    step.ScheduledProcedureStepID = p["ScheduledProcedureStepID"]
    step.ScheduledStationName = p["ScheduledStationName"]
    ds.ScheduledProcedureStepSequence = Sequence([step])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
    meta.MediaStorageSOPInstanceUID = UID_ROOT + "1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_items(folder: Path, count: int, days: int = 10, start: int = 0) -> list[Path]:
    """Write items start..start+count-1 as `gen_<i>.wl` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = {m: _template(m) for m in MODALITIES}
    paths = []
    for i in range(start, start + count):
        values = spec(i, days)
        data = templates[values["Modality"]]
        for keyword, placeholder in _PLACEHOLDERS.items():
            new = values[keyword].encode("ascii")
            assert len(new) == len(placeholder), keyword
            data = data.replace(placeholder.encode("ascii"), new, 1)
        path = folder / f"gen_{i:07d}.wl"
        path.write_bytes(data)
        paths.append(path)
    return paths
