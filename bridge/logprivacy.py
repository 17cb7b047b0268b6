"""Log privacy: with ``log_phi: false`` (the default) log lines carry no message content.

The bridge's own log lines name journal IDs, senders, control IDs, field locations and ACK
codes, never field values. What could still carry a patient's name is the text of an
exception (``ValueError: 'DOE^JOHN' ...``), logged as an argument or in a traceback. The
filter below replaces those texts with the exception's type, at INFO and above; DEBUG
records are left alone (DEBUG is for a workbench, not for a hospital's log collector).
"""

from __future__ import annotations

import logging
import traceback

HIDDEN = "(details hidden: log_phi is false)"


def exception_text(exc: BaseException, log_phi: bool) -> str:
    # Errors about configuration and mapping files (phi_free) name files and lines, never
    # a patient: an integrator needs their text whatever log_phi says.
    if log_phi or getattr(exc, "phi_free", False):
        return str(exc)
    return f"{type(exc).__name__} {HIDDEN}"


class PhiFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        if isinstance(record.args, tuple) and any(
                isinstance(a, BaseException) for a in record.args):
            record.args = tuple(exception_text(a, False) if isinstance(a, BaseException)
                                else a for a in record.args)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text \
                and not getattr(record.exc_info[1], "phi_free", False):
            exc = record.exc_info[1]
            frames = "".join(traceback.format_tb(exc.__traceback__))
            record.exc_text = (f"Traceback (most recent call last):\n{frames}"
                               f"{type(exc).__name__}: {HIDDEN}")
        return True


def install(log_phi: bool) -> None:
    """Put the filter on every root handler (call after logging.basicConfig)."""
    if log_phi:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PhiFilter) for f in handler.filters):
            handler.addFilter(PhiFilter())
