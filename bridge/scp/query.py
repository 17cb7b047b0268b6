"""A C-FIND request identifier as plain keys: what the modality asks for and matches on.

The identifier is read once per query into `Key`s (tag, VR, value as text, nested keys
for sequences), so that matching works on plain strings and never touches pydicom again.
What real modalities send is tolerated here: group-length elements (also inside sequence
items) are dropped, values are stripped of the padding some send after a wildcard, and
private or unknown keys come through with an empty value so they are returned empty.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

SPECIFIC_CHARACTER_SET = 0x00080005
# Sent by some modalities out of Query/Retrieve habit; not a worklist attribute: dropped,
# as wlmscpfs does, rather than matched (no item has it) or returned.
QUERY_RETRIEVE_LEVEL = 0x00080052
SPS_SEQUENCE = 0x00400100
STATION_AE = 0x00400001
SPS_START_DATE = 0x00400002
SPS_START_TIME = 0x00400003


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the query. `value` is '' for universal matching (return only)."""

    tag: int
    keyword: str  # '' for private tags and tags pydicom's dictionary does not know
    vr: str
    value: str = ""
    # For a sequence: the query's items, each a tuple of keys. No item, or an item
    # without keys, asks for the whole sequence.
    items: tuple[tuple[Key, ...], ...] = ()
    # False for filters the SCP adds itself (the calling AE as station AE): they match but
    # are not returned, since only the requested keys come back.
    returned: bool = True

    @property
    def is_sequence(self) -> bool:
        return self.vr == "SQ"


@dataclass(frozen=True)
class Query:
    keys: tuple[Key, ...]
    charset: str  # the query's SpecificCharacterSet, '' when absent

    def key(self, tag: int) -> Key | None:
        return next((k for k in self.keys if k.tag == tag), None)

    def describe(self) -> str:
        """The keys with a value, for a log line: `PatientName=DOE* SPS.Modality=CT`."""
        return " ".join(_describe(self.keys, "")) or "(all)"


def _describe(keys: tuple[Key, ...], prefix: str) -> list[str]:
    out = []
    for k in keys:
        name = k.keyword or f"({k.tag >> 16:04X},{k.tag & 0xFFFF:04X})"
        if k.is_sequence:
            for item in k.items:
                out.extend(_describe(item, f"{prefix}{name}."))
        elif k.value and k.returned:
            out.append(f"{prefix}{name}={k.value}")
        elif k.value:
            out.append(f"{prefix}{name}={k.value} (added)")
    return out


def parse(identifier: Dataset) -> Query:
    charset = identifier.get("SpecificCharacterSet", "")
    if isinstance(charset, MultiValue):
        charset = "\\".join(charset)
    return Query(_keys(identifier), str(charset or "").strip())


def _keys(ds: Dataset) -> tuple[Key, ...]:
    keys = []
    for elem in ds:
        tag = int(elem.tag)
        if tag & 0xFFFF == 0 or tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL):
            continue  # group length: a leftover of old encoders, never a key
        keyword = "" if Tag(tag).is_private else keyword_for_tag(tag)
        vr = elem.VR
        if vr in ("UN", None) and keyword:
            vr = dictionary_VR(tag)  # sent in implicit VR or as UN: use the dictionary
        if vr == "SQ":
            items = tuple(_keys(item) for item in (elem.value or []))
            keys.append(Key(tag, keyword, "SQ", "", items))
        elif not keyword:
            keys.append(Key(tag, "", vr))  # private or unknown: returned empty, not matched
        else:
            keys.append(Key(tag, keyword, vr, _text(elem.value)))
    return tuple(keys)


def _text(value: object) -> str:
    if value is None or isinstance(value, bytes | bytearray):
        return ""
    many = isinstance(value, MultiValue | list)
    text = "\\".join(str(v) for v in value) if many else str(value)  # type: ignore[union-attr]
    # Some modalities pad the value, wildcards included ("* "); NULs are padding too.
    return text.strip(" \x00")


def with_station_filter(query: Query, calling_ae: str) -> Query:
    """Add the calling AE as ScheduledStationAETitle where the query names no station
    (Orthanc's FilterIssuerAet): a modality that does not say who it is sees its own items.
    """
    sps = query.key(SPS_SEQUENCE)
    station = Key(STATION_AE, "ScheduledStationAETitle", "AE", calling_ae.strip(),
                  returned=False)
    if sps is None:
        added = Key(SPS_SEQUENCE, "ScheduledProcedureStepSequence", "SQ", "", ((station,),),
                    returned=False)
        return replace(query, keys=(*query.keys, added))
    items = sps.items or ((),)
    new_items = []
    for item in items:
        existing = next((k for k in item if k.tag == STATION_AE), None)
        if existing is None:
            new_items.append((*item, station))
        elif not existing.value:
            # Returned (it was asked for), but now matched on the calling AE.
            new_items.append(tuple(replace(k, value=calling_ae.strip()) if k is existing
                                   else k for k in item))
        else:
            new_items.append(item)
    keys = tuple(replace(k, items=tuple(new_items)) if k is sps else k for k in query.keys)
    return replace(query, keys=keys)
