"""The store's interface, in the domain's words, and the rules that hold across instances.

Two backends implement it: `sqlite.Store` (one machine, the default) and
`postgres.PostgresStore` (several active instances on one database). They share their SQL:
`sqlite.py` holds it, written to run on both (`?` parameters, `ON CONFLICT`, `RETURNING`);
`postgres.py` gives it a psycopg connection that reads like sqlite3's and overrides only
what truly differs. A method added to `Store` works on PostgreSQL when its SQL is portable;
a new table goes into a numbered migration for each backend (`migrations/sqlite/`,
`migrations/postgres/`, the same number and meaning in both).

Consistency rules (the database decides; an instance's memory is a cache):

- **Durability**: `commit_message` returns only after the commit that holds the items,
  their outbox rows, the order identifiers and the journal's ACK. AA goes out after it.
- **Duplicates**: `commit_message` inserts (sender, control ID) into `accepted`, a unique
  key. A second commit of the same message, on any instance and at the same moment, waits
  for the first and raises `Duplicate` carrying the first ACK; nothing of it is written.
- **Per-order serialization**: `commit_message` takes `lock_orders` (PostgreSQL:
  `pg_advisory_xact_lock(hashtext(name))` for the order key and every identifier, sorted so
  that two instances never deadlock; SQLite: the write transaction itself) and compares the
  orders' items with those `prior_state` returned (`seen`). Changed: `Stale`, nothing
  written; the processor reads and plans again. `commit_planned` does the read, the
  processor's plan and the commit in one call (one hand-off to the store's thread); on
  SQLite its read is inside the write transaction and cannot be stale. Advisory locks
  rather than row locks: the order may not have a row yet (a new order arriving twice at
  once).
- **Per-patient serialization**: an ADT message's commit (`patients`, what
  `patients_state` returned) locks `patient=<id>` for each patient ID it names and raises
  `Stale` when their items changed; an order commit locks its items' patient IDs too. All
  names of one commit are taken together, sorted.
- **Item versions**: each write counts up `items.version`; views fed from several paths
  (the SCP index) ignore an item's version older than the one they hold.
- **Change feed**: every item write NOTIFYs its keys (PostgreSQL, delivered at commit);
  each instance LISTENs on its own connection and hands other instances' items to its SCP
  index and its own sinks. A lost connection is followed by a catch-up read of the items
  written since the last notification (less a margin for clock differences). SQLite has
  one writer process; other processes' writes (the CLI) are found by `data_version`.
- **Shared work**: outbox rows of a shared sink are claimed per item by `outbox_due`
  (PostgreSQL: `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)` with a lease of
  `OUTBOX_LEASE_S` and a per-item advisory lock); a holder that dies loses its claims when
  the lease runs out, or takes them back at once when it restarts under the same name.
  `take_lease` gives one named job (housekeeping) to one instance at a time. The RIS
  outbound outbox is shared too: `outbound_claim` takes a due row for a lease (PostgreSQL:
  `FOR UPDATE SKIP LOCKED`), so each status message is sent by one instance.
- **Outage**: a lost connection raises `StoreUnavailable` (a `StorageFull`): callers answer
  AE and the next call reconnects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from bridge.store.sqlite import (
    ItemWrite,
    JournalEntry,
    Mpps,
    OrderLookup,
    OutboundRow,
    OutboxRow,
    OutboxState,
    Plan,
    SinkState,
    StoredItem,
    User,
)


class StoreInterface(Protocol):
    """What the rest of the bridge calls, grouped by the stage of the flow."""

    backend: str  # "sqlite" | "postgres"
    shared: bool  # several instances may use this database at once
    instance: str  # this instance's name (leases, its own sinks)
    sinks: list[str]  # outbox names every item write queues a row for

    # start-up
    def migrate(self) -> None: ...
    def schema_version(self) -> int: ...
    def recover(self) -> int: ...

    # journal: every message, before anything else
    def journal_received(self, raw: bytes, peer: str) -> int: ...
    def previous_ack(self, sender: str, control_id: str) -> tuple[str, bytes] | None: ...
    def prior_state(self, sender: str | None, control_id: str | None,
                    orders: list[OrderLookup]
                    ) -> tuple[tuple[str, bytes] | None, dict[str, list[StoredItem]]]: ...
    def commit_message(self, journal_id: int, header: dict[str, str | None],
                       writes: list[ItemWrite], ack_code: str, ack: bytes,
                       warnings: str | None = None,
                       identifiers: Iterable[tuple[str, str, str]] = (),
                       orders: list[OrderLookup] | None = None,
                       seen: dict[str, list[StoredItem]] | None = None,
                       patients: dict[str, list[StoredItem]] | None = None) -> None: ...
    def commit_planned(self, journal_id: int, header: dict[str, str | None],
                       orders: list[OrderLookup], plan: Plan, ack: bytes
                       ) -> tuple[tuple[str, bytes] | None, list[ItemWrite]]: ...
    def journal_failed(self, journal_id: int, header: dict[str, str | None], ack_code: str,
                       ack: bytes, error: str) -> None: ...
    def journal_duplicate(self, journal_id: int, header: dict[str, str | None],
                          ack_code: str, ack: bytes) -> None: ...
    def journal_entry(self, journal_id: int) -> JournalEntry | None: ...
    def purge_journal(self, before: float) -> int: ...

    # orders and items
    def patients_state(self, patient_ids: list[str]) -> dict[str, list[StoredItem]]: ...
    def find_order(self, lookup: OrderLookup) -> list[StoredItem]: ...
    def item(self, item_key: str) -> StoredItem | None: ...
    def items_by_keys(self, keys: list[str], decode: bool = True
                      ) -> dict[str, StoredItem]: ...
    def items_changed_since(self, since: float) -> list[StoredItem]: ...
    def write_items(self, writes: list[ItemWrite]) -> None: ...

    # MPPS
    def mpps_create(self, uid: str, calling_ae: str, item_keys: list[str], attributes: dict,
                    status: str, visible: bool) -> list[ItemWrite] | None: ...
    def mpps(self, uid: str) -> Mpps | None: ...

    # sinks: outbox, remote state, shared work
    def outbox_due(self, sink: str, limit: int = 100) -> list[OutboxRow]: ...
    def outbox_batch(self, sink: str, limit: int = 100, decode: bool = True
                     ) -> tuple[list[OutboxRow], dict[str, StoredItem]]: ...
    def outbox_done_many(self, sink: str, done: list[tuple[str, int]]) -> None: ...
    def outbox_retry(self, sink: str, item_key: str, error: str, delay: float,
                     dead: bool) -> None: ...
    def outbox_enqueue(self, sink: str, item_keys: Iterable[str]) -> int: ...
    def outbox_state(self, item_key: str) -> list[OutboxState]: ...
    def sink_state(self, sink: str, item_key: str) -> SinkState | None: ...
    def sink_states(self, sink: str, item_keys: list[str]) -> dict[str, SinkState]: ...
    def sink_delivered_many(self, sink: str, delivered_ids: list[tuple[str, str]],
                            delivered: bool = True) -> None: ...
    def take_lease(self, name: str, seconds: float) -> bool: ...

    # status back to the RIS (bridge/outbound/): queued by mpps_create / mpps_set
    def outbound_due(self, destination: str, limit: int = 50) -> list[OutboundRow]: ...
    def outbound_claim(self, row_id: int, seconds: float) -> bool: ...
    def outbound_release(self, row_id: int) -> None: ...
    def outbound_built(self, row_id: int, message: bytes, control_id: str) -> None: ...
    def outbound_sent(self, row_id: int, ack_code: str) -> None: ...
    def outbound_retry(self, row_id: int, error: str, delay: float) -> None: ...
    def outbound_dead(self, row_id: int, ack_code: str | None, error: str) -> None: ...

    # the HTTP server (bridge/web/): users, item history
    def user(self, name: str) -> User | None: ...
    def user_put(self, name: str, role: str, password_hash: str) -> None: ...
    def item_history(self, item_key: str) -> list[dict]: ...

    # other writers: SQLite's other processes, PostgreSQL's other instances
    def outside_version(self) -> int: ...
    def close(self) -> None: ...


class SharedStore(StoreInterface, Protocol):
    """A store several instances use at once (PostgreSQL)."""

    def listen(self, changed: Callable[[list[StoredItem] | None], None]) -> None: ...
