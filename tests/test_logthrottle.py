"""Rate-limited log lines (bridge.logthrottle): a flood of one line becomes a count."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from bridge.logthrottle import THROTTLE_KEY, RepeatFilter, install_asyncio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logger(clock: Clock, caplog: pytest.LogCaptureFixture):
    log = logging.getLogger("test.logthrottle")
    repeat = RepeatFilter(interval=10, burst=2, clock=clock)
    log.addFilter(repeat)
    caplog.set_level(logging.INFO, logger="test.logthrottle")
    yield log, repeat
    log.removeFilter(repeat)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.logthrottle"]


def test_a_burst_passes_then_the_rest_is_one_line_with_a_count(logger, clock, caplog):
    log, repeat = logger
    for port in range(1000):
        log.warning("connection from 10.0.0.1:%d refused", port)
    assert lines(caplog) == ["connection from 10.0.0.1:0 refused",
                             "connection from 10.0.0.1:1 refused"]
    # Within the interval, flush says nothing yet: the window is still counting.
    repeat.flush()
    assert len(lines(caplog)) == 2
    clock.now += 10
    repeat.flush()
    assert lines(caplog)[2] == ("connection from 10.0.0.1:0 refused "
                                "[998 more like this in 10 s, not logged]")
    # At a stop, counts of windows still open are reported too.
    for _ in range(3):
        log.warning("shutting %s", "down")
    repeat.flush(all_windows=True)
    assert lines(caplog)[-1] == "shutting down [1 more like this in 0 s, not logged]"
    # The count is reported once: a new window starts afresh.
    repeat.flush()
    log.warning("connection from 10.0.0.1:%d refused", 5000)
    assert "more like this" not in lines(caplog)[-1]


def test_the_next_line_after_the_interval_carries_the_count(logger, clock, caplog):
    log, _ = logger
    for _ in range(5):
        log.error("socket.accept() out of system resource\nsocket: <fd=%d>", 7)
    clock.now += 12
    log.error("socket.accept() out of system resource\nsocket: <fd=%d>", 8)
    last = lines(caplog)[-1]
    assert len(lines(caplog)) == 3
    assert last.startswith("socket.accept() out of system resource\nsocket: <fd=8>")
    assert last.endswith("[3 more like this in the 12 s before, not logged]")


def test_each_throttle_key_and_template_has_its_own_budget(logger, caplog):
    log, _ = logger
    for _ in range(10):
        log.info("connection from %s", "a", extra={THROTTLE_KEY: "10.0.0.1"})
        log.info("connection from %s", "b", extra={THROTTLE_KEY: "10.0.0.2"})
        log.info("closed %s", "c", extra={THROTTLE_KEY: "10.0.0.1"})
    assert sorted(lines(caplog)) == sorted(["connection from a"] * 2 + ["connection from b"] * 2
                                           + ["closed c"] * 2)


def test_random_keys_cannot_grow_the_table(clock, caplog):
    log = logging.getLogger("test.logthrottle.keys")
    repeat = RepeatFilter(interval=10, burst=1, max_kinds=50, clock=clock)
    log.addFilter(repeat)
    try:
        with caplog.at_level(logging.INFO, logger="test.logthrottle.keys"):
            for n in range(10_000):
                log.info("hello from %d", n, extra={THROTTLE_KEY: f"host{n}"})
        assert len(repeat._windows) <= 51
        # 50 keys had a budget of their own; the rest shared one.
        assert len([r for r in caplog.records if r.name == "test.logthrottle.keys"]) == 51
    finally:
        log.removeFilter(repeat)


def test_asyncio_out_of_resource_storm_is_one_line(monkeypatch, caplog):
    # What asyncio logs for every failed accept() when the open files run out.
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    repeat = install_asyncio()
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(5000):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files")})
    finally:
        loop.close()
    storm = [r for r in caplog.records if "out of system resource" in r.getMessage()]
    assert 1 <= len(storm) <= repeat.burst
    repeat.clock = lambda: float("inf")  # every window has ended
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        repeat.flush()
    assert f"[{5000 - len(storm)} more like this" in caplog.records[-1].getMessage()
