"""Mapping files: YAML in, checked `Profile` objects out, errors as ``file:line:col: what``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING

from pydicom.datadict import dictionary_VR, tag_for_keyword
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from bridge.mapping.rules import Rule, SequenceRule
from bridge.mapping.transforms import CODE_TRANSFORMS, TRANSFORMS
from bridge.message import Path, PathError

if TYPE_CHECKING:
    from bridge.mapping.patient import PatientProfile


class MappingError(Exception):
    """One or more problems in mapping files; each line reads ``file:line:col: what``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Match:
    message_types: list[str] = field(default_factory=list)  # "ORM^O01"
    sending_applications: list[str] = field(default_factory=list)  # MSH-3.1
    sending_facilities: list[str] = field(default_factory=list)  # MSH-4.1
    versions: list[str] = field(default_factory=list)  # MSH-12

    def score(self, message_type: str, application: str, facility: str, version: str) -> int:
        """How specifically this profile matches (-1: not at all)."""
        score = 0
        for wanted, actual in ((self.message_types, message_type),
                               (self.sending_applications, application),
                               (self.sending_facilities, facility),
                               (self.versions, version)):
            if wanted:
                if actual not in wanted:
                    return -1
                score += 1
        return score


@dataclass
class Profile:
    name: str
    file: str
    match: Match
    group_segment: str  # one order per group that starts with this segment (ORC)
    item_segment: str | None  # one item per such segment within a group (IPC), else one
    order_key: Rule
    order_control: Rule
    order_status: Rule
    attributes: list[Rule | SequenceRule]
    charset: str | None = None  # overrides MSH-18 for this sender


_TOP_KEYS = {"profile", "description", "match", "charset", "groups", "order", "attributes"}
_RULE_KEYS = {"from", "value", "template", "as", "map", "map_default", "default", "required",
              "uid_from"}
_MATCH_KEYS = {"message_type": "message_types", "sending_application": "sending_applications",
               "sending_facility": "sending_facilities", "version": "versions"}


