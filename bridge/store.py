"""The system of record: message journal, worklist items and the sinks' outbox, in SQLite.

All SQL lives in this module so that another backend (PostgreSQL, for several instances)
can replace it. `Store` is synchronous and owned by one thread; `AsyncStore` runs its calls
on that thread so the event loop never waits on a disk flush.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id           INTEGER PRIMARY KEY,
    received_at  REAL NOT NULL,
    peer         TEXT NOT NULL,
    raw          BLOB NOT NULL,
    sender       TEXT,
    control_id   TEXT,
    message_type TEXT,
    profile      TEXT,
    status       TEXT NOT NULL DEFAULT 'received',  -- received | processed | failed | duplicate
    ack_code     TEXT,
    ack          BLOB,
    error        TEXT
);
CREATE INDEX IF NOT EXISTS journal_control ON journal (sender, control_id);
CREATE INDEX IF NOT EXISTS journal_status ON journal (status);

CREATE TABLE IF NOT EXISTS items (
    item_key    TEXT PRIMARY KEY,
    order_key   TEXT NOT NULL,
    status      TEXT NOT NULL,
    visible     INTEGER NOT NULL,
    dataset     TEXT NOT NULL,       -- JSON: DICOM keyword -> value, sequences as lists
    patient_id  TEXT NOT NULL DEFAULT '',
    updated_at  REAL NOT NULL,
    journal_id  INTEGER
);
CREATE INDEX IF NOT EXISTS items_order ON items (order_key);
CREATE INDEX IF NOT EXISTS items_patient ON items (patient_id);

CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY,
    sink        TEXT NOT NULL,
    item_key    TEXT NOT NULL,
    created_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'pending',  -- pending | done | dead
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, state, id);
"""


@dataclass
class StoredItem:
    item_key: str
    order_key: str
    status: str
    visible: bool
    dataset: dict
    patient_id: str
    updated_at: float


@dataclass
class ItemWrite:
    """A new state for one item, decided by the lifecycle."""

    item_key: str
    order_key: str
    status: str
    visible: bool
    dataset: dict


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


@dataclass
class OutboxRow:
    id: int
    sink: str
    item_key: str
    attempts: int


def _item(row: sqlite3.Row) -> StoredItem:
    return StoredItem(row["item_key"], row["order_key"], row["status"], bool(row["visible"]),
                      json.loads(row["dataset"]), row["patient_id"], row["updated_at"])


