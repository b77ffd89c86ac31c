"""keyseed.device.agent
~~~~~~~~~~~~~~~~~~~~~~

:class:`DeviceAgent`: the device (appliance 101) as a long-running asyncio driver around the
sans-I/O :class:`~keyseed.protocol.device.DeviceProtocol`, one core per WebSocket connection
to ``/v1/device``. After every input (a frame, the end of the stream, a timer, a local order,
application data) it runs the same loop as every keyseed driver::

    PersistState events -> keystore file (atomic, fsynced) -> send messages_to_send()
    -> close if close_expected() -> dispatch the other events (app, status, logs)
    -> re-arm the timer from get_timer()

The keystore is written *before* any message that depends on it leaves (rule 1), and a write
that fails abandons the connection without sending anything: the next connection starts from
the keystore as last written, and the server's authenticated HELLO_ACK settles whatever was in
flight. That is all the recovery there is, and all that is needed (DESIGN.md section 4, "No
bricking"): a crash at any step leaves a keystore from which the next handshake converges.

Reconnects back off exponentially with jitter (reset once a handshake authenticates). A key
exchange starts by itself when the keystore holds no key (enrolment), on a 301 from the local
setup endpoint or a 403 from the server, at power-on with ``rekey_on_start``, and when the
policy from the last 206 says so (message count or key age); the core makes the S03 decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
from collections import deque
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .. import faults
from ..apps.base import DeviceApp
from ..crypto import fingerprint
from ..protocol.constants import MAX_APP_DATA, MAX_FRAME
from ..protocol.device import DeviceConfig, DeviceProtocol
from ..protocol.errors import ErrorCode, KeyseedError
from ..protocol.events import (
    AppDataReceived,
    ConnectionClosed,
    Event,
    ExchangeFailed,
    ExchangeStarted,
    HandshakeComplete,
    KeyEstablished,
    PersistState,
    RekeyOrdered,
    SeedStored,
)
from ..protocol.records import Keystore
from ..protocol.states import DeviceState
from .config import DeviceAgentConfig
from .keystore import KeystoreFile
from .pairs import PairEndpoint

log = logging.getLogger("keyseed.device")

#: Application messages kept while offline or rekeying (the oldest go first).
OUTBOX = 256
#: Largest WebSocket message accepted from the server (the core caps frames lower).
WS_MAX_SIZE = 4 * MAX_FRAME

_EOF = object()
_RUN = object()


class DeviceAgent:
    """One device: its keystore, its connection to the server, its app.

    Args:
        config: the agent's configuration.
        store: the keystore file (locked by the caller).
        keystore: the keystore as loaded from ``store``.
        app: the device app (None: no application traffic).
        protocol_config: tunables of the core (tests shorten its timeouts).
    """

    def __init__(
        self,
        config: DeviceAgentConfig,
        store: KeystoreFile,
        keystore: Keystore,
        app: DeviceApp | None = None,
        *,
        protocol_config: DeviceConfig | None = None,
    ) -> None:
        #: Configuration.
        self.config = config
        #: Where the keystore is persisted.
        self.store = store
        #: The keystore as last written to ``store`` (what a crash would leave).
        self.ks = keystore
        #: The device app, if any.
        self.app = app
        # Core tunables for every connection.
        self._pconfig = protocol_config
        # Core of the live connection (None between connections).
        self._proto: DeviceProtocol | None = None
        # Inputs for the live connection: frames, _EOF, and _RUN (local work to do).
        self._queue: asyncio.Queue[object] | None = None
        # Application data waiting for an open connection.
        self._outbox: deque[bytes] = deque(maxlen=OUTBOX)
        # A 301 waiting to reach the live core.
        self._rekey_wanted = False
        # Consecutive failed connection attempts (for the backoff).
        self._failures = 0
        #: Wall time of the last key exchange this process completed (status only).
        self.last_exchange: float | None = None
        #: Whether a connection is open and authenticated under a key.
        self.connected = False
        #: Connections opened since start.
        self.connections = 0
        # Set whenever something changes (tests and the setup endpoint wait on it).
        self.changed = asyncio.Event()
        #: Pair keys with other devices (docs/protocol.md section 12), once attach_pairs().
        self.pairs: PairEndpoint | None = None
        # TLS context of a wss:// server (verifies its certificate against --ca), else None.
        self._tls = config.tls_context()
        if self._tls is not None and config.tls_reduced:
            # Over verified TLS, and agreed: the core may ask for the TLS reduction.
            self._pconfig = dataclasses.replace(
                protocol_config or DeviceConfig(), tls_reduced_ok=True
            )
        #: Why the last connection attempt failed, if it did (status; never a secret).
        self.last_error: str | None = None

    # -- public API -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff, until cancelled."""
        if self.config.rekey_on_start and self.ks.key is not None and not self.ks.rekey_requested:
            log.info("rekey on start")
            self._save(self.ks.with_(rekey_requested=True))
        app_task = None
        if self.app is not None:
            app_task = asyncio.create_task(self.app.run(self))
        try:
            while True:
                try:
                    await self._connection()
                except asyncio.CancelledError:
                    raise
                except ssl.SSLCertVerificationError as exc:
                    self.last_error = (
                        f"server certificate refused: {exc.verify_message or 'does not verify'}"
                        " (check --ca and the server URL's host name)"
                    )
                    log.error("%s", self.last_error)
                except ssl.SSLError as exc:
                    self.last_error = f"TLS failed: {exc.reason or type(exc).__name__}"
                    log.warning("%s", self.last_error)
                except OSError as exc:
                    log.warning("connection failed: %s", exc.strerror or type(exc).__name__)
                except Exception as exc:
                    log.warning("connection failed: %s", _describe(exc))
                finally:
                    self._proto = None
                    self._queue = None
                    self.connected = False
                    self.changed.set()
                if not self.connected:
                    self._failures += 1
                await asyncio.sleep(self._backoff())
        finally:
            if app_task is not None:
                app_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await app_task

    def request_rekey(self) -> dict[str, Any]:
        """301 from the setup PC: rekey as soon as possible (durable before this returns when
        offline; through the live core, which persists it first, when connected).

        Returns:
            The 302 answer: epoch at the time of the order and whether the device is online.
        """
        log.info("< 301")
        if self._queue is not None and self._proto is not None:
            self._rekey_wanted = True
            self._poke()
        elif not self.ks.rekey_requested:
            self._save(self.ks.with_(rekey_requested=True))
        return {"message": 302, "accepted": True, "epoch": self.ks.epoch, "online": self.connected}

    def send(self, data: bytes) -> None:
        """AppLink: queue ``data`` for the server, sealed under the current key."""
        if len(data) > MAX_APP_DATA:
            raise ValueError("application message over 16 KiB")
        self._outbox.append(bytes(data))
        self._poke()

    def attach_pairs(self, pairs: PairEndpoint) -> None:
        """Carry ``pairs``' messages (501-506) on every connection from now on."""
        self.pairs = pairs
        pairs.wake = self._poke

    def status(self) -> dict[str, Any]:
        """What the setup endpoint reports: never a secret."""
        ks = self.ks
        proto = self._proto
        if proto is not None and ks.key is not None:
            key_age: float | None = proto.key_age(time.monotonic())
        else:
            key_age = ks.key_age if ks.key is not None else None
        out: dict[str, Any] = {
            "device_id": ks.device_id,
            "suite": ks.suite,
            "enrolled": ks.key is not None,
            "epoch": ks.epoch,
            "key_age_s": None if key_age is None else round(key_age, 3),
            "messages": ks.messages,
            "connected": self.connected,
            "exchange_in_flight": ks.pending is not None or bool(ks.candidates),
            "rekey_requested": ks.rekey_requested or self._rekey_wanted,
            "has_seed": ks.seed is not None,
            "last_exchange": self.last_exchange,
            "server_key_fingerprint": fingerprint(ks.suite, ks.server_key).hex(),
            "tls": self._tls is not None,
            "tls_reduced": self._proto is not None and self._proto.tls_reduced,
            "last_error": self.last_error,
        }
        if self.app is not None:
            out["app"] = self.app.status()
        return out

    # -- one connection -------------------------------------------------------------------

    async def _connection(self) -> None:
        url = self.config.url
        log.info("connecting to %s", url)
        ws = await connect(
            url,
            max_size=WS_MAX_SIZE,
            compression=None,
            open_timeout=self.config.connect_timeout,
            close_timeout=2,
            ssl=self._tls,
        )
        self.connections += 1
        self.last_error = None
        queue: asyncio.Queue[object] = asyncio.Queue()
        proto = DeviceProtocol(self.ks, now=time.monotonic(), config=self._pconfig)
        self._proto, self._queue = proto, queue
        reader = asyncio.create_task(self._read(ws, queue))
        try:
            proto.connect(time.monotonic())
            await self._after_input(proto, ws)
            while proto.state is not DeviceState.CLOSED:
                timer = proto.get_timer()
                timeout = None if timer is None else max(0.0, timer - time.monotonic())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    proto.handle_timer(time.monotonic())
                else:
                    if item is _EOF:
                        proto.receive_eof()
                    elif isinstance(item, bytes):
                        faults.crash_frame("device.recv", item)
                        proto.receive_message(item, time.monotonic())
                    elif isinstance(item, str):
                        proto.fail(ErrorCode.MALFORMED, "text frame")
                await self._after_input(proto, ws)
        except asyncio.CancelledError:
            # Stopping: a normal CLOSE, and the key age and message count written.
            with contextlib.suppress(Exception):
                if proto.state is not DeviceState.CLOSED:
                    proto.close()
                    await asyncio.shield(self._after_input(proto, ws))
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            with contextlib.suppress(Exception):
                await ws.close()

    async def _read(self, ws: ClientConnection, queue: asyncio.Queue[object]) -> None:
        try:
            async for message in ws:
                await queue.put(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            code = ws.close_code
            if code not in (None, 1000):
                log.info("server closed the connection: %s", code)
            queue.put_nowait(_EOF)

    async def _after_input(self, proto: DeviceProtocol, ws: ClientConnection) -> None:
        """Persist, send, close, dispatch; again while dispatching made more output."""
        for _ in range(64):
            events = proto.events_received()
            self._commit(events)
            for frame in proto.messages_to_send():
                try:
                    await ws.send(frame)
                except websockets.ConnectionClosed:
                    break
                faults.crash_frame("device.sent", frame)
            if proto.close_expected():
                with contextlib.suppress(Exception):
                    await ws.close()
            await self._dispatch(events)
            if not self._local_work(proto) and not events:
                return

    def _commit(self, events: list[Event]) -> None:
        """Durable first: every PersistState reaches the file before anything is sent. A
        failed write raises, and the connection is dropped without sending."""
        for ev in events:
            if isinstance(ev, PersistState):
                self._save(ev.keystore)

    def _save(self, ks: Keystore) -> None:
        faults.crash_point("device.before_persist")
        self.store.save(ks)
        self.ks = ks

    def _local_work(self, proto: DeviceProtocol) -> bool:
        """Hand queued local orders and application data to the core. Returns whether it
        did anything (the core may have output)."""
        now = time.monotonic()
        did = False
        if self._rekey_wanted and proto.state is not DeviceState.CLOSED:
            self._rekey_wanted = False
            proto.request_rekey(now)
            did = True
        while self._outbox and proto.state is DeviceState.OPEN:
            try:
                proto.send_app(self._outbox[0], now)
            except KeyseedError as exc:
                # Past the hard limit, or the channel is re-handshaking: keep it for later.
                log.info("application data held: %s", type(exc).__name__)
                break
            self._outbox.popleft()
            did = True
        if self.pairs is not None and self.pairs.flush(proto, now):
            did = True
        return did

    async def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if self.pairs is not None:
                self.pairs.on_event(ev)  # pair messages (5xx) only; the rest it ignores
            if isinstance(ev, HandshakeComplete):
                log.info("< HELLO_ACK epoch=%d authenticated=%s", ev.epoch, ev.authenticated)
                if ev.authenticated:
                    self._open()
            elif isinstance(ev, ExchangeStarted):
                log.info("> 203 epoch=%d enrolment=%s", ev.epoch, ev.enrolment)
            elif isinstance(ev, ExchangeFailed):
                log.info("< 204 NG epoch=%d", ev.epoch)
            elif isinstance(ev, KeyEstablished):
                self.last_exchange = time.time()
                log.info("key established epoch=%d sas=%s", ev.epoch, ev.sas)
                if ev.enrolment:
                    self._open()  # the enrolment connection is authenticated from here on
            elif isinstance(ev, SeedStored):
                log.info("< 206 epoch=%d (seed stored)", ev.epoch)
            elif isinstance(ev, RekeyOrdered):
                log.info("< 403 epoch=%d", ev.epoch)
            elif isinstance(ev, AppDataReceived):
                if self.app is not None:
                    try:
                        await self.app.on_message(ev.data)
                    except Exception:
                        log.exception("device app failed on a message")
            elif isinstance(ev, ConnectionClosed):
                self.connected = False
                log.info(
                    "connection closed: %s%s", ev.code.name, " (by server)" if ev.by_peer else ""
                )
            self.changed.set()

    def _open(self) -> None:
        if not self.connected:
            self.connected = True
            self._failures = 0
            if self.app is not None:
                self.app.on_connected()
            if self.pairs is not None:
                self.pairs.on_open()

    def _poke(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(_RUN)

    def _backoff(self) -> float:
        """Exponential backoff with jitter: uniform in [d/2, d], d doubling up to the cap."""
        if self._failures == 0:
            return random.uniform(0, self.config.backoff_initial)  # noqa: S311 - jitter only
        delay = min(
            self.config.backoff_max, self.config.backoff_initial * 2 ** min(self._failures, 30)
        )
        return random.uniform(delay / 2, delay)  # noqa: S311 - jitter only


def _describe(exc: BaseException) -> str:
    """An exception's type (and a short message for our own errors): never a secret."""
    if isinstance(exc, KeyseedError):
        return f"{type(exc).__name__} ({exc.code.name})"
    return type(exc).__name__


__all__ = ["OUTBOX", "DeviceAgent"]
