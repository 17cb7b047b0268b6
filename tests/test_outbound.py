"""Status back to the RIS, in process: the queue in the store, the shipped outbound profiles
(checked with hl7apy), the sender against a real MLLP RIS (ris_sim.py), the CLI."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from ris_sim import RisSimulator

from bridge.cli import main
from bridge.config import load_config
from bridge.mapping.loader import MappingError, load_profiles
from bridge.outbound.builder import build, gather
from bridge.outbound.profile import load_outbound
from bridge.outbound.sender import read_ack
from bridge.outbound.worker import OutboundWorker
from bridge.processor import Processor
from bridge.store import AsyncStore, Store, open_store, store_url
from bridge.validate import check_bytes

from orders import orm
from peers import FIXTURES, free_port

ROOT = Path(__file__).resolve().parent.parent
OUTBOUND = ROOT / "mappings" / "outbound"
# An MPPS instance as the SCP stores it (DICOM JSON): start, station, modality.
MPPS_START = {
    "00400244": {"vr": "DA", "Value": ["20240115"]},
    "00400245": {"vr": "TM", "Value": ["103005.123"]},
    "00400241": {"vr": "AE", "Value": ["CT_ROOM_1"]},
    "00080060": {"vr": "CS", "Value": ["CT"]},
    "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]},
}
MPPS_END = {"00400250": {"vr": "DA", "Value": ["20240115"]},
            "00400251": {"vr": "TM", "Value": ["104510"]},
            "00400252": {"vr": "CS", "Value": ["COMPLETED"]}}


pytestmark = pytest.mark.backends


def _config(tmp_path: Path, ris_port: int = 2, database: str | None = None, **extra: str):
    """`database`: the store's URL (PostgreSQL, the `store_target` fixture), else SQLite."""
    env = {"BRIDGE_DATA_DIR": str(tmp_path / "data"), "BRIDGE_RIS__ENABLED": "true",
           "BRIDGE_RIS__PORT": str(ris_port), "BRIDGE_RIS__MIN_BACKOFF": "0.05",
           "BRIDGE_RIS__MAX_BACKOFF": "0.2", "BRIDGE_RIS__ACK_TIMEOUT": "1",
           "BRIDGE_RIS__CONNECT_TIMEOUT": "1", **extra}
    if database:
        env["BRIDGE_STORE__URL"] = database
    return load_config(ROOT / "config.yaml", environ=env)


def _cli_config(tmp_path: Path, config, text: str) -> Path:
    """A config file for the command line, on the same store as `config`."""
    if config.store.url:
        text += f"store:\n  url: '{config.store.url}'\n"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    return cfg


@pytest.fixture
async def bench(tmp_path: Path, store_target):
    """A processor and its store with the RIS destination on; yields (config, processor)."""
    config = _config(tmp_path, free_port(), store_target)
    store = AsyncStore(open_store(store_url(config), ["folder"]))
    store.store.outbound_destinations = ("ris",)
    proc = Processor(config, load_profiles(config.mappings.dir), store)
    yield config, proc
    store.close()


async def _order(proc: Processor, raw: bytes) -> list[str]:
    outcome = await proc.handle(raw, "test:1")
    assert outcome.code == "AA", outcome.ack
    return [i.item_key for i in proc.store.store.items()]


def _rows(store: Store) -> list[tuple[str, str]]:
    return [(r.event, r.order_key) for r in reversed(store.outbound_entries())]


# --- the queue -------------------------------------------------------------------------------

async def test_the_status_is_queued_in_the_transaction_that_records_the_mpps(bench) -> None:
    _, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1", placer="PL1^RISNS").encode())
    # Rolled back with the instance: the row is written in the same transaction.
    db.db.execute("BEGIN IMMEDIATE")
    db.mpps_create("1.2.3.1", "CT01", keys, MPPS_START, "STARTED", False)
    db.db.execute("ROLLBACK")
    assert db.mpps("1.2.3.1") is None and _rows(db) == []
    db.mpps_create("1.2.3.1", "CT01", keys, MPPS_START, "STARTED", False)
    assert _rows(db) == [("in_progress", "PL1^RISNS")]


