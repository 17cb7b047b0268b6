"""The system of record in SQLite: message journal, worklist items, the sinks' outbox, MPPS.

`Store` holds the SQL, written so that it runs unchanged on PostgreSQL (`?` parameters,
`ON CONFLICT`, `RETURNING`): postgres.py gives it a psycopg connection that speaks like
sqlite3's and overrides only what truly differs (change notifications, locks, leases).
`Store` is synchronous and owned by one thread; `AsyncStore` runs its calls on that thread
so the event loop never waits on a disk flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
# The processor's plan for a message, given its orders' stored items (commit_planned):
# (item writes, notes for the journal, order identifiers (order key, kind, value)).
Plan = Callable[[dict[str, list["StoredItem"]]],
                tuple[list["ItemWrite"], list[str], list[tuple[str, str, str]]]]

# Columns added after the first release but before migrations had numbers: (table, column,
# definition, what existing rows get). A store file from then lacks them; the start-up adds
# them after migration 0001 (whose CREATE TABLE IF NOT EXISTS leaves old tables alone).
COLUMNS = [
    ("items", "final", "INTEGER NOT NULL DEFAULT 0",
     # Before, COMPLETED and CANCELED could only come from an end; DISCONTINUED also came
     # from a hold, an expiry or a dropped procedure, so it stays open.
     "UPDATE items SET final = 1 WHERE status IN ('COMPLETED', 'CANCELED')"),
    ("journal", "replay_count", "INTEGER NOT NULL DEFAULT 0", None),
    ("journal", "replayed_at", "REAL", None),
]

MPPS_FINAL = frozenset({"COMPLETED", "DISCONTINUED"})
# The first scheduled step in an item's dataset, as a JSON path (searches).
STEP: tuple[str | int, ...] = ("ScheduledProcedureStepSequence", 0)

MIGRATIONS = Path(__file__).parent / "migrations"

# An item's dataset as stored: compact (no spaces after separators: fewer bytes in the row,
# the WAL and the page cache) and without the encoder's cycle check (a dataset is a tree
# built by the mapping); issue 13 measured json.dumps among the store thread's costs.
_dataset_json = json.JSONEncoder(ensure_ascii=False, check_circular=False,
                                 separators=(",", ":")).encode


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer bridge: this one does not know its schema."""


class Duplicate(Exception):
    """`commit_message` found this sender's control ID accepted already (by this or another
    instance, perhaps at the same moment): nothing was written; `previous` is that ACK."""

    def __init__(self, previous: tuple[str, bytes]):
        super().__init__("duplicate")
        self.previous = previous


class Stale(Exception):
    """`commit_message` found an order's items changed since `prior_state` read them
    (another connection or instance committed a message for the same order meanwhile):
    nothing was written; the caller plans again from the current state."""


