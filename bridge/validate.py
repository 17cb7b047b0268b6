"""Structure validation: does a message follow its HL7 version's message structure?

The structures (segment order, groups, cardinality, choices) and the required fields come
from hl7apy's tables for each HL7 version. hl7apy's own parser and validator are not used
on messages: in strict mode they refuse most real feeds outright (a Z segment, a date with
a time zone, a repeated component), and they treat choice groups as sequences. Here each
structure becomes a small automaton over segment names, which also tells *where* a
message goes wrong: the first segment the structure cannot accept, or the segment that is
missing at the end.

Used by the `validate` command and, per sender, by the listener's strict mode (through
`structure_error`, run on a worker thread: about a millisecond per message).
"""

from __future__ import annotations

import functools
import importlib
from collections import deque
from dataclasses import dataclass, field

from bridge import ack as acks
from bridge.ack import AckError, ErrorLocation
from bridge.config import ConfigError, MllpConfig
from bridge.decoding import DecodeError, UnknownCharset, decode
from bridge.message import Message

# Events whose structure is not TYPE_EVENT, for senders that leave MSH-9.3 empty
# (HL7 table 0354, the events an imaging bridge meets).
_EVENT_STRUCTURES = {
    "ADT^A04": "ADT_A01", "ADT^A08": "ADT_A01", "ADT^A13": "ADT_A01",
    "ADT^A07": "ADT_A06", "ADT^A10": "ADT_A09", "ADT^A11": "ADT_A09",
    "ADT^A12": "ADT_A09", "ADT^A40": "ADT_A39", "ADT^A41": "ADT_A39",
    "ADT^A42": "ADT_A39", "ADT^A47": "ADT_A30", "ADT^A49": "ADT_A30",
    "ACK^O01": "ACK",
}


@dataclass(frozen=True)
class Problem:
    """One structural problem, located as an HL7 ERR-2 would locate it."""

    code: int  # HL7 table 0357
    text: str
    segment: str = "MSH"
    sequence: int = 1  # the occurrence of that segment name in the message
    field: int = 0  # 0: the segment as a whole
    position: int | None = None  # 1-based index of the segment in the message

    @property
    def location(self) -> ErrorLocation:
        return ErrorLocation(self.segment, self.field, self.sequence)

    def __str__(self) -> str:
        where = f"segment {self.position} " if self.position else ""
        what = f"{self.segment}-{self.field}" if self.field else self.segment
        return f"{where}{what}: {self.text}"


@dataclass
class Report:
    structure: str  # e.g. "ORM_O01 (HL7 2.3.1)"; "" when not known
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- structures as automata ---------------------------------------------------------------

@dataclass
class _Nfa:
    """States are ints; edges[s] lists (segment name or None for epsilon, target)."""

    edges: list[list[tuple[str | None, int]]] = field(default_factory=list)
    start: int = 0
    accept: int = 0

    def state(self) -> int:
        self.edges.append([])
        return len(self.edges) - 1

    def edge(self, a: int, b: int, label: str | None = None) -> None:
        self.edges[a].append((label, b))

    def closure(self, states: set[int]) -> frozenset[int]:
        todo, seen = list(states), set(states)
        while todo:
            s = todo.pop()
            for label, t in self.edges[s]:
                if label is None and t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        return self.closure({t for s in states for label, t in self.edges[s] if label == name})

    def expected(self, states: frozenset[int]) -> list[str]:
        return sorted({label for s in states for label, _ in self.edges[s] if label})

    def shortest_completion(self, states: frozenset[int]) -> list[str]:
        """The fewest segments that would complete the message from `states`."""
        queue: deque[tuple[int, list[str]]] = deque((s, []) for s in states)
        seen = set(states)
        while queue:
            s, path = queue.popleft()
            if s == self.accept:
                return path
            for label, t in self.edges[s]:
                if t in seen:
                    continue
                seen.add(t)
                item = (t, [*path, label] if label else path)
                # epsilon moves cost nothing: explore them first
                if label is None:
                    queue.appendleft(item)
                else:
                    queue.append(item)
        return []


