"""The SCP inside the running bridge: its index fed from the store, MPPS changes committed.

`ScpService` is what app.py wires: it loads the index at start-up (the Bridge also calls
`index.apply` after every commit), runs the pynetdicom server, and turns an MPPS status
change from an association thread into a store transaction on the bridge's event loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Sequence

from bridge.config import ScpConfig
from bridge.lifecycle import DEFAULT_VISIBLE, Status
from bridge.scp.index import WorklistIndex
from bridge.scp.server import WorklistScp, all_visible_statuses
from bridge.store import AsyncStore, ItemWrite


class ScpService:
    def __init__(self, config: ScpConfig, store: AsyncStore,
                 committed: Callable[[Sequence[ItemWrite]], None],
                 observe: Callable[[float], None] | None = None, log_phi: bool = False):
        self.store = store
        self.committed = committed
        self.index = WorklistIndex(all_visible_statuses(config))
        self.scp = WorklistScp(config, self.index, self._status_change, observe, log_phi)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        # Page by page: a single list of every item would set the process's memory
        # high-water mark at start-up, and CPython seldom gives that back.
        after = ""
        while page := await self.store.run(self.store.store.items_with_status,
                                           self.index.statuses, after, 2000):
            self.index.load(page)
            after = page[-1].item_key
        # pynetdicom's server runs gc.collect() every minute or so; with a large worklist in
        # memory a full collection stalls every association. The loaded items live as long
        # as the process: keep them out of the collector's scans.
        gc.freeze()
        return self.scp.start()

    def stop(self) -> None:
        self.scp.stop()

    def _status_change(self, item_keys: list[str], status: Status) -> None:
        """From an association thread: commit, then return (the MPPS response follows)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._commit(item_keys, status), self._loop)
        future.result(timeout=60)

    async def _commit(self, item_keys: list[str], status: Status) -> None:
        # The sinks follow the lifecycle's visibility: STARTED, COMPLETED and DISCONTINUED
        # items leave the .wl folder as they leave the MWL.
        writes = await self.store.run(self.store.store.set_status, item_keys, status.value,
                                      status in DEFAULT_VISIBLE)
        self.committed(writes)
