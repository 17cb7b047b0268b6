"""The order-control table as configured: defaults, site rows, per-sender rows."""

from __future__ import annotations

import pytest

from bridge.config import LifecycleConfig
from bridge.lifecycle import Effect, OrderControl, Status, UnknownOrderControl

from orders import orm

# Every test here that takes `config` runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.backends


def test_default_table_follows_reference_section_2() -> None:
    oc = OrderControl()
    expect = {("NW", "SC"): (Effect.REPLACE, Status.SCHEDULED),
              ("NW", ""): (Effect.REPLACE, Status.SCHEDULED),
              ("XO", ""): (Effect.REPLACE, Status.SCHEDULED),
              ("SC", "IP"): (Effect.STATUS, Status.STARTED),
              ("XO", "IP"): (Effect.REPLACE, Status.STARTED),
              ("CA", "CA"): (Effect.STATUS, Status.CANCELED),
              ("CA", ""): (Effect.STATUS, Status.CANCELED),
              ("OC", "XX"): (Effect.STATUS, Status.CANCELED),
              ("DC", "CA"): (Effect.STATUS, Status.DISCONTINUED),
              ("XO", "CM"): (Effect.STATUS, Status.COMPLETED),
              ("SC", "CM"): (Effect.STATUS, Status.COMPLETED),
              ("SC", "A"): (Effect.STATUS, Status.COMPLETED)}
    for (control, status), (effect, new) in expect.items():
        action = oc.action("ANY", control, status)
        assert (action.effect, action.status) == (effect, new), (control, status)
    with pytest.raises(UnknownOrderControl):
        oc.action("ANY", "NW", "CM")
    assert oc.visible == {Status.SCHEDULED, Status.ARRIVED}


def test_site_and_sender_rows_override_the_default() -> None:
    cfg = LifecycleConfig.model_validate({
        "order_control": {"HD_*": {"effect": "status", "status": "DISCONTINUED"},
                          "OC_*": "reject"},
        "senders": {"OLDRIS": {"order_control": {"CA_*": {"effect": "status",
                                                           "status": "DISCONTINUED"}},
                               "xo_unknown_order": "reject"}},
        "visible_statuses": ["SCHEDULED", "ARRIVED", "STARTED"],
    })
    oc = OrderControl(cfg)
    assert oc.action("RIS", "HD", "").status is Status.DISCONTINUED
    with pytest.raises(UnknownOrderControl):
        oc.action("RIS", "OC", "CA")
    assert oc.action("RIS", "CA", "CA").status is Status.CANCELED
    assert oc.action("OLDRIS", "CA", "CA").status is Status.DISCONTINUED
    assert oc.action("OLDRIS", "HD", "").status is Status.DISCONTINUED  # site row inherited
    assert oc.creates_unknown("RIS", "XO") and not oc.creates_unknown("OLDRIS", "XO")
    assert oc.creates_unknown("OLDRIS", "NW")
    assert Status.STARTED in oc.visible


async def test_xo_for_an_unknown_order_rejected_when_configured(processor) -> None:
    processor.control = OrderControl(LifecycleConfig(xo_unknown_order="reject"))
    outcome = await processor.handle(orm("X1", order="NEVER", control="XO").encode(), "t")
    assert outcome.code == "AE" and b"|ORC^1^2^1|204^" in outcome.ack
    # NW creates it; then XO is fine.
    assert (await processor.handle(orm("X2", order="NEVER").encode(), "t")).code == "AA"
    assert (await processor.handle(orm("X3", order="NEVER", control="XO",
                                       start="202402011200").encode(), "t")).code == "AA"


async def test_started_items_visible_when_configured(processor) -> None:
    processor.control = OrderControl(LifecycleConfig(
        visible_statuses=["SCHEDULED", "ARRIVED", "STARTED"]))
    await processor.handle(orm("V1", order="V").encode(), "t")
    await processor.handle(orm("V2", order="V", control="SC", status="IP").encode(), "t")
    [item] = processor.store.store.items()
    assert (item.status, item.visible) == ("STARTED", True)


