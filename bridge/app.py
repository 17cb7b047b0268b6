"""The running bridge: store, mappings, outbox workers and the MLLP listener, wired."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence

from bridge.config import Config, ConfigError, check_paths
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
from bridge.store import (
    AsyncStore,
    ItemWrite,
    StorageFull,
    Store,
    StoredItem,
    open_store,
    store_url,
)
from bridge.tls import server_context
from bridge.validate import warm_up
from bridge.web import HttpServer

log = logging.getLogger(__name__)

# Item times come from the clock of the instance that wrote them: a catch-up read goes back
# this far to cover clocks that differ (keep the instances on NTP).
CLOCK_MARGIN_S = 60.0


def build_sinks(config: Config, store: AsyncStore) -> list[Sink]:
    sinks: list[Sink] = []
    folder = config.sinks.folder
    if folder.enabled:
        sinks.append(FolderSink(config.folder_path, folder.layout, folder.lockfile))
    if config.sinks.orthanc.enabled:
        sinks.append(OrthancSink(config.sinks.orthanc, store))
    return sinks


def instance_name(config: Config) -> str:
    return config.store.instance or socket.gethostname()


def name_own_sinks(config: Config, store: Store, sinks: list[Sink]) -> None:
    """On a shared database a sink that is not shared (the .wl folder) has an outbox of its
    own per instance: folder@<instance>."""
    if store.shared:
        for sink in sinks:
            if not getattr(sink, "shared", True):
                sink.name = f"{sink.name}@{instance_name(config)}"


def outbox_options(config: Config, sink: Sink) -> dict[str, float]:
    """The retry settings of a sink's outbox worker (the worker's defaults otherwise)."""
    if sink.name == "orthanc":
        o = config.sinks.orthanc
        return {"max_attempts": o.max_attempts, "min_backoff": o.min_backoff,
                "max_backoff": o.max_backoff}
    return {}


def outbound_worker(config: Config, store: AsyncStore):
    """The RIS sender when `ris.enabled`; its profile is checked at start-up."""
    if not config.ris.enabled:
        return None
    from bridge.outbound.profile import load_outbound, profile_file
    from bridge.outbound.worker import OutboundWorker

    ris = config.ris
    profile = load_outbound(profile_file(ris.profile, config.mappings.dir))
    store.store.outbound_destinations = (ris.name,)
    store.store.outbound_events = frozenset(
        e for e in ("in_progress", "completed", "discontinued") if getattr(ris, e).send)
    return OutboundWorker(ris, profile, store)


class Bridge:
    def __init__(self, config: Config):
        self.config = config
        check_paths(config)  # a data folder that is a file: one line naming the key
        self.profiles = load_profiles(config.mappings.dir)  # MappingError stops start-up
        # The store first: the Orthanc sink keeps what it delivered in it.
        self.store = AsyncStore(open_store(store_url(config)))
        self.instance = instance_name(config)
        self.store.store.instance = self.instance
        # Several instances on one database (it notifies of changes): a sink that is not
        # shared (the .wl folder) gets an outbox of its own per instance.
        self.shared_db = self.store.store.shared
        self.sinks = build_sinks(config, self.store)
        name_own_sinks(config, self.store.store, self.sinks)
        self.store.store.sinks = [s.name for s in self.sinks]
        self.workers = [OutboxWorker(s, self.store, **outbox_options(config, s))
                        for s in self.sinks]
        # Status back to the RIS: MPPS events queued in the store, sent by their own worker.
        self.outbound = outbound_worker(config, self.store)
        if self.outbound is not None:
            self.workers.append(self.outbound)  # type: ignore[arg-type]  # same start/stop
        # Called with the item writes of every commit (the SCP's index subscribes here).
        self.change_listeners: list[Callable[[Sequence[ItemWrite]], None]] = []
        self.processor = Processor(config, self.profiles, self.store, self._committed)
        self.metrics = Metrics()  # the SCP observes self.metrics.cfind_latency
        self.processor.warnings.count = \
            lambda *key: self.metrics.mapping_warnings.labels(*key).inc()
        mllp = config.mllp
        self.mllp = MllpServer(
            self.processor,
            limits=Limits.from_config(mllp),
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
                              self.metrics.cfind_latency.observe, config.log_phi) \
            if config.scp.enabled else None
        if self.scp is not None:
            self.change_listeners.append(self.scp.index.apply)
        self.scp_port: int | None = None
        self._tasks: set[asyncio.Task] = set()  # change pick-ups under way
        self._heard_at = time.time()  # the last change notification
        # Console, API, DICOMweb, /metrics and /healthz (bridge/web/).
        self.http = HttpServer(self, config.http) if config.http.enabled else None
        self.http_port: int | None = None

    def reload_mappings(self) -> bool:
        """Load the mapping folder again and use it for the next message.

        Connections stay open: the processor reads `profiles` per message. An invalid set
        is refused whole, the previous good one stays in use, and the log says why.
        """
        if self.outbound is not None:  # SIGHUP: the outbound profile too (its own folder)
            self.outbound.reload()
        try:
            profiles = load_profiles(self.config.mappings.dir)
        except MappingError as exc:
            log.error("mappings not reloaded, still using the previous ones:\n%s", exc)
            self.mapping_error = str(exc)
            return False
        self.mapping_error = None
        self.profiles = self.processor.profiles = profiles
        self.processor.warnings.reset()  # recurring warnings are logged once more
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
        try:
            interrupted = await self.store.run(self.store.store.recover)
        except StorageFull as exc:
            # Start anyway: messages get AE until there is space, then all works again.
            log.error("storage full (%s): messages are answered AE until there is space "
                      "again", exc.__cause__ or exc)
            interrupted = 0
        if interrupted:
            log.warning("%d messages were interrupted by the last stop (not acknowledged; "
                        "their senders resend them): journal list shows them", interrupted)
        for w in self.workers:
            w.start()
        if self.scp is not None:  # before MLLP: the index is loaded before orders arrive
            scp = self.config.scp
            with _listening("scp", scp.host, scp.port):
                self.scp_port = await self.scp.start()
        if self.shared_db:
            await self._follow_other_instances()
        self.housekeeper.start()
        mllp = self.config.mllp
        with _listening("mllp", mllp.host, mllp.port):
            self.mllp_port = await self.mllp.start(mllp.host, mllp.port)
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

    async def _follow_other_instances(self) -> None:
        """Shared database: other instances' commits reach this one's SCP index and own
        folder by LISTEN/NOTIFY. Started after the index loaded, then one catch-up read of
        what changed during the load; this instance's folder is brought in step with the
        store (it may have been down a while)."""
        db = self.store.store
        loop = asyncio.get_running_loop()
        started = time.time()

        def changed(items: list[StoredItem] | None) -> None:  # on the listener's thread
            loop.call_soon_threadsafe(self._outside_items, items)

        db.listen(changed)
        await self._catch_up(started - CLOCK_MARGIN_S)
        for sink in self.sinks:
            if not getattr(sink, "shared", True):
                queued = await self.store.run(db.enqueue_all, sink.name)
                log.info("sink %s: %d items queued to bring it in step with the store",
                         sink.name, queued)

    def _outside_items(self, items: list[StoredItem] | None) -> None:
        """On the loop, in notification order: items another instance committed go to the
        SCP's index at once (no store call in between: a busy store thread must not delay
        modalities); this instance's own folder gets them queued in the background. None:
        notifications were lost, read what changed lately."""
        if items is None:
            self._spawn(self._catch_up(self._heard_at - CLOCK_MARGIN_S))
            return
        self._heard_at = time.time()
        self._apply_outside(items)

    async def _catch_up(self, since: float) -> None:
        self._heard_at = time.time()
        try:
            items = await self.store.run(self.store.store.items_changed_since, since)
        except Exception:
            log.exception("changes of other instances not read; the next catch-up will")
            return
        self._apply_outside(items)

    def _apply_outside(self, items: list[StoredItem]) -> None:
        if not items:
            return
        writes = [ItemWrite(i.item_key, i.order_key, i.status, i.visible, i.dataset,
                            version=i.version)
                  for i in items]
        for listener in self.change_listeners:
            listener(writes)
        own = [s.name for s in self.sinks if not getattr(s, "shared", True)]
        if own:
            self._spawn(self._queue_for_own_sinks(own, [i.item_key for i in items]))

    async def _queue_for_own_sinks(self, sinks: list[str], keys: list[str]) -> None:
        try:
            for name in sinks:
                await self.store.run(self.store.store.outbox_enqueue, name, keys)
        except Exception:
            log.exception("other instances' changes not queued for this instance's folder")
            return
        for w in self.workers:
            w.notify()

    def _spawn(self, job: Coroutine) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def health(self) -> dict:
        """What /healthz reports: which instance, which database, and whether this instance
        is ready to take traffic (database reachable, SCP index loaded, MLLP listening)."""
        db = self.store.store
        try:
            depths = {s.name: await self.store.run(db.outbox_depth, s.name)
                      for s in self.sinks}
            reachable = True
        except Exception as exc:  # the database is away: not ready, say why
            log.warning("healthz: store not readable: %s", type(exc).__name__)
            depths, reachable = {}, False
        full = db.full_since is not None
        self.metrics.storage_full.set(1 if full else 0)
        ready = reachable and self.mllp_port is not None and \
            (self.scp is None or self.scp_port is not None)
        return {"instance": self.instance, "database": db.url_for_log(),
                "database_reachable": reachable, "ready": ready,
                "mllp_port": self.mllp_port, "connections": len(self.mllp.connections),
                "outbox": depths, "storage": "full" if full else "ok"}

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.http is not None:
            await self.http.close()
        await self.mllp.close()
        await self.housekeeper.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        for w in self.workers:
            await w.stop()
        for sink in self.sinks:
            close = getattr(sink, "aclose", None)  # sinks holding connections close them
            if close is not None:
                await close()
        self.store.close()


@contextlib.contextmanager
def _listening(section: str, host: str, port: int) -> Iterator[None]:
    """A listener that cannot bind: a ConfigError naming the key and the address."""
    try:
        yield
    except socket.gaierror as exc:
        raise ConfigError(f"{section}.host: cannot resolve {host!r}: {exc.strerror}") from None
    except OSError as exc:
        raise ConfigError(f"{section}.port: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None


async def serve(config: Config) -> None:
    try:
        bridge = Bridge(config)
    except StorageFull as exc:
        raise SystemExit(f"hl7-worklist-bridge: {exc}") from None  # one line, no traceback
    try:
        await bridge.start()
    except BaseException:
        await bridge.stop()  # what did start (SCP thread, writer process) must not linger
        raise
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
