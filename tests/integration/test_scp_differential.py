"""The built-in SCP against DCMTK wlmscpfs, on the same `.wl` files.

DCMTK's sample worklist database (tests/fixtures/dcmtk, via dump2dcm) and generated
items (tests/wlgen.py) are imported into the bridge with `import-wl` and served by
wlmscpfs from the folder itself. DCMTK's sample queries and a set of query shapes are sent
to both, with DCMTK findscu and with pynetdicom as the modality; the answers must be the
same. Where we differ on purpose (wlmscpfs has no wildcard matching on PatientID, Modality
and ScheduledStationAETitle, and does not match on StudyInstanceUID or
ScheduledProcedureStepID at all), a test says so. Orthanc's worklists plugin serves the same
folder too: the same queries find the same items there.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import wlgen
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from bridge.scp.server import set_nodelay

from peers import (
    ROOT,
    bridge_env,
    dcmtk,
    free_port,
    run_bridge,
    run_orthanc,
    run_wlmscpfs,
)

pytestmark = pytest.mark.integration

# DCMTK's sample worklists and queries, copied from ../shared/corpus (see its README).
CORPUS = ROOT / "tests" / "fixtures" / "dcmtk"
GENERATED = 400  # items, on 10 days and 20 stations
WLM_AE = "WL"
BRIDGE_AE = "BRIDGE_MWL"


# Items in Latin-1 (ISO_IR 100), as a European RIS would have them written.
LATIN1_ITEMS = [("MÜLLER^JÜRGEN", "Hüfte rechts"), ("ØDEGÅRD^ÅSE", "Thorax")]
ALL = GENERATED + 10 + len(LATIN1_ITEMS)


def _write_latin1(path: Path, i: int, name: str, description: str) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = f"L{i}"
    ds.PatientName = name
    ds.PatientID = f"LAT{i}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1445.8.{i}"
    ds.RequestedProcedureID = f"RPL{i}"
    ds.RequestedProcedureDescription = description
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "STN99"
    step.ScheduledProcedureStepStartDate = "20240301"
    step.ScheduledProcedureStepStartTime = f"{8 + i:02d}00"
    step.ScheduledProcedureStepDescription = f"Röntgen {i}"
    step.ScheduledProcedureStepID = f"SL{i}"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.1445.8.{i}.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


@dataclass
class Servers:
    bridge: int
    wlmscpfs: int
    orthanc: int
    workdir: Path


def _dump2dcm(dump: Path, out: Path, *, file_format: bool) -> None:
    args = [dcmtk("dump2dcm"), "-q"]
    if file_format:
        args.append("--write-file")
    subprocess.run([*args, str(dump), str(out)], check=True, timeout=30)


def write_reference_worklists(folder: Path) -> None:
    """The worklist both suites serve: the DCMTK corpus's items (dump2dcm), GENERATED
    generated ones and the Latin-1 items."""
    for dump in sorted((CORPUS / "worklists").glob("*.dump")):
        _dump2dcm(dump, folder / f"{dump.stem}.wl", file_format=True)
    wlgen.write_items(folder, GENERATED)
    for i, (name, description) in enumerate(LATIN1_ITEMS, start=1):
        _write_latin1(folder / f"latin1_{i}.wl", i, name, description)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    if not (CORPUS / "worklists").is_dir():
        pytest.fail(f"corpus missing: {CORPUS}")
    root = tmp_path_factory.mktemp("differential")
    folder = root / "wlm" / WLM_AE
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    write_reference_worklists(folder)
    workdir = root / "bridge"
    imported = subprocess.run(
        [sys.executable, "-m", "bridge", "import-wl", str(folder), "--config",
         str(ROOT / "config.yaml")],
        capture_output=True, text=True, timeout=120, cwd=root,
        env=bridge_env(BRIDGE_DATA_DIR=str(workdir / "data"),
                       BRIDGE_SINKS__FOLDER__ENABLED="false"))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"imported {ALL} item(s)" in imported.stdout
    scp_port = free_port()
    with run_bridge(workdir, {"BRIDGE_SCP__ENABLED": "true", "BRIDGE_SCP__PORT": scp_port,
                              "BRIDGE_SINKS__FOLDER__ENABLED": "false"}) as bridge, \
            run_wlmscpfs(root / "wlm") as wlm_port, \
            run_orthanc(root / "orthanc", folder) as orthanc_port:
        # The SCP starts before the MLLP listener run_bridge waits for.
        assert f"listening on 127.0.0.1:{scp_port}" in bridge.log()
        yield Servers(scp_port, wlm_port, orthanc_port, root)


# --- the two modalities: DCMTK findscu and pynetdicom ------------------------------------


def findscu(port: int, called: str, keys: list[str], outdir: Path,
            query_file: Path | None = None) -> list[Dataset]:
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("rsp*.dcm"):
        old.unlink()
    args = [dcmtk("findscu"), "-W", "-aet", "MODALITY", "-aec", called, "-X",
            "-od", str(outdir)]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    if query_file is not None:
        args.append(str(query_file))
    result = subprocess.run(args, capture_output=True, text=True, timeout=60,
                            env={**bridge_env(), "TCP_NODELAY": "1"})
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]


def pynetdicom_find(port: int, called: str, query: Dataset) -> list[Dataset]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=called,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    assert assoc.is_established
    answers = []
    try:
        for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status.Status in (0xFF00, 0xFF01, 0x0000), hex(status.Status)
            if status.Status != 0x0000:
                answers.append(ds)
    finally:
        assoc.release()
    return answers


def canonical(ds: Dataset) -> tuple:
    """An answer as comparable data. Empty values are left out: wlmscpfs leaves out a
    requested attribute the item lacks, where we return it empty (PS3.4 asks for that),
    and it fills an empty sequence item with its own list of attributes."""
    out = []
    for elem in ds:
        if elem.tag.element == 0 or elem.tag == 0x00080005:
            continue
        if elem.VR == "SQ":
            items = tuple(sorted(c for c in (canonical(i) for i in elem.value) if c))
            if items:
                out.append((int(elem.tag), items))
            continue
        value = elem.value
        text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else \
            str(value if value is not None else "")
        if text.strip():
            out.append((int(elem.tag), text.strip()))
    return tuple(sorted(out))


def same(ours: list[Dataset], theirs: list[Dataset]) -> None:
    assert sorted(map(canonical, ours)) == sorted(map(canonical, theirs))


# --- DCMTK's own sample queries ----------------------------------------------------------

CORPUS_QUERIES = sorted(p.stem for p in (CORPUS / "queries").glob("*.dump"))


@pytest.mark.parametrize("name", CORPUS_QUERIES)
def test_dcmtk_sample_queries(servers: Servers, name: str) -> None:
    qfile = servers.workdir / "queries" / f"{name}.dcm"
    qfile.parent.mkdir(exist_ok=True)
    _dump2dcm(CORPUS / "queries" / f"{name}.dump", qfile, file_format=False)
    out = servers.workdir / "answers" / name
    ours = findscu(servers.bridge, BRIDGE_AE, [], out / "bridge", qfile)
    theirs = findscu(servers.wlmscpfs, WLM_AE, [], out / "wlm", qfile)
    same(ours, theirs)
    for ds in ours:
        assert "SpecificCharacterSet" in ds
        assert str(ds.SpecificCharacterSet) == "ISO_IR 100"  # the files' own
    # And the same query through pynetdicom.
    same(pynetdicom_find(servers.bridge, BRIDGE_AE, pydicom.dcmread(qfile, force=True)),
         theirs)


# --- query shapes ------------------------------------------------------------------------

TOP = ["AccessionNumber", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
       "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
       "RequestedProcedurePriority"]
STEP = ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
        "ScheduledProcedureStepDescription", "ScheduledStationName"]

SPS_DATE = "ScheduledProcedureStepStartDate"
SPS_TIME = "ScheduledProcedureStepStartTime"
STATION = "ScheduledStationAETitle"

# name -> (top-level values, SPS values); every other key of TOP and STEP is returned.
SHAPES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "all": ({}, {}),
    "accession": ({"AccessionNumber": "A000000042"}, {}),
    "accession_corpus": ({"AccessionNumber": "00004"}, {}),
    "name_prefix": ({"PatientName": "HAYDN*"}, {}),
    "name_contains": ({"PatientName": "*WOLF*"}, {}),
    "name_question_mark": ({"PatientName": "?OZART*"}, {}),
    "name_padded_star": ({"PatientName": "* "}, {}),
    "name_generated": ({"PatientName": "SMITH^G00001*"}, {}),
    "name_exact": ({"PatientName": "BEETHOVEN^LUDWIG^VAN"}, {}),
    "patient_id": ({"PatientID": "AV35674"}, {}),
    "patient_id_generated": ({"PatientID": "P0000010"}, {}),
    "sex": ({"PatientSex": "F"}, {}),
    "birth_date_range": ({"PatientBirthDate": "17000101-17991231"}, {}),
    "priority": ({"RequestedProcedurePriority": "HIGH"}, {}),
    "station": ({}, {STATION: "STN03"}),
    "station_second_value": ({}, {STATION: "AA33"}),
    "station_day": ({}, {STATION: "STN05", SPS_DATE: "20240106"}),
    "day": ({}, {SPS_DATE: "20240103"}),
    "day_range": ({}, {SPS_DATE: "20240102-20240104"}),
    "open_range_before": ({}, {SPS_DATE: "-19951231"}),
    "open_range_after": ({}, {SPS_DATE: "20240109-"}),
    "date_time_combined": ({}, {SPS_DATE: "20240102-20240103", SPS_TIME: "1200-1400"}),
    "date_time_combined_corpus": ({}, {SPS_DATE: "19960101-19961231", SPS_TIME: "120000-"}),
    "time_only": ({}, {SPS_TIME: "080000-093000"}),
    "modality": ({}, {"Modality": "MR"}),
    "modality_station_day": ({}, {"Modality": "CT", STATION: "STN04", SPS_DATE: "20240105"}),
    "no_match": ({"AccessionNumber": "NOPE"}, {}),
}


def findscu_keys(top: dict[str, str], step: dict[str, str]) -> list[str]:
    keys = ["SpecificCharacterSet"]
    keys += [f"{k}={top[k]}" if k in top else k for k in TOP]
    keys += [f"ScheduledProcedureStepSequence[0].{k}={step[k]}" if k in step else
             f"ScheduledProcedureStepSequence[0].{k}" for k in STEP]
    return keys


def dataset(top: dict[str, str], step: dict[str, str], charset: str = "") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    for k in TOP:
        setattr(ds, k, top.get(k, ""))
    item = Dataset()
    for k in STEP:
        setattr(item, k, step.get(k, ""))
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


@pytest.mark.parametrize("shape", list(SHAPES))
def test_query_shapes_findscu(servers: Servers, shape: str) -> None:
    top, step = SHAPES[shape]
    out = servers.workdir / "shapes" / shape
    ours = findscu(servers.bridge, BRIDGE_AE, findscu_keys(top, step), out / "bridge")
    theirs = findscu(servers.wlmscpfs, WLM_AE, findscu_keys(top, step), out / "wlm")
    same(ours, theirs)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_query_shapes_pynetdicom(servers: Servers, shape: str) -> None:
    top, step = SHAPES[shape]
    ours = pynetdicom_find(servers.bridge, BRIDGE_AE, dataset(top, step))
    theirs = pynetdicom_find(servers.wlmscpfs, WLM_AE, dataset(top, step))
    same(ours, theirs)


# The differential suite must not pass by both servers answering nothing: for the shapes
# on generated items, the expected accession numbers come from wlgen.spec.
EXPECTED: dict[str, object] = {
    "station_day": lambda s: s[STATION] == "STN05" and s[SPS_DATE] == "20240106",
    "day": lambda s: s[SPS_DATE] == "20240103",
    "date_time_combined": lambda s: ("202401021200" <= s[SPS_DATE] + s[SPS_TIME][:4]
                                     <= "202401031400"),
    "modality_station_day": lambda s: (s["Modality"] == "CT" and s[STATION] == "STN04"
                                       and s[SPS_DATE] == "20240105"),
    "name_generated": lambda s: s["PatientName"].startswith("SMITH^G00001"),
}


@pytest.mark.parametrize("shape", list(EXPECTED))
def test_shapes_find_the_generated_items(servers: Servers, shape: str) -> None:
    predicate = EXPECTED[shape]
    expected = sorted(s["AccessionNumber"] for s in map(wlgen.spec, range(GENERATED))
                      if predicate(s))  # type: ignore[operator]
    assert expected, "a shape that selects nothing proves nothing"
    ours = pynetdicom_find(servers.bridge, BRIDGE_AE, dataset(*SHAPES[shape]))
    assert sorted(str(ds.AccessionNumber) for ds in ours) == expected


LATIN1_SHAPES = {
    "name_umlaut_prefix": ({"PatientName": "MÜLLER*"}, {}, ["L1"]),
    "name_ring_inside": ({"PatientName": "*GÅRD*"}, {}, ["L2"]),
    "station_of_latin1_items": ({}, {STATION: "STN99"}, ["L1", "L2"]),
}


@pytest.mark.parametrize("shape", list(LATIN1_SHAPES))
def test_latin1_queries_and_answers(servers: Servers, shape: str) -> None:
    """A query in ISO_IR 100 against Latin-1 items: same answers, same text, and our
    answers declare the items' character set."""
    top, step, expected = LATIN1_SHAPES[shape]
    ours = pynetdicom_find(servers.bridge, BRIDGE_AE, dataset(top, step, "ISO_IR 100"))
    theirs = pynetdicom_find(servers.wlmscpfs, WLM_AE, dataset(top, step, "ISO_IR 100"))
    same(ours, theirs)
    assert sorted(str(ds.AccessionNumber) for ds in ours) == expected
    names = dict(LATIN1_ITEMS)
    for ds in ours:
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        i = int(str(ds.AccessionNumber)[1:])
        assert str(ds.PatientName) == LATIN1_ITEMS[i - 1][0]
        assert str(ds.RequestedProcedureDescription) == names[str(ds.PatientName)]


