"""Reloading mappings in a running bridge: a good set replaces the old, a bad one is refused
and the previous set stays in use, and a change in the folder is noticed."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.config import load_config
from bridge.mapping.engine import select_profile
from bridge.mapping.watch import snapshot, watch

from mapping_helpers import SHIPPED, message

DMC = "hapi-npac-dmc__ORM_O01_v22_NW-new.hl7"


@pytest.fixture
def bridge(tmp_path: Path):
    mappings = tmp_path / "mappings"
    shutil.copytree(SHIPPED, mappings)
    config = load_config(None, environ={"BRIDGE_DATA_DIR": str(tmp_path / "data"),
                                        "BRIDGE_MAPPINGS__DIR": str(mappings)})
    b = Bridge(config)
    yield b
    b.store.close()


def test_reload_swaps_profiles_and_refuses_a_bad_set(bridge: Bridge,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = bridge.config.mappings.dir
    assert select_profile(bridge.processor.profiles, message(DMC)).name == "vendor-dmc-radis"

    (folder / "vendor-dmc-radis.yaml").unlink()
    assert bridge.reload_mappings() is True
    assert select_profile(bridge.processor.profiles, message(DMC)).name == "ihe-orm-o01"

    bad = folder / "broken.yaml"
    bad.write_text("profile: broken\nextends: ihe-orm-o01\nattributes:\n  PatientsName: PID-5\n")
    before = bridge.processor.profiles
    with caplog.at_level(logging.ERROR, logger="bridge.app"):
        assert bridge.reload_mappings() is False
    assert bridge.processor.profiles is before
    assert f"{bad}:4:3: 'PatientsName' is not a DICOM keyword" in caplog.text
    assert "still using the previous ones" in caplog.text


async def test_watch_notices_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("profile: a\n")
    changed = asyncio.Event()
    task = asyncio.create_task(watch(tmp_path, 0.02, changed.set))
    try:
        await asyncio.sleep(0.05)
        assert not changed.is_set()
        (tmp_path / "codes.csv").write_text("code,modality\n")  # lookup tables count too
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        task.cancel()


def test_snapshot_sees_mappings_and_lookup_tables_only(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yml", "c.csv", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert sorted(snapshot(tmp_path)) == ["a.yaml", "b.yml", "c.csv"]


def test_the_bridge_refuses_to_start_with_an_invalid_mapping(tmp_path: Path) -> None:
    from bridge.mapping.loader import MappingError

    mappings = tmp_path / "mappings"
    shutil.copytree(SHIPPED, mappings)
    bad = mappings / "broken.yaml"
    bad.write_text("profile: broken\nextends: ihe-orm-o01\nattributes:\n  PatientsName: PID-5\n")
    config = load_config(None, environ={"BRIDGE_DATA_DIR": str(tmp_path / "data"),
                                        "BRIDGE_MAPPINGS__DIR": str(mappings)})
    with pytest.raises(MappingError) as err:
        Bridge(config)
    assert err.value.problems == [f"{bad}:4:3: 'PatientsName' is not a DICOM keyword (did you "
                                  "mean PatientName?)"]
