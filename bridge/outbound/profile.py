"""Outbound profiles: the mapping language run the other way, DICOM and MPPS to HL7 fields.

An inbound profile says where each DICOM attribute comes from in an HL7 message; an
outbound profile says where each HL7 field of the status message comes from: the order's
original message (`order.ORC-2`), the identifiers the store keeps for the order
(`ids.ORC-2`), the worklist item (`item.AccessionNumber`), the MPPS instance
(`mpps.PerformedStationAETitle`, `mpps.start`) or the event (`event.status`). The rule
keys (`from`, `value`, `template`, `as`, `map`, `map_default`, `default`, `required`)
mean what they mean inbound. docs/mapping.md, "Outbound profiles", is the reference.

Errors are reported as `file:line:col: what is wrong`, like the inbound loader's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath

from pydicom.datadict import dictionary_VR, tag_for_keyword
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from bridge.mapping.loader import MappingError
from bridge.message import Path, PathError

TRANSFORMS = ("text", "upper", "first", "ts", "xpn")
# Values of the MPPS instance that are not one attribute: the step's start and end as HL7
# timestamps (date and time joined), its UID.
MPPS_NAMES = ("start", "end", "uid")
EVENT_NAMES = ("name", "control", "status", "time")
_TOP = {"profile", "kind", "description", "message_type", "structure", "version",
        "segments", "fields"}
_RULE = {"from", "value", "template", "as", "map", "map_default", "default", "required"}
_SEGMENT = re.compile(r"^[A-Z][A-Z0-9]{2}\*?$")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class Source:
    """One place a value comes from, e.g. `order.PID-3[*]` or `item.AccessionNumber`."""

    text: str
    kind: str  # order | ids | item | mpps | event
    name: str = ""  # ids kind, event or mpps name, or keywords joined by "."
    path: Path | None = None  # order: the HL7 path in the original message


@dataclass
class FieldRule:
    target: Path  # SEG-F, SEG-F.C or SEG-F.C.S of the outbound message
    where: str  # file:line:col
    sources: list[Source] = field(default_factory=list)
    value: str | None = None
    template: list[str | Source] | None = None
    transform: str = "text"
    value_map: dict[str, str] | None = None
    map_default: str | None = None
    default: str | None = None
    required: bool = False


@dataclass
class OutboundProfile:
    name: str
    file: str
    description: str
    message_type: str  # MSH-9.1^MSH-9.2
    structure: str  # MSH-9.3
    version: str  # MSH-12
    segments: list[tuple[str, bool]]  # (name, one per item) after MSH, in order
    rules: list[FieldRule]


class _Problems:
    def __init__(self, file: str):
        self.file = file
        self.lines: list[str] = []

    def at(self, node: object, key: object | None = None) -> str:
        lc = getattr(node, "lc", None)
        line, col = 0, 0
        if lc is not None:
            try:
                line, col = lc.key(key) if key is not None else (lc.line, lc.col)
            except (KeyError, IndexError, TypeError):
                line, col = lc.line, lc.col
        return f"{self.file}:{line + 1}:{col + 1}"

    def add(self, node: object, key: object | None, text: str) -> None:
        self.lines.append(f"{self.at(node, key)}: {text}")


def parse_source(text: str) -> Source:
    """`order.OBR-18`, `ids.ORC-2`, `item.AccessionNumber`, `mpps.start`, `event.status`."""
    kind, _, rest = text.strip().partition(".")
    if not rest:
        raise ValueError(f"{text!r} is not a source: expected order.<HL7 path>, ids.<kind>, "
                         "item.<keyword>, mpps.<keyword|start|end|uid> or event.<name>")
    if kind == "order":
        try:
            return Source(text, kind, path=Path.parse(rest))
        except PathError as exc:
            raise ValueError(str(exc)) from None
    if kind == "ids":
        return Source(text, kind, rest)
    if kind == "event":
        if rest not in EVENT_NAMES:
            raise ValueError(f"{text}: unknown event value (known: {', '.join(EVENT_NAMES)})")
        return Source(text, kind, rest)
    if kind in ("item", "mpps"):
        if kind == "mpps" and rest in MPPS_NAMES:
            return Source(text, kind, rest)
        keywords = rest.split(".")
        for i, keyword in enumerate(keywords):
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{text}: {keyword!r} is not a DICOM keyword")
            if i < len(keywords) - 1 and dictionary_VR(tag_for_keyword(keyword)) != "SQ":
                raise ValueError(f"{text}: {keyword} is not a sequence")
        return Source(text, kind, rest)
    raise ValueError(f"{text!r}: unknown source {kind!r} (order, ids, item, mpps, event)")


def _rule(target: Path, spec: object, where: str, problems: _Problems, node: object,
          key: object) -> FieldRule | None:
    rule = FieldRule(target, where)
    if isinstance(spec, str | list):
        spec = {"from": spec}
    if spec is None:
        spec = {"value": ""}
    if not isinstance(spec, dict):
        problems.add(node, key, f"{target.text}: a rule is a source, a list of sources or "
                                "a table")
        return None
    unknown = sorted(set(map(str, spec)) - _RULE)
    if unknown:
        problems.add(node, key, f"{target.text}: unknown key(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(_RULE))})")
        return None
    given = [k for k in ("from", "value", "template") if k in spec]
    if len(given) != 1:
        problems.add(node, key, f"{target.text}: give exactly one of from, value, template")
        return None
    try:
        if "from" in spec:
            sources = spec["from"] if isinstance(spec["from"], list) else [spec["from"]]
            rule.sources = [parse_source(str(s)) for s in sources]
        elif "value" in spec:
            rule.value = "" if spec["value"] is None else str(spec["value"])
        else:
            text = str(spec["template"])
            parts: list[str | Source] = []
            last = 0
            for m in _PLACEHOLDER.finditer(text):
                parts += [text[last:m.start()], parse_source(m.group(1))]
                last = m.end()
            rule.template = [*parts, text[last:]]
    except ValueError as exc:
        problems.add(node, key, f"{target.text}: {exc}")
        return None
    rule.transform = str(spec.get("as", "text"))
    if rule.transform not in TRANSFORMS:
        problems.add(node, key, f"{target.text}: unknown transform {rule.transform!r} "
                                f"(known: {', '.join(TRANSFORMS)})")
        return None
    if "map" in spec:
        if not isinstance(spec["map"], dict):
            problems.add(node, key, f"{target.text}: map must be a table value: value")
            return None
        rule.value_map = {str(k): "" if v is None else str(v) for k, v in spec["map"].items()}
    for name in ("map_default", "default"):
        if name in spec:
            setattr(rule, name, "" if spec[name] is None else str(spec[name]))
    rule.required = bool(spec.get("required", False))
    return rule


def load_outbound(file: FsPath) -> OutboundProfile:
    """Load and check one outbound profile; MappingError lists every problem."""
    problems = _Problems(str(file))
    try:
        doc = YAML(typ="rt").load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError([f"{file}: cannot read: {exc.strerror}"]) from exc
    except YAMLError as exc:
        raise MappingError([f"{file}: not valid YAML: {exc}"]) from exc
    if not isinstance(doc, dict):
        raise MappingError([f"{file}:1:1: an outbound profile is a table of keys"])
    for key in doc:
        if key not in _TOP:
            problems.add(doc, key, f"unknown key {key!r} (known: {', '.join(sorted(_TOP))})")
    if doc.get("kind") != "outbound":
        problems.add(doc, "kind" if "kind" in doc else None, "kind: outbound is required")
    for key in ("profile", "message_type", "version", "segments", "fields"):
        if key not in doc:
            problems.add(doc, None, f"{key} is required")
    message_type = str(doc.get("message_type", ""))
    if message_type and not re.fullmatch(r"[A-Z0-9]{3}\^[A-Z0-9]{3}", message_type):
        problems.add(doc, "message_type", f"message_type {message_type!r}: expected "
                                          "CODE^EVENT, e.g. ORM^O01")
    segments: list[tuple[str, bool]] = []
    seg_node = doc.get("segments") or []
    for i, name in enumerate(seg_node if isinstance(seg_node, list) else []):
        name = str(name)
        if not _SEGMENT.match(name) or name.startswith("MSH"):
            problems.add(seg_node, i, f"segments: {name!r} is not a segment name (MSH is "
                                      "built by the bridge; NAME* repeats per item)")
        segments.append((name.rstrip("*"), name.endswith("*")))
    names = {n for n, _ in segments}
    rules: list[FieldRule] = []
    fields = doc.get("fields") or {}
    if not isinstance(fields, dict):
        problems.add(doc, "fields", "fields: a table of HL7 path: rule")
        fields = {}
    for target_text, spec in fields.items():
        try:
            target = Path.parse(str(target_text))
        except PathError as exc:
            problems.add(fields, target_text, str(exc))
            continue
        if target.segment_sel is not None or target.repetition_sel is not None:
            problems.add(fields, target_text, f"{target.text}: a target is SEG-F, SEG-F.C "
                                              "or SEG-F.C.S, without selectors")
            continue
        if target.segment not in names:
            problems.add(fields, target_text, f"{target.text}: {target.segment} is not in "
                                              "segments")
            continue
        rule = _rule(target, spec, problems.at(fields, target_text), problems, fields,
                     target_text)
        if rule is not None:
            rules.append(rule)
    if problems.lines:
        raise MappingError(problems.lines)
    code, _, event = message_type.partition("^")
    return OutboundProfile(
        name=str(doc["profile"]), file=str(file), description=str(doc.get("description", "")),
        message_type=message_type,
        structure=str(doc.get("structure", f"{code}_{event}")), version=str(doc["version"]),
        segments=segments, rules=rules)


def profile_file(name: str, mappings_dir: FsPath) -> FsPath:
    """`ris.profile`: a name in <mappings.dir>/outbound/, or a file (absolute, or relative
    to mappings.dir)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return mappings_dir / name  # an absolute name stays absolute
    return mappings_dir / "outbound" / f"{name}.yaml"
