"""Build one outbound HL7 message from a queued MPPS event and an outbound profile.

What the message can draw on (`OrderEvent`): the order's original message from the journal
(so identifiers go back exactly as the RIS sent them, namespaces and all), the identifiers
the store keeps for the order (which outlive the journal's retention), the order's worklist
items, the MPPS instance as it was at the event, and the event's ORC-1/ORC-5 codes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword

from bridge import keys
from bridge.config import RisConfig
from bridge.decoding import DecodeError, UnknownCharset, decode, lookup_charset
from bridge.mapping.rules import Scope
from bridge.message import Message, Segment, Separators, unescape
from bridge.outbound.profile import FieldRule, OutboundProfile, Source
from bridge.store import Store

SEPS = Separators()  # outbound messages always use |^~\&


class BuildError(ValueError):
    """The message cannot be built (a required value is missing, the item is gone)."""


@dataclass
class OrderEvent:
    event: str  # in_progress | completed | discontinued
    control: str  # ORC-1 for this event (ris.<event>.control)
    status: str  # ORC-5
    items: list[dict]  # the order's items the MPPS performs (datasets, keyword: value)
    mpps: dict  # DICOM JSON of the instance at the event
    mpps_uid: str
    order_message: bytes | None = None  # the raw order message, when the journal has it
    ids: dict[str, str] = field(default_factory=dict)  # kind (ORC-2...) -> key text


@dataclass
class Built:
    text: str  # segments joined by CR
    payload: bytes  # encoded in ris.charset
    control_id: str
    trace: list[str]


def gather(store: Store, order_key: str, item_keys: list[str], event: str, mpps_uid: str,
           mpps: dict, control: str, status: str) -> OrderEvent:
    """Read from the store what building needs (runs on the store's thread)."""
    items = store.items_by_keys(item_keys)
    datasets = [items[k].dataset for k in item_keys if k in items]
    if not datasets:
        raise BuildError(f"none of the order's items is in the store ({', '.join(item_keys)})")
    raw = next((r for k in item_keys if (r := store.order_message(k)) is not None), None)
    ids: dict[str, str] = {}
    for kind, value in store.order_identifiers(order_key):
        ids.setdefault(kind, value)
    return OrderEvent(event, control, status, datasets, mpps, mpps_uid, raw, ids)


# --- HL7 text ------------------------------------------------------------------------------

def escape(text: str) -> str:
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("~", "R"), ("&", "T")):
        out = out.replace(char, f"\\{code}\\")
    return out.replace("\r\n", "\\.br\\").replace("\n", "\\.br\\").replace("\r", "\\.br\\")


def reencode(raw: str, seps: Separators) -> str:
    """A raw field of another message in our separators (most senders use ours already)."""
    if seps == SEPS:
        return raw
    return "~".join(
        "^".join("&".join(escape(unescape(sub, seps)) for sub in comp.split(seps.subcomponent))
                 for comp in rep.split(seps.component))
        for rep in raw.split(seps.repetition))


def key_to_hl7(text: str) -> str:
    """Key text (keys.py: `P1^RIS`, values escaped with a backslash) as an HL7 field."""
    out: list[str] = []
    literal: list[str] = []

    def flush() -> None:
        out.append(escape("".join(literal)))
        literal.clear()

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            literal.append(text[i + 1])
            i += 2
            continue
        if c in "^&":
            flush()
            out.append(c)
        else:
            literal.append(c)
        i += 1
    flush()
    return "".join(out)


# --- sources -------------------------------------------------------------------------------

@dataclass
class _Context:
    event: OrderEvent
    item: dict
    scope: Scope | None  # the original order group (and the item's IPC), when known
    now: str


def _dicom_json_value(ds: dict, keywords: list[str]) -> str:
    node: object = ds
    for i, keyword in enumerate(keywords):
        tag = tag_for_keyword(keyword)
        element = node.get(f"{tag:08X}") if isinstance(node, dict) and tag is not None \
            else None
        values = (element or {}).get("Value") or []
        if i < len(keywords) - 1:
            node = values[0] if values else None
            continue
        texts = []
        for v in values:
            texts.append(str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v))
        return "\\".join(texts)
    return ""


