"""`/api/items`: the worklist items as the store keeps them, with their history."""

from __future__ import annotations

import logging
from datetime import date

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from pydicom.uid import generate_uid

from bridge import operations as ops
from bridge.store import ItemFilter, StoredItem, User
from bridge.web.auth import operator, viewer

router = APIRouter(prefix="/api/items", tags=["items"])
audit = logging.getLogger("bridge.audit")


class ItemSummary(BaseModel):
    key: str
    order_key: str
    status: str
    visible: bool
    final: bool
    patient_id: str
    updated_at: float
    dataset: dict  # DICOM keyword -> value, sequences as lists (as stored)


class ItemPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ItemSummary]


class ItemDetail(ItemSummary):
    history: list[dict]  # {at, status, visible, journal_id}: journal_id made the change
    sinks: list[dict]  # per sink: state, attempts, last error
    mpps: list[str]  # MPPS instances that performed it


def summary(item: StoredItem) -> ItemSummary:
    return ItemSummary(key=item.item_key, order_key=item.order_key, status=item.status,
                       visible=item.visible, final=item.final, patient_id=item.patient_id,
                       updated_at=item.updated_at, dataset=item.dataset)


def _day(value: date | None) -> str | None:
    return value.strftime("%Y%m%d") if value else None


def item_filter(status: str | None = None, modality: str | None = None,
                station: str | None = None, date_from: date | None = None,
                date_to: date | None = None, patient_id: str | None = None,
                accession: str | None = None, text: str | None = None,
                visible_only: bool = False) -> ItemFilter:
    return ItemFilter(status or None, modality or None, station or None, _day(date_from),
                      _day(date_to), patient_id or None, accession or None, text or None,
                      visible_only)


async def search(request: Request, f: ItemFilter, limit: int, offset: int) -> ItemPage:
    store = request.app.state.bridge.store
    found, total = await store.run(store.store.items_search, f, limit, offset)
    return ItemPage(total=total, offset=offset, limit=limit, items=[summary(i) for i in found])


@router.get("")
async def list_items(request: Request, status: str | None = None,
                     modality: str | None = None, station: str | None = None,
                     date_from: date | None = None, date_to: date | None = None,
                     patient_id: str | None = None, accession: str | None = None,
                     text: str | None = None, visible_only: bool = False,
                     limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
                     user: User = viewer) -> ItemPage:
    """Items by the first scheduled step's start; filters combine (AND)."""
    f = item_filter(status, modality, station, date_from, date_to, patient_id, accession,
                    text, visible_only)
    return await search(request, f, limit, offset)


async def detail(request: Request, key: str) -> ItemDetail:
    store = request.app.state.bridge.store
    item = await store.run(store.store.item, key)
    if item is None:
        raise HTTPException(404, "no such item")
    history = await store.run(store.store.item_history, key)
    sinks = await store.run(store.store.outbox_state, key)
    mpps = await store.run(store.store.mpps_of_item, key)
    return ItemDetail(**summary(item).model_dump(), history=history,
                      sinks=[vars(s) for s in sinks], mpps=mpps)


@router.get("/{key:path}")
async def get_item(request: Request, key: str, user: User = viewer) -> ItemDetail:
    return await detail(request, key)


async def delete(request: Request, key: str, user: User) -> None:
    bridge = request.app.state.bridge
    write = await bridge.store.run(ops.worklist_delete, bridge.store.store, key)
    if write is None:
        raise HTTPException(404, "no such item")
    bridge.notify_committed([write])
    audit.info("user %s deleted item %s", user.name, key)


@router.delete("/{key:path}")
async def delete_item(request: Request, key: str, user: User = operator) -> dict:
    """Take the item off the worklist and out of the sinks (DISCONTINUED, final)."""
    await delete(request, key, user)
    return {"deleted": key}


async def create(request: Request, dataset: dict, user: User) -> str:
    if not isinstance(dataset.get("ScheduledProcedureStepSequence"), list) or \
            not dataset.get("PatientID"):
        raise HTTPException(422, "an item needs PatientID and a "
                                 "ScheduledProcedureStepSequence (a list of steps)")
    dataset.setdefault("StudyInstanceUID", generate_uid())
    bridge = request.app.state.bridge
    write = await bridge.store.run(ops.manual_item, bridge.store.store, dataset)
    bridge.notify_committed([write])
    audit.info("user %s created manual item %s", user.name, write.item_key)
    return write.item_key


@router.post("", status_code=201)
async def create_item(request: Request, dataset: dict, user: User = operator) -> dict:
    """A manual item for RIS downtime, in the item's own JSON (keyword -> value, sequences
    as lists); it gets a generated key and is SCHEDULED."""
    return {"key": await create(request, dataset, user)}
