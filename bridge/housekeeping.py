"""Periodic upkeep of a running bridge: expiry, journal retention, outside changes.

"Outside changes" are item writes made by another process on the same store (the CLI's
`journal replay` or `worklist delete` while the bridge runs): they reach the in-process
views (the SCP's index) and wake the outbox workers, as the bridge's own commits do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from bridge.config import Config
from bridge.lifecycle import Status
from bridge.store import AsyncStore, ItemWrite, StoredItem

log = logging.getLogger(__name__)


def expiry_writes(items: list[StoredItem]) -> list[ItemWrite]:
    """Take expired items off the worklist; their status says they never happened."""
    return [ItemWrite(i.item_key, i.order_key, Status.DISCONTINUED.value, False, i.dataset)
            for i in items]


class Housekeeper:
    def __init__(self, config: Config, store: AsyncStore,
                 on_change: Callable[[Sequence[ItemWrite]], None],
                 poll_interval: float = 2.0):
        self.config = config
        self.store = store
        self.on_change = on_change
        self.poll_interval = poll_interval
        self._seen = time.time()
        self._version: int | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(self.poll_interval, self.pick_up_changes)),
                       loop.create_task(self._every(
                           self.config.lifecycle.housekeeping_interval_s, self.tidy))]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _every(self, seconds: float, job: Callable) -> None:
        while True:
            try:
                await job()
            except Exception:
                log.exception("housekeeping: %s failed", job.__name__)
            await asyncio.sleep(seconds)

    async def pick_up_changes(self) -> None:
        now = time.time()
        version = await self.store.run(self.store.store.outside_version)
        if version == self._version:
            self._seen = now
            return  # no other process wrote: our own commits reached the views already
        self._version = version
        changed = await self.store.run(self.store.store.items_changed_since, self._seen - 1.0)
        self._seen = now
        # With their versions: a re-read older than a commit since is ignored by the index.
        writes = [ItemWrite(i.item_key, i.order_key, i.status, i.visible, i.dataset,
                            version=i.version) for i in changed]
        if writes:
            # Our own commits of the interval come back too: listeners are idempotent.
            self.on_change(writes)

    async def tidy(self) -> None:
        lifecycle, journal = self.config.lifecycle, self.config.journal
        # Once per cluster: on a shared database the instance holding the lease tidies,
        # the others skip.
        hold = lifecycle.housekeeping_interval_s * 2 + 60
        if self.store.store.shared and not await self.store.run(
                self.store.store.take_lease, "housekeeping", hold):
            return
        if lifecycle.expire_after_hours:
            cutoff = (datetime.now() - timedelta(hours=lifecycle.expire_after_hours)
                      ).strftime("%Y%m%d%H%M%S")
            expired = await self.store.run(self.store.store.visible_items_starting_before,
                                           cutoff)
            if expired:
                writes = expiry_writes(expired)
                await self.store.run(self.store.store.write_items, writes)
                log.info("housekeeping: %d items scheduled before %s taken off the worklist",
                         len(writes), cutoff)
                self.on_change(writes)
        if journal.retention_days:
            before = time.time() - journal.retention_days * 86400
            purged = await self.store.run(self.store.store.purge_journal, before)
            # Status messages the RIS accepted go with them; refused ones stay.
            await self.store.run(self.store.store.purge_outbound, before)
            if purged:
                log.info("housekeeping: %d journal entries past retention deleted", purged)