def _item_value(ds: dict, keywords: list[str]) -> str:
    node: object = ds
    for keyword in keywords:
        if isinstance(node, list):
            node = node[0] if node else None
        node = node.get(keyword) if isinstance(node, dict) else None
    if node is None or isinstance(node, list | dict):
        return ""
    return str(node)


def _mpps_time(mpps: dict, which: str) -> str:
    date = _dicom_json_value(mpps, [f"PerformedProcedureStep{which}Date"])
    tm = _dicom_json_value(mpps, [f"PerformedProcedureStep{which}Time"])
    return (date + tm.split(".")[0]) if date else ""


def read_source(src: Source, ctx: _Context) -> tuple[str, bool]:
    """(value, already HL7-encoded). Text values are escaped later; `order.` and `ids.`
    values are HL7 fields and keep their components."""
    ev = ctx.event
    if src.kind == "order":
        if ctx.scope is None or src.path is None:
            return "", True
        raws = [r for r in ctx.scope.read(src.path) if r.strip()]
        return "~".join(reencode(r.strip(), ctx.scope.seps) for r in raws), True
    if src.kind == "ids":
        text = ev.ids.get(src.name, "")
        return key_to_hl7(text), True
    if src.kind == "event":
        return {"name": ev.event, "control": ev.control, "status": ev.status,
                "time": ctx.now}[src.name], False
    if src.kind == "mpps":
        if src.name == "uid":
            return ev.mpps_uid, False
        if src.name in ("start", "end"):
            return _mpps_time(ev.mpps, src.name.capitalize()), False
        return _dicom_json_value(ev.mpps, src.name.split(".")), False
    return _item_value(ctx.item, src.name.split(".")), False


# --- transforms ----------------------------------------------------------------------------

_TS = re.compile(r"^(\d{8}(?:\d{2}(?:\d{2}(?:\d{2})?)?)?)(?:\.\d+)?([+-]\d{4})?$")


def _transform(name: str, value: str, encoded: bool) -> str:
    """The value as HL7 text (escaped unless already encoded)."""
    if name == "ts":
        text = value.strip().replace(":", "")
        if re.match(r"^\d{4}-\d{2}-\d{2}", text):  # ISO dates, from hand-written values
            text = text[:10].replace("-", "") + text[10:].replace("T", "")
        m = _TS.match(text)
        return (m.group(1) + (m.group(2) or "")) if m else ""
    if encoded:
        return value
    if name == "upper":
        value = value.upper()
    elif name == "first":
        value = value.split("\\")[0]
    elif name == "xpn":
        # DICOM family^given^middle^prefix^suffix -> XPN family^given^middle^suffix^prefix
        parts = (value.split("=")[0].split("^") + [""] * 5)[:5]
        comps = [escape(p.strip()) for p in (parts[0], parts[1], parts[2], parts[4], parts[3])]
        while comps and not comps[-1]:
            comps.pop()
        return "^".join(comps)
    return escape(value)


def _evaluate(rule: FieldRule, ctx: _Context) -> tuple[str, str]:
    """The encoded value of a rule and where it came from (for the trace)."""
    if rule.value is not None:
        return escape(rule.value), "value"
    if rule.template is not None:
        out = []
        for part in rule.template:
            if isinstance(part, str):
                out.append(escape(part))
            else:
                value, encoded = read_source(part, ctx)
                out.append(_transform(rule.transform, value, encoded))
        return "".join(out).strip(), "template"
    for src in rule.sources:
        value, encoded = read_source(src, ctx)
        if rule.value_map is not None and value:
            value = rule.value_map.get(value, value if rule.map_default is None
                                       else rule.map_default)
        result = _transform(rule.transform, value, encoded)
        if result:
            return result, src.text
    if rule.default is not None:
        return escape(rule.default), "default"
    return "", "(nothing)"


# --- the message ---------------------------------------------------------------------------

