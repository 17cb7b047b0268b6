"""Operator commands on the store: `journal list|show|replay`, `worklist list|show|delete`.

They open the store directly, so they work whether the bridge runs or not (SQLite WAL lets
both write; a running bridge picks the changes up within seconds, see housekeeping.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from bridge.config import Config
from bridge.lifecycle import Status
from bridge.mapping.loader import load_profiles
from bridge.processor import Processor
from bridge.store import AsyncStore, ItemWrite, JournalEntry, Store, store_url
from bridge.store import open_store as open_url


@contextmanager
def open_store(config: Config) -> Iterator[Store]:
    if config.store.url is None and not config.store_path.exists():
        raise FileNotFoundError(f"no store at {config.store_path} (has the bridge run yet?)")
    store = open_url(store_url(config), sink_names(config))
    try:
        yield store
    finally:
        store.close()


def sink_names(config: Config) -> list[str]:
    names = []
    # On a shared database each instance's folder follows the store by the change
    # notifications (README: High availability): a CLI write queues nothing for it.
    if config.sinks.folder.enabled and not config.store.url:
        names.append("folder")
    if config.sinks.orthanc.enabled:
        names.append("orthanc")
    return names


def when_text(ts: float | None) -> str:
    """A stored time as the CLI's tables show it ("-" when none)."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def parse_since(text: str) -> float:
    """`--since`: an ISO date or date-time, or a duration such as 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    return datetime.fromisoformat(text).timestamp()


def journal_lines(entries: list[JournalEntry]) -> list[str]:
    lines = [f"{'ID':>7}  {'received':19}  {'status':9}  {'ack':3}  {'type':9}  "
             f"{'control id':20}  error"]
    for e in entries:
        lines.append(f"{e.id:>7}  {when_text(e.received_at)}  {e.status:9}  {e.ack_code or '':3}  "
                     f"{e.message_type or '':9}  {(e.control_id or '')[:20]:20}  "
                     f"{(e.error or '')[:80]}")
    return lines


def journal_json(entries: list[JournalEntry]) -> str:
    """`journal list --json`: the entries' metadata (not the raw message; `show` has it)."""
    return json.dumps([{"id": e.id, "received_at": datetime.fromtimestamp(e.received_at)
                        .astimezone().isoformat(timespec="seconds"), "peer": e.peer,
                        "sender": e.sender, "control_id": e.control_id,
                        "message_type": e.message_type, "profile": e.profile,
                        "status": e.status, "ack_code": e.ack_code, "error": e.error}
                       for e in entries], indent=2, ensure_ascii=False)


def journal_show(entry: JournalEntry) -> str:
    raw = entry.raw.decode("latin-1").replace("\r", "\n").rstrip("\n")
    ack = (entry.ack or b"").decode("latin-1").replace("\r", "\n").rstrip("\n")
    return "\n".join([
        f"journal {entry.id}: {entry.status}, received {when_text(entry.received_at)} "
        f"from {entry.peer}",
        f"sender {entry.sender or '-'}, control id {entry.control_id or '-'}, "
        f"type {entry.message_type or '-'}, profile {entry.profile or '-'}",
        f"error: {entry.error or '-'}",
        *([f"replayed {entry.replay_count} time(s), last {when_text(entry.replayed_at)}"]
          if entry.replay_count and entry.replayed_at else []),
        "--- message (raw bytes, shown as Latin-1) ---", raw,
        "--- ACK sent ---", ack or "(none)",
    ])


async def replay(config: Config, ids: list[int]) -> list[tuple[int, str, str | None]]:
    """Process journaled messages again, after a mapping fix. Returns (id, ACK code, error).

    A failed (or interrupted) entry is processed again in place: it keeps its ID, gets the
    new ACK and error, a replay count and time, and becomes `replayed` once accepted, so
    the failed list only shrinks. Any other entry is processed as a new message.
    """
    store = AsyncStore(open_url(store_url(config), sink_names(config)))
    try:
        processor = Processor(config, load_profiles(config.mappings.dir), store)
        return await replay_with(processor, store, ids)
    finally:
        store.close()