class Store:
    def __init__(self, path: Path, sinks: Iterable[str] = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.sinks = list(sinks)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we send AA. NORMAL could lose the last commits
        # on power loss in WAL mode.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- journal ---------------------------------------------------------------------------

    def journal_received(self, raw: bytes, peer: str) -> int:
        """Record the raw bytes, durably, before anything else looks at them."""
        cur = self.db.execute("INSERT INTO journal (received_at, peer, raw) VALUES (?, ?, ?)",
                              (time.time(), peer, raw))
        return int(cur.lastrowid)

    def previous_ack(self, sender: str, control_id: str) -> tuple[str, bytes] | None:
        """The ACK already sent for this sender's control ID, if it was processed."""
        row = self.db.execute(
            "SELECT ack_code, ack FROM journal WHERE sender = ? AND control_id = ? "
            "AND status = 'processed' ORDER BY id LIMIT 1", (sender, control_id)).fetchone()
        return (row["ack_code"], row["ack"]) if row else None

    def _finish(self, journal_id: int, status: str, header: dict[str, str | None],
                ack_code: str, ack: bytes, error: str | None) -> None:
        self.db.execute(
            "UPDATE journal SET status = ?, sender = ?, control_id = ?, message_type = ?, "
            "profile = ?, ack_code = ?, ack = ?, error = ? WHERE id = ?",
            (status, header.get("sender"), header.get("control_id"),
             header.get("message_type"), header.get("profile"), ack_code, ack, error,
             journal_id))

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
                       warnings: str | None = None) -> None:
        """One transaction: the items, their outbox rows and the journal's ACK.

        When this returns, the order is durable and the ACK may go out.
        """
        now = time.time()
        with self._transaction():
            for w in writes:
                self.db.execute(
                    "INSERT INTO items (item_key, order_key, status, visible, dataset, "
                    "patient_id, updated_at, journal_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (item_key) DO UPDATE SET order_key = excluded.order_key, "
                    "status = excluded.status, visible = excluded.visible, "
                    "dataset = excluded.dataset, patient_id = excluded.patient_id, "
                    "updated_at = excluded.updated_at, journal_id = excluded.journal_id",
                    (w.item_key, w.order_key, w.status, int(w.visible),
                     json.dumps(w.dataset, ensure_ascii=False), str(w.dataset.get("PatientID", "")),
                     now, journal_id))
                for sink in self.sinks:
                    self.db.execute(
                        "INSERT INTO outbox (sink, item_key, created_at) VALUES (?, ?, ?)",
                        (sink, w.item_key, now))
            self._finish(journal_id, "processed", header, ack_code, ack, warnings)

    def set_status(self, item_keys: Iterable[str], status: str, visible: bool
                   ) -> list[ItemWrite]:
        """Change the status of existing items (MPPS) and queue them for every sink, in one
        transaction. Returns the writes, for the commit hook; unknown keys are skipped."""
        now = time.time()
        writes: list[ItemWrite] = []
        with self._transaction():
            for key in item_keys:
                row = self.db.execute("SELECT * FROM items WHERE item_key = ?",
                                      (key,)).fetchone()
                if row is None:
                    continue
                item = _item(row)
                self.db.execute("UPDATE items SET status = ?, visible = ?, updated_at = ? "
                                "WHERE item_key = ?", (status, int(visible), now, key))
                for sink in self.sinks:
                    self.db.execute(
                        "INSERT INTO outbox (sink, item_key, created_at) VALUES (?, ?, ?)",
                        (sink, key, now))
                writes.append(ItemWrite(key, item.order_key, status, visible, item.dataset))
        return writes

    def put_items(self, writes: list[ItemWrite]) -> None:
        """Items that come from no message (import-wl), with their outbox rows, in one
        transaction."""
        now = time.time()
        with self._transaction():
            for w in writes:
                self.db.execute(
                    "INSERT INTO items (item_key, order_key, status, visible, dataset, "
                    "patient_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (item_key) DO UPDATE SET order_key = excluded.order_key, "
                    "status = excluded.status, visible = excluded.visible, "
                    "dataset = excluded.dataset, patient_id = excluded.patient_id, "
                    "updated_at = excluded.updated_at",
                    (w.item_key, w.order_key, w.status, int(w.visible),
                     json.dumps(w.dataset, ensure_ascii=False),
                     str(w.dataset.get("PatientID", "")), now))
                for sink in self.sinks:
                    self.db.execute(
                        "INSERT INTO outbox (sink, item_key, created_at) VALUES (?, ?, ?)",
                        (sink, w.item_key, now))

    def items_with_status(self, statuses: Iterable[str]) -> list[StoredItem]:
        """The items in any of `statuses` (the SCP's index at start-up)."""
        wanted = sorted(set(statuses))
        marks = ", ".join("?" * len(wanted))
        rows = self.db.execute(f"SELECT * FROM items WHERE status IN ({marks}) "
                               "ORDER BY item_key", wanted).fetchall()
        return [_item(r) for r in rows]

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

    def outbox_done(self, sink: str, item_key: str, up_to_id: int) -> None:
        self.db.execute("UPDATE outbox SET state = 'done', last_error = NULL WHERE sink = ? "
                        "AND item_key = ? AND id <= ? AND state = 'pending'",
                        (sink, item_key, up_to_id))

    def outbox_retry(self, sink: str, item_key: str, error: str, delay: float,
                     dead: bool) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?, state = ? "
            "WHERE sink = ? AND item_key = ? AND state = 'pending'",
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


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class AsyncStore:
    """Runs a Store's calls on its own thread: SQLite and fsync stay off the event loop."""

    def __init__(self, store: Store):
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