def _order_scopes(raw: bytes | None, event: OrderEvent) -> tuple[list[Segment], Scope] | None:
    """The original message's order group for this order, and a scope reading it."""
    if raw is None:
        return None
    try:
        msg = Message(decode(raw))
    except (DecodeError, UnknownCharset):
        return None
    header: list[Segment] = []
    groups: list[list[Segment]] = []
    for seg in msg.segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
        else:
            header.append(seg)
    if not groups:
        return None
    wanted = set(event.ids.values())
    group = next((g for g in groups for s in g if s.name in ("ORC", "OBR")
                  for f in (2, 3) if keys.field_key(s[f], msg.seps) in wanted), groups[0])
    return group, Scope([group, header, msg.segments], msg.seps)


def _item_scope(base: tuple[list[Segment], Scope] | None, item: dict) -> Scope | None:
    """The scope for one item: its own IPC first (matched by SPS ID or accession)."""
    if base is None:
        return None
    group, scope = base
    sps = _item_value(item, ["ScheduledProcedureStepSequence", "ScheduledProcedureStepID"])
    accession = _item_value(item, ["AccessionNumber"])
    seps = scope.seps

    def same(raw: str, value: str) -> bool:
        # The item may hold the value cut to its VR (SH: 16 characters).
        sent = unescape(raw.split(seps.component)[0], seps).strip()
        return bool(value) and (sent == value or (len(value) == 16 and sent.startswith(value)))

    ipc = next((s for s in group if s.name == "IPC" and (
        same(s[4], sps) if sps else same(s[1], accession))), None)
    return Scope([[ipc] if ipc else [], *scope.levels], seps)


def _put(fields: dict[int, str], rule: FieldRule, value: str) -> None:
    t = rule.target
    if t.component is None:
        fields[t.field] = value
        return
    reps = fields.get(t.field, "").split("~")
    comps = reps[0].split("^")
    comps += [""] * (t.component - len(comps))
    if t.subcomponent is None:
        comps[t.component - 1] = value
    else:
        subs = comps[t.component - 1].split("&")
        subs += [""] * (t.subcomponent - len(subs))
        subs[t.subcomponent - 1] = value
        comps[t.component - 1] = "&".join(subs).rstrip("&")
    reps[0] = "^".join(comps).rstrip("^")
    fields[t.field] = "~".join(reps)


def build(profile: OutboundProfile, ris: RisConfig, event: OrderEvent, control_id: str,
          now: float | None = None) -> Built:
    """The message for `event`; raises BuildError when a required field stays empty."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now if now is not None
                                                         else time.time()))
    charset = lookup_charset(ris.charset)
    base = _order_scopes(event.order_message, event)
    code, trigger = profile.message_type.split("^")
    msh = ["MSH", "^~\\&", escape(ris.sending_application), escape(ris.sending_facility),
           escape(ris.receiving_application), escape(ris.receiving_facility), stamp, "",
           f"{code}^{trigger}^{profile.structure}", control_id, ris.processing_id,
           profile.version, "", "", "", "", "", charset.hl7]
    segments = ["MSH|" + "|".join(msh[1:])]
    trace: list[str] = []
    for name, per_item in profile.segments:
        rules = sorted((r for r in profile.rules if r.target.segment == name),
                       key=lambda r: (r.target.component is not None,
                                      r.target.subcomponent is not None))
        for index, item in enumerate(event.items if per_item else event.items[:1]):
            ctx = _Context(event, item, _item_scope(base, item), stamp)
            fields: dict[int, str] = {}
            for rule in rules:
                value, source = _evaluate(rule, ctx)
                if not value and rule.required:
                    raise BuildError(f"{rule.target.text} is required and stays empty "
                                     f"({rule.where})")
                _put(fields, rule, value)
                label = f"{rule.target.text}[{index + 1}]" if per_item else rule.target.text
                trace.append(f"{label} = {value!r}  <- {source}"
                             + (f" | {rule.transform}" if rule.transform != "text" else ""))
            if not any(fields.values()):
                continue  # an optional segment with nothing to say
            last = max(f for f, v in fields.items() if v)
            segments.append("|".join([name, *(fields.get(i, "") for i in range(1, last + 1))]))
    text = "\r".join(segments) + "\r"
    return Built(text, text.encode(charset.codec, errors="replace"), control_id, trace)
