"""Order control: what an ORC-1 / ORC-5 pair does to the items of an order.

The table is keyed ``ORC-1_ORC-5``; ``*`` stands for any ORC-5 and an empty ORC-5 is
written ``NW_``. The lookup tries the exact pair, then ``ORC-1_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bridge.mapping.engine import Item, MappedOrder
from bridge.store import ItemWrite, StoredItem


class Status(StrEnum):
    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELED = "CANCELED"


class Effect(StrEnum):
    REPLACE = "replace"  # create or replace the order's items with the message's content
    STATUS = "status"  # only change the status of the order's existing items


@dataclass(frozen=True)
class Action:
    effect: Effect
    status: Status


_R, _S = Effect.REPLACE, Effect.STATUS

DEFAULT_TABLE: dict[str, Action] = {
    "NW_SC": Action(_R, Status.SCHEDULED),
    "NW_IP": Action(_R, Status.SCHEDULED),
    "NW_": Action(_R, Status.SCHEDULED),
    "XO_SC": Action(_R, Status.SCHEDULED),
    "XO_": Action(_R, Status.SCHEDULED),
    "XO_IP": Action(_R, Status.STARTED),
    "SC_IP": Action(_S, Status.STARTED),
    "SC_SC": Action(_S, Status.SCHEDULED),
    "CA_CA": Action(_S, Status.CANCELED),
    "CA_": Action(_S, Status.CANCELED),
    "OC_*": Action(_S, Status.CANCELED),
    "DC_*": Action(_S, Status.DISCONTINUED),
    "XO_CM": Action(_S, Status.COMPLETED),
    "SC_CM": Action(_S, Status.COMPLETED),
    "SC_A": Action(_S, Status.COMPLETED),
    # Older senders answer with the "as requested" codes.
    "CR_*": Action(_S, Status.CANCELED),
    "XR_*": Action(_R, Status.SCHEDULED),
    "OD_*": Action(_S, Status.DISCONTINUED),
    "SN_*": Action(_R, Status.SCHEDULED),
}

DEFAULT_VISIBLE = frozenset({Status.SCHEDULED, Status.ARRIVED})


class UnknownOrderControl(LookupError):
    """ORC-1/ORC-5 is not in the order-control table."""


def lookup(table: dict[str, Action], control: str, status: str) -> Action:
    control, status = control.strip().upper(), status.strip().upper()
    for key in (f"{control}_{status}", f"{control}_*"):
        if key in table:
            return table[key]
    raise UnknownOrderControl(f"order control {control or '(empty)'} with order status "
                              f"{status or '(empty)'} is not in the order-control table")


def item_key(order_key: str, item: Item) -> str:
    """An item is its order plus its requested procedure and scheduled step IDs."""
    steps = item.get("ScheduledProcedureStepSequence") or [{}]
    sps_id = steps[0].get("ScheduledProcedureStepID", "") if isinstance(steps, list) else ""
    return f"{order_key}|{item.get('RequestedProcedureID', '')}|{sps_id}"


def plan(order: MappedOrder, existing: list[StoredItem], action: Action,
         visible: frozenset[Status] = DEFAULT_VISIBLE) -> list[ItemWrite]:
    """The item writes that apply `action` for `order`, given the order's stored items."""
    shown = action.status in visible
    if action.effect is Effect.STATUS:
        return [ItemWrite(i.item_key, i.order_key, action.status.value, shown, i.dataset)
                for i in existing]
    writes = []
    new_keys = set()
    for item in order.items:
        key = item_key(order.key, item)
        new_keys.add(key)
        writes.append(ItemWrite(key, order.key, action.status.value, shown, item))
    # A replacement that no longer lists an item (a procedure dropped by XO) removes it.
    for old in existing:
        if old.item_key not in new_keys and old.visible:
            writes.append(ItemWrite(old.item_key, old.order_key, Status.DISCONTINUED.value,
                                    False, old.dataset))
    return writes
