"""The running bridge: store, mappings, outbox workers and the MLLP listener, wired."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

from bridge.config import Config
from bridge.listener import MllpServer
from bridge.mapping.loader import load_profiles
from bridge.outbox import OutboxWorker
from bridge.processor import Processor
from bridge.sinks import Sink
from bridge.sinks.folder import FolderSink
from bridge.sinks.orthanc import OrthancSink
from bridge.store import AsyncStore, ItemWrite, Store

log = logging.getLogger(__name__)


def build_sinks(config: Config, store: AsyncStore) -> list[Sink]:
    sinks: list[Sink] = []
    folder = config.sinks.folder
    if folder.enabled:
        sinks.append(FolderSink(config.folder_path, folder.layout, folder.lockfile))
    if config.sinks.orthanc.enabled:
        sinks.append(OrthancSink(config.sinks.orthanc, store))
    return sinks


def outbox_options(config: Config, sink: Sink) -> dict[str, float]:
    """The retry settings of a sink's outbox worker (the worker's defaults otherwise)."""
    if sink.name == "orthanc":
        o = config.sinks.orthanc
        return {"max_attempts": o.max_attempts, "min_backoff": o.min_backoff,
                "max_backoff": o.max_backoff}
    return {}


class Bridge:
    def __init__(self, config: Config):
        self.config = config
        self.profiles = load_profiles(config.mappings.dir)  # MappingError stops start-up
        # The store first: the Orthanc sink keeps what it delivered in it.
        self.store = AsyncStore(Store(config.store_path))
        self.sinks = build_sinks(config, self.store)
        self.store.store.sinks = [s.name for s in self.sinks]
        self.workers = [OutboxWorker(s, self.store, **outbox_options(config, s))
                        for s in self.sinks]
        # Called with the item writes of every commit (the SCP's index subscribes here).
        self.change_listeners: list[Callable[[Sequence[ItemWrite]], None]] = []
        self.processor = Processor(config, self.profiles, self.store, self._committed)
        self.mllp = MllpServer(self.processor, max_message_bytes=config.mllp.max_message_bytes)
        self.mllp_port: int | None = None

    def _committed(self, writes: Sequence[ItemWrite]) -> None:
        for w in self.workers:
            w.notify()
        for listener in self.change_listeners:
            listener(writes)

    async def start(self) -> None:
        for w in self.workers:
            w.start()
        self.mllp_port = await self.mllp.start(self.config.mllp.host, self.config.mllp.port)
        log.info("MLLP listening on %s:%d; mappings: %s", self.config.mllp.host,
                 self.mllp_port, ", ".join(p.name for p in self.profiles))
        for sink in self.sinks:
            log.info("sink %s ready", sink.name)

    async def stop(self) -> None:
        await self.mllp.close()
        for w in self.workers:
            await w.stop()
        for sink in self.sinks:
            close = getattr(sink, "aclose", None)  # sinks holding connections close them
            if close is not None:
                await close()
        self.store.close()


async def serve(config: Config) -> None:
    bridge = Bridge(config)
    await bridge.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A line that scripts and tests can wait for.
    print(f"hl7-worklist-bridge ready: MLLP {config.mllp.host}:{bridge.mllp_port}", flush=True)
    await stop.wait()
    log.info("stopping")
    await bridge.stop()
