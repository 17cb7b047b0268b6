"""Sinks: projections of the store that modalities read (a .wl folder, Orthanc).

A sink is anything with a `name` and two coroutines, `put(item)` and `remove(item)`; both
must be idempotent, since the outbox retries them until they succeed.
"""

from __future__ import annotations

from typing import Protocol

from bridge.store import StoredItem


class Sink(Protocol):
    name: str

    async def put(self, item: StoredItem) -> None:
        """Create or replace the item in the sink."""

    async def remove(self, item: StoredItem) -> None:
        """Remove the item from the sink; nothing to do when it is not there."""
