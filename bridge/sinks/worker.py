"""A sink's own process, for work that would hold the bridge's GIL against the listener.

The folder sink encodes and writes its `.wl` files there, the Orthanc sink makes its HTTP
requests there (in the bridge's process, a burst's deliveries to Orthanc halved its ingest:
bench/bench_orthanc_sink.py, issue 13). Spawned, not forked: the bridge has threads
(the store's) that a fork would copy in whatever state they are.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from bridge import logprivacy
from bridge.sinks import SinkUnavailable

log = logging.getLogger(__name__)


class Worker:
    """One process that runs a sink's jobs, started at its first job and started again
    when it died (the OOM killer, a kill by hand): a job it did not finish is run once more
    in the new one (sink jobs are idempotent), and a second death makes the sink
    unavailable, so that the outbox waits and probes instead of charging the items."""

    def __init__(self, sink: str):
        self.sink = sink
        self._pool: ProcessPoolExecutor | None = None

    @property
    def pid(self) -> int | None:
        """The process's id once it runs (for tests and operators' `ps`)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return next(iter(processes), None)

    async def run(self, job: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._submit(job, *args)
        except BrokenProcessPool as exc:
            self._restart(exc, "; starting another")
        try:
            return await self._submit(job, *args)
        except BrokenProcessPool as exc:
            self._restart(exc, "")
            raise SinkUnavailable(f"the {self.sink} sink's worker process died twice in a "
                                  "row") from exc

    async def _submit(self, job: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_follow_parent, initargs=(os.getpid(), logprivacy.current()))
        return await asyncio.get_running_loop().run_in_executor(self._pool, job, *args)

    def _restart(self, exc: BrokenProcessPool, then: str) -> None:
        """Forget the dead process: the next job starts another."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._pool = None
        log.warning("sink %s: its worker process died (%s)%s", self.sink, exc, then)

    async def close(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True)
            self._pool = None


def _follow_parent(parent: int, log_settings: logprivacy.LogSettings) -> None:
    """In the worker: exit when the bridge is gone (a kill -9 leaves no one to stop us).
    Its log lines and pydicom's warnings pass the bridge's privacy filter and line cap."""
    logprivacy.configure(log_settings)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
