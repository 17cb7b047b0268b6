"""At INFO, logs carry no patient names unless `log_phi: true`."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

from bridge import logprivacy

from listener_rig import RawClient, fixture_message, msa
from orders import orm
from peers import bridge_env, findscu_worklist, free_port, run_bridge, wait_for

NAME = b"ZZPRIVATE^PATIENTNAME"


def _logger(log_phi: bool) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    if not log_phi:
        handler.addFilter(logprivacy.PhiFilter())
    logger = logging.getLogger(f"privacy-test-{log_phi}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def _log_all(logger: logging.Logger) -> None:
    value = NAME.decode()  # a traceback shows source lines: keep the name out of them
    try:
        raise ValueError(f"cannot encode {value!r} as PN")
    except ValueError as exc:
        logger.exception("journal 7: internal error")
        logger.warning("outbox folder: %s failed (attempt %d): %s", "KEY", 1, exc)


def test_exception_texts_are_hidden_unless_log_phi():
    logger, out = _logger(log_phi=False)
    _log_all(logger)
    text = out.getvalue()
    assert "ZZPRIVATE" not in text
    assert "ValueError" in text and "log_phi is false" in text
    assert "Traceback" in text  # where it failed stays visible
    logger, out = _logger(log_phi=True)
    _log_all(logger)
    assert "ZZPRIVATE^PATIENTNAME" in out.getvalue()


def test_exception_text_helper():
    exc = KeyError("ZZPRIVATE")
    assert "ZZPRIVATE" not in logprivacy.exception_text(exc, False)
    assert "ZZPRIVATE" in logprivacy.exception_text(exc, True)


def test_bridge_info_log_carries_no_patient_name(tmp_path):
    order = fixture_message().replace(b"DOE^J1", NAME)
    assert NAME in order
    no_modality = order.replace(b"|MR|", b"||")  # AE at OBR-24
    bad_control = order.replace(b"ORC|NW|", b"ORC|ZZ|")  # AE at ORC-1
    with run_bridge(tmp_path, {"BRIDGE_LOG_LEVEL": "INFO"}) as bridge:
        with RawClient(bridge.mllp_port) as client:
            assert msa(client.exchange(order))[0] == "AA"
            assert msa(client.exchange(no_modality.replace(b"|103106|", b"|P2|")))[0] == "AE"
            assert msa(client.exchange(bad_control.replace(b"|103106|", b"|P3|")))[0] == "AE"
        log = bridge.log()
    assert "journal" in log  # the failures were logged...
    assert "ZZPRIVATE" not in log and "PATIENTNAME" not in log  # ...without the name


# --- library lines, the folder writer, the line cap (issue 15 item 6) ------------------

def _record(logger: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)


def test_quoted_values_in_library_lines_are_hidden():
    phi = logprivacy.PhiFilter()
    pydicom_line = _record("pydicom", "Invalid value for VR %s: %r.", "DA", "19511340")
    warning_line = _record("py.warnings", "valuerep.py:440: UserWarning: Invalid value for VR "
                           "PN: b'ZQX^NAME'\n  warn_and_log(msg)")
    own_line = _record("bridge.processor", "journal %d: AE at %s", 7, "OBR-24")
    for record in (pydicom_line, warning_line, own_line):
        assert phi.filter(record)
    assert pydicom_line.getMessage() == "Invalid value for VR DA: '(value hidden)'."
    assert "ZQX" not in warning_line.getMessage() and "PN:" in warning_line.getMessage()
    assert own_line.getMessage() == "journal 7: AE at OBR-24"  # ours: never values


def test_every_line_is_capped():
    formatter = logprivacy.CappedFormatter("%(levelname)s %(message)s", max_line=200)
    record = _record("bridge.scp.server", "C-FIND: %s", "X" * 5000)
    text = formatter.format(record)
    assert len(text) < 260 and text.endswith("characters cut)")
    try:
        raise ValueError("Y" * 5000)
    except ValueError:
        record.exc_info = sys.exc_info()
    assert all(len(line) < 260 for line in formatter.format(record).splitlines())


WRITER = """
import asyncio, sys
from pathlib import Path
from bridge import logprivacy
from bridge.sinks.folder import FolderSink
from bridge.store import StoredItem

