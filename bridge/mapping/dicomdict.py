"""What the DICOM dictionary allows, for load-time checks of mapping files.

`check_value` says why a constant cannot be a value of a VR (PS3.5 6.2); `item_problem`
says why an attribute does not belong where a mapping puts it (the MWL item layout of
PS3.4 K.6.1.2.2, and code items of PS3.3 8.8).
"""

from __future__ import annotations

import datetime
import re

from pydicom.datadict import dictionary_VR, tag_for_keyword

from bridge.mapping.rules import MAX_LENGTH, MULTI_VALUE, MULTILINE_VRS

_CS = re.compile(r"^[A-Z0-9 _]*$")
_TM = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_UI_COMPONENT = re.compile(r"^(0|[1-9]\d*)$")
_IS = re.compile(r"^\s*[+-]?\d+\s*$")
_DS = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def keyword_vr(keyword: str) -> str | None:
    """The VR of a dictionary keyword, or None when it is not a DICOM keyword."""
    if tag_for_keyword(keyword) is None:
        return None
    return dictionary_VR(keyword)


def check_uid(text: str) -> str | None:
    parts = text.split(".")
    if not text or len(text) > 64 or not all(_UI_COMPONENT.match(p) for p in parts):
        return (f"{text!r} is not a UID (digits and dots, no leading zeros in a component, "
                "at most 64 characters)")
    return None


def check_value(vr: str, text: str) -> str | None:
    """Why `text` is not a valid value for `vr`, or None when it is."""
    if text == "":
        return None
    values = text.split(MULTI_VALUE) if vr not in MULTILINE_VRS else [text]
    for value in values:
        limit = MAX_LENGTH.get(vr)
        if limit is not None and vr != "PN" and len(value) > limit:
            return f"{value!r} is {len(value)} characters, more than {vr} allows ({limit})"
        if vr == "CS" and not _CS.match(value):
            return (f"{value!r} is not a valid CS (upper-case letters, digits, space and "
                    "underscore only)")
        if vr == "DA":
            try:
                datetime.datetime.strptime(value, "%Y%m%d")
            except ValueError:
                return f"{value!r} is not a DA date (YYYYMMDD)"
        if vr == "TM" and not _TM.match(value):
            return f"{value!r} is not a TM time (HHMMSS.FFFFFF, hours 00-23)"
        if vr == "UI" and (problem := check_uid(value)):
            return problem
        if vr in ("IS", "US", "SS", "UL", "SL") and not _IS.match(value):
            return f"{value!r} is not an integer ({vr})"
        if vr == "US" and not 0 <= int(value) <= 65535:
            return f"{value!r} is out of the range of US (0 to 65535)"
        if vr in ("DS", "FL", "FD") and not _DS.match(value):
            return f"{value!r} is not a decimal number ({vr})"
        if vr == "AE" and (not value.strip() or "\\" in value):
            return f"{value!r} is not an AE title (1 to 16 characters, not only spaces)"
        if vr == "PN" and any(len(group) > 64 for group in value.split("=")):
            return f"{value!r} has a PN component group longer than 64 characters"
    return None


# What a worklist item's sequences hold (PS3.4 K.6.1.2.2, the MWL return keys).
_SPS_ATTRIBUTES = {
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "Modality", "ScheduledPerformingPhysicianName",
    "ScheduledPerformingPhysicianIdentificationSequence", "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence", "ScheduledProcedureStepID", "ScheduledStationName",
    "ScheduledProcedureStepLocation", "PreMedication", "ScheduledProcedureStepStatus",
    "CommentsOnTheScheduledProcedureStep", "RequestedContrastAgent",
    "ScheduledStationNameCodeSequence", "ScheduledStationClassCodeSequence",
    "ScheduledStationGeographicLocationCodeSequence", "ScheduledSpecimenSequence",
    "AnatomicalOrientationType", "RequestedSubtractionCode",
}
# Attributes that mean something in a worklist item only inside an SPS item.
_SPS_ONLY = _SPS_ATTRIBUTES - {"AnatomicalOrientationType", "RequestedContrastAgent",
                               "PreMedication"}
_CODE_ITEM = {
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
    "LongCodeValue", "URNCodeValue", "ContextIdentifier", "ContextUID", "MappingResource",
    "MappingResourceUID", "MappingResourceName", "ContextGroupVersion",
    "ContextGroupExtensionFlag", "ContextGroupLocalVersion", "ContextGroupExtensionCreatorUID",
    "EquivalentCodeSequence",
}
_REFERENCE_ITEM = {"ReferencedSOPClassUID", "ReferencedSOPInstanceUID"}
_SEQUENCE_CONTENT = {
    "ScheduledProcedureStepSequence": _SPS_ATTRIBUTES,
    "ReferencedStudySequence": _REFERENCE_ITEM,
    "ReferencedPatientSequence": _REFERENCE_ITEM,
}


def is_code_sequence(keyword: str) -> bool:
    return keyword.endswith("CodeSequence")


def allowed_in(sequence: str) -> set[str] | None:
    """The attributes an item of `sequence` may hold, or None when we do not constrain it."""
    if is_code_sequence(sequence):
        return _CODE_ITEM
    return _SEQUENCE_CONTENT.get(sequence)


def item_problem(keyword: str, parent: str | None) -> str | None:
    """Why `keyword` does not belong in an item of `parent` (None: the top level)."""
    if parent is None:
        if keyword in _SPS_ONLY:
            return (f"{keyword} belongs inside ScheduledProcedureStepSequence: "
                    "modalities and wlmscpfs look for it there")
        return None
    allowed = allowed_in(parent)
    if allowed is not None and keyword not in allowed:
        return (f"{keyword} does not belong in an item of {parent} "
                f"(it holds: {', '.join(sorted(allowed))})")
    return None
