"""One message at a time through the real processor and a real SQLite store."""

from __future__ import annotations

import hl7
import pytest

from orders import orm

# Every test here that takes `config` runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.backends

PEER = "test:1"


def msa(outcome) -> tuple[str, str]:
    seg = hl7.parse(outcome.ack.decode("latin-1")).segment("MSA")
    return str(seg[1]), str(seg[2])


def err(outcome) -> tuple[str, str]:
    seg = hl7.parse(outcome.ack.decode("latin-1")).segment("ERR")
    return str(seg[2]), str(seg[3]).split("^")[0]


async def test_an_order_is_stored_then_acknowledged(processor) -> None:
    outcome = await processor.handle(orm("M1").encode(), PEER)
    assert msa(outcome) == ("AA", "M1")
    db = processor.store.store
    entry = db.journal_entry(outcome.journal_id)
    assert entry.status == "processed" and entry.ack == outcome.ack
    assert entry.raw == orm("M1").encode()
    items = db.items()
    assert len(items) == 1 and items[0].visible and items[0].status == "SCHEDULED"
    ds = items[0].dataset
    assert ds["PatientID"] == "P1" and ds["AccessionNumber"] == "ACC1"
    assert ds["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStartDate"] == "20240115"
    assert db.outbox_depth("folder") == 1


async def test_a_missing_patient_id_is_ae_naming_pid_3_and_journaled(processor) -> None:
    raw = orm("M2", patient_id="").encode()
    outcome = await processor.handle(raw, PEER)
    assert msa(outcome) == ("AE", "M2")
    assert err(outcome) == ("PID^1^3^1^1", "101")
    entry = processor.store.store.journal_entry(outcome.journal_id)
    assert entry.status == "failed" and entry.raw == raw and "PID-3.1" in entry.error
    assert processor.store.store.items() == []


async def test_garbage_is_ar_and_still_journaled(processor) -> None:
    outcome = await processor.handle(b"\x00\x01garbage", PEER)
    assert outcome.code == "AR"
    entry = processor.store.store.journal_entry(outcome.journal_id)
    assert entry.raw == b"\x00\x01garbage" and entry.status == "failed"


async def test_unsupported_type_and_event(processor) -> None:
    siu = "MSH|^~\\&|A|B|C|D|||SIU^S12|X1|P|2.5\rSCH|1\r"
    outcome = await processor.handle(siu.encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AR", ("MSH^1^9^1", "200"))
    adt = "MSH|^~\\&|A|B|C|D|||ADT^A01|X0|P|2.5\rPID|||1\r"
    outcome = await processor.handle(adt.encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AR", ("MSH^1^9^1", "201"))
    o02 = orm("X2").replace("ORM^O01", "ORM^O02")
    outcome = await processor.handle(o02.encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AR", ("MSH^1^9^1", "201"))


async def test_unknown_charset_is_ar_at_msh_18(processor) -> None:
    outcome = await processor.handle(orm("C1", charset="KLINGON").encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AR", ("MSH^1^18^1", "103"))


async def test_duplicate_control_id_gets_the_same_ack_and_changes_nothing(processor) -> None:
    first = await processor.handle(orm("D1").encode(), PEER)
    second = await processor.handle(orm("D1", name="OTHER^NAME").encode(), PEER)
    assert second.ack == first.ack
    db = processor.store.store
    assert db.items()[0].dataset["PatientName"] == "DOE^JANE"
    assert db.journal_entry(second.journal_id).status == "duplicate"
    assert db.outbox_depth("folder") == 1


async def test_cancel_hides_the_item_without_needing_item_fields(processor) -> None:
    await processor.handle(orm("N1", order="ORD9").encode(), PEER)
    # A cancel that carries no modality at all: it names its order, that is enough.
    cancel = orm("N2", order="ORD9", control="CA", status="CA", modality="")
    outcome = await processor.handle(cancel.encode(), PEER)
    assert outcome.code == "AA"
    [item] = processor.store.store.items()
    assert (item.status, item.visible) == ("CANCELED", False)


async def test_unknown_order_control_is_ae_101_at_orc_1(processor) -> None:
    outcome = await processor.handle(orm("U1", control="ZZ").encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AE", ("ORC^1^1^1", "101"))


async def test_an_order_message_without_orc_is_ae(processor) -> None:
    text = "MSH|^~\\&|RIS|H|B|I|||ORM^O01|O1|P|2.3.1\rPID|||1^^^H||DOE^J\r"
    outcome = await processor.handle(text.encode(), PEER)
    assert (outcome.code, err(outcome)[1]) == ("AE", "100")


async def test_oversized_frames_are_ar_and_journaled(processor) -> None:
    outcome = await processor.oversized(PEER, 1024)
    assert outcome.code == "AR"
    assert "1024-byte limit" in processor.store.store.journal_entry(outcome.journal_id).error
