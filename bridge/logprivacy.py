"""Log privacy: with ``log_phi: false`` (the default) log lines carry no message content.

The bridge's own log lines name journal IDs, senders, control IDs, field locations and ACK
codes, never field values. What could still carry a patient's name is the text of an
exception (``ValueError: 'DOE^JOHN' ...``), logged as an argument or in a traceback. The
filter below replaces those texts with the exception's type, at INFO and above; DEBUG
records are left alone (DEBUG is for a workbench, not for a hospital's log collector).

Libraries log too, and quote values: pydicom warns ``Invalid value for VR DA: '19511340'.``
both through its logger and through the ``warnings`` module. `configure` routes warnings
into logging (``logging.captureWarnings``) so that every such line passes the same
handlers, and the filter hides the quoted literals in records of other libraries' loggers.
The folder sink's writer process calls `configure` with the parent's settings, so that its
warnings go the same way instead of straight to stderr.

Every line is cut to ``log_max_line`` characters: a query or a message quoted whole must
not make a 200 KB log line.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from dataclasses import dataclass

HIDDEN = "(details hidden: log_phi is false)"
HIDDEN_VALUE = "'(value hidden)'"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Python literals as repr() writes them (str and bytes, either quote), which is how
# libraries quote values in their messages.
_QUOTED = re.compile(r"""(?<!\w)b?(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")


@dataclass(frozen=True)
class LogSettings:
    """What a child process needs to log as the bridge does (picklable)."""

    level: str = "INFO"
    log_phi: bool = False
    max_line: int = 2000


_current = LogSettings()


def exception_text(exc: BaseException, log_phi: bool) -> str:
    # Errors about configuration and mapping files (phi_free) name files and lines, never
    # a patient: an integrator needs their text whatever log_phi says.
    if log_phi or getattr(exc, "phi_free", False):
        return str(exc)
    return f"{type(exc).__name__} {HIDDEN}"


def _own(record: logging.LogRecord) -> bool:
    return record.name == "bridge" or record.name.startswith("bridge.")


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
        if not _own(record):
            # Another library's line (pydicom, pynetdicom, a captured warning): its wording
            # is not ours to vouch for, so every quoted literal goes.
            # Bounded first: the cap cuts the line later anyway, and the scan stays cheap.
            text = _QUOTED.sub(HIDDEN_VALUE, record.getMessage()[:100_000]).rstrip("\n")
            record.msg, record.args = text, ()
        return True


class CappedFormatter(logging.Formatter):
    """Cuts every line of a formatted record (message and traceback) to `max_line`."""

    def __init__(self, fmt: str | None = None, max_line: int = 2000):
        super().__init__(fmt)
        self.max_line = max_line

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if len(text) <= self.max_line:
            return text
        return "\n".join(self.cap(line) for line in text.split("\n"))

    def cap(self, line: str) -> str:
        if len(line) <= self.max_line:
            return line
        return f"{line[:self.max_line]}... ({len(line) - self.max_line} characters cut)"


def install(log_phi: bool, max_line: int | None = None) -> None:
    """Put the filter (unless `log_phi`) and the line cap on every root handler, and send
    warnings (pydicom's among them) through them (call after logging.basicConfig)."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not log_phi and not any(isinstance(f, PhiFilter) for f in handler.filters):
            handler.addFilter(PhiFilter())
        if max_line is not None:
            fmt = handler.formatter._fmt if handler.formatter is not None else None
            handler.setFormatter(CappedFormatter(fmt, max_line))


def configure(settings: LogSettings) -> None:
    """Logging for a bridge process (the bridge, a command, the folder writer): stderr,
    privacy filter, line cap, warnings captured. Remembers `settings` for children."""
    global _current
    _current = settings
    logging.basicConfig(level=settings.level, format=FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(settings.level)
    install(settings.log_phi, settings.max_line)


def current() -> LogSettings:
    """The settings `configure` was last called with (passed to spawned processes)."""
    return _current