async def test_an_xo_that_drops_a_procedure_removes_its_item(processor) -> None:
    await processor.handle(orm("D1", order="D", rp_id="RPA", sps_id="SA").encode(), "t")
    await processor.handle(orm("D2", order="D", rp_id="RPB", sps_id="SB", control="XO").encode(),
                           "t")
    items = {i.item_key: (i.status, i.visible) for i in processor.store.store.items()}
    assert items == {"D^RIS|RPA|SA": ("DISCONTINUED", False), "D^RIS|RPB|SB": ("SCHEDULED", True)}


def adt(event: str, control_id: str, pid: str, name: str = "", mrg: str | None = None,
        birth: str = "") -> bytes:
    segments = [f"MSH|^~\\&|ADT|HOSP|BRIDGE|IMG|20240101||ADT^{event}|{control_id}|P|2.5",
                f"EVN|{event}|20240101", f"PID|||{pid}^^^HOSP||{name}||{birth}"]
    if mrg is not None:
        segments.append(f"MRG|{mrg}^^^HOSP")
    return ("\r".join(segments) + "\r").encode()


async def test_a08_changes_only_what_it_carries_and_only_live_items(processor) -> None:
    await processor.handle(orm("A1", order="LIVE", patient_id="P9").encode(), "t")
    await processor.handle(orm("A2", order="DONE", patient_id="P9").encode(), "t")
    await processor.handle(orm("A3", order="DONE", patient_id="P9", control="SC",
                               status="CM").encode(), "t")
    outcome = await processor.handle(adt("A08", "A4", "P9", name="NEW^NAME"), "t")
    assert outcome.code == "AA"
    items = {i.order_key: i for i in processor.store.store.items()}
    live, done = items["LIVE^RIS"].dataset, items["DONE^RIS"].dataset
    assert live["PatientName"] == "NEW^NAME"
    assert live["PatientBirthDate"] == "19700101"  # PID-7 empty in the A08: kept
    assert done["PatientName"] == "DOE^JANE"  # a completed order keeps its demographics


async def test_a40_without_mrg_is_ae_at_mrg_1(processor) -> None:
    outcome = await processor.handle(adt("A40", "M1", "P1", mrg=""), "t")
    assert outcome.code == "AE" and b"|MRG^1^1^1^1|101^" in outcome.ack


async def test_a10_sets_arrived_only_when_configured(processor) -> None:
    await processor.handle(orm("R1", order="ARR", patient_id="P5").encode(), "t")
    await processor.handle(adt("A10", "R2", "P5"), "t")
    assert processor.store.store.items()[0].status == "SCHEDULED"
    processor.config.lifecycle.arrive_on_a10 = True
    await processor.handle(adt("A10", "R3", "P5"), "t")
    [item] = processor.store.store.items()
    assert (item.status, item.visible) == ("ARRIVED", True)


async def test_adt_for_a_patient_without_items_is_accepted_and_changes_nothing(processor) -> None:
    outcome = await processor.handle(adt("A08", "Z1", "NOBODY", name="X^Y"), "t")
    assert outcome.code == "AA" and processor.store.store.items() == []


# --- final statuses stick (issue 14, item 1) ------------------------------------------


def _note(processor, outcome) -> str:
    return processor.store.store.journal_entry(outcome.journal_id).error or ""


