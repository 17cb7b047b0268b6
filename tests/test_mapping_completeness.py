"""Issue 14.3/14.4 and 16.4: no AA for an item a worklist peer would skip, no value split by
a backslash, recurring warnings counted instead of repeated in every journal entry."""

from __future__ import annotations

import logging
from pathlib import Path

import hl7
import pytest

from bridge.completeness import gaps, tidy
from bridge.mapping.dryrun import translate
from bridge.mapping.engine import apply_profile
from bridge.mapping.loader import load_profile
from bridge.metrics import Metrics

from mapping_helpers import SHIPPED, text_message
from orders import orm

PEER = "test:1"
OBR_4 = "CTHEAD^CT Head^LOCAL^CTH1^CT head plain^LOCAL"


def _err(outcome) -> tuple[str, str, str]:
    seg = hl7.parse(outcome.ack.decode("latin-1")).segment("ERR")
    return str(seg[2]), str(seg[3]).split("^")[0], str(seg[8])


async def test_an_order_with_neither_description_nor_code_is_ae_naming_obr_4(processor) -> None:
    # Before: AA, and a .wl file wlmscpfs skips as incomplete (the modality never sees it).
    raw = orm("N1").replace(OBR_4, "").encode()
    outcome = await processor.handle(raw, PEER)
    assert outcome.code == "AE"
    location, code, text = _err(outcome)
    assert (location, code) == ("OBR^1^4^1^5", "101")
    assert "neither ScheduledProcedureStepDescription nor a complete " \
           "ScheduledProtocolCodeSequence" in text
    assert processor.store.store.items() == []


def test_an_order_with_only_a_code_is_served(tmp_path: Path) -> None:
    # The code alone satisfies DCMTK; the empty description is left out rather than
    # written with zero length next to the code (which DCMTK refuses).
    base = (SHIPPED / "ihe-orm-o01.yaml").read_text()
    (tmp_path / "ihe-orm-o01.yaml").write_text(base)
    (tmp_path / "site.yaml").write_text(
        "profile: site\nextends: ihe-orm-o01\nmatch: {sending_application: RIS}\n"
        "attributes:\n  RequestedProcedureDescription: OBR-44.2\n")
    run = translate(orm("N2").encode(), [load_profile(tmp_path / "site.yaml")])
    assert not run.failed, run.notes
    (item,) = run.mapped.orders[0].items
    assert "RequestedProcedureDescription" not in item
    assert item["RequestedProcedureCodeSequence"][0]["CodeValue"] == "CTHEAD"


async def test_an_escaped_backslash_does_not_split_the_patient_name(processor) -> None:
    # PID-5 'O\E\BRIEN^ANN' is one family name with a backslash in it; written as is it
    # became two PatientName values ('O' and 'BRIEN^ANN').
    outcome = await processor.handle(orm("B1", name="O\\E\\BRIEN^ANN").encode(), PEER)
    assert outcome.code == "AA", outcome.error
    db = processor.store.store
    (item,) = db.items()
    assert item.dataset["PatientName"] == "O/BRIEN^ANN"
    assert "PatientName: PID-5: a backslash (DICOM's value delimiter) was replaced by '/'" \
        in db.journal_entry(outcome.journal_id).error


async def test_recurring_warnings_are_counted_not_journaled(processor, caplog) -> None:
    # OBR-4 codes without a scheme: the same warning for every message of this sender.
    metrics = Metrics()
    processor.warnings.count = lambda *key: metrics.mapping_warnings.labels(*key).inc()
    caplog.set_level(logging.WARNING, logger="bridge.mapping.recurring")
    db = processor.store.store
    for n in range(3):
        raw = orm(f"R{n}", order=f"PL{n}").replace(OBR_4, "CTHEAD^CT Head^^CTH1^CT head^")
        outcome = await processor.handle(raw.encode(), PEER)
        assert outcome.code == "AA", outcome.error
        assert not db.journal_entry(outcome.journal_id).error  # nothing specific to it
    logged = [r for r in caplog.records if "incomplete code" in r.getMessage()]
    assert len(logged) == 2  # once per rule (requested and protocol code), not per message
    assert "ihe-orm-o01" in logged[0].getMessage()
    text = metrics.exposition().decode()
    line = next(x for x in text.splitlines() if x.startswith("hl7bridge_mapping_warnings_total")
                and "ScheduledProtocolCodeSequence" in x)
    assert 'kind="incomplete code"' in line and line.endswith(" 3.0")
    processor.warnings.reset()  # a reload: logged once more
    await processor.handle(orm("R9", order="PL9").replace(
        OBR_4, "CTHEAD^CT Head^^CTH1^CT head^").encode(), PEER)
    assert len([r for r in caplog.records if "incomplete code" in r.getMessage()]) == 4