def test_query_retrieve_level_is_ignored(servers: Servers) -> None:
    """Some modalities add QueryRetrieveLevel=WORKLIST: not a worklist key, ignored."""
    keys = ["QueryRetrieveLevel=WORKLIST", "AccessionNumber", "PatientName=HAYDN*"]
    out = servers.workdir / "qrl"
    ours = findscu(servers.bridge, BRIDGE_AE, keys, out / "bridge")
    same(ours, findscu(servers.wlmscpfs, WLM_AE, keys, out / "wlm"))
    # HAYDN^FRANZ^JOSEPH is in dcmtk__wklist4, 5 and 6.
    assert sorted(str(ds.AccessionNumber) for ds in ours) == ["00004", "00005", "00006"]
    assert all("QueryRetrieveLevel" not in ds for ds in ours)


def test_empty_sequence_as_return_key(servers: Servers) -> None:
    """A zero-item ScheduledProcedureStepSequence asks for the whole step: both servers
    return the steps' attributes (wlmscpfs adds its empty ones, left out in comparison)."""
    keys = ["AccessionNumber=00007", "ScheduledProcedureStepSequence"]
    out = servers.workdir / "empty-seq"
    ours = findscu(servers.bridge, BRIDGE_AE, keys, out / "bridge")
    theirs = findscu(servers.wlmscpfs, WLM_AE, keys, out / "wlm")
    same(ours, theirs)
    step = ours[0].ScheduledProcedureStepSequence[0]
    # From dcmtk__wklist7.dump:
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate) \
        == ("NM", "AZ01", "19960502")


