"""The .wl folder sink: valid Part-10 files, safe names, layouts, removal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from bridge.dicomfile import WORKLIST_FILE_SOP_CLASS, file_name
from bridge.sinks.folder import FolderSink
from bridge.store import StoredItem

from peers import dcmtk


def item(key: str, station: str = "CT1", name: str = "Müller^Jörg") -> StoredItem:
    dataset = {
        "SpecificCharacterSet": "ISO_IR 100", "PatientName": name, "PatientID": "P1",
        "StudyInstanceUID": "1.2.3.4",
        "ScheduledProcedureStepSequence": [{"Modality": "CT", "ScheduledStationAETitle": station,
                                            "ScheduledProcedureStepID": "S1"}],
    }
    return StoredItem(key, key.split("|")[0], "SCHEDULED", True, dataset, "P1", 0.0)


async def test_a_written_file_is_part10_and_dcmdump_reads_it(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path)
    await sink.put(item("ORD1|RP1|S1"))
    [path] = tmp_path.glob("*.wl")
    ds = pydicom.dcmread(path)  # raises unless preamble + meta header are there
    assert ds.file_meta.MediaStorageSOPClassUID == WORKLIST_FILE_SOP_CLASS
    assert str(ds.PatientName) == "Müller^Jörg"
    assert path.read_bytes()[128:132] == b"DICM"
    out = subprocess.run([dcmtk("dcmdump"), str(path)], capture_output=True, timeout=30)
    assert out.returncode == 0 and "Müller".encode("latin-1") in out.stdout
    assert (tmp_path / "lockfile").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("key", ["../../etc/passwd|x|y", "/abs/path|1|2", "a\x00b|..|..",
                                 "é" * 300 + "|1|1", "..|..|..", "CON|<>|:*?"])
async def test_hostile_keys_stay_inside_the_folder(tmp_path: Path, key: str) -> None:
    root = tmp_path / "wl"
    sink = FolderSink(root, layout="by_station_ae")
    await sink.put(item(key, station="../../evil"))
    written = [p for p in tmp_path.rglob("*.wl")]
    assert len(written) == 1 and written[0].resolve().is_relative_to(root.resolve())
    assert len(written[0].name) <= 80 and not written[0].name.startswith(".")


def test_file_names_are_deterministic_and_distinct() -> None:
    assert file_name("A|1|1") == file_name("A|1|1")
    assert file_name("A|1|1") != file_name("A_1_1") != file_name("A|1|2")


async def test_by_station_layout_moves_an_item_whose_station_changes(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path, layout="by_station_ae")
    await sink.put(item("ORD1|RP1|S1", station="CT1"))
    await sink.put(item("ORD1|RP1|S1", station="CT2"))
    assert [p.parent.name for p in tmp_path.rglob("*.wl")] == ["CT2"]
    assert (tmp_path / "CT2" / "lockfile").exists()
    await sink.remove(item("ORD1|RP1|S1", station="CT2"))
    assert list(tmp_path.rglob("*.wl")) == []
    await sink.remove(item("ORD1|RP1|S1"))  # removing what is gone is fine
