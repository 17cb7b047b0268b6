"""At INFO, logs carry no patient names unless `log_phi: true`."""

from __future__ import annotations

import io
import logging

from bridge import logprivacy

from listener_rig import RawClient, fixture_message, msa
from peers import run_bridge

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
