"""keyseed.server.run
~~~~~~~~~~~~~~~~~~~~~

Both listeners of one server in one process, on one event loop: two ``uvicorn.Server``
instances (device and admin) served together with ``asyncio.gather``, sharing one
:class:`~keyseed.server.runtime.Runtime`. uvicorn's own signal capture is turned off (two
servers would fight over the handlers); :func:`serve` installs one handler that stops both.

With ``tls_cert``/``tls_key`` the device listener serves TLS (uvicorn's ``ssl_certfile`` and
``ssl_keyfile``; ``wss://``), and the admin listener too with ``admin_tls``. The pair is
loaded once before either listener starts, so a bad file is one clear error, not a listener
that dies later.

Shutdown is graceful: device connections get a normal CLOSE first, then both listeners stop,
then the store closes. A SIGKILL loses nothing either: every change was committed before the
reply that depended on it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TextIO, TypeVar

import uvicorn

try:
    import uvloop
except ImportError:  # pragma: no cover - not built for this platform
    uvloop = None  # type: ignore[assignment]

from ..storage.repository import Store
from .app import admin_app, device_app
from .apps import ServerApp
from .config import ConfigError, ServerConfig
from .datadir import Secrets, open_data_dir
from .ratelimit import HeadDeadline
from .runtime import Runtime, open_runtime
from .wire import WS_MAX_SIZE, wire_factory

log = logging.getLogger("keyseed.server")

T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``--loop`` names: ``uvloop``, ``asyncio``, or ``auto`` (uvloop where
    it is installed).

    uvloop moves the loop itself and the socket transports from Python into libuv: about 6%
    less server CPU per exchange and per sealed round trip (docs/server.md, Listeners).

    Raises:
        ConfigError: ``uvloop`` was asked for and is not installed.
    """
    if name in ("auto", "uvloop") and uvloop is not None:
        return uvloop.new_event_loop
    if name == "uvloop":
        raise ConfigError("loop uvloop: uvloop is not installed")
    return asyncio.new_event_loop


def resolve_loop(name: str) -> str:
    """What ``name`` runs on: ``uvloop`` or ``asyncio`` (``auto`` resolved).

    Raises:
        ConfigError: as :func:`loop_factory`.
    """
    return "asyncio" if loop_factory(name) is asyncio.new_event_loop else "uvloop"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what the running loop is, for logs and reports."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``name`` (see :func:`loop_factory`)."""
    try:
        factory = loop_factory(name)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`serve`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RunningServer:
    """Both listeners, started. Build it with :func:`start_server`; stop it with :meth:`stop`."""

    def __init__(self, rt: Runtime, device: _Server, admin: _Server) -> None:
        #: What both listeners share.
        self.rt = rt
        self._servers = (device, admin)
        self._task: asyncio.Future[list[None]] | None = None

    @property
    def device_port(self) -> int:
        return _bound_port(self._servers[0])

    @property
    def admin_port(self) -> int:
        return _bound_port(self._servers[1])

    async def _start(self) -> None:
        self._task = asyncio.gather(*(s.serve() for s in self._servers))
        while not all(s.started for s in self._servers):
            if self._task.done():
                await self._task  # raises what failed (a port in use, ...)
                raise RuntimeError("a listener stopped during startup")
            await asyncio.sleep(0.01)

    async def wait(self) -> None:
        """Until both listeners have stopped."""
        assert self._task is not None
        await self._task

    def request_stop(self) -> None:
        """Ask both listeners to stop (from a signal handler)."""
        for s in self._servers:
            s.should_exit = True

    async def stop(self) -> None:
        """Close device connections normally, stop both listeners, close the store."""
        for conn in list(self.rt.connections):
            with contextlib.suppress(Exception):
                await conn.close_now()
        self.request_stop()
        if self._task is not None:
            with contextlib.suppress(Exception, SystemExit):
                await self._task
        await self.rt.close()


def _bound_port(server: uvicorn.Server) -> int:
    for srv in server.servers:
        for sock in srv.sockets:
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError("not listening")


class TLSFilesError(OSError):
    """The TLS certificate or key cannot be loaded (missing, unreadable, not a pair)."""


