"""keyseed.console.dashboard
~~~~~~~~~~~~~~~~~~~~~~~~~~~~

The web dashboard, served at ``/`` on the server's admin listener: a device table that
refreshes itself (state, epoch, key age, last exchange and its result, last confirmation,
online, the oven's status), buttons for register, rekey, confirm, approve, revoke and cook,
and the audit log.

It is meant to be safe on a LAN (DESIGN.md section 7):

* **Login with the admin token, kept out of URLs.** ``POST /login`` takes the token from a
  form body and checks it with the same constant-time hash comparison as the API. The browser
  then holds only a random session ID in an ``HttpOnly; SameSite=Strict`` cookie (``Secure``
  and ``__Host-`` prefixed over HTTPS); sessions live in this process (idle and absolute
  expiry, a cap on their number), so a restart logs everyone out.
* **CSRF.** Every ``/ui/api`` request (reads too, against cross-site script inclusion) and
  ``POST /logout`` must carry the session's CSRF token (``X-CSRF-Token``, from a ``<meta>`` tag
  of the page) and, when the browser says where it comes from (``Origin``,
  ``Sec-Fetch-Site``), come from this origin. ``POST /login`` checks the origin too.
* **Escaped output and a strict CSP.** Pages hold no data but the escaped CSRF token and
  version; the script fills them with ``textContent`` only. Every response carries
  ``default-src 'none'``-based CSP (no inline script or style, nothing from other origins),
  ``nosniff``, ``no-referrer`` and ``no-store``.

The ``/ui/api`` endpoints call the admin API's own route functions
(:mod:`keyseed.server.admin_api`), so the dashboard and ``/v1/admin`` validate, audit and act
the same way. The bearer-token API is unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from string import Template
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response

from .. import __version__
from ..apps.microwave import RecipeService
from ..server import admin_api, pairs_api
from ..server.admin_api import (
    DEVICE_ID_PATTERN,
    ApiError,
    ApproveRequest,
    CookRequest,
    DeviceView,
    ProfileRequest,
    RegisterRequest,
)
from ..server.apps import app_name
from ..server.runtime import Runtime
from ..storage.repository import AuditRow, Store

log = logging.getLogger("keyseed.console.dashboard")

#: A session ends after this long without a request...
SESSION_IDLE_S = 30 * 60.0
#: ...and this long after login, whatever happens.
SESSION_MAX_S = 12 * 3600.0
#: Live sessions at most; a new login evicts the oldest.
MAX_SESSIONS = 64
#: The login form is one field; anything bigger is refused unread.
MAX_LOGIN_BODY = 4096
#: How often the page refreshes the table (milliseconds; the script reads it from the page).
POLL_MS = 2000
#: Audit rows the page shows.
AUDIT_ROWS = 50

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
CSRF_HEADER = "X-CSRF-Token"
COOKIE = "keyseed_session"
#: The cookie's name over HTTPS: the prefix makes the browser insist on Secure, Path=/ and no
#: Domain, so a sibling host cannot plant or shadow it.
COOKIE_HTTPS = "__Host-keyseed_session"

_HERE = Path(__file__).parent
_STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)

#: Audit kinds that end (or advance) a key exchange, and the result each one means.
EXCHANGE_RESULTS: Mapping[str, str] = {
    "204_ok": "pending",
    "enrolled": "ok",
    "rekeyed": "ok",
    "204_ng": "failed",
    "exchange_cancelled": "cancelled",
    "exchange_expired": "expired",
}
CONFIRM_KINDS = frozenset({"confirmed", "confirm_failed"})


class _Denied(Exception):
    """A dashboard request refused before it reached the admin functions."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


# -- sessions -------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """One logged-in browser. Its repr shows no secret."""

    csrf: str
    created: float
    seen: float

    def __repr__(self) -> str:
        return f"Session(created={self.created:.0f}, seen={self.seen:.0f})"


