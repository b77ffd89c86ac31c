"""A minimal test device: the real device core driven over a real WebSocket.

It follows the driver loop every keyseed driver follows (persist the durable events, send the
messages, re-arm the timer), with two hooks the bad-input tests need: every frame the device
sent is kept (for replays), and outgoing frames of chosen types can be held back instead of
sent (a 205 delivered after S27, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from keyseed.loopback import DeviceDisk
from keyseed.protocol import DeviceProtocol
from keyseed.protocol.device import DeviceConfig
from keyseed.protocol.events import Event
from keyseed.protocol.messages import MsgType, decode_frame

#: Generous bound on waiting for the server: a hang fails the test instead of blocking it.
WAIT = 15.0


def frame_type(data: bytes) -> MsgType:
    return decode_frame(data, max_size=1 << 20).type


class TestDevice:
    """One device: its disk (keystore) survives connections."""

    __test__ = False

    def __init__(self, url: str, disk: DeviceDisk, config: DeviceConfig | None = None) -> None:
        self.url = url
        self.disk = disk
        self.config = config
        self.proto: DeviceProtocol | None = None
        self.ws: ClientConnection | None = None
        #: Every event of every connection.
        self.events: list[Event] = []
        #: Every frame sent on the current connection.
        self.sent: list[bytes] = []
        #: Frame types to hold back instead of sending.
        self.hold: set[MsgType] = set()
        self.held: list[bytes] = []
        #: Frames received on the current connection.
        self.received: list[bytes] = []

    @property
    def keystore(self) -> Any:
        return self.disk.keystore

    async def connect(self) -> None:
        """Open a connection (a fresh core from the keystore as last persisted) and start
        driving it in the background."""
        self.ws = await websockets.connect(self.url, max_size=None, compression=None)
        now = time.monotonic()
        self.proto = DeviceProtocol(self.disk.keystore, now=now, config=self.config)
        self.sent, self.received, self.held = [], [], []
        self._changed = asyncio.Event()
        self.proto.connect(now)
        await self.flush()
        self._task = asyncio.create_task(self._drive(self.proto, self.ws))

    async def _drive(self, proto: DeviceProtocol, ws: ClientConnection) -> None:
        """Frames and timers into the core, until the connection closes."""
        while True:
            timer = proto.get_timer()
            wait = None if timer is None else max(timer - time.monotonic(), 0.0)
            try:
                data = await asyncio.wait_for(ws.recv(), wait)
            except TimeoutError:
                proto.handle_timer(time.monotonic())
                await self.flush()
            except websockets.ConnectionClosed:
                proto.receive_eof()
                await self.flush()
                self._changed.set()
                return
            else:
                assert isinstance(data, bytes)
                self.received.append(data)
                proto.receive_message(data, time.monotonic())
                await self.flush()
            self._changed.set()

    async def flush(self) -> None:
        assert self.proto is not None and self.ws is not None
        events = self.proto.events_received()
        self.disk.commit(events)  # durable first
        self.events.extend(events)
        for data in self.proto.messages_to_send():
            if frame_type(data) in self.hold:
                self.held.append(data)
                continue
            self.sent.append(data)
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(data)
        if self.proto.close_expected():
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.close()

    async def send_raw(self, data: bytes | str) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def send_app(self, data: bytes) -> None:
        assert self.proto is not None
        self.proto.send_app(data, time.monotonic())
        await self.flush()

    async def until(self, pred: Callable[[Event], bool], start: int = 0) -> Event:
        """Wait until an event from index ``start`` on satisfies ``pred``."""
        deadline = time.monotonic() + WAIT
        while True:
            for ev in self.events[start:]:
                if pred(ev):
                    return ev
            if self._task.done():
                raise AssertionError(f"connection closed; events {self.events[start:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such event; got {self.events[start:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def closed_code(self) -> int | None:
        """Wait until the server closes the connection; its WebSocket close code."""
        assert self.ws is not None
        await asyncio.wait_for(asyncio.shield(self._task), WAIT)
        return self.ws.close_code

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            await asyncio.wait_for(self._task, WAIT)


async def raw_close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; the close code."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    return ws.close_code
