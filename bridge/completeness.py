"""Would a worklist peer serve this item? The rules real MWL servers apply to a `.wl` file.

DCMTK's wlmscpfs (file-reject on, its default) silently skips a file unless it holds every
return key of type 1 (`WlmFileSystemInteractionManager::DatasetIsComplete`, dcmwlm/wlfsim.h;
REFERENCE section 5):

- exactly one item in ScheduledProcedureStepSequence, with a non-empty
  ScheduledStationAETitle, ScheduledProcedureStepStartDate, ScheduledProcedureStepStartTime,
  Modality and ScheduledProcedureStepID;
- a ScheduledProcedureStepDescription or a complete ScheduledProtocolCodeSequence (every
  item with CodeValue and CodingSchemeDesignator), and neither present with a zero length;
  the same for RequestedProcedureDescription / RequestedProcedureCodeSequence;
- non-empty RequestedProcedureID, StudyInstanceUID, PatientName and PatientID;
- ReferencedStudySequence / ReferencedPatientSequence items with both SOP class and
  instance UIDs.

Orthanc's worklists plugin serves any parsable file but matches on the step's Modality and
ScheduledProcedureStepStartDate (and its REST API refuses an item without them), which the
rules above already demand. An order whose item breaks them is answered AE naming the HL7
field of the missing value: a RIS that got AA believes the modality sees the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.mapping.rules import MappingFieldError, MappingWarning, Rule, SequenceRule, TraceEntry

if TYPE_CHECKING:
    from bridge.mapping.engine import MappedOrder

STEP_SEQUENCE = "ScheduledProcedureStepSequence"
STEP_NEEDS = ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
              "ScheduledProcedureStepStartTime", "Modality", "ScheduledProcedureStepID")
TOP_NEEDS = ("PatientID", "PatientName", "StudyInstanceUID", "RequestedProcedureID")
# (description, code sequence, where): one of each pair must hold a value.
PAIRS = (("ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence", STEP_SEQUENCE),
         ("RequestedProcedureDescription", "RequestedProcedureCodeSequence", None))
_REFERENCES = ("ReferencedStudySequence", "ReferencedPatientSequence")


@dataclass
class Gap:
    """One reason a peer would ignore the item; `attribute` names the rule to blame
    (`ScheduledProcedureStepSequence[0].Modality`), `text` says what is wrong."""

    attribute: str
    text: str


def _complete_code(item: object) -> bool:
    return isinstance(item, dict) and bool(item.get("CodeValue")) and \
        bool(item.get("CodingSchemeDesignator"))


def tidy(item: dict) -> list[str]:
    """Drop what would make a servable item incomplete for nothing; say what was dropped.

    A zero-length description next to a valid code (DCMTK refuses the pair), and reference
    items lacking one of their two UIDs, are left out rather than written.
    """
    notes = []
    steps = item.get(STEP_SEQUENCE)
    for description, codes, where in PAIRS:
        holders = [item] if where is None else \
            [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        for holder in holders:
            code_items = holder.get(codes)
            if isinstance(code_items, list):
                kept = [c for c in code_items if _complete_code(c)]
                if len(kept) != len(code_items):
                    notes.append(f"{codes}: an item without CodeValue or CodingScheme"
                                 "Designator was left out")
                if kept:
                    holder[codes] = kept
                else:
                    del holder[codes]
            if description in holder and not holder[description] and holder.get(codes):
                del holder[description]
    for keyword in _REFERENCES:
        refs = item.get(keyword)
        if isinstance(refs, list):
            kept = [r for r in refs if isinstance(r, dict) and r.get("ReferencedSOPClassUID")
                    and r.get("ReferencedSOPInstanceUID")]
            if len(kept) != len(refs):
                notes.append(f"{keyword}: an item without both SOP class and instance UID "
                             "was left out")
                item[keyword] = kept
    return notes


def gaps(item: dict) -> list[Gap]:
    """Why wlmscpfs would ignore `item` (empty: it serves it). Call `tidy` first."""
    out = [Gap(k, f"{k} is empty") for k in TOP_NEEDS if not item.get(k)]
    steps = item.get(STEP_SEQUENCE)
    if not isinstance(steps, list) or len(steps) != 1:
        count = len(steps) if isinstance(steps, list) else 0
        return [*out, Gap(STEP_SEQUENCE, f"{STEP_SEQUENCE} must hold exactly one item, not "
                                         f"{count}")]
    step = steps[0]
    out += [Gap(f"{STEP_SEQUENCE}[0].{k}", f"{STEP_SEQUENCE}: {k} is empty")
            for k in STEP_NEEDS if not step.get(k)]
    for description, codes, where in PAIRS:
        holder, prefix = (step, f"{STEP_SEQUENCE}[0].") if where else (item, "")
        if not holder.get(description) and not holder.get(codes):
            out.append(Gap(prefix + description,
                           f"neither {description} nor a complete {codes}"))
    return out


def find_rule(rules: list, attribute: str) -> Rule | SequenceRule | None:
    """The rule that makes `attribute` (`Keyword` or `Sequence[i].Keyword`), if any."""
    head, dot, rest = attribute.partition(".")
    keyword, _, index = head.partition("[")
    for rule in rules:
        if rule.keyword != keyword:
            continue
        if not dot:
            return rule
        if isinstance(rule, SequenceRule):
            i = int(index.rstrip("]") or 0)
            return find_rule(rule.items[i], rest) if i < len(rule.items) else None
    return None


def _sources(rule: Rule | SequenceRule | None) -> Rule | None:
    if isinstance(rule, SequenceRule):
        return rule.code_rule
    return rule


def field_error(rules: list, gap: Gap) -> MappingFieldError:
    """The AE for a gap: ERR names the HL7 field the rule reads first."""
    rule = _sources(find_rule(rules, gap.attribute))
    paths = list(rule.sources) if rule is not None else []
    # A pair: the description's paths, then the code's, all were empty.
    for description, codes, _ in PAIRS:
        if gap.attribute.endswith(description):
            code_rule = _sources(find_rule(rules, gap.attribute.replace(description, codes)))
            paths += code_rule.sources if code_rule is not None else []
    if not paths:
        why = "the profile has no rule for it" if rule is None else "the rule gave no value"
    elif len(paths) == 1:
        why = f"{paths[0].text} is empty"
    else:
        why = f"{', '.join(p.text for p in paths[:-1])} and {paths[-1].text} are all empty"
    return MappingFieldError(
        f"{gap.text} ({why}): wlmscpfs and Orthanc would not serve the item",
        paths[0] if paths else None, gap.attribute, rule.where if rule is not None else "")


def check_order(rules: list, order: MappedOrder) -> MappingFieldError | None:
    """Tidy the order's items (what was left out goes to their trace as a warning) and
    return the error for the first item a peer would ignore, or None."""
    for i, item in enumerate(order.items):
        notes = tidy(item)
        if notes and i < len(order.traces):
            order.traces[i].entries.append(TraceEntry(
                "item", None, "completeness", [], [MappingWarning(n, "left out") for n in notes]))
        found = gaps(item)
        if found:
            return field_error(rules, found[0])
    return None


def profile_warnings(rules: list, file: str) -> list[str]:
    """What check-mapping says about an order profile whose items a peer may ignore.

    Only what the profile itself decides: a needed attribute with no rule, a pair with no
    source at all. (A step sequence with other than one item is an error, in the loader.)
    """
    out = []
    step = find_rule(rules, STEP_SEQUENCE)
    where = f"{file}:1:1"
    if step is None:
        out.append(f"{where}: no {STEP_SEQUENCE}: no item this profile makes can be served; "
                   "the bridge answers AE to new orders")
        needs = list(TOP_NEEDS)
    else:
        needs = [*TOP_NEEDS, *(f"{STEP_SEQUENCE}[0].{k}" for k in STEP_NEEDS)]
    for attribute in needs:
        if find_rule(rules, attribute) is None:
            out.append(f"{where}: no rule for {attribute}: wlmscpfs would ignore every item; "
                       "the bridge answers AE to new orders")
    for description, codes, holder in PAIRS:
        if holder is not None and step is None:
            continue
        prefix = f"{holder}[0]." if holder else ""
        if find_rule(rules, prefix + description) is None and \
                find_rule(rules, prefix + codes) is None:
            out.append(f"{where}: no rule for {prefix}{description} nor {codes}: wlmscpfs "
                       "would ignore every item; add one (with a `default` text if the "
                       "sender may send neither)")
    return out
