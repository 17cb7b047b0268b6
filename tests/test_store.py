"""The store's thread: group commit, and callers that go away while it works."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bridge.store import AsyncStore, Store
from tests.peers import ROOT, missing_peer


async def occupy(store: AsyncStore) -> tuple[asyncio.Future, threading.Event]:
    """A call that holds the store's thread until the returned event is set; returns once
    it is running, so that calls made next queue up behind it (and form one group)."""
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    blocker = asyncio.ensure_future(store.run(hold))
    await asyncio.to_thread(started.wait, 10)
    return blocker, gate


async def test_a_cancelled_caller_does_not_stop_the_store_thread(tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "s.sqlite"))
    try:
        blocker, gate = await occupy(store)
        queued = asyncio.ensure_future(store.run(store.store.journal_received, b"x", "p"))
        running = asyncio.ensure_future(store.run(store.store.journal_received, b"y", "p"))
        await asyncio.sleep(0.05)
        queued.cancel()  # its connection closed while the call waited its turn
        # The cancel reaches the store's own future on the loop's next turn: let it, or the
        # thread, woken by the gate, may start the call first (a race under load).
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        journal_id = await asyncio.wait_for(running, 5)
        # The thread is alive and serves the next call; the cancelled call never ran.
        entries = await asyncio.wait_for(store.run(store.store.journal_entries), 5)
        assert [e.raw for e in entries] == [b"y"] and entries[0].id == journal_id
    finally:
        store.close()


async def test_a_caller_cancelled_while_its_call_runs_leaves_the_group_served(
        tmp_path: Path) -> None:
    """The call still runs to its end (and commits); its result is dropped, and the other
    calls of its group get theirs."""
    store = AsyncStore(Store(tmp_path / "s.sqlite"))
    started, gate = threading.Event(), threading.Event()

    def journal_slowly() -> int:
        journal_id = store.store.journal_received(b"slow", "p")
        started.set()
        gate.wait(10)
        return journal_id

    try:
        blocker, first_gate = await occupy(store)
        slow = asyncio.ensure_future(store.run(journal_slowly))
        other = asyncio.ensure_future(store.run(store.store.journal_received, b"other", "p"))
        await asyncio.sleep(0.05)
        first_gate.set()  # the two queued calls now run as one group
        await blocker
        await asyncio.to_thread(started.wait, 10)
        slow.cancel()  # its connection closed while the call ran
        gate.set()
        assert isinstance(await asyncio.wait_for(other, 5), int)
        assert slow.cancelled()
        entries = await asyncio.wait_for(store.run(store.store.journal_entries), 5)
        assert sorted(e.raw for e in entries) == [b"other", b"slow"]
    finally:
        store.close()


async def test_calls_queued_together_commit_together_and_fail_alone(tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "s.sqlite"))

    def fails() -> None:
        store.store.db.execute("INSERT INTO journal (received_at, peer, raw) "
                               "VALUES (1, 'z', x'00')")
        raise ValueError("this call fails after writing")

    try:
        blocker, gate = await occupy(store)
        calls = [asyncio.ensure_future(store.run(store.store.journal_received, b"a", "p")),
                 asyncio.ensure_future(store.run(fails)),
                 asyncio.ensure_future(store.run(store.store.journal_received, b"b", "p"))]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[1], ValueError)
        # The failing call's write was rolled back alone (its savepoint); the others hold.
        entries = await store.run(store.store.journal_entries)
        assert sorted(e.raw for e in entries) == [b"a", b"b"]
    finally:
        store.close()


# The tables as the first release wrote them: a store file from then must still open.
OLD_SCHEMA = """
CREATE TABLE journal (id INTEGER PRIMARY KEY, received_at REAL NOT NULL, peer TEXT NOT NULL,
    raw BLOB NOT NULL, sender TEXT, control_id TEXT, message_type TEXT, profile TEXT,
    status TEXT NOT NULL DEFAULT 'received', ack_code TEXT, ack BLOB, error TEXT);
CREATE TABLE items (item_key TEXT PRIMARY KEY, order_key TEXT NOT NULL, status TEXT NOT NULL,
    visible INTEGER NOT NULL, dataset TEXT NOT NULL, patient_id TEXT NOT NULL DEFAULT '',
    sps_start TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL, journal_id INTEGER);
INSERT INTO journal (received_at, peer, raw, status) VALUES (1, 'p', x'00', 'failed');
INSERT INTO items VALUES ('A|1|1', 'A', 'COMPLETED', 0, '{}', '', '', 1, NULL);
INSERT INTO items VALUES ('B|1|1', 'B', 'CANCELED', 0, '{}', '', '', 1, NULL);
INSERT INTO items VALUES ('C|1|1', 'C', 'DISCONTINUED', 0, '{}', '', '', 1, NULL);
INSERT INTO items VALUES ('D|1|1', 'D', 'SCHEDULED', 1, '{}', '', '', 1, NULL);
"""


def test_a_store_from_before_final_statuses_and_mpps_opens_and_is_migrated(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    store = Store(path)
    try:
        final = {i.order_key: i.final for i in store.items()}
        # COMPLETED and CANCELED were ends; DISCONTINUED may have been a hold: left open.
        assert final == {"A": True, "B": True, "C": False, "D": False}
        [entry] = store.journal_entries()
        assert (entry.status, entry.replay_count, entry.replayed_at) == ("failed", 0, None)
        assert store.mpps("1.2.3") is None
    finally:
        store.close()
    Store(path).close()  # a second start finds nothing to migrate


SYNC_PROBE = """
import os, sys
from pathlib import Path
from bridge.store import Store
store = Store(Path(sys.argv[1]))
store.journal_received(b"warm-up", "p")
os.write(2, b"-- journal\\n")
for _ in range(3):
    store.journal_received(b"MSH|^~\\\\&|", "p")
os.write(2, b"-- full\\n")
store.db.execute("INSERT INTO leases (name, holder, until) VALUES ('x', 'y', 0)")
os.write(2, b"-- end\\n")
"""


def test_the_journal_insert_does_not_wait_for_the_disk_and_a_full_commit_does(
        tmp_path: Path) -> None:
    """journal_received commits under synchronous=NORMAL (its docstring says why that is
    safe), every other commit under FULL. Seen in the system calls SQLite makes, with strace
    (a real tool): SQLite's fdatasync is not visible from Python."""
    strace = shutil.which("strace")
    if strace is None:
        missing_peer("strace not found (apt-get install strace)")
    trace = tmp_path / "trace.txt"
    subprocess.run([strace, "-f", "-e", "trace=fdatasync,write", "-o", str(trace),
                    sys.executable, "-c", SYNC_PROBE, str(tmp_path / "s.sqlite")],
                   check=True, cwd=ROOT, capture_output=True, timeout=60)
    lines = trace.read_text().splitlines()
    marks = {name: next(i for i, line in enumerate(lines) if f"-- {name}" in line)
             for name in ("journal", "full", "end")}
    syncs = [i for i, line in enumerate(lines) if "fdatasync(" in line]
    assert not [i for i in syncs if marks["journal"] < i < marks["full"]]
    assert [i for i in syncs if marks["full"] < i < marks["end"]]
