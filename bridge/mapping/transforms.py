"""Value transforms named in mappings with ``as:``: HL7 data types to DICOM VRs."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable

from bridge.message import Separators, unescape

# Raw (escaped) HL7 value in, DICOM string (or code item) out.
Transform = Callable[[str, Separators], "str | dict[str, str]"]

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


# (year, month, day, hour, minute, second, fraction, zone) of a TS; None where absent.
_TSParts = tuple[str | None, ...]


def _timestamp(raw: str, seps: Separators) -> _TSParts | None:
    if len(raw) > 64:
        # Not a plain TS: parsed each time rather than kept (a hostile field can be huge).
        return _parse_timestamp.__wrapped__(raw, seps.repetition, seps.component,
                                            seps.subcomponent)
    return _parse_timestamp(raw, seps.repetition, seps.component, seps.subcomponent)


# The scheduled date, time and time zone rules read the same field of each message: parsed
# once for the three (the key is the raw value and the separators; a few hundred distinct
# timestamps in flight at most).
@functools.lru_cache(maxsize=1024)
def _parse_timestamp(raw: str, repetition: str, component: str,
                     subcomponent: str) -> _TSParts | None:
    # A TS is the first component (DTM, then precision); a TQ-embedded TS may carry
    # subcomponents. Some senders write 12:30:05 or a space before the zone.
    ts = raw.split(repetition, 1)[0].split(component, 1)[0]
    ts = ts.split(subcomponent, 1)[0].replace(":", "").replace(" ", "").strip()
    m = _TS.match(ts)
    return m.groups() if m else None


def to_date(raw: str, seps: Separators) -> str:
    m = _timestamp(raw, seps)
    if not m or not m[2]:
        return ""
    return m[0] + m[1] + m[2]


def to_time(raw: str, seps: Separators) -> str:
    m = _timestamp(raw, seps)
    if not m or not m[3]:
        return ""
    return "".join(g for g in (m[3], m[4], m[5]) if g) + (m[6] or "")


def to_timezone(raw: str, seps: Separators) -> str:
    """The +hhmm/-hhmm offset of a TS, for TimezoneOffsetFromUTC."""
    m = _timestamp(raw, seps)
    return (m[7] or "") if m else ""


def to_person_name(raw: str, seps: Separators) -> str:
    """XPN (family^given^middle^suffix^prefix) or XCN (id^family^given^...) to PN.

    DICOM PN order is family^given^middle^prefix^suffix; HL7 puts suffix before prefix.
    The family name's own subcomponents (surname&prefix&...) keep only the surname.
    """
    parts = [unescape(p.split(seps.subcomponent, 1)[0], seps)
             for p in raw.split(seps.repetition, 1)[0].split(seps.component)]
    parts += [""] * (5 - len(parts))
    family, given, middle, suffix, prefix = parts[:5]
    return "^".join((family, given, middle, prefix, suffix)).rstrip("^")


def to_person_name_xcn(raw: str, seps: Separators) -> str:
    """XCN: the ID number comes first, then the name as in XPN."""
    rep = raw.split(seps.repetition, 1)[0]
    _, _, name = rep.partition(seps.component)
    return to_person_name(name, seps)


def to_code(raw: str, seps: Separators) -> dict[str, str]:
    """CE/CWE (id^text^system) to a code item; empty unless the item would be complete.

    wlmscpfs rejects a whole worklist file whose code sequence holds an item without
    CodeValue, CodingSchemeDesignator or CodeMeaning, so an incomplete code is no code.
    """
    parts = [unescape(p, seps).strip()
             for p in raw.split(seps.repetition, 1)[0].split(seps.component)]
    parts += [""] * (3 - len(parts))
    code, text, system = parts[:3]
    if not (code and text and system):
        return {}
    return {"CodeValue": code, "CodingSchemeDesignator": system, "CodeMeaning": text}


def to_code_alternate(raw: str, seps: Separators) -> dict[str, str]:
    """The alternate triplet of a CE (components 4, 5 and 6)."""
    parts = raw.split(seps.repetition, 1)[0].split(seps.component)
    return to_code(seps.component.join(parts[3:6]), seps)


def to_text(raw: str, seps: Separators) -> str:
    return unescape(raw, seps)


def to_upper(raw: str, seps: Separators) -> str:
    return unescape(raw, seps).upper()


TRANSFORMS: dict[str, Transform] = {
    "text": to_text,
    "date": to_date,
    "time": to_time,
    "timezone": to_timezone,
    "pn": to_person_name,
    "xcn": to_person_name_xcn,
    "code": to_code,
    "code_alternate": to_code_alternate,
    "upper": to_upper,
}
CODE_TRANSFORMS = {"code", "code_alternate"}

_UID_NAMESPACE = uuid.UUID("6f1b1a7e-3c2b-4c8e-9a51-6d1c0e3a9b10")


def new_uid(root: str = "2.25") -> str:
    """A fresh, random UID (for `uid_generate`): unique, but not the same on a resend."""
    number = uuid.uuid4().int
    return f"2.25.{number}" if root == "2.25" else f"{root}.{number}"[:64].rstrip(".")


def derived_uid(seed: str, root: str = "2.25") -> str:
    """A deterministic UID for `seed`: the same order always gets the same UID.

    Under the default root this is the UUID-derived form of PS3.5 B.2 (a name-based UUID);
    under a site root the hash is cut to fit 64 characters.
    """
    number = uuid.uuid5(_UID_NAMESPACE, seed).int
    if root == "2.25":
        return f"2.25.{number}"
    return f"{root}.{number}"[:64].rstrip(".")