# --- where we differ from wlmscpfs on purpose --------------------------------------------

DIFFERENCES = {
    # wlmscpfs matches these three attributes literally: "*" in the value is a character,
    # so it answers nothing.
    "patient_id_wildcard": ({"PatientID": "AV*"}, {},
                            lambda s: False, ["00000", "00002", "00003"], 0),
    "modality_wildcard": ({}, {"Modality": "C*"},
                          lambda s: s["Modality"] in ("CT", "CR"),
                          ["00002", "00003", "00005", "00006", "00008", "00009",
                           "L1", "L2"], 0),
    "station_wildcard": ({}, {STATION: "STN1?"},
                         lambda s: s[STATION].startswith("STN1"), [], 0),
    # wlmscpfs does not match on these keys at all: it answers every item.
    "study_uid_list": ({"StudyInstanceUID": "1.2.276.0.7230010.3.2.101\\"
                                            f"{wlgen.UID_ROOT}1000000003"}, {},
                       lambda s: s["AccessionNumber"] == "A000000003", ["00000"], ALL),
    "sps_id": ({}, {"ScheduledProcedureStepID": "SPS00000077"},
               lambda s: s["ScheduledProcedureStepID"] == "SPS00000077", [], ALL),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # C* as a CS value, on purpose
@pytest.mark.parametrize("name", list(DIFFERENCES))
def test_where_wlmscpfs_differs(servers: Servers, name: str) -> None:
    top, step, generated, hand_written, wlmscpfs_count = DIFFERENCES[name]
    expected = sorted([s["AccessionNumber"] for s in map(wlgen.spec, range(GENERATED))
                       if generated(s)] + hand_written)
    assert expected
    ours = pynetdicom_find(servers.bridge, BRIDGE_AE, dataset(top, step))
    assert sorted(str(ds.AccessionNumber) for ds in ours) == expected
    assert len(pynetdicom_find(servers.wlmscpfs, WLM_AE, dataset(top, step))) \
        == wlmscpfs_count


# --- Orthanc 1.10.1's worklists plugin on the same folder ---------------------------------

ORTHANC_SHAPES = ["all", "accession", "accession_corpus", "name_prefix", "name_contains",
                  "patient_id", "station", "station_day", "day", "day_range", "modality",
                  "modality_station_day", "no_match"]


@pytest.mark.parametrize("shape", ORTHANC_SHAPES)
def test_same_items_as_orthanc(servers: Servers, shape: str) -> None:
    """The items a site sees from Orthanc's worklists plugin, the bridge finds too."""
    top, step = SHAPES[shape]
    ours = pynetdicom_find(servers.bridge, BRIDGE_AE, dataset(top, step))
    theirs = pynetdicom_find(servers.orthanc, "ORTHANC", dataset(top, step))
    assert sorted(str(ds.AccessionNumber) for ds in ours) == \
        sorted(str(ds.AccessionNumber) for ds in theirs)


def test_orthanc_misses_the_second_station_of_an_item(servers: Servers) -> None:
    """dcmtk__wklist1 is scheduled on AA32\\AA33. Like wlmscpfs, we match a multi-valued
    attribute when any of its values matches; Orthanc 1.10.1 does not, for AA33."""
    query = dataset(*SHAPES["station_second_value"])
    assert [str(ds.AccessionNumber) for ds in
            pynetdicom_find(servers.bridge, BRIDGE_AE, query)] == ["00000"]
    assert [str(ds.AccessionNumber) for ds in
            pynetdicom_find(servers.wlmscpfs, WLM_AE, query)] == ["00000"]
    assert pynetdicom_find(servers.orthanc, "ORTHANC", query) == []
