"""HTTP configuration (and the old metrics.* names), users on the command line."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import users
from bridge.config import load_config
from bridge.store import Store

from peers import ROOT, bridge_env


def test_http_defaults_and_environment() -> None:
    cfg = load_config(ROOT / "config.yaml", environ={})
    assert (cfg.http.enabled, cfg.http.host, cfg.http.port) == (True, "127.0.0.1", 8080)
    assert cfg.http.tls.certfile is None and cfg.http._notes == []
    cfg = load_config(ROOT / "config.yaml", environ={"BRIDGE_HTTP__PORT": "8443",
                                                     "BRIDGE_HTTP__TLS__CERTFILE": "c.pem"})
    assert cfg.http.port == 8443
    assert cfg.http.tls.certfile == ROOT / "c.pem"  # relative to the config file


def test_old_metrics_keys_set_the_http_server(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config.yaml", environ={"BRIDGE_METRICS__PORT": "9102"})
    assert cfg.http.port == 9102
    assert cfg.http._notes == ["metrics.port is now http.port: using 9102"]
    old = tmp_path / "old.yaml"
    old.write_text("metrics:\n  enabled: false\n  port: 9200\n")
    cfg = load_config(old, environ={})
    assert (cfg.http.enabled, cfg.http.port) == (False, 9200)
    # The new name, given in the environment, wins.
    cfg = load_config(old, environ={"BRIDGE_HTTP__PORT": "9300"})
    assert cfg.http.port == 9300


def cli(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", "user", *args, "--config",
                           str(ROOT / "config.yaml")], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env=bridge_env(BRIDGE_DATA_DIR=str(tmp_path / "data")))


def test_user_commands(tmp_path: Path) -> None:
    added = cli(tmp_path, "add", "alice", "--role", "operator", "--password-stdin",
                stdin="correct horse\n")
    assert added.returncode == 0, added.stderr
    assert cli(tmp_path, "add", "bob", "--password-stdin", stdin="battery staple\n"
               ).returncode == 0
    listed = cli(tmp_path, "list")
    assert listed.stdout.split() == ["alice", "operator", "bob", "viewer"]

    # A hash, never the password, in the store; argon2id.
    db = sqlite3.connect(tmp_path / "data" / "bridge.sqlite")
    stored = dict(db.execute("SELECT name, password_hash FROM users").fetchall())
    db.close()
    assert stored["alice"].startswith("$argon2id$")
    assert "correct horse" not in stored["alice"]

    again = cli(tmp_path, "add", "alice", "--password-stdin", stdin="another one\n")
    assert again.returncode == 2 and "exists" in again.stderr
    short = cli(tmp_path, "add", "carol", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    bad_role = cli(tmp_path, "add", "dave", "--role", "root", "--password-stdin", stdin="x" * 9)
    assert bad_role.returncode == 2

    assert cli(tmp_path, "passwd", "alice", "--password-stdin", stdin="new password\n"
               ).returncode == 0
    store = Store(tmp_path / "data" / "bridge.sqlite")
    try:
        assert users.verify(store.user("alice"), "new password")
        assert not users.verify(store.user("alice"), "correct horse")
        assert not users.verify(store.user("nobody"), "new password")
    finally:
        store.close()

    assert cli(tmp_path, "delete", "bob").returncode == 0
    assert cli(tmp_path, "delete", "bob").returncode == 1
    assert cli(tmp_path, "list").stdout.split() == ["alice", "operator"]


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "é"])
def test_bad_user_names(name: str) -> None:
    with pytest.raises(users.UserError):
        users.check_name(name)
