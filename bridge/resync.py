"""`resync`: make a sink match the store again.

For when a sink drifted: Orthanc or the folder restored from an old backup, edited by hand,
items dead after `max_attempts`. The store is the system of record, so the sink is made to
hold what the store says and nothing else the bridge owns:

- Orthanc: items under this bridge's IDs (``<id_prefix><uuid5>``) that no item of the store
  has are deleted; every visible item, and every hidden one Orthanc still holds, is queued.
  Items Orthanc removed by itself (DeleteWorklistsOnStableStudy) stay removed.
- folder: ``.wl`` files named as the bridge names them that no item has are deleted; every
  item is queued.

Then the queued rows are delivered by this process, unless ``deliver`` is false: run it with
the bridge stopped, or with ``--no-deliver`` while the bridge runs (its outbox workers then
deliver the queued rows within a second). Two processes delivering the same rows at once
could each send a different version of an item, the older last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge.app import build_sinks, name_own_sinks, outbox_options
from bridge.config import Config
from bridge.outbox import OutboxWorker
from bridge.sinks import Sink, SinkUnavailable
from bridge.sinks.folder import FolderSink
from bridge.sinks.orthanc import OrthancSink
from bridge.store import AsyncStore, open_store, store_url

log = logging.getLogger(__name__)


class ResyncError(Exception):
    """The resync cannot run (sink not enabled, or unreachable)."""


@dataclass
class ResyncResult:
    sink: str
    deleted: int  # extra items (or files) the bridge owned, deleted
    queued: int  # items queued for put or remove
    foreign: int = 0  # items in the sink not owned by the bridge, left alone
    delivered: bool = False  # this process delivered the queue
    pending: int = 0  # then: rows not delivered (failed; the bridge retries them)

    def summary(self) -> str:
        text = f"{self.sink}: {self.deleted} extra item(s) deleted, {self.queued} queued"
        if not self.delivered:
            text += " for the running bridge to deliver"
        elif self.pending:
            text += f", {self.pending} not delivered (failed: see the log and retried later)"
        else:
            text += ", all delivered"
        if self.foreign:
            text += f"; {self.foreign} item(s) of other programs left alone"
        return text


async def resync(config: Config, names: list[str] | None = None,
                 deliver: bool = True) -> list[ResyncResult]:
    store = AsyncStore(open_store(store_url(config)))
    try:
        sinks = build_sinks(config, store)
        enabled = {s.name for s in sinks}
        for name in names or []:
            if name not in enabled:
                raise ResyncError(f"sinks.{name} is not enabled in the configuration")
        chosen = [s for s in sinks if not names or s.name in names]
        name_own_sinks(config, store.store, chosen)  # this instance's folder, on PostgreSQL
        results = []
        for sink in chosen:
            try:
                results.append(await _resync_one(config, store, sink, deliver))
            except SinkUnavailable as exc:
                raise ResyncError(f"{sink.name}: unreachable: {exc}") from exc
            finally:
                close = getattr(sink, "aclose", None)
                if close is not None:
                    await close()
        return results
    finally:
        store.close()


async def _resync_one(config: Config, store: AsyncStore, sink: Sink,
                      deliver: bool) -> ResyncResult:
    db = store.store
    if isinstance(sink, OrthancSink):
        plan = await sink.resync()
        result = ResyncResult(sink.name, plan.deleted, plan.queued, plan.foreign)
    elif isinstance(sink, FolderSink):
        keys = {i.item_key for i in await store.run(db.items)}
        removed = await store.run(sink.remove_strays, keys)
        for path in removed:
            log.info("folder resync: deleted %s, which no item of the store has", path)
        queued = await store.run(db.enqueue_all, sink.name)
        result = ResyncResult(sink.name, len(removed), queued)
    else:
        raise ResyncError(f"no resync for sink {sink.name}")
    if deliver:
        worker = OutboxWorker(sink, store, **outbox_options(config, sink))
        while await worker.deliver_due():
            if worker.outage is not None:
                raise ResyncError(f"{sink.name}: unreachable, the queued items wait for the "
                                  f"bridge: {worker.outage}")
        result.delivered = True
        result.pending = await store.run(db.outbox_depth, sink.name)
    return result
