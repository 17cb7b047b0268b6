"""import-wl: .wl files into the store, as a site migrating from wlmscpfs or Orthanc would."""

from __future__ import annotations

from pathlib import Path

import pytest
import wlgen
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from bridge.cli import main
from bridge.scp.importing import read_folder
from bridge.store import Store


def _write_latin1_with_placer(path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "X1"
    ds.PlacerOrderNumberImagingServiceRequest = "ORD77"
    ds.RequestedProcedureID = "RP1"
    step = Dataset()
    step.ScheduledProcedureStepID = "S1"
    step.ScheduledStationAETitle = ["CT1", "CT2"]
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.add_new(0x00091010, "LO", "private, not kept")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1445.9.2"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.filterwarnings("ignore:Expected implicit VR")  # broken.wl, read with force
def test_read_folder(tmp_path: Path) -> None:
    wlgen.write_items(tmp_path / "WL", 3)
    _write_latin1_with_placer(tmp_path / "WL" / "latin1.wl")
    (tmp_path / "WL" / "broken.wl").write_bytes(b"not DICOM at all")
    (tmp_path / "WL" / "lockfile").touch()
    result = read_folder(tmp_path)
    assert [p.name for p, _ in result.skipped] == ["broken.wl"]
    assert len(result.writes) == 4
    latin = next(w for w in result.writes if w.dataset["PatientID"] == "X1")
    # Text decoded from Latin-1, multi-values joined, private tags left out.
    assert latin.dataset["PatientName"] == "Müller^Jürgen"
    assert latin.dataset["ScheduledProcedureStepSequence"] == [
        {"ScheduledProcedureStepID": "S1", "ScheduledStationAETitle": "CT1\\CT2"}]
    assert not any(k.startswith("0009") for k in latin.dataset)
    # The placer order number is the order key: a later HL7 message for ORD77 replaces it.
    assert latin.order_key == "ORD77" and latin.item_key == "ORD77|RP1|S1"
    generated = next(w for w in result.writes if w.dataset["AccessionNumber"] == "A000000000")
    assert generated.order_key == "wl:WL/gen_0000000"
    assert generated.status == "SCHEDULED" and generated.visible


def test_import_wl_command_is_idempotent(tmp_path: Path, monkeypatch, capsys) -> None:
    wlgen.write_items(tmp_path / "wl", 5)
    monkeypatch.setenv("BRIDGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BRIDGE_SINKS__FOLDER__ENABLED", "false")
    config = Path(__file__).resolve().parent.parent / "config.yaml"
    for _ in range(2):
        assert main(["import-wl", str(tmp_path / "wl"), "--config", str(config)]) == 0
    assert "imported 5 item(s)" in capsys.readouterr().out
    store = Store(tmp_path / "data" / "bridge.sqlite")
    try:
        items = store.items(visible_only=True)
    finally:
        store.close()
    assert sorted(i.dataset["AccessionNumber"] for i in items) == \
        [f"A{i:09d}" for i in range(5)]
