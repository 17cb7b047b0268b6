"""Real peers for the tests: the bridge as a subprocess, DCMTK and Orthanc.

Where a peer is missing, the test skips with a loud reason; under CI (CI=true) a missing
peer fails the test instead, because .ci/run installs every peer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hl7"
# pynetdicom installs console scripts named like DCMTK's (findscu...): always use DCMTK's.
DCMTK_DIRS = ("/usr/bin", "/usr/local/bin")
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_WORKLISTS_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"


def missing_peer(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"peer missing under CI: {reason} (.ci/run must install it)")
    pytest.skip(reason=f"PEER MISSING, INTEGRATION TEST NOT RUN: {reason}")


def dcmtk(tool: str) -> str:
    for folder in DCMTK_DIRS:
        path = Path(folder) / tool
        if path.exists():
            return str(path)
    missing_peer(f"DCMTK {tool} not found (apt-get install dcmtk)")
    raise AssertionError  # unreachable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout} s")


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def bridge_env(**extra: str) -> dict[str, str]:
    """The environment for a bridge subprocess: this checkout's code, no stray BRIDGE_*,
    and a free port for every listener the caller does not set itself: a bridge running
    on the shipped config (2575, 11112, 9102) must not make a test fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update({"BRIDGE_MLLP__PORT": str(free_port()), "BRIDGE_SCP__PORT": str(free_port()),
                "BRIDGE_METRICS__PORT": str(free_port())})
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class BridgeProcess:
    proc: subprocess.Popen | None = None  # the `serve` process, for tests that kill it

    def __init__(self, workdir: Path, mllp_port: int, config_path: Path, log_path: Path):
        self.workdir = workdir
        self.mllp_port = mllp_port
        self.config_path = config_path
        self.log_path = log_path

    def send(self, *files: Path) -> subprocess.CompletedProcess:
        """Send files with the bridge's own `send` command, as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "bridge", "send", *map(str, files),
             "--port", str(self.mllp_port)],
            capture_output=True, text=True, timeout=60, cwd=self.workdir, env=bridge_env())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class KillableBridge:
    """A `python -m bridge serve` that a test SIGKILLs and starts again (crash safety,
    fail-over): the same folder, ports and environment each time, one log file per start."""

    def __init__(self, workdir: Path, start_timeout: float = 30.0, **env: str):
        self.workdir = workdir
        self.port, self.scp_port = free_port(), free_port()
        self.start_timeout = start_timeout
        self.env = bridge_env(BRIDGE_DATA_DIR=str(workdir / "data"),
                              BRIDGE_MLLP__PORT=str(self.port),
                              BRIDGE_SCP__PORT=str(self.scp_port),
                              BRIDGE_METRICS__ENABLED="false", **env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.workdir / f"bridge-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve", "--config", str(ROOT / "config.yaml")],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, timeout=self.start_timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def _limit_files(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@contextmanager
def run_bridge(workdir: Path, overrides: dict | None = None,
               nofile: int | None = None) -> Iterator[BridgeProcess]:
    """Start `python -m bridge serve` on the shipped config.yaml, with `overrides`
    given as BRIDGE_* environment variables (the documented override mechanism), and
    at most `nofile` open files when given (soft and hard limit)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {"BRIDGE_DATA_DIR": str(workdir / "data"), "BRIDGE_MLLP__PORT": str(port),
                "BRIDGE_SCP__ENABLED": "false",
                # Tests run side by side: never the fixed default metrics port.
                "BRIDGE_METRICS__PORT": str(free_port())}
    settings.update({k: str(v) for k, v in (overrides or {}).items()})  # overrides win
    env = bridge_env(**settings)
    log_path = workdir / "bridge.log"
    config = ROOT / "config.yaml"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: _limit_files(nofile)) if nofile else None)
    try:
        wait_for_port(port, proc)
        bridge = BridgeProcess(workdir, port, config, log_path)
        bridge.proc = proc
        yield bridge
    finally:
        _stop(proc)


@contextmanager
def run_wlmscpfs(data_dir: Path) -> Iterator[int]:
    """wlmscpfs serving <data_dir>/<CALLED_AE>/*.wl, with file reject on (its default).

    Its output goes to <data_dir>/../wlmscpfs.log: a pipe nobody reads would fill up and
    stall it (each query logs a few lines).
    """
    exe = dcmtk("wlmscpfs")
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    data_dir.mkdir(parents=True, exist_ok=True)
    # wlmscpfs warns on stderr for every record it completes: a pipe nobody reads fills
    # up and blocks it mid-query, so its output goes to a file beside the data folder.
    log = open(data_dir.parent / f"wlmscpfs-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "-dfp", str(data_dir), str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        _stop(proc)
        log.close()


@contextmanager
def run_orthanc(workdir: Path, worklists: Path, aet: str = "ORTHANC") -> Iterator[int]:
    """Orthanc (Debian 1.10.1) with its ModalityWorklists plugin serving `worklists`."""
    if not Path(ORTHANC).exists():
        missing_peer("Orthanc not found (apt-get install orthanc)")
    if not Path(ORTHANC_WORKLISTS_PLUGIN).exists():
        missing_peer(f"Orthanc's worklists plugin not found at {ORTHANC_WORKLISTS_PLUGIN}")
    dicom_port, http_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bridge-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        # Orthanc answers C-FIND only to known modalities unless told otherwise.
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowFindWorklist": True,
        "DicomModalities": {"test": ["TESTSCU", "127.0.0.1", 104]},
        "DefaultEncoding": "Utf8",
        "Plugins": [ORTHANC_WORKLISTS_PLUGIN],
        "Worklists": {"Enable": True, "Database": str(worklists)},
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_for_port(dicom_port, proc, timeout=30)
        yield dicom_port
    finally:
        _stop(proc)
        log.close()


def findscu_worklist(port: int, called_ae: str, keys: list[str], outdir: Path
                     ) -> list[pydicom.Dataset]:
    """Run DCMTK `findscu -W` with `-k` keys, extract each answer and read it back."""
    exe = dcmtk("findscu")
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("rsp*.dcm"):
        old.unlink()
    args = [exe, "-W", "-aet", "TESTSCU", "-aec", called_ae, "-X", "-od", str(outdir)]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TCP_NODELAY": "1"})
    assert result.returncode == 0, f"findscu failed: {result.stderr}"
    return [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]


# Return keys of a typical modality query: the attributes the walking skeleton promises.
WORKLIST_RETURN_KEYS = [
    "SpecificCharacterSet",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
]
