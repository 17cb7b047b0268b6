"""Patient profiles (``kind: patient``): ADT messages mapped to patient updates.

An order profile makes worklist items; a patient profile says which patient an ADT message
is about (and, for merges, which identifier it replaces) and which item attributes carry the
patient's demographics. The lifecycle then applies the update to that patient's live items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ruamel.yaml.comments import CommentedMap

from bridge.mapping.engine import _groups
from bridge.mapping.rules import Rule, Scope, SequenceRule, evaluate_rules
from bridge.message import Message

PATIENT_KEYS = {"profile", "description", "kind", "match", "charset", "backslash", "groups",
                "patient", "attributes"}


@dataclass
class PatientProfile:
    name: str
    file: str
    match: object  # loader.Match
    group_segment: str  # one patient per group starting with this segment (PID)
    patient_id: Rule
    prior_id: Rule  # MRG-1: the identifier a merge (A40) or change (A47) retires
    attributes: list[Rule | SequenceRule]
    charset: str | None = None
    kind: str = "patient"
    extends: str | None = None  # patient profiles do not extend others (yet)
    description: str = ""
    backslash: str = "/"  # replaces a backslash inside one mapped value
    warnings: list[str] = field(default_factory=list)  # check-mapping's (none yet)


@dataclass
class PatientUpdate:
    patient_id: str
    prior_id: str
    attributes: dict[str, object]  # only the values the message carries
    group_index: int


def read_patient_profile(reader, doc: CommentedMap, name: str, match, file: str
                         ) -> PatientProfile:
    """Build a patient profile with the loader's reader (it collects the problems)."""
    from bridge.mapping.loader import _unknown

    for key in doc:
        if key not in PATIENT_KEYS:
            reader.problem(doc, key, f"unknown key {key!r} in a patient profile"
                                     f"{_unknown(key, PATIENT_KEYS)}")
    spec = doc.get("patient")
    if not isinstance(spec, CommentedMap) or "id" not in spec:
        reader.problem(doc, "patient" if "patient" in doc else None,
                       "a patient profile needs 'patient' with 'id' (and 'prior_id' for merges)")
        spec = CommentedMap()
    for key in spec:
        if key not in ("id", "prior_id"):
            reader.problem(spec, key, f"patient: unknown key {key!r} (known: id, prior_id)")
    patient_id = reader.rule("patient.id", "LO", spec, "id", spec.get("id"))
    patient_id.required = True
    prior_id = reader.rule("patient.prior_id", "LO", spec, "prior_id", spec.get("prior_id"))
    groups = doc.get("groups") or CommentedMap()
    charset = doc.get("charset")
    description = str(doc.get("description") or "")
    return PatientProfile(description=description,
        name=name, file=file, match=match, group_segment=str(groups.get("per", "PID")),
        patient_id=patient_id, prior_id=prior_id,
        attributes=reader.attributes(doc.get("attributes") or CommentedMap()),
        charset=str(charset) if charset else None, backslash=reader.backslash(doc, "/"))


def apply_patient_profile(profile: PatientProfile, msg: Message,
                          pause: Callable[[], None] | None = None) -> list[PatientUpdate]:
    """One update per PID group; raises MappingFieldError when the patient ID is missing."""
    header, groups = _groups(msg.segments, profile.group_segment)
    updates = []
    for index, group in enumerate(groups, start=1):
        scope = Scope([group, header, msg.segments], msg.seps, backslash=profile.backslash)
        patient_id = str(profile.patient_id.evaluate(scope, None))
        prior_id = str(profile.prior_id.evaluate(scope, None))
        values = evaluate_rules(profile.attributes, scope, None)
        # An empty field in an update means "not sent", not "erase".
        values = {k: v for k, v in values.items() if v not in ("", [], None)}
        updates.append(PatientUpdate(patient_id, prior_id, values, index))
        if pause is not None:
            pause()  # after each group: a worker thread lets other threads run (processor)
    return updates
