"""A full disk (issue 15, item 5): AE 207 "storage full" while the store cannot write, a clean
start, and recovery on its own once there is space again.

The disk is made "full" with SQLite's `PRAGMA max_page_count` set to the store's current
size: every write that needs a new page then fails with SQLITE_FULL, the very error a full
file system gives (the last test checks that on a small tmpfs, when run as root).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import sys

import hl7
import pytest

from bridge.app import Bridge
from bridge.config import load_config
from bridge.store import StorageFull, Store, is_storage_full

from orders import orm
from peers import ROOT, bridge_env


def cap(store: Store, extra_pages: int = 0) -> None:
    """No more pages than the store has now (plus `extra_pages`)."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def uncap(store: Store) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def big_order(control_id: str, order: str) -> bytes:
    # A long note makes the raw message need new pages in the journal.
    return (orm(control_id, order=order) + f"NTE|1||{'x' * 60_000}\r").encode()


def err_text(ack: bytes) -> tuple[str, str, str]:
    msg = hl7.parse(ack.decode("latin-1"))
    return str(msg.segment("MSA")[1]), str(msg.segment("MSA")[2]), str(msg.segment("ERR")[3])


async def test_orders_get_ae_207_while_full_and_aa_once_there_is_space(processor,
                                                                       caplog) -> None:
    caplog.set_level(logging.WARNING)
    db = processor.store.store
    cap(db)
    outcome = await processor.handle(big_order("FULL1", "FULL1"), "t")
    code, control_id, error = err_text(outcome.ack)
    assert (code, control_id) == ("AE", "FULL1")  # MSA-2 still echoes MSH-10
    assert error.startswith("207") and "storage full" in outcome.ack.decode()
    assert db.full_since is not None
    assert db.items() == []
    # Never AA what was not stored: whatever the room left, an AA means a stored order.
    for n in range(12):
        text = orm(f"S{n}", order=f"S{n}") + f"NTE|1||{'y' * 700 * n}\r"
        outcome = await processor.handle(text.encode(), "t")
        stored = [i for i in db.items() if i.order_key == f"S{n}^RIS"]
        if outcome.code == "AA":
            assert stored
        else:
            assert outcome.code == "AE" and "storage full" in (outcome.error or "")
            assert not stored
    assert not [r for r in caplog.records if r.exc_info]  # one line each, no traceback
    # Space again: the same message is accepted, and the flag clears by itself.
    uncap(db)
    outcome = await processor.handle(big_order("FULL1", "FULL1"), "t")
    assert outcome.code == "AA" and db.full_since is None
    assert [i.order_key for i in db.items() if i.order_key == "FULL1^RIS"] == ["FULL1^RIS"]


def test_recover_on_a_full_disk_raises_storage_full_not_a_sqlite_error(tmp_path) -> None:
    store = Store(tmp_path / "s.sqlite")
    try:
        for _ in range(200):
            store.journal_received(b"MSH|^~\\&|A|B|C|D|||ORM^O01|X|P|2.3", "p")
        cap(store)
        try:
            store.recover()
        except StorageFull as exc:
            assert "full" in str(exc)
        else:
            raise AssertionError("recover wrote although the store was full")
        assert store.full_since is not None
        uncap(store)
        assert store.recover() == 200
    finally:
        store.close()


async def test_the_bridge_starts_on_a_full_disk_and_healthz_says_so(tmp_path, caplog) -> None:
    config = load_config(ROOT / "config.yaml", environ={
        "BRIDGE_DATA_DIR": str(tmp_path / "data"), "BRIDGE_MLLP__PORT": "0",
        "BRIDGE_SCP__PORT": "0", "BRIDGE_HTTP__PORT": "0",  # never a running bridge's ports
        "BRIDGE_MAPPINGS__WATCH_SECONDS": "0"})
    first = Store(config.store_path)
    for _ in range(200):  # unanswered messages of a previous run, to mark at start-up
        first.journal_received(b"MSH|^~\\&|A|B|C|D|||ORM^O01|X|P|2.3", "p")
    first.close()
    bridge = Bridge(config)
    cap(bridge.store.store)
    with caplog.at_level(logging.ERROR):
        await bridge.start()
    try:
        lines = [r for r in caplog.records if "storage full" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None  # one line, no traceback
        health = await bridge.health()
        assert health["storage"] == "full"
        assert b"hl7bridge_storage_full 1.0" in bridge.metrics.exposition()
        outcome = await bridge.processor.handle(big_order("B1", "B1"), "t")
        assert outcome.code == "AE"
        uncap(bridge.store.store)
        outcome = await bridge.processor.handle(big_order("B1", "B1"), "t")
        assert outcome.code == "AA"
        assert (await bridge.health())["storage"] == "ok"
        assert b"hl7bridge_storage_full 0.0" in bridge.metrics.exposition()
    finally:
        await bridge.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root")  # noqa: E501
def test_a_real_full_file_system_gives_the_same_storage_full(tmp_path) -> None:
    """The same path on a file system that is really full (a 2 MB tmpfs filled up)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]
                      ).returncode != 0:
        pytest.skip(reason="tmpfs mount refused here (root without mount rights)")
    try:
        store = Store(mnt / "bridge.sqlite")
        try:
            for _ in range(50):
                store.journal_received(b"x" * 1000, "p")
            fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            with pytest.raises(sqlite3.OperationalError) as failed:
                for _ in range(100):
                    store.journal_received(b"y" * 3000, "p")
            assert is_storage_full(failed.value)
            with pytest.raises(StorageFull):
                store.recover()
            # A new store cannot even be created: StorageFull, and `serve` says so in one
            # line instead of a traceback.
            with pytest.raises(StorageFull):
                Store(mnt / "new" / "bridge.sqlite")
            served = subprocess.run(
                [sys.executable, "-m", "bridge", "serve", "--config", str(ROOT / "config.yaml")],
                capture_output=True, text=True, timeout=60, env=bridge_env(
                    BRIDGE_DATA_DIR=str(tmp_path / "data"),
                    BRIDGE_STORE__PATH=str(mnt / "other.sqlite"),
                    BRIDGE_SINKS__FOLDER__PATH=str(tmp_path / "wl"),
                    BRIDGE_MLLP__PORT="0", BRIDGE_METRICS__ENABLED="false",
                    BRIDGE_SCP__ENABLED="false"))
            assert served.returncode != 0
            assert "storage full" in served.stderr and "Traceback" not in served.stderr
            os.remove(mnt / "filler")  # space returns: writes work again, no restart
            store.journal_received(b"z", "p")
            assert store.recover() >= 50
        finally:
            store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
