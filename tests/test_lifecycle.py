"""The order-control table as configured: defaults, site rows, per-sender rows."""

from __future__ import annotations

import pytest

from bridge.config import LifecycleConfig
from bridge.lifecycle import Effect, OrderControl, Status, UnknownOrderControl

from orders import orm


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