async def test_an_n_set_without_a_status_change_sends_nothing(bench) -> None:
    _, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1").encode())
    db.mpps_create("1.2.3.2", "CT01", keys, MPPS_START, "STARTED", False)
    db.mpps_set("1.2.3.2", "", {"00400280": {"vr": "ST", "Value": ["a comment"]}}, None)
    db.mpps_set("1.2.3.2", "IN PROGRESS", {}, None)
    assert [e for e, _ in _rows(db)] == ["in_progress"]
    db.mpps_set("1.2.3.2", "COMPLETED", MPPS_END, ("COMPLETED", False, True))
    assert [e for e, _ in _rows(db)] == ["in_progress", "completed"]
    # The completion carries the end time merged into the instance.
    assert db.outbound_entries()[0].mpps["00400251"]["Value"] == ["104510"]


async def test_status_changes_from_the_ris_are_not_echoed(bench) -> None:
    _, proc = bench
    db = proc.store.store
    await _order(proc, orm("M1").encode())
    await _order(proc, orm("M2", control="SC", status="IP").encode())
    await _order(proc, orm("M3", control="CA", status="CA").encode())
    assert db.items()[0].status == "CANCELED"  # the RIS's changes were applied...
    assert _rows(db) == []  # ...and nothing goes back to it


async def test_messages_go_in_order_per_order(bench) -> None:
    _, proc = bench
    db = proc.store.store
    keys_a = await _order(proc, orm("M1", order="A").encode())
    keys_b = [k for k in await _order(proc, orm("M2", order="B", accession="ACC2",
                                                    rp_id="RP2", sps_id="SPS2").encode())
              if k not in keys_a]
    db.mpps_create("1.2.3.3", "CT01", keys_a, MPPS_START, "STARTED", False)
    db.mpps_set("1.2.3.3", "COMPLETED", MPPS_END, None)
    db.mpps_create("1.2.3.4", "CT01", keys_b, MPPS_START, "STARTED", False)
    due = db.outbound_due("ris")
    # A's completion waits for A's start; B's start does not wait for A.
    assert [(r.event, r.order_key) for r in due] == [("in_progress", "A^RIS"),
                                                     ("in_progress", "B^RIS")]
    db.outbound_sent(due[0].id, "AA")
    assert [(r.event, r.order_key) for r in db.outbound_due("ris")] == [
        ("completed", "A^RIS"), ("in_progress", "B^RIS")]


# --- the shipped profiles ---------------------------------------------------------------------

def _fields(text: str, segment: str) -> list[str]:
    line = next(s for s in text.split("\r") if s.startswith(segment + "|"))
    return line.split("|")


