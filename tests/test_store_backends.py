"""The store on SQLite and PostgreSQL: migrations, and the rules that hold across instances.

"Two instances" here are two stores (each with its own connection and thread) and two
processors on one database, as two bridges would be; test_failover.py runs real processes.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bridge.mapping.loader import load_profiles
from bridge.processor import Processor
from bridge.store import (
    AsyncStore,
    ItemWrite,
    OrderLookup,
    SchemaTooNew,
    Stale,
    open_store,
    store_url,
)
from bridge.store.sqlite import migrations

from orders import orm

pytestmark = pytest.mark.backends


def two_instances(config) -> tuple[Processor, Processor]:
    profiles = load_profiles(config.mappings.dir)
    a = Processor(config, profiles, AsyncStore(open_store(store_url(config), ["orthanc"])))
    b = Processor(config, profiles, AsyncStore(open_store(store_url(config), ["orthanc"])))
    return a, b


def close(*processors: Processor) -> None:
    for p in processors:
        p.store.close()


def test_migrations_are_numbered_and_a_newer_schema_is_refused(config, backend) -> None:
    store = open_store(store_url(config))
    newest = migrations(store.backend)[-1][0]
    assert [n for n, _ in migrations(store.backend)] == list(range(1, newest + 1))
    assert store.schema_version() == newest
    store.close()
    store = open_store(store_url(config))  # a second start has nothing to apply
    assert store.schema_version() == newest
    store.db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                     (newest + 1, time.time()))
    store.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {newest + 1}"):
        open_store(store_url(config))


async def test_the_same_message_to_two_instances_at_once_is_applied_once(config) -> None:
    a, b = two_instances(config)
    try:
        for n in range(100):
            raw = orm(f"DUP{n}", order=f"D{n}").encode()
            first, second = await asyncio.gather(a.handle(raw, "a"), b.handle(raw, "b"))
            # One of them committed, the other found its row in `accepted` and answered
            # with the same ACK, byte for byte.
            assert (first.code, second.code) == ("AA", "AA")
            assert first.ack == second.ack
        db = a.store.store
        statuses = [e.status for e in db.journal_entries(limit=1000)]
        assert statuses.count("processed") == 100 and statuses.count("duplicate") == 100
        assert len(db.items()) == 100
    finally:
        close(a, b)


async def test_two_changes_of_one_order_at_once_never_mix(config) -> None:
    """Each instance plans from what it read; the store refuses a plan made on items that
    changed since (Stale) and the processor plans again: the item ends as one message
    made it, with that message's journal entry, never half of each."""
    a, b = two_instances(config)
    try:
        await a.handle(orm("M0", order="MIX").encode(), "a")
        for n in range(30):
            one = orm(f"MA{n}", order="MIX", control="XO", name=f"ALPHA^{n}",
                      description=f"alpha {n}").encode()
            two = orm(f"MB{n}", order="MIX", control="XO", name=f"BRAVO^{n}",
                      description=f"bravo {n}").encode()
            ra, rb = await asyncio.gather(a.handle(one, "a"), b.handle(two, "b"))
            assert (ra.code, rb.code) == ("AA", "AA")
            [item] = a.store.store.items_of_order("MIX^RIS")
            name = str(item.dataset["PatientName"])
            steps = item.dataset["ScheduledProcedureStepSequence"]
            description = steps[0]["ScheduledProcedureStepDescription"]
            which = ra if name.startswith("ALPHA") else rb
            word = "alpha" if which is ra else "bravo"
            assert name.endswith(f"^{n}") and description == f"{word} {n}"
            assert a.store.store.item(item.item_key).dataset == item.dataset
            row = a.store.store.db.execute("SELECT journal_id FROM items WHERE item_key = ?",
                                           (item.item_key,)).fetchone()
            assert row[0] == which.journal_id
    finally:
        close(a, b)


