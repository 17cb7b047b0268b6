"""Fail-over: two bridges on one PostgreSQL database, one SIGKILLed again and again.

A RIS simulator sends a stream of new, change and cancel messages, alternating between
the two bridges; whatever got no ACK (the bridge died under it) it sends to the other one.
A killed bridge is restarted under the same name. At the end: every message AA'd was
applied exactly once; both SCPs answer exactly the live orders with their latest content;
each bridge's own .wl folder holds exactly them; the Orthanc double got each item version
(nearly) once: a delivery cut by a kill before it was marked done is repeated by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from pathlib import Path

import psycopg
import pydicom
import pytest
from conftest import drop_schema, pg_schema_url
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from bridge.client import MllpClient, ack_code
from bridge.dicomfile import file_name

from orders import orm
from orthanc_double import OrthancDouble
from peers import KillableBridge, wait_for

pytestmark = pytest.mark.integration

ORDERS = 600  # 600 NW + 300 XO + 120 CA = 1,020 messages
KILLS = 5


def stream() -> list[tuple[str, str, str]]:
    messages: list[tuple[str, str, str]] = []
    for i in range(ORDERS):
        order = f"F{i:03d}"
        ids = {"order": order, "accession": f"A{i:03d}", "rp_id": f"R{i}", "sps_id": f"S{i}"}
        messages.append((f"{order}-nw", order, orm(f"{order}-nw", name=f"NW^P{i}", **ids)))
        if i % 2 == 0:
            messages.append((f"{order}-xo", order, orm(f"{order}-xo", control="XO",
                                                      name=f"XO^P{i}", **ids)))
        if i % 5 == 0:
            messages.append((f"{order}-ca", order, orm(f"{order}-ca", control="CA",
                                                      status="CA", **ids)))
    # Interleave the orders (each order's messages keep their order): changes and cancels
    # then come while other orders are still arriving.
    rng = random.Random(7)
    by_order: dict[str, list] = {}
    for m in messages:
        by_order.setdefault(m[1], []).append(m)
    queues = list(by_order.values())
    out = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


def live_orders(messages) -> dict[str, str]:
    """Accession number -> the PatientName its item shows, for the orders still live."""
    final: dict[str, str | None] = {}
    for control_id, order, _ in messages:
        kind = control_id.rsplit("-", 1)[1]
        final[f"A{order[1:]}"] = None if kind == "ca" else f"{kind.upper()}^P{int(order[1:])}"
    return {acc: name for acc, name in final.items() if name is not None}


class CountingOrthanc(OrthancDouble):
    """The Orthanc double, counting each item version (ID, content) it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[tuple[str, str], int] = {}

    def _store(self, worklist_id: str, body: bytes, force_default: bool) -> None:
        super()._store(worklist_id, body, force_default)
        with self.lock:
            tags = dict(self.items[worklist_id])
            tags.pop("StudyInstanceUID", None)  # made up by the double when absent
            key = (worklist_id, json.dumps(tags, sort_keys=True))
            self.versions[key] = self.versions.get(key, 0) + 1


class Bridge(KillableBridge):
    """One instance of the cluster: its own folder and ports, the shared database, the
    shared Orthanc double."""

    def __init__(self, workdir: Path, name: str, url: str, orthanc: str):
        (workdir / name).mkdir()
        super().__init__(workdir / name, start_timeout=60, BRIDGE_STORE__URL=url,
                         BRIDGE_STORE__INSTANCE=name, BRIDGE_SINKS__ORTHANC__ENABLED="true",
                         BRIDGE_SINKS__ORTHANC__URL=orthanc,
                         BRIDGE_MAPPINGS__WATCH_SECONDS="0")
        self.name = name


async def ris(bridges: list[Bridge], messages, acks: dict[str, list[bytes]],
              done: threading.Event) -> None:
    """Message i goes to bridge i % 2; one that gets no ACK goes to the other, and so on
    until it is acknowledged (as a RIS with a primary and a secondary host)."""
    clients: dict[int, MllpClient | None] = {0: None, 1: None}

    async def send(which: int, raw: bytes) -> bytes:
        if clients[which] is None:
            client = MllpClient("127.0.0.1", bridges[which].port, timeout=10)
            await client.__aenter__()
            clients[which] = client
        try:
            return await clients[which].send(raw)
        except BaseException:
            client, clients[which] = clients[which], None
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise

    for n, (control_id, _, text) in enumerate(messages):
        which = n % 2
        while True:
            try:
                ack = await send(which, text.encode("latin-1"))
                assert ack_code(ack) == "AA", ack
                acks.setdefault(control_id, []).append(ack)
                break
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                which = 1 - which  # no ACK: resend to the other bridge
                await asyncio.sleep(0.01)
    done.set()