def _build(nfa: _Nfa, ref: tuple, kind: str, name: str) -> tuple[int, int]:
    """A fragment for one element of an hl7apy reference (a segment or a group)."""
    if kind == "SEG":
        a, b = nfa.state(), nfa.state()
        nfa.edge(a, b, name)
        return a, b
    a, b = nfa.state(), nfa.state()
    children = ref[1]
    if ref[0] == "choice":
        # hl7apy marks each alternative (1, 1): exactly one of them is present.
        for child in children:
            ca, cb = _build(nfa, child[1], child[3], child[0])
            nfa.edge(a, ca)
            nfa.edge(cb, b)
        return a, b
    current = a
    for child in children:
        ca, cb = _repeat(nfa, child)
        nfa.edge(current, ca)
        current = cb
    nfa.edge(current, b)
    return a, b


def _repeat(nfa: _Nfa, child: tuple | list) -> tuple[int, int]:
    """A child with its cardinality (min, max; max -1 is unbounded)."""
    name, ref, (low, high), kind = child[0], child[1], child[2], child[3]
    a = nfa.state()
    current = a
    for _ in range(low):
        ca, cb = _build(nfa, ref, kind, name)
        nfa.edge(current, ca)
        current = cb
    end = nfa.state()
    if high == -1:
        ca, cb = _build(nfa, ref, kind, name)
        nfa.edge(current, ca)
        nfa.edge(cb, ca)  # again and again
        nfa.edge(cb, end)
    else:
        for _ in range(max(0, high - low)):
            ca, cb = _build(nfa, ref, kind, name)
            nfa.edge(current, ca)
            nfa.edge(current, end)  # or stop here
            current = cb
    nfa.edge(current, end)
    return a, end


@functools.lru_cache(maxsize=256)
def _structure(name: str, version: str) -> _Nfa | None:
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    try:
        ref = load_reference(name, "Message", version)
    except ChildNotFound:
        return None
    nfa = _Nfa()
    nfa.start, nfa.accept = _build(nfa, ref, "GRP", name)
    return nfa


@functools.lru_cache(maxsize=1024)
def _required_fields(segment: str, version: str) -> tuple[tuple[int, str], ...] | None:
    """(field number, long name) of the fields hl7apy marks required; None: unknown segment."""
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    try:
        ref = load_reference(segment, "Segment", version)
    except ChildNotFound:
        return None
    required = []
    for child in ref[1]:
        name, (low, _high) = child[0], child[2]
        number = int(name.rsplit("_", 1)[1])
        if low >= 1 and not (segment == "MSH" and number <= 2):
            required.append((number, str(child[1][3] or "").replace("_", " ").lower()))
    return tuple(required)


def supported_versions() -> list[str]:
    from hl7apy import SUPPORTED_LIBRARIES

    return sorted(SUPPORTED_LIBRARIES)


def _version(msg: Message) -> str:
    return msg.header(12).strip()


def _structure_name(msg: Message, version: str) -> list[str]:
    """Candidate structure names for the message, best first."""
    code, event, structure = (msg.header(9, i).strip().upper() for i in (1, 2, 3))
    names = [structure] if structure else []
    if code and event:
        names.append(f"{code}_{event}")
        alias = _EVENT_STRUCTURES.get(f"{code}^{event}")
        if alias:
            names.append(alias)
    return names


# --- validation ---------------------------------------------------------------------------

def check_message(msg: Message) -> Report:
    """Every structural problem of a decoded message (empty list: it follows its structure)."""
    version = _version(msg)
    if version not in supported_versions():
        return Report("", [Problem(203, f"HL7 version {version or '(empty)'} is not one the "
                                        "validator knows", "MSH", 1, 12, 1)])
    names = _structure_name(msg, version)
    nfa, structure = None, ""
    for name in names:
        nfa = _structure(name, version)
        if nfa is not None:
            structure = name
            break
    if nfa is None:
        shown = msg.message_type or "(empty)"
        return Report("", [Problem(200, f"HL7 {version} has no message structure for {shown}",
                                   "MSH", 1, 9, 1)])
    report = Report(f"{structure} (HL7 {version})")
    report.problems += _check_order(nfa, msg, structure, version)
    report.problems += _check_fields(msg, version)
    return report


