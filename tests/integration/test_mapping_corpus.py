"""Every order message of the corpus, translated with the shipped profile that fits it, either
becomes items that real DCMTK wlmscpfs (its file-reject rules on, the default) and Orthanc's
worklists plugin serve, or fails with an error naming the HL7 field and the mapping rule.

What each message must give was read from the HL7 by hand; see tests/fixtures/hl7/README.md.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pydicom
import pytest

from bridge.dicomfile import file_name, part10_bytes
from bridge.mapping.dryrun import MessageError, translate, worklist_gaps
from bridge.mapping.loader import load_profiles

from orders import orm
from peers import (
    FIXTURES,
    ROOT,
    findscu_worklist,
    free_port,
    run_bridge,
    run_orthanc,
    run_wlmscpfs,
    wait_for,
)

pytestmark = pytest.mark.integration

RULE = f"(rule at {ROOT / 'mappings' / 'ihe-orm-o01.yaml'}:"

# file -> (profile, [(PatientID, AccessionNumber, Modality, SPS ID), ...]) for each item
SERVED = {
    "ans-teleradiologie__ORM_O01_v251_NW_flux1.hl7": (
        "vendor-ans-teleradiologie", [("279035121518989", "", "MR", "OPN101")]),
    "ans-teleradiologie__OMI_O23_v251_SR_flux4.hl7": (
        "vendor-ans-teleradiologie-omi", [("279035121518989", "ACN101", "MR", "24590-2")]),
    "dcm4che14__ORM_O01_v231_MESA101.hl7": (
        "ihe-orm-o01", [("583020", "MOF5000", "MR", "SPS2000")]),
    "dcm4che__ORM_O01_v231_2019.hl7": ("ihe-orm-o01", [("583295", "MOF5026", "MR", "SPS2032")]),
    "openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7": ("ihe-orm-o01", [("100-07", "", "CT", "2")]),
    "dcm4che__OMG_O19-GeneralClinicalOrder-Eyecare_2022.hl7": (
        "ihe-omg-o19", [("PID_1", "AccessionNumber", "CT", "ScheduledProcSte")]),
    "dcm4che__OMI_O23-ImagingOrder_2022.hl7": (
        "ihe-omi-o23", [("PID_1", "AccessionNumber", "CT", "ScheduledProcSte")]),
    # MSH-9 says OMI^O23, the body is an ORM: the OMI profile's OBR/ZDS fallbacks serve it
    "dcm4che__ORM_O01-GeneralOrder_2022.hl7": (
        "ihe-omi-o23", [("PID_1", "AccessionNumber", "CT", "ScheduledProcSte")]),
    "dcm4che__OMI_O23_veterinary_2021-01_LF.hl7": (
        "ihe-omi-o23", [("4711471151", "ACC", "CR", "SPSID")]),
    "dcm4che__OMI_O23_veterinary_2022-03.hl7": (
        "ihe-omi-o23", [("4711471151", "ACC", "CT", "SPSID")]),
    "hapi-npac-dmc__ORM_O01_v22_NW-new.hl7": (
        "vendor-dmc-radis", [("N00829", "", "CT", "003711.0001.001")]),
    "hapi-npac-dmc__ORM_O01_v22_CR-cancel.hl7": (
        "vendor-dmc-radis", [("N00804", "0000000511", "CR", "0000000511")]),
    "hapi-npac-dmc__ORM_O01_v22_XR-change.hl7": (
        "vendor-dmc-radis", [("N00804", "0000000517", "CR", "0000000517")]),
    "lfh-hl7v2fhir__ORM_O01_v23_SN_DWI-MR.hl7": (
        "vendor-whi-load-generator",
        [("0a1f7838-4230-4752-b8f6-948b07c38b25", "a42990b7-4155-44", "MR", "a42990b7-4155-44")]),
}
# Cancels: no modality in the message, none needed.
CANCELS = {"ans-teleradiologie__ORM_O01_v251_CA_flux2.hl7",
           "nhapi-EncodingCharactersTests__ORM_O01_v23_CA-cancel_RX-addome.hl7"}
# Not imaging orders the shipped profiles can place: the error names field and rule.
FAILS = {
    "hapi-ParserTest__ORM_O01_v27_truncation-char.hl7":
        "Modality is required but OBR-24 is empty " + RULE,
    "hl7dotnetcore__ORM_O01_v23_CRLF_escapes-X0D-H-N-br.hl7":
        "Modality is required but OBR-24 is empty " + RULE,
    "msfhirconv__ORM-O01-01.hl7": "Modality is required but OBR-24 is empty " + RULE,
    "msfhirconv__ORM-O01-03.hl7": "Modality is required but OBR-24 is empty " + RULE,
    "msfhirconv__OMG-O19-02.hl7":
        "order.key is required but ORC-2, OBR-2, ORC-3 and OBR-3 are all empty " + RULE,
}


KEYS = ["PatientID", "AccessionNumber", "PatientName", "StudyInstanceUID",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"]


def _served(answers) -> list[tuple[str, str, str, str]]:
    return sorted((str(ds.PatientID), str(ds.get("AccessionNumber", "")),
                   str(ds.ScheduledProcedureStepSequence[0].Modality),
                   str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
                  for ds in answers)


def test_every_order_message_is_served_or_named(tmp_path: Path) -> None:
    orders = sorted(p.name for p in FIXTURES.glob("*.hl7") if "ADT" not in p.name)
    assert set(orders) == set(SERVED) | CANCELS | set(FAILS)  # nothing left unexamined
    profiles = load_profiles(ROOT / "mappings")
    folder = tmp_path / "wlm" / "WORKLIST"
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    expected = []
    for name in orders:
        raw = (FIXTURES / name).read_bytes()
        if name in FAILS:
            with pytest.raises(MessageError) as err:
                translate(raw, profiles)
                raise MessageError("; ".join(translate(raw, profiles).notes))
            assert FAILS[name] in str(err.value), name
            continue
        run = translate(raw, profiles)
        assert not run.failed, (name, run.notes)
        items = [i for o in run.mapped.orders for i in o.items]
        if name in CANCELS:
            assert items == [], name
            assert any("CANCELED, needs no items" in n for n in run.notes), run.notes
            continue
        profile, wanted = SERVED[name]
        assert run.profile.name == profile, name
        got = [(i["PatientID"], i["AccessionNumber"],
                i["ScheduledProcedureStepSequence"][0]["Modality"],
                i["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepID"])
               for i in items]
        assert got == wanted, name
        for n, item in enumerate(items):
            assert worklist_gaps(item) == [], (name, item)
            (folder / file_name(f"{name}-{n}")).write_bytes(part10_bytes(item, f"{name}-{n}"))
        expected.extend(wanted)

    with run_wlmscpfs(tmp_path / "wlm") as port:
        answers = findscu_worklist(port, "WORKLIST", KEYS, tmp_path / "answers")
    # wlmscpfs silently drops a file that breaks its rules: every item must come back.
    assert _served(answers) == sorted(expected)
    # Orthanc's worklists plugin serves the same files.
    with run_orthanc(tmp_path / "orthanc", folder) as port:
        assert _served(findscu_worklist(port, "ORTHANC", KEYS, tmp_path / "orthanc-answers")) \
            == sorted(expected)
    # IPC-9 'SSAET\SSAET2' (a raw backslash) reaches the modality as two AE titles
    vet = next(ds for ds in answers if ds.ScheduledProcedureStepSequence[0].Modality == "CR"
               and str(ds.PatientID) == "4711471151")
    assert list(vet.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == \
        ["SSAET", "SSAET2"]


# The shared corpus beside the checkout (as in CI), else the copies in tests/fixtures/hl7.
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7"


def _outbox_empty(metrics_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5) as r:
        return json.load(r)["outbox"].get("folder") == 0


def test_wlmscpfs_serves_every_file_the_bridge_writes_from_the_corpus(tmp_path: Path) -> None:
    """Issue 14.3: every corpus message through a running bridge; real wlmscpfs (file reject
    on, its default) must serve every .wl file written, and each AE names a field."""
    corpus = CORPUS if CORPUS.is_dir() else FIXTURES
    messages = sorted(corpus.glob("*.hl7"))
    assert len(messages) >= 20
    # And a procedure with neither description nor code (seen in published feeds): on the
    # old code AA and a file wlmscpfs skips; now AE naming the field.
    bare = tmp_path / "no-description-no-code.hl7"
    bare.write_text(orm("BARE1", order="BARE").replace(
        "CTHEAD^CT Head^LOCAL^CTH1^CT head plain^LOCAL", ""))
    messages.append(bare)
    folder = tmp_path / "wlm" / "WORKLIST"
    metrics = free_port()
    with run_bridge(tmp_path / "bridge", {"BRIDGE_SINKS__FOLDER__PATH": folder,
                                          "BRIDGE_METRICS__PORT": metrics}) as bridge:
        result = bridge.send(*messages)
        blocks = result.stdout.split("\n# ")
        for path in messages:
            block = next(b for b in blocks if f"{path}: " in b)
            code = block.split(f"{path}: ", 1)[1][:2]
            assert code in ("AA", "AE", "AR"), block
            if code != "AA":
                err = next(line for line in block.splitlines() if line.startswith("ERR|"))
                assert err.split("|")[2], f"{path.name}: ERR names no field: {err}"
        assert "\nMSA|AE|BARE1" in result.stdout.split(f"{bare}: ", 1)[1][:400]
        wait_for(lambda: _outbox_empty(metrics), timeout=30)
        # Issue 16.4: codes without a scheme (openmrs, dmc) are counted and logged once.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            exposition = r.read().decode()
        assert any(line.startswith("hl7bridge_mapping_warnings_total{") and
                   'kind="incomplete code"' in line for line in exposition.splitlines())
        assert bridge.log().count("logged once until the mappings reload") >= 1
    files = sorted(folder.glob("*.wl"))
    assert len(files) >= 5, result.stdout  # the new orders that no later message cancels
    written = sorted((str(pydicom.dcmread(f).PatientID),
                      str(pydicom.dcmread(f).ScheduledProcedureStepSequence[0]
                          .ScheduledProcedureStepID)) for f in files)
    with run_wlmscpfs(tmp_path / "wlm") as port:
        answers = findscu_worklist(port, "WORKLIST", KEYS, tmp_path / "answers")
    served = sorted((str(ds.PatientID),
                     str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
                    for ds in answers)
    # wlmscpfs drops an incomplete file without a word to the RIS: none may be missing.
    assert served == written
