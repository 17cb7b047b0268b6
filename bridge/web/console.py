"""The web console: server-rendered pages (Jinja2) over the same functions as the API.

Pages: dashboard (/), messages (/messages, /messages/{id}), worklist (/worklist,
/worklist/{key}), mapping playground (/playground). Forms that change state carry the
session's CSRF token (checked in auth.identify) and redirect after they run.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from bridge import users
from bridge.store import User
from bridge.users import Role
from bridge.web import auth, items, journal, status, translate

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["when"] = lambda ts: datetime.fromtimestamp(ts).strftime(
    "%Y-%m-%d %H:%M:%S") if ts else ""
templates.env.filters["url"] = lambda text: quote(str(text), safe="")
PAGE = 50


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    return templates.TemplateResponse(request, name, {
        "user": user, "csrf": getattr(request.state, "csrf", ""),
        "operator": bool(user and users.allowed(user, Role.operator)), **context},
        status_code=status_code)


class LoginNeeded(Exception):
    """No session: the app answers with a redirect to the login page."""


async def page_user(request: Request, role: Role = Role.viewer) -> User:
    user = await auth.identify(request)
    if user is None:
        raise LoginNeeded
    if not users.allowed(user, role):
        raise HTTPException(403, f"needs the {role.name} role")
    return user


async def login_needed(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/login", status_code=303)


def _flat(dataset: dict, prefix: str = "") -> list[tuple[str, str]]:
    """An item's attributes as (path, value) rows, sequences item by item."""
    rows = []
    for keyword, value in dataset.items():
        if isinstance(value, list):
            for i, sub in enumerate(value, 1):
                rows += _flat(sub, f"{prefix}{keyword}[{i}].")
        else:
            rows.append((prefix + keyword, str(value)))
    return rows


@router.get("/")
async def dashboard(request: Request) -> Response:
    await page_user(request)
    bridge = request.app.state.bridge
    now = time.time()
    request.app.state.sampler.sample()  # the current minute counts up to now
    per_minute = await bridge.store.run(bridge.store.store.journal_per_minute, now - 3600)
    minutes: dict[int, dict[str, int]] = {}
    for minute, code, count in per_minute:
        minutes.setdefault(minute, {})[code] = count
    first = int(now // 60) - 59
    chart = [(m * 60, minutes.get(m, {})) for m in range(first, first + 60)]
    peak = max([sum(c.values()) for _, c in chart] + [1])
    sampled = {int(at // 60): n for at, n in request.app.state.sampler.per_minute()}
    queries = [(m * 60, sampled.get(m, 0)) for m in range(first, first + 60)]
    return render(request, "dashboard.html", page="dashboard",
                  state=await status.status_of(request), chart=chart, peak=peak,
                  queries=queries, query_peak=max([q for _, q in queries] + [1]),
                  cfind_total=int(request.app.state.sampler.cfind_total()))


@router.get("/messages")
async def messages(request: Request) -> Response:
    await page_user(request)
    q = request.query_params
    try:
        since = datetime.fromisoformat(q["since"]) if q.get("since") else None
        until = datetime.fromisoformat(q["until"]) if q.get("until") else None
        offset = max(int(q.get("offset") or 0), 0)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    f = journal.journal_filter(q.get("status"), q.get("sender"), q.get("message_type"),
                               q.get("control_id"), q.get("patient_id"), q.get("accession"),
                               since, until, q.get("text"))
    found = await journal.search(request, f, PAGE, offset)
    return render(request, "messages.html", page="messages", found=found, q=q,
                  statuses=["", "failed", "processed", "replayed", "duplicate", "received",
                            "interrupted"], query=_without_offset(request))


def _without_offset(request: Request) -> str:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in request.query_params.multi_items()
                    if k != "offset" and v)


@router.get("/messages/{journal_id}")
async def message(request: Request, journal_id: int) -> Response:
    await page_user(request)
    entry = await journal.detail(request, journal_id)
    return render(request, "message.html", page="messages", entry=entry,
                  replayed=request.query_params.get("replayed"))


@router.post("/messages/{journal_id}/replay")
async def replay(request: Request, journal_id: int) -> Response:
    user = await page_user(request, Role.operator)
    result = (await journal.replay(request, [journal_id], user))[0]
    return RedirectResponse(f"/messages/{journal_id}?replayed={result.ack_code}",
                            status_code=303)


@router.get("/worklist")
async def worklist(request: Request) -> Response:
    await page_user(request)
    q = request.query_params

    def day(name: str) -> str | None:
        return q[name].replace("-", "") if q.get(name) else None

    f = items.ItemFilter(q.get("status") or None, q.get("modality") or None,
                         q.get("station") or None, day("date_from"), day("date_to"),
                         q.get("patient_id") or None, q.get("accession") or None,
                         q.get("text") or None, visible_only=q.get("all") != "on")
    offset = max(int(q.get("offset") or 0), 0) if (q.get("offset") or "0").isdigit() else 0
    found = await items.search(request, f, PAGE, offset)
    return render(request, "worklist.html", page="worklist", found=found, q=q,
                  query=_without_offset(request), manual=MANUAL_TOP + MANUAL_STEP)


@router.get("/worklist/{key:path}")
async def item(request: Request, key: str) -> Response:
    await page_user(request)
    detail = await items.detail(request, key)
    return render(request, "item.html", page="worklist", item=detail,
                  rows=_flat(detail.dataset))


@router.post("/worklist-delete")
async def delete(request: Request) -> Response:
    user = await page_user(request, Role.operator)
    key = str((await request.form()).get("key", ""))
    await items.delete(request, key, user)
    return RedirectResponse(f"/worklist/{quote(key, safe='')}", status_code=303)


MANUAL_TOP = ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
              "RequestedProcedureID", "RequestedProcedureDescription"]
MANUAL_STEP = ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
               "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
               "ScheduledProcedureStepDescription"]


