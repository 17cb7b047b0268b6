"""Who is asking: console sessions (cookie) and HTTP basic authentication for the API;
roles, CSRF, limits on failed logins; user management for admins (`/api/users`).

Sessions live in memory: a restart logs everyone out, which is the safe direction. The
user and role are read from the store at every request, so a deleted user or a changed
role takes effect at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from bridge import users
from bridge.config import HttpConfig
from bridge.store import User
from bridge.users import Role

log = logging.getLogger(__name__)
audit = logging.getLogger("bridge.audit")
router = APIRouter()

COOKIE = "bridge_session"
CSRF_HEADER = "X-CSRF-Token"
FAILURE_WINDOW = 15 * 60.0  # seconds over which failed logins count
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_TRACKED = 10_000  # (name, address) pairs with recent failures kept in memory


@dataclass
class Session:
    user: str
    csrf: str
    expires_at: float


@dataclass
class Sessions:
    config: HttpConfig
    by_token: dict[str, Session] = field(default_factory=dict)
    failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def create(self, user: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(24),
                          time.time() + self.config.session_minutes * 60)
        self.by_token[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        session = self.by_token.get(token or "")
        if session is not None and session.expires_at <= time.time():
            del self.by_token[token]  # type: ignore[arg-type]
            return None
        return session

    def drop(self, token: str | None) -> None:
        self.by_token.pop(token or "", None)

    def blocked(self, name: str, address: str) -> bool:
        recent = self.failures.get((name, address))
        now = time.time()
        while recent and recent[0] < now - FAILURE_WINDOW:
            recent.popleft()
        return bool(recent) and len(recent) >= self.config.max_failed_logins

    def failed(self, name: str, address: str) -> None:
        if len(self.failures) > MAX_TRACKED:  # many made-up names: forget the stale ones
            for key in [k for k, v in self.failures.items()
                        if not v or v[-1] < time.time() - FAILURE_WINDOW]:
                del self.failures[key]
        self.failures.setdefault((name, address), deque()).append(time.time())

    def succeeded(self, name: str, address: str) -> None:
        self.failures.pop((name, address), None)


def _sessions(request: Request) -> Sessions:
    return request.app.state.sessions


def _address(request: Request) -> str:
    return request.client.host if request.client else "-"


async def check_password(request: Request, name: str, password: str) -> User | None:
    """The user, or None; raises 429 while the name has too many recent failures from
    this address. The hash is checked off the event loop (argon2 takes tens of ms)."""
    sessions, address = _sessions(request), _address(request)
    if sessions.blocked(name, address):
        raise HTTPException(429, "too many failed logins: wait 15 minutes")
    store = request.app.state.bridge.store
    user = await store.run(store.store.user, name) if users.NAME.match(name) else None
    ok = await asyncio.to_thread(users.verify, user, password)
    if not ok:
        sessions.failed(name, address)
        log.warning("failed login for %r from %s", name, address)
        return None
    sessions.succeeded(name, address)
    return user


async def _csrf_ok(request: Request, session: Session) -> bool:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = str((await request.form()).get("csrf", ""))
    return hmac.compare_digest(sent or "", session.csrf)


async def identify(request: Request) -> User | None:
    """The user of a request (session cookie or basic auth), or None. A session's
    state-changing request without its CSRF token is refused (403)."""
    store = request.app.state.bridge.store
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            name, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = await check_password(request, name, password)
    else:
        session = _sessions(request).get(request.cookies.get(COOKIE))
        if session is None:
            return None
        user = await store.run(store.store.user, session.user)
        if user is not None and request.method not in SAFE_METHODS and \
                not await _csrf_ok(request, session):
            raise HTTPException(403, "missing or wrong CSRF token")
        request.state.csrf = session.csrf
    request.state.user = user
    return user


def need(role: Role):
    """A dependency: the request's user, who must have at least `role`."""

    async def dependency(request: Request) -> User:
        user = await identify(request)
        if user is None:
            raise HTTPException(401, "log in, or use HTTP basic authentication",
                                headers={"WWW-Authenticate": 'Basic realm="bridge"'})
        if not users.allowed(user, role):
            raise HTTPException(403, f"needs the {role.name} role")
        return user

    return Depends(dependency)


viewer = need(Role.viewer)
operator = need(Role.operator)
admin = need(Role.admin)


# --- console login --------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_page(request: Request, error: str = "") -> Response:
    from bridge.web.console import render

    store = request.app.state.bridge.store
    no_users = not await store.run(store.store.users)
    return render(request, "login.html", error=error, no_users=no_users)


def _same_origin(request: Request) -> bool:
    """A browser's form post from another site (login CSRF) carries that site's Origin."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    if not _same_origin(request):
        raise HTTPException(403, "login from another site refused")
    form = await request.form()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    try:
        user = await check_password(request, name, password)
    except HTTPException:
        return RedirectResponse("/login?error=blocked", status_code=303)
    if user is None:
        return RedirectResponse("/login?error=wrong", status_code=303)
    token, _ = _sessions(request).create(user.name)
    response = RedirectResponse("/", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, token, max_age=int(request.app.state.bridge.config.http
                                                    .session_minutes * 60),
                        httponly=True, samesite="strict", secure=secure)
    log.info("login: %s", user.name)
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    await identify(request)  # checks the CSRF token
    _sessions(request).drop(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# --- users (admin) --------------------------------------------------------------------


class UserIn(BaseModel):
    name: str
    role: str = "viewer"
    password: str


class UserOut(BaseModel):
    name: str
    role: str


@router.get("/api/users", tags=["users"])
async def list_users(request: Request, user: User = admin) -> list[UserOut]:
    store = request.app.state.bridge.store
    return [UserOut(name=u.name, role=u.role) for u in await store.run(store.store.users)]


@router.post("/api/users", status_code=201, tags=["users"])
async def add_user(request: Request, body: UserIn, user: User = admin) -> UserOut:
    store = request.app.state.bridge.store
    try:
        await store.run(users.add, store.store, body.name, body.role, body.password)
    except users.UserError as exc:
        raise HTTPException(422, str(exc)) from exc
    audit.info("user %s added user %s (%s)", user.name, body.name, body.role)
    return UserOut(name=body.name, role=body.role)


@router.delete("/api/users/{name}", tags=["users"])
async def delete_user(request: Request, name: str, user: User = admin) -> dict:
    store = request.app.state.bridge.store
    if not await store.run(users.delete, store.store, name):
        raise HTTPException(404, "no such user")
    audit.info("user %s deleted user %s", user.name, name)
    return {"deleted": name}
