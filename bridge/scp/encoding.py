"""Answers encoded straight to bytes, for the transfer syntax of the association.

Building a pydicom DataElement for every value of every answer, then having pydicom encode
it, is about half of the CPU a broad C-FIND costs (bench/results.md). Here an answer's
values are encoded once, directly, into pydicom RawDataElements; a Dataset of raw elements
whose original encoding is declared (`Dataset.set_original_encoding`, pydicom's documented
way to write without decoding) goes through pynetdicom's encoder as it is.

Only what this covers is sent this way: little endian (implicit or explicit VR) and a single
character set with one Python codec (ASCII, ISO_IR 100..., UTF-8, GB18030). ISO 2022 code
extensions and big endian return None: the caller builds pydicom elements instead.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from bridge.scp.charset import TEXT_VRS
from bridge.scp.matching import Answer

_BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d",
           "SV": "<q", "UV": "<Q"}
# Explicit VR: these have two reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_HEADER = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                          "UT", "UV"})
_ITEM = b"\xfe\xff\x00\xe0"


def supported(charset: str) -> bool:
    """Can answers in this SpecificCharacterSet be encoded here?"""
    return "\\" not in charset and "2022" not in charset


def raw_dataset(found: Answer, charset: str, codec: str, implicit: bool) -> Dataset:
    """The answer as a dataset of raw elements, SpecificCharacterSet included; `found`
    holds text already fit for `codec` (transliterated where needed)."""
    ds = Dataset()
    cs = _text(charset, "CS", "ascii")
    ds[0x00080005] = RawDataElement(BaseTag(0x00080005), "CS", len(cs), cs, 0, implicit,
                                    True)
    for tag, (vr, value) in found.items():
        if tag == 0x00080005:
            continue
        data = _value(vr, value, codec, implicit)
        ds[tag] = RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, True)
    # Declared as already in this encoding: pydicom writes the raw values as they are.
    ds.set_original_encoding(implicit, True, convert_encodings(charset or None))
    return ds


def _value(vr: str, value: object, codec: str, implicit: bool) -> bytes:
    if vr == "SQ":
        items = []
        for item in value:  # type: ignore[union-attr]
            content = b"".join(_element(tag, sub_vr, sub, codec, implicit)
                               for tag, (sub_vr, sub) in sorted(item.items()))
            items.append(_ITEM + struct.pack("<I", len(content)) + content)
        return b"".join(items)
    text = str(value)
    if not text:
        return b""
    if vr in _BINARY:
        try:
            fmt = _BINARY[vr]
            return b"".join(struct.pack(fmt, float(v) if fmt in ("<f", "<d") else int(v))
                            for v in text.split("\\"))
        except (ValueError, struct.error):
            return b""  # not a number: answered empty, as the other path does
    if len(vr) != 2 or vr in ("UN", "OB", "OW", "OD", "OF", "OL", "OV", "AT"):
        return b""  # binary values never come from the store
    return _text(text, vr, codec if vr in TEXT_VRS else "ascii")


def _text(text: str, vr: str, codec: str) -> bytes:
    data = text.encode(codec, errors="replace")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _element(tag: int, vr: str, value: object, codec: str, implicit: bool) -> bytes:
    data = _value(vr, value, codec, implicit)
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        header = struct.pack("<HHI", group, element, len(data))
    elif vr in _LONG_HEADER:
        header = struct.pack("<HH2s2xI", group, element, vr.encode("ascii"), len(data))
    else:
        header = struct.pack("<HH2sH", group, element, vr.encode("ascii"), len(data))
    return header + data
