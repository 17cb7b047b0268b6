"""Operator commands (`journal`, `worklist`) run as a user would, and housekeeping."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import bridge
from bridge.config import load_config
from bridge.housekeeping import Housekeeper
from bridge.mapping.loader import load_profiles
from bridge.processor import Processor
from bridge.store import AsyncStore, open_store, store_url

from orders import orm
from peers import ROOT, bridge_env

# Every test here that takes `config` runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.backends


# The store URL of the running test's config (its PostgreSQL schema), for the CLI.
CLI_STORE: dict[str, str | None] = {}


@pytest.fixture(autouse=True)
def cli_store(request) -> None:
    config = request.getfixturevalue("config") if "config" in request.fixturenames else None
    CLI_STORE["url"] = config.store.url if config is not None else None


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI on the test's store: its folder, or its PostgreSQL schema."""
    env = {"BRIDGE_DATA_DIR": str(tmp_path / "data")}
    if CLI_STORE.get("url"):
        env["BRIDGE_STORE__URL"] = CLI_STORE["url"]
    return subprocess.run([sys.executable, "-m", "bridge", *args, "--config",
                           str(ROOT / "config.yaml")], capture_output=True, text=True,
                          timeout=60, env=bridge_env(**env))


async def test_journal_list_show_and_replay_after_a_mapping_fix(processor, tmp_path) -> None:
    good = await processor.handle(orm("J1", order="J1").encode(), "t")
    bad = await processor.handle(orm("J2", order="J2", modality="").encode(), "t")
    assert (good.code, bad.code) == ("AA", "AE")

    listing = cli(tmp_path, "journal", "list", "--failed")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()[1:]
    assert len(lines) == 1 and lines[0].split()[0] == str(bad.journal_id)
    assert "OBR-24" in lines[0]

    shown = cli(tmp_path, "journal", "show", str(bad.journal_id))
    assert "ORC|NW|J2^RIS" in shown.stdout and "MSA|AE|J2" in shown.stdout

    # Replay fails the same way while the mapping is unchanged...
    again = cli(tmp_path, "journal", "replay", str(bad.journal_id))
    assert again.returncode == 1 and f"{bad.journal_id}: AE" in again.stdout
    # ...and succeeds once the site's mapping supplies a modality.
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    text = (ROOT / "mappings" / "ihe-orm-o01.yaml").read_text()
    (mappings / "ihe-orm-o01.yaml").write_text(
        text.replace("Modality: {from: OBR-24, required: true}",
                     "Modality: {from: OBR-24, default: CT}"))
    fixed = subprocess.run(
        [sys.executable, "-m", "bridge", "journal", "replay", "--failed", "--config",
         str(ROOT / "config.yaml")], capture_output=True, text=True, timeout=60,
        env=bridge_env(BRIDGE_DATA_DIR=str(tmp_path / "data"), BRIDGE_MAPPINGS__DIR=str(mappings),
                       **({"BRIDGE_STORE__URL": CLI_STORE["url"]} if CLI_STORE["url"] else {})))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    db = open_store(store_url(processor.config))
    try:
        assert db.journal_entry(bad.journal_id).status == "replayed"
        assert {i.order_key for i in db.items()} == {"J1^RIS", "J2^RIS"}
    finally:
        db.close()


async def test_worklist_list_show_delete(processor, tmp_path) -> None:
    await processor.handle(orm("W1", order="W1", accession="WACC").encode(), "t")
    listing = cli(tmp_path, "worklist", "list")
    [row] = listing.stdout.splitlines()[1:]
    key = row.split()[-1]
    assert key == "W1^RIS|RP1|SPS1" and "WACC" in row and "SCHEDULED" in row
    shown = cli(tmp_path, "worklist", "show", key)
    assert "sink folder: pending" in shown.stdout and '"AccessionNumber": "WACC"' in shown.stdout
    deleted = cli(tmp_path, "worklist", "delete", key)
    assert deleted.returncode == 0
    assert cli(tmp_path, "worklist", "list").stdout.splitlines()[1:] == []
    assert "DISCONTINUED" in cli(tmp_path, "worklist", "list", "--all").stdout
    # The operator's removal sticks: a resend of the order does not bring the item back.
    await processor.handle(orm("W2", order="W1", accession="WACC").encode(), "t")
    assert cli(tmp_path, "worklist", "list").stdout.splitlines()[1:] == []
    missing = cli(tmp_path, "worklist", "show", "nope")
    assert missing.returncode == 1 and "no such item" in missing.stderr


