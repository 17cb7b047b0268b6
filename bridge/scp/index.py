"""The worklist in memory: the items a modality may see, indexed by their selective keys.

Built from the store at start-up and kept current in-process from the Bridge's commit hook,
so a C-FIND never scans a folder or the database. A query with an accession number,
patient ID, study UID, station AE title or SPS start date gets its candidates from a
dictionary; a patient name or ID with a leading literal part (`KOW*`, `12*`, `DOE^JOHN`)
gets them from a sorted list of the values (bisect on the part before the first wildcard;
names case-folded, so the same list serves case-sensitive and case-insensitive calling
AEs: what it finds is a superset either way). The others scan the items in memory.
Matching (matching.py) then decides.

Updates come from the event loop thread, queries from pynetdicom's association threads:
a lock guards the dictionaries, and entries are immutable (an update replaces one).
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.scp.matching import NO_WILDCARD_VRS, NUMERIC_VRS, RANGE_VRS
from bridge.scp.query import SPS_SEQUENCE, SPS_START_DATE, STATION_AE, Key
from bridge.store import ItemWrite, StoredItem


@dataclass(frozen=True, slots=True)
class Entry:
    item_key: str
    status: str
    data: dict


# Values that name one item or one patient: interning them would share nothing, and every
# interned string stays in the interpreter's table (at 1,000,000 items, six of these per item
# would add millions of entries to it, and their hashing half the time `compact` takes).
_UNIQUE = frozenset({
    "AccessionNumber", "PatientID", "PatientName", "OtherPatientIDs", "StudyInstanceUID",
    "RequestedProcedureID", "ScheduledProcedureStepID", "AdmissionID",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest"})


def compact(node: dict) -> dict:
    """The same dataset with its keywords and short values interned: at 100,000 items the
    same few hundred strings (keywords, modalities, dates, stations, codes) would otherwise
    be held 100,000 times over (measured: 303 MB of datasets become 138 MB).

    One loop per dataset, no call per value: at start-up this runs for every stored item."""
    out = {}
    for keyword, value in node.items():
        kind = type(value)
        if kind is str:
            if len(value) <= 16 and keyword not in _UNIQUE:
                value = sys.intern(value)
        elif kind is list:  # a sequence: its items are datasets
            value = [compact(v) if type(v) is dict else v for v in value]
        elif kind is dict:
            value = compact(value)
        out[sys.intern(keyword)] = value
    return out


def compact_in_place(node: dict) -> dict:
    """`compact` for a dataset no one else holds (the store's decoded rows at start-up):
    its short values replaced by the interned equal strings, no copy made. Keywords stay
    as decoded: the store decodes a page of items at once, sharing them already."""
    for keyword, value in node.items():
        kind = type(value)
        if kind is str:
            if len(value) <= 16 and keyword not in _UNIQUE:
                node[keyword] = sys.intern(value)
        elif kind is list:
            for v in value:
                if type(v) is dict:
                    compact_in_place(v)
        elif kind is dict:
            compact_in_place(value)
    return node


MODALITY = 0x00080060
# Top-level keys indexed by exact value.
_TOP = {0x00080050: "AccessionNumber", 0x00100020: "PatientID",
        0x0020000D: "StudyInstanceUID"}
# Top-level keys also kept sorted, for prefix lookups; names case-folded.
PATIENT_NAME = 0x00100010
_PREFIX = {PATIENT_NAME: "PatientName", 0x00100020: "PatientID"}
# After every character a value can hold: the upper end of a prefix's range.
_HIGHEST = "\U0010ffff"


class WorklistIndex:
    def __init__(self, statuses: Iterable[str]):
        # Every status some calling AE may see; the per-AE filter is applied per query.
        self.statuses = frozenset(statuses)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        # indexed value -> the item key holding it, or a set of them when several do: most
        # accession numbers and study UIDs name one item, and a set of one costs 216 bytes
        # (measured: 770 of the index's 1,890 bytes per item at 100,000 items).
        self._by: dict[str, dict[str, str | set[str]]] = {
            name: {} for name in (*_TOP.values(), "station", "modality", "date")}
        # keyword -> sorted (value, item key) pairs; sorted on first use after a load
        # (insorting 100,000 items one by one would move the list 100,000 times).
        self._sorted: dict[str, list[tuple[str, str]]] = {k: [] for k in _PREFIX.values()}
        self._unsorted = False
        # item key -> the newest version put (hidden items too): a late, older state of an
        # item (a catch-up read that crossed a notification) never replaces a newer one.
        self._versions: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, items: Iterable[StoredItem]) -> None:
        """Items read from the store for this call: their datasets become the index's own
        (interned in place, not copied)."""
        with self._lock:
            self._unsorted = True
            for item in items:
                self._put(item.item_key, item.status, compact_in_place(item.dataset),
                          item.version)

    def apply(self, writes: Sequence[ItemWrite]) -> None:
        """The Bridge's change listener: called after every commit, and with other
        instances' items (notifications, catch-up reads): an item's older version than the
        one it holds is ignored."""
        with self._lock:
            for w in writes:
                # A copy: the writer's dataset may still change after its commit.
                self._put(w.item_key, w.status, compact(w.dataset), w.version)

    def get(self, item_key: str) -> Entry | None:
        return self._entries.get(item_key)

    def _put(self, key: str, status: str, data: dict, version: int = 0) -> None:
        """`data`: compacted, the index's own from now on."""
        if version:  # 0: a write whose version is not known, taken as the newest
            if version < self._versions.get(key, 0):
                return
            self._versions[key] = version
        old = self._entries.pop(key, None)
        if old is not None:
            for name, values in _index_values(old.data).items():
                for v in values:
                    _discard(self._by[name], v, key)
            for name, values in _prefix_values(old.data).items():
                self._sort()
                pairs = self._sorted[name]
                for v in values:
                    at = bisect.bisect_left(pairs, (v, key))
                    if at < len(pairs) and pairs[at] == (v, key):
                        del pairs[at]
        if status not in self.statuses:
            return
        self._entries[key] = Entry(key, status, data)
        for name, values in _index_values(data).items():
            for v in values:
                _add(self._by[name], v, key)
        for name, values in _prefix_values(data).items():
            pairs = self._sorted[name]
            for v in values:
                if self._unsorted:
                    pairs.append((v, key))
                else:
                    bisect.insort(pairs, (v, key))

    def _sort(self) -> None:
        if self._unsorted:
            for pairs in self._sorted.values():
                pairs.sort()
            self._unsorted = False

    def candidates(self, keys: tuple[Key, ...]) -> list[Entry]:
        """Items that may match: a superset of the matches, the intersection of what each
        indexed key finds (a match is found by every one of them). A modality's month: its
        modality (25 % of the items) and the month's days (32 %) leave 8 % to match."""
        with self._lock:
            self._sort()
            found = sorted(self._lookups(keys), key=len)
            if not found:
                return list(self._entries.values())
            best = found[0]
            for other in found[1:]:
                if not best:
                    break
                best = best & other
            return [self._entries[k] for k in sorted(best)]

    def scheduled(self, study_uid: str, accession: str, rp_id: str, sps_id: str
                  ) -> list[str]:
        """Items an MPPS names in its ScheduledStepAttributesSequence: by study UID, else
        accession number, narrowed by requested procedure and SPS IDs when given."""
        with self._lock:
            found: set[str] = set()
            if study_uid:
                found = _keys(self._by["StudyInstanceUID"].get(study_uid))
            if not found and accession:
                # Some modalities make up their own study UID: the accession still names it.
                found = _keys(self._by["AccessionNumber"].get(accession))
            entries = [self._entries[k] for k in sorted(found)]
        out = []
        for e in entries:
            if rp_id and str(e.data.get("RequestedProcedureID", "")).strip() != rp_id:
                continue
            steps = e.data.get("ScheduledProcedureStepSequence") or []
            ids = {str(s.get("ScheduledProcedureStepID", "")).strip() for s in steps
                   if isinstance(s, dict)}
            if sps_id and sps_id not in ids:
                continue
            out.append(e.item_key)
        return out

    def _lookups(self, keys: tuple[Key, ...]) -> Iterable[set[str]]:
        for key in keys:
            if key.tag in _TOP and _exact(key):
                yield self._union(_TOP[key.tag], key.value.split("\\"))
            elif key.tag in _PREFIX and (prefixes := _prefixes(key)):
                yield self._prefixed(_PREFIX[key.tag], prefixes)
            elif key.tag == SPS_SEQUENCE and len(key.items) == 1:
                for sub in key.items[0]:
                    if sub.tag == STATION_AE and _exact(sub):
                        yield self._union("station", sub.value.split("\\"))
                    elif sub.tag == MODALITY and _exact(sub):
                        yield self._union("modality", sub.value.split("\\"))
                    elif sub.tag == SPS_START_DATE and sub.value:
                        yield self._dates(sub.value)

    def _union(self, name: str, values: list[str]) -> set[str]:
        index = self._by[name]
        out: set[str] = set()
        for v in values:
            _into(out, index.get(v.strip()))
        return out

    def _prefixed(self, name: str, prefixes: list[str]) -> set[str]:
        pairs = self._sorted[name]
        out: set[str] = set()
        for prefix in prefixes:
            start = bisect.bisect_left(pairs, (prefix,))
            end = bisect.bisect_left(pairs, (prefix + _HIGHEST,), start)
            out.update(k for _, k in pairs[start:end])
        return out

    def _dates(self, query: str) -> set[str]:
        index = self._by["date"]
        if "-" not in query:
            return _keys(index.get(query.replace(".", "")))
        low, _, high = (p.replace(".", "") for p in query.partition("-"))
        out: set[str] = set()
        for date, keys in index.items():
            if (not low or low <= date) and (not high or date <= high):
                _into(out, keys)
        return out


def _add(index: dict[str, str | set[str]], value: str, key: str) -> None:
    found = index.get(value)
    if found is None:
        index[value] = key
    elif type(found) is str:
        if found != key:
            index[value] = {found, key}
    else:
        found.add(key)


def _discard(index: dict[str, str | set[str]], value: str, key: str) -> None:
    found = index.get(value)
    if found is None:
        return
    if type(found) is str:
        if found == key:
            del index[value]
        return
    found.discard(key)
    if len(found) == 1:
        index[value] = next(iter(found))


def _into(out: set[str], found: str | set[str] | None) -> None:
    if found is None:
        return
    if type(found) is str:
        out.add(found)
    else:
        out |= found


def _keys(found: str | set[str] | None) -> set[str]:
    """What the index holds for a value, as a new set the caller may change."""
    if found is None:
        return set()
    if type(found) is str:
        return {found}
    return set(found)


def _exact(key: Key) -> bool:
    """A value the index can look up: no wildcard (where wildcards apply), not universal."""
    if not key.value or key.value == "*":
        return False
    return key.vr in NO_WILDCARD_VRS or not ("*" in key.value or "?" in key.value)


def _prefixes(key: Key) -> list[str]:
    """The literal start of each of the key's values, as the sorted list holds them; []
    when some value has none (`*DOE`, `?12`): the index cannot narrow that key."""
    if not key.value or key.vr in NUMERIC_VRS or key.vr in RANGE_VRS:
        return []
    out = []
    for value in key.value.split("\\"):
        value = value.strip()
        if key.vr not in NO_WILDCARD_VRS:
            cut = min((at for at in (value.find("*"), value.find("?")) if at >= 0),
                      default=len(value))
            value = value[:cut]
        if key.tag == PATIENT_NAME:
            # Trailing empty components are insignificant in an exact name (matching.py).
            value = value.rstrip("^ ").casefold()
        if not value:
            return []
        out.append(value)
    return out


def _split(value: str) -> list[str]:
    """A value's parts (VM > 1: backslash-separated), stripped: what the indexes hold."""
    if "\\" not in value:  # nearly every value: no list made by a comprehension
        return [value.strip()]
    return [v.strip() for v in value.split("\\")]


def _prefix_values(data: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tag, name in _PREFIX.items():
        value = data.get(name)
        if isinstance(value, str) and value:
            values = _split(value)
            out[name] = [v.casefold() for v in values] if tag == PATIENT_NAME else values
    return out


def _index_values(data: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in _TOP.values():
        value = data.get(name)
        if isinstance(value, str) and value:
            out[name] = _split(value)
    stations: list[str] = []
    modalities: list[str] = []
    dates: list[str] = []
    for step in data.get("ScheduledProcedureStepSequence") or ():
        if not isinstance(step, dict):
            continue
        ae = step.get("ScheduledStationAETitle")
        if isinstance(ae, str) and ae:
            stations += _split(ae)
        modality = step.get("Modality")
        if isinstance(modality, str) and modality:
            modalities += _split(modality)
        date = step.get("ScheduledProcedureStepStartDate")
        if isinstance(date, str) and date:
            dates.append(date.strip().replace(".", ""))
    out["station"] = stations
    out["modality"] = modalities
    out["date"] = dates
    return out
