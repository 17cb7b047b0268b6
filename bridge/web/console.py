"""The web console: server-rendered pages (Jinja2) over the same functions as the API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def render(request: Request, name: str, **context) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    return templates.TemplateResponse(request, name, {
        "user": user, "csrf": getattr(request.state, "csrf", ""), **context})


@router.get("/")
async def dashboard(request: Request) -> Response:
    return render(request, "login.html", error="", no_users=False)