async def test_housekeeping_expires_old_items_and_purges_the_journal(tmp_path) -> None:
    config = load_config(ROOT / "config.yaml",
                         environ={"BRIDGE_DATA_DIR": str(tmp_path / "data"),
                                  "BRIDGE_LIFECYCLE__EXPIRE_AFTER_HOURS": "24",
                                  "BRIDGE_JOURNAL__RETENTION_DAYS": "1"})
    store = AsyncStore(open_store(store_url(config), ["folder"]))
    try:
        processor = Processor(config, load_profiles(config.mappings.dir), store)
        today = time.strftime("%Y%m%d")
        await processor.handle(orm("H1", order="OLD", start="202001011000").encode(), "t")
        await processor.handle(orm("H2", order="NEW", start=f"{today}2359").encode(), "t")
        bad = await processor.handle(b"garbage", "t")
        # Age the journal: everything was received two days ago.
        store.store.db.execute("UPDATE journal SET received_at = received_at - 172800")
        seen: list = []
        keeper = Housekeeper(config, store, seen.extend)
        await keeper.tidy()
        items = {i.order_key: (i.status, i.visible) for i in store.store.items()}
        assert items == {"OLD^RIS": ("DISCONTINUED", False), "NEW^RIS": ("SCHEDULED", True)}
        assert [w.order_key for w in seen] == ["OLD^RIS"]
        remaining = store.store.journal_entries()
        assert [e.id for e in remaining] == [bad.journal_id]  # failed entries are kept
    finally:
        store.close()


async def test_changes_by_another_process_reach_the_running_views(tmp_path) -> None:
    """`worklist delete` run by an operator while the bridge runs: the housekeeper sees the
    other connection's commit and hands the change to the listeners (the SCP's index)."""
    config = load_config(ROOT / "config.yaml", environ={"BRIDGE_DATA_DIR": str(tmp_path / "data")})
    store = AsyncStore(open_store(store_url(config), ["folder"]))
    try:
        processor = Processor(config, load_profiles(config.mappings.dir), store)
        await processor.handle(orm("O1", order="OUT").encode(), "t")
        seen: list = []
        keeper = Housekeeper(config, store, seen.extend)
        await keeper.pick_up_changes()  # first call: learns the version
        seen.clear()
        await keeper.pick_up_changes()
        assert seen == []  # nothing from outside
        other = open_store(store_url(config), ["folder"])
        try:
            from bridge.operations import worklist_delete
            assert worklist_delete(other, "OUT^RIS|RP1|SPS1")
        finally:
            other.close()
        await keeper.pick_up_changes()
        assert [(w.item_key, w.visible) for w in seen] == [("OUT^RIS|RP1|SPS1", False)]
    finally:
        store.close()


async def test_journal_list_shows_the_newest_first_and_as_json(processor, tmp_path) -> None:
    ids = [(await processor.handle(orm(f"N{i}", order=f"N{i}").encode(), "t")).journal_id
           for i in range(5)]
    listing = cli(tmp_path, "journal", "list", "--limit", "2")
    assert listing.returncode == 0, listing.stderr
    assert [int(line.split()[0]) for line in listing.stdout.splitlines()[1:]] == \
        [ids[4], ids[3]]
    as_json = json.loads(cli(tmp_path, "journal", "list", "--json").stdout)
    assert [e["id"] for e in as_json] == ids[::-1]
    assert as_json[0]["control_id"] == "N4" and as_json[0]["ack_code"] == "AA"
    assert as_json[0]["status"] == "processed" and "raw" not in as_json[0]


