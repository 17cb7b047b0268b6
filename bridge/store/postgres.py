"""The store in PostgreSQL, shared by several active instances.

The SQL is sqlite.py's: `_Connection` gives it a psycopg connection that speaks like
sqlite3's (`?` parameters, rows by name or position, BEGIN/SAVEPOINT by hand). What truly
differs is here: migrations under an advisory lock, per-order advisory locks, change
notifications (LISTEN/NOTIFY) for the other instances' SCP indexes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors, pq

from bridge.store.sqlite import (
    ItemWrite,
    OutboxRow,
    StorageFull,
    Store,
    StoredItem,
    StoreUnavailable,
    _item,
)

log = logging.getLogger(__name__)

CHANNEL = "bridge_items"
# pg_notify's payload must stay under 8000 bytes; a longer list of keys is sent as ''
# ("read what changed lately") instead.
MAX_PAYLOAD = 7000
MIGRATION_LOCK = 0x6272_6964  # advisory lock key held while migrating ("brid")
# How long an instance holds the outbox rows it claimed: a holder that dies releases
# them this long after its last claim.
OUTBOX_LEASE_S = 60.0


def redacted(url: str) -> str:
    """The URL without its password, for logs and /healthz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _Row:
    """A row readable by column name or position, like sqlite3.Row."""

    __slots__ = ("index", "values")

    def __init__(self, values: Sequence, index: dict[str, int]):
        self.values, self.index = values, index

    def __getitem__(self, key: str | int) -> object:
        return self.values[self.index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self.index)


def _rows(cursor: psycopg.Cursor) -> Callable[[Sequence], _Row]:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


_translated: dict[str, str] = {}


def _sql(sql: str) -> str:
    """sqlite3's `?` placeholders as psycopg's `%s` (a literal % doubled)."""
    out = _translated.get(sql)
    if out is None:
        out = sql.replace("%", "%%").replace("?", "%s")
        if out.startswith("BEGIN IMMEDIATE"):
            out = "BEGIN"
        _translated[sql] = out
    return out


class _Connection:
    """The part of sqlite3.Connection the Store uses, on one psycopg connection in
    autocommit mode (the Store opens its transactions itself). A connection lost with the
    database is opened again on the next call outside a transaction."""

    def __init__(self, url: str):
        self.url = url
        self.total_changes = 0
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, row_factory=_rows,
                               connect_timeout=5)

    def _usable(self) -> psycopg.Connection:
        if self.conn.closed or self.conn.broken:
            try:
                self.conn = self._connect()
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"database unreachable: {_first_line(exc)}") from exc
        return self.conn

    def _lost(self, exc: psycopg.Error) -> BaseException:
        """A failure that lost the connection becomes StoreUnavailable (the next call opens
        a new one); any other is the statement's own."""
        if self.conn.closed or self.conn.broken:
            unavailable = StoreUnavailable(f"database connection lost: {_first_line(exc)}")
            unavailable.__cause__ = exc
            return unavailable
        return exc

    @property
    def in_transaction(self) -> bool:
        if self.conn.closed or self.conn.broken:
            return False
        return self.conn.info.transaction_status in (pq.TransactionStatus.INTRANS,
                                                     pq.TransactionStatus.INERROR)

    @property
    def pid(self) -> int:
        return self._usable().info.backend_pid

    def execute(self, sql: str, params: Sequence = ()) -> psycopg.Cursor:
        conn = self._usable()
        try:
            cur = conn.execute(_sql(sql), params or None)
        except psycopg.Error as exc:
            raise self._lost(exc) from exc
        if cur.rowcount > 0 and cur.description is None:
            self.total_changes += cur.rowcount
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> psycopg.Cursor:
        cur = self._usable().cursor()
        rows = list(rows)
        if rows:
            try:
                cur.executemany(_sql(sql), rows)
            except psycopg.Error as exc:
                raise self._lost(exc) from exc
            self.total_changes += max(cur.rowcount, 0)
        return cur

    def executescript(self, script: str) -> None:
        try:
            self._usable().execute(script)  # no parameters: several statements in one call
        except psycopg.Error as exc:
            raise self._lost(exc) from exc

    def close(self) -> None:
        self.conn.close()


