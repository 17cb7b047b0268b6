"""MLLP over TLS, with and without client certificates, against the real listener; and the
`send --tls` command against the bridge as a subprocess."""

from __future__ import annotations

import asyncio
import ssl
import sys

import pytest

from bridge.client import MllpClient
from bridge.tls import client_context

from listener_rig import BridgeThread, RawClient, fixture_message, frame, msa, rig_config
from peers import bridge_env, missing_peer, run_bridge


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    try:
        from tls_certs import TestCA
    except ImportError:
        missing_peer("the cryptography package (pip install cryptography) makes the test "
                     "certificates")
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCA(folder)
    rogue = TestCA(folder / "rogue", "Rogue CA")
    return {"ca": ca, "server": ca.issue("localhost", server=True),
            "client": ca.issue("RIS One", server=False),
            "rogue_client": rogue.issue("Impostor", server=False)}


def tls_overrides(pki, require_client_cert: bool) -> dict[str, str]:
    return {"mllp__tls__enabled": "true", "mllp__tls__certfile": str(pki["server"].cert),
            "mllp__tls__keyfile": str(pki["server"].key),
            "mllp__tls__ca_file": str(pki["ca"].ca_file),
            "mllp__tls__require_client_cert": str(require_client_cert).lower()}


def send_with(port: int, context: ssl.SSLContext) -> bytes:
    async def go() -> bytes:
        async with MllpClient("127.0.0.1", port, timeout=20, ssl=context) as client:
            return await client.send(fixture_message())

    return asyncio.run(go())


def refused(port: int, context: ssl.SSLContext | None) -> bool:
    """True when no ACK comes back: the handshake fails, or the bridge closes the line."""
    try:
        with RawClient(port, timeout=10, ssl_context=context) as client:
            client.send(frame(fixture_message()))
            return client.read_ack() is None
    except (ssl.SSLError, ConnectionError, OSError):
        return True


def test_tls_listener_answers_a_trusting_client(tmp_path, pki):
    config = rig_config(tmp_path, **tls_overrides(pki, require_client_cert=False))
    with BridgeThread(config) as bridge:
        ack = send_with(bridge.port, client_context(pki["ca"].ca_file))
        assert msa(ack)[0] == "AA"
        # A plain-TCP sender on the TLS port gets nothing, and breaks nothing.
        assert refused(bridge.port, None)
        # A client that does not trust our CA refuses the bridge.
        with pytest.raises(ssl.SSLCertVerificationError):
            send_with(bridge.port, client_context(pki["rogue_client"].cert))
        assert msa(send_with(bridge.port, client_context(pki["ca"].ca_file)))[0] == "AA"


def test_client_certificate_required(tmp_path, pki):
    config = rig_config(tmp_path, **tls_overrides(pki, require_client_cert=True))
    with BridgeThread(config) as bridge:
        good = client_context(pki["ca"].ca_file, pki["client"].cert, pki["client"].key)
        assert msa(send_with(bridge.port, good))[0] == "AA"
        no_cert = client_context(pki["ca"].ca_file)
        assert refused(bridge.port, no_cert)
        impostor = client_context(pki["ca"].ca_file, pki["rogue_client"].cert,
                                  pki["rogue_client"].key)
        assert refused(bridge.port, impostor)
        assert msa(send_with(bridge.port, good))[0] == "AA"


def test_send_command_over_tls_to_the_bridge_process(tmp_path, pki):
    import subprocess

    overrides = {f"BRIDGE_{k.upper()}": v
                 for k, v in tls_overrides(pki, require_client_cert=True).items()}
    with run_bridge(tmp_path, overrides) as bridge:
        fixture = tmp_path / "order.hl7"
        fixture.write_bytes(fixture_message())
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "send", str(fixture), "--port",
             str(bridge.mllp_port), "--host", "localhost", "--tls-ca", str(pki["ca"].ca_file),
             "--tls-cert", str(pki["client"].cert), "--tls-key", str(pki["client"].key)],
            capture_output=True, text=True, timeout=60, env=bridge_env())
        assert result.returncode == 0, result.stdout + result.stderr
        assert "MSA|AA|" in result.stdout
        assert "certificate RIS One" in bridge.log()


def test_tls_misconfiguration_stops_start_up_with_a_clear_message(tmp_path, pki):
    import subprocess

    from peers import ROOT

    env = bridge_env(BRIDGE_DATA_DIR=str(tmp_path / "data"), BRIDGE_MLLP__PORT="0",
                     BRIDGE_METRICS__ENABLED="false", BRIDGE_MLLP__TLS__ENABLED="true",
                     BRIDGE_MLLP__TLS__CERTFILE=str(tmp_path / "missing.crt"))
    result = subprocess.run([sys.executable, "-m", "bridge", "serve", "--config",
                             str(ROOT / "config.yaml")], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 2
    assert "mllp.tls: cannot load certfile" in result.stderr


def test_a_silent_client_cannot_hold_a_tls_handshake_open(tmp_path, pki):
    overrides = tls_overrides(pki, require_client_cert=False)
    config = rig_config(tmp_path, mllp__idle_timeout="1", **overrides)
    with BridgeThread(config) as bridge:
        with RawClient(bridge.port, timeout=15) as silent:
            assert silent.wait_closed()  # the handshake timeout follows idle_timeout
        assert msa(send_with(bridge.port, client_context(pki["ca"].ca_file)))[0] == "AA"
