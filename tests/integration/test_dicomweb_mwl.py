"""DICOMweb worklist search (MWL-RS) answers what the built-in SCP's C-FIND answers.

The queries are the SCP differential suite's own (imported, not copied): DCMTK's sample
queries and every query shape. Each is sent twice to one running bridge: as a C-FIND with
pynetdicom (the modality's way) and as the equivalent DICOMweb search URL; the items and
the values of the requested attributes must be the same. DICOMweb also returns its default
attributes; they are left out of the comparison, which covers what the C-FIND asked for.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from integration.test_scp_differential import (
    ALL,
    BRIDGE_AE,
    CORPUS,
    CORPUS_QUERIES,
    DIFFERENCES,
    LATIN1_SHAPES,
    SHAPES,
    _dump2dcm,
    canonical,
    dataset,
    pynetdicom_find,
    write_reference_worklists,
)
from pydicom.dataset import Dataset

from peers import ROOT, bridge_env, free_port, run_bridge

pytestmark = pytest.mark.integration
URL = "/dicomweb/modality-scheduled-procedure-steps"
USER, PASSWORD = "modality-admin", "dicomweb-pass"


@dataclass
class Running:
    scp: int
    http: str
    workdir: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("dicomweb")
    folder = root / "wl"
    folder.mkdir()
    write_reference_worklists(folder)
    workdir = root / "bridge"
    env = bridge_env(BRIDGE_DATA_DIR=str(workdir / "data"),
                     BRIDGE_SINKS__FOLDER__ENABLED="false")
    config = ["--config", str(ROOT / "config.yaml")]
    imported = subprocess.run([sys.executable, "-m", "bridge", "import-wl", str(folder),
                               *config], capture_output=True, text=True, timeout=120,
                              cwd=root, env=env)
    assert f"imported {ALL} item(s)" in imported.stdout, imported.stderr
    added = subprocess.run([sys.executable, "-m", "bridge", "user", "add", USER, "--role",
                            "viewer", "--password-stdin", *config], input=PASSWORD + "\n",
                           capture_output=True, text=True, timeout=60, cwd=root, env=env)
    assert added.returncode == 0, added.stderr
    scp_port, http_port = free_port(), free_port()
    with run_bridge(workdir, {"BRIDGE_SCP__ENABLED": "true", "BRIDGE_SCP__PORT": scp_port,
                              "BRIDGE_HTTP__PORT": http_port,
                              "BRIDGE_SINKS__FOLDER__ENABLED": "false"}):
        yield Running(scp_port, f"http://127.0.0.1:{http_port}", root)


def search_params(ds: Dataset, prefix: str = "") -> list[tuple[str, str]]:
    """The DICOMweb search parameters that ask what a C-FIND identifier asks: a key with a
    value matches, an empty one is an includefield."""
    params: list[tuple[str, str]] = []
    for elem in ds:
        if elem.tag.element == 0 or elem.keyword in ("SpecificCharacterSet",
                                                     "QueryRetrieveLevel"):
            continue
        name = prefix + elem.keyword
        if elem.VR == "SQ":
            items = [item for item in elem.value if len(item)]
            if not items and name == "ScheduledProcedureStepSequence":
                params.append(("includefield", "all"))  # the whole step
            elif not items:
                params.append(("includefield", name))
            for item in items:
                params += search_params(item, name + ".")
            continue
        value = elem.value
        text = "\\".join(map(str, value)) if isinstance(value, pydicom.multival.MultiValue) \
            else str(value if value is not None else "")
        params.append((name, text) if text.strip() else ("includefield", name))
    return params


def requested(answer: Dataset, query: Dataset) -> Dataset:
    """The answer's attributes that the query asked for (an empty sequence: all of it)."""
    out = Dataset()
    for elem in answer:
        if elem.tag not in query:
            continue
        asked = query[elem.tag]
        if elem.VR == "SQ" and asked.VR == "SQ" and asked.value and len(asked.value[0]):
            elem.value = [requested(item, asked.value[0]) for item in elem.value]
        out.add(elem)
    return out


def dicomweb(running: Running, query: Dataset) -> list[Dataset]:
    answer = httpx.get(running.http + URL, params=search_params(query),
                       auth=(USER, PASSWORD), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    return [requested(Dataset.from_json(item), query) for item in answer.json()]


def assert_same(running: Running, query: Dataset) -> list[Dataset]:
    ours = pynetdicom_find(running.scp, BRIDGE_AE, query)
    theirs = dicomweb(running, query)
    assert sorted(map(canonical, theirs)) == sorted(map(canonical, ours))
    return ours


@pytest.mark.parametrize("name", CORPUS_QUERIES)
def test_dcmtk_sample_queries(running: Running, name: str) -> None:
    qfile = running.workdir / "queries" / f"{name}.dcm"
    qfile.parent.mkdir(exist_ok=True)
    _dump2dcm(CORPUS / "queries" / f"{name}.dump", qfile, file_format=False)
    assert_same(running, pydicom.dcmread(qfile, force=True))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_query_shapes(running: Running, shape: str) -> None:
    ours = assert_same(running, dataset(*SHAPES[shape]))
    if shape != "no_match":
        assert ours, "a shape that finds nothing proves little"


@pytest.mark.parametrize("shape", list(LATIN1_SHAPES))
def test_latin1_shapes(running: Running, shape: str) -> None:
    top, step, expected = LATIN1_SHAPES[shape]
    ours = assert_same(running, dataset(top, step, "ISO_IR 100"))
    assert sorted(str(ds.AccessionNumber) for ds in ours) == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("name", list(DIFFERENCES))
def test_wildcards_and_uid_lists(running: Running, name: str) -> None:
    top, step, *_ = DIFFERENCES[name]
    assert assert_same(running, dataset(top, step))


def test_paging_includefield_and_errors(running: Running) -> None:
    auth = (USER, PASSWORD)
    url = running.http + URL
    every = httpx.get(url, params={"ScheduledProcedureStepSequence.Modality": "MR"},
                      auth=auth, timeout=60).json()
    page = httpx.get(url, params={"ScheduledProcedureStepSequence.Modality": "MR",
                                  "offset": 3, "limit": 4}, auth=auth, timeout=60).json()
    assert len(every) > 7 and page == every[3:7]
    # By tag, and with includefield: the attribute comes back.
    by_tag = httpx.get(url, params={"00080050": "A000000042", "includefield": "00100030"},
                       auth=auth, timeout=60).json()
    assert len(by_tag) == 1 and "00100030" in by_tag[0]
    fuzzy = httpx.get(url, params={"PatientName": "SMITH*", "fuzzymatching": "true",
                                   "limit": 1}, auth=auth, timeout=60)
    assert fuzzy.status_code == 200 and fuzzy.headers["warning"].startswith("299")
    assert httpx.get(url, params={"NoSuchAttribute": "x"}, auth=auth,
                     timeout=60).status_code == 400
    assert httpx.get(url, params={"PatientName.Modality": "x"}, auth=auth,
                     timeout=60).status_code == 400
    assert httpx.get(url, params={"limit": "-1"}, auth=auth, timeout=60).status_code == 400