async def replay_with(processor: Processor, store: AsyncStore, ids: list[int]
                      ) -> list[tuple[int, str, str | None]]:
    """`replay` with a given processor and store: the running bridge's, from the HTTP API,
    so that its SCP index and sinks follow at once."""
    results = []
    for journal_id in ids:
        entry = await store.run(store.store.journal_entry, journal_id)
        if entry is None:
            results.append((journal_id, "--", "no such journal entry"))
            continue
        peer = f"replay of {journal_id}"
        if entry.status in ("failed", "interrupted"):
            outcome = await processor.handle(entry.raw, peer, journal_id)
            await store.run(store.store.journal_replayed, journal_id)
        else:
            outcome = await processor.handle(entry.raw, peer)
        results.append((journal_id, outcome.code, outcome.error))
    return results


def run_replay(config: Config, ids: list[int]) -> list[tuple[int, str, str | None]]:
    return asyncio.run(replay(config, ids))


def worklist_lines(store: Store, show_all: bool) -> list[str]:
    lines = [f"{'status':12}  {'shown':5}  {'patient':14}  {'accession':16}  {'mod':3}  "
             f"{'start':14}  item key"]
    for item in store.items(visible_only=not show_all):
        ds = item.dataset
        step = (ds.get("ScheduledProcedureStepSequence") or [{}])[0]
        start = f"{step.get('ScheduledProcedureStepStartDate', '')}" \
                f"{step.get('ScheduledProcedureStepStartTime', '')}"
        lines.append(f"{item.status:12}  {'yes' if item.visible else 'no':5}  "
                     f"{item.patient_id[:14]:14}  {str(ds.get('AccessionNumber', ''))[:16]:16}  "
                     f"{step.get('Modality', '')!s:3}  {start[:14]:14}  {item.item_key}")
    return lines


def worklist_json(store: Store, show_all: bool) -> str:
    """`worklist list --json`: each item with its status and dataset (DICOM keywords)."""
    return json.dumps([{"item_key": i.item_key, "order_key": i.order_key, "status": i.status,
                        "visible": i.visible, "patient_id": i.patient_id,
                        "updated_at": datetime.fromtimestamp(i.updated_at).astimezone()
                        .isoformat(timespec="seconds"), "dataset": i.dataset}
                       for i in store.items(visible_only=not show_all)],
                      indent=2, ensure_ascii=False)


def worklist_show(store: Store, item_key: str) -> str | None:
    item = store.item(item_key)
    if item is None:
        return None
    delivery = store.outbox_state(item_key)
    lines = [f"item {item.item_key}", f"order {item.order_key}",
             f"status {item.status} ({'on' if item.visible else 'off'} the worklist), "
             f"updated {when_text(item.updated_at)}"]
    for d in delivery:
        if d.removed_by_sink:
            state = "removed by the sink itself (not recreated)"
        elif d.state == "dead":
            state = "dead letter (no more retries until the next change or a resync)"
        else:
            state = {"done": "delivered", "pending": "pending"}.get(d.state, d.state)
        text = f"sink {d.sink}: {state}"
        if d.attempts:
            text += f", {d.attempts} failed attempts"
        if d.last_error and d.state != "done":
            text += f", last error: {d.last_error}"
        if d.remote_id:
            text += f", id {d.remote_id}"
        lines.append(text)
    lines.append(json.dumps(item.dataset, indent=2, ensure_ascii=False))
    return "\n".join(lines)


def worklist_delete(store: Store, item_key: str) -> ItemWrite | None:
    """Take an item off the worklist and out of the sinks (status DISCONTINUED, final: a
    resend of its order does not bring it back). Returns the write, None for no such item."""
    item = store.item(item_key)
    if item is None:
        return None
    write = ItemWrite(item.item_key, item.order_key, Status.DISCONTINUED.value, False,
                      item.dataset, final=True)
    store.write_items([write])
    return write


def manual_item(store: Store, dataset: dict) -> ItemWrite:
    """A worklist item entered by hand (RIS downtime): SCHEDULED, on the worklist, under a
    generated key of its own (its order is itself: no message will ever change it)."""
    key = f"manual^{uuid.uuid4().hex}"
    write = ItemWrite(key, key, Status.SCHEDULED.value, True, dataset)
    store.write_items([write])
    return write
