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
from bridge.scp.service import ScpService
from bridge.sinks import Sink
from bridge.sinks.folder import FolderSink
from bridge.store import AsyncStore, ItemWrite, Store

log = logging.getLogger(__name__)


def build_sinks(config: Config) -> list[Sink]:
    sinks: list[Sink] = []
    folder = config.sinks.folder
    if folder.enabled:
        sinks.append(FolderSink(config.folder_path, folder.layout, folder.lockfile))
    if config.sinks.orthanc.enabled:
        raise NotImplementedError("sinks.orthanc is not implemented yet; set "
                                  "sinks.orthanc.enabled: false")
    return sinks


class Bridge:
    def __init__(self, config: Config):
        self.config = config
        self.profiles = load_profiles(config.mappings.dir)  # MappingError stops start-up
        self.sinks = build_sinks(config)
        self.store = AsyncStore(Store(config.store_path, [s.name for s in self.sinks]))
        self.workers = [OutboxWorker(s, self.store) for s in self.sinks]
        # Called with the item writes of every commit (the SCP's index subscribes here).
        self.change_listeners: list[Callable[[Sequence[ItemWrite]], None]] = []
        self.processor = Processor(config, self.profiles, self.store, self._committed)
        self.mllp = MllpServer(self.processor, max_message_bytes=config.mllp.max_message_bytes)
        self.mllp_port: int | None = None
        # Built-in MWL SCP: its index follows every commit.
        self.scp = ScpService(config.scp, self.store, self._committed) \
            if config.scp.enabled else None
        if self.scp is not None:
            self.change_listeners.append(self.scp.index.apply)
        self.scp_port: int | None = None

    def _committed(self, writes: Sequence[ItemWrite]) -> None:
        for w in self.workers:
            w.notify()
        for listener in self.change_listeners:
            listener(writes)

    async def start(self) -> None:
        for w in self.workers:
            w.start()
        if self.scp is not None:  # before MLLP: the index is loaded before orders arrive
            self.scp_port = await self.scp.start()
        self.mllp_port = await self.mllp.start(self.config.mllp.host, self.config.mllp.port)
        log.info("MLLP listening on %s:%d; mappings: %s", self.config.mllp.host,
                 self.mllp_port, ", ".join(p.name for p in self.profiles))
        for sink in self.sinks:
            log.info("sink %s ready", sink.name)

    async def stop(self) -> None:
        await self.mllp.close()
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        for w in self.workers:
            await w.stop()
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
