"""Crash safety: orders streamed while the bridge is killed with SIGKILL at random moments.

After every kill the bridge is restarted on the same store and folder; the sender, like a
real RIS, resends the message it got no ACK for. At the end: every message that got AA is
in the store and in the .wl folder exactly once and in its final state, no .wl file is
partial or corrupt, and the journal has no entry left half-way.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from pathlib import Path

import pydicom
import pytest

from bridge.client import MllpClient, ack_code
from bridge.dicomfile import file_name

from orders import orm
from peers import KillableBridge, wait_for

pytestmark = pytest.mark.integration

ORDERS = 120
KILLS = 3


def stream() -> list[tuple[str, str, str]]:
    """(control ID, order, text): every order's NW, then for some an XO (new time and
    name), then for others a CA; each order's messages keep their order in the stream."""
    messages: list[tuple[str, str, str]] = []
    for i in range(ORDERS):
        order = f"K{i:03d}"
        messages.append((f"{order}-nw", order, orm(f"{order}-nw", order=order,
                                                  accession=f"A{i:03d}", rp_id=f"R{i}",
                                                  sps_id=f"S{i}", name=f"NW^P{i}")))
        if i % 3 == 0:
            messages.append((f"{order}-xo", order, orm(
                f"{order}-xo", order=order, accession=f"A{i:03d}", rp_id=f"R{i}",
                sps_id=f"S{i}", control="XO", name=f"XO^P{i}", start="202402021500")))
        if i % 5 == 0:
            messages.append((f"{order}-ca", order, orm(
                f"{order}-ca", order=order, accession=f"A{i:03d}", rp_id=f"R{i}",
                sps_id=f"S{i}", control="CA", status="CA")))
    return messages


def expected_final(messages) -> dict[str, str | None]:
    """Order -> the PatientName its item must show, or None when it must be gone."""
    final: dict[str, str | None] = {}
    for control_id, order, _ in messages:
        kind = control_id.rsplit("-", 1)[1]
        i = int(order[1:])
        final[order] = None if kind == "ca" else f"{kind.upper()}^P{i}"
    return final


async def send_all(port: int, messages, acked: dict[str, int], done: threading.Event) -> None:
    """Send each message until it is acknowledged, reconnecting after every kill."""
    index = 0
    while index < len(messages):
        control_id, _, text = messages[index]
        try:
            async with MllpClient("127.0.0.1", port, timeout=10) as client:
                while index < len(messages):
                    control_id, _, text = messages[index]
                    ack = await client.send(text.encode("latin-1"))
                    assert ack_code(ack) == "AA", ack
                    acked[control_id] = acked.get(control_id, 0) + 1
                    index += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.sleep(0.05)  # the bridge is down: try again, same message
    done.set()


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    messages = stream()
    bridge = KillableBridge(tmp_path)
    bridge.start()
    acked: dict[str, int] = {}
    done = threading.Event()
    sender = threading.Thread(
        target=lambda: asyncio.run(send_all(bridge.port, messages, acked, done)), daemon=True)
    sender.start()
    # Kill when the stream has got this far (random points), plus a random delay of up to
    # a few messages so that the kill lands anywhere in a message's processing.
    thresholds = sorted(rng.sample(range(10, len(messages) - 10), KILLS))
    try:
        for threshold in thresholds:
            wait_for(lambda t=threshold: len(acked) >= t or done.is_set(), timeout=120,
                     interval=0.001)
            time.sleep(rng.uniform(0, 0.005))
            bridge.kill()
            bridge.start()
        sender.join(timeout=180)
        assert done.is_set(), f"the stream did not finish: {len(acked)} of {len(messages)} acked"
        assert bridge.starts > 1, "no kill happened before the stream ended"
        folder = tmp_path / "data" / "worklists"
        db_path = tmp_path / "data" / "bridge.sqlite"

        def drained() -> bool:
            db = sqlite3.connect(db_path)
            try:
                return db.execute("SELECT COUNT(*) FROM outbox WHERE state != 'done'"
                                  ).fetchone()[0] == 0
            finally:
                db.close()

        wait_for(drained, timeout=60, interval=0.2)
    finally:
        bridge.stop()

    # Every message got AA; a duplicate ACK (a resend after a kill) changed nothing.
    assert set(acked) == {m[0] for m in messages}
    db = sqlite3.connect(db_path)
    try:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM journal GROUP BY status"))
        processed = dict(db.execute("SELECT control_id, COUNT(*) FROM journal "
                                    "WHERE status = 'processed' GROUP BY control_id"))
        items = {row[0]: row[1:] for row in db.execute(
            "SELECT order_key, visible, item_key FROM items")}
    finally:
        db.close()
    assert "received" not in statuses, statuses  # nothing left half-way after a restart
    assert processed == {m[0]: 1 for m in messages}  # each message applied exactly once

    final = expected_final(messages)
    files = {p.name: p for p in folder.glob("*.wl")}
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"
    expected_files = {}
    for order, name in final.items():
        visible, item_key = items[f"{order}^RIS"]
        assert bool(visible) == (name is not None), order
        if name is not None:
            expected_files[file_name(item_key)] = name
    assert set(files) == set(expected_files)  # exactly once each, nothing stale
    for fname, name in expected_files.items():
        ds = pydicom.dcmread(files[fname])  # a partial file would not parse
        assert str(ds.PatientName) == name
