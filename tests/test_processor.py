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


async def test_unknown_order_control_is_ae_103_at_orc_1(processor) -> None:
    # HL7 table 0357: 103 "table value not found" (ORC-1 is there, not in table 0119).
    outcome = await processor.handle(orm("U1", control="ZZ").encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AE", ("ORC^1^1^1", "103"))


async def test_an_order_message_without_orc_is_ae(processor) -> None:
    text = "MSH|^~\\&|RIS|H|B|I|||ORM^O01|O1|P|2.3.1\rPID|||1^^^H||DOE^J\r"
    outcome = await processor.handle(text.encode(), PEER)
    assert (outcome.code, err(outcome)[1]) == ("AE", "100")


async def test_oversized_frames_are_ar_and_journaled(processor) -> None:
    outcome = await processor.oversized(PEER, 1024)
    assert outcome.code == "AR"
    assert "1024-byte limit" in processor.store.store.journal_entry(outcome.journal_id).error


def two_orders(second_modality: str = "", second_control: str = "NW") -> str:
    """Two ORC/OBR groups; the second one's OBR-24 (modality, required) as given."""
    first = orm("G1", order="GA")
    second = orm("G1", order="GB", modality=second_modality, control=second_control)
    groups = second[second.index("ORC|"):]
    return first.replace("ZDS|", "NTE|1||x\rZDS|") + groups


async def test_a_failure_in_the_second_group_names_its_obr(processor) -> None:
    outcome = await processor.handle(two_orders().encode(), PEER)
    assert outcome.code == "AE"
    assert err(outcome) == ("OBR^2^24^1", "101")  # was OBR^1^24^1
    assert msa(outcome) == ("AE", "G1")


async def test_an_unknown_control_in_the_second_group_names_orc_2(processor) -> None:
    outcome = await processor.handle(two_orders("CT", second_control="QQ").encode(), PEER)
    assert (outcome.code, err(outcome)) == ("AE", ("ORC^2^1^1", "103"))


def header(msh10: str, msh2: str = "^~\\&", msh9: str = "ORM^O01", msh18: str = "") -> str:
    return f"MSH|{msh2}|RIS|HOSP|BRIDGE|IMG|20240101||{msh9}|{msh10}|P|2.3.1||||||{msh18}\r"


async def test_refused_messages_still_echo_a_readable_msh10(processor) -> None:
    cases = {
        "unknown MSH-18": header("K1", msh18="KLINGON") + "PID|||1\r",
        "empty MSH-9": header("K2", msh9="") + "PID|||1\r",
        "unusable separators": header("K3", msh2="^^~\\&") + "PID|||1\r",
        "letters as separators": header("K4", msh2="abcd") + "PID|||1\r",
    }
    for name, text in cases.items():
        outcome = await processor.handle(text.encode(), PEER)
        assert outcome.code == "AR", name
        assert msa(outcome)[1] == text.split("|")[9], name  # was "" for each


async def test_an_oversized_frame_echoes_msh10_from_its_first_bytes(processor) -> None:
    head = orm("BIG7").encode()[:300]
    outcome = await processor.oversized(PEER, 1024, head)
    assert msa(outcome) == ("AR", "BIG7")
    # Cut inside MSH-10: not trusted, not echoed half.
    outcome = await processor.oversized(PEER, 1024, b"MSH|^~\\&|RIS|H|B|I|||ORM^O01|BI")
    assert msa(outcome) == ("AR", "")


async def test_a_short_msh2_is_read_not_mangled(processor) -> None:
    # Read from fixed offsets, "MSH|^|MESA" made "E" the subcomponent separator.
    text = orm("S1", name="DOE^J1", sender="MESA").replace("MSH|^~\\&|", "MSH|^|")
    outcome = await processor.handle(text.encode(), PEER)
    assert msa(outcome) == ("AA", "S1")
    [item] = processor.store.store.items()
    assert item.dataset["PatientName"] == "DOE^J1"  # was DO^J1


async def test_indented_segments_are_not_missed(processor) -> None:
    text = orm("I1").replace("\rORC|", "\r   ORC|").replace("\rOBR|", "\r\tOBR|")
    outcome = await processor.handle(text.encode(), PEER)
    assert msa(outcome) == ("AA", "I1")  # was AE "no ORC segment"
    [item] = processor.store.store.items()
    assert item.dataset["AccessionNumber"] == "ACC1"


async def test_structural_limits_are_ar_naming_the_key(processor) -> None:
    processor.config.mllp.max_groups = 1
    outcome = await processor.handle(two_orders("CT").encode(), PEER)
    assert outcome.code == "AR" and "mllp.max_groups (1)" in outcome.error
    assert err(outcome) == ("ORC^2", "100")
    processor.config.mllp.max_segments = 5
    outcome = await processor.handle(orm("L2").encode() + b"NTE|1\r" * 3, PEER)
    assert outcome.code == "AR" and "mllp.max_segments (5)" in outcome.error
    assert msa(outcome) == ("AR", "L2")
    assert processor.store.store.items() == []


async def test_control_characters_in_the_message_do_not_break_the_ack(processor) -> None:
    text = orm("C\x1cX", control="Z\x1cZ")
    outcome = await processor.handle(text.encode(), PEER)
    assert outcome.code == "AE"
    assert not any(b < 0x20 and b != 0x0D for b in outcome.ack), outcome.ack
    assert msa(outcome) == ("AE", "C\\X1C\\X")
