"""Compiled mapping rules and their evaluation against one order group of a message.

A rule produces the value of one DICOM attribute. The loader (`loader.py`) builds rules
from YAML and checks them; this module only evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.mapping.transforms import TRANSFORMS, derived_uid
from bridge.message import Path, Segment, Separators, read_raw, unescape

# DICOM maximum value lengths, in characters, of the string VRs (PS3.5 table 6.2-1).
MAX_LENGTH = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 16, "UI": 64, "UC": 2**32 - 2,
    "UR": 2**32 - 2, "UT": 2**32 - 2,
}
# VRs whose values may not contain CR/LF (anything but the text VRs).
MULTILINE_VRS = {"LT", "ST", "UT"}


class MappingFieldError(Exception):
    """A required value is missing or unusable; names the HL7 field and the attribute."""

    def __init__(self, message: str, path: Path | None, keyword: str):
        super().__init__(message)
        self.path = path
        self.keyword = keyword


@dataclass
class Scope:
    """Where a path looks for its segment: the item (IPC), its order group, the message."""

    levels: list[list[Segment]]
    seps: Separators
    facts: dict[str, str] = field(default_factory=dict)  # values outside the message

    def read(self, path: Path) -> list[str]:
        for segments in self.levels:
            if any(s.name == path.segment for s in segments):
                return read_raw(segments, path, self.seps)
        return []


@dataclass
class TraceEntry:
    attribute: str
    value: object
    source: str  # the path (or "value", "template", "uid") that gave the value
    transforms: list[str]
    warnings: list[str]


@dataclass
class Trace:
    entries: list[TraceEntry] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [f"{e.attribute}: {w}" for e in self.entries for w in e.warnings]


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
    value_map: dict[str, str] | None = None
    map_default: str | None = None
    default: str | None = None
    required: bool = False
    uid_from: list[Path] | None = None

    def _first_raw(self, scope: Scope) -> tuple[str, str]:
        for path in self.sources:
            for raw in scope.read(path):
                if raw.strip() != "":
                    return raw, path.text
        return "", self.sources[0].text if self.sources else "value"

    def evaluate(self, scope: Scope, trace: Trace | None, prefix: str = "") -> object:
        warnings: list[str] = []
        steps: list[str] = []
        source = "value"
        result: object
        if self.value is not None:
            result = self.value
        elif self.template is not None:
            source = "template"
            result = "".join(
                p if isinstance(p, str) else unescape(next(iter(scope.read(p)), ""), scope.seps)
                for p in self.template).strip()
        else:
            raw, source = self._first_raw(scope)
            name = self.transform or "text"
            steps.append(name)
            result = TRANSFORMS[name](raw, scope.seps)
        if isinstance(result, str):
            result = result.strip()
            if self.value_map is not None:
                steps.append("map")
                mapped = self.value_map.get(result)
                if mapped is None and self.map_default is not None:
                    mapped = self.map_default
                result = result if mapped is None else mapped
            if not result and self.uid_from:
                for path in self.uid_from:
                    seed = next((r for r in scope.read(path) if r.strip()), "")
                    if seed:
                        result = derived_uid(f"{scope.facts.get('sender', '')}|{path.text}|{seed}")
                        source = f"uid from {path.text}"
                        break
            if not result and self.default is not None:
                result, source = self.default, "default"
            result = self._fit(result, warnings)
        if self.required and not result:
            raise MappingFieldError(
                f"{self.keyword} is required but {self._sources_text()}",
                self.sources[0] if self.sources else None, self.keyword)
        if trace is not None:
            trace.entries.append(TraceEntry(prefix + self.keyword, result, source, steps, warnings))
        return result

    def _sources_text(self) -> str:
        names = [p.text for p in self.sources]
        if not names:
            return "the value is empty"
        if len(names) == 1:
            return f"{names[0]} is empty"
        return f"{', '.join(names[:-1])} and {names[-1]} are all empty"

    def _fit(self, value: str, warnings: list[str]) -> str:
        if self.vr not in MULTILINE_VRS and ("\r" in value or "\n" in value):
            value = " ".join(value.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        limit = MAX_LENGTH.get(self.vr)
        if limit is not None and self.vr != "PN" and len(value) > limit:
            warnings.append(f"truncated from {len(value)} to {limit} characters ({self.vr})")
            value = value[:limit]
        return value


@dataclass
class SequenceRule:
    """A sequence attribute: fixed items with their own rules, or a code from a CE field."""

    keyword: str
    where: str
    items: list[list[Rule | SequenceRule]] = field(default_factory=list)
    code_rule: Rule | None = None  # `as: code` on the sequence itself

    def evaluate(self, scope: Scope, trace: Trace | None, prefix: str = "") -> object:
        if self.code_rule is not None:
            raw, source = self.code_rule._first_raw(scope)
            code = TRANSFORMS[self.code_rule.transform or "code"](raw, scope.seps)
            # No code: leave the sequence out. wlmscpfs rejects the whole file when a code
            # sequence is present with no complete item.
            value = [code] if code else None
            if self.code_rule.required and not value:
                raise MappingFieldError(
                    f"{self.keyword} is required but {self.code_rule._sources_text()}",
                    self.code_rule.sources[0] if self.code_rule.sources else None, self.keyword)
            if trace is not None:
                trace.entries.append(TraceEntry(prefix + self.keyword, value, source,
                                                [self.code_rule.transform or "code"], []))
            return value
        return [evaluate_rules(rules, scope, trace, f"{prefix}{self.keyword}[{i}].")
                for i, rules in enumerate(self.items)]


def evaluate_rules(rules: list[Rule | SequenceRule], scope: Scope, trace: Trace | None,
                   prefix: str = "") -> dict[str, object]:
    """The item's attributes; a rule that yields None (an absent code) adds nothing."""
    item = {}
    for rule in rules:
        value = rule.evaluate(scope, trace, prefix)
        if value is not None:
            item[rule.keyword] = value
    return item

