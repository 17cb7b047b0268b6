"""The wheel as a `pip install` user gets it: outside the checkout it starts on the
packaged config and mappings, and `init` writes a starter configuration."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import bridge

from peers import FIXTURES, ROOT, free_port, missing_peer, wait_for

pytestmark = pytest.mark.integration


def _run(args: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A fresh venv holding only the wheel; the dependencies come from the test's own
    environment through a path entry (not its .pth files: the checkout's editable
    install must not leak in)."""
    root = tmp_path_factory.mktemp("packaging")
    # Build from a copy, so that the build leaves nothing in the checkout.
    source = root / "source"
    source.mkdir()
    for name in ("bridge", "mappings"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("config.yaml", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BRIDGE_") and k != "PYTHONPATH"}
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist",
                  source], root, env)
    if built.returncode != 0:
        missing_peer(f"cannot build the wheel (setuptools>=77 from the index?): "
                     f"{built.stderr[-500:]}")
    [wheel] = (root / "dist").glob("*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], root, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   root, env).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
                 wheel], root, env)
    assert done.returncode == 0, done.stderr
    return venv, env


def test_the_wheel_holds_the_defaults_and_init_writes_a_starter_config(installed, tmp_path):
    venv, env = installed
    cli = venv / "bin" / "hl7-worklist-bridge"
    where = _run([venv / "bin" / "python", "-c", "import bridge; print(bridge.__file__)"],
                 tmp_path, env)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # not the checkout
    assert _run([cli, "--version"], tmp_path, env).stdout.strip() == \
        f"hl7-worklist-bridge {bridge.__version__}"
    made = _run([cli, "init", "site"], tmp_path, env)
    assert made.returncode == 0, made.stderr
    site_dir = tmp_path / "site"
    assert (site_dir / "config.yaml").read_text() == (ROOT / "config.yaml").read_text()
    shipped = sorted(p.name for p in (ROOT / "mappings").iterdir())
    assert sorted(p.name for p in (site_dir / "mappings").iterdir()) == shipped
    checked = _run([cli, "check-mapping", *sorted((site_dir / "mappings").glob("*.yaml"))],
                   tmp_path, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = _run([cli, "init", "site"], tmp_path, env)
    assert again.returncode == 2 and "already there" in again.stderr


def test_serve_without_a_config_runs_on_the_packaged_defaults(installed, tmp_path):
    venv, env = installed
    cli = venv / "bin" / "hl7-worklist-bridge"
    port = free_port()
    env = {**env, "XDG_DATA_HOME": str(tmp_path / "xdg"), "BRIDGE_MLLP__PORT": str(port),
           "BRIDGE_SCP__PORT": str(free_port()), "BRIDGE_METRICS__PORT": str(free_port())}
    empty = tmp_path / "empty"
    empty.mkdir()
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([cli, "serve"], cwd=empty, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"ready" in (tmp_path / "serve.log").read_bytes()
                 or proc.poll() is not None, timeout=60)
        sent = _run([cli, "send", FIXTURES / "dcm4che__ORM_O01_v231_2019.hl7", "--port", port],
                    empty, env, timeout=60)
        assert "MSA|AA|103106" in sent.stdout, sent.stdout + sent.stderr
        data = tmp_path / "xdg" / "hl7-worklist-bridge"
        wait_for(lambda: list((data / "worklists").glob("*.wl")), timeout=30)
        assert (data / "bridge.sqlite").exists()
    finally:
        proc.terminate()
        proc.wait(30)
    log = (tmp_path / "serve.log").read_text()
    assert "running on the packaged defaults" in log, log
    assert list(empty.iterdir()) == []  # nothing written where it was started
