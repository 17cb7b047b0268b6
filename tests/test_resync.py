"""`resync` on the .wl folder, and its refusals (the Orthanc side is in test_orthanc_sink)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from bridge.cli import main
from bridge.config import Config, load_config
from bridge.dicomfile import file_name
from bridge.resync import ResyncError, resync
from bridge.store import ItemWrite, open_store, store_url

from orthanc_double import OrthancDouble

DATASET = {
    "PatientID": "PID-1", "PatientName": "Doe^Jane", "AccessionNumber": "ACC-1",
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.1",
    "ScheduledProcedureStepSequence": [{"Modality": "CT", "ScheduledProcedureStepID": "S1"}],
}


def config_for(tmp_path: Path, **env: str) -> Config:
    return load_config(None, {"BRIDGE_DATA_DIR": str(tmp_path / "data"), **env})


def commit(config: Config, key: str, visible: bool) -> None:
    store = open_store(store_url(config), [])
    journal_id = store.journal_received(b"MSH|test", "test")
    store.commit_message(journal_id, {}, [ItemWrite(key, key, "SCHEDULED", visible,
                                                    {**DATASET, "AccessionNumber": key})],
                         "AA", b"ACK")
    store.close()


async def test_folder_resync_rewrites_items_and_deletes_only_its_own_strays(
        tmp_path: Path) -> None:
    config = config_for(tmp_path)
    folder = config.folder_path
    folder.mkdir(parents=True)
    commit(config, "SHOWN|RP|SPS", visible=True)
    commit(config, "HIDDEN|RP|SPS", visible=False)
    # Out of step: the shown item's file is missing, the hidden one's still there, a file
    # named as the bridge names them belongs to no item, and another program's file.
    (folder / file_name("HIDDEN|RP|SPS")).write_bytes(b"stale")
    stray = folder / file_name("NO-SUCH-ITEM|RP|SPS")
    stray.write_bytes(b"stray")
    foreign = folder / "external-ct.wl"
    foreign.write_bytes(b"someone else's")

    [result] = await resync(config, ["folder"])

    assert (result.deleted, result.queued, result.pending) == (1, 2, 0)
    assert sorted(p.name for p in folder.glob("*.wl")) == \
        sorted([file_name("SHOWN|RP|SPS"), "external-ct.wl"])
    ds = pydicom.dcmread(folder / file_name("SHOWN|RP|SPS"))
    assert ds.AccessionNumber == "SHOWN|RP|SPS"
    assert foreign.read_bytes() == b"someone else's"


async def test_resync_refuses_a_disabled_or_unreachable_sink(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    with pytest.raises(ResyncError, match=r"sinks\.orthanc is not enabled"):
        await resync(config, ["orthanc"])
    with OrthancDouble() as orthanc:
        url = orthanc.url
    # The double is gone: its port refuses connections.
    config = config_for(tmp_path, BRIDGE_SINKS__ORTHANC__ENABLED="true",
                        BRIDGE_SINKS__ORTHANC__URL=url)
    commit(config, "SHOWN|RP|SPS", visible=True)
    with pytest.raises(ResyncError,
                       match="orthanc: unreachable: GET /worklists: ConnectionRefusedError"):
        await resync(config, ["orthanc"])


def test_resync_command_no_deliver_only_queues(tmp_path: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_DATA_DIR", str(tmp_path / "data"))
    config = config_for(tmp_path)
    commit(config, "SHOWN|RP|SPS", visible=True)
    (tmp_path / "config.yaml").write_text("log_level: WARNING\n")
    assert main(["resync", "--config", str(tmp_path / "config.yaml"), "--no-deliver"]) == 0
    assert capsys.readouterr().out.strip() == \
        "folder: 0 extra item(s) deleted, 1 queued for the running bridge to deliver"
    store = open_store(store_url(config))
    assert store.outbox_depth("folder") == 1
    store.close()
    assert not list(config.folder_path.glob("*.wl"))