@router.post("/worklist-new")
async def new_item(request: Request) -> Response:
    """A manual item for RIS downtime, from the worklist page's form (operator)."""
    user = await page_user(request, Role.operator)
    form = await request.form()

    def value(name: str) -> str:
        text = str(form.get(name, "")).strip()
        return text.replace("-", "").replace(":", "") if name.endswith(("Date", "Time")) \
            else text

    dataset: dict = {k: value(k) for k in MANUAL_TOP if value(k)}
    dataset["ScheduledProcedureStepSequence"] = [{k: value(k) for k in MANUAL_STEP
                                                  if value(k)}]
    key = await items.create(request, dataset, user)
    return RedirectResponse(f"/worklist/{quote(key, safe='')}", status_code=303)


@router.get("/playground")
@router.post("/playground")
async def playground(request: Request) -> Response:
    await page_user(request)
    bridge = request.app.state.bridge
    text, profile, mapping, mapping_file, result = "", "", "", "playground.yaml", None
    if request.method == "POST":
        form = await request.form()
        text = str(form.get("message", ""))
        profile = str(form.get("profile", ""))
        mapping = str(form.get("mapping", ""))
        mapping_file = str(form.get("mapping_file", "")) or "playground.yaml"
        raw = text.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")
        result = translate.run(bridge, raw, profile or None, mapping or None, mapping_file)
    elif request.query_params.get("journal", "").isdigit():
        entry = await bridge.store.run(bridge.store.store.journal_entry,
                                       int(request.query_params["journal"]))
        if entry is not None:
            text = entry.raw.decode("latin-1").replace("\r", "\n")
            result = translate.run(bridge, entry.raw)
    profiles = {p.name: str(p.file) for p in bridge.profiles}
    if request.query_params.get("edit") in profiles:
        profile = request.query_params["edit"]
        path = Path(profiles[profile])
        mapping, mapping_file = path.read_text(encoding="utf-8"), path.name
    return render(request, "playground.html", page="playground", text=text,
                  profile=profile, profiles=profiles, mapping=mapping,
                  mapping_file=mapping_file, result=result,
                  items_json=json.dumps(result.items, indent=2, ensure_ascii=False)
                  if result else "")