async def test_a_resent_nw_does_not_bring_a_canceled_order_back(processor) -> None:
    await processor.handle(orm("F1", order="FIN").encode(), "t")
    await processor.handle(orm("F2", order="FIN", control="CA", status="CA").encode(), "t")
    # The RIS sends the original NW again under a new MSH-10.
    outcome = await processor.handle(orm("F3", order="FIN", name="NEW^NAME").encode(), "t")
    assert outcome.code == "AA" and outcome.writes == []
    [item] = processor.store.store.items()
    assert (item.status, item.visible, item.final) == ("CANCELED", False, True)
    assert item.dataset["PatientName"] == "DOE^JANE"
    assert "order FIN^RIS is CANCELED; NW not applied" in _note(processor, outcome)
    # Nor a release, a status change or a new procedure for the same order.
    for n, text in enumerate([orm("F4", order="FIN", control="RL", status=""),
                              orm("F5", order="FIN", control="SC", status="SC"),
                              orm("F6", order="FIN", control="XO", rp_id="RP2")]):
        outcome = await processor.handle(text.encode(), "t")
        assert outcome.code == "AA" and outcome.writes == [], n
        assert "is CANCELED" in _note(processor, outcome)
    assert [(i.status, i.visible) for i in processor.store.store.items()] == \
        [("CANCELED", False)]


async def test_an_xo_does_not_reschedule_an_item_mpps_completed(processor) -> None:
    await processor.handle(orm("G1", order="MP", rp_id="RPA", sps_id="SA").encode(), "t")
    await processor.handle(orm("G2", order="MP", rp_id="RPB", sps_id="SB").encode(), "t")
    db = processor.store.store
    done = db.set_status(["MP^RIS|RPA|SA"], "COMPLETED", False, final=True)
    assert [w.item_key for w in done] == ["MP^RIS|RPA|SA"]
    xo = orm("G3", order="MP", rp_id="RPA", sps_id="SA", control="XO",
             start="202402021200", description="changed")
    outcome = await processor.handle(xo.encode(), "t")
    assert outcome.code == "AA"
    items = {i.item_key: i for i in db.items()}
    kept = items["MP^RIS|RPA|SA"]
    assert (kept.status, kept.visible) == ("COMPLETED", False)
    assert kept.dataset["ScheduledProcedureStepSequence"][0][
        "ScheduledProcedureStepStartDate"] == "20240115"  # content not reverted either
    # The order is still live: its other item follows the XO (it is no longer listed).
    assert items["MP^RIS|RPB|SB"].status == "DISCONTINUED"
    assert "item MP^RIS|RPA|SA is COMPLETED; XO not applied to it" in _note(processor, outcome)
    # MPPS never changes a final item either.
    assert db.set_status(["MP^RIS|RPA|SA"], "STARTED", False) == []


async def test_hold_and_release_still_work(processor) -> None:
    await processor.handle(orm("H1", order="HOLD").encode(), "t")
    await processor.handle(orm("H2", order="HOLD", control="HD", status="").encode(), "t")
    [item] = processor.store.store.items()
    assert (item.status, item.visible, item.final) == ("DISCONTINUED", False, False)
    await processor.handle(orm("H3", order="HOLD", control="RL", status="").encode(), "t")
    [item] = processor.store.store.items()
    assert (item.status, item.visible) == ("SCHEDULED", True)


async def test_a_sender_may_reopen_final_orders_explicitly(processor) -> None:
    processor.control = OrderControl(LifecycleConfig.model_validate(
        {"senders": {"REOPENER": {"reopen_final": True}}}))
    for sender in ("RIS", "REOPENER"):
        order = f"RE{sender}"
        await processor.handle(orm(f"{sender}1", order=order, sender=sender).encode(), "t")
        await processor.handle(orm(f"{sender}2", order=order, sender=sender, control="CA",
                                   status="CA").encode(), "t")
        await processor.handle(orm(f"{sender}3", order=order, sender=sender).encode(), "t")
    items = {i.order_key: (i.status, i.final) for i in processor.store.store.items()}
    assert items == {"RERIS^RIS": ("CANCELED", True),
                     "REREOPENER^RIS": ("SCHEDULED", False)}


