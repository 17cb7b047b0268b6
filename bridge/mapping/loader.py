"""Mapping files: YAML in, checked `Profile` objects out, errors as ``file:line:col: what``.

Every problem in every file is collected before anything is refused, so an integrator
fixes a mapping in one pass. docs/mapping.md is the user's description of the format.
"""

from __future__ import annotations

import copy
import csv
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from bridge.completeness import STEP_SEQUENCE, profile_warnings
from bridge.decoding import UnknownCharset, lookup_charset
from bridge.mapping.dicomdict import (
    check_uid,
    check_value,
    is_code_sequence,
    item_problem,
    keyword_vr,
)
from bridge.mapping.rules import MULTI_VALUE, Rule, SequenceRule, Test
from bridge.mapping.transforms import CODE_TRANSFORMS, TRANSFORMS
from bridge.message import Path, PathError

if TYPE_CHECKING:
    from bridge.mapping.patient import PatientProfile


class MappingError(Exception):
    """One or more problems in mapping files; each line reads ``file:line:col: what``."""

    phi_free = True  # names files and keys, never patient data (logprivacy.py)

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
        """How specifically this profile matches (-1: not at all).

        Each condition the profile states and the message meets adds one, so a vendor
        profile naming MSH-3 beats the baseline that names only the message type. Values
        are compared trimmed: real senders pad MSH-3 with spaces.
        """
        # Written out rather than looped over pairs: every message is scored against every
        # profile, and most profiles fail at the message type.
        score = 0
        if self.message_types:
            if message_type.strip() not in self.message_types:
                return -1
            score += 1
        if self.sending_applications:
            if application.strip() not in self.sending_applications:
                return -1
            score += 1
        if self.sending_facilities:
            if facility.strip() not in self.sending_facilities:
                return -1
            score += 1
        if self.versions:
            if version.strip() not in self.versions:
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
    kind: str = "order"  # "patient" profiles (ADT) are PatientProfile, mapping/patient.py
    uid_root: str = "2.25"  # root of derived and generated UIDs
    extends: str | None = None  # the base profile's name
    description: str = ""
    backslash: str = "/"  # replaces a backslash inside one mapped value
    # What check-mapping warns about without refusing the profile (items it can make
    # that a worklist peer would ignore): "file:line:col: text".
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Omit:
    """`Keyword: {omit: true}` in a profile that extends another: drop the base's rule."""

    keyword: str
    where: str


_TOP_KEYS = {"profile", "description", "kind", "extends", "match", "charset", "uid_root",
             "backslash", "groups", "order", "attributes"}
_RULE_KEYS = {"from", "value", "template", "as", "replace", "map", "lookup", "map_default",
              "default", "required", "uid_from", "uid_root", "uid_generate", "when", "omit"}
_MATCH_KEYS = {"message_type": "message_types", "sending_application": "sending_applications",
               "sending_facility": "sending_facilities", "version": "versions"}
_KINDS = {"order", "patient"}  # patient profiles: mapping/patient.py
# Transforms whose output only makes sense in one VR.
_TRANSFORM_VRS = {"date": {"DA"}, "time": {"TM"}, "pn": {"PN"}, "xcn": {"PN"}}
_SEGMENT = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def _known(keys: object) -> str:
    return ", ".join(sorted(keys))  # type: ignore[call-overload]