async def main():
    sink = FolderSink(Path(sys.argv[1]))
    # ISO 2022 code extensions: an item the direct writer leaves to pydicom (dicomfile.py).
    await sink.put(StoredItem("K1", "O1", "SCHEDULED", True, {
        "SpecificCharacterSet": "\\\\ISO 2022 IR 87",
        "PatientName": "ZQX^NAME", "PatientID": "ZQX1", "PatientBirthDate": "19511340"},
        "ZQX1", 0.0))
    await sink.aclose()

if __name__ == "__main__":  # the writer process is spawned: it imports this file again
    logprivacy.configure(logprivacy.LogSettings("INFO", False, 2000))
    asyncio.run(main())
"""


def test_the_folder_writer_process_warns_through_the_filter(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "wl")],
                            capture_output=True, text=True, timeout=120, env=bridge_env())
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "wl").glob("*.wl"))) == 1
    # pydicom did warn, in the writer process, and the value did not come out with it.
    assert "Invalid value for VR DA: '(value hidden)'" in result.stderr, result.stderr
    assert "19511340" not in result.stderr, result.stderr


PHI = ["ZQXFAMILY", "ZQXGIVEN", "ZQXPID777", "19511340", "ZQXMOTHER", "ZQXSTREET",
       "ZQXCITY", "5550199ZQX"]


def _phi_order(control_id: str, order: str, **fields: str) -> bytes:
    text = orm(control_id, order=order, patient_id="ZQXPID777", **fields)
    pid = ("PID|||ZQXPID777^^^HOSP||ZQXFAMILY^ZQXGIVEN|ZQXMOTHER|19511340|F|||"
           "1 ZQXSTREET^^ZQXCITY||5550199ZQX")
    return "\r".join(pid if s.startswith("PID|") else s for s in text.split("\r")).encode()


def test_a_bridge_run_logs_none_of_the_patient_data_it_handled(tmp_path):
    """Orders with distinctive values (an invalid birth date among them), failures on the
    way, queries of the items: not one value sent appears in the bridge's output."""
    scp_port = free_port()
    with run_bridge(tmp_path, {"BRIDGE_LOG_LEVEL": "INFO", "BRIDGE_SCP__ENABLED": "true",
                               "BRIDGE_SCP__PORT": scp_port}) as bridge:
        with RawClient(bridge.mllp_port) as client:
            assert msa(client.exchange(_phi_order("Z1", "ZO1", modality="MR")))[0] == "AA"
            assert msa(client.exchange(_phi_order("Z2", "ZO2", modality="")))[0] == "AE"
            assert msa(client.exchange(_phi_order("Z3", "ZO3", control="ZZ")))[0] == "AE"
        wait_for(lambda: list((tmp_path / "data" / "worklists").glob("*.wl")))
        answers = findscu_worklist(scp_port, "BRIDGE_MWL", [
            "PatientName", "PatientID", "PatientBirthDate",
            "ScheduledProcedureStepSequence[0].Modality=MR",
            # A long query value: the line that logs it is capped.
            "RequestedProcedureDescription=" + "Q" * 10_000], tmp_path / "answers")
        assert answers == []
        answers = findscu_worklist(scp_port, "BRIDGE_MWL", [
            "PatientName", "PatientID", "PatientBirthDate",
            "ScheduledProcedureStepSequence[0].Modality=MR"], tmp_path / "answers")
        assert [str(a.PatientName) for a in answers] == ["ZQXFAMILY^ZQXGIVEN"]
        # Queried by the patient's own values: the query log names keys, not values.
        answers = findscu_worklist(scp_port, "BRIDGE_MWL", [
            "PatientName=ZQXFAMILY*", "PatientID=ZQXPID777", "PatientBirthDate"],
            tmp_path / "answers")
        assert [str(a.PatientID) for a in answers] == ["ZQXPID777"]
        log = bridge.log()
    # The invalid birth date reaches the .wl writer (pydicom warns there only for items it
    # writes itself: test_the_folder_writer_process_warns_through_the_filter).
    leaked = [value for value in PHI if value in log]
    assert leaked == [], log
    assert max(len(line) for line in log.splitlines()) < 2100
