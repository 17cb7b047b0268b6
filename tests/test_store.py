"""The store's thread: group commit, and callers that go away while it works."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from bridge.store import AsyncStore, Store


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
        gate.set()
        await blocker
        journal_id = await asyncio.wait_for(running, 5)
        # The thread is alive and serves the next call; the cancelled call never ran.
        entries = await asyncio.wait_for(store.run(store.store.journal_entries), 5)
        assert [e.raw for e in entries] == [b"y"] and entries[0].id == journal_id
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
