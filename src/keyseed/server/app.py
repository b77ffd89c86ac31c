"""keyseed.server.app
~~~~~~~~~~~~~~~~~~~~~

The two ASGI applications of one server, one per listener:

* :func:`device_app` (``--port``): ``/v1/device`` (the device channel, served below ASGI by
  :mod:`keyseed.server.wire`, which uvicorn hands the listener's upgrades to), ``/v1/keys`` (the
  long-term public keys, unauthenticated: a device fetches them only to check them against a
  fingerprint it was given out of band) and ``/healthz``, and nothing else. It is plain
  Starlette routing: three routes need no more, and nothing of the admin surface can leak onto
  the listener devices reach.
* :func:`admin_app` (``--admin-port``, loopback by default): the admin API under ``/v1/admin``,
  ``/metrics``, ``/healthz``, the OpenAPI document, and the dashboard at ``/``. FastAPI,
  because its typed routes give the OpenAPI document and request validation for free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..console import dashboard
from .admin_api import ApiError, public_keys, router
from .pairs_api import router as pairs_router
from .runtime import Runtime

log = logging.getLogger("keyseed.server")

_HTTP_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "validation_error",
}


def _error(
    status: int, error: str, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": error, "detail": detail},
        status_code=status,
        headers=None if headers is None else dict(headers),
    )


async def _healthz(request: Request) -> Response:
    """Alive, and the database answers."""
    rt: Runtime = request.app.state.runtime
    try:
        await rt.store.db_now()
    except Exception:
        log.exception("health check: database")
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _keys(request: Request) -> Response:
    """The long-term public keys and fingerprints (the body of the admin ``GET /keys``).
    Public keys are public; what makes one trusted is the pin the device already holds."""
    rt: Runtime = request.app.state.runtime
    return JSONResponse([k.model_dump() for k in public_keys(rt)])


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, "not_found", "no such route")


def device_app(rt: Runtime) -> Starlette:
    """The device listener: ``/v1/device``, ``/v1/keys`` and ``/healthz`` only."""
    app = Starlette(
        routes=[
            Route("/v1/keys", _keys, methods=["GET"]),
            Route("/healthz", _healthz, methods=["GET"]),
        ],
        exception_handlers={404: _not_found},
    )
    app.state.runtime = rt
    return app


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _error(exc.status, exc.error, exc.detail, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _error(
        exc.status_code, _HTTP_ERRORS.get(exc.status_code, "error"), exc.detail, exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: pydantic would echo the input, which may hold a setup code.
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return _error(422, "validation_error", detail)


class _TokenFirst:
    """ASGI middleware: the admin token is checked before FastAPI reads the body, so a
    request to ``/v1/admin`` without it is 401 whatever it carries (never 400 or 422) and its
    body is never parsed. The routes check it again (their OpenAPI security)."""

    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v1/admin" or path.startswith("/v1/admin/")):
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if not (scheme.lower() == "bearer" and token and self.rt.secrets.check_token(token)):
                response = _error(
                    401,
                    "unauthorized",
                    "missing or wrong admin token",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def admin_app(rt: Runtime) -> FastAPI:
    """The admin listener: admin API, ``/metrics``, ``/healthz``, OpenAPI."""
    app = FastAPI(
        title="keyseed admin API",
        version=__version__,
        description="Register devices (201/202), order rekeys by proxy (401/402), confirm "
        "arrival (208/209), approve, revoke, order cooking (microwave demo), read the audit "
        "log. Bearer-token auth.",
        exception_handlers={
            ApiError: _api_error,
            StarletteHTTPException: _http_error,
            RequestValidationError: _validation_error,
        },
    )
    app.state.runtime = rt
    app.include_router(router)
    app.include_router(pairs_router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> Response:
        return await _healthz(request)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    app.add_middleware(_TokenFirst, rt=rt)

    # The dashboard (the setup PC in a browser) at /: session cookie, CSRF, strict CSP.
    dashboard.mount_dashboard(app, rt)
    return app


__all__ = ["admin_app", "device_app"]
