"""HL7 v2 message access in the notation integrators use: ``PID-3.4.1``, ``OBR-4.2``.

A message is split into segments and fields once; repetitions, components and subcomponents
are split only when a path asks for them. Values come back raw (escaped); `unescape` turns
them into text. python-hl7 (``hl7.parse``) is the reference this module is tested against;
we do not use it on the hot path because it costs about 0.6 ms per order here, against a few
microseconds for this lazy split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from bridge.decoding import DecodedMessage


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @cached_property
    def characters(self) -> str:
        """All five, for a search of any of them (keys.py); worked out once."""
        return self.field + self.component + self.repetition + self.escape + \
            self.subcomponent


class Segment:
    """One segment: ``seg[n]`` is field n as raw text ("" when absent), HL7 numbering.

    `sequence` is its occurrence among the message's segments of the same name (ERR-2.2:
    the second OBR is ``OBR^2``); `position` its 0-based index in the message.
    """

    __slots__ = ("_fields", "name", "position", "sequence")

    def __init__(self, text: str, seps: Separators, sequence: int = 1, position: int = 0):
        self._fields = text.split(seps.field)
        self.name = self._fields[0]
        self.sequence = sequence
        self.position = position
        if self.name == "MSH":
            # MSH-1 is the field separator itself, so MSH-n sits at index n - 1.
            self._fields.insert(1, seps.field)

    def __getitem__(self, n: int) -> str:
        return self._fields[n] if 0 < n < len(self._fields) else ""

    def __len__(self) -> int:
        return len(self._fields) - 1

    def __repr__(self) -> str:
        return f"Segment({self.name}, {len(self)} fields)"


class SegmentList(list[Segment]):
    """Segments with an index by name, so that finding "the OBR" costs no scan of a message
    with thousands of groups. Built once; not to be modified afterwards."""

    def __init__(self, segments: list[Segment],
                 by_name: dict[str, list[Segment]] | None = None):
        """`by_name`: the index, when the caller built it along with the list (Message)."""
        super().__init__(segments)
        if by_name is None:
            by_name = {}
            for seg in segments:
                by_name.setdefault(seg.name, []).append(seg)
        self.by_name = by_name


def named(segments: list[Segment], name: str) -> list[Segment]:
    """The segments called `name`, in message order."""
    if isinstance(segments, SegmentList):
        return segments.by_name.get(name, [])
    return [s for s in segments if s.name == name]


def has_segment(segments: list[Segment], name: str) -> bool:
    if isinstance(segments, SegmentList):
        return name in segments.by_name
    return any(s.name == name for s in segments)


DEFAULT_SEPARATORS = Separators()


# (MSH-1, MSH-2) -> its Separators: one object per set a sender uses, made once (and with
# it what is worked out per set, such as `characters`). Bounded: MSH-2 is the sender's.
_DECLARED: dict[tuple[str, str], Separators] = {}
_DECLARED_MAX = 64


def declared_separators(field: str, msh2: str) -> Separators:
    """The separators MSH-1 and MSH-2 declare; HL7's defaults for those MSH-2 leaves out
    (``MSH|^|`` declares only the component separator). A fifth MSH-2 character (v2.7
    truncation) is not a separator we split on."""
    seps = _DECLARED.get((field, msh2))
    if seps is None:
        seps = _declared_separators(field, msh2)
        if len(_DECLARED) < _DECLARED_MAX:
            _DECLARED[(field, msh2)] = seps
    return seps


def _declared_separators(field: str, msh2: str) -> Separators:
    d = DEFAULT_SEPARATORS
    return Separators(field=field, component=msh2[0:1] or d.component,
                      repetition=msh2[1:2] or d.repetition, escape=msh2[2:3] or d.escape,
                      subcomponent=msh2[3:4] or d.subcomponent)


# Whitespace a pasted feed puts before a segment ID; never part of the ID.
_INDENT = " \t"


class Message:
    """A decoded HL7 message as a list of segments."""

    def __init__(self, decoded: DecodedMessage):
        self.decoded = decoded
        text = decoded.text
        # MSH-2 ends at the next field separator (or the segment's end); read what it
        # declares instead of fixed offsets, which took data for separators.
        field = text[3]
        msh2 = text[4:].split("\r", 1)[0].split(field, 1)[0]
        self.seps = declared_separators(field, msh2)
        segments: list[Segment] = []
        by_name: dict[str, list[Segment]] = {}  # the SegmentList's index, built here
        seps = self.seps
        for line in text.split("\r"):
            line = line.lstrip(_INDENT)
            if not line.strip():
                continue
            seg = Segment(line, seps, position=len(segments))
            same = by_name.get(seg.name)
            if same is None:
                same = by_name[seg.name] = []
            same.append(seg)
            seg.sequence = len(same)
            segments.append(seg)
        self.segments = SegmentList(segments, by_name)
        # MSH values asked for by every stage (keys, profile selection, mapping, ACK): read
        # once. The segments are never changed after this point.
        self._headers: dict[tuple[int, int], str] = {}

    def first(self, name: str) -> Segment | None:
        found = named(self.segments, name)
        return found[0] if found else None

    def group(self, name: str, index: int) -> list[Segment]:
        """Order group `index` (1-based): the index-th `name` segment up to the next one."""
        heads = named(self.segments, name)
        if not 0 < index <= len(heads):
            return []
        end = heads[index].position if index < len(heads) else len(self.segments)
        return self.segments[heads[index - 1].position:end]

    def locate(self, path: Path, group_name: str = "", group_index: int = 0) -> Segment | None:
        """The segment a path in order group `group_index` reads (the group's own, else the
        message's, as mapping scopes look), for the ERR location of a failure."""
        levels = [self.group(group_name, group_index)] if group_name and group_index else []
        for level in [*levels, self.segments]:
            if has_segment(level, path.segment):
                chosen = select_segments(level, path, self.seps)
                return chosen[0] if chosen else named(level, path.segment)[0]
        return None

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    # Header values every stage needs; all raw-unescaped text.
    def header(self, field: int, component: int = 1) -> str:
        value = self._headers.get((field, component))
        if value is None:
            value = unescape(split_component(self.msh[field], component, self.seps), self.seps)
            self._headers[(field, component)] = value
        return value

    @property
    def control_id(self) -> str:
        return self.header(10)

    @property
    def message_type(self) -> str:
        """MSH-9 as ``ORM^O01`` (the structure component is left out)."""
        code, event = self.header(9, 1), self.header(9, 2)
        return f"{code}^{event}" if event else code

    @property
    def version(self) -> str:
        return self.header(12)


def split_component(raw_field: str, component: int, seps: Separators) -> str:
    """Component n (1-based) of the first repetition of a raw field."""
    rep = raw_field.split(seps.repetition, 1)[0]
    parts = rep.split(seps.component)
    return parts[component - 1] if component <= len(parts) else ""


# --- escapes -----------------------------------------------------------------------------

_HEX = re.compile(r"^[0-9A-Fa-f]+$")


def unescape(raw: str, seps: Separators) -> str:
    """Decode HL7 escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\, \\.br\\.

    Highlighting (\\H\\, \\N\\) and other formatting escapes are dropped; an escape this
    function does not know, or an unterminated one, is kept as written (real feeds carry
    stray backslashes, such as DICOM multi-value delimiters).
    """
    esc = seps.escape
    if esc not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != esc:
            out.append(c)
            i += 1
            continue
        end = raw.find(esc, i + 1)
        if end == -1:
            out.append(raw[i:])
            break
        code = raw[i + 1:end]
        simple = {"F": seps.field, "S": seps.component, "T": seps.subcomponent,
                  "R": seps.repetition, "E": esc}
        if code in simple:
            out.append(simple[code])
        elif code in ("H", "N"):
            pass
        elif code == ".br":
            out.append("\r\n")
        elif code[:1] == "X" and len(code) > 1 and len(code) % 2 == 1 and _HEX.match(code[1:]):
            # Hex bytes: interpret single bytes as Latin-1, the usual intent for \X..\.
            out.append(bytes.fromhex(code[1:]).decode("latin-1"))
        elif code[:1] == "." and code[1:3].isalpha():
            pass  # formatted-text commands (.sp, .in, .ce ...) carry no characters
        else:
            out.append(raw[i:end + 1])
        i = end + 1
    return "".join(out)


# --- paths -------------------------------------------------------------------------------


class PathError(ValueError):
    """A path that does not follow the SEG-F.C.S notation."""


_PATH = re.compile(
    r"""^(?P<seg>[A-Z][A-Z0-9]{2})
        (?:\[(?P<segsel>[^\]]+)\])?
        -(?P<field>\d+)
        (?:\[(?P<repsel>[^\]]+)\])?
        (?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Selector:
    """Which occurrence: a 1-based index, every one ("*"), or the one whose `where` equals
    `value` (for a segment selector, `where` is a ``F.C`` path inside the segment; for a
    repetition selector, a component number)."""

    index: int | None = None
    every: bool = False
    where: tuple[int, ...] = ()
    value: str = ""

    @classmethod
    def parse(cls, text: str | None, path: str) -> Selector | None:
        if text is None:
            return None
        text = text.strip()
        if text == "*":
            return cls(every=True)
        if text.isdigit() and int(text) > 0:
            return cls(index=int(text))
        if "=" in text:
            where, value = text.split("=", 1)
            nums = where.strip().split(".")
            if all(p.isdigit() and int(p) > 0 for p in nums) and len(nums) <= 3:
                return cls(where=tuple(int(p) for p in nums), value=value.strip())
        raise PathError(f"{path}: [{text}] is not an index, '*' or 'N=value'")


@dataclass(frozen=True)
class Path:
    """A parsed path such as ``PID-3[5=MR].1`` or ``OBX[3.2=Body Weight]-5``."""

    text: str
    segment: str
    field: int
    component: int | None = None
    subcomponent: int | None = None
    segment_sel: Selector | None = None
    repetition_sel: Selector | None = None

    @classmethod
    def parse(cls, text: str) -> Path:
        m = _PATH.match(text.strip())
        if not m:
            raise PathError(
                f"{text!r} is not an HL7 path: expected SEG-F, SEG-F.C or SEG-F.C.S "
                "(for example PID-3.1)")
        field = int(m["field"])
        comp = int(m["comp"]) if m["comp"] else None
        sub = int(m["sub"]) if m["sub"] else None
        if field < 1 or (comp is not None and comp < 1) or (sub is not None and sub < 1):
            raise PathError(f"{text}: field, component and subcomponent numbers start at 1")
        return cls(
            text=text.strip(), segment=m["seg"], field=field, component=comp, subcomponent=sub,
            segment_sel=Selector.parse(m["segsel"], text),
            repetition_sel=Selector.parse(m["repsel"], text),
        )

    @property
    def location(self) -> tuple[str, int, int | None, int | None]:
        return (self.segment, self.field, self.component, self.subcomponent)

    # Worked out once per path (a path lives as long as its mapping), not per read.
    @cached_property
    def every(self) -> bool:
        """A ``*`` selector: the path gives every occurrence, not the first."""
        return (self.repetition_sel is not None and self.repetition_sel.every) or \
            (self.segment_sel is not None and self.segment_sel.every)

    @cached_property
    def parts(self) -> tuple[int, ...]:
        """Component and subcomponent numbers, as far as the path gives them."""
        return tuple(p for p in (self.component, self.subcomponent) if p is not None)

    @cached_property
    def plain(self) -> bool:
        """No selector (PID-3.1, OBR-4): the first repetition of the first segment."""
        return self.segment_sel is None and self.repetition_sel is None

    @cached_property
    def whole_field(self) -> bool:
        """MSH-1 and MSH-2 hold separator characters, not data: never split."""
        return self.segment == "MSH" and self.field in (1, 2)


def _pick(raw: str, sep: str, n: int | None) -> str:
    if n is None:
        return raw
    parts = raw.split(sep)
    return parts[n - 1] if n <= len(parts) else ""


def _element(rep: str, where: tuple[int, ...], seps: Separators) -> str:
    comp = _pick(rep, seps.component, where[0] if where else None)
    return _pick(comp, seps.subcomponent, where[1] if len(where) > 1 else None)


def segment_matches(seg: Segment, sel: Selector, seps: Separators, unesc: bool = True) -> bool:
    field = seg[sel.where[0]]
    value = _element(field.split(seps.repetition, 1)[0], sel.where[1:], seps)
    return (unescape(value, seps) if unesc else value) == sel.value


def select_segments(segments: list[Segment], path: Path, seps: Separators) -> list[Segment]:
    return _select(named(segments, path.segment), path, seps)


def _select(found: list[Segment], path: Path, seps: Separators) -> list[Segment]:
    """The segments `path` selects among `found`, its segment's occurrences in one level."""
    sel = path.segment_sel
    if not found or sel is None:
        return found[:1]
    if sel.every:
        return found
    if sel.index is not None:
        return found[sel.index - 1:sel.index]
    return [s for s in found if segment_matches(s, sel, seps)][:1]


def read_raw(segments: list[Segment], path: Path, seps: Separators) -> list[str]:
    """Raw (escaped) values at `path`; several only when a selector is ``*``."""
    return read_found(named(segments, path.segment), path, seps)


def read_first(found: list[Segment], path: Path, seps: Separators) -> str:
    """The value of a `plain` path in the first of `found` (not empty).

    The same as `read_found` without the selector steps: mapping reads dozens of these
    per message."""
    # found[0][path.field] without the method call (path.field is at least 1).
    fields = found[0]._fields
    value = fields[path.field] if path.field < len(fields) else ""
    if path.whole_field:
        return _element(value, path.parts, seps)
    value = value.split(seps.repetition, 1)[0]
    if path.component is not None:
        parts = value.split(seps.component)
        value = parts[path.component - 1] if path.component <= len(parts) else ""
        if path.subcomponent is not None:
            parts = value.split(seps.subcomponent)
            value = parts[path.subcomponent - 1] if path.subcomponent <= len(parts) else ""
    return value


def read_found(found: list[Segment], path: Path, seps: Separators) -> list[str]:
    """`read_raw` among `found`, the occurrences of the path's segment in one level."""
    if path.plain:
        return [read_first(found, path, seps)] if found else []
    values = []
    for seg in _select(found, path, seps):
        field = seg[path.field]
        # MSH-1 and MSH-2 hold separator characters, not data.
        reps = [field] if path.whole_field else field.split(seps.repetition)
        sel = path.repetition_sel
        if sel is None:
            reps = reps[:1]
        elif sel.index is not None:
            reps = reps[sel.index - 1:sel.index]
        elif not sel.every:
            reps = [r for r in reps if unescape(_element(r, sel.where, seps), seps) == sel.value]
            reps = reps[:1]
        for rep in reps:
            values.append(_element(rep, path.parts, seps))
    return values