def test_a_plan_on_changed_items_is_refused(config) -> None:
    first, second = open_store(store_url(config)), open_store(store_url(config))
    try:
        lookup = OrderLookup("O^RIS")
        write = ItemWrite("O^RIS|1", "O^RIS", "SCHEDULED", True, {"PatientID": "1"})
        j1 = first.journal_received(b"one", "p")
        _, seen = first.prior_state("RIS", "C1", [lookup])
        j2 = second.journal_received(b"two", "p")
        second.commit_message(j2, {"control_id": "C2", "sender": "RIS"}, [write], "AA", b"a2",
                              orders=[lookup], seen={"O^RIS": []})
        with pytest.raises(Stale):
            first.commit_message(j1, {"control_id": "C1", "sender": "RIS"}, [write], "AA",
                                 b"a1", orders=[lookup], seen=seen)
        assert first.journal_entry(j1).status == "received"  # nothing of it was written
    finally:
        first.close()
        second.close()


async def test_run_journaled_commits_the_entry_before_its_call_and_answers_with_its_id(
        config) -> None:
    """AsyncStore.run_journaled: the message's journal entry is committed (another
    connection reads it) before its call runs; the call's result, or its error, comes back
    with the entry's id, and the entry of a failed call stays. Calls queued behind a busy
    thread are journaled together, then run (one group on SQLite)."""
    store = AsyncStore(open_store(store_url(config)))
    observer = open_store(store_url(config))
    seen: dict[str, bytes] = {}

    def call(journal_id: int, tag: str) -> str:
        entry = observer.journal_entry(journal_id)
        assert entry is not None, "the journal entry is not committed yet"
        seen[tag] = entry.raw
        if tag == "bad":
            raise ValueError("the processor refused the message")
        store.store.write_items([ItemWrite(f"I-{tag}", f"O-{tag}", "SCHEDULED", True, {})])
        return tag.upper()

    try:
        started, gate = threading.Event(), threading.Event()
        blocker = asyncio.ensure_future(store.run(lambda: started.set() or gate.wait(10)))
        await asyncio.to_thread(started.wait, 10)
        calls = [asyncio.ensure_future(store.run_journaled(f"raw {tag}".encode(), "peer",
                                                           call, tag))
                 for tag in ("a", "bad", "c")]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        a, bad, c = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert (a.value, a.error, c.value, c.error) == ("A", None, "C", None)
        assert bad.value is None and isinstance(bad.error, ValueError)
        assert seen == {"a": b"raw a", "bad": b"raw bad", "c": b"raw c"}
        assert len({a.journal_id, bad.journal_id, c.journal_id}) == 3
        assert observer.journal_entry(bad.journal_id).status == "received"  # kept
        kept = await store.run(store.store.items_by_keys, ["I-a", "I-bad", "I-c"])
        assert sorted(kept) == ["I-a", "I-c"]
    finally:
        store.close()
        observer.close()


def test_commit_planned_plans_on_the_stored_items_and_commits_or_writes_nothing(config
                                                                               ) -> None:
    """One call: the duplicate check, the orders' items handed to the plan, the commit. A
    duplicate returns the first ACK without planning; a plan that raises leaves nothing."""
    store = open_store(store_url(config))
    lookup = OrderLookup("O^RIS")
    header = {"control_id": "C1", "sender": "RIS"}
    write = ItemWrite("O^RIS|1", "O^RIS", "SCHEDULED", True, {"PatientID": "1"})
    seen: list[dict] = []

    def plan(existing):
        seen.append(existing)
        return [write], ["a note"], [("O^RIS", "ORC-2", "O")]

    def refuse(existing):
        raise ValueError("the processor refused the message")

    try:
        first = store.journal_received(b"one", "p")
        assert store.commit_planned(first, header, [lookup], plan, b"ack1") == (None, [write])
        assert seen == [{"O^RIS": []}]
        entry = store.journal_entry(first)
        assert (entry.status, entry.ack, entry.error) == ("processed", b"ack1", "a note")
        assert store.find_order(OrderLookup("X", identifiers=[("ORC-2", "O")]))
        again = store.journal_received(b"one again", "p")
        assert store.commit_planned(again, header, [lookup], plan, b"ack2") == \
            (("AA", b"ack1"), [])
        assert len(seen) == 1  # a duplicate is not planned
        other = store.journal_received(b"two", "p")
        with pytest.raises(ValueError):
            store.commit_planned(other, {"control_id": "C2", "sender": "RIS"},
                                 [OrderLookup("P^RIS")], refuse, b"ack3")
        assert store.journal_entry(other).status == "received"
        assert store.previous_ack("RIS", "C2") is None
    finally:
        store.close()


