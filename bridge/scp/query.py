"""A C-FIND request identifier as plain keys: what the modality asks for and matches on.

The identifier is read once per query into `Key`s (tag, VR, value as text, nested keys
for sequences), so that matching works on plain strings and never touches pydicom again.
What real modalities send is tolerated here: group-length elements (also inside sequence
items) are dropped, values are stripped of the padding some send after a wildcard, and
private or unknown keys come through with an empty value so they are returned empty.

What the standard does not allow is refused (`InvalidKey`, answered A900), never read as
universal matching by accident: a key sent as OB, OW or a sequence where the dictionary
says text (or text where it says sequence), and a value made only of NUL characters. NUL
after a real value is padding and is stripped, as spaces are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
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

    def describe(self, log_phi: bool = False) -> str:
        """The keys with a value, for a log line. Values (patient names, IDs, birth dates)
        only with `log_phi`: `PatientName=DOE* SPS.Modality=CT`; else the kind of
        matching: `PatientName~wildcard SPS.Modality~value`. Each value and the whole text
        are cut to a bounded length (a query value of 215 KB once made one log line)."""
        parts = _describe(self.keys, "", log_phi)
        text = " ".join(parts[:MAX_LOGGED_KEYS]) or "(all)"
        if len(parts) > MAX_LOGGED_KEYS:
            text += f" (+{len(parts) - MAX_LOGGED_KEYS} more keys)"
        return text


# Bounds of what a log line shows of a query.
MAX_LOGGED_VALUE = 64
MAX_LOGGED_KEYS = 20


def tag_name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _describe(keys: tuple[Key, ...], prefix: str, log_phi: bool) -> list[str]:
    out = []
    for k in keys:
        name = k.keyword or tag_name(k.tag)
        if k.is_sequence:
            for item in k.items:
                out.extend(_describe(item, f"{prefix}{name}.", log_phi))
        elif k.value:
            shown = f"={_cut(k.value)}" if log_phi else f"~{_kind_of_matching(k)}"
            out.append(f"{prefix}{name}{shown}" + ("" if k.returned else " (added)"))
    return out


def _cut(value: str) -> str:
    shown = value[:MAX_LOGGED_VALUE]
    # Control characters escaped: a CR or LF in a query value must not forge a log line.
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    if len(value) <= MAX_LOGGED_VALUE:
        return shown
    return f"{shown}...({len(value)} chars)"


def _kind_of_matching(key: Key) -> str:
    # matching.py imports this module: its VR sets are looked up here, when needed.
    from bridge.scp.matching import NO_WILDCARD_VRS, RANGE_VRS, SINGLE_VALUED_TEXT

    if key.value == "*":
        return "universal"
    if key.vr in RANGE_VRS and "-" in key.value:
        return "range"
    if key.vr not in NO_WILDCARD_VRS and ("*" in key.value or "?" in key.value):
        return "wildcard"
    if key.vr not in SINGLE_VALUED_TEXT and "\\" in key.value:
        return "list"
    return "value"


class InvalidKey(ValueError):
    """A key the standard does not allow in a C-FIND identifier: the query is refused."""

    # The text names a tag and VRs, never a value: logged whatever log_phi says.
    phi_free = True

    def __init__(self, tag: int, reason: str):
        super().__init__(f"{tag_name(tag)} {reason}")
        self.tag = tag


def parse(identifier: Dataset) -> Query:
    charset = identifier.get("SpecificCharacterSet", "")
    if isinstance(charset, MultiValue):
        charset = "\\".join(charset)
    charset = str(charset or "").strip()
    return Query(_keys(identifier, _encodings(charset)), charset)


def _encodings(charset: str) -> list[str]:
    # pydicom's Python codecs for the query's SpecificCharacterSet (its default when the
    # term is unknown: pydicom warns with the term, which is not patient data).
    return convert_encodings(charset.split("\\") if charset else None)


def _keys(ds: Dataset, encodings: list[str]) -> tuple[Key, ...]:
    keys = []
    # Unconverted first: pydicom strips NUL padding when it decodes text, and a value
    # made only of NULs must not turn into an empty value (universal matching).
    for raw in ds.elements():
        tag = int(raw.tag)
        if tag & 0xFFFF == 0 or tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL):
            continue  # group length: a leftover of old encoders, never a key
        keyword = "" if Tag(tag).is_private else keyword_for_tag(tag)
        if keyword:
            # Before decoding: a refused value is never read. Implicit VR and UN say
            # nothing about the VR: the dictionary's is taken, so only the value counts.
            sent = raw.VR if raw.VR not in ("UN", None) else dictionary_VR(tag)
            _check(tag, sent, raw.value)
            if sent in _STRING_VRS and isinstance(raw, RawDataElement):
                # Decoded here, not by pydicom: its validation warns with the value
                # ("Invalid value for VR UI: '...'"), and a query value may be a
                # patient's name whatever its VR.
                keys.append(Key(tag, keyword, sent, _decoded(raw.value, sent, encodings)))
                continue
        elif raw.VR not in ("SQ", "UN", None) and isinstance(raw, RawDataElement):
            keys.append(Key(tag, "", raw.VR))  # private or unknown, as below, unread
            continue
        elem = ds[tag]
        vr = elem.VR
        if vr in ("UN", None) and keyword:
            vr = dictionary_VR(tag)  # sent in implicit VR or as UN: use the dictionary
        if vr == "SQ":
            items = tuple(_keys(item, encodings) for item in (elem.value or []))
            keys.append(Key(tag, keyword, "SQ", "", items))
        elif not keyword:
            keys.append(Key(tag, "", vr))  # private or unknown: returned empty, not matched
        else:
            keys.append(Key(tag, keyword, vr, _text(elem.value)))
    return tuple(keys)


# VRs whose value is bytes, not text (PS3.5 6.2); a sequence is a third kind.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
# Character string VRs: only these can hold a value of "NUL characters only" (a binary
# number such as US 0 is two NUL bytes, and rightly so).
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                         "ST", "TM", "UC", "UI", "UR", "UT"})


def _kind_of_vr(vr: str) -> str:
    return "sequence" if vr == "SQ" else "bytes" if vr in _BINARY_VRS else "text"


def _check(tag: int, vr: str, raw_value: object) -> None:
    """Refuse what would otherwise match everything: an OB/OW/SQ value where the
    dictionary says text (its bytes read as no value at all), and a value of NULs only.
    Text VRs sent for one another (LO for SH, CS for LO) are only text: accepted."""
    expected = dictionary_VR(tag)
    # Some dictionary entries allow two VRs ("OB or OW", "US or SS").
    if _kind_of_vr(vr) not in {_kind_of_vr(v) for v in expected.split(" or ")}:
        raise InvalidKey(tag, f"sent as {vr} where {expected} is expected")
    if vr in _STRING_VRS and _only_nul(raw_value):
        raise InvalidKey(tag, "has a value of NUL characters only")


def _only_nul(value: object) -> bool:
    # PS3.5 6.1.3: NUL is not a character of text values, only UI padding.
    if isinstance(value, bytes | bytearray):
        return b"\x00" in value and not value.strip(b"\x00 \\")
    if isinstance(value, MultiValue | list):
        value = "\\".join(str(v) for v in value)
    return isinstance(value, str) and "\x00" in value and not value.strip("\x00 \\")


# Where the ISO 2022 escape state returns to the default (PS3.5 6.1.2.5.3): value and
# line delimiters, and in PN its component and group separators.
_DELIMITERS = {"PN": {0x5C, 0x5E, 0x3D}, "LT": {0x0D, 0x0A, 0x09, 0x0C},
               "ST": {0x0D, 0x0A, 0x09, 0x0C}, "UT": {0x0D, 0x0A, 0x09, 0x0C}}
# The VRs a SpecificCharacterSet applies to; the others are in the default repertoire.
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})


def _decoded(value: bytes | None, vr: str, encodings: list[str]) -> str:
    if not value:
        return ""
    if vr in _CHARSET_VRS:
        text = decode_bytes(value, encodings, _DELIMITERS.get(vr, {0x5C}))
    else:
        text = value.decode("latin-1")
    # Some modalities pad the value, wildcards included ("* "); NULs are padding too.
    return text.strip(" \x00")


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
