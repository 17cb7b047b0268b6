"""The README's Orthanc folder-plugin snippet, run on the real Orthanc (1.10.1, Debian):
a modality listed in DicomModalities gets the worklist, any other calling AE is refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from bridge.dicomfile import part10_bytes

from peers import (
    ORTHANC,
    ORTHANC_WORKLISTS_PLUGIN,
    ROOT,
    dcmtk,
    free_port,
    missing_peer,
    wait_for_port,
)

pytestmark = pytest.mark.integration


def _readme_snippet() -> dict:
    """The ```json block of the README's quick start that configures the folder plugin."""
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```json\n(.*?)```", readme, re.S):
        if '"Worklists"' in block:
            return json.loads("{" + block + "}")
    raise AssertionError("README: no json block configuring Orthanc's Worklists")


def _findscu(port: int, calling_ae: str, outdir: Path) -> subprocess.CompletedProcess:
    outdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([dcmtk("findscu"), "-W", "-aet", calling_ae, "-aec", "ORTHANC", "-X",
                           "-od", str(outdir), "-k", "PatientID", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_the_readme_snippet_serves_the_listed_modality_and_only_it(tmp_path: Path) -> None:
    if not (Path(ORTHANC).exists() and Path(ORTHANC_WORKLISTS_PLUGIN).exists()):
        missing_peer("Orthanc or its worklists plugin not installed")
    snippet = _readme_snippet()
    [(_, (listed_ae, _host, _port))] = snippet["DicomModalities"].items()
    assert "DicomAlwaysAllowFindWorklist" in snippet  # the README names the alternative
    folder = tmp_path / "worklists"
    folder.mkdir()
    item = {"PatientID": "RDM1", "PatientName": "README^TEST", "AccessionNumber": "RDA1",
            "ScheduledProcedureStepSequence": [{"Modality": "CT",
                                                "ScheduledStationAETitle": listed_ae}]}
    (folder / "item.wl").write_bytes(part10_bytes(item, "readme"))
    dicom_port = free_port()
    config = {**snippet, "Plugins": [ORTHANC_WORKLISTS_PLUGIN],
              "Worklists": {**snippet["Worklists"], "Database": str(folder)},
              "Name": "readme", "DicomAet": "ORTHANC", "DicomPort": dicom_port,
              "HttpPort": free_port(), "RemoteAccessAllowed": False,
              "StorageDirectory": str(tmp_path / "storage"),
              "IndexDirectory": str(tmp_path / "storage")}
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    with open(tmp_path / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_for_port(dicom_port, proc, timeout=30)
        listed = _findscu(dicom_port, listed_ae, tmp_path / "listed")
        assert listed.returncode == 0, listed.stderr
        assert len(list((tmp_path / "listed").glob("rsp*.dcm"))) == 1, listed.stderr
        other = _findscu(dicom_port, "UNLISTED", tmp_path / "other")
        assert list((tmp_path / "other").glob("rsp*.dcm")) == []
        assert other.returncode != 0 or "Find Failed" in other.stderr, other.stderr
    finally:
        proc.terminate()
        proc.wait(30)