def check_tls_files(config: ServerConfig) -> None:
    """Load the certificate and key once, as uvicorn will.

    Raises:
        TLSFilesError: they do not load; the message names the files, never key bytes.
    """
    if config.tls_cert is None or config.tls_key is None:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except FileNotFoundError as exc:
        raise TLSFilesError(f"TLS file not found: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise TLSFilesError(
            f"cannot load --tls-cert {config.tls_cert} with --tls-key {config.tls_key}: {reason}"
        ) from None


def _uvicorn_config(
    app: object,
    host: str,
    port: int,
    log_level: str,
    tls: ServerConfig | None = None,
    *,
    device: Runtime | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        # The device listener closes a TCP connection that sends no request head in time
        # (uvicorn arms no timer before the first request; see keyseed.server.ratelimit).
        http=HeadDeadline if device is not None else "auto",
        # The device listener's WebSockets are keyseed.server.wire's. It sends no pings: a
        # silent device is closed by the idle timeout (and a device's own pings are
        # answered), while 20-second pings to 10,000 devices cost 500 wakeups a second.
        ws="auto" if device is None else wire_factory(device),  # type: ignore[arg-type]
        ws_ping_interval=20.0,
        lifespan="off",
        log_config=None,
        log_level=log_level,
        access_log=False,
        ws_max_size=WS_MAX_SIZE,
        # Frames are ciphertext: compression gains nothing and costs memory per connection.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
        server_header=False,
        ssl_certfile=None if tls is None else tls.tls_cert,
        ssl_keyfile=None if tls is None else tls.tls_key,
    )


async def start_server(
    config: ServerConfig,
    *,
    store: Store | None = None,
    app: ServerApp | None = None,
    secrets: Secrets | None = None,
) -> RunningServer:
    """Open the runtime and start both listeners (ports 0: any free port)."""
    check_tls_files(config)
    rt = await open_runtime(config, store=store, app=app, secrets=secrets)
    level = config.log_level
    device = _Server(
        _uvicorn_config(device_app(rt), config.host, config.port, level, config, device=rt)
    )
    admin = _Server(
        _uvicorn_config(
            admin_app(rt),
            config.admin_host,
            config.admin_port,
            level,
            config if config.admin_tls else None,
        )
    )
    running = RunningServer(rt, device, admin)
    try:
        await running._start()
    except BaseException:
        running.request_stop()
        await rt.close()
        raise
    return running


def banner(secrets: Secrets, running: RunningServer, config: ServerConfig) -> str:
    """What ``keyseed server`` prints at start: fingerprints, listeners, and the admin token
    when this start created it (the only time it is ever shown)."""
    lines = []
    for suite, fp in secrets.fingerprints().items():
        new = " (new)" if suite in secrets.created else ""
        lines.append(f"server key {suite}{new}: fingerprint {fp}")
    if secrets.new_token is not None:
        lines.append(f"admin token (shown once; store it now): {secrets.new_token}")
    ws = "wss" if config.tls else "ws"
    lines.append(f"device listener: {ws}://{config.host}:{running.device_port}/v1/device")
    admin_http = "https" if config.admin_tls else "http"
    lines.append(
        f"admin listener: {admin_http}://{config.admin_host}:{running.admin_port}/v1/admin"
    )
    return "\n".join(lines)


async def serve(
    config: ServerConfig,
    *,
    out: TextIO | None = None,
    app: ServerApp | None = None,
    reset_token: bool = False,
) -> None:
    """``keyseed server``: initialise or load the data folder, start both listeners, print
    the banner, and run until SIGINT or SIGTERM."""
    out = out or sys.stdout
    secrets = open_data_dir(config.data, config.suites, reset_token=reset_token)
    running = await start_server(config, app=app, secrets=secrets)
    print(banner(secrets, running, config), file=out, flush=True)
    loop = asyncio.get_running_loop()
    log.info("event loop: %s", loop_name(loop))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(running.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await running.stop()
        print("keyseed server stopped", file=out, flush=True)


__all__ = [
    "WS_MAX_SIZE",
    "RunningServer",
    "TLSFilesError",
    "banner",
    "check_tls_files",
    "loop_factory",
    "loop_name",
    "resolve_loop",
    "run_on",
    "serve",
    "start_server",
]