async def test_orm_status_echoes_the_order_and_validates(bench) -> None:
    config, proc = bench
    db = proc.store.store
    raw = orm("M1", placer="PL9^RIS_NS^1.2.3^ISO", accession="ACC9", rp_id="RP9",
              sps_id="SPS9").replace("P1^^^HOSP", "P1^^^HOSP^MR~NIR7^^^INS^NI").encode()
    keys = await _order(proc, raw)
    db.mpps_create("1.2.3.5", "CT01", keys, MPPS_START, "STARTED", False)
    db.mpps_set("1.2.3.5", "COMPLETED", MPPS_END, None)
    profile = load_outbound(OUTBOUND / "outbound-orm-status.yaml")
    texts = []
    for row in reversed(db.outbound_entries()):
        rule = getattr(config.ris, row.event)
        event = gather(db, row.order_key, row.item_keys, row.event, row.mpps_uid, row.mpps,
                       rule.control, rule.status)
        built = build(profile, config.ris, event, f"C{row.id}")
        report = check_bytes(built.payload, "8859/1")
        assert report.ok, [str(p) for p in report.problems]
        # hl7apy's strict parser accepts every field's data type too (its validate() is
        # not used for ORM: it reads v2.3.1's OBR/RQD/... choice as a sequence).
        parse_message(built.text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        texts.append(built.text)
    started, completed = texts
    orc, obr, pid = _fields(started, "ORC"), _fields(started, "OBR"), _fields(started, "PID")
    assert _fields(started, "MSH")[8] == "ORM^O01^ORM_O01"
    assert (orc[1], orc[5], orc[9]) == ("SC", "IP", "20240115103005")
    # The identifiers exactly as the RIS sent them, namespaces included.
    assert orc[2] == obr[2] == "PL9^RIS_NS^1.2.3^ISO" and orc[3] == obr[3] == "FPL1^IMG"
    assert pid[3] == "P1^^^HOSP^MR~NIR7^^^INS^NI"
    assert (obr[18], obr[19], obr[20]) == ("ACC9", "RP9", "SPS9")
    assert (obr[7], obr[21]) == ("20240115103005", "CT_ROOM_1")
    orc, obr = _fields(completed, "ORC"), _fields(completed, "OBR")
    assert (orc[1], orc[5], orc[9]) == ("SC", "CM", "20240115104510")
    assert (obr[7], obr[8]) == ("20240115103005", "20240115104510")


async def test_omi_status_echoes_ipc_and_validates(bench) -> None:
    config, proc = bench
    db = proc.store.store
    keys = await _order(proc, (FIXTURES / "dcm4che__OMI_O23-ImagingOrder_2022.hl7").read_bytes())
    db.mpps_create("1.2.3.6", "CT01", keys, MPPS_START, "STARTED", False)
    row = db.outbound_entries()[0]
    event = gather(db, row.order_key, row.item_keys, row.event, row.mpps_uid, row.mpps,
                   "SC", "IP")
    built = build(load_outbound(OUTBOUND / "outbound-omi-status.yaml"), config.ris, event, "C1")
    report = check_bytes(built.payload, "8859/1")
    assert report.ok and report.structure == "OMI_O23 (HL7 2.5.1)", report.problems
    parse_message(built.text, validation_level=VALIDATION_LEVEL.STRICT,
                  find_groups=True).validate()
    ipc = _fields(built.text, "IPC")
    assert ipc[1:5] == ["AccessionNumber", "RequestedProcID",
                        "1.2.392.200036.9125.0.198811291108.7", "ScheduledProcStepID"]
    assert ipc[9] == "CT_ROOM_1"
    assert _fields(built.text, "ORC")[2] == "PlacerOrderNumberImagingServiceRequest"
    assert _fields(built.text, "PID")[3] == "PID_1^^^ADT1"


async def test_identifiers_come_from_the_store_when_the_journal_is_purged(bench) -> None:
    config, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1", placer="PL5^RIS\\S\\X").encode())
    db.db.execute("DELETE FROM journal")
    db.mpps_create("1.2.3.7", "CT01", keys, MPPS_START, "STARTED", False)
    row = db.outbound_entries()[0]
    event = gather(db, row.order_key, row.item_keys, row.event, row.mpps_uid, row.mpps,
                   "SC", "IP")
    built = build(load_outbound(OUTBOUND / "outbound-orm-status.yaml"), config.ris, event, "C")
    orc, obr = _fields(built.text, "ORC"), _fields(built.text, "OBR")
    assert orc[2] == "PL5^RIS\\S\\X" and orc[3] == "FPL1^IMG"  # ids.*, escapes kept
    assert (obr[18], obr[19], obr[20]) == ("ACC1", "RP1", "SPS1")  # item.*
    assert _fields(built.text, "PID")[3] == "P1"


def test_an_outbound_profile_error_names_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        profile: bad
        kind: outbound
        message_type: ORM^O01
        version: 2.3.1
        segments: [ORC]
        fields:
          ORC-1: event.colour
          ORC-2: item.AccesionNumber
          OBR-3: order.OBR-3
          ORC-5: {from: order.ORC-5, as: date}
        """))
    with pytest.raises(MappingError) as exc:
        load_outbound(bad)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith(f"{bad}:7:3: ORC-1: event.colour: unknown event value")
    assert lines[1].startswith(f"{bad}:8:3: ORC-2: item.AccesionNumber: 'AccesionNumber' is "
                               "not a DICOM keyword")
    assert lines[2] == f"{bad}:9:3: OBR-3: OBR is not in segments"
    assert lines[3].startswith(f"{bad}:10:3: ORC-5: unknown transform 'date'")


def test_ack_reading_gives_the_ris_error_text() -> None:
    v25 = (b"MSH|^~\\&|RIS||HL7WB||20240101||ACK|A1|P|2.5.1\rMSA|AE|C1\r"
           b"ERR||ORC^1^2|204^Unknown key identifier^HL70357|E||||Order PL1 not found\r")
    assert read_ack(v25, "C1").code == "AE"
    assert read_ack(v25, "C1").text == "Order PL1 not found"
    v23 = b"MSH|^~\\&|RIS||HL7WB||20240101||ACK|A1|P|2.3\rMSA|AR|C1|bad\rERR|ORC^1^2^204\r"
    assert (read_ack(v23, "C1").code, read_ack(v23, "C1").text) == ("AR", "204")
    assert read_ack(v23, "OTHER") is None  # an ACK of another message
    assert read_ack(b"garbage", "C1") is None


# --- the sender against a real MLLP RIS ---------------------------------------------------------

async def _worker_bench(tmp_path: Path, ris_port: int, database: str | None):
    config = _config(tmp_path, ris_port, database)
    store = AsyncStore(open_store(store_url(config), ["folder"]))
    store.store.outbound_destinations = ("ris",)
    proc = Processor(config, load_profiles(config.mappings.dir), store)
    keys = await _order(proc, orm("M1", placer="PL1^RISNS").encode())
    worker = OutboundWorker(config.ris, load_outbound(OUTBOUND / "outbound-orm-status.yaml"),
                            store)
    return store, keys, worker


async def _until(predicate, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_down_ris_then_up_gets_the_message_once(tmp_path: Path, store_target) -> None:
    port = free_port()
    ris = RisSimulator(port)
    store, keys, worker = await _worker_bench(tmp_path, port, store_target)
    db = store.store
    try:
        await store.run(db.mpps_create, "1.2.3.8", "CT01", keys, MPPS_START, "STARTED", False)
        worker.start()
        await _until(lambda: db.outbound_entries()[0].attempts >= 2)  # retried, not dead
        row = db.outbound_entries()[0]
        assert row.state == "pending" and "Connection" in (row.error or "")
        ris.start()
        await _until(lambda: db.outbound_entries()[0].state == "sent")
        await asyncio.sleep(0.5)  # time for a wrong second send
        assert ris.count() == 1
        assert str(ris.messages()[0].segment("ORC")[2]) == "PL1^RISNS"
        assert await worker.deliver_due() is False  # an AA'd message is never sent again
    finally:
        await worker.stop()
        ris.stop()
        store.close()


async def test_ae_marks_dead_with_the_ris_text_and_replay_sends_again(tmp_path: Path,
                                                                     store_target) -> None:
    port = free_port()
    ris = RisSimulator(port)
    ris.set_answer("AE", "Order PL1 unknown here")
    ris.start()
    store, keys, worker = await _worker_bench(tmp_path, port, store_target)
    db = store.store
    try:
        await store.run(db.mpps_create, "1.2.3.9", "CT01", keys, MPPS_START, "STARTED", False)
        await store.run(db.mpps_set, "1.2.3.9", "COMPLETED", MPPS_END, None)
        assert await worker.deliver_due() is True
        await worker.deliver_due()
        await worker.deliver_due()
        started, completed = sorted(db.outbound_entries(), key=lambda r: r.id)
        # Refused: dead with the RIS's text, not retried; the next event still goes.
        assert (started.state, started.ack_code, started.error) == \
            ("dead", "AE", "Order PL1 unknown here")
        assert completed.state == "dead" and ris.count() == 2
        ris.set_answer("AA")
        assert db.outbound_replay([started.id]) == [started.id]
        assert await worker.deliver_due() is True
        assert db.outbound_entry(started.id).state == "sent"
        assert ris.count() == 3
        replayed = ris.messages()[2]
        assert str(replayed.segment("ORC")[5]) == "IP"
        assert str(replayed.segment("MSH")[10]) != str(ris.messages()[0].segment("MSH")[10])
    finally:
        await worker.stop()
        ris.stop()
        store.close()


async def test_a_silent_ris_gets_the_same_message_again(tmp_path: Path, store_target) -> None:
    port = free_port()
    ris = RisSimulator(port)
    ris.set_answer("silent")
    ris.start()
    store, keys, worker = await _worker_bench(tmp_path, port, store_target)
    db = store.store
    try:
        await store.run(db.mpps_create, "1.2.3.10", "CT01", keys, MPPS_START, "STARTED", False)
        worker.start()
        await _until(lambda: ris.count() >= 2)  # no ACK within ack_timeout: sent again
        row = db.outbound_entries()[0]
        assert row.state == "pending" and row.attempts >= 1 and "Timeout" in (row.error or "")
        ris.set_answer("AA")
        await _until(lambda: db.outbound_entries()[0].state == "sent")
        controls = {str(m.segment("MSH")[10]) for m in ris.messages()}
        assert len(controls) == 1  # every retry is the same message
    finally:
        await worker.stop()
        ris.stop()
        store.close()


# --- the CLI --------------------------------------------------------------------------------

async def test_preview_and_list(bench, tmp_path: Path, capsys) -> None:
    config, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1", placer="PL3^RISNS").encode())
    db.mpps_create("1.2.3.11", "CT01", keys, MPPS_START, "STARTED", False)
    cfg = _cli_config(tmp_path, config,
                      f"data_dir: {tmp_path / 'data'}\nmappings:\n  dir: {ROOT / 'mappings'}\n")
    assert main(["outbound", "preview", keys[0], "--state", "in progress", "--trace",
                 "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    message = hl7.parse(out.replace("\n", "\r"))
    assert str(message.segment("ORC")[5]) == "IP"
    assert str(message.segment("ORC")[2]) == "PL3^RISNS"
    assert "ORC-2 = 'PL3^RISNS'  <- order.ORC-2" in err and "MPPS 1.2.3.11" in err
    assert main(["outbound", "list", "--config", str(cfg)]) == 0
    out, _ = capsys.readouterr()
    assert "pending" in out and "in_progress" in out and "PL3^RISNS" in out


async def test_omg_status_validates(bench) -> None:
    config, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1", placer="PL4^RISNS").encode())
    db.mpps_create("1.2.3.12", "CT01", keys, MPPS_START, "STARTED", False)
    row = db.outbound_entries()[0]
    event = gather(db, row.order_key, row.item_keys, row.event, row.mpps_uid, row.mpps,
                   "SC", "IP")
    built = build(load_outbound(OUTBOUND / "outbound-omg-status.yaml"), config.ris, event, "C")
    report = check_bytes(built.payload, "8859/1")
    assert report.ok and report.structure == "OMG_O19 (HL7 2.5.1)", report.problems
    parse_message(built.text, validation_level=VALIDATION_LEVEL.STRICT,
                  find_groups=True).validate()
    assert _fields(built.text, "ORC")[2] == "PL4^RISNS"


async def test_discontinued_is_configurable_and_can_be_switched_off(tmp_path: Path) -> None:
    from bridge.app import outbound_worker

    for extra, expected in (({}, ("SC", "DC")),
                            ({"BRIDGE_RIS__DISCONTINUED__CONTROL": "DC",
                              "BRIDGE_RIS__DISCONTINUED__STATUS": "CA"}, ("DC", "CA")),
                            ({"BRIDGE_RIS__DISCONTINUED__SEND": "false"}, None)):
        config = _config(tmp_path / str(len(extra)), free_port(), **extra)
        store = AsyncStore(Store(config.store_path, ["folder"]))
        try:
            worker = outbound_worker(config, store)  # the bridge's own wiring
            proc = Processor(config, load_profiles(config.mappings.dir), store)
            keys = await _order(proc, orm("M1").encode())
            db = store.store
            db.mpps_create("1.2.3.13", "CT01", keys, MPPS_START, "STARTED", False)
            db.mpps_set("1.2.3.13", "DISCONTINUED", {}, None)
            rows = sorted(db.outbound_entries(), key=lambda r: r.id)
            if expected is None:
                assert [r.event for r in rows] == ["in_progress"]
                continue
            rule = getattr(config.ris, rows[1].event)
            event = gather(db, rows[1].order_key, rows[1].item_keys, rows[1].event,
                           rows[1].mpps_uid, rows[1].mpps, rule.control, rule.status)
            orc = _fields(build(worker.profile, config.ris, event, "C").text, "ORC")
            assert (orc[1], orc[5]) == expected
        finally:
            store.close()


async def test_a_broken_profile_on_reload_keeps_the_previous_one(tmp_path: Path,
                                                                 store_target) -> None:
    file = tmp_path / "mine.yaml"
    file.write_text((OUTBOUND / "outbound-orm-status.yaml").read_text())
    config = _config(tmp_path, free_port(), store_target)
    store = AsyncStore(open_store(store_url(config)))
    try:
        worker = OutboundWorker(config.ris, load_outbound(file), store)
        file.write_text(file.read_text().replace("ORC-1: event.control", "ORC-1: event.x"))
        assert worker.reload() is False
        assert worker.profile.name == "outbound-orm-status"
        file.write_text(file.read_text().replace("event.x", "event.control")
                        .replace("profile: outbound-orm-status", "profile: mine"))
        assert worker.reload() is True and worker.profile.name == "mine"
    finally:
        store.close()


async def test_each_ipc_echoes_its_own_item_even_with_long_ids(bench) -> None:
    config, proc = bench
    db = proc.store.store
    omi = "\r".join([
        "MSH|^~\\&|RIS|HOSP|BRIDGE|IMG|20240101120000||OMI^O23^OMI_O23|OMI2|P|2.5.1",
        "PID|||P2^^^HOSP||ROE^RICHARD",
        "ORC|NW|PLO2^RISNS|FLO2^IMGNS||SC",
        "OBR||PLO2^RISNS|FLO2^IMGNS|MRHEAD^MR Head^LOCAL",
        "IPC|ACC2^RISNS|RP2|1.2.3.79|A-SCHEDULED-STEP-0001|MR",
        "IPC|ACC2^RISNS|RP2|1.2.3.79|B-SCHEDULED-STEP-0001|MR",
    ]) + "\r"
    keys = await _order(proc, omi.encode())
    second = [k for k in keys if "B-SCHEDULED" in k]
    db.mpps_create("1.2.3.14", "MR01", second, MPPS_START, "STARTED", False)
    row = db.outbound_entries()[0]
    event = gather(db, row.order_key, row.item_keys, row.event, row.mpps_uid, row.mpps,
                   "SC", "IP")
    built = build(load_outbound(OUTBOUND / "outbound-omi-status.yaml"), config.ris, event, "C")
    ipcs = [s.split("|") for s in built.text.split("\r") if s.startswith("IPC|")]
    assert [ipc[4] for ipc in ipcs] == ["B-SCHEDULED-STEP-0001"]  # as sent, not cut


async def test_a_stopped_sender_gives_its_row_back(tmp_path: Path, store_target) -> None:
    port = free_port()
    ris = RisSimulator(port)
    ris.set_answer("silent")
    ris.start()
    config = _config(tmp_path, port, store_target, BRIDGE_RIS__ACK_TIMEOUT="30")
    store = AsyncStore(open_store(store_url(config), ["folder"]))
    store.store.outbound_destinations = ("ris",)
    db = store.store
    try:
        proc = Processor(config, load_profiles(config.mappings.dir), store)
        keys = await _order(proc, orm("M1").encode())
        await store.run(db.mpps_create, "1.2.3.15", "CT01", keys, MPPS_START, "STARTED",
                        False)
        worker = OutboundWorker(config.ris, load_outbound(OUTBOUND / "outbound-orm-status.yaml"),
                                store)
        worker.start()
        await _until(lambda: ris.count() == 1)
        assert db.outbound_due("ris") == []  # claimed while it waits for the ACK
        await worker.stop()
        # Due again at once for the next start, not after the claim's lease.
        assert [r.state for r in db.outbound_due("ris")] == ["pending"]
    finally:
        ris.stop()
        store.close()


async def test_dead_messages_are_listed_shown_and_replayed_from_the_cli(bench, tmp_path: Path,
                                                                         capsys) -> None:
    config, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1").encode())
    db.mpps_create("1.2.3.16", "CT01", keys, MPPS_START, "STARTED", False)
    row = db.outbound_entries()[0]
    db.outbound_built(row.id, b"MSH|^~\\&|HL7WB\rORC|SC\r", "WB1.X")
    db.outbound_dead(row.id, "AE", "Order PL1 unknown here")
    cfg = _cli_config(tmp_path, config, f"data_dir: {tmp_path / 'data'}\n")
    assert main(["outbound", "list", "--dead", "--config", str(cfg)]) == 0
    out, _ = capsys.readouterr()
    assert "dead" in out and "AE" in out and "Order PL1 unknown here" in out
    assert main(["outbound", "show", str(row.id), "--config", str(cfg)]) == 0
    out, _ = capsys.readouterr()
    assert "error: Order PL1 unknown here" in out and "ORC|SC" in out
    assert main(["outbound", "replay", "--dead", "--config", str(cfg)]) == 0
    entry = db.outbound_entry(row.id)
    assert (entry.state, entry.message, entry.attempts) == ("pending", None, 0)
    assert main(["outbound", "replay", str(row.id), "--config", str(cfg)]) == 1  # not dead


async def test_accepted_messages_leave_with_the_journal_retention(bench) -> None:
    _, proc = bench
    db = proc.store.store
    keys = await _order(proc, orm("M1").encode())
    db.mpps_create("1.2.3.17", "CT01", keys, MPPS_START, "STARTED", False)
    db.mpps_set("1.2.3.17", "COMPLETED", MPPS_END, None)
    started, completed = sorted(db.outbound_entries(), key=lambda r: r.id)
    db.outbound_sent(started.id, "AA")
    db.outbound_dead(completed.id, "AE", "no")
    assert db.purge_outbound(time.time() + 1) == 1
    assert [r.id for r in db.outbound_entries()] == [completed.id]  # the refused one stays
