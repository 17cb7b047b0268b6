"""The Orthanc sink against the /worklists test double, with a real store and outbox."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bridge.config import ConfigError, OrthancSinkConfig, load_config
from bridge.outbox import OutboxWorker
from bridge.sinks import SinkUnavailable
from bridge.sinks.orthanc import OrthancError, OrthancSink
from bridge.store import AsyncStore, ItemWrite, Store

from orthanc_double import OrthancDouble
from peers import missing_peer

ITEM = {
    "PatientID": "PID-46",
    "PatientName": "Müller^Hans",
    "AccessionNumber": "ACC-46",
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.46",
    "SpecificCharacterSet": "ISO_IR 100",  # what MSH-18 8859/1 gives
    "OtherPatientIDs": "X1\\X2",
    "RequestedProcedureID": "RP-46",
    "ScheduledProcedureStepSequence": [{
        "Modality": "CT", "ScheduledStationAETitle": "CTSCANNER1",
        "ScheduledProcedureStepStartDate": "20251015",
        "ScheduledProcedureStepStartTime": "101500", "ScheduledProcedureStepID": "SPS-46"}],
}
KEY = "PLC-46^RIS|RP-46|SPS-46"


@pytest.fixture
def orthanc() -> Iterator[OrthancDouble]:
    with OrthancDouble() as double:
        yield double


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(Store(tmp_path / "bridge.sqlite", ["orthanc"]))
    yield s
    s.close()


def make_sink(orthanc: OrthancDouble, store: AsyncStore, **cfg: object) -> OrthancSink:
    """The sink as the bridge runs it: its puts sent by its delivery process."""
    settings = {"enabled": True, "url": orthanc.url, "timeout": 1.0, **cfg}
    return OrthancSink(OrthancSinkConfig.model_validate(settings), store)


async def commit(store: AsyncStore, key: str, dataset: dict, visible: bool = True) -> None:
    db = store.store
    journal_id = await store.run(db.journal_received, b"MSH|test", "test")
    write = ItemWrite(key, key.split("|")[0], "SCHEDULED" if visible else "CANCELED",
                      visible, dataset)
    await store.run(db.commit_message, journal_id, {}, [write], "AA", b"ACK")


async def drain(worker: OutboxWorker, timeout: float = 10.0) -> None:
    """Run the worker until nothing is pending for its sink."""
    db = worker.store.store
    deadline = time.monotonic() + timeout
    while await worker.store.run(db.outbox_depth, worker.sink.name):
        assert time.monotonic() < deadline, "outbox not drained in time"
        if not await worker.deliver_due():
            await asyncio.sleep(0.02)


# --- the double answers as the recorded real API (../shared/orthanc-worklists-api/) ------


def test_double_follows_the_recordings(orthanc: OrthancDouble) -> None:
    c = httpx.Client(base_url=orthanc.url)
    # 02: create answers a new ID and its path.
    r = c.post("/worklists/create", content=b'{"Tags": {"PatientID": "PID-45", "Schedul'
               b'edProcedureStepSequence": [{"Modality": "US", "ScheduledProcedureStepStart'
               b'Date": "20251014"}]}}')
    assert r.status_code == 200
    new_id = r.json()["ID"]
    assert r.json() == {"ID": new_id, "Path": f"/worklists/{new_id}"}
    # 03: the item has SpecificCharacterSet ISO_IR 192 and a made-up StudyInstanceUID.
    tags = c.get(f"/worklists/{new_id}").json()["Tags"]
    assert tags["SpecificCharacterSet"] == "ISO_IR 192"
    assert tags["StudyInstanceUID"].startswith("1.2.276.0.7230010.3.1.2.0.")
    short = c.get(f"/worklists/{new_id}?format=Short").json()["Tags"]
    assert short["0010,0020"] == "PID-45" and short["0040,0100"][0]["0008,0060"] == "US"
    # 05: bad bodies are 400 "Bad file format" with the recorded details; unknown tag 500.
    cases = [
        (b"this is not json", 400, "A JSON payload was expected"),
        (b"", 400, "A JSON payload was expected"),
        (b'{"PatientID": "PID-1"}', 400, "'Tags' field is missing or not a JSON object"),
        (b'{"Tags": []}', 400, "'Tags' field is missing or not a JSON object"),
        (b'{"Tags": {"PatientID": "PID-1", "PatientName": "A"}}', 400,
         "'Tags' is missing a 'ScheduledProcedureStepSequence'.  Use 'Force': true to "
         "bypass this check."),
        (b'{"Tags": {"PatientID": "PID-1", "ScheduledProcedureStepSequence": [{"Modality": '
         b'"CT"}]}}', 400, "'ScheduledProcedureStepSequence' is missing a "
         "'ScheduledProcedureStepStartDate'  Use 'Force': true to bypass this check."),
        (b'{"Tags": {"PatientID": "PID-1", "NoSuchTag": "x", "ScheduledProcedureStepSequen'
         b'ce": [{"Modality": "CT", "ScheduledProcedureStepStartDate": "20251014"}]}}', 500,
         "NoSuchTag"),
    ]
    for body, status, details in cases:
        r = c.post("/worklists/create", content=body)
        assert (r.status_code, r.json()["Details"]) == (status, details), body
        assert r.json()["Uri"] == "/worklists/create" and r.json()["Method"] == "POST"
    assert c.post("/worklists/create", content=b'{"Tags": {"NoSuchTag": "x", "Schedul'
                  b'edProcedureStepSequence": [{"Modality": "CT", "ScheduledProcedureStepSt'
                  b'artDate": "20251014"}]}}').json()["Message"] == "Unknown DICOM tag"
    r = c.get("/worklists/create")
    assert (r.status_code, r.headers["Allow"], r.text) == (405, "POST", "")
    r = c.get("/worklists/does-not-exist")
    assert (r.status_code, r.json()["Details"], r.json()["OrthancStatus"]) == \
        (404, "Worklist not found", 17)
    r = c.delete("/worklists/does-not-exist")
    assert r.status_code == 404 and "Details" not in r.json()
    assert c.get("/worklists?format=Nope").json()["Message"] == "Parameter out of range"
    # 06: PUT creates with the client's ID, then replaces (Force true by default).
    r = c.put("/worklists/ACC-49", content=b'{"Tags": {"PatientID": "PID-49", "0032,1060": '
              b'"CT THORAX", "ScheduledProcedureStepSequence": [{"Modality": "DX", '
              b'"ScheduledProcedureStepStartDate": "20251016"}]}}')
    assert r.json() == {"ID": "ACC-49", "Path": "/worklists/ACC-49"}
    assert c.get("/worklists/ACC-49").json()["Tags"]["RequestedProcedureDescription"] == \
        "CT THORAX"
    c.put("/worklists/ACC-49", content=b'{"Tags": {"PatientID": "PID-49", "PatientName": '
          b'"Put^Updated"}}')
    assert c.get("/worklists/ACC-49").json()["Tags"]["PatientName"] == "Put^Updated"
    r = c.put("/worklists/ACC-50", content=b'{"Force": false, "Tags": {"PatientID": "P"}}')
    assert r.status_code == 400
    # 08: DELETE answers {} and the item is gone.
    assert c.delete("/worklists/ACC-49").json() == {}
    assert c.get("/worklists/ACC-49").status_code == 404
    assert [e["ID"] for e in c.get("/worklists/").json()] == [new_id]


# --- the sink --------------------------------------------------------------------------


async def test_put_sends_keywords_utf8_and_study_uid_under_a_derived_id(
        orthanc: OrthancDouble, store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    await commit(store, KEY, ITEM)
    await sink.put(await store.run(store.store.item, KEY))
    assert list(orthanc.items) == [sink.remote_id(KEY)]
    tags = orthanc.items[sink.remote_id(KEY)]
    assert tags["PatientName"] == "Müller^Hans"
    assert tags["StudyInstanceUID"] == "1.2.826.0.1.3680043.10.543.46"
    # The JSON text is Unicode: stored as UTF-8 whatever the HL7 charset was.
    assert tags["SpecificCharacterSet"] == "ISO_IR 192"
    assert tags["OtherPatientIDs"] == "X1\\X2"
    assert tags["ScheduledProcedureStepSequence"] == ITEM["ScheduledProcedureStepSequence"]
    # The same key gives the same ID in another sink (another run of the bridge).
    other = make_sink(orthanc, store)
    assert other.remote_id(KEY) == sink.remote_id(KEY) != sink.remote_id(KEY + "x")
    assert sink.remote_id(KEY).startswith("hl7wb-") and sink.owns(sink.remote_id(KEY))
    assert not sink.owns("external-ct") and not sink.owns("hl7wb-not-a-uuid")
    await sink.aclose()
    await other.aclose()


async def test_replace_and_remove_are_idempotent(orthanc: OrthancDouble,
                                                 store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    await commit(store, KEY, ITEM)
    item = await store.run(store.store.item, KEY)
    await sink.put(item)
    await commit(store, KEY, {**ITEM, "PatientName": "Müller^Hans-Peter"})
    await sink.put(await store.run(store.store.item, KEY))
    await sink.put(await store.run(store.store.item, KEY))
    assert len(orthanc.items) == 1
    assert orthanc.items[sink.remote_id(KEY)]["PatientName"] == "Müller^Hans-Peter"
    await sink.remove(item)
    await sink.remove(item)  # 404: already gone, not an error
    assert orthanc.items == {}
    # Removed by the bridge, not by Orthanc: a new put creates it again.
    await sink.put(item)
    assert list(orthanc.items) == [sink.remote_id(KEY)]
    await sink.aclose()


async def test_missing_study_uid_is_derived_and_stable(orthanc: OrthancDouble,
                                                       store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    dataset = {k: v for k, v in ITEM.items() if k != "StudyInstanceUID"}
    await commit(store, KEY, dataset)
    item = await store.run(store.store.item, KEY)
    await sink.put(item)
    first = orthanc.items[sink.remote_id(KEY)]["StudyInstanceUID"]
    await sink.put(item)
    assert orthanc.items[sink.remote_id(KEY)]["StudyInstanceUID"] == first
    assert first.startswith("2.25.")  # not one Orthanc made up
    await sink.aclose()


async def test_item_removed_by_orthanc_is_never_recreated(orthanc: OrthancDouble,
                                                          store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    worker = OutboxWorker(sink, store, min_backoff=0.01, max_backoff=0.05)
    await commit(store, KEY, ITEM)
    await drain(worker)
    assert orthanc.study_arrived("PID-46", ITEM["StudyInstanceUID"]) == [sink.remote_id(KEY)]
    puts = orthanc.count("PUT")
    # An update after Orthanc removed the item: detected, recorded, not sent.
    await commit(store, KEY, {**ITEM, "PatientName": "Changed^Late"})
    await drain(worker)
    assert orthanc.items == {}
    assert orthanc.count("PUT") == puts
    [state] = await store.run(store.store.outbox_state, KEY)
    assert (state.sink, state.state, state.removed_by_sink) == ("orthanc", "done", True)
    assert state.remote_id == sink.remote_id(KEY)
    # Nor by later changes or a resync, which need not even ask Orthanc again.
    gets = orthanc.count("GET")
    await commit(store, KEY, {**ITEM, "PatientName": "Changed^Again"})
    await drain(worker)
    await sink.resync()
    await drain(worker)
    assert orthanc.items == {} and orthanc.count("PUT") == puts
    assert orthanc.count("GET") == gets
    await sink.aclose()


async def test_outage_pauses_the_sink_without_charging_items(orthanc: OrthancDouble,
                                                             store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    worker = OutboxWorker(sink, store, max_attempts=2, min_backoff=0.01, max_backoff=0.05)
    orthanc.refuse()
    keys = [f"PLC-{n}|RP|SPS" for n in range(5)]
    for key in keys:
        await commit(store, key, {**ITEM, "AccessionNumber": key})
    worker.start()
    try:
        await asyncio.sleep(0.5)  # many probes at 10-50 ms backoff, all refused
        assert worker.outage is not None and "ConnectionRefusedError" in worker.outage
        for key in keys:
            [state] = await store.run(store.store.outbox_state, key)
            assert (state.state, state.attempts) == ("pending", 0)  # max_attempts is 2
        orthanc.accept()
        # Stored by Orthanc, then recorded by the worker (which clears the outage).
        await asyncio.wait_for(_until(lambda: len(orthanc.items) == 5
                                      and worker.outage is None), 10)
    finally:
        await worker.stop()
    assert sorted(t["AccessionNumber"] for t in orthanc.items.values()) == sorted(keys)
    await sink.aclose()


async def test_slow_answers_count_as_an_outage(orthanc: OrthancDouble,
                                               store: AsyncStore) -> None:
    sink = make_sink(orthanc, store, timeout=0.2)
    await commit(store, KEY, ITEM)
    item = await store.run(store.store.item, KEY)
    orthanc.delay = 0.5
    with pytest.raises(SinkUnavailable, match="Timeout"):
        await sink.put(item)
    orthanc.delay = 0
    await sink.put(item)
    assert list(orthanc.items) == [sink.remote_id(KEY)]
    await sink.aclose()


async def test_refused_items_are_retried_then_dead(orthanc: OrthancDouble,
                                                   store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    worker = OutboxWorker(sink, store, max_attempts=3, min_backoff=0.01, max_backoff=0.02)
    orthanc.fail_with(500)
    await commit(store, KEY, ITEM)
    deadline = time.monotonic() + 10
    while (await store.run(store.store.outbox_state, KEY))[0].state != "dead":
        assert time.monotonic() < deadline
        if not await worker.deliver_due():
            await asyncio.sleep(0.01)
    [state] = await store.run(store.store.outbox_state, KEY)
    assert state.attempts == 3 and "HTTP 500" in (state.last_error or "")
    assert orthanc.count("PUT") == 3
    # A dead item waits for its next change (or a resync), then goes through.
    orthanc.fail_with(None)
    await commit(store, KEY, ITEM)
    await drain(worker)
    assert list(orthanc.items) == [sink.remote_id(KEY)]
    [state] = await store.run(store.store.outbox_state, KEY)
    assert state.state == "done"
    await sink.aclose()


async def test_a_404_from_elsewhere_than_the_plugin_is_not_a_removal(
        orthanc: OrthancDouble, store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    await commit(store, KEY, ITEM)
    item = await store.run(store.store.item, KEY)
    await sink.put(item)
    orthanc.plugin = False  # Orthanc restarted without the worklists plugin, say
    with pytest.raises(SinkUnavailable, match="is the worklists plugin enabled"):
        await sink.put(item)  # GET 404, but not "Worklist not found"
    state = await store.run(store.store.sink_state, "orthanc", KEY)
    assert state is not None and state.removed_at is None and state.delivered
    other = KEY + "-new"
    await commit(store, other, ITEM)
    with pytest.raises(SinkUnavailable, match="no /worklists API"):
        await sink.put(await store.run(store.store.item, other))  # PUT 404
    await sink.aclose()


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_proxy_saying_orthanc_is_down_is_an_outage(
        orthanc: OrthancDouble, store: AsyncStore, status: int) -> None:
    sink = make_sink(orthanc, store)
    await commit(store, KEY, ITEM)
    orthanc.fail_with(status)
    with pytest.raises(SinkUnavailable, match=f"HTTP {status} from a proxy"):
        await sink.put(await store.run(store.store.item, KEY))
    await sink.aclose()


async def test_unknown_tag_is_the_items_failure(orthanc: OrthancDouble,
                                                store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    await commit(store, KEY, {**ITEM, "NoSuchTag": "x"})
    with pytest.raises(OrthancError, match="HTTP 500: Unknown DICOM tag NoSuchTag"):
        await sink.put(await store.run(store.store.item, KEY))
    await sink.aclose()


async def commit_many(store: AsyncStore, count: int, bad: int | None = None) -> list[str]:
    """`count` items (PLC-0 ...); the `bad`-th with a tag Orthanc does not know."""
    keys = [f"PLC-{n}|RP|SPS" for n in range(count)]
    for n, key in enumerate(keys):
        extra = {"NoSuchTag": "x"} if n == bad else {}
        await commit(store, key, {**ITEM, "AccessionNumber": f"ACC-{n}", **extra})
    return keys


async def test_a_batch_goes_out_with_parallel_requests(orthanc: OrthancDouble,
                                                       store: AsyncStore) -> None:
    sink = make_sink(orthanc, store, parallel_requests=3)
    keys = await commit_many(store, 12)
    items = await store.run(store.store.items_by_keys, keys)
    orthanc.delay = 0.05  # so that the requests overlap
    await sink.put_many([items[k] for k in keys])
    assert orthanc.max_in_flight == 3
    assert sorted(orthanc.items) == sorted(sink.remote_id(k) for k in keys)
    states = await store.run(store.store.sink_states, "orthanc", keys)
    assert all(states[k].delivered and states[k].remote_id == sink.remote_id(k) for k in keys)
    # Delivered items are checked before they are replaced: a GET each, then the PUT.
    puts = orthanc.count("PUT")
    await sink.put_many([items[k] for k in keys])
    assert (orthanc.count("GET"), orthanc.count("PUT")) == (12, puts + 12)
    await sink.aclose()


async def test_one_refused_item_does_not_hold_back_its_batch(orthanc: OrthancDouble,
                                                             store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    keys = await commit_many(store, 6, bad=2)
    items = await store.run(store.store.items_by_keys, keys)
    with pytest.raises(OrthancError, match="Unknown DICOM tag NoSuchTag"):
        await sink.put_many([items[k] for k in keys])
    good = [k for n, k in enumerate(keys) if n != 2]
    assert sorted(orthanc.items) == sorted(sink.remote_id(k) for k in good)
    states = await store.run(store.store.sink_states, "orthanc", keys)
    assert sorted(states) == sorted(good)
    # Through the outbox: the batch fails, its items are tried one by one, and only the
    # refused one is charged an attempt.
    await commit_many(store, 6, bad=2)
    worker = OutboxWorker(sink, store, min_backoff=30)
    assert await worker.deliver_due()
    for n, key in enumerate(keys):
        [state] = await store.run(store.store.outbox_state, key)
        assert (state.state, state.attempts) == (("pending", 1) if n == 2 else ("done", 0))
    await sink.aclose()


async def test_an_outage_stops_a_batch(orthanc: OrthancDouble, store: AsyncStore) -> None:
    sink = make_sink(orthanc, store, parallel_requests=2)
    keys = await commit_many(store, 20)
    items = await store.run(store.store.items_by_keys, keys)
    orthanc.fail_with(503)  # a proxy in front of a stopped Orthanc
    with pytest.raises(SinkUnavailable, match="HTTP 503 from a proxy"):
        await sink.put_many([items[k] for k in keys])
    # The requests in flight when the first failure came back, not twenty.
    assert orthanc.count("PUT") <= 2
    assert await store.run(store.store.sink_states, "orthanc", keys) == {}
    await sink.aclose()


async def test_a_killed_delivery_process_loses_nothing(orthanc: OrthancDouble,
                                                       store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    keys = await commit_many(store, 2)
    items = await store.run(store.store.items_by_keys, keys)
    await sink.put(items[keys[0]])
    first = sink._worker.pid
    assert first is not None and first != os.getpid()
    os.kill(first, signal.SIGKILL)
    await asyncio.to_thread(_until_gone, first)
    await sink.put(items[keys[1]])  # started again; the put is not the item's failure
    assert sink._worker.pid not in (None, first)
    assert sorted(orthanc.items) == sorted(sink.remote_id(k) for k in keys)
    await sink.aclose()


def _until_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@pytest.mark.parametrize(("cfg", "required"), [
    ({"username": "bridge", "password": "s3cret"},
     {"Authorization": "Basic " + base64.b64encode(b"bridge:s3cret").decode()}),
    ({"token": "tok-123"}, {"Authorization": "Bearer tok-123"}),
    ({"headers": {"X-Api-Key": "k-9"}}, {"X-Api-Key": "k-9"}),
])
async def test_authentication(orthanc: OrthancDouble, store: AsyncStore, cfg: dict,
                              required: dict) -> None:
    orthanc.require_headers = required
    await commit(store, KEY, ITEM)
    item = await store.run(store.store.item, KEY)
    anonymous = make_sink(orthanc, store)
    with pytest.raises(SinkUnavailable, match="HTTP 401: authentication refused"):
        await anonymous.put(item)
    sink = make_sink(orthanc, store, **cfg)
    await sink.put(item)
    assert list(orthanc.items) == [sink.remote_id(KEY)]
    await anonymous.aclose()
    await sink.aclose()


def make_ca_and_server_cert(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_peer("openssl not found: the TLS test needs it to make certificates")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=bridge test CA")
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "ca.pem", server


async def test_tls_verification(tmp_path: Path, store: AsyncStore) -> None:
    ca, server_context = make_ca_and_server_cert(tmp_path)
    await commit(store, KEY, ITEM)
    item = await store.run(store.store.item, KEY)
    with OrthancDouble(tls=server_context) as orthanc:
        assert orthanc.url.startswith("https://")
        # The system CAs do not know this one: Orthanc is unreachable, not the item wrong.
        system = make_sink(orthanc, store)
        with pytest.raises(SinkUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await system.put(item)
        trusted = make_sink(orthanc, store, ca_bundle=ca)
        await trusted.put(item)
        unchecked = make_sink(orthanc, store, verify_tls=False)
        await unchecked.remove(item)
        assert orthanc.items == {} and orthanc.count("PUT") == 1
        for sink in (system, trusted, unchecked):
            await sink.aclose()


async def test_resync_creates_missing_deletes_owned_extras_leaves_others(
        orthanc: OrthancDouble, store: AsyncStore) -> None:
    sink = make_sink(orthanc, store)
    worker = OutboxWorker(sink, store, min_backoff=0.01, max_backoff=0.05)
    canceled, shown = "C|RP|SPS", "S|RP|SPS"
    for key in (canceled, shown):
        await commit(store, key, {**ITEM, "AccessionNumber": key})
    await drain(worker)
    orthanc.study_arrived("PID-46", ITEM["StudyInstanceUID"])  # both
    # The store moves on while Orthanc is out of step: `canceled` is canceled, and Orthanc
    # holds a stale copy of it; another program's item; an item under our ID scheme that
    # no item of the store has (from a store that was lost, say).
    c = httpx.Client(base_url=orthanc.url)
    await commit(store, canceled, {**ITEM, "AccessionNumber": canceled}, visible=False)
    await store.run(store.store.outbox_done, "orthanc", canceled, 10**9)
    c.put(f"/worklists/{sink.remote_id(canceled)}", json={"Tags": {"PatientID": "stale"}})
    c.put("/worklists/external-ct", json={"Tags": {"PatientID": "PID-0001"}})
    stray = sink.remote_id("gone-from-the-store")
    c.put(f"/worklists/{stray}", json={"Tags": {"PatientID": "old"}})
    # `shown` is visible and was removed by Orthanc unseen by the bridge; `never` was never
    # delivered (its outbox row was lost with an old store, say).
    never = "N|RP|SPS"
    await commit(store, never, {**ITEM, "AccessionNumber": never})
    await store.run(store.store.outbox_done, "orthanc", never, 10**9)

    plan = await sink.resync()
    await drain(worker)
    assert (plan.deleted, plan.queued, plan.foreign) == (1, 3, 1)
    assert sorted(orthanc.items) == sorted(["external-ct", sink.remote_id(never)])
    # The visible item Orthanc removed stays removed; the bridge knows it now.
    [state] = await store.run(store.store.outbox_state, shown)
    assert state.removed_by_sink
    await sink.aclose()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


# --- configuration ---------------------------------------------------------------------


def test_config_keys_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sinks:\n  orthanc:\n    enabled: true\n    url: https://pacs:8042\n"
                    "    ca_bundle: certs/ca.pem\n    max_attempts: 5\n")
    config = load_config(path, {"BRIDGE_SINKS__ORTHANC__HEADERS__X-API-KEY": "k",
                                "BRIDGE_SINKS__ORTHANC__MAX_BACKOFF": "1.5"})
    o = config.sinks.orthanc
    assert (o.url, o.max_attempts, o.max_backoff, o.headers) == \
        ("https://pacs:8042", 5, 1.5, {"x-api-key": "k"})
    assert o.ca_bundle == tmp_path / "certs" / "ca.pem"
    path.write_text("sinks:\n  orthanc:\n    username: a\n    token: b\n")
    with pytest.raises(ConfigError, match=r"sinks\.orthanc: Value error, set username/"):
        load_config(path, {})