def find_all(port: int) -> dict[str, str]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="BRIDGE_MWL")
    assert assoc.is_established
    query = Dataset()
    query.PatientName = ""
    query.AccessionNumber = ""
    query.ScheduledProcedureStepSequence = Sequence([Dataset()])
    found: dict[str, str] = {}
    try:
        for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if status.Status in (0xFF00, 0xFF01):
                assert str(ds.AccessionNumber) not in found, "an item answered twice"
                found[str(ds.AccessionNumber)] = str(ds.PatientName)
    finally:
        assoc.release()
    return found


def test_two_bridges_one_database_with_kills_lose_nothing(tmp_path: Path) -> None:
    url = pg_schema_url()
    rng = random.Random(20261130)
    messages = stream()
    assert len(messages) >= 1000
    with CountingOrthanc() as orthanc:
        bridges = [Bridge(tmp_path, "a", url, orthanc.url), Bridge(tmp_path, "b", url,
                                                                  orthanc.url)]
        try:
            for b in bridges:
                b.start()
            acks: dict[str, list[bytes]] = {}
            done = threading.Event()
            sender = threading.Thread(
                target=lambda: asyncio.run(ris(bridges, messages, acks, done)), daemon=True)
            sender.start()
            thresholds = sorted(rng.sample(range(50, len(messages) - 50), KILLS))
            for threshold in thresholds:
                wait_for(lambda t=threshold: len(acks) >= t or done.is_set(), timeout=300,
                         interval=0.001)
                time.sleep(rng.uniform(0, 0.01))
                victim = rng.choice(bridges)
                victim.kill()
                time.sleep(rng.uniform(0, 0.3))  # the RIS fails over meanwhile
                victim.start()
            sender.join(timeout=300)
            assert done.is_set(), f"stream unfinished: {len(acks)} of {len(messages)} acked"
            assert sum(b.starts for b in bridges) == 2 + KILLS

            def drained() -> bool:
                with psycopg.connect(url) as conn:
                    return conn.execute("SELECT COUNT(*) FROM outbox WHERE state <> 'done'"
                                        ).fetchone()[0] == 0

            wait_for(drained, timeout=120, interval=0.2)
            live = live_orders(messages)
            # Both SCPs answer exactly the live orders with their latest content.
            for b in bridges:
                wait_for(lambda b=b: find_all(b.scp_port) == live, timeout=10, interval=0.2)
                assert find_all(b.scp_port) == live, b.name
        finally:
            for b in bridges:
                b.stop()

        with psycopg.connect(url) as conn:
            statuses = dict(conn.execute("SELECT status, COUNT(*) FROM journal GROUP BY status"
                                         ).fetchall())
            processed = dict(conn.execute(
                "SELECT control_id, COUNT(*) FROM journal WHERE status = 'processed' "
                "GROUP BY control_id").fetchall())
            keys = dict(conn.execute("SELECT order_key, item_key FROM items").fetchall())
        drop_schema(url)
        # Every message was acknowledged, every AA (first or repeated) the same ACK, and
        # each applied exactly once.
        assert set(acks) == {m[0] for m in messages}
        assert all(len(set(a)) == 1 for a in acks.values())
        assert processed == {m[0]: 1 for m in messages}
        assert "received" not in statuses, statuses
        # Each bridge's own folder holds exactly the live items, in their latest state.
        expected = {file_name(keys[f"F{acc[1:]}^RIS"]): name for acc, name in live.items()}
        for b in bridges:
            folder = b.workdir / "data" / "worklists"
            files = {p.name: p for p in folder.glob("*.wl")}
            assert set(files) == set(expected), b.name
            for fname, name in expected.items():
                assert str(pydicom.dcmread(files[fname]).PatientName) == name
        # Orthanc holds exactly the live items; each version arrived once, except the few
        # a kill cut between the delivery and its "done" mark.
        assert sorted(str(t.get("AccessionNumber")) for t in orthanc.items.values()) == \
            sorted(live)
        repeated = sum(n - 1 for n in orthanc.versions.values())
        print(f"fail-over: {len(messages)} messages, {KILLS} kills, "
              f"{sum(len(a) for a in acks.values()) - len(acks)} repeated AAs, "
              f"{len(orthanc.versions)} item versions to Orthanc, {repeated} repeated")
        assert repeated <= 20 * KILLS, f"{repeated} item versions delivered more than once"
