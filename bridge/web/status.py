"""`/metrics` (Prometheus) and `/healthz`, unauthenticated as before; `GET /api/status`."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bridge.store import User
from bridge.web.auth import viewer

router = APIRouter()


async def _refresh(request: Request) -> dict:
    bridge = request.app.state.bridge
    state = await bridge.health()
    for sink, depth in state.get("outbox", {}).items():
        bridge.metrics.outbox_depth.labels(sink).set(depth)
    return state


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    await _refresh(request)
    return Response(request.app.state.bridge.metrics.exposition(),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", include_in_schema=False)
async def healthz(request: Request) -> JSONResponse:
    try:
        state = await asyncio.wait_for(_refresh(request), 10)
    except Exception as exc:
        return JSONResponse({"status": "failing", "error": type(exc).__name__}, 503)
    # A load balancer's health check: 503 while this instance cannot take traffic (its
    # database unreachable, the SCP index or the listener not up yet).
    ready = bool(state.get("ready", True))
    return JSONResponse({"status": "ok" if ready else "not ready", **state},
                        200 if ready else 503)


async def status_of(request: Request) -> dict:
    """Listener, SCP, sinks, store and mappings, as the dashboard and the API show them."""
    bridge = request.app.state.bridge
    store = bridge.store
    sinks = await store.run(store.store.outbox_summary)
    return {
        "listener": {"host": bridge.config.mllp.host, "port": bridge.mllp_port,
                     "connections": len(bridge.mllp.connections)},
        "scp": {"enabled": bridge.scp is not None, "port": bridge.scp_port,
                "ae_title": bridge.config.scp.ae_title,
                "worklist_items": len(request.app.state.scp.index)},
        "sinks": sinks,
        "store": {"path": store.store.url_for_log(), "instance": bridge.instance,
                  "failed_last_hour": (await store.run(
                      store.store.journal_search, _failed_since(time.time() - 3600), 1, 0))[1]},
        "mappings": {"dir": str(bridge.config.mappings.dir),
                     "profiles": [{"name": p.name, "file": str(p.file)}
                                  for p in bridge.profiles],
                     "load_error": bridge.mapping_error},
    }


def _failed_since(since: float):
    from bridge.store import JournalFilter

    return JournalFilter(status="failed", since=since)


@router.get("/api/status", tags=["status"])
async def api_status(request: Request, user: User = viewer) -> dict:
    return await status_of(request)
