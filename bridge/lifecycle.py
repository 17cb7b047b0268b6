"""Order control: what an ORC-1 / ORC-5 pair does to the items of an order.

The table is keyed ``ORC-1_ORC-5``; ``*`` stands for any ORC-5 and an empty ORC-5 is
written ``NW_``. The lookup tries the exact pair, then ``ORC-1_*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bridge import keys
from bridge.config import LifecycleConfig
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
    # A final status sticks: later order messages leave the item alone (unless the sender
    # may reopen, `lifecycle.reopen_final`). MPPS COMPLETED and DISCONTINUED are final too.
    final: bool = False


_R, _S = Effect.REPLACE, Effect.STATUS
FINAL = True

DEFAULT_TABLE: dict[str, Action] = {
    "NW_SC": Action(_R, Status.SCHEDULED),
    "NW_IP": Action(_R, Status.SCHEDULED),
    "NW_": Action(_R, Status.SCHEDULED),
    "XO_SC": Action(_R, Status.SCHEDULED),
    "XO_": Action(_R, Status.SCHEDULED),
    "XO_IP": Action(_R, Status.STARTED),
    "SC_IP": Action(_S, Status.STARTED),
    "SC_SC": Action(_S, Status.SCHEDULED),
    "CA_CA": Action(_S, Status.CANCELED, FINAL),
    "CA_": Action(_S, Status.CANCELED, FINAL),
    "OC_*": Action(_S, Status.CANCELED, FINAL),
    "DC_*": Action(_S, Status.DISCONTINUED, FINAL),
    "XO_CM": Action(_S, Status.COMPLETED, FINAL),
    "SC_CM": Action(_S, Status.COMPLETED, FINAL),
    "SC_A": Action(_S, Status.COMPLETED, FINAL),
    # Older senders answer with the "as requested" codes.
    "CR_*": Action(_S, Status.CANCELED, FINAL),
    "XR_*": Action(_R, Status.SCHEDULED),
    "OD_*": Action(_S, Status.DISCONTINUED, FINAL),
    # Hold takes the order off the worklist without ending it; release brings it back.
    "HD_*": Action(_S, Status.DISCONTINUED),
    "RL_*": Action(_S, Status.SCHEDULED),
    "SN_*": Action(_R, Status.SCHEDULED),
}

DEFAULT_VISIBLE = frozenset({Status.SCHEDULED, Status.ARRIVED})
FINAL_STATUSES = frozenset({Status.COMPLETED, Status.DISCONTINUED, Status.CANCELED})
# A hold ends nothing: a site's own HD row is not final unless it says so.
HOLD_CODES = frozenset({"HD"})

# ORC-1 codes that change an existing order: for an order never seen, configurable.
CHANGE_CODES = frozenset({"XO", "XR"})
# ORC-1 codes of a new order: the accession number alone never makes one the same as
# another (several orders may share an accession).
NEW_CODES = frozenset({"NW", "SN"})


class UnknownOrderControl(LookupError):
    """ORC-1/ORC-5 is not in the order-control table."""


def _merge(base: dict[str, Action], overrides: dict) -> dict[str, Action]:
    """`base` with `overrides` applied. An override ``CA_*`` governs every ORC-5 of CA: it
    replaces the base's more specific rows (``CA_CA``, ``CA_``), not only ``CA_*``."""
    table = dict(base)
    for key in overrides:
        control, _, status = key.upper().partition("_")
        if status == "*":
            for old in [k for k in table if k.partition("_")[0] == control]:
                del table[old]
    for key, rule in overrides.items():
        key = key.upper()
        if rule == "reject":
            table.pop(key, None)
        else:
            status = Status(rule.status)
            final = rule.final if rule.final is not None else \
                status in FINAL_STATUSES and key.partition("_")[0] not in HOLD_CODES
            table[key] = Action(Effect(rule.effect), status, final)
    return table


@dataclass(frozen=True)
class SenderRules:
    """What the lifecycle settings say for one sender (or for all)."""

    table: dict[str, Action]
    xo_unknown: str  # create | reject
    status_unknown: str  # accept | reject
    reopen_final: bool


class OrderControl:
    """The order-control table in force: the default, the site's rows, each sender's rows."""

    def __init__(self, config: LifecycleConfig | None = None):
        config = config or LifecycleConfig()
        self.visible = frozenset(Status(s) for s in config.visible_statuses)
        self.table = _merge(DEFAULT_TABLE, config.order_control)
        self.xo_unknown = config.xo_unknown_order
        self.default = SenderRules(self.table, config.xo_unknown_order,
                                   config.status_unknown_order, config.reopen_final)
        self.senders = {
            app: SenderRules(
                _merge(self.table, s.order_control), s.xo_unknown_order or self.xo_unknown,
                s.status_unknown_order or config.status_unknown_order,
                config.reopen_final if s.reopen_final is None else s.reopen_final)
            for app, s in config.senders.items()
        }

    def rules(self, sender: str) -> SenderRules:
        return self.senders.get(sender, self.default)

    def action(self, sender: str, control: str, status: str) -> Action:
        table = self.rules(sender).table
        control, status = control.strip().upper(), status.strip().upper()
        for key in (f"{control}_{status}", f"{control}_*"):
            if key in table:
                return table[key]
        raise UnknownOrderControl(f"order control {control or '(empty)'} with order status "
                                  f"{status or '(empty)'} is not in the order-control table")

    def creates_unknown(self, sender: str, control: str) -> bool:
        """Whether a change for an order never seen creates it (else: AE, no such order)."""
        if control.strip().upper() not in CHANGE_CODES:
            return True
        return self.rules(sender).xo_unknown == "create"