def adt(event: str, control_id: str, pid: str, name: str, mrg: str | None = None) -> bytes:
    segments = [f"MSH|^~\\&|ADT|HOSP|BRIDGE|IMG|20240101||ADT^{event}|{control_id}|P|2.5",
                f"EVN|{event}|20240101", f"PID|||{pid}^^^HOSP||{name}"]
    if mrg is not None:
        segments.append(f"MRG|{mrg}^^^HOSP")
    return ("\r".join(segments) + "\r").encode()


def test_a_patient_plan_on_changed_items_is_refused(config) -> None:
    """An ADT message's plan rests on its patients' items as read: another instance's
    write to them in between makes the commit refuse it (Stale), as for orders."""
    first, second = open_store(store_url(config)), open_store(store_url(config))
    try:
        write = ItemWrite("O^RIS|1", "O^RIS", "SCHEDULED", True, {"PatientID": "P1"})
        second.write_items([write])
        j1 = first.journal_received(b"one", "p")
        patients = first.patients_state(["P1", "P2"])
        assert [i.item_key for i in patients["P1"]] == ["O^RIS|1"] and patients["P2"] == []
        second.write_items([ItemWrite("O^RIS|1", "O^RIS", "SCHEDULED", True,
                                      {"PatientID": "P1", "PatientName": "OTHER"})])
        merged = ItemWrite("O^RIS|1", "O^RIS", "SCHEDULED", True, {"PatientID": "P2"})
        with pytest.raises(Stale):
            first.commit_message(j1, {"control_id": "C1", "sender": "ADT"}, [merged], "AA",
                                 b"a1", patients=patients)
        assert first.journal_entry(j1).status == "received"  # nothing of it was written
        assert first.item("O^RIS|1").dataset["PatientName"] == "OTHER"
        first.commit_message(j1, {"control_id": "C1", "sender": "ADT"}, [merged], "AA",
                             b"a1", patients=first.patients_state(["P1", "P2"]))
        assert second.item("O^RIS|1").patient_id == "P2"
    finally:
        first.close()
        second.close()


async def test_a_merge_and_an_update_of_one_patient_at_once_never_mix(config) -> None:
    """A merge (A40, OLD into NEW) on one instance and an update of OLD (A08) on the other,
    at the same moment: whichever commits first, the items end under NEW with the merge's
    demographics. Planned on items read before the merge committed, the update would move
    them back to OLD."""
    a, b = two_instances(config)
    try:
        for n in range(25):
            assert (await a.handle(orm(f"O{n}", order=f"PAT{n}", patient_id=f"OLD{n}")
                                   .encode(), "a")).code == "AA"
            merge = adt("A40", f"M{n}", f"NEW{n}", f"MERGED^{n}", mrg=f"OLD{n}")
            update = adt("A08", f"U{n}", f"OLD{n}", f"UPDATED^{n}")
            ra, rb = await asyncio.gather(a.handle(merge, "a"), b.handle(update, "b"))
            assert (ra.code, rb.code) == ("AA", "AA")
            [item] = b.store.store.items_of_order(f"PAT{n}^RIS")
            assert item.patient_id == f"NEW{n}"
            assert item.dataset["PatientID"] == f"NEW{n}"
            assert str(item.dataset["PatientName"]) == f"MERGED^{n}"
    finally:
        close(a, b)


@pytest.mark.postgres_only("advisory locks: PostgreSQL only")
async def test_an_update_waits_for_another_instances_commit_on_the_same_patient(
        config, backend) -> None:
    """PostgreSQL: the ADT commit takes the patient's advisory lock, waits while another
    instance holds it, then finds the items changed (Stale), reads again and applies its
    update on top of the other's: both changes stay."""
    import psycopg

    a, _ = two_instances(config)
    try:
        await a.handle(orm("O1", order="WAIT", patient_id="PW").encode(), "a")
        with psycopg.connect(store_url(config)) as other:  # another instance, mid-commit
            other.execute("SELECT pg_advisory_xact_lock(hashtext('patient=PW'))")
            other.execute("UPDATE items SET dataset = jsonb_set(dataset::jsonb, "
                          "'{PatientBirthDate}', '\"19991231\"')::text, "
                          "updated_at = updated_at + 1 WHERE patient_id = 'PW'")
            task = asyncio.create_task(a.handle(adt("A08", "U1", "PW", "NEW^NAME"), "a"))
            await asyncio.sleep(0.5)
            assert not task.done()  # waiting for the lock, not writing over the other
        outcome = await asyncio.wait_for(task, 10)  # the other committed on leaving
        assert outcome.code == "AA"
        [item] = a.store.store.items_of_order("WAIT^RIS")
        assert str(item.dataset["PatientName"]) == "NEW^NAME"
        assert item.dataset["PatientBirthDate"] == "19991231"
    finally:
        close(a)