class _Reader:
    """Turns one YAML document into a Profile, collecting problems with their positions."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[str] = []

    def at(self, node: object, key: object = None) -> str:
        line, col = 0, 0
        lc = getattr(node, "lc", None)
        if lc is not None:
            try:
                line, col = lc.key(key) if key is not None and isinstance(node, CommentedMap) \
                    else (lc.item(key) if key is not None else (lc.line, lc.col))
            except (KeyError, IndexError, TypeError):
                line, col = lc.line, lc.col
        return f"{self.file}:{line + 1}:{col + 1}"

    def problem(self, node: object, key: object, text: str) -> None:
        self.problems.append(f"{self.at(node, key)}: {text}")

    def paths(self, node: object, key: object, value: object) -> list[Path]:
        texts = value if isinstance(value, list) else [value]
        out = []
        for text in texts:
            if not isinstance(text, str):
                self.problem(node, key, f"expected an HL7 path such as PID-3.1, got {text!r}")
                continue
            try:
                out.append(Path.parse(text))
            except PathError as exc:
                self.problem(node, key, str(exc))
        return out

    def rule(self, keyword: str, vr: str, node: object, key: object, spec: object) -> Rule:
        where = self.at(node, key)
        rule = Rule(keyword=keyword, vr=vr, where=where)
        if isinstance(spec, str):
            rule.sources = self.paths(node, key, spec)
            return rule
        if spec is None:
            rule.value = ""
            return rule
        if not isinstance(spec, CommentedMap):
            self.problem(node, key, f"{keyword}: expected a path, or a mapping with from/value/"
                                    f"template, got {type(spec).__name__}")
            return rule
        for k in spec:
            if k not in _RULE_KEYS:
                self.problem(spec, k, f"{keyword}: unknown key {k!r} "
                                      f"(known: {', '.join(sorted(_RULE_KEYS))})")
        given = [k for k in ("from", "value", "template") if k in spec]
        if len(given) != 1:
            self.problem(node, key, f"{keyword}: give exactly one of from, value, template")
        if "from" in spec:
            rule.sources = self.paths(spec, "from", spec["from"])
        if "value" in spec:
            rule.value = "" if spec["value"] is None else str(spec["value"])
        if "template" in spec:
            rule.template = self.template(spec, spec["template"])
        if "as" in spec:
            name = spec["as"]
            if name not in TRANSFORMS:
                self.problem(spec, "as", f"{keyword}: unknown transform {name!r} "
                                         f"(known: {', '.join(sorted(TRANSFORMS))})")
            elif name in CODE_TRANSFORMS and vr != "SQ":
                self.problem(spec, "as", f"{keyword}: 'as: {name}' makes a code sequence item, "
                                         f"but {keyword} is {vr}, not a sequence")
            else:
                rule.transform = name
        if "map" in spec:
            table = spec["map"]
            if not isinstance(table, CommentedMap):
                self.problem(spec, "map", f"{keyword}: map must be a table of value: value")
            else:
                rule.value_map = {str(k): "" if v is None else str(v) for k, v in table.items()}
        if "map_default" in spec:
            rule.map_default = str(spec["map_default"])
        if "default" in spec:
            rule.default = "" if spec["default"] is None else str(spec["default"])
        if "required" in spec:
            rule.required = bool(spec["required"])
        if "uid_from" in spec:
            if vr != "UI":
                self.problem(spec, "uid_from", f"{keyword}: uid_from only applies to UIDs")
            rule.uid_from = self.paths(spec, "uid_from", spec["uid_from"])
        return rule

    def template(self, node: CommentedMap, text: object) -> list[str | Path]:
        if not isinstance(text, str):
            self.problem(node, "template", "template must be a string such as '{OBR-4.2}'")
            return []
        parts: list[str | Path] = []
        rest = text
        while "{" in rest:
            before, _, after = rest.partition("{")
            inner, closed, rest = after.partition("}")
            if not closed:
                self.problem(node, "template", f"unclosed '{{' in template {text!r}")
                break
            parts.append(before)
            parts.extend(self.paths(node, "template", inner))
        parts.append(rest)
        return [p for p in parts if p != ""]

    def attributes(self, node: object, prefix: str = "") -> list[Rule | SequenceRule]:
        if not isinstance(node, CommentedMap):
            self.problem(node, None, f"{prefix or 'attributes'}: expected a mapping of DICOM "
                                     "keywords to rules")
            return []
        rules: list[Rule | SequenceRule] = []
        for keyword, spec in node.items():
            if tag_for_keyword(str(keyword)) is None:
                self.problem(node, keyword, f"{keyword!r} is not a DICOM keyword")
                continue
            vr = dictionary_VR(keyword)
            if vr == "SQ":
                rules.append(self.sequence(keyword, node, spec))
            elif isinstance(spec, CommentedSeq):
                self.problem(node, keyword, f"{keyword} is {vr}, not a sequence: "
                                            "it cannot hold a list of items")
            else:
                rules.append(self.rule(keyword, vr, node, keyword, spec))
        return rules

    def sequence(self, keyword: str, node: CommentedMap, spec: object) -> SequenceRule:
        seq = SequenceRule(keyword=keyword, where=self.at(node, keyword))
        if isinstance(spec, CommentedSeq):
            seq.items = [self.attributes(item, f"{keyword}[{i}]") for i, item in enumerate(spec)]
        elif isinstance(spec, CommentedMap) and spec.get("as") in CODE_TRANSFORMS:
            seq.code_rule = self.rule(keyword, "SQ", node, keyword, spec)
        elif spec is None:
            seq.items = []
        else:
            self.problem(node, keyword, f"{keyword} is a sequence: give a list of items, "
                                        "or 'from: <CE field>' with 'as: code'")
        return seq


def _load_document(file: FsPath) -> tuple[CommentedMap | None, list[str]]:
    try:
        doc = YAML(typ="rt").load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [f"{file}:1:1: cannot read: {exc.strerror}"]
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        return None, [f"{file}:{pos}: not valid YAML: {getattr(exc, 'problem', exc)}"]
    if not isinstance(doc, CommentedMap):
        return None, [f"{file}:1:1: a mapping file is a YAML mapping with 'profile' and "
                      "'attributes'"]
    return doc, []


def load_profile(file: FsPath) -> Profile | PatientProfile:
    """Load and check one mapping file; raise MappingError listing every problem."""
    doc, problems = _load_document(file)
    if doc is None:
        raise MappingError(problems)
    r = _Reader(str(file))
    if doc.get("kind") == "patient":
        return _load_patient_profile(r, doc, file)
    for key in doc:
        if key not in _TOP_KEYS:
            r.problem(doc, key, f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    name = doc.get("profile")
    if not isinstance(name, str) or not name:
        r.problem(doc, None, "'profile' (the profile's name) is missing")
        name = file.stem

    match = Match()
    spec = doc.get("match") or CommentedMap()
    if isinstance(spec, CommentedMap):
        for key, value in spec.items():
            if key not in _MATCH_KEYS:
                r.problem(spec, key, f"match: unknown key {key!r} "
                                     f"(known: {', '.join(sorted(_MATCH_KEYS))})")
                continue
            values = value if isinstance(value, list) else [value]
            setattr(match, _MATCH_KEYS[key], [str(v) for v in values])
    else:
        r.problem(doc, "match", "match must be a mapping")

    groups = doc.get("groups") or CommentedMap()
    group_segment = str(groups.get("per", "ORC"))
    item_segment = groups.get("items")
    order = doc.get("order")
    if not isinstance(order, CommentedMap):
        r.problem(doc, "order" if "order" in doc else None,
                  "'order' must give key, control and status rules")
        order = CommentedMap()
    for k in order:
        if k not in ("key", "control", "status"):
            r.problem(order, k, f"order: unknown key {k!r} (known: control, key, status)")
    order_key = r.rule("order.key", "LO", order, "key", order.get("key"))
    order_key.required = True  # without a key an order cannot be found again
    control = r.rule("order.control", "ID", order, "control", order.get("control"))
    status = r.rule("order.status", "ID", order, "status", order.get("status"))

    if "attributes" not in doc:
        r.problem(doc, None, "'attributes' is missing")
    attributes = r.attributes(doc.get("attributes") or CommentedMap())
    if r.problems:
        raise MappingError(r.problems)
    charset = doc.get("charset")
    return Profile(
        name=name, file=str(file), match=match, group_segment=group_segment,
        item_segment=str(item_segment) if item_segment else None,
        order_key=order_key, order_control=control, order_status=status,
        attributes=attributes, charset=str(charset) if charset else None,
    )


def _load_patient_profile(r: _Reader, doc: CommentedMap, file: FsPath) -> PatientProfile:
    from bridge.mapping.patient import read_patient_profile

    name = doc.get("profile") or file.stem
    match = Match()
    for key, value in (doc.get("match") or {}).items():
        if key in _MATCH_KEYS:
            values = value if isinstance(value, list) else [value]
            setattr(match, _MATCH_KEYS[key], [str(v) for v in values])
        else:
            r.problem(doc["match"], key, f"match: unknown key {key!r}")
    profile = read_patient_profile(r, doc, str(name), match, str(file))
    if r.problems:
        raise MappingError(r.problems)
    return profile


def load_profiles(folder: FsPath) -> list[Profile]:
    """Every ``*.yaml`` in `folder`, sorted by file name; all problems reported at once."""
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if not files:
        raise MappingError([f"{folder}: no mapping files (*.yaml) found"])
    profiles, problems = [], []
    for file in files:
        try:
            profiles.append(load_profile(file))
        except MappingError as exc:
            problems.extend(exc.problems)
    if problems:
        raise MappingError(problems)
    return profiles
