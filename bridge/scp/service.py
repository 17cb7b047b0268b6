"""The SCP inside the running bridge: its index fed from the store, MPPS changes committed.

`ScpService` is what app.py wires: it loads the index at start-up (the Bridge also calls
`index.apply` after every commit), runs the pynetdicom server, and turns an MPPS N-CREATE or
N-SET from an association thread into a store transaction on the bridge's event loop: the
instances and their items live in the store and outlive a restart.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Sequence
from typing import Any

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
        self.scp = WorklistScp(config, self.index, self, observe, log_phi)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        await load_index(self.store, self.index)
        return self.scp.start()

    def stop(self) -> None:
        self.scp.stop()

    # --- MPPS (server.MppsRecords): from an association thread, committed on the loop ----

    def create(self, uid: str, calling_ae: str, item_keys: list[str], attributes: dict) -> bool:
        # The sinks follow the lifecycle's visibility: STARTED, COMPLETED and DISCONTINUED
        # items leave the .wl folder as they leave the MWL.
        writes = self._call(self.store.store.mpps_create, uid, calling_ae, item_keys,
                            attributes, Status.STARTED.value, Status.STARTED in DEFAULT_VISIBLE)
        return writes is not None

    def update(self, uid: str, state: str, modifications: dict) -> None:
        status = MPPS_STATUS.get(state)
        change = None if status is None else (status.value, status in DEFAULT_VISIBLE, True)
        self._call(self.store.store.mpps_set, uid, state, modifications, change)

    def _call(self, fn: Callable, *args: object) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._commit(fn, args), self._loop)
        return future.result(timeout=60)

    async def _commit(self, fn: Callable, args: tuple) -> Any:
        result = await self.store.run(fn, *args)
        writes = result[1] if isinstance(result, tuple) else result
        if writes:
            self.committed(writes)
        return result


# MPPS states that end the step, and the status they give its items (final: they stick).
MPPS_STATUS = {"COMPLETED": Status.COMPLETED, "DISCONTINUED": Status.DISCONTINUED}


async def load_index(store: AsyncStore, index: WorklistIndex) -> None:
    """Fill `index` from the store at start-up (the SCP's, or the web app's own)."""
    # Page by page: a single list of every item would set the process's memory high-water
    # mark at start-up, and CPython seldom gives that back.
    after = ""
    # The load makes millions of dicts and lists that all live on: the cyclic collector
    # would scan them again and again as they pile up, for nothing to collect (measured: a
    # third of the index build). Reference counting still frees the pages.
    gc.disable()
    try:
        while page := await store.run(store.store.items_with_status, index.statuses, after,
                                      2000):
            index.load(page)
            after = page[-1].item_key
    finally:
        gc.enable()
    # pynetdicom's server runs gc.collect() every minute or so; with a large worklist in
    # memory a full collection stalls every association. The loaded items live as long as
    # the process: keep them out of the collector's scans.
    gc.freeze()
