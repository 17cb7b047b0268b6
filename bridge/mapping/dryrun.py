"""A dry run of the mapping on one message, for `translate`: what the bridge would write.

The message goes through the same steps as in the processor (decode by MSH-18 or the
profile's charset, select the profile, map, add SpecificCharacterSet), without the store.
Output: DICOM JSON (PS3.18 F.2), a dcmdump-like listing, and the trace of every attribute.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bridge.completeness import STEP_SEQUENCE, check_order, gaps, tidy
from bridge.decoding import DecodeError, UnknownCharset, decode
from bridge.dicomfile import to_dataset
from bridge.lifecycle import MOVE_EVENTS, Effect, OrderControl, UnknownOrderControl
from bridge.mapping.engine import MappedMessage, NoProfile, apply_profile, select_profile
from bridge.mapping.loader import Profile
from bridge.mapping.patient import PatientProfile, apply_patient_profile
from bridge.mapping.rules import MappingFieldError, Trace
from bridge.message import Message


class MessageError(Exception):
    """The message cannot be translated: not HL7, unknown charset, no profile, a value
    the profile requires is missing."""


@dataclass
class DryRun:
    profile: Profile
    mapped: MappedMessage
    charset: str  # DICOM SpecificCharacterSet given to the items
    notes: list[str] = field(default_factory=list)  # per order: what the bridge would do
    failed: bool = False  # an order that needs items could not be mapped


def translate(raw: bytes, profiles: list[Profile], *, default_charset: str = "8859/1",
              detect_utf8: bool = True, control: OrderControl | None = None) -> DryRun:
    """Map one message; raise MessageError when the bridge would answer AR or AE for it.

    `control` is the order-control table in force (the configured one; default table if
    None), so the notes say what the bridge would do with each order.
    """
    control = control or OrderControl()
    try:
        msg = Message(decode(raw, default_charset=default_charset, detect_utf8=detect_utf8))
        profile = select_profile(profiles, msg)
        if profile.charset:
            msg = Message(decode(raw, override=profile.charset, detect_utf8=False))
    except (DecodeError, NoProfile) as exc:
        raise MessageError(str(exc)) from exc
    except UnknownCharset as exc:
        raise MessageError(f"unknown character set {exc} in MSH-18") from exc
    if isinstance(profile, PatientProfile):
        return _patient_run(profile, msg)
    try:
        mapped = apply_profile(profile, msg, trace=True)
    except MappingFieldError as exc:
        raise MessageError(_field_error(exc)) from exc
    run = DryRun(profile, mapped, msg.decoded.charset.dicom)
    if not mapped.orders:
        raise MessageError(f"no {profile.group_segment} segment: the message carries no order")
    for order in mapped.orders:
        for item in order.items:
            if run.charset:
                item["SpecificCharacterSet"] = run.charset
        head = f"order {order.group_index} ({order.key}): ORC-1 {order.control!r}, " \
               f"ORC-5 {order.status!r}"
        try:
            action = control.action(msg.header(3), order.control, order.status)
        except UnknownOrderControl as exc:
            run.notes.append(f"{head}: {exc}; the bridge answers AE")
            action = None
        gap = check_order(profile.attributes, order) if order.error is None else None
        # The processor's rule: an item a worklist peer would skip gets AE, not AA.
        if gap is not None and (action is None or action.effect is Effect.REPLACE):
            run.failed = True
            run.notes.append(f"{head}: {_field_error(gap)}; the bridge answers AE")
            continue
        if order.error is not None:
            if action is None or action.effect is Effect.REPLACE:
                run.failed = True
                run.notes.append(f"{head}: {_field_error(order.error)}")
            else:
                run.notes.append(f"{head}: {action.status.value}, needs no items "
                                 f"({order.error})")
        elif action is not None:
            run.notes.append(f"{head}: {action.effect.value}, {action.status.value}, "
                             f"{len(order.items)} item(s)")
    return run


def _patient_run(profile: PatientProfile, msg: Message) -> DryRun:
    """An ADT message: the updates it would make to its patient's live items."""
    try:
        updates = apply_patient_profile(profile, msg)
    except MappingFieldError as exc:
        raise MessageError(_field_error(exc)) from exc
    run = DryRun(profile, MappedMessage(profile.name, []), msg.decoded.charset.dicom)
    event = msg.header(9, 2)
    for u in updates:
        who = f"patient {u.patient_id!r}"
        if event in MOVE_EVENTS:
            who = f"items of patient {u.prior_id!r} move to {u.patient_id!r}"
        values = ", ".join(f"{k}={v!r}" for k, v in u.attributes.items()) or "nothing"
        run.notes.append(f"{event} {who}: live items get {values}")
    return run


def worklist_gaps(item: dict) -> list[str]:
    """Why wlmscpfs would ignore this item (empty: it would serve it); see completeness.py."""
    item = copy.deepcopy(item)
    tidy(item)
    return [g.text for g in gaps(item)]


