"""Outbox workers: deliver each committed item change to each sink, until it succeeds.

A row in the outbox says "this item changed"; the worker sends the item's current state
(put when visible, remove otherwise), so retries and restarts converge on the store.
When the sink raises SinkUnavailable, the worker pauses the whole sink with backoff and
charges no item an attempt: an outage of any length loses nothing and kills nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bridge.sinks import Sink, SinkUnavailable
from bridge.store import AsyncStore, StorageFull

log = logging.getLogger(__name__)

# While a sink is unreachable it is probed at most this far apart, whatever max_backoff says:
# a probe costs one request, and a sink that is back should be fed within half a minute.
MAX_PROBE_INTERVAL = 30.0
# Rows read per batch.
BATCH = 200
# Woken by a commit, a worker waits this long before it reads the outbox, so that the
# changes of the next few messages go out in the same batch: at one sender, a batch per
# message cost three trips to the store's thread and one to the folder's writer per order
# (issue 13), for a file that appears this much later.
GATHER_SECONDS = 0.01


class OutboxWorker:
    def __init__(self, sink: Sink, store: AsyncStore, *, max_attempts: int = 20,
                 max_backoff: float = 300.0, poll_interval: float = 1.0,
                 min_backoff: float = 2.0):
        self.sink = sink
        self.store = store
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        self.min_backoff = min_backoff
        # Why the sink cannot be reached, while it cannot; and how many probes failed.
        self.outage: str | None = None
        self._outage_probes = 0
        self._full = False  # the store could not record the last deliveries (disk full)
        self._batch_full = False  # the last batch read as many rows as it could
        self.wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name=f"outbox-{self.sink.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def notify(self) -> None:
        self.wakeup.set()

    async def _run(self) -> None:
        while True:
            self.wakeup.clear()  # a commit from now on calls for another round
            try:
                busy = await self.deliver_due()
                self._full = False
            except StorageFull:
                # The store cannot record deliveries: wait, say it once (not per poll).
                if not self._full:
                    log.warning("outbox %s: storage full, deliveries wait for space",
                                self.sink.name)
                self._full, busy = True, False
            except Exception:
                log.exception("outbox %s: unexpected error", self.sink.name)
                busy = False
            if self.outage is not None:
                await asyncio.sleep(min(MAX_PROBE_INTERVAL,
                                        self._backoff(self._outage_probes)))
                continue
            if busy and self._batch_full:
                continue  # more may be due at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.poll_interval)
            if self.wakeup.is_set():
                await asyncio.sleep(GATHER_SECONDS)

    async def deliver_due(self) -> bool:
        """Deliver what is due now; True when there was something to do."""
        db = self.store.store
        # One read for the batch (its rows and their items) and one transaction for its
        # "done" marks: the store's thread is shared with the listener, whose commits must
        # not queue behind ours. A sink that decodes datasets in its own process (the
        # folder's writer) gets them as the stored JSON text.
        rows, items = await self.store.run(db.outbox_batch, self.sink.name, BATCH,
                                           not getattr(self.sink, "takes_json", False))
        self._batch_full = len(rows) >= BATCH
        if not rows:
            return False
        done: list[tuple[str, int]] = []
        # A sink that takes several items at once (the folder's writer process) gets the
        # batch's puts in one call; when it fails they are tried one by one below, so each
        # error is retried and logged for its own item.
        delivered: set[str] = set()
        put_many = getattr(self.sink, "put_many", None)
        batch = [items[r.item_key] for r in rows
                 if r.item_key in items and items[r.item_key].visible]
        if put_many is not None and len(batch) > 1:
            try:
                await put_many(batch)
                delivered = {item.item_key for item in batch}
            except Exception:
                delivered = set()
        try:
            for row in rows:
                item = items.get(row.item_key)
                try:
                    if item is not None and item.item_key in delivered:
                        pass
                    elif item is not None and item.visible:
                        await self.sink.put(item)
                    elif item is not None:
                        await self.sink.remove(item)
                except SinkUnavailable as exc:
                    self._outage_probes += 1
                    if self.outage is None:
                        log.warning("outbox %s: sink unreachable, deliveries paused: %s",
                                    self.sink.name, exc)
                    self.outage = str(exc)
                    return True
                except Exception as exc:
                    self._sink_reached()
                    attempts = row.attempts + 1
                    dead = attempts >= self.max_attempts
                    delay = self._backoff(attempts)
                    # A dead item waits for its next change or a resync: an error.
                    log.log(logging.ERROR if dead else logging.WARNING,
                            "outbox %s: %s failed (attempt %d%s): %s", self.sink.name,
                            row.item_key, attempts, ", giving up: dead" if dead else "", exc)
                    await self.store.run(db.outbox_retry, self.sink.name, row.item_key,
                                         str(exc), delay, dead)
                    continue
                self._sink_reached()
                done.append((row.item_key, row.id))
        finally:
            if done:
                await self.store.run(db.outbox_done_many, self.sink.name, done)
        return True

    def _backoff(self, attempts: int) -> float:
        return min(self.max_backoff, self.min_backoff * 2.0 ** min(max(attempts - 1, 0), 16))

    def _sink_reached(self) -> None:
        if self.outage is not None:
            log.warning("outbox %s: sink reachable again after %d failed probe(s)",
                        self.sink.name, self._outage_probes)
        self.outage = None
        self._outage_probes = 0
