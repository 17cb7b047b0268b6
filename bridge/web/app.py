"""The FastAPI application and the uvicorn server that runs it on the bridge's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from bridge.config import HttpConfig, ScpConfig
from bridge.scp.index import WorklistIndex
from bridge.scp.server import WorklistScp, all_visible_statuses
from bridge.scp.service import load_index

if TYPE_CHECKING:
    from bridge.app import Bridge

log = logging.getLogger(__name__)
access_log = logging.getLogger("bridge.web.access")
HERE = Path(__file__).parent


class Sampler:
    """C-FIND counts sampled over time, for the dashboard's queries per minute (the
    histogram only holds a running total)."""

    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.samples: deque[tuple[float, float]] = deque(maxlen=2 * 60 * 4)

    def cfind_total(self) -> float:
        hist = self.bridge.metrics.cfind_latency
        return next((s.value for m in hist.collect() for s in m.samples
                     if s.name.endswith("_count")), 0.0)

    def sample(self) -> None:
        self.samples.append((time.time(), self.cfind_total()))

    def per_minute(self) -> list[tuple[float, float]]:
        """(minute start, queries) for the sampled minutes, oldest first."""
        by_minute: dict[int, tuple[float, float]] = {}
        for at, count in self.samples:
            minute = int(at // 60)
            low, high = by_minute.get(minute, (count, count))
            by_minute[minute] = (min(low, count), max(high, count))
        out, previous = [], None
        for minute in sorted(by_minute):
            low, high = by_minute[minute]
            start = previous if previous is not None else low
            out.append((minute * 60.0, high - start))
            previous = high
        return out

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(15)


def worklist_scp(bridge: Bridge) -> WorklistScp:
    """The SCP's C-FIND engine for DICOMweb: the running SCP's, or (SCP disabled) one of
    our own on an index fed the same way, with no network side."""
    if bridge.scp is not None:
        return bridge.scp.scp
    config: ScpConfig = bridge.config.scp
    index = WorklistIndex(all_visible_statuses(config))
    bridge.change_listeners.append(index.apply)
    return WorklistScp(config, index)


def create_app(bridge: Bridge) -> FastAPI:
    from bridge.web import auth, console, dicomweb, items, journal, status, translate

    app = FastAPI(title="hl7-worklist-bridge", openapi_url="/api/openapi.json",
                  docs_url="/api/docs", redoc_url=None)
    app.state.bridge = bridge
    app.state.sessions = auth.Sessions(bridge.config.http)
    app.state.sampler = Sampler(bridge)
    app.state.scp = worklist_scp(bridge)
    app.state.own_index = bridge.scp is None
    for module in (auth, status, items, journal, translate, dicomweb, console):
        app.include_router(module.router)
    app.add_exception_handler(console.LoginNeeded, console.login_needed)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def access(request: Request, call_next):
        # The route's template, never the path or query: those can carry patient IDs,
        # accession numbers and names (filters, item keys).
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "(no route)"
        user = getattr(request.state, "user", None)
        access_log.info("%s %s %d %s %.1f ms", request.method, path, response.status_code,
                        user.name if user else "-", (time.perf_counter() - started) * 1000)
        return response

    return app


class HttpServer:
    """uvicorn in the bridge's own event loop: no thread, no second loop."""

    def __init__(self, bridge: Bridge, config: HttpConfig):
        self.bridge = bridge
        self.config = config
        self.app = create_app(bridge)
        self.server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        """Serve; returns the port. Raises OSError when the address cannot be bound."""
        if self.app.state.own_index:  # DICOMweb without the SCP: load our index
            await load_index(self.bridge.store, self.app.state.scp.index)
        tls = self.config.tls
        config = uvicorn.Config(
            self.app, host=self.config.host, port=self.config.port, lifespan="off",
            access_log=False, log_config=None, server_header=False,
            ssl_certfile=str(tls.certfile) if tls.certfile else None,
            ssl_keyfile=str(tls.keyfile) if tls.keyfile else None)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            # Not server.serve(): that installs its own signal handlers over the bridge's.
            await server.startup()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port}") from exc
        self.server = server
        if not await self.bridge.store.run(self.bridge.store.store.users):
            log.warning("no console user yet: hl7-worklist-bridge user add NAME --role admin "
                        "--password-stdin")
        self._tasks = [asyncio.create_task(server.main_loop()),
                       asyncio.create_task(self.app.state.sampler.run())]
        return server.servers[0].sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is None:
            return
        self.server.should_exit = True
        self._tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[1]
        await self._tasks[0]
        await self.server.shutdown()
        self.server = None