def _check_order(nfa: _Nfa, msg: Message, structure: str, version: str) -> list[Problem]:
    problems = []
    states = nfa.closure({nfa.start})
    counts: dict[str, int] = {}
    last = ("MSH", 1, 1)
    for position, seg in enumerate(msg.segments, start=1):
        name = seg.name
        counts[name] = counts.get(name, 0) + 1
        last = (name, counts[name], position)
        if name.startswith("Z"):
            continue  # site-defined segments may go anywhere (HL7 2.x, chapter 2)
        after = nfa.step(states, name)
        if after:
            states = after
            continue
        expected = nfa.expected(states)
        # One missing segment explains most errors: report it, and carry on after it.
        missing = next((label for label in expected
                        if nfa.step(nfa.step(states, label), name)), None)
        if missing is not None:
            problems.append(Problem(acks.SEGMENT_SEQUENCE_ERROR,
                                    f"required segment {missing} is missing before {name}",
                                    missing, 1, 0, position))
            states = nfa.step(nfa.step(states, missing), name)
            continue
        hint = f"; expected {', '.join(expected)}" if expected else ""
        problems.append(Problem(acks.SEGMENT_SEQUENCE_ERROR,
                                f"{name} is not allowed here in {structure}{hint}",
                                name, counts[name], 0, position))
        # resynchronise: carry on as if the segment were not there
    if nfa.accept not in states:
        missing = nfa.shortest_completion(states)
        first = missing[0] if missing else "?"
        problems.append(Problem(acks.SEGMENT_SEQUENCE_ERROR,
                                f"required segment {first} is missing (the message ends "
                                f"after segment {last[2]}, {last[0]})",
                                first, 1, 0, None))
    return problems


def _check_fields(msg: Message, version: str) -> list[Problem]:
    problems = []
    counts: dict[str, int] = {}
    seps = msg.seps
    # A field of separators only ("^^~") carries nothing.
    empty_chars = seps.component + seps.repetition + seps.subcomponent + " "
    for position, seg in enumerate(msg.segments, start=1):
        counts[seg.name] = counts.get(seg.name, 0) + 1
        required = _required_fields(seg.name, version) if not seg.name.startswith("Z") \
            else ()
        for number, long_name in required or ():
            if not seg[number].strip(empty_chars):
                problems.append(Problem(acks.REQUIRED_FIELD_MISSING,
                                        f"required field ({long_name}) is empty",
                                        seg.name, counts[seg.name], number, position))
    return problems


def check_bytes(raw: bytes, default_charset: str = "8859/1") -> Report:
    """Decode, then check: the `validate` command's entry point for one message."""
    try:
        msg = Message(decode(raw, default_charset=default_charset))
    except DecodeError as exc:
        return Report("", [Problem(acks.SEGMENT_SEQUENCE_ERROR, str(exc), "MSH", 1, 0, 1)])
    except UnknownCharset as exc:
        return Report("", [Problem(acks.TABLE_VALUE_NOT_FOUND,
                                   f"unknown character set {exc} in MSH-18", "MSH", 1, 18, 1)])
    return check_message(msg)


def structure_error(msg: Message) -> AckError | None:
    """For strict mode: the first problem as an ACK error, or None when the message is fine."""
    report = check_message(msg)
    if report.ok:
        return None
    first = report.problems[0]
    more = len(report.problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return AckError(first.code, f"structure: {first}{suffix}", first.location)


def strict_for(cfg: MllpConfig, msg: Message) -> bool:
    """Whether `mllp.strict` or `mllp.strict_senders` (MSH-3 values) applies to `msg`."""
    if cfg.strict:
        return True
    return bool(cfg.strict_senders) and msg.header(3).strip() in {
        s.strip() for s in cfg.strict_senders}


def warm_up() -> None:
    """Import hl7apy's tables once, at start-up, rather than on the first strict message."""
    try:
        from hl7apy import SUPPORTED_LIBRARIES
    except ImportError as exc:
        raise ConfigError("mllp.strict and mllp.strict_senders need hl7apy: pip install "
                          "'hl7-worklist-bridge[strict]'") from exc

    for module in SUPPORTED_LIBRARIES.values():
        importlib.import_module(module)
