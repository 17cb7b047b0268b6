"""The RIS outbound outbox, users and the web console's queries on SQLite and PostgreSQL.

On a shared database these live with the orders: every instance sees the same users and
item history, and each status message is sent by one instance (a claim that another
instance's claim of the same row cannot also win).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from ris_sim import RisSimulator

from bridge.config import load_config
from bridge.mapping.loader import load_profiles
from bridge.outbound.profile import load_outbound
from bridge.outbound.worker import OutboundWorker
from bridge.processor import Processor
from bridge.store import (
    AsyncStore,
    ItemFilter,
    ItemWrite,
    JournalFilter,
    Store,
    open_store,
    store_url,
)

from orders import orm
from peers import free_port

pytestmark = pytest.mark.backends

ROOT = Path(__file__).resolve().parent.parent
MPPS_START = {"00400241": {"vr": "AE", "Value": ["CT_ROOM_1"]},
              "00080060": {"vr": "CS", "Value": ["CT"]},
              "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]}}


def _store(config) -> Store:
    store = open_store(store_url(config))
    store.outbound_destinations = ("ris",)
    return store


def _item(store: Store, n: int) -> str:
    key = f"K{n}"
    store.write_items([ItemWrite(key, f"O{n}", "SCHEDULED", True, {
        "PatientID": "P1", "AccessionNumber": f"ACC{n}",
        "ScheduledProcedureStepSequence": [{"Modality": "CT"}]})])
    return key


# --- the RIS outbound outbox ----------------------------------------------------------------

def test_an_outbound_row_is_queued_claimed_and_sent_once(config, backend) -> None:
    store = _store(config)
    try:
        key = _item(store, 1)
        store.mpps_create("1.2.3.1", "CT01", [key], MPPS_START, "STARTED", False)
        store.mpps_set("1.2.3.1", "COMPLETED", {}, None)
        due = store.outbound_due("ris")
        # The completion waits behind the order's start: in order per order.
        assert [(r.event, r.order_key, r.item_keys) for r in due] == \
            [("in_progress", "O1", [key])]
        first = due[0].id
        assert store.outbound_claim(first, 60)
        assert not store.outbound_claim(first, 60)  # held: a second sender leaves it
        assert store.outbound_due("ris") == []
        store.outbound_built(first, b"MSH|^~\\&|BRIDGE\r", "WB1.A")
        store.outbound_sent(first, "AA")
        sent = store.outbound_entry(first)
        assert sent is not None and sent.state == "sent" and sent.ack_code == "AA"
        assert sent.message == b"MSH|^~\\&|BRIDGE\r" and sent.control_id == "WB1.A"
        assert not store.outbound_claim(first, 60)  # a sent row is never claimed again
        [completed] = store.outbound_due("ris")
        assert completed.event == "completed" and store.outbound_depth("ris") == 1
        # RIS down: retried later, not due now; refused: dead until replayed.
        assert store.outbound_claim(completed.id, 60)
        store.outbound_retry(completed.id, "connection refused", 60)
        assert store.outbound_due("ris") == []
        assert not store.outbound_claim(completed.id, 60)  # not due yet
        store.outbound_dead(completed.id, "AE", "unknown order")
        assert store.outbound_replay([completed.id, first]) == [completed.id]
        assert [r.id for r in store.outbound_due("ris")] == [completed.id]
        assert store.purge_outbound(time.time() + 1) == 1  # the sent one
        assert store.outbound_entry(first) is None
    finally:
        store.close()


def test_two_claimers_never_take_the_same_row(config, backend) -> None:
    a, b = _store(config), _store(config)
    try:
        for n in range(30):
            a.mpps_create(f"1.2.3.{n}", "CT01", [_item(a, n)], MPPS_START, "STARTED", False)
        ids = [r.id for r in a.outbound_due("ris", 100)]
        assert len(ids) == 30 and [r.id for r in b.outbound_due("ris", 100)] == ids
        taken: dict[str, list[int]] = {"a": [], "b": []}
        start = threading.Barrier(2)

        def claim(name: str, store: Store, order: list[int]) -> None:
            start.wait()
            taken[name] = [i for i in order if store.outbound_claim(i, 60)]

        threads = [threading.Thread(target=claim, args=("a", a, ids)),
                   threading.Thread(target=claim, args=("b", b, ids[::-1]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not set(taken["a"]) & set(taken["b"])
        assert sorted(taken["a"] + taken["b"]) == ids
    finally:
        a.close()
        b.close()


def test_a_claim_expires_with_its_lease(config, backend) -> None:
    a, b = _store(config), _store(config)
    try:
        a.mpps_create("1.2.3.1", "CT01", [_item(a, 1)], MPPS_START, "STARTED", False)
        [row] = a.outbound_due("ris")
        assert a.outbound_claim(row.id, 0.3)
        assert not b.outbound_claim(row.id, 60) and b.outbound_due("ris") == []
        time.sleep(0.4)  # the holder died: its lease runs out
        assert [r.id for r in b.outbound_due("ris")] == [row.id]
        assert b.outbound_claim(row.id, 60)
    finally:
        a.close()
        b.close()


@pytest.mark.postgres_only("SQLite: one writer at a time, no row locks")
def test_a_row_another_instance_is_claiming_is_skipped_not_waited_for(config,
                                                                        backend) -> None:
    a, b = _store(config), _store(config)
    try:
        a.mpps_create("1.2.3.1", "CT01", [_item(a, 1)], MPPS_START, "STARTED", False)
        [row] = a.outbound_due("ris")
        b.db.execute("BEGIN")
        b.db.execute("SELECT id FROM outbound WHERE id = ? FOR UPDATE", (row.id,))
        began = time.monotonic()
        assert not a.outbound_claim(row.id, 60)  # SKIP LOCKED: no wait, no double claim
        assert time.monotonic() - began < 2
        b.db.execute("ROLLBACK")
        assert a.outbound_claim(row.id, 60)
    finally:
        a.close()
        b.close()


async def test_two_workers_on_one_database_send_each_status_once(config, tmp_path) -> None:
    port = free_port()
    ris_config = load_config(ROOT / "config.yaml", environ={
        "BRIDGE_DATA_DIR": str(tmp_path / "data"), "BRIDGE_RIS__ENABLED": "true",
        "BRIDGE_RIS__PORT": str(port), "BRIDGE_RIS__MIN_BACKOFF": "0.05",
        "BRIDGE_RIS__MAX_BACKOFF": "0.2", "BRIDGE_RIS__ACK_TIMEOUT": "2"}).ris
    profile = load_outbound(ROOT / "mappings" / "outbound" / "outbound-orm-status.yaml")
    stores = [AsyncStore(_store(config)), AsyncStore(_store(config))]
    proc = Processor(config, load_profiles(config.mappings.dir), stores[0])
    ris = RisSimulator(port)
    ris.start()
    workers = [OutboundWorker(ris_config, profile, s, poll_interval=0.05) for s in stores]
    try:
        db = stores[0].store
        for n in range(8):
            order = f"ORD{n}"
            outcome = await proc.handle(orm(f"M{n}", order=order, accession=f"A{n}").encode(),
                                        "test:1")
            assert outcome.code == "AA", outcome.ack
            keys = [i.item_key for i in db.items() if i.order_key.startswith(order)]
            uid = f"1.2.3.{n}"
            db.mpps_create(uid, "CT01", keys, MPPS_START, "STARTED", False)
            db.mpps_set(uid, "COMPLETED", {}, None)
        for w in workers:
            w.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while db.outbound_depth("ris") > 0:
            assert loop.time() < deadline, "not everything was sent"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time for a wrong second send
        messages = ris.messages()
        assert len(messages) == 16 == len({str(m.segment("MSH")[10]) for m in messages})
        events = [(str(m.segment("ORC")[2]).split("^")[0], str(m.segment("ORC")[5]))
                  for m in messages]
        for n in range(8):  # per order: started, then completed
            assert [s for o, s in events if o == f"ORD{n}"] == ["IP", "CM"]
    finally:
        for w in workers:
            await w.stop()
        ris.stop()
        for s in stores:
            s.close()


# --- users, item history, the console's searches ----------------------------------------------

def test_users_are_shared_by_every_instance(config, backend) -> None:
    a, b = _store(config), _store(config)
    try:
        a.user_put("alice", "viewer", "$argon2id$one")
        a.user_put("bob", "admin", "$argon2id$two")
        alice = b.user("alice")
        assert alice is not None and (alice.role, alice.password_hash) == \
            ("viewer", "$argon2id$one")
        b.user_put("alice", "operator", "$argon2id$three")  # changed on the other instance
        alice = a.user("alice")
        assert alice is not None and (alice.role, alice.password_hash) == \
            ("operator", "$argon2id$three")
        assert [u.name for u in a.users()] == ["alice", "bob"]
        assert b.user_delete("bob") and not b.user_delete("bob")
        assert a.user("bob") is None and b.user("nobody") is None
    finally:
        a.close()
        b.close()


async def test_item_history_and_searches(processor, backend) -> None:
    store = processor.store.store
    first = await processor.handle(orm("H1", patient_id="P77", accession="ACC77").encode(),
                                   "test:1")
    second = await processor.handle(orm("H2", patient_id="P77", accession="ACC77",
                                        control="CA", status="CA").encode(), "test:1")
    assert (first.code, second.code) == ("AA", "AA")
    [item] = store.items()
    history = store.item_history(item.item_key)
    # Written by the trigger (a plpgsql function on PostgreSQL), with the message of each.
    assert [(h["status"], h["visible"], h["journal_id"]) for h in history] == \
        [("SCHEDULED", True, first.journal_id), ("CANCELED", False, second.journal_id)]
    assert store.items_of_journal(first.journal_id) == [item.item_key]
    # Item changes made by no message are recorded without one.
    store.write_items([ItemWrite(item.item_key, item.order_key, "DISCONTINUED", False,
                                 item.dataset)])
    assert store.item_history(item.item_key)[-1]["journal_id"] is None

    def journal(**f) -> int:
        return store.journal_search(JournalFilter(**f))[1]

    assert journal(patient_id="P77") == 2 and journal(patient_id="P78") == 0
    assert journal(control_id="H1") == 1 and journal(text="ACC77") == 2
    assert journal(accession="ACC99") == 0
    entries, total = store.journal_search(JournalFilter(), limit=1)
    assert total == 2 and [e.id for e in entries] == [second.journal_id]

    def items(**f) -> int:
        return store.items_search(ItemFilter(**f))[1]

    assert items(modality="CT") == 1 and items(modality="MR") == 0
    assert items(accession="ACC77") == 1 and items(accession="ACC7") == 0
    assert items(text="DOE^JANE") == 1 and items(text="ROE^JOHN") == 0
    assert items(date_from="20240115", date_to="20240115") == 1
    assert items(date_to="20240114") == 0 and items(status="discontinued") == 1


def test_user_and_outbound_commands_use_the_configured_database(config, backend,
                                                                tmp_path) -> None:
    """`user add` and `outbound list` on the command line work on the store of
    `store.url` (the shared database), not on a SQLite file of their own."""
    import subprocess
    import sys

    from peers import bridge_env

    env = bridge_env(BRIDGE_DATA_DIR=str(config.data_dir))
    if config.store.url:
        env["BRIDGE_STORE__URL"] = config.store.url

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bridge", *args, "--config",
                               str(ROOT / "config.yaml")], input=stdin, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path, env=env)

    store = _store(config)
    try:
        store.mpps_create("1.2.3.1", "CT01", [_item(store, 1)], MPPS_START, "STARTED", False)
        added = cli("user", "add", "alice", "--role", "admin", "--password-stdin",
                    stdin="correct horse\n")
        assert added.returncode == 0, added.stderr
        alice = store.user("alice")
        assert alice is not None and alice.role == "admin"
        listed = cli("outbound", "list")
        assert listed.returncode == 0, listed.stderr
        assert "in_progress" in listed.stdout and "O1" in listed.stdout
    finally:
        store.close()


def test_messages_per_minute_round_down(config, backend) -> None:
    store = _store(config)
    try:
        # 50 s into minute 1000: CAST(... AS INTEGER) rounds to 1001 on PostgreSQL.
        for at, code in ((60_000 + 50.0, "AA"), (60_000 + 10.0, "AA"), (60_061.0, None)):
            store.db.execute("INSERT INTO journal (received_at, peer, raw, ack_code) "
                             "VALUES (?, ?, ?, ?)", (at, "t", b"x", code))
        assert store.journal_per_minute(60_000) == [(1000, "AA", 2), (1001, "-", 1)]
    finally:
        store.close()


def test_outbox_summary(config, backend) -> None:
    store = open_store(store_url(config), ["folder", "orthanc"])
    try:
        _item(store, 1)
        _item(store, 1)  # a second change of the same item: still one item waiting
        _item(store, 2)
        store.outbox_retry("orthanc", "K2", "HTTP 500", 0, dead=True)
        summary = store.outbox_summary()
        assert summary["folder"] == {"depth": 2, "dead": 0, "last_error": None}
        assert summary["orthanc"] == {"depth": 1, "dead": 1, "last_error": "HTTP 500"}
    finally:
        store.close()


# --- /healthz on the HTTP server ----------------------------------------------------------------

class DatabaseLink:
    """A TCP forwarder to PostgreSQL on a thread of its own (the store connects from its
    own thread, some of it while the test's event loop is busy): `cut` drops every
    connection and refuses new ones, as a database going away does; `restore` accepts
    again."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.restore()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def restore(self) -> None:
        async def listen() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._call(listen())

    def cut(self) -> None:
        async def cut() -> None:
            assert self.server is not None
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()
        self._call(cut())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.postgres_only("a SQLite file does not go away (test_storage_full: a full disk)")
async def test_healthz_is_503_while_the_database_is_away(config, backend, tmp_path) -> None:
    from urllib.parse import urlsplit, urlunsplit

    import httpx

    from bridge.app import Bridge

    url = urlsplit(config.store.url)
    link = DatabaseLink(url.hostname or "127.0.0.1", url.port or 5432)
    netloc = f"{url.username}:{url.password}@127.0.0.1:{link.port}"
    env = {"BRIDGE_DATA_DIR": str(tmp_path / "h1"), "BRIDGE_MLLP__PORT": "0",
           "BRIDGE_SCP__PORT": "0", "BRIDGE_HTTP__PORT": "0",
           "BRIDGE_MAPPINGS__WATCH_SECONDS": "0", "BRIDGE_STORE__INSTANCE": "h1",
           "BRIDGE_STORE__URL": urlunsplit(url._replace(netloc=netloc))}
    bridge = Bridge(load_config(ROOT / "config.yaml", environ=env))
    await bridge.start()
    try:
        assert bridge.http_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.http_port}",
                                     timeout=20) as http:
            up = await http.get("/healthz")
            assert up.status_code == 200, up.text
            assert up.json()["status"] == "ok" and up.json()["ready"] is True
            link.cut()
            down = await http.get("/healthz")
            assert down.status_code == 503, down.text
            body = down.json()
            assert (body["status"], body["ready"], body["database_reachable"],
                    body["instance"]) == ("not ready", False, False, "h1")
            assert "bridge_test:***@127.0.0.1" in body["database"]  # no password
            link.restore()  # the database is back: ready again, nothing to do by hand
            again = await http.get("/healthz")
            assert again.status_code == 200 and again.json()["ready"] is True
    finally:
        await bridge.stop()
        link.close()
