"""A sink's worker process (bridge/sinks/worker.py): started again when it dies."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bridge.sinks import SinkUnavailable
from bridge.sinks.worker import Worker


def die_once(marker: str) -> int:
    """In the worker: the first call kills its process (as the OOM killer would)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(9)
    return os.getpid()


def die() -> None:
    os._exit(9)


async def test_a_dead_worker_is_started_again_and_its_job_run_once_more(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker("folder")
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.sinks.worker"):
            pid = await worker.run(die_once, str(tmp_path / "died"))
        assert pid == worker.pid and pid != os.getpid()
        assert (tmp_path / "died").exists()  # the first process ran the job and died
        assert any("worker process died" in r.getMessage() and "starting another" in
                   r.getMessage() for r in caplog.records)
    finally:
        await worker.close()


async def test_a_worker_that_keeps_dying_makes_the_sink_unavailable() -> None:
    # The outbox then pauses the sink and probes it, without charging any item.
    worker = Worker("orthanc")
    try:
        with pytest.raises(SinkUnavailable, match="orthanc sink's worker process died twice"):
            await worker.run(die)
    finally:
        await worker.close()
