"""Structure validation (hl7apy's tables): the library, the `validate` command, and the
listener's per-sender strict mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.client import split_messages
from bridge.validate import check_bytes

from listener_rig import BridgeThread, RawClient, err_code, fixture_message, msa, rig_config
from peers import FIXTURES, ROOT, bridge_env

# The shared corpus beside the checkout (as in CI), else the copies in tests/fixtures/hl7.
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "hl7"


def message(name: str) -> bytes:
    folder = CORPUS if (CORPUS / name).exists() else FIXTURES
    return split_messages((folder / name).read_bytes())[0]


def problems(name: str) -> list[str]:
    return [f"{p.location} {p.code}" for p in check_bytes(message(name)).problems]


@pytest.mark.parametrize("name", [
    "dcm4che__ORM_O01_v231_2019.hl7",  # IHE ORM with a Z segment (ZDS) after OBR
    "dcm4che14__ORM_O01_v231_MESA101.hl7",
    "msfhirconv__ORM-O01-03.hl7",  # two order groups, FT1/CTI/BLG per group
    "hl7dotnetcore__ORM_O01_v23_CRLF_escapes-X0D-H-N-br.hl7",
])
def test_well_formed_messages_have_no_problem(name):
    report = check_bytes(message(name))
    assert report.ok, [str(p) for p in report.problems]
    assert report.structure.startswith("ORM_O01 (HL7 ")


def test_a_missing_control_id_is_a_required_field():
    # openmrs leaves MSH-10 empty
    assert problems("openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7") == ["MSH-10 101"]


def test_segment_order_problems_are_located():
    # ADT^A40^ADT_A39 without EVN, and NTE between PID and MRG
    report = check_bytes(message("dcm4che__ADT_A40-PatientMerge_2022.hl7"))
    assert report.structure == "ADT_A39 (HL7 2.5.1)"
    assert [(p.segment, p.position, p.code) for p in report.problems] == [
        ("EVN", 2, 100), ("NTE", 3, 100)]
    assert "EVN is missing before PID" in report.problems[0].text


def test_msh9_disagreeing_with_the_body():
    # Named ORM^O01, says OMI^O23^OMI_O23, carries an ORM body: no IPC at all.
    report = check_bytes(message("dcm4che__ORM_O01-GeneralOrder_2022.hl7"))
    assert report.structure == "OMI_O23 (HL7 2.5.1)"
    assert [(p.segment, p.code) for p in report.problems] == [("IPC", 100)]


def test_unknown_structure_and_version():
    base = fixture_message()
    assert [p.code for p in check_bytes(base.replace(b"|2.3.1|", b"|9.9|")).problems] == [203]
    other = base.replace(b"|ORM^O01|", b"|XYZ^Q99|")
    assert [(str(p.location), p.code) for p in check_bytes(other).problems] == [("MSH-9", 200)]
    assert [p.code for p in check_bytes(b"not hl7 at all").problems] == [100]


def test_segment_cardinality():
    base = fixture_message()
    twice = base.replace(b"\rPV1|", b"\rPID|||1||X^Y\rPV1|")  # PID twice
    report = check_bytes(twice)
    assert [(p.segment, p.sequence, p.code) for p in report.problems] == [("PID", 2, 100)]


def test_validate_command(tmp_path):
    good = FIXTURES / "dcm4che__ORM_O01_v231_2019.hl7"
    bad = FIXTURES / "openmrs-radiology__ORM_O01_v231_NW_ZDS.hl7"
    run = [sys.executable, "-m", "bridge", "validate"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60,
                        env=bridge_env(), cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{good}: ORM_O01 (HL7 2.3.1): ok" in ok.stdout
    both = subprocess.run([*run, str(good), str(bad)], capture_output=True, text=True,
                          timeout=60, env=bridge_env(), cwd=ROOT)
    assert both.returncode == 1
    assert f"{bad}: ORM_O01 (HL7 2.3.1): 1 problem(s)" in both.stdout
    assert "MSH^1^10^1" in both.stdout and "message control id" in both.stdout


# --- strict mode in the listener ----------------------------------------------------------

STRICT_SENDER = "MESA_OF"  # MSH-3 of the dcm4che 2019 fixture


def with_sender(raw: bytes, sender: str) -> bytes:
    return raw.replace(b"MSH|^~\\&|MESA_OF|", f"MSH|^~\\&|{sender}|".encode(), 1)


def misordered(raw: bytes, control: str) -> bytes:
    """The fixture with a PV1 after OBR (out of order) and its own control ID."""
    return raw.replace(b"|103106|", f"|{control}|".encode()).replace(
        b"\rZDS|", b"\rPV1||E\rZDS|")


@pytest.fixture(scope="module")
def strict_bridge(tmp_path_factory):
    config = rig_config(tmp_path_factory.mktemp("strict"), mllp__strict_senders=STRICT_SENDER)
    with BridgeThread(config) as running:
        yield running


def test_strict_sender_gets_ar_naming_the_segment(strict_bridge):
    with RawClient(strict_bridge.port) as client:
        ack = client.exchange(misordered(fixture_message(), "STRICT1"))
        assert msa(ack) == ("AR", "STRICT1")
        assert err_code(ack) == 100
        err = next(s for s in ack.split(b"\r") if s.startswith(b"ERR"))
        assert err.split(b"|")[2] == b"PV1^2"  # ERR-2: the second PV1 of the message
        assert b"PV1 is not allowed here in ORM_O01" in err
        # The same sender's well-formed order is accepted.
        assert msa(client.exchange(fixture_message()))[0] == "AA"


def test_strict_mode_checks_required_fields(strict_bridge):
    raw = fixture_message().replace(b"|103106|P|", b"||P|")  # MSH-10 empty
    with RawClient(strict_bridge.port) as client:
        ack = client.exchange(raw)
        assert msa(ack)[0] == "AR"
        err = next(s for s in ack.split(b"\r") if s.startswith(b"ERR"))
        assert err.split(b"|")[2] == b"MSH^1^10^1" and err_code(ack) == 101


def test_other_senders_are_not_strict(strict_bridge):
    raw = with_sender(misordered(fixture_message(), "LAX1"), "OTHER_RIS")
    with RawClient(strict_bridge.port) as client:
        assert msa(client.exchange(raw)) == ("AA", "LAX1")


def test_strict_for_everyone(tmp_path):
    config = rig_config(tmp_path, mllp__strict="true")
    with BridgeThread(config) as bridge, RawClient(bridge.port) as client:
        raw = with_sender(misordered(fixture_message(), "ALL1"), "OTHER_RIS")
        assert msa(client.exchange(raw)) == ("AR", "ALL1")
        # The journal keeps the rejected message, as it keeps every message.
        assert bridge.journal_count() == 1
