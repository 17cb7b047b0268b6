"""The in-memory index: it follows commits, and what it narrows to never loses a match."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.scp.index import WorklistIndex
from bridge.scp.matching import matches
from bridge.scp.query import Key
from bridge.store import ItemWrite, StoredItem

VISIBLE = ("SCHEDULED", "ARRIVED")


def item(accession: str, station: str, date: str, patient: str = "P1") -> dict:
    return {"AccessionNumber": accession, "PatientID": patient,
            "StudyInstanceUID": f"1.2.3.{accession}",
            "ScheduledProcedureStepSequence": [{
                "ScheduledStationAETitle": station, "ScheduledProcedureStepStartDate": date,
                "ScheduledProcedureStepStartTime": "0900", "Modality": "CT",
                "ScheduledProcedureStepID": f"S{accession}"}]}


def accession_key(value: str) -> tuple[Key, ...]:
    return (Key(0x00080050, "AccessionNumber", "SH", value),)


def sps_key(**values: str) -> tuple[Key, ...]:
    tags = {"ScheduledStationAETitle": (0x00400001, "AE"),
            "ScheduledProcedureStepStartDate": (0x00400002, "DA"),
            "Modality": (0x00080060, "CS")}
    sub = tuple(Key(tags[k][0], k, tags[k][1], v) for k, v in values.items())
    return (Key(0x00400100, "ScheduledProcedureStepSequence", "SQ", "", (sub,)),)


def test_follows_commits() -> None:
    index = WorklistIndex(VISIBLE)
    index.load([StoredItem("k1", "o1", "SCHEDULED", True, item("A1", "CT1", "20240101"),
                           "P1", 0.0)])
    assert [e.item_key for e in index.candidates(accession_key("A1"))] == ["k1"]
    # The order moves to another station: found under the new one only.
    index.apply([ItemWrite("k1", "o1", "SCHEDULED", True, item("A1", "CT2", "20240101"))])
    assert index.candidates(sps_key(ScheduledStationAETitle="CT1")) == []
    assert [e.item_key for e in index.candidates(sps_key(ScheduledStationAETitle="CT2"))] \
        == ["k1"]
    # Completed: gone from every index.
    index.apply([ItemWrite("k1", "o1", "COMPLETED", False, item("A1", "CT2", "20240101"))])
    assert len(index) == 0
    assert index.candidates(accession_key("A1")) == []
    assert index.candidates(()) == []


def test_scheduled_lookup_for_mpps() -> None:
    index = WorklistIndex(VISIBLE)
    index.apply([ItemWrite("k1", "o1", "SCHEDULED", True, item("A1", "CT1", "20240101")),
                 ItemWrite("k2", "o2", "SCHEDULED", True, item("A2", "CT1", "20240101"))])
    assert index.scheduled("1.2.3.A2", "", "", "SA2") == ["k2"]
    assert index.scheduled("", "A1", "", "") == ["k1"]
    assert index.scheduled("1.2.3.A2", "", "", "OTHER") == []
    # A study UID the modality made up: the accession number still finds the item.
    assert index.scheduled("1.2.999", "A1", "", "SA1") == ["k1"]
    assert index.scheduled("", "", "", "SA1") == []


stations = st.sampled_from(["CT1", "CT2", "MR1", "CT1\\MR1"])
dates = st.sampled_from(["20240101", "20240102", "20240103"])
accessions = st.sampled_from(["A1", "A2", "A3", "B1"])
queries = st.one_of(
    accessions.map(accession_key),
    st.sampled_from(["A*", "?1", "*"]).map(accession_key),
    stations.map(lambda s: sps_key(ScheduledStationAETitle=s.split("\\")[0])),
    st.sampled_from(["CT*", "*1"]).map(lambda s: sps_key(ScheduledStationAETitle=s)),
    st.sampled_from(["20240101", "20240101-20240102", "-20240102", "20240103-"]).map(
        lambda d: sps_key(ScheduledProcedureStepStartDate=d)),
    st.tuples(stations, dates).map(lambda t: sps_key(
        ScheduledStationAETitle=t[0].split("\\")[0], ScheduledProcedureStepStartDate=t[1])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(accessions, stations, dates), max_size=12), queries)
def test_candidates_never_lose_a_match(rows, keys) -> None:
    index = WorklistIndex(VISIBLE)
    data = {f"k{i}": item(a, s, d) for i, (a, s, d) in enumerate(rows)}
    index.apply([ItemWrite(k, k, "SCHEDULED", True, v) for k, v in data.items()])
    expected = {k for k, v in data.items() if matches(keys, v)}
    got = {e.item_key for e in index.candidates(keys) if matches(keys, e.data)}
    assert got == expected


NAMES = ["KOWALSKI^JAN", "Kowalska^Anna", "KOWAL^PIOTR\\KOWAL^P", "NOWAK^EWA^^",
         "Łukasz^Żółć", "straße^x", "STRASSE^Y", ""]
IDS = ["12", "123", "1234\\99", "A12", "212", ""]


def person_item(name: str, patient_id: str) -> dict:
    return {"PatientName": name, "PatientID": patient_id, "AccessionNumber": "A"}


def name_key(value: str, vr: str = "PN") -> tuple[Key, ...]:
    return (Key(0x00100010, "PatientName", vr, value),)


def id_key(value: str) -> tuple[Key, ...]:
    return (Key(0x00100020, "PatientID", "LO", value),)


name_queries = st.sampled_from(["KOW*", "kow*", "KOWAL*", "KOWAL^P", "KOWAL^P^", "Kow?lsk*",
                                "NOWAK^EWA", "nowak^ewa", "ŁUK*", "łuk*", "STRASSE*",
                                "strasse^*", "Straße*", "*SKI*", "?OW*", "*", "X*\\NOW*",
                                "KOW*\\*A"])
id_queries = st.sampled_from(["12*", "12", "123*", "1234", "99*", "9?", "*2", "A1*",
                              "1?3*", "12*\\21*"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(IDS)), max_size=10),
       st.one_of(name_queries.map(name_key), id_queries.map(id_key)), st.booleans())
def test_name_and_id_prefixes_never_lose_a_match(rows, keys, caseless) -> None:
    from bridge.scp.matching import MatchOptions

    options = MatchOptions(pn_case_insensitive=caseless)
    index = WorklistIndex(VISIBLE)
    data = {f"k{i}": person_item(n, p) for i, (n, p) in enumerate(rows)}
    # Half loaded at start-up (sorted later), half applied as commits (kept sorted).
    half = len(rows) // 2
    index.load([StoredItem(k, k, "SCHEDULED", True, v, "P", 0.0)
                for k, v in list(data.items())[:half]])
    index.apply([ItemWrite(k, k, "SCHEDULED", True, v) for k, v in list(data.items())[half:]])
    expected = {k for k, v in data.items() if matches(keys, v, options)}
    got = {e.item_key for e in index.candidates(keys) if matches(keys, e.data, options)}
    assert got == expected


def test_name_and_id_prefixes_narrow_the_candidates() -> None:
    index = WorklistIndex(VISIBLE)
    rows = [("KOWALSKI^JAN", "120"), ("Kowalska^Anna", "121"), ("NOWAK^EWA", "130"),
            ("SMITH^JOHN", "212")]
    index.load([StoredItem(f"k{i}", "o", "SCHEDULED", True, person_item(n, p), "P", 0.0)
                for i, (n, p) in enumerate(rows)])
    assert [e.item_key for e in index.candidates(name_key("KOW*"))] == ["k0", "k1"]
    assert [e.item_key for e in index.candidates(id_key("12*"))] == ["k0", "k1"]
    # A commit moves a name: found under the new one only.
    index.apply([ItemWrite("k0", "o", "SCHEDULED", True, person_item("NOWAK^JAN", "999"))])
    assert [e.item_key for e in index.candidates(name_key("KOW*"))] == ["k1"]
    assert [e.item_key for e in index.candidates(name_key("NOWAK^*"))] == ["k0", "k2"]
    assert [e.item_key for e in index.candidates(id_key("12*"))] == ["k1"]
    # No literal start: every item is a candidate.
    assert len(index.candidates(name_key("*SKI*"))) == 4


modalities = st.sampled_from(["CT", "MR", "CT\\MR"])
step_queries = st.tuples(st.sampled_from(["", "CT", "MR", "C*"]),
                         st.sampled_from(["", "CT1", "CT*"]),
                         st.sampled_from(["", "20240101", "20240101-20240102"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(accessions, stations, dates, modalities), max_size=12),
       step_queries)
def test_modality_station_and_date_together_never_lose_a_match(rows, query) -> None:
    modality, station, date = query
    values = {k: v for k, v in (("Modality", modality), ("ScheduledStationAETitle", station),
                                ("ScheduledProcedureStepStartDate", date)) if v}
    keys = sps_key(**values)
    index = WorklistIndex(VISIBLE)
    data = {}
    for i, (a, s, d, m) in enumerate(rows):
        data[f"k{i}"] = item(a, s, d)
        data[f"k{i}"]["ScheduledProcedureStepSequence"][0]["Modality"] = m
    index.apply([ItemWrite(k, k, "SCHEDULED", True, v) for k, v in data.items()])
    expected = {k for k, v in data.items() if matches(keys, v)}
    got = {e.item_key for e in index.candidates(keys) if matches(keys, e.data)}
    assert got == expected


def test_modality_and_date_narrow_together() -> None:
    index = WorklistIndex(VISIBLE)
    writes = []
    for i, (modality, date) in enumerate([("CT", "20240101"), ("CT", "20240301"),
                                          ("MR", "20240101"), ("MR", "20240301")]):
        data = item(f"A{i}", "CT1", date)
        data["ScheduledProcedureStepSequence"][0]["Modality"] = modality
        writes.append(ItemWrite(f"k{i}", f"o{i}", "SCHEDULED", True, data))
    index.apply(writes)
    keys = sps_key(Modality="CT", ScheduledProcedureStepStartDate="20240101-20240131")
    assert [e.item_key for e in index.candidates(keys)] == ["k0"]
    # The item moves to MR: no longer a CT candidate.
    moved = dict(writes[0].dataset)
    moved["ScheduledProcedureStepSequence"] = [
        dict(moved["ScheduledProcedureStepSequence"][0], Modality="MR")]
    index.apply([ItemWrite("k0", "o0", "SCHEDULED", True, moved)])
    assert index.candidates(keys) == []