def _field_error(exc: MappingFieldError) -> str:
    where = f" (rule at {exc.where})" if exc.where else ""
    return f"{exc}{where}"


def datasets(run: DryRun) -> list[Dataset]:
    return [to_dataset(item) for order in run.mapped.orders for item in order.items]


def as_json(run: DryRun) -> str:
    """The items as a PS3.18 F.2 JSON array, one object per worklist item."""
    return json.dumps([_sorted(ds.to_json_dict()) for ds in datasets(run)], indent=2,
                      ensure_ascii=False)


def _sorted(node: dict) -> dict:
    """Tags in ascending order, as in a DICOM file, also inside sequence items."""
    out = {}
    for tag in sorted(node):
        element = node[tag]
        if element.get("vr") == "SQ" and "Value" in element:
            element = {**element, "Value": [_sorted(i) for i in element["Value"]]}
        out[tag] = element
    return out


def _dump_dataset(ds: Dataset, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for elem in ds:
        tag = f"({elem.tag.group:04x},{elem.tag.element:04x})"
        if elem.VR == "SQ":
            value = f"(Sequence with {len(elem.value)} item{'s' if len(elem.value) != 1 else ''})"
            out.append(f"{pad}{tag} SQ {value:<40} # {elem.keyword}")
            seq: Sequence = elem.value
            for item in seq:
                out.append(f"{pad}  (fffe,e000) na (Item)")
                _dump_dataset(item, indent + 2, out)
            continue
        if elem.value in (None, "") or elem.VM == 0:
            value = "(no value available)"
        else:
            values = elem.value if elem.VM > 1 else [elem.value]
            value = "[" + "\\".join(str(v) for v in values) + "]"
        out.append(f"{pad}{tag} {elem.VR} {value:<40} # {elem.keyword}")


def as_dump(run: DryRun) -> str:
    """A dcmdump-like listing of each item, headed by its order."""
    out = [f"# profile {run.profile.name} ({run.profile.file})"]
    for order in run.mapped.orders:
        out.append(f"# order {order.group_index}: key {order.key!r}, ORC-1 {order.control!r}, "
                   f"ORC-5 {order.status!r}, {len(order.items)} item(s)")
        for i, item in enumerate(order.items, start=1):
            out.append(f"# item {i}")
            _dump_dataset(to_dataset(item), 0, out)
    return "\n".join(out)


def as_trace(run: DryRun) -> str:
    """Per attribute: the value, the HL7 path (or constant) it came from, the transforms."""
    out = []
    for order in run.mapped.orders:
        for i, trace in enumerate(order.traces, start=1):
            out.append(f"# order {order.group_index}, item {i}")
            out.extend(_trace_lines(trace))
    return "\n".join(out)


def _trace_lines(trace: Trace) -> list[str]:
    lines = []
    for e in trace.entries:
        value = "(left out)" if e.value is None else repr(e.value) \
            if not isinstance(e.value, list) else f"{len(e.value)} item(s) {e.value}"
        steps = list(e.transforms)
        if e.required:
            steps.append("required")
        elif e.value in ("", None) and e.source != "when" and e.source != "completeness":
            steps.append("optional, empty")
        flags = f" | {', '.join(steps)}" if steps else ""
        lines.append(f"{e.attribute} = {value}  <- {e.source}{flags}")
        if e.inputs:
            # A derived UID changes when any of these does (docs/mapping.md, UIDs).
            lines.append(f"    derived from: {e.inputs}")
        lines.extend(f"    warning: {w}" for w in e.warnings)
    return lines


def empty_attributes(item: dict) -> list[str]:
    """The worklist attributes of an item that came out empty (step attributes included)."""
    out = [k for k, v in item.items() if v in ("", None)]
    steps = item.get(STEP_SEQUENCE)
    if isinstance(steps, list):
        for i, step in enumerate(steps):
            out += [f"{STEP_SEQUENCE}[{i}].{k}" for k, v in step.items() if v in ("", None)]
    return out


def report(run: DryRun, source: str, trace: bool = False) -> str:
    """What `translate` prints on standard error: the profile, what the bridge would do,
    the warnings, the trace if asked, and last the attributes that came out empty."""
    out = [f"# {source}: profile {run.profile.name}"]
    out += [f"# {note}" for note in run.notes]
    out += [f"# warning: {w}" for w in run.mapped.warnings]
    if trace:
        out.append(as_trace(run))
    for order in run.mapped.orders:
        for i, item in enumerate(order.items, start=1):
            empty = empty_attributes(item)
            out.append(f"# order {order.group_index}, item {i}: empty: "
                       f"{', '.join(empty) if empty else 'none'}")
    return "\n".join(out)


def check_report(profiles: list) -> list[str]:
    """What `check-mapping` prints for valid profiles: one line each, then its warnings."""
    out = []
    for p in profiles:
        base = f", extends {p.extends}" if p.extends else ""
        out.append(f"{p.file}: profile {p.name} ok ({', '.join(p.match.message_types)}{base})")
        out += [f"  warning: {w}" for w in getattr(p, "warnings", [])]
    return out