def migrations(backend: str) -> list[tuple[int, Path]]:
    """The numbered migration files of a backend, in order: (number, file)."""
    files = sorted((MIGRATIONS / backend).glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [(int(f.name[:4]), f) for f in files]


class StorageFull(Exception):
    """The store cannot write: its disk, or its size limit, is full. Nothing of the call
    was stored; the same call succeeds once there is space again."""


class StoreUnavailable(StorageFull):
    """The database cannot be reached (PostgreSQL stopped, the connection lost). As with a
    full disk, nothing of the call was stored and the same call succeeds once it is back;
    callers that answer AE on StorageFull do so here too, never AA."""


def is_storage_full(exc: BaseException) -> bool:
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or \
            "disk is full" in str(exc)
    if getattr(exc, "sqlstate", None) == "53100":  # PostgreSQL: disk_full
        return True
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


@dataclass
class JournalFilter:
    """`GET /api/journal`: every given field must hold; text fields match anywhere."""

    status: str | None = None
    sender: str | None = None
    message_type: str | None = None
    control_id: str | None = None
    patient_id: str | None = None  # found in the raw message
    accession: str | None = None  # found in the raw message
    since: float | None = None
    until: float | None = None
    text: str | None = None  # found in the raw message or the error


@dataclass
class ItemFilter:
    status: str | None = None
    modality: str | None = None  # of the first scheduled step
    station: str | None = None  # ScheduledStationAETitle of the first step
    date_from: str | None = None  # YYYYMMDD, first step's start date
    date_to: str | None = None
    patient_id: str | None = None
    accession: str | None = None
    text: str | None = None  # anywhere in the item's attributes
    visible_only: bool = False


@dataclass
class User:
    name: str
    role: str
    password_hash: str
    created_at: float
    updated_at: float


@dataclass
class StoredItem:
    item_key: str
    order_key: str
    status: str
    visible: bool
    dataset: dict
    patient_id: str
    updated_at: float
    final: bool = False  # the status sticks (lifecycle.py)
    version: int = 0  # counts the item's writes (see ItemWrite.version)
    # The dataset as the store holds it (JSON text), read without decoding for a sink that
    # decodes it in its own process (`dataset` is then empty): see outbox_batch.
    dataset_json: str | None = None

    def decoded(self) -> StoredItem:
        """This item with its dataset decoded (itself when it was read decoded)."""
        if self.dataset_json is None:
            return self
        return dataclasses.replace(self, dataset=json.loads(self.dataset_json),
                                   dataset_json=None)


@dataclass
class ItemWrite:
    """A new state for one item, decided by the lifecycle."""

    item_key: str
    order_key: str
    status: str
    visible: bool
    dataset: dict
    final: bool | None = None  # None: as stored (a new item: not final)
    # Set by the store when written (items.version); 0: not known, newer than any.
    version: int = 0


@dataclass
class OrderLookup:
    """How a message names one order: its key, every identifier it carries (kind, key
    text), and accession numbers (only used when they name exactly one order)."""

    key: str
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    accessions: list[str] = field(default_factory=list)


@dataclass
class Mpps:
    uid: str
    state: str
    calling_ae: str
    attributes: dict
    item_keys: list[str]
    created_at: float
    updated_at: float


class MppsUnknown(LookupError):
    """An N-SET for an instance the store does not hold."""


class MppsFinal(ValueError):
    """An N-SET for an instance already COMPLETED or DISCONTINUED."""


@dataclass
class JournalEntry:
    id: int
    received_at: float
    peer: str
    raw: bytes
    sender: str | None
    control_id: str | None
    message_type: str | None
    profile: str | None
    status: str
    ack_code: str | None
    ack: bytes | None
    error: str | None
    replay_count: int = 0
    replayed_at: float | None = None
    instance: str = ""  # the instance that received it ('' on one machine)


@dataclass
class OutboxRow:
    id: int
    sink: str
    item_key: str
    attempts: int


@dataclass
class OutboundRow:
    """One status message to a RIS (bridge/outbound/)."""

    id: int
    destination: str
    order_key: str
    item_keys: list[str]
    event: str
    mpps_uid: str
    mpps: dict
    created_at: float
    state: str
    attempts: int
    next_at: float
    message: bytes | None
    control_id: str | None
    ack_code: str | None
    error: str | None
    sent_at: float | None


def _outbound(row: sqlite3.Row) -> OutboundRow:
    d = dict(row)
    d.pop("claimed_until")
    d["item_keys"] = json.loads(d["item_keys"])
    d["mpps"] = json.loads(d["mpps"])
    return OutboundRow(**d)


def _sps_start(dataset: dict) -> str:
    steps = dataset.get("ScheduledProcedureStepSequence") or [{}]
    step = steps[0] if isinstance(steps, list) and steps else {}
    date = str(step.get("ScheduledProcedureStepStartDate", ""))
    time_ = str(step.get("ScheduledProcedureStepStartTime", "")).split(".")[0]
    return (date + time_.ljust(6, "0"))[:14] if date else ""


@dataclass
class OutboxState:
    """Where one item stands with one sink (for `worklist show` and the logs)."""

    sink: str
    state: str  # pending | done | dead
    attempts: int  # failed attempts of the pending (or dead) change
    last_error: str | None
    remote_id: str | None = None  # the item's ID in the sink, for sinks that keep one
    removed_by_sink: bool = False  # the sink removed it by itself; it will not be recreated


@dataclass
class SinkState:
    sink: str
    item_key: str
    remote_id: str
    delivered: bool
    removed_at: float | None


def _stamp(items: list[StoredItem]) -> list[tuple[str, float]]:
    """What tells one stored state of some items from the next (the Stale checks)."""
    return [(i.item_key, i.updated_at) for i in items]


def _lock_names(orders: list[OrderLookup], seen: dict[str, list[StoredItem]],
                patients: dict[str, list[StoredItem]], writes: list[ItemWrite]) -> list[str]:
    """The names a commit locks, sorted (two instances take them in one order and never
    deadlock): each order's key and identifiers, and every patient whose items it reads
    or writes, so that an order message and an ADT message for the same patient wait for
    each other too."""
    names = {o.key for o in orders} | {f"{k}={v}" for o in orders for k, v in o.identifiers}
    pids = set(patients) | {i.patient_id for items in seen.values() for i in items}
    pids |= {str(w.dataset.get("PatientID", "")) for w in writes}
    names |= {f"patient={pid}" for pid in pids if pid}
    return sorted(names)


def _item(row: sqlite3.Row, dataset: dict | None = None, decode: bool = True) -> StoredItem:
    """An item from its row: its dataset decoded here, or given (decoded by the caller), or
    with decode=False kept as the stored JSON text (StoredItem.dataset_json)."""
    if dataset is None and decode:
        dataset = json.loads(row["dataset"])
    return StoredItem(row["item_key"], row["order_key"], row["status"], bool(row["visible"]),
                      dataset if dataset is not None else {}, row["patient_id"],
                      row["updated_at"], bool(row["final"]), row["version"],
                      None if decode else row["dataset"])


class Store:
    backend = "sqlite"
    # Several instances may use this database at once (leases, notifications matter).
    shared = False
    # Calls grouped into one transaction by AsyncStore (one fsync for several messages).
    max_group = 64
    # Reads made inside a write transaction see what the commit will build on: SQLite's
    # write transaction admits one writer (commit_planned skips the Stale check).
    reads_locked = True
    _mpps_order = "rowid"  # the order in which an MPPS instance listed its items

    # RIS destinations that get MPPS status messages (none: nothing is queued), and the
    # events they get; the bridge sets both from `ris.*` (app.py).
    outbound_destinations: tuple[str, ...] = ()
    outbound_events: frozenset[str] = frozenset({"in_progress", "completed", "discontinued"})

    def __init__(self, path: Path, sinks: Iterable[str] = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self.instance = ""  # the bridge sets its name: who holds a lease
        self.sinks = list(sinks)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        # Since when writes fail for want of space (None: they work); /healthz shows it.
        self.full_since: float | None = None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we send AA. NORMAL could lose the last
            # commits on power loss in WAL mode.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            # Savepoints (each call of a group commit has one) keep their undo data in a
            # statement journal: a temporary file by default, written for every message.
            self.db.execute("PRAGMA temp_store=MEMORY")
            self.migrate()
        except sqlite3.Error as exc:
            # A new store (or a migration) on a full disk: a clear error, not a traceback.
            self.db.close()
            if is_storage_full(exc):
                raise StorageFull(f"{path}: storage full, the store cannot be created or "
                                  "upgraded") from exc
            raise

    def schema_version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY "
                        "KEY, applied_at REAL NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        """Apply the numbered migrations this database lacks, each with its version row in
        one transaction; refuse a database migrated by a newer bridge."""
        known = migrations(self.backend)
        current = self.schema_version()
        newest = known[-1][0] if known else 0
        if current > newest:
            raise SchemaTooNew(f"{self.url_for_log()}: the database has schema version "
                               f"{current}, this bridge knows up to {newest}: upgrade the "
                               "bridge (or point it at another database)")
        for number, file in known:
            if number > current:
                self._apply(number, file.read_text())
        self._legacy_columns()

    def _apply(self, number: int, script: str) -> None:
        # executescript commits what is open first; BEGIN IMMEDIATE in the script makes the
        # migration and its version row one transaction, and a second process waits.
        try:
            self.db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nINSERT INTO schema_version (version, applied_at) "
                f"VALUES ({number}, {time.time()}) ON CONFLICT DO NOTHING;\nCOMMIT;")
        except sqlite3.Error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def url_for_log(self) -> str:
        return self.url

    def _legacy_columns(self) -> None:
        missing = [c for c in COLUMNS if c[1] not in self._columns(c[0])]
        if not missing:
            return  # the usual start: nothing to write
        with self._transaction():
            for table, column, definition, fill in missing:
                if column in self._columns(table):
                    continue  # another process migrated it meanwhile
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                if fill:
                    self.db.execute(fill)

    def _columns(self, table: str) -> set[str]:
        return {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self.db.close()

    def recover(self) -> int:
        """At start-up: messages journaled but never answered (the bridge stopped while
        processing them) are marked `interrupted`. Their senders got no ACK and send them
        again; the entries stay for the record. Raises StorageFull when the disk is full
        (the entries then stay `received` until the next start)."""
        # On a shared database only this instance's own: another one may be processing its
        # messages right now. Rows from before instances had names ('') count as anyone's.
        mine = " AND instance IN (?, '')" if self.shared else ""
        try:
            cur = self.db.execute(
                "UPDATE journal SET status = 'interrupted', error = 'the bridge stopped before "
                "answering; the sender was not acknowledged' WHERE status = 'received'" + mine,
                (self.instance,) if self.shared else ())
        except sqlite3.Error as exc:
            if not is_storage_full(exc):
                raise
            self.full_since = self.full_since or time.time()
            raise StorageFull(f"{self.path}: {exc}") from exc
        return cur.rowcount

    # --- journal ---------------------------------------------------------------------------

    def journal_received(self, raw: bytes, peer: str) -> int:
        """Record the raw bytes before anything else looks at them.

        Committed to the WAL without waiting for the disk: the row survives a crash of the
        bridge, and the next full commit (the order's, before its AA) flushes it with
        everything before it. Only a power cut in between could drop it, and then the
        message was never acknowledged: the sender sends it again.
        """
        with self._relaxed():
            return self._journal_row(raw, peer, time.time())

    def _journal_row(self, raw: bytes, peer: str, now: float) -> int:
        # Its id read at once: an INSERT ... RETURNING outside a transaction commits when its
        # row has been read, and read after _relaxed had set FULL again it waited for the
        # disk after all.
        return int(self.db.execute(
            "INSERT INTO journal (received_at, peer, raw, instance) VALUES (?, ?, ?, ?) "
            "RETURNING id", (now, peer, raw, self.instance)).fetchone()[0])

    @contextlib.contextmanager
    def _relaxed(self) -> Iterator[None]:
        """synchronous=NORMAL for a commit made here on its own (not inside a group commit,
        whose COMMIT keeps FULL): for writes whose loss on power failure costs nothing."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self.db.execute("PRAGMA synchronous=FULL")

    def journal_many(self, entries: list[tuple[bytes, str]]) -> list[int]:
        """journal_received for several messages, in one commit (AsyncStore.run_journaled)."""
        with self._relaxed(), self._transaction():
            now = time.time()
            return [self._journal_row(raw, peer, now) for raw, peer in entries]

    def previous_ack(self, sender: str, control_id: str) -> tuple[str, bytes] | None:
        """The ACK already sent for this sender's control ID, if it was accepted (first
        time or on a replay)."""
        row = self.db.execute(
            "SELECT ack_code, ack FROM journal WHERE sender = ? AND control_id = ? "
            "AND (status = 'processed' OR (status = 'replayed' AND ack_code = 'AA')) "
            "ORDER BY id LIMIT 1", (sender, control_id)).fetchone()
        return (row["ack_code"], row["ack"]) if row else None

    def prior_state(self, sender: str | None, control_id: str | None,
                    orders: list[OrderLookup]
                    ) -> tuple[tuple[str, bytes] | None, dict[str, list[StoredItem]]]:
        """What the processor needs before it commits a message, in one call: the ACK of an
        earlier message with this control ID, if any, and the stored items of its orders,
        keyed by the message's order key (the items carry the order's stored key)."""
        previous = self.previous_ack(sender or "", control_id) if control_id else None
        return previous, {o.key: self.find_order(o) for o in orders}

    def commit_planned(self, journal_id: int, header: dict[str, str | None],
                       orders: list[OrderLookup], plan: Plan, ack: bytes
                       ) -> tuple[tuple[str, bytes] | None, list[ItemWrite]]:
        """prior_state, the processor's plan and commit_message in one call: one hand-off
        to the store's thread per message instead of two (issue 13: each costs the event
        loop and this thread a wake-up).

        Returns (the earlier ACK, []) for a duplicate, else (None, the writes made). `plan`
        gets the stored items of the orders and returns (writes, journal notes, order
        identifiers); it runs here, inside the transaction, and raises what the processor
        raises (a Rejection rolls everything back). SQLite reads under its write
        transaction, so nothing can change the items between the read and the write; on
        PostgreSQL commit_message compares them under the orders' locks (Stale).
        """
        with self._transaction():
            previous, existing = self.prior_state(header.get("sender"),
                                                  header.get("control_id"), orders)
            if previous is not None:
                return previous, []
            writes, notes, identifiers = plan(existing)
            self._commit(journal_id, header, writes, "AA", ack, "; ".join(notes) or None,
                         identifiers, orders, None if self.reads_locked else existing, None)
        return None, writes

    def find_order(self, lookup: OrderLookup) -> list[StoredItem]:
        """The items of the order a message names: by any identifier the order was seen
        with, then by key (orders stored before identifiers were kept), then by an
        accession number that names one order only."""
        if lookup.identifiers:
            # All identifiers in one statement (one per identifier cost the store thread a
            # statement each per message, issue 13), then tried in the message's order.
            marks = " OR ".join(["(kind = ? AND value = ?)"] * len(lookup.identifiers))
            found: dict[tuple[str, str], str] = {}
            for r in self.db.execute(
                    f"SELECT kind, value, order_key FROM order_ids WHERE {marks} "
                    "ORDER BY order_key",
                    [v for pair in lookup.identifiers for v in pair]):
                found.setdefault((r["kind"], r["value"]), r["order_key"])
            for kind, value in lookup.identifiers:
                order_key = found.get((kind, value))
                if order_key is not None and (items := self.items_of_order(order_key)):
                    return items
        if items := self.items_of_order(lookup.key):
            return items
        if lookup.accessions:
            marks = ",".join("?" * len(lookup.accessions))
            rows = self.db.execute(
                f"SELECT DISTINCT order_key FROM order_ids WHERE kind = 'accession' AND "
                f"value IN ({marks})", lookup.accessions).fetchall()
            if len(rows) == 1:
                return self.items_of_order(rows[0]["order_key"])
        return []

    def order_identifiers(self, order_key: str) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT kind, value FROM order_ids WHERE order_key = ? "
                               "ORDER BY kind, value", (order_key,)).fetchall()
        return [(r["kind"], r["value"]) for r in rows]

    def _finish(self, journal_id: int, status: str, header: dict[str, str | None],
                ack_code: str, ack: bytes, error: str | None) -> None:
        self.db.execute(
            "UPDATE journal SET status = ?, sender = ?, control_id = ?, message_type = ?, "
            "profile = ?, ack_code = ?, ack = ?, error = ? WHERE id = ?",
            (status, header.get("sender"), header.get("control_id"),
             header.get("message_type"), header.get("profile"), ack_code, ack, error,
             journal_id))

    def journal_replayed(self, journal_id: int) -> None:
        """After a replay that updated the entry in place: count it. One now processed is
        `replayed` (it failed once); a failing one stays `failed` with its last error."""
        self.db.execute(
            "UPDATE journal SET replay_count = replay_count + 1, replayed_at = ?, "
            "status = CASE WHEN status = 'processed' THEN 'replayed' ELSE status END "
            "WHERE id = ?", (time.time(), journal_id))

    def journal_failed(self, journal_id: int, header: dict[str, str | None], ack_code: str,
                       ack: bytes, error: str) -> None:
        self._finish(journal_id, "failed", header, ack_code, ack, error)

    def journal_duplicate(self, journal_id: int, header: dict[str, str | None],
                          ack_code: str, ack: bytes) -> None:
        self._finish(journal_id, "duplicate", header, ack_code, ack, None)

    def journal_entry(self, journal_id: int) -> JournalEntry | None:
        row = self.db.execute("SELECT * FROM journal WHERE id = ?", (journal_id,)).fetchone()
        return JournalEntry(**dict(row)) if row else None

    def journal_entries(self, status: str | None = None, limit: int = 100) -> list[JournalEntry]:
        sql = "SELECT * FROM journal"
        args: tuple = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [JournalEntry(**dict(r)) for r in rows]

    # --- items -----------------------------------------------------------------------------

    def items_of_order(self, order_key: str) -> list[StoredItem]:
        rows = self.db.execute("SELECT * FROM items WHERE order_key = ? ORDER BY item_key",
                               (order_key,)).fetchall()
        return [_item(r) for r in rows]

    def item(self, item_key: str) -> StoredItem | None:
        row = self.db.execute("SELECT * FROM items WHERE item_key = ?", (item_key,)).fetchone()
        return _item(row) if row else None

    def items(self, visible_only: bool = False) -> list[StoredItem]:
        sql = "SELECT * FROM items" + (" WHERE visible = 1" if visible_only else "")
        return [_item(r) for r in self.db.execute(sql + " ORDER BY item_key").fetchall()]

    def commit_message(self, journal_id: int, header: dict[str, str | None],
                       writes: list[ItemWrite], ack_code: str, ack: bytes,
                       warnings: str | None = None,
                       identifiers: Iterable[tuple[str, str, str]] = (),
                       orders: list[OrderLookup] | None = None,
                       seen: dict[str, list[StoredItem]] | None = None,
                       patients: dict[str, list[StoredItem]] | None = None) -> None:
        """One transaction: the items, their outbox rows, the orders' identifiers
        (order key, kind, value) and the journal's ACK.

        Raises Duplicate when the sender's control ID was accepted already (an AA), and
        Stale when `orders` no longer hold the items `seen` (what prior_state returned), or
        the patients of an ADT message no longer have the items `patients` (what
        patients_state returned): then nothing is written. When this returns, the order is
        durable and the ACK may go out.
        """
        with self._transaction():
            self._commit(journal_id, header, writes, ack_code, ack, warnings, identifiers,
                         orders, seen, patients)

    def _commit(self, journal_id: int, header: dict[str, str | None],
                writes: list[ItemWrite], ack_code: str, ack: bytes, warnings: str | None,
                identifiers: Iterable[tuple[str, str, str]], orders: list[OrderLookup] | None,
                seen: dict[str, list[StoredItem]] | None,
                patients: dict[str, list[StoredItem]] | None) -> None:
        """commit_message inside a transaction already open."""
        control_id = header.get("control_id")
        if control_id and ack_code == "AA":
            # The unique key decides between two instances committing the same message
            # at once: the second waits for the first's commit, then finds its row.
            sender = header.get("sender") or ""
            cur = self.db.execute(
                "INSERT INTO accepted (sender, control_id, journal_id) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING", (sender, control_id, journal_id))
            if cur.rowcount == 0:
                previous = self.previous_ack(sender, control_id)
                raise Duplicate(previous or ("AA", b""))
        if orders or patients:
            self.lock_names(_lock_names(orders or [], seen or {}, patients or {}, writes))
            if orders and seen is not None and self._changed(orders, seen):
                raise Stale()
            if patients and self._patients_changed(patients):
                raise Stale()
        self._write_items(writes, journal_id)
        self.db.executemany(
            "INSERT INTO order_ids (order_key, kind, value) SELECT ?, ?, ? "
            "WHERE ? = 'accession' OR NOT EXISTS (SELECT 1 FROM order_ids WHERE "
            "kind = ? AND value = ?) ON CONFLICT DO NOTHING",
            [(key, kind, value, kind, kind, value) for key, kind, value in identifiers])
        self._finish(journal_id, "processed", header, ack_code, ack, warnings)

    def lock_names(self, names: Iterable[str]) -> None:
        """Serialize messages for the same orders and patients until the transaction ends.
        SQLite: the write transaction (BEGIN IMMEDIATE) already admits one writer at a
        time."""

    def lock_orders(self, orders: Iterable[OrderLookup]) -> None:
        self.lock_names(_lock_names(list(orders), {}, {}, []))

    def _changed(self, orders: Iterable[OrderLookup], seen: dict[str, list[StoredItem]]
                 ) -> bool:
        return any(_stamp(self.find_order(o)) != _stamp(seen.get(o.key, [])) for o in orders)

    def _patients_changed(self, seen: dict[str, list[StoredItem]]) -> bool:
        now = self.patients_state(list(seen))
        return any(_stamp(now[pid]) != _stamp(items) for pid, items in seen.items())

    def write_items(self, writes: list[ItemWrite]) -> None:
        """Item changes that come from no message (an operator, expiry, MPPS), with their
        outbox rows, in one transaction."""
        with self._transaction():
            self._write_items(writes, None)

    def _write_items(self, writes: list[ItemWrite], journal_id: int | None) -> None:
        now = time.time()
        for w in writes:
            final = None if w.final is None else int(w.final)
            w.version = self.db.execute(
                "INSERT INTO items (item_key, order_key, status, visible, dataset, patient_id, "
                "sps_start, updated_at, journal_id, final) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "?, ?, COALESCE(?, 0)) "
                "ON CONFLICT (item_key) DO UPDATE SET order_key = excluded.order_key, "
                "status = excluded.status, visible = excluded.visible, "
                "dataset = excluded.dataset, patient_id = excluded.patient_id, "
                "sps_start = excluded.sps_start, updated_at = excluded.updated_at, "
                "journal_id = COALESCE(excluded.journal_id, items.journal_id), "
                "final = COALESCE(?, items.final), version = items.version + 1 "
                "RETURNING version",
                (w.item_key, w.order_key, w.status, int(w.visible),
                 _dataset_json(w.dataset), str(w.dataset.get("PatientID", "")),
                 _sps_start(w.dataset), now, journal_id, final, final)).fetchone()[0]
            for sink in self.sinks:
                self.db.execute("INSERT INTO outbox (sink, item_key, created_at) VALUES (?, ?, ?)",
                                (sink, w.item_key, now))

    def items_of_patient(self, patient_id: str) -> list[StoredItem]:
        rows = self.db.execute("SELECT * FROM items WHERE patient_id = ? ORDER BY item_key",
                               (patient_id,)).fetchall()
        return [_item(r) for r in rows]

    def patients_state(self, patient_ids: list[str]) -> dict[str, list[StoredItem]]:
        """The stored items of each of these patients, in one query (an ADT message may
        name several): what `commit_message(patients=...)` compares with."""
        found: dict[str, list[StoredItem]] = {pid: [] for pid in patient_ids}
        if patient_ids:
            marks = ",".join("?" * len(found))
            rows = self.db.execute(f"SELECT * FROM items WHERE patient_id IN ({marks}) "
                                   "ORDER BY item_key", list(found)).fetchall()
            for r in rows:
                found[r["patient_id"]].append(_item(r))
        return found

    def outside_version(self) -> int:
        """Changes when another connection (another process) has committed since the last
        call; this connection's own commits leave it alone (SQLite's data_version)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def items_changed_since(self, since: float) -> list[StoredItem]:
        rows = self.db.execute("SELECT * FROM items WHERE updated_at > ? ORDER BY updated_at",
                               (since,)).fetchall()
        return [_item(r) for r in rows]

    def visible_items_starting_before(self, cutoff: str) -> list[StoredItem]:
        """Live items whose first step starts before `cutoff` (YYYYMMDDHHMMSS)."""
        rows = self.db.execute("SELECT * FROM items WHERE visible = 1 AND sps_start != '' "
                               "AND sps_start < ?", (cutoff,)).fetchall()
        return [_item(r) for r in rows]

    def journal_mark(self, journal_id: int, status: str, error: str | None = None) -> None:
        self.db.execute("UPDATE journal SET status = ?, error = COALESCE(?, error) WHERE id = ?",
                        (status, error, journal_id))

    def journal_since(self, since: float, status: str | None = None,
                      limit: int = 1000, newest_first: bool = False) -> list[JournalEntry]:
        sql = "SELECT * FROM journal WHERE received_at >= ?"
        args: tuple = (since,)
        if status:
            sql += " AND status = ?"
            args += (status,)
        order = " ORDER BY id DESC LIMIT ?" if newest_first else " ORDER BY id LIMIT ?"
        rows = self.db.execute(sql + order, (*args, limit)).fetchall()
        return [JournalEntry(**dict(r)) for r in rows]

    def purge_journal(self, before: float) -> int:
        """Delete processed, duplicate and replayed entries received before `before`.
        Failed entries stay: they are the ones an operator still has to look at."""
        self.db.execute("DELETE FROM accepted WHERE journal_id IN (SELECT id FROM journal WHERE "
                        "received_at < ? AND status IN ('processed', 'replayed'))", (before,))
        cur = self.db.execute("DELETE FROM journal WHERE received_at < ? AND status IN "
                              "('processed', 'duplicate', 'replayed')", (before,))
        self.db.execute("DELETE FROM outbox WHERE state = 'done' AND created_at < ?", (before,))
        return cur.rowcount

    def set_status(self, item_keys: Iterable[str], status: str, visible: bool,
                   final: bool | None = None) -> list[ItemWrite]:
        """Change the status of existing items (MPPS) and queue them for every sink, in one
        transaction. Returns the writes, for the commit hook; unknown keys and items in a
        final status are skipped."""
        with self._transaction():
            writes = self._status_writes(item_keys, status, visible, final)
            self._write_items(writes, None)
        return writes

    def _status_writes(self, item_keys: Iterable[str], status: str, visible: bool,
                       final: bool | None) -> list[ItemWrite]:
        writes: list[ItemWrite] = []
        for key in item_keys:
            item = self.item(key)
            if item is not None and not item.final and (item.status, item.visible) != \
                    (status, visible):
                writes.append(ItemWrite(key, item.order_key, status, visible, item.dataset,
                                        final))
        return writes

    # --- MPPS ------------------------------------------------------------------------------

    def mpps_create(self, uid: str, calling_ae: str, item_keys: list[str], attributes: dict,
                    status: str, visible: bool) -> list[ItemWrite] | None:
        """N-CREATE: the instance, its items and their new status, in one transaction.
        None when the instance exists already (nothing changes)."""
        now = time.time()
        with self._transaction():
            cur = self.db.execute(
                "INSERT INTO mpps (uid, state, calling_ae, attributes, created_at, "
                "updated_at) VALUES (?, 'IN PROGRESS', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (uid, calling_ae, json.dumps(attributes), now, now))
            if cur.rowcount == 0:
                return None
            self.db.executemany("INSERT INTO mpps_items (uid, item_key) VALUES (?, ?) "
                                "ON CONFLICT DO NOTHING",
                                [(uid, key) for key in item_keys])
            writes = self._status_writes(item_keys, status, visible, None)
            self._write_items(writes, None)
            self._queue_outbound("in_progress", uid, attributes, item_keys)
        return writes

    def mpps_set(self, uid: str, state: str, modifications: dict,
                 item_status: tuple[str, bool, bool] | None) -> tuple[Mpps, list[ItemWrite]]:
        """N-SET: the modifications merged into the instance and, for `item_status`
        (status, visible, final), its items changed, in one transaction. Raises
        MppsUnknown or MppsFinal (a COMPLETED or DISCONTINUED instance no longer changes)."""
        with self._transaction():
            mpps = self.mpps(uid)
            if mpps is None:
                raise MppsUnknown(uid)
            if mpps.state in MPPS_FINAL:
                raise MppsFinal(f"MPPS {uid} is {mpps.state}")
            mpps.attributes.update(modifications)
            changed = bool(state) and state != mpps.state
            mpps.state = state or mpps.state
            mpps.updated_at = time.time()
            self.db.execute("UPDATE mpps SET state = ?, attributes = ?, updated_at = ? "
                            "WHERE uid = ?", (mpps.state, json.dumps(mpps.attributes),
                                              mpps.updated_at, uid))
            writes: list[ItemWrite] = []
            if item_status is not None:
                writes = self._status_writes(mpps.item_keys, *item_status)
                self._write_items(writes, None)
            if changed:
                self._queue_outbound(mpps.state.lower().replace(" ", "_"), uid,
                                     mpps.attributes, mpps.item_keys)
        return mpps, writes

    def mpps(self, uid: str) -> Mpps | None:
        row = self.db.execute("SELECT * FROM mpps WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            return None
        keys = [r["item_key"] for r in self.db.execute(
            f"SELECT item_key FROM mpps_items WHERE uid = ? ORDER BY {self._mpps_order}",
            (uid,))]
        return Mpps(row["uid"], row["state"], row["calling_ae"], json.loads(row["attributes"]),
                    keys, row["created_at"], row["updated_at"])

    def mpps_of_item(self, item_key: str) -> list[str]:
        return [r["uid"] for r in self.db.execute(
            f"SELECT uid FROM mpps_items WHERE item_key = ? ORDER BY {self._mpps_order}",
            (item_key,))]

    # --- status to the RIS (outbound) ------------------------------------------------------

    def _queue_outbound(self, event: str, uid: str, attributes: dict,
                        item_keys: list[str]) -> None:
        """Inside the MPPS transaction: one row per destination and per order the instance
        performs, with the order's items and the instance as it is now."""
        if not self.outbound_destinations or event not in self.outbound_events:
            return
        by_order: dict[str, list[str]] = {}
        for key in item_keys:
            item = self.item(key)
            if item is not None:
                by_order.setdefault(item.order_key, []).append(key)
        now = time.time()
        self.db.executemany(
            "INSERT INTO outbound (destination, order_key, item_keys, event, mpps_uid, mpps, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(dest, order, json.dumps(keys), event, uid, json.dumps(attributes), now)
             for dest in self.outbound_destinations for order, keys in by_order.items()])

    def outbound_due(self, destination: str, limit: int = 50) -> list[OutboundRow]:
        """Pending rows whose time has come and that no sender holds, oldest first, each
        only when no older row of its order is still pending: in order per order."""
        now = time.time()
        rows = self.db.execute(
            "SELECT * FROM outbound AS o WHERE destination = ? AND state = 'pending' AND "
            "next_at <= ? AND claimed_until <= ? AND NOT EXISTS (SELECT 1 FROM outbound AS e "
            "WHERE e.destination = o.destination AND e.order_key = o.order_key AND "
            "e.state = 'pending' AND e.id < o.id) ORDER BY id LIMIT ?",
            (destination, now, now, limit)).fetchall()
        return [_outbound(r) for r in rows]

    def outbound_claim(self, row_id: int, seconds: float) -> bool:
        """Take a due row for `seconds` (another sender on the same store leaves it alone;
        one that listed it before its retry was scheduled does not send it early)."""
        now = time.time()
        cur = self.db.execute("UPDATE outbound SET claimed_until = ? WHERE id = ? AND "
                              "state = 'pending' AND claimed_until <= ? AND next_at <= ?",
                              (now + seconds, row_id, now, now))
        return cur.rowcount == 1

    def outbound_release(self, row_id: int) -> None:
        """Give a claimed row back (a sender stopping mid-send): due again at once."""
        self.db.execute("UPDATE outbound SET claimed_until = 0 WHERE id = ? AND "
                        "state = 'pending'", (row_id,))

    def outbound_built(self, row_id: int, message: bytes, control_id: str) -> None:
        self.db.execute("UPDATE outbound SET message = ?, control_id = ? WHERE id = ?",
                        (message, control_id, row_id))

    def outbound_sent(self, row_id: int, ack_code: str) -> None:
        """The RIS accepted it (full commit: a lost mark would send it again)."""
        self.db.execute("UPDATE outbound SET state = 'sent', ack_code = ?, error = NULL, "
                        "sent_at = ?, claimed_until = 0 WHERE id = ?",
                        (ack_code, time.time(), row_id))

    def outbound_retry(self, row_id: int, error: str, delay: float) -> None:
        self.db.execute("UPDATE outbound SET attempts = attempts + 1, next_at = ?, error = ?, "
                        "claimed_until = 0 WHERE id = ? AND state = 'pending'",
                        (time.time() + delay, error, row_id))

    def outbound_dead(self, row_id: int, ack_code: str | None, error: str) -> None:
        """Refused by the RIS (AE/AR), or not buildable: stopped until replayed."""
        self.db.execute("UPDATE outbound SET state = 'dead', attempts = attempts + 1, "
                        "ack_code = ?, error = ?, claimed_until = 0 WHERE id = ?",
                        (ack_code, error, row_id))

    def outbound_replay(self, row_ids: Iterable[int]) -> list[int]:
        """Dead rows pending again, rebuilt at their next attempt (after a fix of the
        profile or of the RIS). Returns the IDs that were dead."""
        replayed = []
        with self._transaction():
            for row_id in row_ids:
                cur = self.db.execute(
                    "UPDATE outbound SET state = 'pending', attempts = 0, next_at = 0, "
                    "claimed_until = 0, message = NULL, control_id = NULL, ack_code = NULL "
                    "WHERE id = ? AND state = 'dead'", (row_id,))
                if cur.rowcount:
                    replayed.append(row_id)
        return replayed

    def outbound_entries(self, state: str | None = None, limit: int = 100
                         ) -> list[OutboundRow]:
        sql, args = "SELECT * FROM outbound", ()
        if state:
            sql, args = sql + " WHERE state = ?", (state,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_outbound(r) for r in rows]

    def outbound_entry(self, row_id: int) -> OutboundRow | None:
        row = self.db.execute("SELECT * FROM outbound WHERE id = ?", (row_id,)).fetchone()
        return _outbound(row) if row else None

    def order_message(self, item_key: str) -> bytes | None:
        """The raw order message that last wrote the item, while the journal keeps it:
        outbound messages echo the order's identifiers as the RIS sent them."""
        row = self.db.execute("SELECT j.raw FROM items AS i JOIN journal AS j ON "
                              "j.id = i.journal_id WHERE i.item_key = ?", (item_key,)).fetchone()
        return bytes(row["raw"]) if row else None

    def purge_outbound(self, before: float) -> int:
        """Delete messages the RIS accepted before `before` (journal retention)."""
        cur = self.db.execute("DELETE FROM outbound WHERE state = 'sent' AND sent_at < ?",
                              (before,))
        return cur.rowcount

    def outbound_depth(self, destination: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbound WHERE destination = ? AND "
                                   "state = 'pending'", (destination,)).fetchone()[0])

    def items_with_status(self, statuses: Iterable[str], after: str = "",
                          limit: int = 2**62) -> list[StoredItem]:
        """The items in any of `statuses`, in key order, from the key after `after` on, at
        most `limit` (the SCP's index loads them page by page at start-up)."""
        wanted = sorted(set(statuses))
        marks = ", ".join("?" * len(wanted))
        rows = self.db.execute(f"SELECT * FROM items WHERE status IN ({marks}) "
                               "AND item_key > ? ORDER BY item_key LIMIT ?",
                               (*wanted, after, limit)).fetchall()
        # The page's datasets decoded as one JSON array: one call instead of one per row,
        # and the decoder makes each keyword once per page, not once per item (measured:
        # 40 % less time than _item's json.loads per row; this runs for every item at
        # start-up).
        datasets = json.loads("[" + ",".join(r["dataset"] for r in rows) + "]")
        return [_item(r, dataset) for r, dataset in zip(rows, datasets, strict=True)]

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # --- outbox ----------------------------------------------------------------------------

    def outbox_due(self, sink: str, limit: int = 100) -> list[OutboxRow]:
        """Pending rows whose retry time has come, oldest first, one per item (the newest
        row of an item stands for all its older ones: sinks converge on the current state)."""
        rows = self.db.execute(
            "SELECT MAX(id) AS id, item_key, MAX(attempts) AS attempts FROM outbox "
            "WHERE sink = ? AND state = 'pending' GROUP BY item_key "
            "HAVING MAX(next_at) <= ? ORDER BY MIN(id) LIMIT ?",
            (sink, time.time(), limit)).fetchall()
        return [OutboxRow(r["id"], sink, r["item_key"], r["attempts"]) for r in rows]

    def outbox_done_many(self, sink: str, done: list[tuple[str, int]]) -> None:
        """`outbox_done` for a batch of (item key, row id), in one transaction. Relaxed: a
        mark lost to a power cut only makes the sink receive the same state again."""
        with self._relaxed(), self._transaction():
            self.db.executemany(
                "UPDATE outbox SET state = 'done', last_error = NULL WHERE sink = ? "
                "AND item_key = ? AND id <= ? AND state = 'pending'",
                [(sink, key, row_id) for key, row_id in done])

    def items_by_keys(self, keys: list[str], decode: bool = True) -> dict[str, StoredItem]:
        """The items of `keys` that exist. With decode=False their datasets stay JSON text
        (StoredItem.dataset_json; .decoded() gives the dataset)."""
        return {row["item_key"]: _item(row, decode=decode)
                for row in self._rows_with_keys("SELECT * FROM items WHERE", keys)}

    def _rows_with_keys(self, select: str, keys: list[str], *params: object) -> Iterator:
        """The rows of `select ... item_key IN (keys)`, asked in chunks: SQLite binds at
        most 999 parameters per statement (`params` come first, for the select's own ?)."""
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self.db.execute(f"{select} item_key IN ({marks})", (*params, *chunk))

    def outbox_batch(self, sink: str, limit: int = 100, decode: bool = True
                     ) -> tuple[list[OutboxRow], dict[str, StoredItem]]:
        """outbox_due and the items of its rows in one call: one hand-off to the store's
        thread per batch instead of two (the thread is shared with the listener's commits).
        decode=False for a sink that decodes the datasets in its own process (the folder's
        writer): the bridge's process then neither decodes them nor pickles the dicts."""
        rows = self.outbox_due(sink, limit)
        items = self.items_by_keys([r.item_key for r in rows], decode) if rows else {}
        return rows, items

    def outbox_done(self, sink: str, item_key: str, up_to_id: int) -> None:
        self.db.execute("UPDATE outbox SET state = 'done', last_error = NULL WHERE sink = ? "
                        "AND item_key = ? AND id <= ? AND state = 'pending'",
                        (sink, item_key, up_to_id))

    def outbox_retry(self, sink: str, item_key: str, error: str, delay: float,
                     dead: bool) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?, state = ?, "
            "lease_until = NULL WHERE sink = ? AND item_key = ? AND state = 'pending'",
            (time.time() + delay, error, "dead" if dead else "pending", sink, item_key))

    def outbox_depth(self, sink: str) -> int:
        row = self.db.execute("SELECT COUNT(DISTINCT item_key) FROM outbox WHERE sink = ? AND "
                              "state = 'pending'", (sink,)).fetchone()
        return int(row[0])

    def enqueue_all(self, sink: str) -> int:
        """Queue every item for `sink` again (resync): the sink rewrites or removes each."""
        now = time.time()
        with self._transaction():
            cur = self.db.execute("INSERT INTO outbox (sink, item_key, created_at) "
                                  "SELECT ?, item_key, ? FROM items", (sink, now))
        return cur.rowcount

    def outbox_enqueue(self, sink: str, item_keys: Iterable[str]) -> int:
        """Queue these items for `sink` again (a targeted resync)."""
        now = time.time()
        with self._transaction():
            cur = self.db.executemany(
                "INSERT INTO outbox (sink, item_key, created_at) VALUES (?, ?, ?)",
                [(sink, key, now) for key in item_keys])
        return cur.rowcount

    def outbox_state(self, item_key: str) -> list[OutboxState]:
        """Per sink: the state of the item's latest change, its failed attempts and error.

        Pending rows stand for one change (the worker sends the current state), so the item
        is pending while any row is; otherwise it is what its newest row says.
        """
        rows = self.db.execute(
            "SELECT sink, state, attempts, last_error FROM outbox WHERE item_key = ? "
            "ORDER BY sink, id", (item_key,)).fetchall()
        by_sink: dict[str, list[sqlite3.Row]] = {}
        for r in rows:
            by_sink.setdefault(r["sink"], []).append(r)
        states = {s.sink: s for s in self.sink_states_of_item(item_key)}
        out = []
        for sink, sink_rows in by_sink.items():
            pending = [r for r in sink_rows if r["state"] == "pending"]
            worst = max(pending, key=lambda r: r["attempts"]) if pending else sink_rows[-1]
            remote = states.get(sink)
            out.append(OutboxState(
                sink, "pending" if pending else worst["state"], worst["attempts"],
                worst["last_error"], remote.remote_id if remote else None,
                bool(remote and remote.removed_at is not None)))
        return out

    def take_lease(self, name: str, seconds: float) -> bool:
        """Hold `name` (e.g. 'housekeeping') for `seconds` if no other instance holds it
        now; the holder renews it by taking it again. True when this instance holds it."""
        now = time.time()
        with self._transaction():
            row = self.db.execute(
                "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "until = excluded.until WHERE leases.until < ? OR leases.holder = "
                "excluded.holder RETURNING holder",
                (name, self.instance, now + seconds, now)).fetchone()
        return row is not None

    # --- remote sink state (Orthanc) -------------------------------------------------------

    def sink_state(self, sink: str, item_key: str) -> SinkState | None:
        row = self.db.execute("SELECT * FROM sink_state WHERE sink = ? AND item_key = ?",
                              (sink, item_key)).fetchone()
        return SinkState(**_sink_state(row)) if row else None

    def sink_states_of_item(self, item_key: str) -> list[SinkState]:
        rows = self.db.execute("SELECT * FROM sink_state WHERE item_key = ?",
                               (item_key,)).fetchall()
        return [SinkState(**_sink_state(r)) for r in rows]

    def sink_states(self, sink: str, item_keys: list[str]) -> dict[str, SinkState]:
        """`sink_state` of several items in one call (those the sink has a state for)."""
        return {row["item_key"]: SinkState(**_sink_state(row)) for row in
                self._rows_with_keys("SELECT * FROM sink_state WHERE sink = ? AND", item_keys,
                                     sink)}

    def sink_delivered(self, sink: str, item_key: str, remote_id: str, delivered: bool) -> None:
        """The sink now holds the item (after a put) or does not (after a remove)."""
        self.sink_delivered_many(sink, [(item_key, remote_id)], delivered)

    def sink_delivered_many(self, sink: str, delivered_ids: list[tuple[str, str]],
                            delivered: bool = True) -> None:
        """`sink_delivered` for several (item key, remote id) in one transaction."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO sink_state (sink, item_key, remote_id, delivered) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (sink, item_key) DO UPDATE SET "
                "remote_id = excluded.remote_id, delivered = excluded.delivered",
                [(sink, key, rid, int(delivered)) for key, rid in delivered_ids])

    def sink_removed(self, sink: str, item_key: str, remote_id: str) -> None:
        """The sink removed the item by itself: it stays removed."""
        self.db.execute(
            "INSERT INTO sink_state (sink, item_key, remote_id, delivered, removed_at) "
            "VALUES (?, ?, ?, 0, ?) ON CONFLICT (sink, item_key) DO UPDATE SET "
            "delivered = 0, removed_at = excluded.removed_at",
            (sink, item_key, remote_id, time.time()))

    # --- for the HTTP server: users, searches, history, dashboard ------------------------

    # What SQLite and PostgreSQL spell differently in searches; postgres.py overrides them.

    @staticmethod
    def _contains(column: str) -> str:
        """`column` (text or bytes) holds the next parameter somewhere."""
        return f"instr({column}, ?) > 0"

    @staticmethod
    def _json_text(*path: str | int) -> str:
        """The value at `path` in the item's JSON dataset (keys and list indexes)."""
        steps = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
        return f"json_extract(dataset, '${steps}')"

    @staticmethod
    def _minute(column: str) -> str:
        """Whole minutes since the epoch of a time in seconds (rounded down)."""
        return f"CAST({column} / 60 AS INTEGER)"


    def user(self, name: str) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return User(**dict(row)) if row else None

    def users(self) -> list[User]:
        return [User(**dict(r)) for r in self.db.execute("SELECT * FROM users ORDER BY name")]

    def user_put(self, name: str, role: str, password_hash: str) -> None:
        """Add a user or change an existing one's role and password."""
        now = time.time()
        self.db.execute(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at) VALUES "
            "(?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET role = excluded.role, "
            "password_hash = excluded.password_hash, updated_at = excluded.updated_at",
            (name, role, password_hash, now, now))

    def user_delete(self, name: str) -> bool:
        return self.db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def journal_search(self, f: JournalFilter, limit: int = 50, offset: int = 0
                       ) -> tuple[list[JournalEntry], int]:
        """Entries matching `f`, newest first, and how many match in all."""
        where, args = ["1 = 1"], []
        for column in ("status", "sender", "message_type", "control_id"):
            if getattr(f, column):
                where.append(f"{column} = ?")
                args.append(getattr(f, column))
        for value in (f.patient_id, f.accession):
            if value:
                where.append(self._contains("raw"))
                args.append(value.encode())
        if f.text:
            error = self._contains("COALESCE(error, '')")
            where.append(f"({self._contains('raw')} OR {error})")
            args += [f.text.encode(), f.text]
        if f.since is not None:
            where.append("received_at >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("received_at < ?")
            args.append(f.until)
        sql = " AND ".join(where)
        total = self.db.execute(f"SELECT COUNT(*) FROM journal WHERE {sql}", args).fetchone()[0]
        rows = self.db.execute(f"SELECT * FROM journal WHERE {sql} ORDER BY id DESC "
                               "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [JournalEntry(**dict(r)) for r in rows], int(total)

    def items_search(self, f: ItemFilter, limit: int = 50, offset: int = 0
                     ) -> tuple[list[StoredItem], int]:
        """Items matching `f`, by start of their first step (then key), and the total."""
        where, args = ["1 = 1"], []
        if f.status:
            where.append("status = ?")
            args.append(f.status.upper())
        if f.visible_only:
            where.append("visible = 1")
        if f.modality:
            where.append(f"{self._json_text(*STEP, 'Modality')} = ?")
            args.append(f.modality)
        if f.station:
            where.append(f"{self._json_text(*STEP, 'ScheduledStationAETitle')} = ?")
            args.append(f.station)
        if f.date_from:
            where.append("sps_start >= ?")
            args.append(f.date_from)
        if f.date_to:
            where.append("sps_start != '' AND substr(sps_start, 1, 8) <= ?")
            args.append(f.date_to)
        if f.patient_id:
            where.append("patient_id = ?")
            args.append(f.patient_id)
        if f.accession:
            where.append(f"{self._json_text('AccessionNumber')} = ?")
            args.append(f.accession)
        if f.text:
            where.append(self._contains("dataset"))
            args.append(f.text)
        sql = " AND ".join(where)
        total = self.db.execute(f"SELECT COUNT(*) FROM items WHERE {sql}", args).fetchone()[0]
        rows = self.db.execute(f"SELECT * FROM items WHERE {sql} ORDER BY sps_start, item_key "
                               "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [_item(r) for r in rows], int(total)

    def item_history(self, item_key: str) -> list[dict]:
        """Every change of an item, oldest first: time, status, visible, journal entry."""
        rows = self.db.execute("SELECT at, status, visible, journal_id FROM item_history "
                               "WHERE item_key = ? ORDER BY id", (item_key,)).fetchall()
        return [{**dict(r), "visible": bool(r["visible"])} for r in rows]

    def items_of_journal(self, journal_id: int) -> list[str]:
        """The keys of the items a journal entry changed."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT item_key FROM item_history WHERE journal_id = ? ORDER BY 1",
            (journal_id,))]

    def journal_per_minute(self, since: float) -> list[tuple[int, str, int]]:
        """(minute since the epoch, ACK code or '-', messages) from `since` on."""
        rows = self.db.execute(
            f"SELECT {self._minute('received_at')}, COALESCE(ack_code, '-'), COUNT(*) "
            "FROM journal WHERE received_at >= ? GROUP BY 1, 2 ORDER BY 1", (since,))
        return [(int(m), str(c), int(n)) for m, c, n in rows]

    def outbox_summary(self) -> dict[str, dict]:
        """Per sink: items waiting, dead items, and the last error of a failing change."""
        out: dict[str, dict] = {s: {"depth": 0, "dead": 0, "last_error": None}
                                for s in self.sinks}
        for sink, state, n in self.db.execute(
                "SELECT sink, state, COUNT(DISTINCT item_key) FROM outbox WHERE state != "
                "'done' GROUP BY sink, state"):
            out.setdefault(sink, {"depth": 0, "dead": 0, "last_error": None})
            out[sink]["depth" if state == "pending" else "dead"] = int(n)
        for sink, error in self.db.execute(
                "SELECT sink, last_error FROM outbox WHERE last_error IS NOT NULL AND "
                "state != 'done' AND id IN (SELECT MAX(id) FROM outbox WHERE last_error IS "
                "NOT NULL AND state != 'done' GROUP BY sink)"):
            out.setdefault(sink, {"depth": 0, "dead": 0, "last_error": None})
            out[sink]["last_error"] = error
        return out


def _sink_state(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["delivered"] = bool(d["delivered"])
    return d


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or, inside a transaction already open (a group commit),
    a savepoint that an error rolls back alone."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.savepoint = False

    def __enter__(self) -> None:
        self.savepoint = self.db.in_transaction
        self.db.execute("SAVEPOINT op" if self.savepoint else "BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type and not self.db.in_transaction:
            return  # SQLite rolled it back already (SQLITE_FULL, some I/O errors)
        if self.savepoint:
            if exc_type:
                self.db.execute("ROLLBACK TO op")
            self.db.execute("RELEASE op")
        else:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class _Call:
    __slots__ = ("args", "fn", "future", "journal", "journal_id", "loop")

    def __init__(self, fn: Callable, args: tuple, future: asyncio.Future,
                 loop: asyncio.AbstractEventLoop, journal: tuple[bytes, str] | None = None):
        self.fn, self.args, self.future, self.loop = fn, args, future, loop
        self.journal = journal  # (raw, peer): journaled and committed before fn runs
        self.journal_id = 0  # its entry, once journaled: fn's first argument


@dataclass
class Journaled(Generic[T]):
    """What AsyncStore.run_journaled gives back: the message's journal entry, and what its
    call returned or raised."""

    journal_id: int
    value: T | None = None
    error: BaseException | None = None


def _settle(results: list[tuple[asyncio.Future, bool, object]]) -> None:
    """On the caller's event loop: hand a group's results to their callers."""
    for future, ok, value in results:
        if future.done():
            continue  # its caller went away (cancelled) while the call ran
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)  # type: ignore[arg-type]


class AsyncStore:
    """Runs a Store's calls on its own thread: SQLite and fsync stay off the event loop.

    Group commit: calls that queue up while the thread is busy run together in one
    transaction, each in its own savepoint, and their results are given out only after
    that transaction's COMMIT. With several senders, one disk flush then serves several
    messages; an AA still goes out only once its order is on disk.
    """

    def __init__(self, store: Store):
        self.store = store
        self.MAX_GROUP = store.max_group
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="store", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        # An asyncio future settled by one call_soon_threadsafe per group: a
        # concurrent.futures.Future wrapped by asyncio.wrap_future cost the event loop about
        # 10 % of an order's CPU in its callbacks and locks (issue 13, py-spy).
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put(_Call(fn, args, future, loop))
        return await future

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            group = [call]
            while len(group) < self.MAX_GROUP:
                try:
                    more = self._calls.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._calls.put(None)  # stop after this group
                    break
                group.append(more)
            # A caller that went away (its connection closed) cancelled its future: skip
            # its call. One cancelled from now on still has its call run (and committed);
            # _settle then drops the result.
            group = [c for c in group if not c.future.cancelled()]
            if group:
                self._run_group(group)

    async def run_journaled(self, raw: bytes, peer: str, fn: Callable[..., T],
                            *args: object) -> Journaled[T]:
        """journal_received, then fn(journal_id, *args), in one trip to the store's thread:
        the journal entry is committed before fn starts (so a message that brings the
        bridge down is in the journal), and fn's error comes back with the entry's id.
        Raises what the journal insert raised (StorageFull: nothing was journaled)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put(_Call(fn, args, future, loop, journal=(raw, peer)))
        return await future

    def _journal_first(self, group: list[_Call]) -> list[_Call]:
        """The journal entries of the group's journaled calls, in one commit; the calls
        whose entries could not be written are answered here and left out of the group."""
        journaled = [c for c in group if c.journal is not None]
        if not journaled:
            return group
        try:
            ids = self.store.journal_many([c.journal for c in journaled])
        except BaseException as exc:
            self._give(journaled, [self._full(exc)] * len(journaled))
            return [c for c in group if c.journal is None]
        for call, journal_id in zip(journaled, ids, strict=True):
            call.journal_id = journal_id
        return group

    def _run_group(self, group: list[_Call]) -> None:
        group = self._journal_first(group)
        if not group:
            return
        db = self.store.db
        outcomes: list[tuple[bool, object]] = []
        grouped = len(group) > 1
        changes = db.total_changes
        try:
            if grouped:
                db.execute("BEGIN IMMEDIATE")
            for call in group:
                try:
                    args = call.args if call.journal is None else \
                        (call.journal_id, *call.args)
                    if grouped:
                        with _Transaction(db):  # a savepoint: a failure undoes this call only
                            outcomes.append((True, call.fn(*args)))
                    else:
                        outcomes.append((True, call.fn(*args)))
                except BaseException as exc:  # handed to the caller, as the executor did
                    outcomes.append((False, exc))
                    if grouped and not db.in_transaction:
                        # SQLite rolled the whole transaction back (SQLITE_FULL does):
                        # nothing of the group holds, and nothing more may run outside it.
                        raise exc
            if grouped:
                db.execute("COMMIT")
        except BaseException as exc:  # the COMMIT itself failed: nothing of the group holds
            if db.in_transaction:
                db.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(group)
        outcomes = [self._full(value) if not ok else (ok, value) for ok, value in outcomes]
        if all(ok for ok, _ in outcomes) and db.total_changes > changes:
            self.store.full_since = None  # a write went through: there is space again
        for n, call in enumerate(group):
            if call.journal is not None:  # its caller gets the journal id with either
                ok, value = outcomes[n]
                outcomes[n] = (True, Journaled(call.journal_id, value if ok else None,
                                               None if ok else value))  # type: ignore[arg-type]
        self._give(group, outcomes)

    @staticmethod
    def _give(group: list[_Call], outcomes: list[tuple[bool, object]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for call, (ok, value) in zip(group, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append((call.future, ok, value))
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: no one waits
                loop.call_soon_threadsafe(_settle, results)

    def _full(self, exc: object) -> tuple[bool, object]:
        """A failure for want of space becomes StorageFull (callers answer AE, not crash)."""
        if isinstance(exc, BaseException) and not isinstance(exc, StorageFull) and \
                is_storage_full(exc):
            self.store.full_since = self.store.full_since or time.time()
            full = StorageFull(f"storage full: {exc}")
            full.__cause__ = exc
            return False, full
        if isinstance(exc, StoreUnavailable):
            return False, exc  # not a full disk: /healthz says the database is unreachable
        if isinstance(exc, StorageFull):
            self.store.full_since = self.store.full_since or time.time()
        return False, exc

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join()
        self.store.close()
