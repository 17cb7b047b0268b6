"""Noticing that mapping files changed, so that the bridge reloads them without a restart.

A poll of the folder's modification times: no extra dependency, works on every file system
(inotify misses changes on network mounts), and a few stat calls every seconds cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Mapping files and the lookup tables they read.
WATCHED = ("*.yaml", "*.yml", "*.csv")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (mtime_ns, size) of every watched file; a change in any means reload."""
    state = {}
    for pattern in WATCHED:
        for file in folder.glob(pattern):
            try:
                st = file.stat()
            except OSError:
                continue  # removed between glob and stat: the next poll sees it gone
            state[file.name] = (st.st_mtime_ns, st.st_size)
    return state


async def watch(folder: Path, interval: float, on_change: Callable[[], object]) -> None:
    """Call `on_change` whenever the folder's watched files differ from the last poll."""
    last = snapshot(folder)
    while True:
        await asyncio.sleep(interval)
        current = snapshot(folder)
        if current != last:
            last = current
            log.info("mapping files changed in %s", folder)
            try:
                on_change()
            except Exception:  # a bug in loading must not stop the watching
                log.exception("reloading the mappings of %s failed", folder)
