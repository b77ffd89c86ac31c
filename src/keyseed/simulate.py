"""keyseed.simulate
~~~~~~~~~~~~~~~~~

``keyseed simulate``: N simulated devices in one asyncio process, each the real
:class:`~keyseed.protocol.device.DeviceProtocol` over a real WebSocket to a server's
``/v1/device`` (round-robin over ``--server`` URLs), with its keystore in memory. It exercises
every flow a fleet exercises, under load:

* registration (201/202) through the admin API, one setup code per device, with a short rekey
  policy (``--rekey-messages``, ``--rekey-age``) so that rekeys by policy happen during the run;
* enrolment (203-206) under the code, on the first connection;
* sealed application messages at ``--rate`` per device (``{"t": "list"}``: the microwave
  recipe service and the echo app both answer it), one in flight per device, so each reply
  times one round trip;
* rekeys by policy (S03 at the device) and by proxy (``--orders`` per second, 401 through the
  admin API, 403 over the device's channel).

The driver loop is every keyseed driver's (see :mod:`keyseed.device.agent`): persist the
``PersistState`` events (here: keep the keystore in memory), then send, then close if asked,
then re-arm the timer. A connection the server drops is reopened from the keystore as last
persisted, and counted as an error.

When ``--duration`` is over, application messages and orders stop, in-flight exchanges and
replies are given ``--drain`` seconds to finish, and every connection is closed normally.

With ``--until-converged`` (the fault-tolerant mode the crash-under-load campaign runs,
``make soak``) the fleet rides out faults: a dropped connection or a server that refuses
connections while it restarts is reconnected with exponential backoff and jitter, a message
whose connection dropped before its reply is sent again on the next one (it is *lost* only if
APP_ATTEMPTS sends, or the end of the run, leave it unanswered), and the closes a fault causes
are counted, not errors. At the end (``--duration``, or SIGUSR1) every device must settle
(nothing outstanding, connected, a seed held), rekey once more, settle again, and be
confirmed by the server through the admin API (208/209) at the epoch the device holds. The
summary counts enrolments, exchanges OK/NG (``KeyEstablished``/``ExchangeFailed``), messages
sent and answered, errors by kind, and latency percentiles of exchanges (203 sent to 206
stored) and of application round trips. Exit 0 only if every device enrolled and there was no
NG and no error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import math
import os
import random
import secrets
import signal
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect

from .console.client import (
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    ENV_URL,
    AdminClient,
    Conflict,
    ConsoleError,
    UsageError,
    load_admin_settings,
    policy_body,
)
from .crypto import fingerprint
from .device.config import device_url, keys_url, tls_context
from .loopback import DeviceDisk
from .protocol.constants import MAX_FRAME
from .protocol.device import DeviceProtocol, new_keystore
from .protocol.errors import ErrorCode, KeyseedError
from .protocol.events import (
    AppDataReceived,
    ConnectionClosed,
    Event,
    ExchangeFailed,
    ExchangeStarted,
    HandshakeComplete,
    KeyEstablished,
    RekeyOrdered,
    SeedStored,
)
from .protocol.states import DeviceState
from .settings import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

#: What each device sends: a request both the recipe service and the echo app answer.
APP_MESSAGE = b'{"t": "list"}'
#: Close codes that are part of normal operation under concurrency, not errors: CONFLICT is
#: the server losing a compare-and-set (a 401 order, say, changed the record while an exchange
#: was being stored); the device reconnects and the handshake settles the key. Whether every
#: device converged is checked at the end (``unfinished_at_end``).
RECOVERABLE = frozenset({ErrorCode.CONFLICT})
#: Attempts of one order the admin API answers 409 ``conflict`` (the record kept changing).
ORDER_ATTEMPTS = 3
#: Registrations (and orders) in flight at once through the admin API.
ADMIN_CONCURRENCY = 8
#: Seconds before the first reconnect after a dropped connection; each failure in a row
#: doubles it (with jitter) up to RECONNECT_MAX, so a fleet does not stampede a server that
#: is restarting.
RECONNECT_DELAY = 0.2
RECONNECT_MAX = 5.0
#: Close codes a fault (a server killed or restarted, its database connections cut) causes
#: and the fault-tolerant mode (``--until-converged``) rides out by reconnecting. Anything
#: else (a MAC that fails, a frame out of sequence ...) stays an error in every mode.
FAULT_CLOSES = frozenset(
    {
        ErrorCode.CONFLICT,
        ErrorCode.INTERNAL,
        ErrorCode.TIMEOUT,
        ErrorCode.EXCHANGE_EXPIRED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.NORMAL,
    }
)
#: Sends of one application message, in the fault-tolerant mode, before it counts as lost.
APP_ATTEMPTS = 10
#: Attempts of the final 208/209 confirmation of one device (it may be reconnecting).
CONFIRM_ATTEMPTS = 5
#: Enrolment window of registrations in the fault-tolerant mode (seconds).
TOLERANT_WINDOW_S = 3600.0
#: Seconds before retrying an application message the core refused (re-handshaking).
SEND_RETRY = 0.05
#: Bound on opening one WebSocket connection.
CONNECT_TIMEOUT = 10.0


class SimulationError(Exception):
    """The simulation could not start (server keys, registration); the message says why."""


@dataclass
class Stats:
    """What every simulated device adds to; the summary reads it."""

    devices: int = 0
    enrolled: int = 0
    exchanges_ok: int = 0
    exchanges_ng: int = 0
    rekeys: int = 0
    orders_sent: int = 0
    orders_delivered: int = 0
    orders_received: int = 0
    messages_sent: int = 0
    messages_answered: int = 0
    messages_unanswered: int = 0
    #: Fault-tolerant mode: messages sent again after their connection dropped, and those
    #: never answered after APP_ATTEMPTS sends (or by the end).
    messages_retried: int = 0
    messages_lost: int = 0
    orders_failed: int = 0
    connections: int = 0
    #: Connections that ended before the run did, by close code (EOF: no CLOSE frame).
    closes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    exchange_latency: list[float] = field(default_factory=list)
    app_latency: list[float] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency(values: list[float]) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p90_ms": ms(percentile(values, 90)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values) if values else None),
    }


# -- one device -------------------------------------------------------------------------


class SimDevice:
    """One simulated device: its keystore (in memory, surviving connections) and the driver
    of its live connection."""

    def __init__(
        self,
        device_id: str,
        url: str,
        disk: DeviceDisk,
        stats: Stats,
        rate: float,
        *,
        tls: ssl.SSLContext | None = None,
        tolerant: bool = False,
    ) -> None:
        self.device_id = device_id
        self.url = url
        #: Verifying TLS context of a wss:// server (None: ws://).
        self.tls = tls
        self.disk = disk
        self.stats = stats
        #: Seconds between application messages (None: send none).
        self.interval = None if rate <= 0 else 1.0 / rate
        #: Whether application messages are still wanted (cleared when the run ends).
        self.sending = True
        #: Whether the device is closing on purpose (its close is no error).
        self.stopping = False
        self.enrolled = False
        #: Ride out faults: re-send a message whose connection dropped, and count the closes
        #: a fault causes as closes, not errors.
        self.tolerant = tolerant
        #: A rekey asked for (:meth:`rekey`) and not yet handed to the core.
        self.rekey_wanted = False
        self._proto: DeviceProtocol | None = None
        # Failed connections in a row (for the backoff).
        self._failures = 0
        # A message sent and not answered yet (it survives connections in tolerant mode).
        self._app_owed = False
        self._app_attempts = 0
        self._wake = asyncio.Event()
        # When the one application message in flight was sealed (None: none in flight).
        self._app_sent_at: float | None = None
        # When the 203 of the exchange in flight left.
        self._exchange_sent_at: float | None = None
        self._next_send = time.monotonic()

    @property
    def busy(self) -> bool:
        """An exchange, a rekey request or a reply is still outstanding."""
        ks = self.disk.keystore
        return (
            ks.pending is not None
            or bool(ks.candidates)
            or ks.rekey_requested
            or self._app_sent_at is not None
            or self._app_owed
            or self.rekey_wanted
            or not self.enrolled
        )

    @property
    def settled(self) -> bool:
        """Enrolled, nothing outstanding, a seed for the next exchange, and connected."""
        return (
            not self.busy
            and self.disk.keystore.seed is not None
            and self._proto is not None
            and self._proto.state is DeviceState.OPEN
        )

    def messages_owed_at_end(self) -> bool:
        """A message still unanswered when the run ends (then it is lost); clears it."""
        owed, self._app_owed = self._app_owed, False
        return owed

    def rekey(self) -> None:
        """Rekey as soon as the connection is open (the core's request_rekey, as a 301)."""
        self.rekey_wanted = True
        self._wake.set()

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    async def run(self, start_after: float = 0.0) -> None:
        """Connections until :meth:`stop`, the first after ``start_after`` seconds; a dropped
        one is reopened."""
        if start_after > 0:
            await asyncio.sleep(start_after)
        while not self.stopping:
            try:
                await self._connection()
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI):
                if self.tolerant:
                    self.stats.closes["CONNECT_FAILED"] += 1
                else:
                    self.stats.error("connect_failed")
            except Exception as exc:  # a bug or a server answer the driver cannot handle
                self.stats.error(f"driver:{type(exc).__name__}")
            self._proto = None
            self._app_sent_at = None
            if self._app_owed and (not self.tolerant or self._app_attempts >= APP_ATTEMPTS):
                # Its reply cannot arrive on another connection (the close itself is counted);
                # in tolerant mode it is sent again on the next one, up to APP_ATTEMPTS times.
                self._app_owed = False
                if self.tolerant:
                    self.stats.messages_lost += 1
                else:
                    self.stats.messages_unanswered += 1
            if not self.stopping:
                self._failures += 1
                await asyncio.sleep(self._backoff())

    def _backoff(self) -> float:
        """RECONNECT_DELAY doubled per failure in a row, up to RECONNECT_MAX, jittered."""
        delay = min(RECONNECT_MAX, RECONNECT_DELAY * 2 ** min(self._failures - 1, 16))
        return random.uniform(delay / 2, delay)  # noqa: S311 - jitter only

    async def _connection(self) -> None:
        ws = await connect(
            self.url,
            max_size=4 * MAX_FRAME,
            compression=None,
            open_timeout=CONNECT_TIMEOUT,
            close_timeout=2,
            ssl=self.tls,
        )
        self.stats.connections += 1
        queue: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        reader = asyncio.create_task(_read(ws, queue))
        proto = DeviceProtocol(self.disk.keystore, now=time.monotonic())
        self._proto = proto
        try:
            proto.connect(time.monotonic())
            await self._after_input(proto, ws)
            while proto.state is not DeviceState.CLOSED:
                if self.stopping:
                    proto.close()
                    await self._after_input(proto, ws)
                    break
                now = time.monotonic()
                deadlines = [t for t in (proto.get_timer(), self._send_due(proto)) if t is not None]
                timeout = None if not deadlines else max(0.0, min(deadlines) - now)
                getter = asyncio.ensure_future(queue.get())
                waker = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait(
                    {getter, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                waker.cancel()
                if getter in done:
                    item = getter.result()
                    if item is None:
                        proto.receive_eof()
                    elif isinstance(item, bytes):
                        proto.receive_message(item, time.monotonic())
                    else:
                        proto.fail(ErrorCode.MALFORMED, "text frame")
                else:
                    getter.cancel()  # a cancelled Queue.get leaves its item in the queue
                self._wake.clear()
                now = time.monotonic()
                timer = proto.get_timer()
                if timer is not None and timer <= now:
                    proto.handle_timer(now)
                if self.rekey_wanted and proto.state is DeviceState.OPEN:
                    self.rekey_wanted = False
                    proto.request_rekey(now)
                self._maybe_send(proto, now)
                await self._after_input(proto, ws)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await ws.close()

    def _send_due(self, proto: DeviceProtocol) -> float | None:
        """When the next application message is due (None: none is wanted or possible now;
        the next input re-evaluates it)."""
        if self._app_sent_at is not None or proto.state is not DeviceState.OPEN:
            return None
        if self._app_owed:
            return self._next_send  # sent again: its connection dropped before the reply
        if self.interval is None or not self.sending:
            return None
        return self._next_send

    def _maybe_send(self, proto: DeviceProtocol, now: float) -> None:
        due = self._send_due(proto)
        if due is None or due > now:
            return
        try:
            proto.send_app(APP_MESSAGE, now)
        except KeyseedError:
            # Re-handshaking, or past the hard limit until the rekey lands: try again shortly.
            self._next_send = now + SEND_RETRY
            return
        self._app_sent_at = now
        self._app_attempts += 1
        if self._app_owed:
            self.stats.messages_retried += 1
            return
        assert self.interval is not None
        self._app_owed = True
        self._app_attempts = 1
        self._next_send = max(self._next_send + self.interval, now)
        self.stats.messages_sent += 1

    async def _after_input(self, proto: DeviceProtocol, ws: ClientConnection) -> None:
        """Persist, then send, then close if asked, then count."""
        events = proto.events_received()
        self.disk.commit(events)  # durable first (rule 1)
        for frame in proto.messages_to_send():
            try:
                await ws.send(frame)
            except websockets.ConnectionClosed:
                break
        if proto.close_expected():
            with contextlib.suppress(Exception):
                await ws.close()
        self._count(events)

    def _count(self, events: list[Event]) -> None:
        now = time.monotonic()
        st = self.stats
        for ev in events:
            if isinstance(ev, HandshakeComplete) and ev.authenticated:
                self._failures = 0  # progress: the backoff starts over
            elif isinstance(ev, ExchangeStarted):
                self._exchange_sent_at = now
            elif isinstance(ev, KeyEstablished):
                self._failures = 0
                st.exchanges_ok += 1
                if ev.enrolment:
                    st.enrolled += 1
                    self.enrolled = True
                else:
                    st.rekeys += 1
            elif isinstance(ev, ExchangeFailed):
                st.exchanges_ng += 1
                self._exchange_sent_at = None
            elif isinstance(ev, SeedStored):
                if self._exchange_sent_at is not None:
                    st.exchange_latency.append(now - self._exchange_sent_at)
                    self._exchange_sent_at = None
            elif isinstance(ev, RekeyOrdered):
                st.orders_received += 1
            elif isinstance(ev, AppDataReceived):
                if self._app_sent_at is None:
                    st.error("app_unexpected_reply")
                else:
                    st.app_latency.append(now - self._app_sent_at)
                    st.messages_answered += 1
                    self._app_sent_at = None
                    self._app_owed = False
            elif isinstance(ev, ConnectionClosed) and not self.stopping:
                kind = ev.code.name if ev.reason != "eof" else "EOF"
                st.closes[kind] += 1
                tolerated = self.tolerant and (kind == "EOF" or ev.code in FAULT_CLOSES)
                if ev.code not in RECOVERABLE and not tolerated:
                    st.error(f"closed:{kind}")


async def _read(ws: ClientConnection, queue: asyncio.Queue[bytes | str | None]) -> None:
    try:
        async for message in ws:
            await queue.put(message)
    except websockets.ConnectionClosed:
        pass
    finally:
        queue.put_nowait(None)


# -- setup ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What ``keyseed simulate`` was asked to do."""

    servers: tuple[str, ...]
    devices: int
    rate: float = 1.0
    duration: float = 10.0
    orders: float = 0.0
    rekey_messages: int | None = None
    rekey_age: int | None = None
    suite: str = "hpke-x25519"
    prefix: str | None = None
    drain: float = 10.0
    #: CA file that verifies the servers' certificates (wss:// only; default: system store).
    ca: str | None = None
    #: Fault-tolerant mode: ride out server restarts, then converge, rekey once more and
    #: confirm every device (208/209) within ``converge_timeout`` seconds.
    until_converged: bool = False
    converge_timeout: float = 120.0
    #: Devices started per second (0: all at once).
    ramp: float = 0.0


def _tls(server: str, ca: str | None) -> ssl.SSLContext | None:
    """The verifying TLS context of a wss:// server (None for ws://).

    Raises:
        SimulationError: the CA file does not load.
    """
    try:
        return tls_context(server, None if ca is None else Path(ca))
    except ConfigError as exc:
        raise SimulationError(f"--ca: {exc}") from None


async def fetch_server_key(
    server: str, suite: str, admin_keys: list[dict[str, Any]], ca: str | None = None
) -> bytes:
    """The server's public key of ``suite`` from ``GET /v1/keys`` on its device listener,
    accepted only if its fingerprint is one the admin API (authenticated) lists."""
    url = keys_url(server)
    try:
        verify: ssl.SSLContext | bool = _tls(server, ca) or True
        async with httpx.AsyncClient(
            timeout=CONNECT_TIMEOUT, trust_env=False, verify=verify
        ) as client:
            resp = await client.get(url)
    except httpx.HTTPError as exc:
        raise SimulationError(
            f"cannot fetch the server key from {url}: {type(exc).__name__}"
        ) from None
    if resp.status_code != 200:
        raise SimulationError(f"cannot fetch the server key from {url}: HTTP {resp.status_code}")
    try:
        match = [e for e in resp.json() if isinstance(e, dict) and e.get("suite") == suite]
        raw = bytes.fromhex(str(match[0]["public_key"])) if match else b""
        got = fingerprint(suite, raw) if raw else b""
    except (ValueError, KeyError, TypeError):
        raise SimulationError(f"{url} did not answer with a key list") from None
    if not raw:
        raise SimulationError(f"the server at {url} offers no {suite} key")
    pins = [bytes.fromhex(str(k.get("fingerprint", ""))) for k in admin_keys]
    if not any(hmac.compare_digest(got, pin) for pin in pins):
        raise SimulationError(
            f"the {suite} key of {url} is not one the admin API lists: "
            "is the device listener of the same server?"
        )
    return raw


async def register_all(
    admin: AdminClient,
    ids: list[str],
    codes: list[str],
    opts: Options,
    done: Callable[[], None] = lambda: None,
) -> None:
    """201 for every device (a few at a time), each with its setup code and the policy."""
    policy = policy_body(soft_messages=opts.rekey_messages, soft_age_s=opts.rekey_age)
    gate = asyncio.Semaphore(ADMIN_CONCURRENCY)
    # A fault campaign may keep the server down or busy for longer than the default window.
    window = TOLERANT_WINDOW_S if opts.until_converged else None

    async def one(device_id: str, code: str) -> None:
        async with gate:
            await asyncio.to_thread(
                admin.register,
                device_id,
                setup_code=code,
                suite=opts.suite,
                policy=policy,
                window_s=window,
            )
            done()

    await asyncio.gather(*(one(d, c) for d, c in zip(ids, codes, strict=True)))


async def _orders(
    admin: AdminClient, fleet: list[SimDevice], rate: float, stats: Stats, tolerant: bool = False
) -> None:
    """401 by proxy at ``rate`` per second, round-robin over the enrolled devices. In the
    fault-tolerant mode an order the admin API cannot take (the server is restarting) is
    counted as failed, not as an error."""
    turn = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(device_id: str) -> None:
        for attempt in range(1, ORDER_ATTEMPTS + 1):
            try:
                out = await asyncio.to_thread(admin.rekey, device_id)
            except Conflict as exc:
                if exc.error == "conflict" and attempt < ORDER_ATTEMPTS:
                    continue  # the record changed under the order: the API says try again
                stats.error(f"order_failed:{exc.error or 'conflict'}")
                return
            except ConsoleError as exc:
                if tolerant:
                    stats.orders_failed += 1
                else:
                    stats.error(f"order_failed:{exc.error or type(exc).__name__}")
                return
            if out.get("delivered"):
                stats.orders_delivered += 1
            return

    try:
        while True:
            await asyncio.sleep(1.0 / rate)
            ready = [d for d in fleet if d.enrolled and d.sending]
            if not ready:
                continue
            dev = ready[turn % len(ready)]
            turn += 1
            stats.orders_sent += 1
            task = asyncio.create_task(one(dev.device_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _progress_columns() -> list[Any]:
    return [
        TextColumn("[bold]{task.description}", justify="right"),
        BarColumn(bar_width=24),
        TextColumn("{task.completed:>6.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]


def _info(stats: Stats) -> str:
    return (
        f"ok {stats.exchanges_ok}  ng {stats.exchanges_ng}  rekeys {stats.rekeys}  "
        f"msgs {stats.messages_answered}/{stats.messages_sent}  errors {stats.error_count}"
    )


async def simulate(
    opts: Options, admin: AdminClient, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the simulation; its summary (the ``--json`` object).

    Raises:
        SimulationError, ConsoleError: the setup failed (nothing ran).
    """
    stats = Stats(devices=opts.devices)
    prefix = opts.prefix if opts.prefix is not None else f"sim-{secrets.token_hex(3)}-"
    ids = [f"{prefix}{i:05d}" for i in range(opts.devices)]
    codes = [f"{secrets.randbelow(10**12):012d}" for _ in ids]
    admin_keys = await asyncio.to_thread(admin.keys)
    keys = {s: await fetch_server_key(s, opts.suite, admin_keys, opts.ca) for s in opts.servers}
    contexts = {s: _tls(s, opts.ca) for s in opts.servers}

    started = time.monotonic()
    setup = None if progress is None else progress.add_task("register", total=opts.devices, info="")

    def registered_one() -> None:
        if progress is not None and setup is not None:
            progress.advance(setup)

    await register_all(admin, ids, codes, opts, registered_one)
    registered = time.monotonic()

    fleet: list[SimDevice] = []
    for i, (device_id, code) in enumerate(zip(ids, codes, strict=True)):
        server = opts.servers[i % len(opts.servers)]
        ks = new_keystore(
            device_id=device_id,
            suite=opts.suite,
            server_key=keys[server],
            install_secret=os.urandom(32),
            setup_code=code,
        )
        fleet.append(
            SimDevice(
                device_id,
                device_url(server),
                DeviceDisk(ks),
                stats,
                opts.rate,
                tls=contexts[server],
                tolerant=opts.until_converged,
            )
        )
    ramp = 0.0 if opts.ramp <= 0 else 1.0 / opts.ramp
    runs = [asyncio.create_task(dev.run(i * ramp)) for i, dev in enumerate(fleet)]
    orders = (
        asyncio.create_task(_orders(admin, fleet, opts.orders, stats, opts.until_converged))
        if opts.orders > 0
        else None
    )
    # SIGUSR1 ends the traffic phase before --duration (a fault campaign ends it when its
    # faults are done). Only where the loop can take signals (the main thread).
    wind_down = asyncio.Event()
    loop = asyncio.get_running_loop()
    signalled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGUSR1, wind_down.set)
        signalled = True
    converged: dict[str, Any] | None = None
    enrol_task = (
        None if progress is None else progress.add_task("enrolled", total=opts.devices, info="")
    )
    run_task = (
        None if progress is None else progress.add_task("running", total=opts.duration, info="")
    )
    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) < opts.duration and not wind_down.is_set():
            if progress is not None and enrol_task is not None and run_task is not None:
                progress.update(enrol_task, completed=stats.enrolled, info="")
                progress.update(run_task, completed=elapsed, info=_info(stats))
            await asyncio.sleep(min(0.2, max(0.0, opts.duration - elapsed)))
        # Wind down: no new traffic; let exchanges, orders and replies in flight finish.
        if orders is not None:
            orders.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await orders
        for dev in fleet:
            dev.sending = False
        if opts.until_converged:
            converged = await _converge(admin, fleet, stats, opts.converge_timeout)
        else:
            deadline = time.monotonic() + opts.drain
            while any(d.busy for d in fleet) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for dev in fleet:
                if dev.busy and dev.enrolled:
                    stats.error("unfinished_at_end")
        for dev in fleet:
            dev.stop()
        try:
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 10)
        except TimeoutError:
            stats.error("stop_timeout")
    finally:
        if signalled:
            loop.remove_signal_handler(signal.SIGUSR1)
        for task in runs:
            task.cancel()
        if orders is not None:
            orders.cancel()
        await asyncio.gather(*runs, *([orders] if orders else []), return_exceptions=True)
    if progress is not None and enrol_task is not None and run_task is not None:
        progress.update(enrol_task, completed=stats.enrolled, info="")
        progress.update(run_task, completed=opts.duration, info=_info(stats))
    not_enrolled = sum(1 for d in fleet if not d.enrolled)
    if not_enrolled:
        stats.error("not_enrolled")
    ok = stats.error_count == 0 and stats.exchanges_ng == 0 and not_enrolled == 0
    if converged is not None:
        # Under faults a 204 NG is a hint (a race with a commit the device has not seen yet):
        # the device reconnects and the handshake settles it. What must hold is convergence.
        ok = (
            stats.error_count == 0
            and not_enrolled == 0
            and stats.messages_lost == 0
            and converged["confirmed"] == opts.devices
        )
    out: dict[str, Any] = {
        "servers": list(opts.servers),
        "devices": opts.devices,
        "device_prefix": prefix,
        "duration_s": opts.duration,
        "rate_per_device": opts.rate,
        "orders_per_s": opts.orders,
        "registration_s": round(registered - started, 3),
        "enrolled": stats.enrolled,
        "not_enrolled": not_enrolled,
        "exchanges": {"ok": stats.exchanges_ok, "ng": stats.exchanges_ng, "rekeys": stats.rekeys},
        "orders": {
            "sent": stats.orders_sent,
            "delivered": stats.orders_delivered,
            "received": stats.orders_received,
            "failed": stats.orders_failed,
        },
        "messages": {
            "sent": stats.messages_sent,
            "answered": stats.messages_answered,
            "unanswered": stats.messages_unanswered,
            "retried": stats.messages_retried,
            "lost": stats.messages_lost,
        },
        "connections": stats.connections,
        "closes": dict(sorted(stats.closes.items())),
        "errors": {"total": stats.error_count, **dict(sorted(stats.errors.items()))},
        "latency": {
            "exchange": _latency(stats.exchange_latency),
            "app": _latency(stats.app_latency),
        },
        "ok": ok,
    }
    if converged is not None:
        out["converged"] = converged
    return out


async def _converge(
    admin: AdminClient, fleet: list[SimDevice], stats: Stats, timeout: float
) -> dict[str, Any]:
    """The end of a fault-tolerant run: every device settles (messages answered or lost,
    exchanges finished, connected with a seed), rekeys once more (its seed is usable and the
    server agrees on it), settles again, and is confirmed by the server (208/209) at the
    epoch the device holds. Devices that do not get there within ``timeout`` are errors."""
    t0 = time.monotonic()
    deadline = t0 + timeout

    async def settle() -> bool:
        while not all(d.settled for d in fleet):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    settled = await settle()
    settle_s = time.monotonic() - t0
    before = {d.device_id: d.disk.keystore.epoch for d in fleet}
    for dev in fleet:
        dev.rekey()
    settled = settled and await settle()
    rekeyed = sum(1 for d in fleet if d.disk.keystore.epoch > before[d.device_id])
    for dev in fleet:
        if dev.messages_owed_at_end():
            stats.messages_lost += 1
    gate = asyncio.Semaphore(ADMIN_CONCURRENCY)
    results: Counter[str] = Counter()

    async def confirm(dev: SimDevice) -> None:
        async with gate:
            for _ in range(CONFIRM_ATTEMPTS):
                try:
                    out = await asyncio.to_thread(admin.confirm, dev.device_id)
                except ConsoleError:
                    out = {"ok": False}
                if out.get("ok"):
                    same = out.get("epoch") == dev.disk.keystore.epoch
                    results["confirmed" if same else "epoch_mismatch"] += 1
                    return
                await asyncio.sleep(0.5)
            results["unconfirmed"] += 1

    await asyncio.gather(*(confirm(d) for d in fleet))
    if not settled:
        stats.error("not_converged")
    for kind in ("epoch_mismatch", "unconfirmed"):
        if results[kind]:
            stats.error(kind)
    return {
        "settled": sum(1 for d in fleet if d.settled),
        "settle_s": round(settle_s, 3),
        "final_rekeys": rekeyed,
        "confirmed": results["confirmed"],
        "epoch_mismatch": results["epoch_mismatch"],
        "unconfirmed": results["unconfirmed"],
        "without_seed": sum(1 for d in fleet if d.disk.keystore.seed is None),
        "seconds": round(time.monotonic() - t0, 3),
    }


def summary_table(out: dict[str, Any]) -> Table:
    """The summary as people read it."""
    table = Table(title=f"keyseed simulate: {out['devices']} devices, {out['duration_s']} s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    ex, msgs, orders, errors = out["exchanges"], out["messages"], out["orders"], out["errors"]
    rows = [
        ("enrolled", f"{out['enrolled']}/{out['devices']}"),
        ("exchanges OK", str(ex["ok"])),
        ("exchanges NG", str(ex["ng"])),
        ("rekeys", str(ex["rekeys"])),
        (
            "orders sent/delivered/received",
            f"{orders['sent']}/{orders['delivered']}/{orders['received']}",
        ),
        (
            "messages sent/answered/unanswered",
            f"{msgs['sent']}/{msgs['answered']}/{msgs['unanswered']}",
        ),
        ("messages retried/lost", f"{msgs['retried']}/{msgs['lost']}"),
        ("connections", str(out["connections"])),
        ("closes before the end", str(sum(out["closes"].values()))),
        ("errors", str(errors["total"])),
    ]
    rows[-1:-1] = [(f"  {k}", str(v)) for k, v in out["closes"].items()]
    rows += [(f"  {k}", str(v)) for k, v in errors.items() if k != "total"]
    for name in ("exchange", "app"):
        lat = out["latency"][name]
        cells = "/".join(
            "-" if lat[k] is None else f"{lat[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms")
        )
        rows.append((f"{name} latency p50/p90/p99 ms ({lat['count']})", cells))
    conv = out.get("converged")
    if conv is not None:
        rows.append(("settled after the run", f"{conv['settled']}/{out['devices']}"))
        rows.append(("final rekeys", str(conv["final_rekeys"])))
        rows.append(("confirmed (208/209)", f"{conv['confirmed']}/{out['devices']}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


# -- command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number, 0 or more")
    return value


def add_simulate_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``simulate``; it binds ``handler`` and ``parser``."""
    p = commands.add_parser(
        "simulate",
        help="N simulated devices over real WebSockets: enrol, messages, rekeys, a summary",
        description="Register N devices through the admin API (a setup code each, a short "
        "rekey policy), then run them in this process, each the real device core over a real "
        "WebSocket to a server's device listener: enrolment, sealed application messages, "
        "rekeys by policy and by proxy. Print a summary (exchanges OK/NG, messages, errors, "
        "latency percentiles), or one JSON object with --json. Exit 0 only if every device "
        "enrolled and there was no NG and no error.",
    )
    p.add_argument(
        "--server",
        action="append",
        required=True,
        metavar="URL",
        help="a server's device listener, ws://HOST:PORT or http://HOST:PORT (wss:// or "
        "https:// when it serves TLS); repeat it to spread the devices round-robin over several "
        "servers",
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        help="PEM CA file that verifies a wss:// server's certificate (default: the system's "
        "trust store)",
    )
    p.add_argument("--devices", type=_positive_int, required=True, metavar="N")
    p.add_argument(
        "--rate",
        type=_nonneg_float,
        default=1.0,
        metavar="R",
        help="application messages per second per device (default: 1)",
    )
    p.add_argument(
        "--duration", type=_nonneg_float, default=10.0, metavar="S", help="seconds (default: 10)"
    )
    p.add_argument(
        "--orders",
        type=_nonneg_float,
        default=0.0,
        metavar="R",
        help="rekeys by proxy (401) per second through the admin API (default: 0)",
    )
    p.add_argument(
        "--rekey-messages",
        type=_positive_int,
        metavar="N",
        help="policy: rekey after N messages under a key (default: the server's policy)",
    )
    p.add_argument(
        "--rekey-age",
        type=_positive_int,
        metavar="S",
        help="policy: rekey when the key is S seconds old (default: the server's policy)",
    )
    p.add_argument("--suite", default="hpke-x25519", help="suite (default: hpke-x25519)")
    p.add_argument(
        "--prefix",
        metavar="P",
        help="device IDs are P00000, P00001, ... (default: sim-<6 random hex>-)",
    )
    p.add_argument(
        "--drain",
        type=_nonneg_float,
        default=10.0,
        metavar="S",
        help="at the end, wait up to S seconds for exchanges and replies in flight (default: 10)",
    )
    p.add_argument(
        "--admin-url",
        metavar="URL",
        help=f"the server's admin listener (env {ENV_URL}; default: http://127.0.0.1:8701)",
    )
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"file holding the admin token, mode 0600 (env {ENV_TOKEN_FILE})",
    )
    p.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help=f"the admin token itself (env {ENV_TOKEN}; prefer the file or the environment)",
    )
    p.add_argument(
        "--until-converged",
        action="store_true",
        help="fault-tolerant: ride out server restarts and dropped database connections "
        "(reconnect with backoff, send unanswered messages again, up to "
        f"{APP_ATTEMPTS} times, then count them lost); at the end, wait until every device "
        "has settled, rekey each once more and have the server confirm each (208/209) at the "
        "device's epoch; SIGUSR1 ends the traffic phase before --duration",
    )
    p.add_argument(
        "--ramp",
        type=_nonneg_float,
        default=0.0,
        metavar="R",
        help="start R devices per second instead of all at once (default: 0, all at once)",
    )
    p.add_argument(
        "--converge-timeout",
        type=_nonneg_float,
        default=120.0,
        metavar="S",
        help="with --until-converged: seconds the fleet has to converge (default: 120)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress")
    p.set_defaults(handler=_run, parser=p)
    return p


def ws_url(server: str) -> str:
    """A device listener's WebSocket URL from ``ws(s)://`` or ``http(s)://HOST:PORT``.

    Raises:
        ConfigError: not such a URL, or it carries credentials.
    """
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if server.lower().startswith(http):
            server = ws + server[len(http) :]
    return device_url(server)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        servers = tuple(ws_url(s) for s in args.server)
    except ConfigError as exc:
        parser.error(f"--server: {exc}")
    opts = Options(
        servers=servers,
        devices=args.devices,
        rate=args.rate,
        duration=args.duration,
        orders=args.orders,
        rekey_messages=args.rekey_messages,
        rekey_age=args.rekey_age,
        suite=args.suite,
        prefix=args.prefix,
        drain=args.drain,
        ca=args.ca,
        until_converged=args.until_converged,
        converge_timeout=args.converge_timeout,
        ramp=args.ramp,
    )
    try:
        settings = load_admin_settings(
            url=args.admin_url, token=args.admin_token, token_file=args.admin_token_file
        )
    except UsageError as exc:
        print(f"keyseed simulate: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    console = Console(stderr=True)
    show = not args.json and console.is_terminal
    try:
        with AdminClient(settings) as admin:
            if show:
                with Progress(*_progress_columns(), console=console, transient=False) as bars:
                    out = asyncio.run(simulate(opts, admin, progress=bars))
            else:
                out = asyncio.run(simulate(opts, admin))
    except ConsoleError as exc:
        print(f"keyseed simulate: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except SimulationError as exc:
        print(f"keyseed simulate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        Console().print(summary_table(out))
    return EXIT_OK if out["ok"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """``python -m keyseed.simulate ...``: the same command without the main CLI."""
    parser = argparse.ArgumentParser(prog="keyseed")
    sub = parser.add_subparsers()
    add_simulate_parser(sub)
    try:
        args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
        code: int = args.handler(args, args.parser)
    except SystemExit as exc:  # argparse: --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
