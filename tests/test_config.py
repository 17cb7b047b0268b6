"""Configuration: the shipped file, environment overrides, errors that name the key."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config

from peers import bridge_env

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_runs_on_embedded_defaults() -> None:
    cfg = load_config(ROOT / "config.yaml", environ={})
    assert (cfg.mllp.host, cfg.mllp.port) == ("127.0.0.1", 2575)
    assert cfg.scp.port == 11112
    assert cfg.store_path == ROOT / "data" / "bridge.sqlite"
    assert cfg.folder_path == ROOT / "data" / "worklists"
    assert cfg.mappings.dir == ROOT / "mappings"


def test_environment_overrides_any_key() -> None:
    cfg = load_config(ROOT / "config.yaml", environ={
        "BRIDGE_MLLP__PORT": "2576", "BRIDGE_SINKS__FOLDER__LAYOUT": "by_station_ae",
        "BRIDGE_SINKS__FOLDER__ENABLED": "false", "BRIDGE_DATA_DIR": "/srv/bridge"})
    assert cfg.mllp.port == 2576
    assert cfg.sinks.folder.layout == "by_station_ae" and not cfg.sinks.folder.enabled
    assert cfg.store_path == Path("/srv/bridge/bridge.sqlite")


@pytest.mark.parametrize(("env", "key"), [
    ({"BRIDGE_MLLP__PORT": "many"}, "mllp.port"),
    ({"BRIDGE_MLLP__PORT": "70000"}, "mllp.port"),
    ({"BRIDGE_SINKS__FOLDER__LAYOUT": "tree"}, "sinks.folder.layout"),
    ({"BRIDGE_MLLP__PROT": "1"}, "mllp.prot"),
])
def test_a_bad_value_names_the_key(env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config.yaml", environ=env)
    assert f": {key}: " in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("mllp: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})


# --- broken configurations: one line naming the key, exit 2, never a traceback ---------

def _occupied() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


MAPPING = "profile: broken\nextends: ihe-orm-o01\nattributes:\n  Modality: {from: OBR-24, %s}\n"

# (id, config text (bytes: written as is), files to make, mapping file text, expected text)
BROKEN = [
    ("ae-backslash", "scp: {enabled: true, ae_title: 'MWL\\\\X'}", {}, None, "scp.ae_title"),
    ("bad-host", "mllp: {host: 'no such host!'}", {}, None, "mllp.host"),
    ("unresolvable-host", "mllp: {host: no-such-host.invalid}", {}, None, "mllp.host"),
    ("data-dir-file", "data_dir: afile", {"afile": "x"}, None, "data_dir: "),
    ("not-utf8", b"log_level: INFO\n# caf\xe9\n", {}, None, "c.yaml:2: not UTF-8"),
    ("store-path-folder", "store: {path: adir}", {"adir/": ""}, None, "store.path: "),
    ("folder-sink-file", "sinks: {folder: {path: afile}}", {"afile": "x"}, None,
     "sinks.folder.path: "),
    ("klingon", "mllp: {default_charset: KLINGON}", {}, None, "mllp.default_charset"),
    ("orthanc-url", "sinks: {orthanc: {enabled: true, url: not-a-url}}", {}, None,
     "sinks.orthanc.url"),
    ("no-visible-status", "lifecycle: {visible_statuses: []}", {}, None,
     "lifecycle.visible_statuses"),
    ("required-no", "", {}, MAPPING % "required: no", "broken.yaml:4:"),
    ("required-false-string", "", {}, MAPPING % 'required: "false"', "broken.yaml:4:"),
    ("mapping-not-utf8", "", {}, b"profile: broken\n# caf\xe9\n", "broken.yaml:2:"),
]


@pytest.mark.parametrize(("case", "text", "files", "mapping", "expected"), BROKEN,
                         ids=[b[0] for b in BROKEN])
def test_a_broken_configuration_stops_with_one_line_naming_the_key(
        tmp_path: Path, case: str, text: str | bytes, files: dict, mapping: str | bytes | None,
        expected: str) -> None:
    for name, content in files.items():
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text(content)
    mappings = ROOT / "mappings"
    if mapping is not None:
        mappings = tmp_path / "mappings"
        shutil.copytree(ROOT / "mappings", mappings)
        target = mappings / "broken.yaml"
        target.write_bytes(mapping if isinstance(mapping, bytes) else mapping.encode())
    config = tmp_path / "c.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    env = {"BRIDGE_MAPPINGS__DIR": str(mappings), "BRIDGE_METRICS__ENABLED": "false"}
    if "data_dir" not in str(text):
        env["BRIDGE_DATA_DIR"] = str(tmp_path / "data")
    result = _serve(config, env)
    _one_clear_line(result, expected)


@pytest.mark.parametrize("section", ["mllp", "scp"])
def test_a_port_in_use_stops_with_one_line_naming_key_and_address(tmp_path: Path,
                                                                   section: str) -> None:
    with _occupied() as taken:
        port = taken.getsockname()[1]
        result = _serve(tmp_path / "none.yaml", {
            "BRIDGE_DATA_DIR": str(tmp_path / "data"), "BRIDGE_MAPPINGS__DIR":
            str(ROOT / "mappings"), "BRIDGE_METRICS__ENABLED": "false",
            "BRIDGE_SCP__ENABLED": "true", f"BRIDGE_{section.upper()}__PORT": str(port)},
            config_text="")
    _one_clear_line(result, f"{section}.port: cannot listen on 127.0.0.1:{port}")


def _serve(config: Path, env: dict[str, str], config_text: str | None = None
           ) -> subprocess.CompletedProcess:
    if config_text is not None:
        config.write_text(config_text)
    return subprocess.run([sys.executable, "-m", "bridge", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=bridge_env(**env))


def _one_clear_line(result: subprocess.CompletedProcess, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert "ready" not in result.stdout, output
    naming = [line for line in result.stderr.splitlines() if expected in line]
    assert len(naming) == 1, output
    assert naming[0].startswith(("configuration error: ", "mapping error: ")), output


def test_checks_also_apply_to_environment_overrides_and_scp_titles() -> None:
    with pytest.raises(ConfigError, match=r"scp.allowed_calling_aes: 'CT\\\\01'"):
        load_config(ROOT / "config.yaml", environ={"BRIDGE_SCP__ALLOWED_CALLING_AES":
                                                   "MR01,CT\\01"})
    for host in ("0.0.0.0", "::", "localhost", "pacs-1.example.org"):
        assert load_config(ROOT / "config.yaml", {"BRIDGE_MLLP__HOST": host}).mllp.host == host
    for url in ("http://orthanc:8042", "https://[::1]:8042/orthanc", "http://orthanc_1:8042"):
        load_config(ROOT / "config.yaml", {"BRIDGE_SINKS__ORTHANC__URL": url})
    with pytest.raises(ConfigError, match=r"sinks\.orthanc\.url"):
        load_config(ROOT / "config.yaml", {"BRIDGE_SINKS__ORTHANC__URL": "ftp://orthanc"})


# --- tests never collide with a bridge on the shipped ports (issue 14 item 12) ----------

def test_bridge_subprocesses_of_the_tests_never_listen_on_the_default_ports() -> None:
    env = {k: v for k, v in bridge_env(BRIDGE_DATA_DIR="/tmp/x").items()
           if k.startswith("BRIDGE_")}
    config = load_config(ROOT / "config.yaml", env)
    ports = {config.mllp.port, config.scp.port, config.metrics.port}
    assert not ports & {2575, 11112, 9102, 8080}, ports
@pytest.mark.parametrize(("text", "key"), [
    ("mllp:\n  idle_timeout: .inf\n", "mllp.idle_timeout"),
    ("mllp:\n  idle_timeout: .nan\n", "mllp.idle_timeout"),
    ("mllp:\n  frame_timeout: .inf\n", "mllp.frame_timeout"),
    ("mllp:\n  frame_timeout: 0\n", "mllp.frame_timeout"),
    ("mllp:\n  max_connections: 100000000\n", "mllp.max_connections"),
    ("mllp:\n  max_connections_per_peer: 0\n", "mllp.max_connections_per_peer"),
    ("mllp:\n  allowed_peers: [10.0.0.1, not-an-address]\n", "mllp.allowed_peers"),
    ("mllp:\n  allowed_peers: [10.0.0.0/33]\n", "mllp.allowed_peers"),
    ("mllp:\n  tls:\n    handshake_timeout: .inf\n", "mllp.tls.handshake_timeout"),
    ("mllp:\n  tls:\n    max_handshakes: 0\n", "mllp.tls.max_handshakes"),
])
def test_unusable_mllp_limits_are_refused_naming_the_key(tmp_path: Path, text: str,
                                                         key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f": {key}: " in str(err.value)


def test_mllp_flood_limits_defaults_and_environment() -> None:
    cfg = load_config(ROOT / "config.yaml", environ={})
    # An idle connection frees its place in minutes, not hours; every bound is finite.
    assert 0 < cfg.mllp.idle_timeout <= 600
    assert 0 < load_config(None, environ={}).mllp.idle_timeout <= 600  # without a file too
    assert 0 < cfg.mllp.frame_timeout <= cfg.mllp.idle_timeout
    assert cfg.mllp.max_connections_per_peer < cfg.mllp.max_connections
    assert cfg.mllp.allowed_peers == []
    cfg = load_config(ROOT / "config.yaml", environ={
        "BRIDGE_MLLP__ALLOWED_PEERS": "10.1.2.3, 10.9.0.0/16,fd00::/8"})
    assert cfg.mllp.allowed_peers == ["10.1.2.3", "10.9.0.0/16", "fd00::/8"]