def test_tidy_and_gaps_follow_dcmtk() -> None:
    item = {"PatientID": "P", "PatientName": "A^B", "StudyInstanceUID": "1.2",
            "RequestedProcedureID": "RP", "RequestedProcedureDescription": "",
            "RequestedProcedureCodeSequence": [{"CodeValue": "X", "CodingSchemeDesignator": "L",
                                                "CodeMeaning": "x"}],
            "ReferencedStudySequence": [{"ReferencedSOPClassUID": "1.2"}],
            "ScheduledProcedureStepSequence": [{
                "ScheduledStationAETitle": "ANY", "ScheduledProcedureStepStartDate": "20240101",
                "ScheduledProcedureStepStartTime": "1000", "Modality": "CT",
                "ScheduledProcedureStepID": "S", "ScheduledProcedureStepDescription": "d"}]}
    tidy(item)
    # A zero-length description next to a valid code would make DCMTK skip the file.
    assert "RequestedProcedureDescription" not in item
    assert item["ReferencedStudySequence"] == []
    assert gaps(item) == []
    item["ScheduledProcedureStepSequence"].append(dict(item["ScheduledProcedureStepSequence"][0]))
    assert [g.text for g in gaps(item)] == [
        "ScheduledProcedureStepSequence must hold exactly one item, not 2"]


def test_translate_says_the_bridge_answers_ae() -> None:
    run = translate(orm("T1").replace(OBR_4, "").encode(), [load_profile(SHIPPED /
                                                                        "ihe-orm-o01.yaml")])
    assert run.failed
    assert any("neither ScheduledProcedureStepDescription" in n and "OBR-4.5, OBR-4.2, "
               "OBR-44.2 and OBR-4 are all empty" in n and "the bridge answers AE" in n
               for n in run.notes), run.notes


def test_backslash_replacement_is_set_per_profile_and_kept_for_several_values(
        tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "profile: p\nmatch: {message_type: ORM^O01}\nbackslash: ' '\n"
        "order: {key: ORC-2, control: ORC-1, status: ORC-5}\n"
        "attributes:\n  PatientName: {from: PID-5, as: pn}\n"
        "  OtherPatientIDs: 'PID-3[*].1'\n  PatientComments: NTE-3\n")
    msg = text_message("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.3.1\nPID|||P1~P\\E\\2||A\\E\\B^C\n"
                       "ORC|NW|X\\E\\Y\nNTE|1||a\\E\\b\n")
    (order,) = apply_profile(load_profile(profile), msg, trace=True).orders
    (item,) = order.items
    assert item["PatientName"] == "A B^C"
    assert item["OtherPatientIDs"] == "P1\\P\\2"  # every repetition asked for: values
    assert item["PatientComments"] == "a\\b"  # LT holds one value: a backslash is text
    # The order key is no DICOM value: the backslash is kept (escaped for the key, keys.py),
    # so that 'X\\Y' and 'X/Y' stay two orders.
    assert order.key == "X\\\\Y"


@pytest.mark.parametrize("name", ["ihe-orm-o01.yaml", "ihe-omi-o23.yaml", "ihe-omg-o19.yaml"])
def test_shipped_profiles_have_no_completeness_warnings(name: str) -> None:
    assert load_profile(SHIPPED / name).warnings == []
