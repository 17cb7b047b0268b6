"""Rate-limited logging: a line that repeats passes a few times per interval, then is counted.

A flood (a thousand connections a second that each fail the same way, or asyncio's
"socket.accept() out of system resource" once per accept attempt) must not become a flood
of log lines: the disk and the log collector are shared with everything else, and a 35 MB
log hides the one line that matters. `RepeatFilter` sits on a logger (not a handler), so a
suppressed record costs a dictionary look-up and nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# `extra={THROTTLE_KEY: peer}` gives each peer its own budget for a line: one noisy sender
# does not hide what another one does.
THROTTLE_KEY = "throttle_key"
_SUMMARY = "repeat_summary"  # set on our own summary records: they always pass


@dataclass
class _Window:
    start: float
    logger: str
    level: int
    first_line: str  # the first record of the window, formatted, for the summary
    passed: int = 0
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """At most `burst` records of a kind per `interval` seconds pass; the others are counted.

    A kind is the logger, the level, the first line of the message template and the
    record's `throttle_key` (when given). The count of a window is reported once, on the
    first record of the kind after the window ended ("[N more like this in the last T s]"),
    or by `flush()` when none comes. Past `max_kinds` live kinds, new throttle keys share
    one budget per template, so random keys cannot grow the table without bound.
    """

    def __init__(self, interval: float = 10.0, burst: int = 1, max_kinds: int = 1000,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.burst = burst
        self.max_kinds = max_kinds
        self.clock = clock
        self._windows: dict[tuple, _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        template = str(record.msg).split("\n", 1)[0]
        key = (record.name, record.levelno, template, getattr(record, THROTTLE_KEY, None))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.max_kinds:
                self._prune(now)
                if len(self._windows) >= self.max_kinds:
                    key = (*key[:3], None)
                    window = self._windows.get(key)
            ended = None
            if window is None or now - window.start >= self.interval:
                if window is not None and window.suppressed:
                    ended = window
                window = self._windows[key] = _Window(
                    now, record.name, record.levelno, _first_line(record))
            if window.passed >= self.burst:
                window.suppressed += 1
                return False
            window.passed += 1
        if ended is not None and isinstance(record.msg, str):
            # The message template gets the count; no "%" here, so record.args still apply.
            record.msg += (f" [{ended.suppressed} more like this in the "
                           f"{now - ended.start:.0f} s before, not logged]")
        return True

    def flush(self, all_windows: bool = False) -> None:
        """Log the counts of windows that have ended (all of them, at a stop), one line
        per kind."""
        now = self.clock()
        with self._lock:
            ended = [w for w in self._windows.values()
                     if (all_windows or now - w.start >= self.interval) and w.suppressed]
            if all_windows:
                self._windows.clear()
            else:
                self._prune(now)
        for w in ended:
            logging.getLogger(w.logger).log(
                w.level, "%s [%d more like this in %.0f s, not logged]", w.first_line,
                w.suppressed, now - w.start, extra={_SUMMARY: True})

    def _prune(self, now: float) -> None:
        """Forget windows that ended (their counts are lost: flush first when they matter)."""
        for key in [k for k, w in self._windows.items() if now - w.start >= self.interval]:
            del self._windows[key]


def _first_line(record: logging.LogRecord) -> str:
    try:
        return record.getMessage().split("\n", 1)[0][:500]
    except Exception:  # a broken format string: logging itself reports it later
        return str(record.msg)[:500]


_installed: list[RepeatFilter] = []


def install(logger: logging.Logger, interval: float = 10.0, burst: int = 1) -> RepeatFilter:
    """Put a RepeatFilter on `logger` (once; later calls return the one installed)."""
    for f in logger.filters:
        if isinstance(f, RepeatFilter):
            return f
    repeat = RepeatFilter(interval=interval, burst=burst)
    logger.addFilter(repeat)
    _installed.append(repeat)
    return repeat


def install_asyncio() -> RepeatFilter:
    """Throttle asyncio's own logger: out of file descriptors, it logs "socket.accept() out
    of system resource" for every accept attempt (77,011 lines in 12 s, measured)."""
    return install(logging.getLogger("asyncio"), burst=3)


def flush_all(all_windows: bool = False) -> None:
    """Report the suppressed counts of every filter `install` put on a logger."""
    for repeat in list(_installed):
        repeat.flush(all_windows)
