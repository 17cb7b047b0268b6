"""The system of record: message journal, orders, worklist items, the sinks' outbox, MPPS.

`from bridge.store import ...` keeps working for every module: the names live in the
backend modules and are re-exported here.
"""

from bridge.store.sqlite import (
    MPPS_FINAL,
    AsyncStore,
    ItemWrite,
    JournalEntry,
    Mpps,
    MppsFinal,
    MppsUnknown,
    OrderLookup,
    OutboxRow,
    OutboxState,
    SinkState,
    StorageFull,
    Store,
    StoredItem,
    is_storage_full,
)

__all__ = ["MPPS_FINAL", "AsyncStore", "ItemWrite", "JournalEntry", "Mpps", "MppsFinal",
           "MppsUnknown", "OrderLookup", "OutboxRow", "OutboxState", "SinkState",
           "StorageFull", "Store", "StoredItem", "is_storage_full"]