def item_key(order_key: str, item: Item) -> str:
    """An item is its order plus its requested procedure and scheduled step IDs."""
    steps = item.get("ScheduledProcedureStepSequence") or [{}]
    sps_id = steps[0].get("ScheduledProcedureStepID", "") if isinstance(steps, list) else ""
    return keys.item_key(order_key, str(item.get("RequestedProcedureID", "")), str(sps_id))


@dataclass
class Decision:
    """The item writes for one order, and what the journal should say about the rest."""

    writes: list[ItemWrite]
    notes: list[str] = field(default_factory=list)


def plan(order: MappedOrder, existing: list[StoredItem], action: Action,
         visible: frozenset[Status] = DEFAULT_VISIBLE,
         uid_from_message: list[bool] | None = None) -> list[ItemWrite]:
    return decide(order, existing, action, visible, uid_from_message).writes


def decide(order: MappedOrder, existing: list[StoredItem], action: Action,
           visible: frozenset[Status] = DEFAULT_VISIBLE,
           uid_from_message: list[bool] | None = None, reopen: bool = False) -> Decision:
    """The item writes that apply `action` for `order`, given the order's stored items.

    Writes that would change nothing (a resend under a new control ID) are left out. An
    item in a final status is left alone unless `reopen`; an order whose items are all
    final takes nothing from the message, not even a new procedure.
    `uid_from_message[i]` says whether item i's StudyInstanceUID was in the message; a UID
    the mapping derived or generated never replaces the one an item already has, so the
    study keeps its UID across every update of the order.
    """
    shown = action.status in visible
    by_key = {i.item_key: i for i in existing}
    control = order.control.strip().upper() or "(empty ORC-1)"
    final = set() if reopen else {i.item_key for i in existing if i.final}
    if existing and len(final) == len(existing):
        statuses = "/".join(sorted({i.status for i in existing}))
        return Decision([], [f"order {order.key} is {statuses}; {control} not applied"])
    notes = [f"item {by_key[k].item_key} is {by_key[k].status}; {control} not applied to it"
             for k in sorted(final)]
    writes: list[ItemWrite] = []
    if action.effect is Effect.STATUS:
        for old in existing:
            if old.item_key not in final:
                writes.append(ItemWrite(old.item_key, old.order_key, action.status.value,
                                        shown, old.dataset, action.final))
        return Decision(_changed(writes, by_key), notes)
    new_keys = set()
    for index, item in enumerate(order.items):
        key = item_key(order.key, item)
        new_keys.add(key)
        if key in final:
            continue
        old = by_key.get(key)
        explicit = uid_from_message[index] if uid_from_message else True
        if old is not None and not explicit and old.dataset.get("StudyInstanceUID"):
            item = {**item, "StudyInstanceUID": old.dataset["StudyInstanceUID"]}
        writes.append(ItemWrite(key, order.key, action.status.value, shown, item,
                                action.final))
    notes = [n for k, n in zip(sorted(final), notes, strict=True) if k in new_keys]
    # A replacement that no longer lists an item (a procedure dropped by XO) removes it.
    for old in existing:
        if old.item_key not in new_keys and old.visible and old.item_key not in final:
            writes.append(ItemWrite(old.item_key, old.order_key, Status.DISCONTINUED.value,
                                    False, old.dataset, False))
    return Decision(_changed(writes, by_key), notes)


def _changed(writes: list[ItemWrite], by_key: dict[str, StoredItem]) -> list[ItemWrite]:
    out = []
    for w in writes:
        old = by_key.get(w.item_key)
        if old is None or (old.status, old.visible, old.dataset) != (w.status, w.visible,
                                                                     w.dataset) \
                or (w.final is not None and w.final != old.final):
            out.append(w)
    return out


# --- patients (ADT) -------------------------------------------------------------------

LIVE = frozenset({Status.SCHEDULED, Status.ARRIVED, Status.STARTED})
UPDATE_EVENTS = frozenset({"A08", "A31"})  # update patient information
MOVE_EVENTS = frozenset({"A40", "A47"})  # merge patients; change patient identifier
ARRIVE_EVENTS = frozenset({"A10"})  # patient arriving


def patient_writes(event: str, patient_id: str, attributes: dict, items: list[StoredItem],
                   visible: frozenset[Status] = DEFAULT_VISIBLE,
                   arrive: bool = False) -> list[ItemWrite]:
    """What an ADT event does to a patient's live items.

    `items` are the items of the patient the event names: for A08/A31/A10 the patient
    itself, for A40/A47 the prior identifier (MRG-1), whose items move to `patient_id`.
    """
    writes = []
    for old in items:
        if Status(old.status) not in LIVE:
            continue  # a cancelled or completed order keeps the demographics it had
        dataset = {**old.dataset, **attributes}
        status = Status(old.status)
        if event in MOVE_EVENTS:
            dataset["PatientID"] = patient_id
        elif event in ARRIVE_EVENTS and arrive and status is Status.SCHEDULED:
            status = Status.ARRIVED
        writes.append(ItemWrite(old.item_key, old.order_key, status.value, status in visible,
                                dataset))
    return _changed(writes, {i.item_key: i for i in items})