def test_which_rows_are_final() -> None:
    oc = OrderControl(LifecycleConfig.model_validate({"order_control": {
        "HD_*": {"effect": "status", "status": "DISCONTINUED"},
        "ZC_*": {"effect": "status", "status": "CANCELED"},
        "ZS_*": {"effect": "status", "status": "COMPLETED", "final": False},
        "ZF_*": {"effect": "status", "status": "STARTED", "final": True}}}))
    final = {c: oc.action("RIS", c, "").final for c in
             ("NW", "XO", "CA", "OC", "DC", "OD", "CR", "HD", "RL", "ZC", "ZS", "ZF")}
    assert final == {"NW": False, "XO": False, "CA": True, "OC": True, "DC": True, "OD": True,
                     "CR": True, "HD": False, "RL": False, "ZC": True, "ZS": False, "ZF": True}
    assert oc.action("RIS", "SC", "CM").final and oc.action("RIS", "XO", "CM").final


# --- orders found by any of their identifiers (issue 14, item 5) ----------------------


async def test_a_filler_only_cancel_finds_an_order_keyed_by_its_placer_number(processor) -> None:
    await processor.handle(orm("I1", order="PL7").encode(), "t")  # ORC-3: FPL7^IMG
    ids = processor.store.store.order_identifiers("PL7^RIS")
    assert ids == [("ORC-2", "PL7^RIS"), ("ORC-3", "FPL7^IMG"), ("accession", "ACC1")]
    # ORC-2 and OBR-2 empty: the cancel names the order by its filler number only.
    cancel = orm("I2", order="PL7", placer="", control="CA", status="CA", modality="")
    outcome = await processor.handle(cancel.encode(), "t")
    assert outcome.code == "AA" and len(outcome.writes) == 1
    [item] = processor.store.store.items()
    assert (item.order_key, item.status) == ("PL7^RIS", "CANCELED")


async def test_a_filler_only_change_replaces_the_same_item(processor) -> None:
    await processor.handle(orm("I3", order="PL8").encode(), "t")
    xo = orm("I4", order="PL8", placer="", control="XO", start="202403031000")
    assert (await processor.handle(xo.encode(), "t")).code == "AA"
    [item] = processor.store.store.items()
    assert item.item_key == "PL8^RIS|RP1|SPS1"
    assert item.dataset["ScheduledProcedureStepSequence"][0][
        "ScheduledProcedureStepStartDate"] == "20240303"


async def test_a_cancel_for_no_order_says_so(processor) -> None:
    cancel = orm("I5", order="NOWHERE", control="CA", status="CA", accession="NOACC")
    outcome = await processor.handle(cancel.encode(), "t")
    assert outcome.code == "AA" and outcome.writes == []
    assert "no such order NOWHERE^RIS: CA not applied" in _note(processor, outcome)
    processor.control = OrderControl(LifecycleConfig(status_unknown_order="reject"))
    outcome = await processor.handle(orm("I6", order="NOWHERE", control="DC",
                                         status="CA").encode(), "t")
    assert outcome.code == "AE" and b"|ORC^1^2^1|204^" in outcome.ack
    assert b"no such order" in outcome.ack
    assert processor.store.store.items() == []


async def test_a_new_order_sharing_an_accession_stays_a_new_order(processor) -> None:
    await processor.handle(orm("I7", order="ONE", accession="SHARED").encode(), "t")
    await processor.handle(orm("I8", order="TWO", accession="SHARED").encode(), "t")
    assert sorted(i.order_key for i in processor.store.store.items()) == ["ONE^RIS", "TWO^RIS"]
    # A cancel naming neither number but the accession of two orders cancels none.
    outcome = await processor.handle(orm("I9", order="", placer="", control="CA",
                                         status="CA", accession="SHARED").encode(), "t")
    assert {i.status for i in processor.store.store.items()} == {"SCHEDULED"}
    assert outcome.code == "AA" and "no such order" in _note(processor, outcome)
