"""keyseed.server.wire
~~~~~~~~~~~~~~~~~~~~~~

The device listener's WebSocket layer: an :class:`asyncio.Protocol` that uvicorn hands every
WebSocket upgrade of the device listener to (its ``ws`` protocol class), speaking WebSocket
with the sans-I/O ``websockets.server.ServerProtocol`` and passing whole binary messages to
a :class:`~keyseed.server.device_channel.DeviceConnection`.

uvicorn still owns the socket, the HTTP parsing, TLS and the other routes (``/v1/keys``,
``/healthz``). What this layer leaves out is ASGI: a message reaches the connection in the
callback that read it, and a reply is written in the call that makes it, where uvicorn's
ASGI WebSocket adds a queue, an event and a task hop on each side and keeps a task, a queue
and an application coroutine alive for every idle device (the benchmark figures of
``docs/benchmarks.md``). An idle device here is this object, the WebSocket parser and the
connection's core; no task runs until a frame arrives.

Only ``/v1/device`` is served; any other WebSocket path is refused with HTTP 404 before the
upgrade. The admission limits of :mod:`keyseed.server.ratelimit` run on the upgrade request:
a refused connection is accepted and closed at once with ``4000 + RATE_LIMITED``, so a device
sees the same typed code as for any other failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol as WebSocketProtocol

from ..protocol.constants import MAX_FRAME
from ..protocol.errors import ErrorCode
from .device_channel import TEXT, DeviceConnection

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("keyseed.server.wire")

#: The one path this layer serves.
DEVICE_PATH = "/v1/device"
#: Transport cap on one WebSocket message. Frames up to this size reach the core, which
#: refuses anything over its own caps (4 KiB before the handshake, 64 KiB after) with
#: CLOSE(FRAME_TOO_LARGE); bigger ones are closed by the WebSocket layer (1009).
WS_MAX_SIZE = 4 * MAX_FRAME
#: Seconds a closing connection waits for the peer's close frame or TCP close before the
#: transport is closed regardless.
CLOSE_TIMEOUT = 5.0
_CLOSE_RATE_LIMITED = 4000 + int(ErrorCode.RATE_LIMITED)


class DeviceWire(asyncio.Protocol):
    """One device's WebSocket, from the upgrade request to the TCP close."""

    __slots__ = (
        "_close_timer",
        "_conn",
        "_drain",
        "_frags",
        "_ip",
        "_rt",
        "_server_state",
        "_transport",
        "_we_closed",
        "_ws",
    )

    def __init__(self, rt: Runtime, server_state: Any) -> None:
        self._rt = rt
        # uvicorn's registry of open connections: its shutdown closes what is left in it.
        self._server_state = server_state
        self._ws = WebSocketProtocol(max_size=WS_MAX_SIZE, logger=log)
        self._transport: asyncio.Transport | None = None
        self._conn: DeviceConnection | None = None
        self._ip = ""
        # Fragments of a message in progress (None: none in progress).
        self._frags: list[bytes] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Set while the transport has paused writing; done when it resumes.
        self._drain: asyncio.Future[None] | None = None
        # Whether this side started the closing handshake (messages after it are dropped).
        self._we_closed = False

    # -- what the connection calls ---------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether the transport is TLS (``wss://``) terminated by this server."""
        t = self._transport
        return t is not None and t.get_extra_info("sslcontext") is not None

    @property
    def ip(self) -> str:
        """The peer's address (the admission limits count by it)."""
        return self._ip

    def send(self, frame: bytes) -> bool:
        """One binary message; False when the WebSocket can no longer send."""
        try:
            self._ws.send_binary(frame)
        except InvalidState:
            return False
        self._flush()
        return True

    @property
    def paused(self) -> bool:
        """Whether the transport has paused writing (:meth:`drained` then waits)."""
        return self._drain is not None

    async def drained(self) -> None:
        """Until the transport takes writes again (at once unless it paused us)."""
        if self._drain is not None:
            await asyncio.shield(self._drain)

    def close(self, code: int) -> None:
        """Start the closing handshake with ``code`` (idempotent)."""
        if self._ws.state is State.OPEN:
            self._we_closed = True
            self._ws.send_close(code)
            self._flush()
            self._closing()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        self._flush()  # pongs and the close handshake's answers
        for event in events:
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Request):
                self._on_request(event)
        if ws.close_expected():
            self._closing()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None  # close the transport: a WebSocket never writes after the peer's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.receive_eof()  # idempotent; the state is CLOSED from here on
        self._server_state.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.feed_eof()

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's shutdown, for a connection still open once the device connections were
        closed normally (:meth:`keyseed.server.run.RunningServer.stop`): going away."""
        if self._ws.state is State.OPEN:
            self._we_closed = True
            self._ws.send_close(1001)
            self._flush()
        if self._transport is not None:
            self._transport.close()

    # -- inside ----------------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        """The upgrade request: accept it on ``/v1/device`` (admission first) or refuse it."""
        ws = self._ws
        path = request.path.partition("?")[0]
        if path != DEVICE_PATH:
            response = ws.reject(404, "no such route\n")
            ws.send_response(response)
            self._flush()
            return
        response = ws.accept(request)
        ws.send_response(response)
        self._flush()
        if ws.state is not State.OPEN:
            return  # not a valid upgrade: websockets answered 400 or 426
        rt = self._rt
        limit = rt.limits.admit(
            self._ip, open_now=len(rt.connections), cap=rt.config.max_connections
        )
        if limit is not None:
            self.close(_CLOSE_RATE_LIMITED)
            return
        conn = self._conn = DeviceConnection(rt, self)
        rt.connections.add(conn)
        rt.limits.add(self._ip, conn)
        conn.start()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = bytes(frame.data)  # the same object when it is bytes already
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if frame.fin:
                self._deliver(data if opcode is Opcode.BINARY else TEXT)
            else:
                self._frags = [b"t" if opcode is Opcode.TEXT else b"b", data]
        elif opcode is Opcode.CONT:
            frags = self._frags
            if frags is None:
                return  # websockets refuses a continuation without a start (1002)
            frags.append(data)
            if frame.fin:
                self._frags = None
                self._deliver(b"".join(frags[1:]) if frags[0] == b"b" else TEXT)
        elif opcode is Opcode.CLOSE:
            # The peer closes: the core sees the end of the stream (websockets answered).
            conn = self._conn
            if conn is not None:
                conn.feed_eof()

    def _deliver(self, item: bytes | str) -> None:
        # A message read together with the peer's close frame (websockets has answered that
        # close already) was sent before it and still counts; after our own close, nothing
        # does.
        conn = self._conn
        if conn is not None and not self._we_closed:
            conn.feed(item)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                # The server's end of the closing handshake: half-close, the peer closes.
                with contextlib.suppress(Exception):
                    transport.write_eof()
            else:
                transport.close()

    def _closing(self) -> None:
        if self._close_timer is None and self._transport is not None:
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self._close_expired
            )

    def _close_expired(self) -> None:
        self._close_timer = None
        if self._transport is not None:
            self._transport.abort()


def wire_factory(rt: Runtime) -> Callable[..., DeviceWire]:
    """uvicorn's ``ws`` protocol class for the device listener: it calls this with its
    config and server state for every upgrade request."""

    def make(config: Any, server_state: Any, app_state: Any = None, **_: Any) -> DeviceWire:
        return DeviceWire(rt, server_state)

    return make


__all__ = ["CLOSE_TIMEOUT", "DEVICE_PATH", "WS_MAX_SIZE", "DeviceWire", "wire_factory"]