class PostgresStore(Store):
    backend = "postgres"
    shared = True
    # One transaction per call: a group's locks held together could deadlock two instances.
    max_group = 1
    # Another instance may change the orders between commit_planned's read and its locks.
    reads_locked = False
    _mpps_order = "id"

    def __init__(self, url: str, sinks: Iterable[str] = ()):
        self.url = url
        self.path = redacted(url)  # what messages about the store name
        self.sinks = list(sinks)
        self.full_since: float | None = None
        self.instance = ""
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            self.db = _Connection(url)
        except psycopg.OperationalError as exc:
            raise psycopg.OperationalError(f"{self.path}: {exc}".strip()) from None
        try:
            self.migrate()
        except errors.DiskFull as exc:
            self.db.close()
            raise StorageFull(f"{self.path}: storage full, the schema cannot be created or "
                              "upgraded") from exc
        except BaseException:
            self.db.close()
            raise

    def url_for_log(self) -> str:
        return self.path

    def schema_version(self) -> int:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY "
                        "KEY, applied_at DOUBLE PRECISION NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        # Several instances may start at once: one migrates, the others wait, then find
        # nothing left to do.
        with self._transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            super().migrate()

    def _apply(self, number: int, script: str) -> None:
        self.db.executescript(script)
        self.db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                        (number, time.time()))

    def _legacy_columns(self) -> None:
        pass  # PostgreSQL stores began with numbered migrations

    @contextlib.contextmanager
    def _relaxed(self) -> Iterator[None]:
        """As in SQLite: a write made on its own whose loss on a crash of the database
        costs nothing (the journal row of a message not yet answered) commits without
        waiting for the WAL flush; the order's own commit, before its AA, flushes it."""
        if self.db.in_transaction:
            yield
            return
        with self._transaction():
            self.db.execute("SET LOCAL synchronous_commit = off")
            yield

    def lock_names(self, names: Iterable[str]) -> None:
        """Transaction-scoped advisory locks on these names (orders' keys and identifiers,
        patient IDs), taken in the sorted order the caller gives so that two instances
        never deadlock: a second message for the same order or patient waits until the
        first one's commit."""
        for name in names:
            self.db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def _write_items(self, writes: list[ItemWrite], journal_id: int | None) -> None:
        super()._write_items(writes, journal_id)
        if writes:
            # Delivered at commit, to every instance listening (this one skips its own).
            keys = "\n".join(w.item_key for w in writes)
            self.db.execute("SELECT pg_notify(?, ?)",
                            (CHANNEL, keys if len(keys.encode()) <= MAX_PAYLOAD else ""))

    def outbox_due(self, sink: str, limit: int = 100) -> list[OutboxRow]:
        """Claim due items for this instance: every pending row of an item, leased for
        OUTBOX_LEASE_S. An item another instance holds a live lease on, or is claiming at
        this moment (its advisory lock), is skipped: each change is delivered once."""
        now = time.time()
        me = self.instance
        with self._transaction():
            rows = self.db.execute(
                "UPDATE outbox SET lease_until = ?, leased_by = ? WHERE id IN ("
                # the pending rows of the first due items no other instance holds...
                "SELECT id FROM outbox WHERE sink = ? AND state = 'pending' AND "
                "(lease_until IS NULL OR lease_until < ? OR leased_by = ?) AND item_key IN ("
                "SELECT item_key FROM outbox WHERE sink = ? AND state = 'pending' "
                "GROUP BY item_key HAVING MAX(next_at) <= ? AND "
                "MAX(CASE WHEN leased_by = ? THEN 0 ELSE COALESCE(lease_until, 0) END) < ? "
                "ORDER BY MIN(id) LIMIT ?) "
                # ...not being claimed by another instance right now (its item lock, its
                # row locks)
                "AND pg_try_advisory_xact_lock(hashtext('outbox ' || sink || ' ' || item_key)) "
                "FOR UPDATE SKIP LOCKED) "
                "RETURNING id, item_key, attempts",
                (now + OUTBOX_LEASE_S, me, sink, now, me, sink, now, me, now, limit)).fetchall()
        by_item: dict[str, OutboxRow] = {}
        for r in sorted(rows, key=lambda r: r["id"]):
            row = by_item.setdefault(r["item_key"], OutboxRow(r["id"], sink, r["item_key"], 0))
            row.id = max(row.id, r["id"])
            row.attempts = max(row.attempts, r["attempts"])
        return list(by_item.values())

    def outbound_claim(self, row_id: int, seconds: float) -> bool:
        """Take a due row for `seconds` (the lease: a holder that dies gives it up then).
        Two instances claiming the same row at once: the one that locks it first takes it,
        the other skips it (SKIP LOCKED) or finds it claimed: each status is sent once."""
        now = time.time()
        cur = self.db.execute(
            "UPDATE outbound SET claimed_until = ? WHERE id = (SELECT id FROM outbound "
            "WHERE id = ? AND state = 'pending' AND claimed_until <= ? AND next_at <= ? "
            "FOR UPDATE SKIP LOCKED)", (now + seconds, row_id, now, now))
        return cur.rowcount == 1

    # Searches (the web console): PostgreSQL's spelling of sqlite.py's helpers.

    @staticmethod
    def _contains(column: str) -> str:
        return f"position(? IN {column}) > 0"  # text in text, bytes in bytea

    @staticmethod
    def _json_text(*path: str | int) -> str:
        return f"(dataset::jsonb #>> '{{{','.join(str(p) for p in path)}}}')"

    @staticmethod
    def _minute(column: str) -> str:
        return f"FLOOR({column} / 60)"  # CAST AS INTEGER would round, not truncate

    def outside_version(self) -> int:
        return 0  # other instances' changes come by listen(), not by polling

    def listen(self, changed: Callable[[list[StoredItem] | None], None]) -> None:
        """Call `changed` (on a thread of its own) with the items another instance
        committed, read on the listening connection (so that they do not wait behind this
        instance's own store calls), or with None when notifications may have been missed
        (the connection was lost): the caller then reads what changed lately."""
        own = self.db.pid
        self._listener = threading.Thread(target=self._listen, args=(own, changed),
                                          name="store-listen", daemon=True)
        self._listener.start()

    def _listen(self, own: int, changed: Callable[[list[StoredItem] | None], None]) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                     row_factory=_rows) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        changed(None)  # catch up on what came while we were away
                    first = False
                    while not self._stop.is_set():
                        # Collected first: the connection serves no query while it waits.
                        notes = list(conn.notifies(timeout=0.5, stop_after=1))
                        for note in notes:
                            if note.pid == own:
                                continue  # this instance's commit reached its views already
                            if not note.payload:
                                changed(None)  # too many keys for one notification
                                continue
                            rows = conn.execute("SELECT * FROM items WHERE item_key = ANY(%s)",
                                                (note.payload.split("\n"),)).fetchall()
                            changed([_item(r) for r in rows])
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("store: change notifications lost (%s); reconnecting",
                            type(exc).__name__)
                first = False
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=3)
        self.db.close()