async def test_worklist_list_as_json(processor, tmp_path) -> None:
    await processor.handle(orm("WJ", order="WJ", accession="JACC").encode(), "t")
    [item] = json.loads(cli(tmp_path, "worklist", "list", "--json").stdout)
    assert item["item_key"] == "WJ^RIS|RP1|SPS1" and item["status"] == "SCHEDULED"
    assert item["visible"] is True and item["dataset"]["AccessionNumber"] == "JACC"


def test_send_of_a_missing_file_says_so(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "bridge", "send", str(tmp_path / "no.hl7"),
                             "--port", "9"], capture_output=True, text=True, timeout=60,
                            env=bridge_env())
    assert result.returncode == 2
    assert f"send: cannot read {tmp_path / 'no.hl7'}: No such file" in result.stderr
    assert "cannot reach" not in result.stderr


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "bridge", "--version"], capture_output=True,
                            text=True, timeout=60, env=bridge_env())
    assert result.stdout.strip() == f"hl7-worklist-bridge {bridge.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == bridge.__version__


def test_validate_works_on_a_plain_install() -> None:
    """`validate` needs hl7apy: a main dependency, not an extra one forgets."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("hl7apy") for d in project["dependencies"])
    result = subprocess.run([sys.executable, "-m", "bridge", "validate",
                             str(ROOT / "tests/fixtures/hl7/dcm4che__ORM_O01_v231_2019.hl7")],
                            capture_output=True, text=True, timeout=120, env=bridge_env())
    assert "ORM_O01" in result.stdout and "hl7apy" not in result.stderr, result.stderr
async def test_replaying_failed_entries_updates_them_instead_of_adding_new_ones(
        processor, config) -> None:
    """Two runs of `journal replay --failed` over two still-failing messages used to turn
    2 failed entries into 5; now the failed list stays at 2, each entry counting its runs."""
    from bridge.operations import replay

    bad = [await processor.handle(orm(f"R{n}", order=f"R{n}", modality="").encode(), "t")
           for n in (1, 2)]
    ids = [o.journal_id for o in bad]
    db = processor.store.store
    for run in (1, 2):
        failed = [e.id for e in db.journal_since(0, "failed")]
        results = await replay(config, failed)
        assert [code for _, code, _ in results] == ["AE", "AE"]
        entries = db.journal_entries(limit=100)
        assert sorted(e.id for e in entries) == ids  # no new entries
        assert all(e.status == "failed" and e.replay_count == run and e.replayed_at
                   and "OBR-24" in e.error for e in entries)
    # After a mapping fix (a default modality) the first one is accepted, in place.
    results = await replay(_with_default_modality(config), ids[:1])
    assert results[0][1] == "AA"
    entry = db.journal_entry(ids[0])
    assert (entry.status, entry.replay_count, entry.ack_code) == ("replayed", 3, "AA")
    from bridge.operations import journal_show
    assert "replayed 3 time(s), last " in journal_show(entry)
    assert [e.id for e in db.journal_since(0, "failed")] == ids[1:]
    # A resend of the replayed message is a duplicate of it, with the AA it got.
    again = await processor.handle(orm("R1", order="R1", modality="").encode(), "t")
    assert again.ack == entry.ack and again.code == "AA"


def _with_default_modality(config):
    import shutil

    folder = config.data_dir / "mappings"
    shutil.copytree(config.mappings.dir, folder)
    path = folder / "ihe-orm-o01.yaml"
    path.write_text(path.read_text().replace("Modality: {from: OBR-24, required: true}",
                                             "Modality: {from: OBR-24, default: CT}"))
    return config.model_copy(update={"mappings": config.mappings.model_copy(
        update={"dir": folder})})
