"""Applying a profile to a message: order groups in, worklist items out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bridge import keys
from bridge.keys import order_identifiers
from bridge.mapping.loader import Profile
from bridge.mapping.rules import MappingFieldError, Scope, Trace, evaluate_rules
from bridge.message import Message, Segment, SegmentList

# A worklist item: DICOM keyword -> string value, or a list of such dicts for sequences.
# The same shape is Orthanc's "Tags" body, and becomes a pydicom Dataset in dicomfile.py.
Item = dict[str, object]


@dataclass
class MappedOrder:
    """One order group (ORC and its segments) and the items it schedules."""

    key: str
    control: str  # ORC-1
    status: str  # ORC-5
    items: list[Item]
    group_index: int  # 1-based position of the group in the message, for ERR locations
    # Why the items could not be mapped. Only an order that creates or replaces items needs
    # them: a cancel or a status change names its order by key and is applied without.
    error: MappingFieldError | None = None
    traces: list[Trace] = field(default_factory=list)  # one per item, when asked for
    # Every identifier of the order the key rule reads, as (kind, key text), the key first:
    # a cancel carrying only the filler number finds an order keyed by its placer number.
    identifiers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class MappedMessage:
    profile: str
    orders: list[MappedOrder]
    traces: list[Trace] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [w for t in self.traces for w in t.warnings]

    @property
    def specific_warnings(self) -> list[str]:
        """What is specific to this message (its journal entry keeps these); recurring
        warnings of a rule are counted per profile and rule instead (recurring.py)."""
        return [w for t in self.traces for w in t.specific_warnings]


class NoProfile(LookupError):
    """No mapping profile matches the message's type and sender."""


def select_profile(profiles: list[Profile], msg: Message) -> Profile:
    app, facility = msg.header(3), msg.header(4)
    message_type, version = msg.message_type, msg.version  # read once, not per profile
    best, best_score = None, -1
    for profile in profiles:
        score = profile.match.score(message_type, app, facility, version)
        if score > best_score:
            best, best_score = profile, score
    if best is None:
        raise NoProfile(f"no mapping profile for {msg.message_type} from {app}/{facility}")
    return best


def _groups(segments: list[Segment], start: str) -> tuple[list[Segment], list[list[Segment]]]:
    """Split into the segments before the first group and the groups themselves."""
    header: list[Segment] = []
    groups: list[list[Segment]] = []
    for seg in segments:
        if seg.name == start:
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
        else:
            header.append(seg)
    # Every group's rules look into the header: indexed, not scanned each time.
    return SegmentList(header), groups


def apply_profile(profile: Profile, msg: Message, *, trace: bool | Literal["warnings"] = False,
                  facts: dict[str, str] | None = None,
                  pause: Callable[[], None] | None = None) -> MappedMessage:
    """Map every order group of `msg`.

    `trace`: True gives each item a full Trace (translate, the console); "warnings" one
    with the entries that carry a warning only (the processor: the same warnings, for less
    CPU per message); False none.

    Raises MappingFieldError when an order's key, control or status cannot be read; a missing
    required item value is kept on the order (`MappedOrder.error`) for the caller to judge.
    """
    header, groups = _groups(msg.segments, profile.group_segment)
    facts = {"sender": f"{msg.header(3)}|{msg.header(4)}", **(facts or {})}
    result = MappedMessage(profile=profile.name, orders=[])
    for index, group in enumerate(groups, start=1):
        group_scope = Scope([group, header, msg.segments], msg.seps, facts, profile.uid_root,
                            profile.backslash)
        try:
            key = profile.order_key.evaluate(group_scope, None)
            identifiers = order_identifiers(profile.order_key, group_scope)
            control = profile.order_control.evaluate(group_scope, None)
            status = profile.order_status.evaluate(group_scope, None)
        except MappingFieldError as exc:
            exc.group_index = index  # the ERR names this group's segment
            raise
        # Key text that no escaped separator can make ambiguous (keys.py).
        key = identifiers[0][1] if identifiers else keys.escape(str(key))
        if profile.item_segment:
            item_levels = [[s] for s in group if s.name == profile.item_segment] or [[]]
        else:
            item_levels = [[]]
        items: list[Item] = []
        traces: list[Trace] = []
        error = None
        for level in item_levels:
            t = Trace(warnings_only=trace == "warnings") if trace else None
            # Without an item segment the item's scope is the group's: reuse it and the
            # values the order key already read (ORC-2, OBR-2 ...), not a second index.
            scope = group_scope if not level else Scope(
                [level, group, header, msg.segments], msg.seps, facts, profile.uid_root,
                profile.backslash)
            try:
                items.append(evaluate_rules(profile.attributes, scope, t))
            except MappingFieldError as exc:
                error, items = exc, []
                break
            if t is not None:
                traces.append(t)
        result.traces.extend(traces)
        result.orders.append(
            MappedOrder(key, str(control), str(status), items, index, error, traces,
                        identifiers))
        if pause is not None:
            pause()  # after each group: a worker thread lets other threads run (processor)
    return result
