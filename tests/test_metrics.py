"""/metrics and /healthz scraped from a running bridge (subprocess), after real traffic."""

from __future__ import annotations

import re

import httpx

from listener_rig import RawClient, fixture_message, frame, msa, with_control_id
from peers import FIXTURES, free_port, run_bridge, wait_for


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if got == want:
            return float(match.group(3))
    return None


def test_metrics_and_healthz_of_a_running_bridge(tmp_path):
    port = free_port()
    with run_bridge(tmp_path, {"BRIDGE_METRICS__PORT": str(port)}) as bridge:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base), timeout=20)
        with RawClient(bridge.mllp_port) as client:
            assert msa(client.exchange(with_control_id(fixture_message(), "M1")))[0] == "AA"
            assert msa(client.exchange(with_control_id(fixture_message(), "M2")))[0] == "AA"
            # Scheduling messages have no profile: AR.
            siu = b"MSH|^~\\&|SCHED|H|BR|H|20240101||SIU^S12|S1|P|2.5\rSCH|1\r"
            assert msa(client.exchange(siu))[0] == "AR"
            modality_missing = (FIXTURES / "msfhirconv__ORM-O01-03.hl7").read_bytes()
            from bridge.client import split_messages
            assert msa(client.exchange(split_messages(modality_missing)[0]))[0] == "AE"
            client.send(frame(b"\x00garbage"))
            assert msa(client.read_ack())[0] == "AR"

            text = httpx.get(f"{base}/metrics", timeout=10).text
            assert sample(text, "hl7bridge_messages_total", message_type="ORM^O01",
                          result="AA") == 2
            assert sample(text, "hl7bridge_messages_total", message_type="SIU^S12",
                          result="AR") == 1
            assert sample(text, "hl7bridge_messages_total", message_type="ORM^O01",
                          result="AE") == 1
            assert sample(text, "hl7bridge_messages_total", message_type="none",
                          result="AR") == 1
            assert sample(text, "hl7bridge_ack_latency_seconds_count") == 5
            assert sample(text, "hl7bridge_mllp_connections") == 1
        assert sample(text, "hl7bridge_outbox_depth", sink="folder") is not None
        # Defined for the MWL SCP to observe: present, empty.
        assert sample(text, "hl7bridge_cfind_latency_seconds_count") == 0

        # The outbox drains: the gauge follows at the next scrape.
        wait_for(lambda: sample(httpx.get(f"{base}/metrics", timeout=10).text,
                                "hl7bridge_outbox_depth", sink="folder") == 0, timeout=20)
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["outbox"] == {"folder": 0}
        assert body["mllp_port"] == bridge.mllp_port
        assert httpx.get(f"{base}/other", timeout=10).status_code == 404
        assert httpx.post(f"{base}/metrics", timeout=10).status_code == 405


def test_message_type_labels_are_bounded(tmp_path):
    """A sender cannot grow the metrics without limit with made-up MSH-9 values."""
    port = free_port()
    with run_bridge(tmp_path, {"BRIDGE_METRICS__PORT": str(port)}) as bridge:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}"), timeout=20)
        with RawClient(bridge.mllp_port) as client:
            for i in range(100):
                raw = fixture_message().replace(b"|ORM^O01|", f"|Q{i:02d}^Z{i:02d}|".encode())
                assert msa(client.exchange(raw))[0] == "AR"
            client.send(frame(fixture_message().replace(b"|ORM^O01|", b"|<script>^x|")))
            assert msa(client.read_ack())[0] == "AR"
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        types = set(re.findall(r'hl7bridge_messages_total\{message_type="([^"]*)"', text))
        assert len(types) <= 65
        assert "other" in types and "<script>^x" not in types


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_cfind_latency_is_observed_by_the_scp(tmp_path):
    """Each C-FIND the built-in SCP answers lands in hl7bridge_cfind_latency_seconds."""
    from peers import findscu_worklist

    port, scp_port = free_port(), free_port()
    with run_bridge(tmp_path, {"BRIDGE_METRICS__PORT": str(port),
                               "BRIDGE_SCP__ENABLED": "true",
                               "BRIDGE_SCP__PORT": str(scp_port)}) as bridge:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base), timeout=20)
        with RawClient(bridge.mllp_port) as client:
            assert msa(client.exchange(with_control_id(fixture_message(), "F1")))[0] == "AA"
        for n in range(2):
            answers = findscu_worklist(scp_port, "BRIDGE_MWL", ["PatientID"], tmp_path / f"q{n}")
            assert len(answers) == 1
        text = httpx.get(f"{base}/metrics", timeout=10).text
        assert sample(text, "hl7bridge_cfind_latency_seconds_count") == 2
