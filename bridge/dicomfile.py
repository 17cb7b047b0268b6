"""Worklist items as DICOM: pydicom datasets and Part-10 ``.wl`` files."""

from __future__ import annotations

import hashlib
import io
import re

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
