"""Compiled mapping rules and their evaluation against one order group of a message.

A rule produces the value of one DICOM attribute. The loader (`loader.py`) builds rules
from YAML and checks them; this module only evaluates them. The steps of a rule, in order
(docs/mapping.md describes them for integrators):

    when -> source (from / value / template) -> as (transform) -> replace -> map / lookup
         -> default -> uid_from / uid_generate -> fit to the VR (truncate with a warning)
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from bridge.mapping.transforms import TRANSFORMS, derived_uid, new_uid
from bridge.message import (
    Path,
    Segment,
    SegmentList,
    Separators,
    read_first,
    read_found,
    unescape,
)

# DICOM maximum value lengths, in characters, of the string VRs (PS3.5 table 6.2-1).
MAX_LENGTH = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 16, "UI": 64, "UC": 2**32 - 2,
    "UR": 2**32 - 2, "UT": 2**32 - 2,
}
# VRs limited to printable ASCII (the default character repertoire, no control characters).
ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
# VRs whose values may not contain CR/LF (anything but the text VRs).
MULTILINE_VRS = {"LT", "ST", "UT"}
# The DICOM value separator: a rule reading every repetition (`[*]`) joins them with it.
MULTI_VALUE = "\\"
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_DECIMAL = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
# Number VRs, as text (IS, DS) and binary (written as numbers by dicomfile.to_dataset).
_NUMBER = {"IS": _INTEGER, "DS": _DECIMAL, "US": _INTEGER, "SS": _INTEGER, "UL": _INTEGER,
           "SL": _INTEGER, "FL": _DECIMAL, "FD": _DECIMAL}


class MappingFieldError(Exception):
    """A required value is missing or unusable; names the HL7 field and the attribute."""

    def __init__(self, message: str, path: Path | None, keyword: str, where: str = ""):
        super().__init__(message)
        self.path = path
        self.keyword = keyword
        self.where = where  # file:line:col of the rule, for the integrator (not the ACK)
        self.group_index: int | None = None  # the order group it failed in, when known


@dataclass(frozen=True)
class MappingWarning:
    """A warning about one value. `kind` is stable across messages (no values in it), so
    that recurring warnings can be counted per profile and rule (mapping/recurring.py).
    `specific` is False for what a rule gives every message of a sender (a code without
    its scheme): counted and logged, but kept out of each message's journal entry."""

    text: str
    kind: str
    specific: bool = True

    def __str__(self) -> str:
        return self.text


@dataclass
class Scope:
    """Where a path looks for its segment: the item (IPC), its order group, the message.

    The first level that holds a segment of the path's name answers: inside an order group,
    `OBR-4` is that group's OBR and `PID-3` (not in the group) the message's PID.
    """

    levels: list[list[Segment]]
    seps: Separators
    facts: dict[str, str] = field(default_factory=dict)  # values outside the message
    uid_root: str = "2.25"  # the profile's root for derived UIDs
    backslash: str = "/"  # replaces a backslash inside one value (the profile's `backslash`)

    def __post_init__(self) -> None:
        # Segment name -> its occurrences in the first level that holds it, built once per
        # scope: a scan of the levels per read made mapping quadratic in the number of
        # groups, and cost a search per rule even in a one-order message.
        self._found: dict[str, list[Segment]] = {}
        for segments in self.levels:
            if isinstance(segments, SegmentList):
                for name, found in segments.by_name.items():
                    self._found.setdefault(name, found)
            else:
                names: dict[str, list[Segment]] = {}
                for seg in segments:
                    names.setdefault(seg.name, []).append(seg)
                for name, found in names.items():
                    self._found.setdefault(name, found)
        # Path text -> its non-empty raw values: several rules read the same fields (the
        # scheduled date, time and time zone read the same six paths), and a path's text
        # says all it selects (Path.parse).
        self._present: dict[str, list[str]] = {}

    def read(self, path: Path) -> list[str]:
        return read_found(self._found.get(path.segment, []), path, self.seps)

    def present(self, path: Path) -> list[str]:
        """The raw values at `path` that are not blank, read once per scope: the caller
        must not change the list."""
        values = self._present.get(path.text)
        if values is None:
            found = self._found.get(path.segment)
            if not found:
                values = []  # no such segment: most optional sources of most messages
            elif path.plain:
                value = read_first(found, path, self.seps)
                values = [value] if value.strip() else []
            else:
                # filter(str.strip): the blank ones out, without a Python frame per path.
                values = list(filter(str.strip, read_found(found, path, self.seps)))
            self._present[path.text] = values
        return values

    def first(self, path: Path) -> str:
        """The first non-empty value at `path`, unescaped and trimmed ("" when none)."""
        values = self.present(path)
        return unescape(values[0], self.seps).strip() if values else ""


