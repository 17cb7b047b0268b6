"""The folder sink takes an outbox batch in one hand-over to its writer process; when that
fails, each item is tried on its own so that only the failing one is retried."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest

from bridge.dicomfile import file_name
from bridge.outbox import OutboxWorker
from bridge.sinks.folder import FolderSink
from bridge.store import AsyncStore, ItemWrite, Store, StoredItem


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(Store(tmp_path / "bridge.sqlite", ["folder"]))
    yield s
    s.close()


async def commit(store: AsyncStore, keys: list[str]) -> None:
    db = store.store
    journal_id = await store.run(db.journal_received, b"MSH|test", "test")
    writes = [ItemWrite(k, k, "SCHEDULED", True,
                        {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Żółć^Ą",
                         "AccessionNumber": k, "ScheduledProcedureStepSequence": [
                             {"Modality": "CT", "ScheduledStationAETitle": "CT1"}]})
              for k in keys]
    await store.run(db.commit_message, journal_id, {}, writes, "AA", b"ACK")


async def drain(worker: OutboxWorker, timeout: float = 20.0) -> None:
    db = worker.store.store
    deadline = time.monotonic() + timeout
    while await worker.store.run(db.outbox_depth, worker.sink.name):
        assert time.monotonic() < deadline, "outbox not drained in time"
        await worker.deliver_due()


class CountingSink(FolderSink):
    """The real folder sink, in-process, counting its calls."""

    def __init__(self, root: Path, fail_on: str = ""):
        super().__init__(root, writer_process=False)
        self.batches: list[int] = []
        self.singles: list[str] = []
        self.fail_on = fail_on

    async def put_many(self, items: list[StoredItem]) -> None:
        self.batches.append(len(items))
        if any(i.item_key == self.fail_on for i in items):
            raise OSError("disk says no")
        await super().put_many(items)

    async def put(self, item: StoredItem) -> None:
        self.singles.append(item.item_key)
        if item.item_key == self.fail_on:
            raise OSError("disk says no")
        await super().put(item)


async def test_a_batch_in_one_call(store: AsyncStore, tmp_path: Path) -> None:
    sink = CountingSink(tmp_path / "wl")
    keys = [f"K{i}" for i in range(30)]
    await commit(store, keys)
    await drain(OutboxWorker(sink, store))
    assert sink.batches == [30] and sink.singles == []
    for k in keys:
        ds = pydicom.dcmread(tmp_path / "wl" / file_name(k))
        assert ds.AccessionNumber == k and str(ds.PatientName) == "Żółć^Ą"


async def test_a_failing_batch_is_tried_item_by_item(store: AsyncStore,
                                                     tmp_path: Path) -> None:
    sink = CountingSink(tmp_path / "wl", fail_on="K3")
    await commit(store, [f"K{i}" for i in range(6)])
    worker = OutboxWorker(sink, store, min_backoff=30)
    await worker.deliver_due()
    assert sink.batches == [6]
    assert sink.singles == [f"K{i}" for i in range(6)]
    # Only the failing item is still due (after its backoff): the others are done.
    states = {k: await store.run(store.store.outbox_state, k) for k in ("K2", "K3")}
    assert [(s.state, s.attempts) for s in states["K2"]] == [("done", 0)]
    assert [(s.state, s.attempts) for s in states["K3"]] == [("pending", 1)]
    assert sorted(p.name for p in (tmp_path / "wl").glob("*.wl")) == \
        sorted(file_name(f"K{i}") for i in range(6) if i != 3)


async def test_writer_process_takes_the_batch(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path / "wl")  # its writer process, as in the running bridge
    items = [StoredItem(f"K{i}", f"K{i}", "SCHEDULED", True, {"AccessionNumber": f"K{i}"},
                        "P", 0.0) for i in range(5)]
    try:
        await sink.put_many(items)
    finally:
        await sink.aclose()
    assert len(list((tmp_path / "wl").glob("*.wl"))) == 5


class GatedSink(CountingSink):
    """Holds its first batch until `gate` is set."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def put_many(self, items: list[StoredItem]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().put_many(items)


async def test_a_commit_made_during_a_delivery_is_delivered_without_waiting_for_the_poll(
        store: AsyncStore, tmp_path: Path) -> None:
    """The worker sleeps between batches until a commit wakes it (poll_interval is only the
    fallback): a wake-up that comes while it delivers is not lost, and the commits of a
    short moment go out together."""
    sink = GatedSink(tmp_path / "wl")
    worker = OutboxWorker(sink, store, poll_interval=600)
    worker.start()
    try:
        await commit(store, ["K0", "K1"])
        worker.notify()
        await asyncio.wait_for(sink.entered.wait(), 10)
        await commit(store, ["K2", "K3"])  # while the first batch is being written
        worker.notify()
        sink.gate.set()
        deadline = time.monotonic() + 20
        while len(list((tmp_path / "wl").glob("*.wl"))) < 4:
            assert time.monotonic() < deadline, "the second commit waited for the poll"
            await asyncio.sleep(0.01)
        assert sink.batches == [2, 2] and sink.singles == []
    finally:
        await worker.stop()