def test_housekeeping_lease_is_held_by_one_instance(config) -> None:
    a, b = open_store(store_url(config)), open_store(store_url(config))
    a.instance, b.instance = "a", "b"
    try:
        assert a.take_lease("housekeeping", 0.3) is True
        assert b.take_lease("housekeeping", 0.3) is False
        assert a.take_lease("housekeeping", 0.3) is True  # the holder renews
        time.sleep(0.4)  # the holder died: its lease runs out
        assert b.take_lease("housekeeping", 0.3) is True
        assert a.take_lease("housekeeping", 0.3) is False
    finally:
        a.close()
        b.close()


def test_sink_states_of_a_batch_and_its_deliveries_in_one_commit(config) -> None:
    store = open_store(store_url(config), ["orthanc"])
    try:
        keys = [f"K{n}" for n in range(600)]  # past SQLite's 500 bound parameters per query
        assert store.sink_states("orthanc", keys) == {}
        store.sink_delivered_many("orthanc", [(k, f"R{k}") for k in keys[:550]])
        store.sink_removed("orthanc", "K3", "RK3")
        states = store.sink_states("orthanc", keys)
        assert sorted(states) == sorted(keys[:550])
        assert (states["K549"].remote_id, states["K549"].delivered) == ("RK549", True)
        assert (states["K3"].delivered, states["K3"].removed_at is not None) == (False, True)
        store.sink_delivered_many("orthanc", [("K7", "RK7")], delivered=False)
        assert store.sink_state("orthanc", "K7").delivered is False
        assert store.sink_states("folder", keys) == {}
    finally:
        store.close()


# --- PostgreSQL only: what several instances need beyond the shared tables ---------------