@dataclass(slots=True)  # one per attribute of every message the processor maps
class TraceEntry:
    attribute: str
    value: object
    source: str  # the path (or "value", "template", "uid") that gave the value
    transforms: list[str]
    warnings: list[MappingWarning]
    required: bool = False
    where: str = ""  # file:line:col of the rule
    inputs: str = ""  # what a derived UID was made from


@dataclass
class Trace:
    entries: list[TraceEntry] = field(default_factory=list)
    # Only the entries with a warning: all the processor journals and counts (warnings,
    # specific_warnings, warning_keys give the same), without an entry per attribute of
    # every message. `translate` and the console show the whole trace.
    warnings_only: bool = False

    @property
    def warnings(self) -> list[str]:
        return [f"{e.attribute}: {w}" for e in self.entries for w in e.warnings]

    @property
    def specific_warnings(self) -> list[str]:
        """The warnings about this message's own data (what its journal entry keeps)."""
        return [f"{e.attribute}: {w}" for e in self.entries for w in e.warnings if w.specific]

    def warning_keys(self) -> list[tuple[str, str, str, str]]:
        """(attribute, rule position, kind, text) of every warning, for counting."""
        return [(e.attribute, e.where, w.kind, w.text) for e in self.entries
                for w in e.warnings]


@dataclass
class Test:
    """One clause of a `when`: the value at `path` equals one of `values`, matches
    `pattern`, or (with `negate`) does not."""

    path: Path
    values: list[str] | None = None
    pattern: re.Pattern[str] | None = None
    negate: bool = False

    def holds(self, scope: Scope) -> bool:
        actual = scope.first(self.path)
        if self.pattern is not None:
            ok = self.pattern.search(actual) is not None
        else:
            ok = actual in (self.values or [""])
        return ok != self.negate

    def describe(self) -> str:
        what = f"matches /{self.pattern.pattern}/" if self.pattern is not None else \
            f"is {' or '.join(repr(v) for v in self.values or [''])}"
        return f"{self.path.text} {'not ' if self.negate else ''}{what}"


