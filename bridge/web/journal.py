"""`/api/journal`: every message received, filtered; one message in full; replay."""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from bridge import operations as ops
from bridge.store import JournalEntry, JournalFilter, User
from bridge.web import translate
from bridge.web.auth import operator, viewer

router = APIRouter(prefix="/api/journal", tags=["journal"])
audit = logging.getLogger("bridge.audit")
MAX_REPLAY = 10_000


class EntrySummary(BaseModel):
    id: int
    received_at: float
    peer: str
    sender: str | None
    control_id: str | None
    message_type: str | None
    profile: str | None
    status: str
    ack_code: str | None
    error: str | None
    replay_count: int


class EntryPage(BaseModel):
    total: int
    offset: int
    limit: int
    entries: list[EntrySummary]


class EntryDetail(EntrySummary):
    raw: str  # the bytes, shown as Latin-1
    segments: list[list[str]]  # decoded, by segment and field
    ack: str | None
    trace: translate.Translation  # the mapping as it is now, on this message
    items: list[str]  # keys of the items this message changed


class ReplayResult(BaseModel):
    id: int
    ack_code: str
    error: str | None


def summary(e: JournalEntry) -> EntrySummary:
    return EntrySummary(id=e.id, received_at=e.received_at, peer=e.peer, sender=e.sender,
                        control_id=e.control_id, message_type=e.message_type,
                        profile=e.profile, status=e.status, ack_code=e.ack_code,
                        error=e.error, replay_count=e.replay_count)


def journal_filter(status: str | None = None, sender: str | None = None,
                   message_type: str | None = None, control_id: str | None = None,
                   patient_id: str | None = None, accession: str | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   text: str | None = None) -> JournalFilter:
    return JournalFilter(status or None, sender or None, message_type or None,
                         control_id or None, patient_id or None, accession or None,
                         since.timestamp() if since else None,
                         until.timestamp() if until else None, text or None)


async def search(request: Request, f: JournalFilter, limit: int, offset: int) -> EntryPage:
    store = request.app.state.bridge.store
    found, total = await store.run(store.store.journal_search, f, limit, offset)
    return EntryPage(total=total, offset=offset, limit=limit,
                     entries=[summary(e) for e in found])


@router.get("")
async def list_entries(request: Request, status: str | None = None,
                       sender: str | None = None, message_type: str | None = None,
                       control_id: str | None = None, patient_id: str | None = None,
                       accession: str | None = None, since: datetime | None = None,
                       until: datetime | None = None, text: str | None = None,
                       limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
                       user: User = viewer) -> EntryPage:
    """Newest first. `status`: received, processed, failed, duplicate, replayed,
    interrupted. Patient ID, accession and text are looked for in the raw message."""
    f = journal_filter(status, sender, message_type, control_id, patient_id, accession,
                       since, until, text)
    return await search(request, f, limit, offset)


async def detail(request: Request, journal_id: int) -> EntryDetail:
    bridge = request.app.state.bridge
    store = bridge.store
    entry = await store.run(store.store.journal_entry, journal_id)
    if entry is None:
        raise HTTPException(404, "no such journal entry")
    changed = await store.run(store.store.items_of_journal, journal_id)
    return EntryDetail(**summary(entry).model_dump(), raw=entry.raw.decode("latin-1"),
                       segments=translate.segments(entry.raw, bridge.config),
                       ack=entry.ack.decode("latin-1") if entry.ack else None,
                       trace=translate.run(bridge, entry.raw), items=changed)


@router.get("/{journal_id}")
async def get_entry(request: Request, journal_id: int, user: User = viewer) -> EntryDetail:
    return await detail(request, journal_id)


async def replay(request: Request, ids: list[int], user: User) -> list[ReplayResult]:
    bridge = request.app.state.bridge
    results = await ops.replay_with(bridge.processor, bridge.store, ids)
    for journal_id, code, _ in results:
        audit.info("user %s replayed journal %d: %s", user.name, journal_id, code)
    return [ReplayResult(id=i, ack_code=c, error=e) for i, c, e in results]


@router.post("/{journal_id}/replay")
async def replay_one(request: Request, journal_id: int, user: User = operator
                     ) -> ReplayResult:
    """Process the message again with the mappings in force now."""
    store = request.app.state.bridge.store
    if await store.run(store.store.journal_entry, journal_id) is None:
        raise HTTPException(404, "no such journal entry")
    return (await replay(request, [journal_id], user))[0]


@router.post("/replay")
async def replay_set(request: Request, status: str | None = "failed",
                     sender: str | None = None, message_type: str | None = None,
                     control_id: str | None = None, patient_id: str | None = None,
                     accession: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, text: str | None = None,
                     user: User = operator) -> list[ReplayResult]:
    """Replay every entry the filters select (by default: the failed ones), oldest first."""
    f = journal_filter(status, sender, message_type, control_id, patient_id, accession,
                       since, until, text)
    store = request.app.state.bridge.store
    found, total = await store.run(store.store.journal_search, f, MAX_REPLAY, 0)
    if total > MAX_REPLAY:
        raise HTTPException(422, f"{total} entries: narrow the filters (at most "
                                 f"{MAX_REPLAY} per request)")
    return await replay(request, sorted(e.id for e in found), user)
