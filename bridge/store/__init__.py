"""The system of record: message journal, orders, worklist items, the sinks' outbox, MPPS,
the RIS outbound outbox, users and item history.

`from bridge.store import ...` keeps working for every module: the names live in the
backend modules and are re-exported here. `open_store` picks the backend from the URL:
`sqlite:///path` (the default, one machine) or `postgresql://...` (several instances).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bridge.store.sqlite import (
    MPPS_FINAL,
    AsyncStore,
    Duplicate,
    ItemFilter,
    ItemWrite,
    JournalEntry,
    JournalFilter,
    Mpps,
    MppsFinal,
    MppsUnknown,
    OrderLookup,
    OutboundRow,
    OutboxRow,
    OutboxState,
    SchemaTooNew,
    SinkState,
    Stale,
    StorageFull,
    Store,
    StoredItem,
    StoreUnavailable,
    User,
    is_storage_full,
)

__all__ = [
    "MPPS_FINAL",
    "AsyncStore",
    "Duplicate",
    "ItemFilter",
    "ItemWrite",
    "JournalEntry",
    "JournalFilter",
    "Mpps",
    "MppsFinal",
    "MppsUnknown",
    "OrderLookup",
    "OutboundRow",
    "OutboxRow",
    "OutboxState",
    "SchemaTooNew",
    "SinkState",
    "Stale",
    "StorageFull",
    "Store",
    "StoreUnavailable",
    "StoredItem",
    "User",
    "is_storage_full",
    "open_store",
    "store_url",
]


def store_url(config) -> str:
    """`store.url`, or the SQLite file of `store.path` / `data_dir`."""
    return config.store.url or f"sqlite:///{config.store_path}"


def open_store(target: str | Path, sinks: Iterable[str] = ()) -> Store:
    """The store at `target`: a URL (sqlite:///path, postgresql://...) or a SQLite path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        from bridge.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(text, sinks)
    # As SQLAlchemy writes it: sqlite:///relative/path, sqlite:////absolute/path.
    return Store(Path(text.removeprefix("sqlite:///")), sinks)
