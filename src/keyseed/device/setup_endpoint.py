"""keyseed.device.setup_endpoint
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

The device's local setup endpoint (fig. 3): through it the setup PC (103) orders a rekey
directly at the device (301, answered with 302) and reads the device's status. Off unless
``--listen`` is given.

Every request must carry ``Authorization: Bearer <device-local token>`` (created at the first
start, stored 0600 beside the keystore, compared in constant time). Requests with an
``Origin`` header are refused (a browser page must not drive the device), and so are requests
whose ``Host`` is not the listen address (DNS rebinding): an IP literal or ``localhost`` with
the listen port, equal to the listen host unless that is a wildcard. 301 is rate-limited.
The status never shows a key, a seed, the token or the setup code.

===========================  ===============================================================
``POST /v1/rekey``           301: rekey as soon as possible; 202 with the 302 body
``GET /v1/status``           ID, suite, epoch, key age, connected, last exchange, app state
===========================  ===============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .agent import DeviceAgent

log = logging.getLogger("keyseed.device.setup")

_WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - compared against, not bound


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def host_allowed(host_header: str, listen_host: str, listen_port: int) -> bool:
    """Whether a ``Host`` header names the listen address (no DNS names but localhost)."""
    host, sep, port = host_header.rpartition(":")
    if not sep or port != str(listen_port):
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host != "localhost":
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        host = str(addr)
    if listen_host in _WILDCARDS:
        return True
    if listen_host == "localhost":
        return host in ("localhost", "127.0.0.1", "::1")
    if host == "localhost":
        return listen_host in ("127.0.0.1", "::1")
    return host == str(ipaddress.ip_address(listen_host))


class _Guard:
    """ASGI middleware: Host, Origin and token checks before any route runs."""

    def __init__(self, app: ASGIApp, token: str, host: str, port: int) -> None:
        self.app = app
        self._token = token.encode()
        self.host = host
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        response: Response | None = None
        if b"origin" in {k.lower() for k, _ in scope["headers"]}:
            response = _json(403, {"error": "forbidden", "detail": "cross-origin request"})
        elif not host_allowed(headers.get("host", b"").decode("latin-1"), self.host, self.port):
            response = _json(421, {"error": "misdirected", "detail": "Host is not this device"})
        else:
            auth = headers.get("authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                response = _json(
                    401,
                    {"error": "unauthorized", "detail": "device-local token required"},
                    {"WWW-Authenticate": "Bearer"},
                )
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def setup_app(
    agent: DeviceAgent, token: str, host: str, port: int, *, rekey_min_interval: float
) -> ASGIApp:
    """The ASGI app of the setup endpoint."""
    last_rekey = [-float("inf")]

    async def rekey(request: Request) -> Response:
        now = time.monotonic()
        wait = last_rekey[0] + rekey_min_interval - now
        if wait > 0:
            return _json(
                429,
                {"error": "rate_limited", "detail": "301 was ordered moments ago"},
                {"Retry-After": str(int(wait) + 1)},
            )
        last_rekey[0] = now
        return _json(202, agent.request_rekey())

    async def status(request: Request) -> Response:
        return _json(200, agent.status())

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(404, {"error": "not_found", "detail": "no such route"})

    async def not_allowed(request: Request, exc: Exception) -> Response:
        allow = getattr(exc, "headers", None)  # Starlette's Allow header
        return _json(405, {"error": "method_not_allowed", "detail": "not with this method"}, allow)

    app = Starlette(
        routes=[
            Route("/v1/rekey", rekey, methods=["POST"]),
            Route("/v1/status", status, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    )
    return _Guard(app, token, host, port)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the device command owns the signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SetupEndpoint:
    """The endpoint, served by uvicorn on the agent's event loop."""

    def __init__(
        self,
        agent: DeviceAgent,
        token: str,
        host: str,
        port: int,
        *,
        rekey_min_interval: float = 10.0,
    ) -> None:
        self._host = host
        app = setup_app(agent, token, host, port, rekey_min_interval=rekey_min_interval)
        self._server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=2,
            )
        )
        self._guard_port_fix = app
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        for srv in self._server.servers:
            for sock in srv.sockets:
                bound: int = sock.getsockname()[1]
                return bound
        raise RuntimeError("not listening")

    async def start(self) -> None:
        """Start listening.

        Raises:
            OSError: the address is in use or not available.
        """
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                raise OSError("setup endpoint did not start")
            await asyncio.sleep(0.01)
        guard = self._guard_port_fix
        if isinstance(guard, _Guard) and guard.port == 0:
            guard.port = self.port  # listening on an ephemeral port (tests)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, SystemExit):
                await self._task


__all__ = ["SetupEndpoint", "host_allowed", "setup_app"]
