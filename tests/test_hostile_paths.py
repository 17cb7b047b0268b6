"""Identifiers that try path traversal never leave the output folder: the folder sink with
both layouts (item keys and station AE titles), directly and end to end over MLLP."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.dicomfile import file_name
from bridge.sinks.folder import FolderSink
from bridge.store import StoredItem

from listener_rig import BridgeThread, RawClient, fixture_message, msa, rig_config
from peers import ROOT, wait_for

TRAVERSALS = ["../../../../tmp/escaped", "/etc/passwd", "/tmp/escaped", "..", ".", "",
              "a/../../b", "\x00", "x\x00/../..", "..\\..\\windows", "C:\\Windows\\x", "~root",
              "%2e%2e%2f%2e%2e%2f", "\u2025/\u2025/", ".wl", "lockfile", ".hidden", "-rf /",
              "\r\n", "A" * 5000, "../" * 200, "ÄÖÜ/../é", "\\\\server\\share"]
HOSTILE = st.one_of(st.sampled_from(TRAVERSALS), st.text(max_size=300),
                    st.builds(lambda a, b: a + "/../" + b, st.text(max_size=20),
                              st.text(max_size=20)))


def files_under(folder: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, _dirs, names in os.walk(folder)
            for name in names}


def item(key: str, station: str) -> StoredItem:
    dataset = {"PatientName": "TEST^PATH", "PatientID": "1",
               "ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": station,
                                                   "Modality": "CT"}]}
    return StoredItem(key, key, "SCHEDULED", True, dataset, "1", 0.0)


# AE is a default-repertoire VR: pydicom cannot write other characters in a station AE
# title at all, so the writing test keeps stations ASCII; the path test below takes any text.
ASCII_HOSTILE = st.one_of(st.sampled_from([t for t in TRAVERSALS if t.isascii()]),
                          st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=300))


@settings(max_examples=100, deadline=None)
@given(key=HOSTILE, station=HOSTILE, layout=st.sampled_from(["flat", "by_station_ae"]))
def test_folder_sink_paths_stay_in_its_folder(key, station, layout):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "worklists"
        sink = FolderSink(root, layout, lockfile=True)
        path = sink.path_for(item(key, station))
        assert path.resolve().is_relative_to(root.resolve())
        assert path.parent == root or path.parent.parent == root
        assert "\x00" not in str(path) and len(path.name) <= 255


@settings(max_examples=100, deadline=None)
@given(key=HOSTILE, station=ASCII_HOSTILE, layout=st.sampled_from(["flat", "by_station_ae"]))
def test_folder_sink_stays_in_its_folder(key, station, layout):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "out" / "worklists"
        sink = FolderSink(root, layout, lockfile=True)
        asyncio.run(sink.put(item(key, station)))
        written = files_under(base)
        assert written, "nothing written"
        for path in written:
            assert path.resolve().is_relative_to(root.resolve()), path
            assert "\x00" not in path.name
            assert len(path.name) <= 255
        wl = [p for p in written if p.suffix == ".wl"]
        assert [p.name for p in wl] == [file_name(key)]
        asyncio.run(sink.remove(item(key, station)))
        assert not [p for p in files_under(base) if p.suffix == ".wl"]


def test_a_symlinked_station_folder_is_not_followed(tmp_path):
    root, outside = tmp_path / "worklists", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "EVIL").symlink_to(outside, target_is_directory=True)
    sink = FolderSink(root, "by_station_ae")
    with pytest.raises(ValueError):
        asyncio.run(sink.put(item("ORDER1", "EVIL")))
    assert list(outside.iterdir()) == []
    # Removing an item must not delete a file of the same name behind a link either.
    victim = outside / file_name("ORDER2")
    victim.write_bytes(b"not ours")
    asyncio.run(sink.remove(item("ORDER2", "OTHER")))
    assert victim.exists()


def hostile_order(identifier: str, station: str, n: int) -> bytes:
    """The IHE fixture with `identifier` as placer/filler/accession/RP/SPS IDs."""
    from bridge.message import Separators

    seps = Separators()
    esc = identifier.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\") \
        .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", "\\X0D\\") \
        .replace("\n", "\\X0A\\").replace("\x00", "\\X00\\")
    assert seps.field == "|"
    lines = fixture_message().decode("latin-1").split("\r")
    out = []
    for line in lines:
        f = line.split("|")
        if f[0] == "MSH":
            f[9] = f"PATH{n}"
        if f[0] == "ORC":
            f[2], f[3] = f"{esc}^NS", f"{esc}^FIL"
        if f[0] == "OBR":
            f[2], f[3] = f"{esc}^NS", f"{esc}^FIL"
            f[18], f[19], f[20], f[21] = esc, esc + "RP", esc + "SPS", station
        out.append("|".join(f))
    return "\r".join(out).encode("utf-8")


@pytest.mark.parametrize("layout", ["flat", "by_station_ae"])
def test_hostile_identifiers_over_mllp_stay_in_the_folder(tmp_path, layout):
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    profile = mappings / "ihe-orm-o01.yaml"
    # The station comes from the message here (OBR-21), so that a sender can try it too.
    profile.write_text(profile.read_text().replace("ScheduledStationAETitle: {value: ANY}",
                                                   "ScheduledStationAETitle: OBR-21"))
    config = rig_config(tmp_path / "run", mappings__dir=str(mappings),
                        sinks__folder__layout=layout)
    root = config.folder_path
    values = ["../../../../../../tmp/escaped", "/tmp/escaped", "..", "a/../../b",
              "x\x00y/../..", "..\\..\\x", "A" * 3000, "../" * 100]
    with BridgeThread(config) as bridge:
        with RawClient(bridge.port) as client:
            for n, value in enumerate(values):
                ack = client.exchange(hostile_order(value, value, n))
                assert msa(ack)[0] in ("AA", "AE"), ack
        store = bridge.bridge.store

        def drained() -> bool:
            return bridge.call(store.run(store.store.outbox_depth, "folder")) == 0

        wait_for(drained, timeout=20)
    written = files_under(tmp_path)
    wl = [p for p in written if p.suffix == ".wl"]
    assert wl, "no worklist file written at all"
    for path in written:
        inside = path.resolve().is_relative_to(root.resolve())
        assert inside or path.resolve().is_relative_to((tmp_path / "run" / "data").resolve()) \
            or path.resolve().is_relative_to(mappings.resolve()), path
    for path in wl:
        assert path.resolve().is_relative_to(root.resolve()), path
    assert not Path("/tmp/escaped").exists()