def did_you_mean(word: object, choices: object, cutoff: float = 0.75) -> str:
    """' (did you mean X?)' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices),  # type: ignore[call-overload]
                                      n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown(word: object, known: object) -> str:
    """The tail of an "unknown key" message: the suggestion, else the list of known keys."""
    return did_you_mean(word, known) or f" (known: {_known(known)})"


# Standard segment names of HL7 v2.1 to v2.8.2 (the tables of hl7apy), so that a typo in a
# path ("PDI-3") is caught at load; Z segments are site-defined and always allowed.
_SEGMENT_TABLE = """
ABS ACC ADD ADJ AFF AIG AIL AIP AIS AL1 APR ARQ ARV AUT BHS BLC BLG BPO BPX BTS BTX BUI CDM CDO
CER CM0 CM1 CM2 CNS CON CSP CSR CSS CTD CTI DB1 DG1 DMI DON DPS DRG DSC DSP ECD ECR EDU EQL EQP
EQU ERQ ERR EVN FAC FHS FT1 FTS GOL GP1 GP2 GT1 IAM IAR IIM ILT IN1 IN2 IN3 INV IPC IPR ISD ITM
IVC IVT LAN LCC LCH LDP LOC LRL MCP MFA MFE MFI MRG MSA MSH NCK NDS NK1 NPU NSC NST NTE OBR OBX
ODS ODT OM1 OM2 OM3 OM4 OM5 OM6 OM7 OMC ORC ORG ORO OVR PAC PCE PCR PD1 PDA PDC PEO PES PID PKG
PM1 PMT PR1 PRA PRB PRC PRD PRT PSG PSH PSL PSS PTH PV1 PV2 PYE QAK QID QPD QRD QRF QRI RCP RDF
RDT REL RF1 RFI RGS RMI ROL RQ1 RQD RX1 RXA RXC RXD RXE RXG RXO RXR RXV SAC SCD SCH SCP SDD SFT
SGH SGT SHP SID SLT SPM SPR STF STZ TCC TCD TQ1 TQ2 TXA UAC UB1 UB2 URD URS VAR VND VTQ
"""
HL7_SEGMENTS = frozenset(_SEGMENT_TABLE.split())


def segment_problem(name: str) -> str | None:
    if name in HL7_SEGMENTS or name.startswith("Z"):
        return None
    # Three letters: a swapped pair (PDI for PID) is the likeliest slip, then difflib.
    swapped = sorted(s for s in HL7_SEGMENTS if sorted(s) == sorted(name))
    hint = f" (did you mean {swapped[0]}?)" if swapped else \
        did_you_mean(name, HL7_SEGMENTS, 0.6)
    return (f"{name!r} is not an HL7 segment{hint} (site "
            "segments start with Z)")


def _dicom_keywords() -> list[str]:
    from pydicom.datadict import keyword_dict

    return list(keyword_dict)


class _Reader:
    """Turns one YAML document into a Profile, collecting problems with their positions."""

    def __init__(self, file: FsPath):
        self.path = file
        self.file = str(file)
        self.problems: list[str] = []

    def at(self, node: object, key: object = None, value: bool = False) -> str:
        line, col = 0, 0
        lc = getattr(node, "lc", None)
        if lc is not None:
            line, col = lc.line, lc.col
            if key is not None:
                try:
                    if isinstance(node, CommentedMap):
                        line, col = lc.value(key) if value else lc.key(key)
                    else:
                        line, col = lc.item(key)
                except (KeyError, IndexError, TypeError):
                    pass
        return f"{self.file}:{(line or 0) + 1}:{(col or 0) + 1}"

    def problem(self, node: object, key: object, text: str, value: bool = False) -> None:
        self.problems.append(f"{self.at(node, key, value)}: {text}")

    # --- sources ------------------------------------------------------------------------

    def paths(self, node: object, key: object, value: object) -> list[Path]:
        texts = value if isinstance(value, list) else [value]
        out = []
        for text in texts:
            if not isinstance(text, str):
                self.problem(node, key, f"expected an HL7 path such as PID-3.1, got {text!r}",
                             value=True)
                continue
            try:
                path = Path.parse(text)
            except PathError as exc:
                self.problem(node, key, str(exc), value=True)
                continue
            problem = segment_problem(path.segment)
            if problem:
                self.problem(node, key, f"{text}: {problem}", value=True)
                continue
            out.append(path)
        return out

    def template(self, node: CommentedMap, text: object) -> list[str | Path]:
        if not isinstance(text, str):
            self.problem(node, "template", "template must be a string such as '{OBR-4.2}'",
                         value=True)
            return []
        parts: list[str | Path] = []
        rest = text
        while "{" in rest:
            before, _, after = rest.partition("{")
            inner, closed, rest = after.partition("}")
            if not closed:
                self.problem(node, "template", f"unclosed '{{' in template {text!r}",
                             value=True)
                break
            parts.append(before)
            parts.extend(self.paths(node, "template", inner))
        parts.append(rest)
        return [p for p in parts if p != ""]

    def condition(self, keyword: str, node: CommentedMap, spec: object) -> list[Test]:
        """`when: {PATH: value | [values] | {matches: regex} | {not: value(s)}}`."""
        if not isinstance(spec, CommentedMap) or not spec:
            self.problem(node, "when", f"{keyword}: when must map HL7 paths to the values "
                                       "they must have, e.g. {PV1-15: B6}", value=True)
            return []
        tests = []
        for text, expected in spec.items():
            paths = self.paths(spec, text, str(text))
            if not paths:
                continue
            test = Test(paths[0])
            if isinstance(expected, CommentedMap):
                for k in expected:
                    if k not in ("matches", "not"):
                        self.problem(expected, k, f"{keyword}: when {text}: unknown key {k!r}"
                                                  f"{_unknown(k, ('matches', 'not'))}")
                if "matches" in expected:
                    try:
                        test.pattern = re.compile(str(expected["matches"]))
                    except re.error as exc:
                        self.problem(expected, "matches", f"{keyword}: when {text}: bad "
                                     f"regular expression: {exc}", value=True)
                elif "not" in expected:
                    test.values, test.negate = self._strings(expected["not"]), True
            else:
                test.values = self._strings(expected)
            tests.append(test)
        return tests

    @staticmethod
    def _strings(value: object) -> list[str]:
        values = value if isinstance(value, list) else [value]
        return ["" if v is None else str(v) for v in values]

    # --- rules --------------------------------------------------------------------------

    def check(self, keyword: str, vr: str, node: object, key: object, text: str,
              what: str) -> None:
        problem = check_value(vr, text)
        if problem:
            self.problem(node, key, f"{keyword}: {what} {problem}", value=True)

    def rule(self, keyword: str, vr: str, node: object, key: object,
             spec: object) -> Rule | _Omit:
        where = self.at(node, key)
        rule = Rule(keyword=keyword, vr=vr, where=where)
        if isinstance(spec, str) or (isinstance(spec, CommentedSeq)
                                     and all(isinstance(s, str) for s in spec)):
            rule.sources = self.paths(node, key, list(spec) if isinstance(spec, list) else spec)
            return rule
        if spec is None:
            rule.value = ""
            return rule
        if not isinstance(spec, CommentedMap):
            self.problem(node, key, f"{keyword}: expected a path, or a mapping with from/value/"
                                    f"template, got {type(spec).__name__}", value=True)
            return rule
        for k in spec:
            if k not in _RULE_KEYS:
                self.problem(spec, k, f"{keyword}: unknown key {k!r}{_unknown(k, _RULE_KEYS)}")
        if spec.get("omit"):
            return _Omit(keyword, where)
        given = [k for k in ("from", "value", "template") if k in spec]
        uid_only = not given and ("uid_from" in spec or spec.get("uid_generate"))
        if len(given) > 1 or (not given and not uid_only):
            self.problem(node, key, f"{keyword}: give exactly one of from, value, template")
        if "from" in spec:
            rule.sources = self.paths(spec, "from", spec["from"])
        if "value" in spec:
            rule.value = "" if spec["value"] is None else str(spec["value"])
            if vr != "SQ":
                self.check(keyword, vr, spec, "value", rule.value, "value")
        if "template" in spec:
            rule.template = self.template(spec, spec["template"])
        if "as" in spec:
            self.transform(keyword, vr, spec, rule)
        if "replace" in spec:
            self.replace(keyword, spec, rule)
        if "lookup" in spec:
            rule.value_map = self.lookup(keyword, vr, spec)
            given = spec["lookup"]
            rule.map_label = f"lookup {given if isinstance(given, str) else given.get('file')}"
        if "map" in spec:
            table = spec["map"]
            if not isinstance(table, CommentedMap):
                self.problem(spec, "map", f"{keyword}: map must be a table of value: value",
                             value=True)
            else:
                inline = {str(k): "" if v is None else str(v) for k, v in table.items()}
                for k, v in inline.items():
                    self.check(keyword, vr, table, k, v, f"map {k!r} ->")
                rule.value_map = {**(rule.value_map or {}), **inline}
        if "map_default" in spec:
            rule.map_default = "" if spec["map_default"] is None else str(spec["map_default"])
            self.check(keyword, vr, spec, "map_default", rule.map_default, "map_default")
            if rule.value_map is None:
                self.problem(spec, "map_default", f"{keyword}: map_default needs a map or "
                                                  "a lookup")
        if "default" in spec:
            rule.default = "" if spec["default"] is None else str(spec["default"])
            self.check(keyword, vr, spec, "default", rule.default, "default")
        if "required" in spec:
            # YAML 1.2 reads `no` and "false" as strings, which bool() would call true.
            if isinstance(spec["required"], bool):
                rule.required = spec["required"]
            else:
                self.problem(spec, "required", f"{keyword}: required is true or false, "
                                               f"not {spec['required']!r}", value=True)
        if "uid_from" in spec or "uid_generate" in spec or "uid_root" in spec:
            self.uid(keyword, vr, spec, rule)
        if "when" in spec:
            rule.when = self.condition(keyword, spec, spec["when"])
        return rule

    def transform(self, keyword: str, vr: str, spec: CommentedMap, rule: Rule) -> None:
        name = spec["as"]
        if name not in TRANSFORMS:
            self.problem(spec, "as", f"{keyword}: unknown transform {name!r}"
                                     f"{_unknown(name, TRANSFORMS)}", value=True)
        elif name in CODE_TRANSFORMS and vr != "SQ":
            self.problem(spec, "as", f"{keyword}: 'as: {name}' makes a code sequence item, "
                                     f"but {keyword} is {vr}, not a sequence", value=True)
        elif name in _TRANSFORM_VRS and vr not in _TRANSFORM_VRS[name]:
            self.problem(spec, "as", f"{keyword}: 'as: {name}' makes a "
                                     f"{'/'.join(sorted(_TRANSFORM_VRS[name]))} value, but "
                                     f"{keyword} is {vr}", value=True)
        else:
            rule.transform = name

    def replace(self, keyword: str, spec: CommentedMap, rule: Rule) -> None:
        table = spec["replace"]
        if not isinstance(table, CommentedMap):
            self.problem(spec, "replace", f"{keyword}: replace must be a table of "
                                          "'regular expression': replacement", value=True)
            return
        for pattern, replacement in table.items():
            try:
                compiled = re.compile(str(pattern))
            except re.error as exc:
                self.problem(table, pattern, f"{keyword}: bad regular expression "
                                             f"{pattern!r}: {exc}")
                continue
            # \1 in YAML is a backreference for integrators, as in sed.
            rule.replace.append((compiled, "" if replacement is None else str(replacement)))

    def lookup(self, keyword: str, vr: str, spec: CommentedMap) -> dict[str, str] | None:
        """A CSV table next to the mapping: `lookup: file.csv` or {file:, key:, value:}."""
        given = spec["lookup"]
        if isinstance(given, str):
            name, key_col, value_col = given, None, None
        elif isinstance(given, CommentedMap) and isinstance(given.get("file"), str):
            name, key_col, value_col = given["file"], given.get("key"), given.get("value")
        else:
            self.problem(spec, "lookup", f"{keyword}: lookup is a CSV file name, or "
                                         "{file: NAME.csv, key: COLUMN, value: COLUMN}",
                         value=True)
            return None
        file = self.path.parent / name
        try:
            rows = list(csv.reader(file.read_text(encoding="utf-8-sig").splitlines()))
        except OSError as exc:
            self.problem(spec, "lookup", f"{keyword}: cannot read lookup table {file}: "
                                         f"{exc.strerror}", value=True)
            return None
        if not rows or len(rows[0]) < 2:
            self.problem(spec, "lookup", f"{keyword}: {file} needs a header row with at least "
                                         "two columns (key, value)", value=True)
            return None
        header = [h.strip() for h in rows[0]]
        columns = []
        for wanted, fallback in ((key_col, 0), (value_col, 1)):
            if wanted is None:
                columns.append(fallback)
            elif str(wanted) in header:
                columns.append(header.index(str(wanted)))
            else:
                self.problem(given, "key" if wanted == key_col else "value",
                             f"{keyword}: {file} has no column {wanted!r} (columns: "
                             f"{', '.join(header)})", value=True)
                return None
        k, v = columns
        table: dict[str, str] = {}
        for line, row in enumerate(rows[1:], start=2):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) <= max(k, v):
                self.problems.append(f"{file}:{line}:1: {keyword}: row has {len(row)} "
                                     f"columns, expected at least {max(k, v) + 1}")
                continue
            key, value = row[k].strip(), row[v].strip()
            if key in table:
                self.problems.append(f"{file}:{line}:1: {keyword}: key {key!r} appears twice")
            problem = check_value(vr, value)
            if problem:
                self.problems.append(f"{file}:{line}:1: {keyword}: {problem}")
            table[key] = value
        return table

    def uid(self, keyword: str, vr: str, spec: CommentedMap, rule: Rule) -> None:
        if vr != "UI":
            key = next(k for k in ("uid_from", "uid_generate", "uid_root") if k in spec)
            self.problem(spec, key, f"{keyword}: {key} only applies to UIDs, and {keyword} "
                                    f"is {vr}")
            return
        if "uid_from" in spec:
            rule.uid_from = self.paths(spec, "uid_from", spec["uid_from"])
        rule.uid_generate = bool(spec.get("uid_generate", False))
        if "uid_root" in spec:
            rule.uid_root = self.uid_root(spec, "uid_root")

    def backslash(self, doc: CommentedMap, inherited: str) -> str:
        """`backslash: "/"`: what replaces a backslash inside one mapped value."""
        if "backslash" not in doc:
            return inherited
        text = "" if doc["backslash"] is None else str(doc["backslash"])
        if MULTI_VALUE in text or len(text) > 4 or not text.isprintable():
            self.problem(doc, "backslash", f"backslash: {text!r} cannot replace a backslash "
                                           "(at most 4 printable characters, no backslash)",
                         value=True)
            return inherited
        return text

    def uid_root(self, node: CommentedMap, key: str) -> str | None:
        root = str(node[key])
        problem = check_uid(root)
        if problem or len(root) > 40:
            self.problem(node, key, f"uid_root: {problem or f'{root!r} is too long'} "
                                    "(a root leaves room for the derived number: at most 40 "
                                    "characters)", value=True)
            return None
        return root

    # --- attributes and sequences ---------------------------------------------------------

    def attributes(self, node: object, parent: str | None = None,
                   label: str = "attributes") -> list:
        if not isinstance(node, CommentedMap):
            self.problem(node, None, f"{label}: expected a mapping of DICOM keywords to rules")
            return []
        rules: list = []
        for keyword, spec in node.items():
            vr = keyword_vr(str(keyword))
            if vr is None:
                self.problem(node, keyword, f"{keyword!r} is not a DICOM keyword"
                                            f"{did_you_mean(keyword, _dicom_keywords())}")
                continue
            problem = item_problem(str(keyword), parent)
            if problem:
                self.problem(node, keyword, problem)
                continue
            if vr == "SQ":
                rules.append(self.sequence(keyword, node, spec))
            elif isinstance(spec, CommentedSeq) and not all(isinstance(s, str) for s in spec):
                self.problem(node, keyword, f"{keyword} is {vr}, not a sequence: "
                                            "it cannot hold a list of items")
            else:
                rules.append(self.rule(keyword, vr, node, keyword, spec))
        return rules

    def sequence(self, keyword: str, node: CommentedMap, spec: object) -> SequenceRule | _Omit:
        seq = SequenceRule(keyword=keyword, where=self.at(node, keyword))
        if isinstance(spec, CommentedSeq):
            seq.items = [self.attributes(item, keyword, f"{keyword}[{i}]")
                         for i, item in enumerate(spec)]
        elif isinstance(spec, CommentedMap) and spec.get("omit"):
            return _Omit(keyword, seq.where)
        elif isinstance(spec, CommentedMap) and "from" in spec:
            if spec.get("as") not in CODE_TRANSFORMS:
                self.problem(spec, "as" if "as" in spec else None,
                             f"{keyword} is a sequence: 'from' needs 'as: code' or "
                             "'as: code_alternate' (a CE/CWE field to a code item)")
            elif not is_code_sequence(keyword):
                self.problem(spec, "as", f"{keyword} is not a code sequence: 'as: "
                                         f"{spec['as']}' makes code items", value=True)
            rule = self.rule(keyword, "SQ", node, keyword, spec)
            if isinstance(rule, Rule):
                seq.code_rule = rule
                seq.when = rule.when
        elif spec is None:
            seq.items = []
        else:
            self.problem(node, keyword, f"{keyword} is a sequence: give a list of items, "
                                        "or 'from: <CE field>' with 'as: code'")
        return seq


# --- extends ------------------------------------------------------------------------------


def _merge_rules(base: list, child: list, reader: _Reader) -> list:
    """The base's rules with the child's replacing them by keyword, in the base's order.

    A sequence given as a list of items in both merges item by item, so a vendor profile
    can change one attribute inside ScheduledProcedureStepSequence and keep the rest.
    """
    by_keyword = {r.keyword: r for r in child}
    out: list = []
    for rule in base:
        mine = by_keyword.pop(rule.keyword, None)
        if mine is None:
            out.append(rule)
        elif isinstance(mine, _Omit):
            continue
        elif (isinstance(rule, SequenceRule) and isinstance(mine, SequenceRule)
              and rule.items and mine.items and len(rule.items) == len(mine.items)):
            out.append(SequenceRule(mine.keyword, mine.where, [
                _merge_rules(b, c, reader)
                for b, c in zip(rule.items, mine.items, strict=True)]))
        else:
            out.append(_drop_omits([mine], reader)[0])
    out.extend(_drop_omits(list(by_keyword.values()), reader))
    return out


def _drop_omits(rules: list, reader: _Reader, extends: bool = True) -> list:
    """Rules without `omit` markers; a marker with nothing to omit is an error."""
    out = []
    for rule in rules:
        if isinstance(rule, _Omit):
            why = "the base profile has no such attribute here" if extends else \
                "omit only applies in a profile that extends another"
            reader.problems.append(f"{rule.where}: {rule.keyword}: {why}")
        elif isinstance(rule, SequenceRule):
            rule.items = [_drop_omits(item, reader, extends) for item in rule.items]
            out.append(rule)
        else:
            out.append(rule)
    return out


class _Library:
    """The profiles of one folder by name, loaded on demand, for `extends`."""

    def __init__(self, folder: FsPath):
        self.folder = folder
        self._names: dict[str, FsPath] | None = None
        self.loaded: dict[FsPath, Profile] = {}
        self.failed: dict[FsPath, list[str]] = {}
        self.loading: list[FsPath] = []

    def find(self, name: str) -> FsPath | None:
        if self._names is None:
            self._names = {}
            for file in _mapping_files(self.folder):
                doc, _ = _load_document(file)
                if doc is not None and isinstance(doc.get("profile"), str):
                    self._names.setdefault(doc["profile"], file)
        return self._names.get(name)

    def load(self, file: FsPath) -> Profile:
        file = file.resolve()
        if file in self.loaded:
            return self.loaded[file]
        if file in self.failed:
            raise MappingError(self.failed[file])
        self.loading.append(file)
        try:
            profile = _load(file, self)
        except MappingError as exc:
            self.failed[file] = exc.problems
            raise
        finally:
            self.loading.pop()
        self.loaded[file] = profile
        return profile


def _mapping_files(folder: FsPath) -> list[FsPath]:
    return sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))


def _load_document(file: FsPath) -> tuple[CommentedMap | None, list[str]]:
    try:
        doc = YAML(typ="rt").load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [f"{file}:1:1: cannot read: {exc.strerror}"]
    except UnicodeDecodeError as exc:
        before = file.read_bytes()[:exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        return None, [f"{file}:{line}:{column}: not UTF-8 (byte 0x{exc.object[exc.start]:02x});"
                      " save the file as UTF-8"]
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        return None, [f"{file}:{pos}: not valid YAML: {getattr(exc, 'problem', exc)}"]
    if not isinstance(doc, CommentedMap):
        return None, [f"{file}:1:1: a mapping file is a YAML mapping with 'profile' and "
                      "'attributes'"]
    return doc, []


def _base(doc: CommentedMap, r: _Reader, library: _Library) -> Profile | None:
    name = doc.get("extends")
    if name is None:
        return None
    file = library.find(str(name))
    if file is None:
        r.problem(doc, "extends", f"extends: no profile named {name!r} in {library.folder}",
                  value=True)
        return None
    if file.resolve() in library.loading:
        r.problem(doc, "extends", f"extends: {name!r} extends this profile in turn (a cycle)",
                  value=True)
        return None
    try:
        return library.load(file)
    except MappingError as exc:
        # The base's own problems first, so that checking the child alone shows them.
        r.problems.extend(exc.problems)
        r.problem(doc, "extends", f"extends: profile {name!r} ({file}) has errors, listed "
                                  "with its file name", value=True)
        return None


def _load(file: FsPath, library: _Library) -> Profile:
    doc, problems = _load_document(file)
    if doc is None:
        raise MappingError(problems)
    r = _Reader(file)
    if doc.get("kind") == "patient":
        return _load_patient_profile(r, doc, file)
    for key in doc:
        if key not in _TOP_KEYS:
            r.problem(doc, key, f"unknown key {key!r}{_unknown(key, _TOP_KEYS)}")
    name = doc.get("profile")
    if not isinstance(name, str) or not name:
        r.problem(doc, None, "'profile' (the profile's name) is missing")
        name = file.stem
    base = _base(doc, r, library)
    # A child whose base failed to load: what it lacks may come from the base, so only
    # its own errors are reported, not "missing" ones.
    inherits = base is not None or "extends" in doc

    kind = str(doc.get("kind", base.kind if base else "order"))
    if kind not in _KINDS:
        r.problem(doc, "kind", f"kind: unknown kind {kind!r} (known: order, patient)",
                  value=True)

    match = copy.deepcopy(base.match) if base else Match()
    spec = doc.get("match")
    if isinstance(spec, CommentedMap):
        for key, value in spec.items():
            if key not in _MATCH_KEYS:
                r.problem(spec, key, f"match: unknown key {key!r}{_unknown(key, _MATCH_KEYS)}")
                continue
            values = value if isinstance(value, list) else [value]
            setattr(match, _MATCH_KEYS[key], [str(v).strip() for v in values])
    elif spec is not None:
        r.problem(doc, "match", "match must be a mapping", value=True)
    if not match.message_types and not inherits:
        r.problem(doc, "match" if "match" in doc else None,
                  "match: message_type is missing (for example ORM^O01)")

    group_segment = base.group_segment if base else "ORC"
    item_segment = base.item_segment if base else None
    groups = doc.get("groups")
    if isinstance(groups, CommentedMap):
        for key, value in groups.items():
            if key not in ("per", "items"):
                r.problem(groups, key, f"groups: unknown key {key!r}"
                                       f"{_unknown(key, ('items', 'per'))}")
            elif value is not None and not _SEGMENT.match(str(value)):
                r.problem(groups, key, f"groups: {key}: {value!r} is not a segment name",
                          value=True)
        group_segment = str(groups.get("per", group_segment))
        if "items" in groups:
            item_segment = str(groups["items"]) if groups["items"] else None
    elif groups is not None:
        r.problem(doc, "groups", "groups must be a mapping such as {per: ORC, items: IPC}",
                  value=True)

    order = doc.get("order")
    if order is None and not inherits:
        r.problem(doc, None, "'order' must give key, control and status rules")
    if order is not None and not isinstance(order, CommentedMap):
        r.problem(doc, "order", "'order' must give key, control and status rules", value=True)
        order = None
    order = order or CommentedMap()
    for k in order:
        if k not in ("key", "control", "status"):
            r.problem(order, k, f"order: unknown key {k!r}"
                                f"{_unknown(k, ('control', 'key', 'status'))}")
    order_rules: dict[str, Rule] = {}
    for k, vr in (("key", "LO"), ("control", "ID"), ("status", "ID")):
        if k in order or base is None:
            rule = r.rule(f"order.{k}", vr, order, k, order.get(k))
            order_rules[k] = rule if isinstance(rule, Rule) else Rule(f"order.{k}", vr, "")
        else:
            order_rules[k] = getattr(base, f"order_{k}")
    order_rules["key"].required = True  # without a key an order cannot be found again

    if "attributes" not in doc and not inherits:
        r.problem(doc, None, "'attributes' is missing")
    attributes = r.attributes(doc.get("attributes") or CommentedMap())
    if base is not None:
        attributes = _merge_rules(base.attributes, attributes, r)
    elif "extends" not in doc:
        attributes = _drop_omits(attributes, r, extends=False)
    # else: the base failed to load; that is reported and this profile is not built.

    charset = doc.get("charset", base.charset if base else None)
    if charset:
        try:
            lookup_charset(str(charset))
        except UnknownCharset:
            r.problem(doc, "charset", f"charset: {charset!r} is not an HL7 character set this "
                                      "bridge knows (e.g. 8859/1, UNICODE UTF-8)", value=True)
    uid_root = base.uid_root if base else "2.25"
    if "uid_root" in doc:
        uid_root = r.uid_root(doc, "uid_root") or uid_root
    backslash = r.backslash(doc, base.backslash if base else "/")
    if base is not None or "extends" not in doc:
        _check_step_sequence(attributes, r)
    if r.problems:
        raise MappingError(r.problems)
    return Profile(
        name=name, file=str(file), match=match, group_segment=group_segment,
        item_segment=item_segment, order_key=order_rules["key"],
        order_control=order_rules["control"], order_status=order_rules["status"],
        attributes=attributes, charset=str(charset) if charset else None, kind=kind,
        uid_root=uid_root, extends=base.name if base else None,
        description=str(doc.get("description", base.description if base else "")),
        backslash=backslash, warnings=profile_warnings(attributes, str(file)),
    )


def _check_step_sequence(attributes: list, r: _Reader) -> None:
    """A worklist item has exactly one scheduled step: wlmscpfs ignores any other file, and
    a YAML slip (two list items under an `extends`) would otherwise pass unnoticed."""
    for rule in attributes:
        if isinstance(rule, SequenceRule) and rule.keyword == STEP_SEQUENCE \
                and rule.code_rule is None and len(rule.items) != 1:
            r.problems.append(
                f"{rule.where}: {STEP_SEQUENCE} must have exactly one item (a worklist item "
                f"is one scheduled step), this profile gives {len(rule.items)}: write the "
                "step's attributes as one list item ('- ' only before the first); see "
                "'Extends' in docs/mapping.md for how items merge")


def _load_patient_profile(r: _Reader, doc: CommentedMap, file: FsPath) -> PatientProfile:
    from bridge.mapping.patient import read_patient_profile

    name = doc.get("profile") or file.stem
    match = Match()
    for key, value in (doc.get("match") or {}).items():
        if key in _MATCH_KEYS:
            values = value if isinstance(value, list) else [value]
            setattr(match, _MATCH_KEYS[key], [str(v).strip() for v in values])
        else:
            r.problem(doc["match"], key, f"match: unknown key {key!r} "
                                         f"(known: {_known(_MATCH_KEYS)})")
    profile = read_patient_profile(r, doc, str(name), match, str(file))
    if r.problems:
        raise MappingError(r.problems)
    return profile


def load_profile(file: FsPath) -> Profile:
    """Load and check one mapping file (and the profiles it extends, from its folder);
    raise MappingError listing every problem."""
    return _Library(file.resolve().parent).load(file)


def load_files(files: list[FsPath]) -> list[Profile]:
    """Load several mapping files; every problem of every file is reported at once."""
    libraries: dict[FsPath, _Library] = {}
    profiles, problems = [], []
    for file in files:
        folder = file.resolve().parent
        library = libraries.setdefault(folder, _Library(folder))
        try:
            profiles.append(library.load(file))
        except MappingError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise MappingError(problems)
    names: dict[str, str] = {}
    matches: dict[tuple, Profile] = {}
    for p in profiles:
        if p.name in names and names[p.name] != p.file:
            problems.append(f"{p.file}:1:1: profile name {p.name!r} is also used by "
                            f"{names[p.name]}")
        names[p.name] = p.file
        # Two profiles with the same match would tie for every message they take.
        criteria = tuple(tuple(sorted(getattr(p.match, f))) for f in _MATCH_KEYS.values())
        other = matches.get(criteria)
        if other is not None and other.file != p.file:
            problems.append(f"{p.file}:1:1: profile {p.name!r} matches exactly the same "
                            f"messages as {other.name!r} ({other.file}): make one more "
                            "specific")
        matches.setdefault(criteria, p)
    if problems:
        raise MappingError(problems)
    return profiles


def load_profiles(folder: FsPath) -> list[Profile]:
    """Every ``*.yaml`` in `folder`, sorted by file name; all problems reported at once."""
    files = _mapping_files(folder)
    if not files:
        raise MappingError([f"{folder}: no mapping files (*.yaml) found"])
    return load_files(files)