class SessionStore:
    """Server-side sessions of this process, by the SHA-256 of their ID (the ID itself is
    held only by the browser)."""

    def __init__(
        self,
        *,
        idle_s: float = SESSION_IDLE_S,
        max_s: float = SESSION_MAX_S,
        cap: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self.cap = cap
        self._clock = clock
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()

    def _expired(self, s: Session, now: float) -> bool:
        return now - s.seen > self.idle_s or now - s.created > self.max_s

    def create(self) -> tuple[str, Session]:
        """A new session: (its ID for the cookie, the session)."""
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]
        while len(self._sessions) >= self.cap:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
            del self._sessions[oldest]
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created=now, seen=now)
        self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this ID (its idle timer restarts), or None."""
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.seen = now
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(self._key(session_id), None)


# -- last exchange and confirmation, from the audit log ---------------------------------------


@dataclass(frozen=True, slots=True)
class _Seen:
    row_id: int
    at: float
    kind: str
    epoch: int
    cause: str | None
    detail: str


class Activity:
    """The newest key exchange and arrival confirmation of each device, read from the audit
    log: incrementally (the rows newer than the last refresh), and each device's own history
    once when it first shows up."""

    #: Rows per audit read.
    PAGE = 500
    #: Pages read per refresh before it falls back to per-device reads.
    MAX_PAGES = 4

    def __init__(self) -> None:
        self.exchange: dict[str, _Seen] = {}
        self.confirmation: dict[str, _Seen] = {}
        self._mark = 0
        self._seeded: set[str] = set()
        self._lock = asyncio.Lock()

    def _take(self, row: AuditRow) -> None:
        if row.kind in EXCHANGE_RESULTS:
            table = self.exchange
        elif row.kind in CONFIRM_KINDS:
            table = self.confirmation
        else:
            return
        old = table.get(row.device_id)
        if old is None or old.row_id < row.id:
            table[row.device_id] = _Seen(
                row_id=row.id,
                at=row.at,
                kind=row.kind,
                epoch=row.epoch,
                cause=admin_api.audit_view(row).cause,
                detail=row.detail,
            )

    async def refresh(self, store: Store, device_ids: Iterable[str]) -> None:
        async with self._lock:
            newest: int | None = None
            before: int | None = None
            caught_up = False
            for _ in range(self.MAX_PAGES):
                rows = await store.audit(limit=self.PAGE, before_id=before)
                if not rows:
                    caught_up = True
                    break
                if newest is None:
                    newest = rows[0].id
                for row in rows:
                    if row.id <= self._mark:
                        caught_up = True
                        break
                    self._take(row)
                if caught_up or len(rows) < self.PAGE:
                    caught_up = True
                    break
                before = rows[-1].id
            if not caught_up:
                # Too many rows since the last look: read each device's own history again.
                self._seeded.clear()
            if newest is not None:
                self._mark = max(self._mark, newest)
            for device_id in device_ids:
                if device_id not in self._seeded:
                    for row in await store.audit(device_id=device_id, limit=self.PAGE):
                        self._take(row)
                    self._seeded.add(device_id)


def _rtt_ms(detail: str) -> float | None:
    m = re.fullmatch(r"rtt_ms=([0-9.]+)", detail)
    return float(m.group(1)) if m else None


def _exchange_json(seen: _Seen | None, db_now: float) -> dict[str, Any] | None:
    if seen is None:
        return None
    return {
        "kind": seen.kind,
        "result": EXCHANGE_RESULTS[seen.kind],
        "cause": seen.cause,
        "epoch": seen.epoch,
        "age_s": round(max(0.0, db_now - seen.at), 1),
    }


def _confirmation_json(seen: _Seen | None, db_now: float) -> dict[str, Any] | None:
    if seen is None:
        return None
    ok = seen.kind == "confirmed"
    return {
        "ok": ok,
        "rtt_ms": _rtt_ms(seen.detail) if ok else None,
        "detail": "" if ok else seen.detail,
        "epoch": seen.epoch,
        "age_s": round(max(0.0, db_now - seen.at), 1),
    }


# -- responses ------------------------------------------------------------------------------


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _json_error(status: int, error: str, detail: Any) -> Response:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


class _DashboardRoute(APIRoute):
    """Every dashboard response, errors included, carries the security headers; errors are
    the admin API's JSON shape, and validation errors never echo the input (it may hold a
    setup code)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except _Denied as exc:
                response = _json_error(exc.status, exc.error, exc.detail)
            except ApiError as exc:
                response = _json_error(exc.status, exc.error, exc.detail)
            except RequestValidationError as exc:
                detail = [
                    {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
                ]
                response = _json_error(422, "validation_error", detail)
            except StarletteHTTPException as exc:
                response = _json_error(exc.status_code, "error", exc.detail)
            return _secure(response)

        return handle


def _load(folder: str, name: str) -> str:
    return (_HERE / folder / name).read_text(encoding="utf-8")


def _html(page: Template, status: int = 200, **values: str) -> Response:
    """A page with ``values`` HTML-escaped into its ``$name`` placeholders."""
    body = page.substitute({k: escape(v, quote=True) for k, v in values.items()})
    return Response(body, status_code=status, media_type="text/html; charset=utf-8")


# -- request checks -------------------------------------------------------------------------


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _cookie_name(request: Request) -> str:
    return COOKIE_HTTPS if _https(request) else COOKIE


def _same_origin(request: Request) -> bool:
    """Whether the browser says this request comes from the dashboard's own origin.

    ``Sec-Fetch-Site`` (set by the browser, never by a page's script) decides when present.
    ``Origin`` counts when it names an origin: under ``Referrer-Policy: no-referrer`` a
    browser sends ``Origin: null`` even on its own form posts. A request with neither (curl)
    is no evidence either way; the CSRF token still has to match.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    host = request.headers.get("host", "")
    return origin == f"{request.url.scheme}://{host}"


# -- the router -----------------------------------------------------------------------------


def dashboard_router(rt: Runtime) -> APIRouter:
    """The dashboard's routes, to be included in the admin app (they take ``/``)."""
    sessions = SessionStore()
    activity = Activity()
    login_page = Template(_load("templates", "login.html"))
    index_page = Template(_load("templates", "index.html"))
    static = {name: _load("static", name) for name in _STATIC_TYPES}
    router = APIRouter(route_class=_DashboardRoute, include_in_schema=False)

    def current(request: Request) -> tuple[str | None, Session | None]:
        sid = request.cookies.get(_cookie_name(request))
        return sid, sessions.get(sid)

    def authorised(request: Request) -> Session:
        """A live session, a matching CSRF token, the same origin."""
        _, session = current(request)
        if session is None:
            raise _Denied(401, "unauthorized", "not logged in, or the session expired")
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()) or not _same_origin(
            request
        ):
            raise _Denied(403, "forbidden", "missing or wrong CSRF token, or a foreign origin")
        return session

    def device_id_of(device_id: str) -> str:
        if not _DEVICE_ID.fullmatch(device_id):
            raise _Denied(422, "validation_error", "device ID must match [A-Za-z0-9._-]{1,64}")
        return device_id

    def recipes() -> list[dict[str, str]]:
        if not isinstance(rt.app, RecipeService):
            return []
        return [{"name": r.name, "title": r.title} for r in rt.app.recipes.values()]

    def page_login(status: int = 200, error: str = "") -> Response:
        return _html(login_page, status, version=__version__, error=error)

    # -- pages ------------------------------------------------------------------------------

    @router.get("/")
    async def index(request: Request) -> Response:
        _, session = current(request)
        if session is None:
            return page_login()
        return _html(
            index_page,
            version=__version__,
            csrf=session.csrf,
            poll_ms=str(POLL_MS),
            idle_min=f"{sessions.idle_s / 60:g}",
            max_h=f"{sessions.max_s / 3600:g}",
        )

    @router.get("/login")
    async def login_get() -> Response:
        # Never reads a token from a query string: a token in a URL ends up in history and
        # logs. The form posts it.
        return RedirectResponse("/", status_code=303)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            raise _Denied(403, "forbidden", "foreign origin")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return page_login(415, "The login form must be posted as a form.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return page_login(413, "The login form is too large.")
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        token = (fields.get("token") or [""])[0].strip()
        client = request.client.host if request.client else "-"
        if not token or not rt.secrets.check_token(token):
            log.warning("dashboard login refused from %s", client)
            return page_login(401, "Wrong admin token.")
        old_sid, _ = current(request)
        sessions.drop(old_sid)
        sid, _ = sessions.create()
        log.info("dashboard login from %s", client)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            _cookie_name(request),
            sid,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_https(request),
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        sid, session = current(request)
        if session is not None:
            sent = request.headers.get(CSRF_HEADER, "")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if not sent and ctype == "application/x-www-form-urlencoded":
                body = (await request.body())[:MAX_LOGIN_BODY]
                sent = (parse_qs(body.decode("utf-8", "replace")).get("csrf") or [""])[0]
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()) or not _same_origin(
                request
            ):
                raise _Denied(403, "forbidden", "missing or wrong CSRF token")
            sessions.drop(sid)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(
            _cookie_name(request),
            path="/",
            httponly=True,
            samesite="strict",
            secure=_https(request),
        )
        return response

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in static:
            raise _Denied(404, "not_found", "no such file")
        response = Response(static[name], media_type=_STATIC_TYPES[name])
        response.headers["Cache-Control"] = "no-cache"
        return response

    # -- JSON for the page: a session, its CSRF token and the same origin, reads included ----

    api = APIRouter(
        prefix="/ui/api",
        route_class=_DashboardRoute,
        dependencies=[Depends(authorised)],
        include_in_schema=False,
    )

    @api.get("/meta")
    async def meta() -> Response:
        return JSONResponse(
            {
                "version": __version__,
                "app": app_name(rt.app),
                "suites": list(rt.ctx.keys),
                "fingerprints": rt.secrets.fingerprints(),
                "cook": {"available": isinstance(rt.app, RecipeService), "recipes": recipes()},
                "poll_ms": POLL_MS,
            }
        )

    @api.get("/overview")
    async def overview(audit_limit: Annotated[int, Query(ge=1, le=500)] = AUDIT_ROWS) -> Response:
        db_now = await rt.store.db_now()
        views = [admin_api.device_view(rt, rec, db_now) for rec in await rt.store.list_devices()]
        await activity.refresh(rt.store, (v.device_id for v in views))
        devices = []
        for v in views:
            item = v.model_dump(mode="json")
            item["last_exchange"] = _exchange_json(activity.exchange.get(v.device_id), db_now)
            item["last_confirmation"] = _confirmation_json(
                activity.confirmation.get(v.device_id), db_now
            )
            devices.append(item)
        audit = await rt.store.audit(limit=audit_limit)
        return JSONResponse(
            {
                "db_now": db_now,
                "devices": devices,
                "audit": [admin_api.audit_view(r).model_dump(mode="json") for r in audit],
            }
        )

    async def act(call: Awaitable[BaseModel], status: int = 200) -> Response:
        result = await call
        return JSONResponse(result.model_dump(mode="json"), status_code=status)

    @api.post("/devices")
    async def register(body: RegisterRequest) -> Response:
        view: DeviceView = await admin_api.register_device(body, rt)
        return JSONResponse(view.model_dump(mode="json"), status_code=201)

    @api.post("/devices/{device_id}/rekey")
    async def rekey(device_id: str) -> Response:
        return await act(admin_api.rekey_device(device_id_of(device_id), rt), 202)

    @api.post("/devices/{device_id}/confirm")
    async def confirm(device_id: str) -> Response:
        return await act(admin_api.confirm_device(device_id_of(device_id), rt))

    @api.post("/devices/{device_id}/approve")
    async def approve(device_id: str, body: ApproveRequest) -> Response:
        return await act(admin_api.approve_device(device_id_of(device_id), body, rt))

    @api.post("/devices/{device_id}/revoke")
    async def revoke(device_id: str) -> Response:
        return await act(admin_api.revoke_device(device_id_of(device_id), rt))

    @api.post("/devices/{device_id}/profile")
    async def profile(device_id: str, body: ProfileRequest) -> Response:
        return await act(admin_api.change_profile(device_id_of(device_id), body, rt))

    @api.post("/devices/{device_id}/cook")
    async def cook(device_id: str, body: CookRequest) -> Response:
        return await act(admin_api.cook_device(device_id_of(device_id), body, rt), 202)

    # Device pairs (docs/protocol.md section 12): the pair admin API's own route functions.

    @api.get("/pairs")
    async def pairs() -> Response:
        views = await pairs_api.list_pairs(rt)
        return JSONResponse([v.model_dump(mode="json") for v in views])

    @api.post("/pairs/allow")
    async def allow_pair(body: pairs_api.PairBody) -> Response:
        return await act(pairs_api.allow_pair(body, rt))

    @api.post("/pairs/deny")
    async def deny_pair(body: pairs_api.PairBody) -> Response:
        return await act(pairs_api.deny_pair(body, rt))

    router.include_router(api)
    return router


def mount_dashboard(app: FastAPI, rt: Runtime) -> None:
    """Include the dashboard in the admin app, ahead of any route the app already has at the
    same paths (its JSON index at ``/``)."""
    before = len(app.router.routes)
    app.include_router(dashboard_router(rt))
    routes = app.router.routes
    routes[:] = routes[before:] + routes[:before]
    app.state.dashboard = True


__all__ = [
    "CSP",
    "SECURITY_HEADERS",
    "Activity",
    "Session",
    "SessionStore",
    "dashboard_router",
    "mount_dashboard",
]
