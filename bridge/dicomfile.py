"""Worklist items as DICOM: pydicom datasets and Part-10 ``.wl`` files.

`part10_bytes` writes a file's bytes directly (explicit VR little endian, defined lengths,
as pydicom writes them: tested byte for byte) rather than through a pydicom Dataset:
building and writing the Dataset was most of the folder writer's CPU per order (about
1 ms, bench/results.md "MLLP ingest: what limits it"). Items whose text needs pydicom's
character set handling (ISO 2022 code extensions, text the declared set cannot hold) or
that hold a VR this writer does not cover still go through pydicom.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import struct

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from bridge.mapping.transforms import derived_uid

# The SOP class DCMTK and Orthanc give worklist files (a DCMTK private UID).
WORKLIST_FILE_SOP_CLASS = "1.2.276.0.7230010.3.1.0.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1445.1"  # hl7-worklist-bridge
IMPLEMENTATION_VERSION = "HL7WLBRIDGE_01"


_BINARY_NUMBERS = {"US": int, "SS": int, "UL": int, "SL": int, "FL": float, "FD": float}


def _numbers(text: str, kind: type) -> list:
    """The numbers of a backslash-separated value; anything else is dropped (the mapping
    has already warned about it)."""
    out = []
    for part in text.split("\\"):
        try:
            out.append(kind(part))
        except ValueError:
            continue
    return out


def to_dataset(item: dict) -> Dataset:
    """Keyword dict (the mapping's output) to a pydicom Dataset."""
    ds = Dataset()
    charset = item.get("SpecificCharacterSet")
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    for keyword, value in item.items():
        if keyword == "SpecificCharacterSet":
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue  # checked at mapping load; an imported file may carry odd keys
        vr = dictionary_VR(tag)
        if isinstance(value, list):
            ds.add_new(tag, "SQ", Sequence([to_dataset(v) for v in value]))
        elif vr in _BINARY_NUMBERS:
            # Items hold text (as Orthanc's Tags do); binary VRs are written as numbers.
            numbers = _numbers(str(value), _BINARY_NUMBERS[vr])
            ds.add_new(tag, vr, numbers if len(numbers) > 1 else
                       (numbers[0] if numbers else None))
        elif "\\" in str(value) and vr not in ("LT", "ST", "UT"):
            ds.add_new(tag, vr, str(value).split("\\"))
        else:
            ds.add_new(tag, vr, value)
    return ds


def part10_bytes(item: dict, instance_seed: str) -> bytes:
    """A complete Part-10 file (preamble, meta header, explicit VR little endian)."""
    try:
        body = _encode_item(item, _codec(item.get("SpecificCharacterSet") or ""))
    except _NotCovered:
        return part10_with_pydicom(item, instance_seed)
    return b"\x00" * 128 + b"DICM" + _meta(derived_uid(instance_seed)) + body


def part10_with_pydicom(item: dict, instance_seed: str) -> bytes:
    """The same file written by pydicom from a Dataset (the reference of part10_bytes)."""
    ds = to_dataset(item)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WORKLIST_FILE_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = derived_uid(instance_seed)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class _NotCovered(Exception):
    """An item the direct writer leaves to pydicom."""


# Explicit VR: these have two reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_HEADER = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                          "UT", "UV"})
_PACK = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d"}
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                         "ST", "TM", "UC", "UI", "UR", "UT"})
_ITEM = b"\xfe\xff\x00\xe0"


def _codec(charset: str) -> str:
    if "\\" in charset or "2022" in charset:
        raise _NotCovered  # code extensions: pydicom switches sets within values
    if charset in ("", "ISO_IR 6"):
        return "ascii"
    from pydicom.charset import python_encoding

    codec = python_encoding.get(charset.strip())
    if codec is None:
        raise _NotCovered
    return codec


@functools.lru_cache(maxsize=4096)
def _tag_vr(keyword: str) -> tuple[int, str] | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else (tag, dictionary_VR(tag))


def _element(tag: int, vr: str, data: bytes) -> bytes:
    if vr in _LONG_HEADER:
        header = struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr.encode(), len(data))
    else:
        if len(data) > 0xFFFF:
            raise _NotCovered
        header = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data))
    return header + data


def _encode_item(item: dict, codec: str) -> bytes:
    elements = []
    for keyword, value in item.items():
        found = _tag_vr(keyword)
        if found is None:
            continue  # as to_dataset: an imported file may carry odd keys
        tag, vr = found
        elements.append((tag, vr, value))
    out = []
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        if isinstance(value, list):
            if vr != "SQ":
                raise _NotCovered
            items = []
            for sub in value:
                content = _encode_item(sub, codec)
                items.append(_ITEM + struct.pack("<I", len(content)) + content)
            out.append(_element(tag, "SQ", b"".join(items)))
        elif vr in _PACK:
            numbers = _numbers(str(value), _BINARY_NUMBERS[vr])
            out.append(_element(tag, vr, b"".join(struct.pack(_PACK[vr], n)
                                                  for n in numbers)))
        elif vr in _STRING_VRS:
            out.append(_element(tag, vr, _text(str(value), vr, codec)))
        else:
            raise _NotCovered  # AT, OB, "US or SS"...: pydicom's rules
    return b"".join(out)


def _text(text: str, vr: str, codec: str) -> bytes:
    try:
        data = text.encode(codec if vr in _TEXT_VRS else "ascii")
    except UnicodeEncodeError:
        raise _NotCovered from None  # pydicom decides what to write instead
    if vr in ("DS", "IS") and text and text != text.strip():
        raise _NotCovered  # pydicom re-formats padded numbers
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _meta(instance_uid: str) -> bytes:
    def ui(tag: int, uid: str) -> bytes:
        return _element(tag, "UI", _text(uid, "UI", "ascii"))

    body = b"".join((
        _element(0x00020001, "OB", b"\x00\x01"),
        ui(0x00020002, WORKLIST_FILE_SOP_CLASS),
        ui(0x00020003, instance_uid),
        ui(0x00020010, ExplicitVRLittleEndian),
        ui(0x00020012, IMPLEMENTATION_CLASS_UID),
        _element(0x00020013, "SH", _text(IMPLEMENTATION_VERSION, "SH", "ascii")),
    ))
    return _element(0x00020000, "UL", struct.pack("<I", len(body))) + body


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def file_name(item_key: str) -> str:
    """A safe, bounded, deterministic ``.wl`` name for an item key.

    Only [A-Za-z0-9_-] survive from the key (so no separator, no "..", no leading dot),
    cut to 48 characters, then a hash of the whole key keeps distinct keys distinct.
    """
    readable = _UNSAFE.sub("_", item_key).strip("_")[:48]
    digest = hashlib.sha256(item_key.encode("utf-8")).hexdigest()[:16]
    return f"{readable}_{digest}.wl" if readable else f"{digest}.wl"


# The names file_name() makes, and only those: what `resync` may delete as the bridge's own.
_ITEM_FILE = re.compile(r"^(?:[A-Za-z0-9_-]{1,48}_)?[0-9a-f]{16}\.wl$")


def is_item_file_name(name: str) -> bool:
    return bool(_ITEM_FILE.match(name))


def safe_folder_name(name: str) -> str:
    """A station AE title as a folder name (AE titles may hold spaces and odd characters)."""
    cleaned = _UNSAFE.sub("_", name.strip()).strip("_")[:16]
    return cleaned or "_UNSPECIFIED"
