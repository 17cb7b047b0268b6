"""The bridge (a subprocess) keeps Orthanc's /worklists in step through outages and crashes.

Orthanc's worklists plugin cannot run here (it needs Orthanc 1.12.9+, not in Debian 12), so
Orthanc is the test double of tests/orthanc_double.py, which answers as the recorded real
API does. The orders are real ORM^O01 messages over MLLP, built below; what Orthanc must end
up holding is worked out from the orders themselves, not from the bridge's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.client import MllpClient, ack_code
from bridge.store import Store

from orthanc_double import OrthancDouble
from peers import ROOT, bridge_env, run_bridge, wait_for

pytestmark = pytest.mark.integration

N_ORDERS = 300  # 300 NW + 120 XO + 80 CA = 500 messages
N_CHANGED, N_CANCELED = 120, 80
FAMILIES = ["Müller", "Dupont", "Øster", "Nakamura", "O'Brien", "Zoë"]
PROCEDURES = [("CT-HEAD", "CT Head", "CT"), ("MR-KNEE", "MR Knee", "MR"),
              ("US-ABD", "US Abdomen", "US"), ("DX-CHEST", "Chest X-ray", "DX")]


@dataclass
class Order:
    n: int
    versions: list[dict] = field(default_factory=list)  # what each NW/XO says
    canceled: bool = False

    @property
    def accession(self) -> str:
        return f"ACC{self.n:05d}"

    @property
    def study_uid(self) -> str:
        return f"1.2.826.0.1.3680043.10.543.{self.n}"


def _segment(name: str, fields: dict[int, str]) -> str:
    last = max(fields)
    first = 2 if name == "MSH" else 1  # MSH-1 is the field separator itself
    return name + "|" + "|".join(fields.get(i, "") for i in range(first, last + 1))


def orm(control_id: str, order: Order, control: str, status: str, version: dict) -> bytes:
    """An IHE ORM^O01 v2.3.1 with ZDS, with the fields mappings/ihe-orm-o01.yaml reads."""
    n = order.n
    placer, filler = f"PLC{n:05d}^RIS", f"FIL{n:05d}^PACS"
    code, text, modality = version["procedure"]
    segments = [
        _segment("MSH", {2: "^~\\&", 3: "RIS", 4: "HOSP", 5: "BRIDGE", 6: "HOSP",
                         7: "20250301080000", 9: "ORM^O01", 10: control_id, 11: "P",
                         12: "2.3.1", 18: "UNICODE UTF-8"}),
        _segment("PID", {3: f"PAT{n:05d}^^^HOSP", 5: version["name"], 7: "19700101",
                         8: "F" if n % 2 else "M"}),
        _segment("ORC", {1: control, 2: placer, 3: filler, 5: status,
                         7: f"^^^{version['start']}"}),
        _segment("OBR", {1: "1", 2: placer, 3: filler, 4: f"{code}^{text}^L",
                         18: order.accession, 19: f"RP{n:05d}", 20: f"SPS{n:05d}",
                         24: modality}),
        _segment("ZDS", {1: f"{order.study_uid}^^Application^DICOM"}),
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def first_version(n: int) -> dict:
    return {"name": f"{FAMILIES[n % len(FAMILIES)]}^Pat{n}",
            "start": f"202503{1 + n % 28:02d}{8 + n % 10:02d}{n % 60:02d}00",
            "procedure": PROCEDURES[n % len(PROCEDURES)]}


def build_stream(seed: int = 5) -> tuple[list[bytes], list[Order]]:
    """500 messages: a NW per order, XO for some, CA for others (some after an XO), shuffled
    with each order's own messages kept in order (NW, then XO, then CA)."""
    rng = random.Random(seed)
    orders = [Order(n) for n in range(N_ORDERS)]
    changed = set(rng.sample(range(N_ORDERS), N_CHANGED))
    canceled = set(rng.sample(range(N_ORDERS), N_CANCELED))
    events: dict[int, list[tuple[str, str, dict]]] = {}
    for order in orders:
        n = order.n
        first = first_version(n)
        events[n] = [("NW", "SC", first)]
        order.versions.append(first)
        if n in changed:
            second = {"name": f"{FAMILIES[(n + 1) % len(FAMILIES)]}^Pat{n}^Changed",
                      "start": f"202504{1 + n % 28:02d}{14 + n % 4:02d}3000",
                      "procedure": PROCEDURES[(n + 1) % len(PROCEDURES)]}
            events[n].append(("XO", "SC", second))
            order.versions.append(second)
        if n in canceled:
            events[n].append(("CA", "CA", order.versions[-1]))
            order.canceled = True
    messages = []
    pending = {n: list(e) for n, e in events.items()}
    while pending:
        n = rng.choice(list(pending))
        control, status, version = pending[n].pop(0)
        if not pending[n]:
            del pending[n]
        messages.append(orm(f"MSG{len(messages):04d}", orders[n], control, status, version))
    assert len(messages) == N_ORDERS + N_CHANGED + N_CANCELED == 500
    return messages, orders