@dataclass
class Rule:
    """The value of one attribute: sources, then transforms, then fitting to the VR."""

    keyword: str
    vr: str
    where: str  # file:line:col, for messages
    sources: list[Path] = field(default_factory=list)
    value: str | None = None
    template: list[str | Path] | None = None
    transform: str | None = None
    replace: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    value_map: dict[str, str] | None = None
    map_default: str | None = None
    map_label: str = "map"  # how the trace names the table ("lookup FILE.csv" for a CSV)
    default: str | None = None
    required: bool = False
    uid_from: list[Path] | None = None
    uid_root: str | None = None  # overrides the profile's root
    uid_generate: bool = False
    when: list[Test] = field(default_factory=list)

    def applies(self, scope: Scope) -> bool:
        return all(t.holds(scope) for t in self.when)

    def raw_values(self, scope: Scope) -> tuple[list[str], str]:
        """The first source with a non-empty value: its raw value(s) and its path.

        A path with a ``*`` selector gives every non-empty occurrence; others give one.
        """
        for path in self.sources:
            values = scope.present(path)
            if values:
                return (list(values) if path.every else values[:1]), path.text
        return [], self.sources[0].text if self.sources else "value"

    def _from_sources(self, scope: Scope, steps: list[str],
                      warnings: list[MappingWarning]) -> tuple[list[str], str]:
        """The values of the first source that gives a non-empty value after the transform,
        replace and map: a date field holding "S" does not hide the next source's date."""
        name = self.transform or "text"
        steps.append(name)
        transform = TRANSFORMS[name]
        seps = scope.seps
        # Scope.present's cache read here: a rule's sources are mostly read already (the
        # date, time and zone rules share theirs), and a call per source adds up.
        cached = scope._present.get
        for path in self.sources:
            raws = cached(path.text)
            if raws is None:
                raws = scope.present(path)
            if not raws:
                continue
            if not path.every:
                raw = raws[0]
                if name == "text" and seps.escape not in raw:
                    value = raw.strip()  # to_text has nothing to unescape
                else:
                    value = str(transform(raw, seps)).strip()
                if self.replace or self.value_map is not None:
                    value = self._post(value, steps)
                if value:
                    if MULTI_VALUE in value:
                        # One value asked for: a backslash in it would split it in two.
                        value = self._no_delimiter(value, path.text, scope, warnings)
                    return [value], path.text
                continue
            values = [self._post(str(transform(raw, scope.seps)).strip(), steps) for raw in raws]
            values = [v for v in values if v]
            if values:
                return values, path.text
        return [""], self.sources[0].text if self.sources else "value"

    def _no_delimiter(self, value: str, source: str, scope: Scope,
                      warnings: list[MappingWarning]) -> str:
        """`value` without DICOM's value delimiter (a `\\E\\` in the HL7 gives one).

        Text VRs (LT, ST, UT) hold one value and may contain a backslash: kept there."""
        if MULTI_VALUE not in value or self.vr in MULTILINE_VRS or self.vr == "SQ":
            return value
        if self.keyword.startswith("order."):
            # An order key is never written to DICOM; replacing would make 'A\\B' and
            # 'A/B' the same order.
            return value
        warnings.append(MappingWarning(
            f"{source}: a backslash (DICOM's value delimiter) was replaced by "
            f"{scope.backslash!r}", "backslash replaced"))
        return value.replace(MULTI_VALUE, scope.backslash)

    def evaluate(self, scope: Scope, trace: Trace | None, prefix: str = "") -> object:
        if self.when and not self.applies(scope):
            if trace is not None and not trace.warnings_only:
                trace.entries.append(TraceEntry(
                    prefix + self.keyword, None, "when",
                    [f"skipped: not ({'; '.join(t.describe() for t in self.when)})"], []))
            return None
        warnings: list[MappingWarning] = []
        steps: list[str] = []
        source = "value"
        inputs = ""
        if self.value is not None:
            values = [self._post(self.value.strip(), steps)]
        elif self.template is not None:
            source = "template"
            value = "".join(p if isinstance(p, str) else scope.first(p)
                            for p in self.template).strip()
            values = [self._no_delimiter(self._post(value.strip(), steps), "template", scope,
                                         warnings)]
        else:
            values, source = self._from_sources(scope, steps, warnings)
        # Several values: DICOM values of a multi-valued attribute, or lines of a text.
        if len(values) == 1:
            result = values[0]
        else:
            result = ("\r\n" if self.vr in MULTILINE_VRS else MULTI_VALUE).join(values)
        if not result and (self.uid_from or self.uid_generate or self.default is not None):
            result, source, inputs = self._fallback(scope, source)
        if result:  # an empty value has nothing to fit (most optional attributes)
            result = self._fit(result, warnings)
        if self.required and not result:
            raise MappingFieldError(
                f"{self.keyword} is required but {self._sources_text()}",
                self.sources[0] if self.sources else None, self.keyword, self.where)
        if trace is not None and (warnings or not trace.warnings_only):
            trace.entries.append(TraceEntry(prefix + self.keyword, result, source, steps,
                                            warnings, self.required, self.where, inputs))
        return result

    def _fallback(self, scope: Scope, source: str) -> tuple[str, str, str]:
        """No value from the message: uid_from, uid_generate, then default, as the first
        gives one. Returns the value, its source and what a derived UID was made from."""
        if self.uid_from:
            root = self.uid_root or scope.uid_root
            for path in self.uid_from:
                seed = scope.first(path)
                if seed:
                    # The sender is part of the seed: two RIS may use the same accession.
                    sender = scope.facts.get("sender", "")
                    inputs = (f"sender {sender!r} (MSH-3|MSH-4), rule path {path.text!r}, "
                              f"value {seed!r}, root {root}")
                    return (derived_uid(f"{sender}|{path.text}|{seed}", root),
                            f"uid from {path.text}", inputs)
        if self.uid_generate:
            return new_uid(self.uid_root or scope.uid_root), "uid generated", ""
        if self.default is not None:
            return self.default, "default", ""
        return "", source, ""

    def _post(self, value: str, steps: list[str]) -> str:
        """replace, then map: per value, so that each of several repetitions is mapped."""
        for pattern, replacement in self.replace:
            value = pattern.sub(replacement, value)
            if "replace" not in steps:
                steps.append("replace")
        if self.value_map is not None:
            if self.map_label not in steps:
                steps.append(self.map_label)
            mapped = self.value_map.get(value)
            if mapped is None and self.map_default is not None:
                mapped = self.map_default
            value = value if mapped is None else mapped
        return value

    def _sources_text(self) -> str:
        names = [p.text for p in self.sources]
        if not names:
            return "the value is empty"
        if len(names) == 1:
            return f"{names[0]} is empty"
        return f"{', '.join(names[:-1])} and {names[-1]} are all empty"

    def _fit(self, value: str, warnings: list[MappingWarning]) -> str:
        if not value:
            return value  # nothing to fit (most optional attributes of most messages)
        if self.vr not in MULTILINE_VRS and ("\r" in value or "\n" in value):
            value = " ".join(value.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        # Printable ASCII (" " to "~"): str methods, cheaper than a regular expression.
        if self.vr in ASCII_VRS and not (value.isascii() and value.isprintable()):
            # These VRs take the default repertoire only: pydicom cannot write anything else,
            # and the item would never reach a sink although the sender got AA.
            fitted = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
            fitted = "".join(c for c in fitted if " " <= c <= "~")
            warnings.append(MappingWarning(f"{value!r} has characters {self.vr} cannot hold: "
                                           f"{fitted!r} used", "characters replaced"))
            value = fitted
        if self.vr in _NUMBER and value and not all(_NUMBER[self.vr].match(v)
                                                    for v in value.split(MULTI_VALUE)):
            # A number with its unit glued on ("15kg") would make an invalid file.
            warnings.append(MappingWarning(f"{value!r} is not a valid {self.vr} number: left "
                                           "empty", "not a number"))
            return ""
        limit = MAX_LENGTH.get(self.vr)
        if self.vr == "PN":
            # PN: 64 characters per component group (alphabetic=ideographic=phonetic).
            groups = value.split("=")
            for i, group in enumerate(groups):
                if len(group) > 64:
                    warnings.append(MappingWarning(
                        f"truncated from {len(group)} to 64 characters (PN)", "truncated"))
                    groups[i] = group[:64].rstrip("^ ")
            return "=".join(groups)
        if limit is None or len(value) <= limit:
            return value  # no part can be too long (most values)
        parts = value.split(MULTI_VALUE) if self.vr not in MULTILINE_VRS else [value]
        for i, part in enumerate(parts):
            if len(part) > limit:
                warnings.append(MappingWarning(
                    f"truncated from {len(part)} to {limit} characters ({self.vr})", "truncated"))
                parts[i] = part[:limit].rstrip()
        return MULTI_VALUE.join(parts)


@dataclass
class SequenceRule:
    """A sequence attribute: fixed items with their own rules, or codes from a CE field.

    An item whose values are all empty is left out, and so is a sequence with no items:
    wlmscpfs rejects the whole file when a code sequence is present with no complete item.
    """

    keyword: str
    where: str
    items: list[list[Rule | SequenceRule]] = field(default_factory=list)
    code_rule: Rule | None = None  # `as: code` on the sequence itself
    when: list[Test] = field(default_factory=list)

    def evaluate(self, scope: Scope, trace: Trace | None, prefix: str = "") -> object:
        if self.when and not all(t.holds(scope) for t in self.when):
            return None
        if self.code_rule is not None:
            return self._codes(scope, trace, prefix)
        items = []
        for i, rules in enumerate(self.items):
            item = evaluate_rules(rules, scope, trace, f"{prefix}{self.keyword}[{i}].")
            if any(v not in ("", None) for v in item.values()):
                items.append(item)
        return items or None

    def _codes(self, scope: Scope, trace: Trace | None, prefix: str) -> object:
        rule = self.code_rule
        assert rule is not None
        if rule.when and not rule.applies(scope):
            return None
        raws, source = rule.raw_values(scope)
        transform = TRANSFORMS[rule.transform or "code"]
        codes = [c for c in (transform(raw, scope.seps) for raw in raws) if c]
        warnings: list[MappingWarning] = []
        fitting = []
        for code in codes:
            if len(code["CodeValue"]) > 16 or len(code["CodingSchemeDesignator"]) > 16:
                # Cutting an identifier would make another code: leave it out, say so.
                warnings.append(MappingWarning(
                    f"{source}: code {code['CodeValue']!r} ({code['CodingSchemeDesignator']}) "
                    "does not fit SH (16 characters): left out", "code too long"))
                continue
            for part in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"):
                if MULTI_VALUE in code[part]:
                    warnings.append(MappingWarning(
                        f"{source}: a backslash (DICOM's value delimiter) in {part} was "
                        f"replaced by {scope.backslash!r}", "backslash replaced"))
                    code[part] = code[part].replace(MULTI_VALUE, scope.backslash)
            if len(code["CodeMeaning"]) > 64:
                warnings.append(MappingWarning(
                    f"{source}: CodeMeaning truncated from {len(code['CodeMeaning'])} to 64 "
                    "characters (LO)", "truncated"))
                code["CodeMeaning"] = code["CodeMeaning"][:64].rstrip()
            fitting.append(code)
        dropped = len(codes) - len(fitting)
        codes = fitting
        if raws and len(codes) + dropped < len(raws):
            # The same every time for a sender whose codes lack a scheme: counted per rule
            # (see `omit: true` in docs/mapping.md), not repeated in every journal entry.
            warnings.append(MappingWarning(
                f"{source}: an incomplete code (value, meaning and scheme are all needed) was "
                "left out", "incomplete code", specific=False))
        if rule.required and not codes:
            raise MappingFieldError(
                f"{self.keyword} is required but {rule._sources_text()}",
                rule.sources[0] if rule.sources else None, self.keyword, rule.where)
        if trace is not None and (warnings or not trace.warnings_only):
            trace.entries.append(TraceEntry(prefix + self.keyword, codes or None, source,
                                            [rule.transform or "code"], warnings,
                                            rule.required, rule.where))
        return codes or None


def evaluate_rules(rules: list[Rule | SequenceRule], scope: Scope, trace: Trace | None,
                   prefix: str = "") -> dict[str, object]:
    """The item's attributes; a rule that yields None (an absent code) adds nothing."""
    item = {}
    for rule in rules:
        value = rule.evaluate(scope, trace, prefix)
        if value is not None:
            item[rule.keyword] = value
    return item
