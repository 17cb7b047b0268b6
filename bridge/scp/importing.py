"""`import-wl`: existing `.wl` files (a wlmscpfs or Orthanc worklist folder) into the store.

A site migrating to the bridge keeps the items already scheduled; the same files also let
tests and benches serve identical items from the bridge and from wlmscpfs. Each file
becomes one SCHEDULED item. Its order key is the placer order number when the file has one
(so a later HL7 message for that order replaces the item), else the file's path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from bridge.lifecycle import Status, item_key
from bridge.store import ItemWrite


@dataclass
class ImportResult:
    writes: list[ItemWrite] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def item_from_dataset(ds: Dataset) -> dict:
    """A dataset as the store keeps items: keyword -> text, sequences as lists of dicts.
    Private, group-length and file meta elements are left out."""
    out: dict = {}
    for elem in ds:
        tag = elem.tag
        if tag.group == 0x0002 or tag.element == 0 or tag.is_private or not elem.keyword:
            continue
        value = elem.value
        if elem.VR == "SQ":
            out[elem.keyword] = [item_from_dataset(item) for item in value or []]
        elif value is None:
            out[elem.keyword] = ""
        elif isinstance(value, bytes | bytearray):
            continue  # binary values have no place in a worklist item
        elif isinstance(value, MultiValue):
            out[elem.keyword] = "\\".join(str(v) for v in value)
        else:
            out[elem.keyword] = str(value)
    return out


def wl_files(folder: Path) -> Iterator[Path]:
    """Every .wl file under `folder`: flat (Orthanc) or one folder per AE (wlmscpfs)."""
    yield from sorted(p for p in folder.rglob("*") if p.is_file() and
                      p.suffix.lower() == ".wl")


def read_folder(folder: Path) -> ImportResult:
    result = ImportResult()
    seen: set[str] = set()
    for path in wl_files(folder):
        try:
            # force: old .wl files may lack the Part-10 preamble.
            ds = pydicom.dcmread(path, force=True)
            item = item_from_dataset(ds)
        except (InvalidDicomError, OSError) as exc:
            result.skipped.append((path, str(exc)))
            continue
        except Exception as exc:  # garbage read with force=True fails in many ways
            result.skipped.append((path, f"not a readable DICOM file: {exc}"))
            continue
        if not item:
            result.skipped.append((path, "no worklist attributes"))
            continue
        relative = path.relative_to(folder).with_suffix("").as_posix()
        placer = str(item.get("PlacerOrderNumberImagingServiceRequest", "")).strip()
        order = placer or f"wl:{relative}"
        key = item_key(order, item)
        if key in seen:  # two files for the same order and step: keep both, by path
            order = f"wl:{relative}"
            key = item_key(order, item)
        seen.add(key)
        result.writes.append(ItemWrite(key, order, Status.SCHEDULED.value, True, item))
    return result