def expected_items(orders: list[Order]) -> dict[str, dict]:
    """What Orthanc must hold, by accession number: read from the final version of each
    order the way the IHE mapping reads HL7 (PN components as is; TS date and time)."""
    out = {}
    for order in orders:
        if order.canceled:
            continue
        v = order.versions[-1]
        _code, text, modality = v["procedure"]
        out[order.accession] = {
            "PatientID": f"PAT{order.n:05d}", "PatientName": v["name"],
            "StudyInstanceUID": order.study_uid, "RequestedProcedureDescription": text,
            "Modality": modality, "ScheduledProcedureStepStartDate": v["start"][:8],
            "ScheduledProcedureStepStartTime": v["start"][8:],
            "SpecificCharacterSet": "ISO_IR 192",
        }
    return out


def held(orthanc: OrthancDouble) -> dict[str, list[dict]]:
    """What the double holds, by accession number (a list, to see duplicates)."""
    by_accession: dict[str, list[dict]] = {}
    with orthanc.lock:
        items = [dict(t) for t in orthanc.items.values()]
    for tags in items:
        sps = tags["ScheduledProcedureStepSequence"][0]
        by_accession.setdefault(tags.get("AccessionNumber", ""), []).append({
            "PatientID": tags["PatientID"], "PatientName": tags["PatientName"],
            "StudyInstanceUID": tags["StudyInstanceUID"],
            "RequestedProcedureDescription": tags["RequestedProcedureDescription"],
            "Modality": sps["Modality"],
            "ScheduledProcedureStepStartDate": sps["ScheduledProcedureStepStartDate"],
            "ScheduledProcedureStepStartTime": sps["ScheduledProcedureStepStartTime"],
            "SpecificCharacterSet": tags["SpecificCharacterSet"],
        })
    return by_accession


def assert_in_step(orthanc: OrthancDouble, expected: dict[str, dict]) -> None:
    actual = held(orthanc)
    duplicates = {a: len(v) for a, v in actual.items() if len(v) != 1}
    assert not duplicates, f"accession numbers held more than once: {duplicates}"
    assert sorted(actual) == sorted(expected), (
        f"missing: {sorted(set(expected) - set(actual))[:10]}, "
        f"stale: {sorted(set(actual) - set(expected))[:10]}")
    wrong = {a: (actual[a][0], expected[a]) for a in expected if actual[a][0] != expected[a]}
    assert not wrong, f"{len(wrong)} item(s) not in their final state, e.g. " \
                      f"{next(iter(wrong.items()))}"
    # Only PUTs with our IDs: POST /worklists/create would make a duplicate on each retry.
    assert orthanc.count("POST") == 0


def in_step(orthanc: OrthancDouble, expected: dict[str, dict]) -> bool:
    try:
        assert_in_step(orthanc, expected)
    except AssertionError:
        return False
    return True


def wait_in_step(orthanc: OrthancDouble, expected: dict[str, dict], timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: in_step(orthanc, expected), timeout=timeout, interval=0.2)
    assert_in_step(orthanc, expected)  # says what is wrong when it never got in step


async def send(port: int, messages: list[bytes], pause_every: int = 0,
               pause: float = 0.0) -> None:
    async with MllpClient("127.0.0.1", port) as client:
        for i, message in enumerate(messages, start=1):
            ack = await client.send(message)
            assert ack_code(ack) == "AA", ack
            if pause_every and i % pause_every == 0:
                await asyncio.sleep(pause)


def bridge_overrides(orthanc: OrthancDouble, **extra: str) -> dict[str, str]:
    return {
        "BRIDGE_SINKS__ORTHANC__ENABLED": "true",
        "BRIDGE_SINKS__ORTHANC__URL": orthanc.url,
        "BRIDGE_SINKS__ORTHANC__TIMEOUT": "5",
        # Fast retries keep the test short; three attempts prove an outage charges none.
        "BRIDGE_SINKS__ORTHANC__MIN_BACKOFF": "0.2",
        "BRIDGE_SINKS__ORTHANC__MAX_BACKOFF": "1",
        "BRIDGE_SINKS__ORTHANC__MAX_ATTEMPTS": "3",
        **extra,
    }


@pytest.fixture
def orthanc() -> Iterator[OrthancDouble]:
    with OrthancDouble() as double:
        yield double


def test_orthanc_down_for_30_seconds_mid_stream(tmp_path: Path,
                                                orthanc: OrthancDouble) -> None:
    messages, orders = build_stream()
    expected = expected_items(orders)
    folder = tmp_path / "worklists"
    with run_bridge(tmp_path / "bridge", {**bridge_overrides(orthanc),
                                          "BRIDGE_SINKS__FOLDER__PATH": folder}) as bridge:
        asyncio.run(send(bridge.mllp_port, messages[:200]))
        orthanc.refuse()  # while the outbox is still delivering the first 200
        down_at = time.monotonic()
        # The next 200 arrive over the outage, spread over its first half.
        asyncio.run(send(bridge.mllp_port, messages[200:400], pause_every=20, pause=1.5))
        wait_for(lambda: "sink unreachable" in bridge.log(), timeout=10)
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        orthanc.accept()
        asyncio.run(send(bridge.mllp_port, messages[400:]))
        wait_in_step(orthanc, expected, timeout=30)
        assert "sink reachable again" in bridge.log()
        assert "giving up" not in bridge.log()
        # The folder sink ran beside it from the same store, through the same outage.
        wait_for(lambda: len(list(folder.glob("*.wl"))) == len(expected), timeout=30)


