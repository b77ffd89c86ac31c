"""keyseed.server.device_channel
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

``/v1/device``: one device connection (a :class:`~keyseed.server.wire.DeviceWire` WebSocket)
driving one :class:`~keyseed.protocol.server.ServerProtocol`. The driver is thin and runs the
same loop after every input (a frame, the end of the stream, a timer, an admin action)::

    load records the core asks for -> commit StoreRecord compare-and-sets (store_failed() on
    a lost one) -> send messages_to_send() -> close if close_expected() -> dispatch the other
    events (hub, metrics, audit, the server app) -> re-arm the timer from get_timer()

Durable changes are committed *before* the messages that depend on them leave (rule 1 and
rule 6). Everything the core does for one connection happens under that connection's lock,
so an admin action (403, 207, a revocation) never interleaves with a frame half processed.

Inputs arrive from the wire's callbacks (:meth:`DeviceConnection.feed`) into a small inbox,
drained in the callback itself until an input has to wait (for the database); only then does
the rest continue in a task (:mod:`keyseed.server.eager`), so an idle device costs no task.

Bad input never crashes anything: the core turns it into CLOSE(code); a text frame is
MALFORMED; a frame over the transport cap is closed by the WebSocket layer (1009); a
connection that stays silent past the idle timeout is closed with TIMEOUT. The WebSocket close
code is 1000 for a normal close and ``4000 + ErrorCode`` for a failure, so a client sees the
same code in the CLOSE frame and in the close handshake.

Crash points (:mod:`keyseed.faults`, armed only by ``KEYSEED_CRASH_AT``, free otherwise):
``server.recv.<type>`` before a frame reaches the core, ``server.send.<type>`` and
``server.sent.<type>`` around each frame written to the socket. Since every commit precedes
the send, ``server.send.206`` is "committed, 206 not sent".
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .. import faults
from ..protocol.errors import ErrorCode, NgCause
from ..protocol.events import (
    AppDataReceived,
    AuditEntry,
    ConnectionClosed,
    Event,
    ExchangeExpiredEvent,
    ExchangeFailed,
    HandshakeComplete,
    KeyEstablished,
    PeerConfirmed,
    StoreRecord,
)
from ..protocol.pair import PairMessageReceived
from ..protocol.records import DeviceRecord
from ..protocol.server import ServerProtocol
from ..protocol.states import ServerState
from .eager import start_eagerly
from .metrics import CAUSE_EXPIRED
from .pairs import pair_service

if TYPE_CHECKING:
    from .runtime import Runtime
    from .wire import DeviceWire

log = logging.getLogger("keyseed.server.device")

T = TypeVar("T")

#: WebSocket close code of a failure: 4000 + ErrorCode.
WS_CODE_BASE = 4000
_EOF = object()
#: A text message, as :meth:`DeviceConnection.feed` receives it (a binary one is ``bytes``).
TEXT = "text"


def ws_close_code(code: ErrorCode) -> int:
    """The WebSocket close code that carries ``code``."""
    return 1000 if code is ErrorCode.NORMAL else WS_CODE_BASE + int(code)


class DeviceConnection:
    """One device WebSocket and the core that serves it."""

    def __init__(self, rt: Runtime, wire: DeviceWire) -> None:
        # Shared server state (context, store, hub, metrics, the server app).
        self.rt = rt
        # The WebSocket.
        self.wire = wire
        # The sans-I/O core of this connection.
        # The core reduces a connection for TLS only where the server itself sees TLS.
        self.proto = ServerProtocol(rt.ctx, now=time.monotonic(), tls=wire.tls)
        # Serialises frames, timers and admin actions on this core.
        self.lock = asyncio.Lock()
        # 207 pings the admin asked for: token -> future of their PeerConfirmed.
        self.pings: dict[bytes, asyncio.Future[PeerConfirmed]] = {}
        # Set once the transport is closed (or given up on).
        self.closed = False
        # Device ID once a key is proven on this connection (the hub knows it by that).
        self.device_id: str | None = None
        # Monotonic deadline of the idle timeout.
        self._idle_deadline = time.monotonic() + rt.config.idle_timeout
        # The record as this connection last wrote it. The core asks for the record before
        # every step; while nobody else has written it, this *is* the stored record, and a
        # reload would cost a transaction. If somebody else did write it, the core's next
        # compare-and-set loses and nothing that depended on the stale copy is sent (the
        # connection closes, as it would on any lost race). Admin actions come through
        # call_with_record, which reloads.
        self._own: DeviceRecord | None = None
        # Database clock minus time.monotonic(), from this connection's last load.
        self._db_offset = 0.0
        # The loop timer of the next deadline (see _arm).
        self._timer: asyncio.TimerHandle | None = None
        # Inputs not yet run (frames, text, the end of the stream), and the task running
        # them; both exist only while there is work.
        self._inbox: list[object] = []
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._eof = False

    @property
    def pending(self) -> bool:
        """Whether this connection holds an exchange waiting for its 205."""
        return self.proto.state is ServerState.PENDING_205

    # -- the connection's life ------------------------------------------------------------

    def start(self) -> None:
        """The WebSocket is open: start the idle timeout."""
        self._arm()

    def feed(self, item: bytes | str) -> None:
        """A whole message from the wire: bytes (binary) or :data:`TEXT`."""
        if not self._eof:
            self._push(item)

    def feed_eof(self) -> None:
        """The peer closed (a close frame or the TCP close); idempotent."""
        if not self._eof:
            self._eof = True
            self._push(_EOF)

    def _push(self, item: object) -> None:
        self._inbox.append(item)
        if not self._busy:
            # In the wire's callback: a task only if the input has to wait (the database).
            self._task = start_eagerly(self._run())

    async def _run(self) -> None:
        """Drain the inbox in order; it ends (and its task, if it needed one, is forgotten)
        when the inbox is empty."""
        self._busy = True
        inbox = self._inbox
        try:
            while inbox:
                item = inbox.pop(0)
                if item is _EOF:
                    await self._on_item(_EOF)
                    await self._shutdown()
                    inbox.clear()
                else:
                    await self._on_item(item)
        except Exception:
            # Never into the transport's callback: that would tear the socket down unlogged.
            log.exception("device connection failed device=%s", self.device_id or "-")
            inbox.clear()
            await self._close_transport(ws_close_code(ErrorCode.INTERNAL))
        finally:
            self._busy = False
            self._task = None

    def _arm(self) -> None:
        """Make sure the loop timer fires no later than the earlier of the idle timeout and
        the core's timer. A timer already set earlier stays: firing early costs one wakeup
        that re-arms (the core runs only deadlines that have passed), whereas moving the
        timer on every frame, as the idle timeout moves, cost a cancel and a heap push each.
        """
        if self.closed:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        timer = self.proto.get_timer()
        deadline = min(self._idle_deadline, math.inf if timer is None else timer)
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        # time.monotonic() is the loop's clock too; the core's times are on it.
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # Held by the loop's set of tasks (Runtime.spawn): it keeps only weak references.
        self.rt.spawn(self._on_deadline())

    async def _on_item(self, item: object) -> None:
        async with self.lock:
            now = time.monotonic()
            if item is _EOF:
                self.proto.receive_eof()
                self.closed = True
            elif isinstance(item, bytes):
                self._idle_deadline = now + self.rt.config.idle_timeout
                faults.crash_frame("server.recv", item)
                self.proto.receive_message(item, now)
            else:
                # One protocol message per *binary* frame; text is not this protocol.
                assert item == TEXT
                self.proto.fail(ErrorCode.MALFORMED, "text frame")
            await self._after_input()

    async def _on_deadline(self) -> None:
        async with self.lock:
            if self.closed:
                return
            now = time.monotonic()
            if now >= self._idle_deadline:
                self.proto.fail(ErrorCode.TIMEOUT, "idle")
            else:
                self.proto.handle_timer(now)
            await self._after_input()

    async def call(self, action: Callable[[ServerProtocol, float], T]) -> T:
        """Run an admin action on the core (403, 207, a newer record) and flush its output.

        Raises:
            whatever ``action`` raises (LocalProtocolError when the connection cannot send).
        """
        async with self.lock:
            if self.closed:
                raise ConnectionError("connection closed")
            try:
                return action(self.proto, time.monotonic())
            finally:
                await self._after_input()

    async def call_with_record(
        self, action: Callable[[ServerProtocol, DeviceRecord | None, float, float], T]
    ) -> T:
        """:meth:`call`, with the device's record loaded under the connection's lock: the
        record handed to the core is then never older than one this connection wrote itself
        (an older one would fence it by its stale connection generation).

        Raises:
            ConnectionError: the connection is closed or no device is attached to it; and
            what the store or ``action`` raises.
        """
        async with self.lock:
            if self.closed or self.device_id is None:
                raise ConnectionError("connection closed")
            self._own = None
            record, db_now = await self.rt.store.load(self.device_id)
            try:
                return action(self.proto, record, db_now, time.monotonic())
            finally:
                await self._after_input()

    async def close_now(self) -> None:
        """Close the connection normally (server shutdown)."""
        async with self.lock:
            if not self.closed:
                self.proto.close()
                await self._after_input()

    # -- the driver loop ------------------------------------------------------------------

    async def _after_input(self) -> None:
        """Commit, send, close, dispatch; repeated while dispatching produces more output."""
        for _ in range(16):
            events = await self._commit()
            await self._send(self.proto.messages_to_send())
            if self.proto.close_expected() and not self.closed:
                await self._close(events)
            more = await self._dispatch(events)
            if not more:
                break
        self._arm()

    async def _commit(self) -> list[Event]:
        """Records in, durable events committed; returns every event of the round."""
        store = self.rt.store
        events: list[Event] = []
        try:
            while True:
                while (device_id := self.proto.wants_record()) is not None:
                    own = self._own
                    if own is not None and own.device_id == device_id:
                        now = time.monotonic()
                        self.proto.provide_record(own, now + self._db_offset, now)
                        continue
                    record, db_now = await store.load(device_id)
                    now = time.monotonic()
                    self._db_offset = db_now - now
                    self.proto.provide_record(record, db_now, now)
                batch = self.proto.events_received()
                if not batch:
                    return events
                for ev in batch:
                    if isinstance(ev, StoreRecord):
                        self._own = None
                        if await store.cas(ev):
                            self._own = ev.record
                        else:
                            log.info("compare-and-set lost device=%s", ev.record.device_id)
                            self.proto.store_failed()
                    events.append(ev)
        except Exception:
            # The database failed: nothing that depended on it may be sent.
            log.exception("storage failed")
            self.proto.messages_to_send()
            self.proto.events_received()
            self.rt.metrics.frame_error(ErrorCode.INTERNAL)
            await self._close_transport(ws_close_code(ErrorCode.INTERNAL))
            return events

    async def _send(self, frames: list[bytes]) -> None:
        if self.closed or not frames:
            return
        wire = self.wire
        for frame in frames:
            faults.crash_frame("server.send", frame)
            if not wire.send(frame):
                self.closed = True
                return
            faults.crash_frame("server.sent", frame)
        if wire.paused:
            await wire.drained()

    async def _close(self, events: list[Event]) -> None:
        code = ErrorCode.NORMAL
        for ev in events:
            if isinstance(ev, ConnectionClosed) and not ev.by_peer:
                code = ev.code
        await self._close_transport(ws_close_code(code))

    async def _close_transport(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.wire.close(code)

    async def _dispatch(self, events: list[Event]) -> bool:
        """Act on the informational events. Returns whether the core has new output."""
        rt = self.rt
        more = False
        for ev in events:
            if isinstance(ev, HandshakeComplete):
                log.info(
                    "< HELLO device=%s epoch=%d auth=%s", ev.device_id, ev.epoch, ev.authenticated
                )
                if ev.authenticated:
                    self._attach(ev.device_id)
            elif isinstance(ev, KeyEstablished):
                log.info("> 206 device=%s epoch=%d", ev.device_id, ev.epoch)
                rt.metrics.exchange_ok()
                self._attach(ev.device_id)
            elif isinstance(ev, ExchangeFailed):
                cause = ev.cause or NgCause.BUSY
                log.info("> 204 NG device=%s epoch=%d %s", ev.device_id, ev.epoch, cause.name)
                rt.metrics.exchange_ng(cause)
                committed = any(
                    a.kind == "204_ng" and a.device_id == ev.device_id
                    for st in events
                    if isinstance(st, StoreRecord)
                    for a in st.audit
                )
                if not committed:
                    # No record changed (unknown ID, revoked, window closed ...): the cause
                    # still goes to the audit log, rate-limited so a flood cannot grow it.
                    await rt.limited_audit(
                        AuditEntry(
                            kind="204_ng",
                            device_id=ev.device_id,
                            epoch=ev.epoch,
                            cause=int(cause),
                        )
                    )
            elif isinstance(ev, ExchangeExpiredEvent):
                log.info("S27 expired device=%s epoch=%d", ev.device_id, ev.epoch)
                rt.metrics.exchange_ng(CAUSE_EXPIRED)
            elif isinstance(ev, PeerConfirmed):
                fut = self.pings.pop(ev.token, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
            elif isinstance(ev, AppDataReceived):
                more |= await self._app(ev)
            elif isinstance(ev, PairMessageReceived):
                more |= await pair_service(rt).on_message(self, ev)
            elif isinstance(ev, ConnectionClosed):
                self._on_closed(ev)
        return more

    async def _app(self, ev: AppDataReceived) -> bool:
        try:
            reply = await self.rt.app.handle(ev.device_id, ev.data)
        except Exception:
            log.exception("server app failed device=%s", ev.device_id)
            return False
        if reply is None or self.closed:
            return False
        try:
            self.proto.send_app(reply, time.monotonic())
        except Exception as exc:  # the key is past its limit, the connection is closing ...
            log.info("app reply not sent device=%s: %s", ev.device_id, type(exc).__name__)
            return False
        return True

    def _on_closed(self, ev: ConnectionClosed) -> None:
        device_id = self.proto.device_id
        if not ev.by_peer and ev.code is not ErrorCode.NORMAL:
            self.rt.metrics.frame_error(ev.code)
            log.info("> CLOSE %s device=%s", ev.code.name, device_id or "-")
            if ev.code is ErrorCode.HANDSHAKE_REFUSED and device_id is not None:
                self.rt.spawn_audit(
                    AuditEntry(
                        kind="handshake_refused",
                        device_id=device_id,
                        epoch=0,
                        cause=int(ev.code),
                    )
                )
        for fut in self.pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self.pings.clear()

    def _attach(self, device_id: str) -> None:
        if self.device_id is None:
            self.device_id = device_id
            self.rt.hub.attach(device_id, self)

    async def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self.lock:
            if self.proto.state is not ServerState.CLOSED:
                self.proto.receive_eof()
                await self._dispatch(self.proto.events_received())
            await self._close_transport(1000)
        if self.device_id is not None:
            self.rt.hub.detach(self.device_id, self)
        self.rt.connections.discard(self)
        self.rt.limits.discard(self.wire.ip, self)


__all__ = ["TEXT", "WS_CODE_BASE", "DeviceConnection", "ws_close_code"]
