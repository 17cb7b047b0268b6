"""A running bridge picks up changed mappings, on a file change or on SIGHUP, without
dropping the sender's MLLP connection; an invalid change is refused and the previous
mappings keep serving."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from bridge.client import MllpClient

from peers import FIXTURES, ROOT, bridge_env, free_port, wait_for, wait_for_port

pytestmark = pytest.mark.integration

# DMC v2.2 NW: OBR-4 = 38067^CT BIOPSY (91-MIN OR MORE)^L; MSH-10 = 940503173858000
NW = (FIXTURES / "hapi-npac-dmc__ORM_O01_v22_NW-new.hl7").read_bytes() \
    .replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def resend(n: int) -> bytes:
    """The same order under a new control ID (the same one would be a duplicate)."""
    return NW.replace(b"|940503173858000|", f"|94050317385800{n}|".encode())


@contextmanager
def bridge(tmp_path: Path, watch_seconds: float) -> Iterator[tuple[subprocess.Popen, int]]:
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    port = free_port()
    env = bridge_env(BRIDGE_DATA_DIR=str(tmp_path / "data"), BRIDGE_MLLP__PORT=str(port),
                     BRIDGE_MAPPINGS__DIR=str(mappings),
                     BRIDGE_MAPPINGS__WATCH_SECONDS=str(watch_seconds),
                     BRIDGE_SINKS__FOLDER__PATH=str(tmp_path / "wl"))
    with open(tmp_path / "bridge.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config",
                                 str(ROOT / "config.yaml")], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(10)


def modality(tmp_path: Path) -> str | None:
    files = list((tmp_path / "wl").glob("*.wl"))
    if len(files) != 1:
        return None
    return str(pydicom.dcmread(files[0]).ScheduledProcedureStepSequence[0].Modality)


def log(tmp_path: Path) -> str:
    return (tmp_path / "bridge.log").read_text(errors="replace")


async def test_reload_on_file_change_keeps_the_connection(tmp_path: Path) -> None:
    with bridge(tmp_path, 0.1) as (_, port):
        async with MllpClient("127.0.0.1", port) as client:
            assert b"MSA|AA|" in await client.send(resend(0))
            wait_for(lambda: modality(tmp_path) == "CT", timeout=30)  # 38067 -> CT (the CSV)

            csv = tmp_path / "mappings" / "dmc-procedures.csv"
            csv.write_text(csv.read_text().replace("38067,CT", "38067,MR"))
            wait_for(lambda: "mappings reloaded" in log(tmp_path), timeout=30)
            assert b"MSA|AA|" in await client.send(resend(1))
            wait_for(lambda: modality(tmp_path) == "MR", timeout=30)

            broken = tmp_path / "mappings" / "broken.yaml"
            broken.write_text("profile: broken\nextends: ihe-orm-o01\nattributes:\n"
                              "  PatientsName: PID-5\n")
            wait_for(lambda: "mappings not reloaded" in log(tmp_path), timeout=30)
            assert f"{broken}:4:3: 'PatientsName' is not a DICOM keyword" in log(tmp_path)
            csv.write_text(csv.read_text().replace("38067,MR", "38067,CT"))
            # Still the previous good set (MR), on the same connection
            assert b"MSA|AA|" in await client.send(resend(2))
            assert modality(tmp_path) == "MR"


async def test_reload_on_sighup(tmp_path: Path) -> None:
    with bridge(tmp_path, 0) as (proc, port):
        async with MllpClient("127.0.0.1", port) as client:
            assert b"MSA|AA|" in await client.send(resend(0))
            wait_for(lambda: modality(tmp_path) == "CT", timeout=30)
            csv = tmp_path / "mappings" / "dmc-procedures.csv"
            csv.write_text(csv.read_text().replace("38067,CT", "38067,MR"))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "mappings reloaded" in log(tmp_path), timeout=30)
            assert b"MSA|AA|" in await client.send(resend(1))
            wait_for(lambda: modality(tmp_path) == "MR", timeout=30)