def test_bridge_killed_mid_stream_and_restarted(tmp_path: Path,
                                                orthanc: OrthancDouble) -> None:
    messages, orders = build_stream(seed=7)
    expected = expected_items(orders)
    # Both runs share one store and one folder.
    overrides = bridge_overrides(orthanc, BRIDGE_STORE__PATH=str(tmp_path / "bridge.sqlite"),
                                 BRIDGE_SINKS__FOLDER__PATH=str(tmp_path / "worklists"))
    orthanc.delay = 0.01  # deliveries lag behind the ACKs: the kill finds work in flight
    with run_bridge(tmp_path / "first", overrides) as bridge:
        asyncio.run(send(bridge.mllp_port, messages[:250]))
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGKILL)
        bridge.proc.wait(10)
    orthanc.delay = 0
    with run_bridge(tmp_path / "second", overrides) as bridge:
        # A RIS resends what it is unsure of: the same ACK comes back, nothing changes.
        asyncio.run(send(bridge.mllp_port, messages[245:]))
        wait_in_step(orthanc, expected, timeout=60)


def test_item_removed_by_orthanc_stays_removed_and_resync(tmp_path: Path,
                                                          orthanc: OrthancDouble) -> None:
    """Orthanc deletes an item once its study arrives (DeleteWorklistsOnStableStudy): a
    later XO must not bring it back. An item that went dead while Orthanc refused it is
    delivered by `resync`, which also deletes a stray item under the bridge's ID scheme
    and leaves another program's item alone."""
    a, b, c = (Order(n, [first_version(n)]) for n in (901, 902, 903))
    db = tmp_path / "bridge.sqlite"
    overrides = bridge_overrides(orthanc, BRIDGE_STORE__PATH=str(db))
    with run_bridge(tmp_path / "bridge", overrides) as bridge:
        asyncio.run(send(bridge.mllp_port, [orm(f"M{o.n}", o, "NW", "SC", o.versions[0])
                                            for o in (a, c)]))
        wait_for(lambda: len(orthanc.items) == 2, timeout=30)
        log_so_far = bridge.log
        [gone] = orthanc.study_arrived(f"PAT{a.n:05d}", a.study_uid)
        change = {"name": "Late^Change", "start": "20250501120000",
                  "procedure": PROCEDURES[0]}
        asyncio.run(send(bridge.mllp_port, [orm("LATE-XO", a, "XO", "SC", change)]))
        # The bridge asks Orthanc for the item, finds it gone, and records that.
        wait_for(lambda: "removed by Orthanc itself" in bridge.log(), timeout=30)
        # b meets an Orthanc that answers 500: three attempts, then dead.
        orthanc.fail_with(500)
        asyncio.run(send(bridge.mllp_port, [orm("M902", b, "NW", "SC", b.versions[0])]))
        wait_for(lambda: "giving up: dead" in bridge.log(), timeout=30)
        orthanc.fail_with(None)
    log = log_so_far()
    assert gone not in orthanc.items, log
    assert orthanc.count("PUT", f"/worklists/{gone}") == 1, (orthanc.requests, log)
    store = Store(db)
    a_state, b_state = ({s.sink: s for s in store.outbox_state(
        f"PLC{o.n:05d}^RIS|RP{o.n:05d}|SPS{o.n:05d}")}["orthanc"] for o in (a, b))
    folder_b = {s.sink: s for s in store.outbox_state(
        f"PLC{b.n:05d}^RIS|RP{b.n:05d}|SPS{b.n:05d}")}["folder"]
    store.close()
    assert folder_b.state == "done", log  # the folder sink has its own rows, unaffected
    assert (a_state.state, a_state.removed_by_sink) == ("done", True), (a_state, log)
    assert (b_state.state, b_state.attempts) == ("dead", 3), (b_state, log)
    assert "HTTP 500" in (b_state.last_error or ""), b_state
    # Drift: another program's item, and a stray item under the bridge's ID scheme.
    orthanc.items["external-ct"] = {"PatientID": "PID-0001"}
    stray = "hl7wb-" + "0" * 8 + "-0000-5000-8000-" + "0" * 12
    orthanc.items[stray] = {"PatientID": "old"}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "resync", "--sink", "orthanc", "--config",
         str(ROOT / "config.yaml")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=bridge_env(BRIDGE_DATA_DIR=str(tmp_path / "data"), **overrides))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "orthanc: 1 extra item(s) deleted" in result.stdout
    assert "1 item(s) of other programs left alone" in result.stdout
    # b delivered at last, c untouched, a still gone, the foreign item kept, the stray not.
    accessions = sorted(t.get("AccessionNumber", i) for i, t in orthanc.items.items())
    assert accessions == sorted([b.accession, c.accession, "external-ct"]), \
        (result.stdout, result.stderr)
