"""Configuration: the shipped file, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config

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