@pytest.mark.postgres_only("one SQLite store has one outbox consumer per sink")
def test_outbox_rows_are_claimed_by_one_instance(config, backend) -> None:
    a, b = open_store(store_url(config), ["orthanc"]), open_store(store_url(config), ["orthanc"])
    a.instance, b.instance = "a", "b"
    try:
        a.write_items([ItemWrite(f"K{n}", f"O{n}", "SCHEDULED", True, {}) for n in range(60)])
        got: dict[str, list[str]] = {}

        def claim(store, name: str) -> None:
            got[name] = [r.item_key for r in store.outbox_due("orthanc", 200)]

        threads = [threading.Thread(target=claim, args=(s, s.instance)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not set(got["a"]) & set(got["b"])
        assert sorted(got["a"] + got["b"]) == sorted(f"K{n}" for n in range(60))
        # While the lease holds, an item is offered to its holder only (as SQLite offers a
        # pending row until it is done)...
        assert {r.item_key for r in a.outbox_due("orthanc", 200)} == set(got["a"])
        assert {r.item_key for r in b.outbox_due("orthanc", 200)} == set(got["b"])
        # ...and a new change of a claimed item waits for its holder, never goes to both.
        holder, other = (a, b) if got["a"] else (b, a)
        key = got[holder.instance][0]
        other.write_items([ItemWrite(key, "O", "SCHEDULED", False, {})])
        assert key not in [r.item_key for r in other.outbox_due("orthanc")]
        # Its holder died: the lease runs out and the other instance takes the item over.
        holder.db.execute("UPDATE outbox SET lease_until = 0 WHERE leased_by = ?",
                          (holder.instance,))
        assert key in [r.item_key for r in other.outbox_due("orthanc", 200)]
    finally:
        a.close()
        b.close()


@pytest.mark.postgres_only("SQLite: outside changes are found by data_version (test_operations)")
def test_another_instances_commit_is_notified_within_a_second(config, backend) -> None:
    a, b = open_store(store_url(config)), open_store(store_url(config))
    heard: list[list[str] | None] = []
    arrived = threading.Event()

    def changed(items) -> None:
        heard.append(None if items is None else sorted(i.item_key for i in items))
        arrived.set()

    try:
        a.listen(changed)
        time.sleep(0.3)  # LISTEN issued
        a.write_items([ItemWrite("OWN", "O", "SCHEDULED", True, {})])  # its own: not heard
        started = time.monotonic()
        b.write_items([ItemWrite("K1", "O1", "SCHEDULED", True, {}),
                       ItemWrite("K2", "O2", "SCHEDULED", True, {})])
        assert arrived.wait(1.0), "no notification within 1 s"
        assert time.monotonic() - started < 1.0
        assert heard == [["K1", "K2"]]
    finally:
        a.close()
        b.close()


@pytest.mark.postgres_only("a SQLite file has no connection to lose (test_storage_full: disk full)")
async def test_a_lost_database_connection_answers_ae_then_recovers(config, backend) -> None:
    import psycopg
    from conftest import PG_URL

    proc = Processor(config, load_profiles(config.mappings.dir),
                     AsyncStore(open_store(store_url(config), ["folder"])))
    try:
        assert (await proc.handle(orm("UP1", order="U1").encode(), "t")).code == "AA"
        pid = proc.store.store.db.pid
        with psycopg.connect(PG_URL, autocommit=True) as admin:  # the database restarts
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        down = await proc.handle(orm("UP2", order="U2").encode(), "t")
        assert down.code == "AE" and "store unavailable" in down.error
        # The next message opens a new connection: all works again, nothing to do by hand.
        again = await proc.handle(orm("UP2", order="U2").encode(), "t")
        assert again.code == "AA"
        assert [i.order_key for i in proc.store.store.items()] == ["U1^RIS", "U2^RIS"]
    finally:
        proc.store.close()


def test_mpps_instances_and_their_items_on_both_backends(config) -> None:
    store = open_store(store_url(config), ["folder"])
    try:
        store.write_items([ItemWrite(k, "O^RIS", "SCHEDULED", True, {"PatientID": "1"})
                           for k in ("O^RIS|2", "O^RIS|1")])
        writes = store.mpps_create("1.2.3", "CT1", ["O^RIS|2", "O^RIS|1"], {"a": 1},
                                   "STARTED", True)
        assert [w.status for w in writes] == ["STARTED", "STARTED"]
        assert store.mpps_create("1.2.3", "CT1", ["O^RIS|1"], {}, "STARTED", True) is None
        mpps = store.mpps("1.2.3")
        assert mpps.item_keys == ["O^RIS|2", "O^RIS|1"]  # in the order N-CREATE named them
        assert store.mpps_of_item("O^RIS|1") == ["1.2.3"]
        mpps, writes = store.mpps_set("1.2.3", "COMPLETED", {"b": 2}, ("COMPLETED", False, True))
        assert mpps.attributes == {"a": 1, "b": 2} and mpps.state == "COMPLETED"
        assert {(i.status, i.visible, i.final) for i in store.items()} == \
            {("COMPLETED", False, True)}
    finally:
        store.close()


@pytest.mark.postgres_only("one bridge per SQLite file")
async def test_an_order_committed_on_one_bridge_is_in_the_others_index_within_a_second(
        config, backend, tmp_path) -> None:
    """Two running bridges (in this process) on one database: a message AA'd by A is in
    B's SCP index within a second, and queued for B's own .wl folder."""
    from bridge.app import Bridge

    a, b = (Bridge(_instance_config(tmp_path, config.store.url, n)) for n in ("a", "b"))
    await a.start()
    await b.start()
    try:
        assert b.sinks[0].name == "folder@b"
        outcome = await a.processor.handle(orm("X1", order="XI").encode(), "t")
        assert outcome.code == "AA"
        key = outcome.writes[0].item_key
        started = time.monotonic()
        while b.scp.index.get(key) is None and time.monotonic() - started < 1.0:
            await asyncio.sleep(0.01)
        assert b.scp.index.get(key) is not None, "not in the other bridge's index within 1 s"
        health = await b.health()
        assert (health["instance"], health["ready"], health["database_reachable"]) == \
            ("b", True, True)
        assert "bridge_test:***@" in health["database"]  # no password in /healthz
        folder = tmp_path / "b" / "worklists"

        async def written() -> bool:
            for _ in range(200):
                if list(folder.glob("*.wl")):
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await written(), "B's own folder did not get A's order"
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.postgres_only("one bridge per SQLite file")
async def test_a_late_catch_up_read_never_puts_an_older_item_into_the_index(
        config, backend, tmp_path) -> None:
    """B's catch-up read (after a lost notification connection) read an order before A
    cancelled it, and its result reaches B's index after the cancellation's notification:
    the index keeps the newer state (the item's version), the order stays gone."""
    from bridge.app import Bridge

    a, b = (Bridge(_instance_config(tmp_path, config.store.url, n)) for n in ("a", "b"))
    await a.start()
    await b.start()

    async def in_b(key: str, present: bool) -> bool:
        for _ in range(100):
            if (b.scp.index.get(key) is not None) == present:
                return True
            await asyncio.sleep(0.02)
        return False

    try:
        new = await a.processor.handle(orm("V1", order="VER").encode(), "t")
        [write] = new.writes
        assert (new.code, write.version) == ("AA", 1)
        assert await in_b(write.item_key, True)
        late = await b.store.run(b.store.store.items_changed_since, 0.0)  # read now...
        cancel = await a.processor.handle(orm("V2", order="VER", control="CA",
                                              status="CA").encode(), "t")
        assert (cancel.code, cancel.writes[0].version) == ("AA", 2)
        assert await in_b(write.item_key, False)
        b._apply_outside(late)  # ...arriving after the newer notification
        assert b.scp.index.get(write.item_key) is None
        b._apply_outside(await b.store.run(b.store.store.items_changed_since, 0.0))
        assert b.scp.index.get(write.item_key) is None
    finally:
        await a.stop()
        await b.stop()


def test_store_url_picks_the_backend_and_defaults_to_the_sqlite_file(tmp_path) -> None:
    from conftest import ROOT

    from bridge.config import ConfigError, load_config

    config = load_config(ROOT / "config.yaml", environ={"BRIDGE_DATA_DIR": str(tmp_path)})
    assert store_url(config) == f"sqlite:///{tmp_path / 'bridge.sqlite'}"
    other = tmp_path / "elsewhere" / "x.sqlite"
    config = load_config(ROOT / "config.yaml", environ={
        "BRIDGE_DATA_DIR": str(tmp_path), "BRIDGE_STORE__URL": f"sqlite:///{other}"})
    store = open_store(store_url(config))
    try:
        assert store.backend == "sqlite" and store.path == other and other.exists()
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"store\.url"):
        load_config(ROOT / "config.yaml", environ={"BRIDGE_STORE__URL": "mysql://x/y"})


def test_a_starting_instance_marks_only_its_own_unanswered_messages(config) -> None:
    a, b = open_store(store_url(config)), open_store(store_url(config))
    a.instance, b.instance = "a", "b"
    try:
        mine = a.journal_received(b"a's", "p")
        theirs = b.journal_received(b"b's, being processed", "p")
        a.recover()  # a restarts while b works
        status = {e.id: e.status for e in a.journal_entries()}
        if a.shared:
            assert status == {mine: "interrupted", theirs: "received"}
        else:  # one machine: one instance, everything unanswered was its own
            assert status == {mine: "interrupted", theirs: "interrupted"}
    finally:
        a.close()
        b.close()


def _instance_config(tmp_path, url: str, name: str):
    """One in-process bridge of a cluster on the store at `url`: its own folder, free ports."""
    from conftest import ROOT

    from bridge.config import load_config

    env = {"BRIDGE_DATA_DIR": str(tmp_path / name), "BRIDGE_MLLP__PORT": "0",
           "BRIDGE_SCP__PORT": "0", "BRIDGE_METRICS__ENABLED": "false",
           "BRIDGE_MAPPINGS__WATCH_SECONDS": "0", "BRIDGE_STORE__URL": url,
           "BRIDGE_STORE__INSTANCE": name}
    return load_config(ROOT / "config.yaml", environ=env)
