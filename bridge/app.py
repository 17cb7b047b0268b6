"""The running bridge: store, mappings, outbox workers and the MLLP listener, wired."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

from bridge.config import Config
from bridge.housekeeping import Housekeeper
from bridge.listener import Limits, MllpServer
from bridge.mapping.loader import MappingError, load_profiles
from bridge.mapping.watch import watch
from bridge.metrics import Metrics
from bridge.outbox import OutboxWorker
from bridge.processor import Processor
from bridge.scp.service import ScpService
from bridge.sinks import Sink
from bridge.sinks.folder import FolderSink
from bridge.sinks.orthanc import OrthancSink
from bridge.store import AsyncStore, ItemWrite, Store
from bridge.tls import server_context
from bridge.validate import warm_up
from bridge.web import HttpServer

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
        self.metrics = Metrics()  # the SCP observes self.metrics.cfind_latency
        mllp = config.mllp
        self.mllp = MllpServer(
            self.processor,
            limits=Limits(mllp.max_message_bytes, mllp.max_connections, mllp.idle_timeout),
            ssl=server_context(mllp.tls) if mllp.tls.enabled else None, metrics=self.metrics)
        self.mllp_port: int | None = None
        # Changes another process wrote (journal replay, worklist delete, import-wl) reach
        # the same listeners as the bridge's own commits.
        self.housekeeper = Housekeeper(config, self.store, self._committed)
        self._watcher: asyncio.Task | None = None
        self.mapping_error: str | None = None  # the last reload's, for the console
        if mllp.strict or mllp.strict_senders:
            warm_up()
        # Built-in MWL SCP: its index follows every commit.
        self.scp = ScpService(config.scp, self.store, self._committed,
                              self.metrics.cfind_latency.observe) \
            if config.scp.enabled else None
        if self.scp is not None:
            self.change_listeners.append(self.scp.index.apply)
        self.scp_port: int | None = None
        # Console, API, DICOMweb, /metrics and /healthz (bridge/web/).
        self.http = HttpServer(self, config.http) if config.http.enabled else None
        self.http_port: int | None = None

    def reload_mappings(self) -> bool:
        """Load the mapping folder again and use it for the next message.

        Connections stay open: the processor reads `profiles` per message. An invalid set
        is refused whole, the previous good one stays in use, and the log says why.
        """
        try:
            profiles = load_profiles(self.config.mappings.dir)
        except MappingError as exc:
            log.error("mappings not reloaded, still using the previous ones:\n%s", exc)
            self.mapping_error = str(exc)
            return False
        self.mapping_error = None
        self.profiles = self.processor.profiles = profiles
        log.info("mappings reloaded: %s", ", ".join(p.name for p in profiles))
        return True

    def notify_committed(self, writes: Sequence[ItemWrite]) -> None:
        """For changes committed outside the processor (the HTTP API's deletions)."""
        self._committed(writes)

    def _committed(self, writes: Sequence[ItemWrite]) -> None:
        for w in self.workers:
            w.notify()
        for listener in self.change_listeners:
            listener(writes)

    async def start(self) -> None:
        interrupted = await self.store.run(self.store.store.recover)
        if interrupted:
            log.warning("%d messages were interrupted by the last stop (not acknowledged; "
                        "their senders resend them): journal list shows them", interrupted)
        for w in self.workers:
            w.start()
        if self.scp is not None:  # before MLLP: the index is loaded before orders arrive
            self.scp_port = await self.scp.start()
        self.housekeeper.start()
        self.mllp_port = await self.mllp.start(self.config.mllp.host, self.config.mllp.port)
        log.info("MLLP listening on %s:%d; mappings: %s", self.config.mllp.host,
                 self.mllp_port, ", ".join(p.name for p in self.profiles))
        for sink in self.sinks:
            log.info("sink %s ready", sink.name)
        if self.config.mappings.watch_seconds > 0:
            self._watcher = asyncio.create_task(watch(
                self.config.mappings.dir, self.config.mappings.watch_seconds,
                self.reload_mappings))
        http = self.config.http
        for note in http._notes:
            log.warning("configuration: %s (rename the key)", note)
        if self.http is not None:
            scheme = "https" if http.tls.certfile else "http"
            try:
                self.http_port = await self.http.start()
                log.info("console, API and /metrics on %s://%s:%d/", scheme, http.host,
                         self.http_port)
            except OSError as exc:
                # Orders matter more than the console: run on, and say so loudly.
                log.error("HTTP server not started on %s:%d: %s", http.host, http.port, exc)

    async def health(self) -> dict:
        """What /healthz reports; raises when the store cannot be read."""
        db = self.store.store
        depths = {s.name: await self.store.run(db.outbox_depth, s.name) for s in self.sinks}
        return {"mllp_port": self.mllp_port, "connections": len(self.mllp.connections),
                "outbox": depths}

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.http is not None:
            await self.http.close()
        await self.mllp.close()
        await self.housekeeper.stop()
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
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
    loop.add_signal_handler(signal.SIGHUP, bridge.reload_mappings)
    # A line that scripts and tests can wait for.
    print(f"hl7-worklist-bridge ready: MLLP {config.mllp.host}:{bridge.mllp_port}", flush=True)
    await stop.wait()
    log.info("stopping")
    await bridge.stop()
