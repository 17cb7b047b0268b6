"""Sinks: projections of the store that modalities read (a .wl folder, Orthanc).

A sink is anything with a `name` and two coroutines, `put(item)` and `remove(item)`; both
must be idempotent, since the outbox retries them until they succeed.

A sink raises `SinkUnavailable` when the sink as a whole cannot be reached (connection
refused, timeout, authentication refused): the outbox then pauses that sink instead of
charging every queued item a failed attempt. Any other exception is the item's failure.
"""

from __future__ import annotations

from typing import Protocol

from bridge.store import StoredItem


class SinkUnavailable(Exception):
    """The sink cannot be reached at all; no item is at fault."""


class Sink(Protocol):
    name: str

    async def put(self, item: StoredItem) -> None:
        """Create or replace the item in the sink."""

    async def remove(self, item: StoredItem) -> None:
        """Remove the item from the sink; nothing to do when it is not there."""
