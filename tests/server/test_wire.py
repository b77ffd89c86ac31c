"""keyseed.server.wire.DeviceWire against a real running server: the upgrade (only
``/v1/device``; other paths 404, bad upgrades 4xx), reassembly of fragmented messages (with
control frames between the fragments), text frames, the closing handshake in both
directions, the close timeout, admission limits, and cleanup of the runtime's and uvicorn's
connection sets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets
from devclient import TestDevice, frame_type, raw_close_code
from servkit import Server, start_at
from test_flows_e2e import enrol, seed_at
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from keyseed.protocol import DeviceProtocol
from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import AppDataReceived
from keyseed.server import wire
from keyseed.server.wire import WS_MAX_SIZE, DeviceWire

T = TypeVar("T")

#: Generous bound on any wait; only a hang reaches it.
WAIT = 15.0
MALFORMED = 4000 + int(ErrorCode.MALFORMED)
FRAME_TOO_LARGE = 4000 + int(ErrorCode.FRAME_TOO_LARGE)
RATE_LIMITED = 4000 + int(ErrorCode.RATE_LIMITED)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def eventually(fn: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """The first truthy result of ``fn``, polled on the event loop (the server runs on it
    too); running out of ``timeout`` fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.02)


def uvicorn_connections(srv: Server) -> set[Any]:
    """The device listener's uvicorn ``server_state.connections``."""
    servers = getattr(srv.running, "_servers", None)
    if not servers:
        pytest.skip("uvicorn's server state is not reachable")
    return servers[0].server_state.connections  # type: ignore[no-any-return]


def wires(srv: Server) -> list[DeviceWire]:
    return [c for c in uvicorn_connections(srv) if isinstance(c, DeviceWire)]


async def all_closed(srv: Server) -> None:
    """Until neither the runtime nor uvicorn holds a device connection."""
    await eventually(
        lambda: not srv.rt.connections and not wires(srv),
        f"connections to close (rt {srv.rt.connections}, uvicorn {wires(srv)})",
    )


async def alive(srv: Server) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{srv.device_http}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def device_path_serves(srv: Server) -> None:
    """``/v1/device`` upgrades and its core answers (a non-frame is MALFORMED)."""
    async with websockets.connect(srv.device_url, open_timeout=WAIT) as ws:
        await ws.send(b"\x00")
        assert await raw_close_code(ws) == MALFORMED


def upgrade(path: str = "/v1/device", *, key: str | None = KEY, version: str = "13") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(response: bytes) -> int:
    head = response.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 "), response
    return int(head.split()[1])


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


class RawClient:
    """A WebSocket client made of websockets' sans-I/O ClientProtocol over asyncio streams:
    frames exactly as the test writes them (fragments, pings between them, several frames
    in one write, no answer to a close)."""

    def __init__(self, url: str) -> None:
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.frames: list[Frame] = []
        self.response: Response | None = None
        self.eof = False

    async def open(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.proto.send_request(self.proto.connect())
        self.flush()
        while self.response is None:
            await self.read()
        assert self.response.status_code == 101, self.response

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)

    async def read(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), WAIT)
        if data:
            self.proto.receive_data(data)
        else:
            self.eof = True
            self.proto.receive_eof()
        for ev in self.proto.events_received():
            if isinstance(ev, Response):
                self.response = ev
            elif isinstance(ev, Frame):
                self.frames.append(ev)

    async def until(self, pred: Callable[[list[Frame]], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not pred(self.frames):
            assert not self.eof, f"closed; frames {self.frames}"
            assert time.monotonic() < deadline, f"frames {self.frames}"
            await self.read()

    async def until_eof(self) -> None:
        with contextlib.suppress(ConnectionError):
            while not self.eof:
                await self.read()

    def close_codes(self) -> list[int]:
        return [int.from_bytes(f.data[:2], "big") for f in self.frames if f.opcode is Opcode.CLOSE]

    def abort(self) -> None:
        self.writer.transport.abort()


class FragmentingDevice(TestDevice):
    """A test device that sends its messages as WebSocket fragments of ``size`` bytes
    (all of them, or only the first one of each connection)."""

    __test__ = False

    def __init__(self, base: TestDevice, size: int, *, first_only: bool = False) -> None:
        super().__init__(base.url, base.disk, base.config)
        self.size = size
        self.first_only = first_only
        #: How many fragments each message went out in.
        self.fragments: list[int] = []

    async def flush(self) -> None:
        assert self.proto is not None and self.ws is not None
        events = self.proto.events_received()
        self.disk.commit(events)
        self.events.extend(events)
        for data in self.proto.messages_to_send():
            fragment = not self.first_only or not self.sent
            self.sent.append(data)
            with contextlib.suppress(websockets.ConnectionClosed):
                parts = list(chunks(data, self.size)) if fragment else [data]
                self.fragments.append(len(parts))
                await self.ws.send(parts if fragment else data)
        if self.proto.close_expected():
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.close()


# -- the upgrade -------------------------------------------------------------------------


class TestUpgrade:
    @pytest.mark.parametrize(
        "path", ["/v1/other", "/v1/device/x", "/v1/devices", "/", "/healthz", "/v1/keys"]
    )
    async def test_other_path_is_404_and_device_path_still_serves(
        self, server: Server, path: str
    ) -> None:
        url = f"ws://127.0.0.1:{server.running.device_port}{path}"
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(url, open_timeout=WAIT):
                pass
        assert info.value.response.status_code == 404
        assert info.value.response.body == b"no such route\n"
        assert not server.rt.connections  # no core was made for it
        await all_closed(server)
        await device_path_serves(server)
        await alive(server)

    async def test_query_string_is_ignored_for_the_route(self, server: Server) -> None:
        async with websockets.connect(server.device_url + "?v=1", open_timeout=WAIT) as ws:
            await eventually(lambda: len(server.rt.connections) == 1, "the connection")
            await ws.send(b"\x00")
            assert await raw_close_code(ws) == MALFORMED

    async def test_plain_get_without_upgrade_is_404(self, server: Server) -> None:
        """/v1/device is no ASGI route: a plain GET reaches the Starlette app, which has no
        such route."""
        async with httpx.AsyncClient(base_url=server.device_http) as c:
            r = await c.get("/v1/device")
            assert r.status_code == 404
            assert r.json()["error"] == "not_found"
            r = await c.post("/v1/device", content=b"x")
            assert 400 <= r.status_code < 500
            assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert not server.rt.connections
        await device_path_serves(server)

    @pytest.mark.parametrize(
        ("request_bytes", "status"),
        [
            (upgrade(key=None), 400),
            (upgrade(key="short"), 400),
            (upgrade(version="8"), 400),
            (upgrade("/v1/other", key=None), 404),  # the route is checked first
            (upgrade().replace(b"GET ", b"POST ", 1), 405),
        ],
        ids=["no-key", "bad-key", "bad-version", "no-key-other-path", "post"],
    )
    async def test_bad_upgrade_is_refused_and_closed(
        self, server: Server, request_bytes: bytes, status: int
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.running.device_port)
        try:
            writer.write(request_bytes)
            await writer.drain()
            # The whole response, then the server's end of the TCP close.
            response = await asyncio.wait_for(reader.read(), WAIT)
        finally:
            writer.close()
        assert status_of(response) == status
        assert b"\r\nconnection: close\r\n" in response.lower()
        assert b"101" not in response.split(b"\r\n", 1)[0]
        assert not server.rt.connections
        await all_closed(server)
        await device_path_serves(server)
        await alive(server)

    async def test_refused_upgrade_with_a_silent_peer_is_closed_after_close_timeout(
        self, server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The server half-closes after a refusal; a peer that never closes its side is cut
        off after CLOSE_TIMEOUT."""
        monkeypatch.setattr(wire, "CLOSE_TIMEOUT", 0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.running.device_port)
        try:
            writer.write(upgrade("/v1/other"))
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), WAIT)  # until the half-close
            assert status_of(response) == 404
            assert len(wires(server)) == 1  # our side is still open: the server waits
            await all_closed(server)  # ... for CLOSE_TIMEOUT, then aborts
        finally:
            writer.close()


# -- messages ----------------------------------------------------------------------------


def received_types(dev: TestDevice) -> list[Any]:
    return [frame_type(f) for f in dev.received]


class TestFragments:
    async def test_fragmented_hello_is_handled_like_a_whole_one(self, server: Server) -> None:
        whole = await server.provision("frag-w")
        await whole.connect()
        await whole.until(seed_at(1))
        frag = FragmentingDevice(await server.provision("frag-f"), 16, first_only=True)
        await frag.connect()
        await frag.until(seed_at(1))
        assert frag.fragments[0] > 1 and set(frag.fragments[1:]) == {1}
        assert frame_type(frag.sent[0]) == frame_type(whole.sent[0])
        assert received_types(frag) == received_types(whole)
        assert [type(e).__name__ for e in frag.events] == [type(e).__name__ for e in whole.events]
        view = await server.wait_for("frag-f", lambda v: v["enrolled"] and v["online"])
        assert view["epoch"] == 1

    async def test_fragmented_hello_of_an_unknown_device_gets_the_same_answer(
        self, server: Server
    ) -> None:
        """Unregistered ID: the same 204 NG and normal close, whole or in fragments."""
        whole = await server.install("ghost-w")
        await whole.connect()
        whole_code = await whole.closed_code()
        frag = FragmentingDevice(await server.install("ghost-f"), 5, first_only=True)
        await frag.connect()
        assert await frag.closed_code() == whole_code == 1000
        assert frag.fragments[0] > 1
        assert received_types(frag) == received_types(whole)
        assert [type(e).__name__ for e in frag.events] == [type(e).__name__ for e in whole.events]

    @pytest.mark.parametrize("size", [1, 7, 1000])
    async def test_every_message_fragmented_enrols_and_talks(
        self, server: Server, size: int
    ) -> None:
        dev = FragmentingDevice(await server.provision(f"frag-{size}"), size)
        await dev.connect()
        await dev.until(seed_at(1))
        mark = len(dev.events)
        await dev.send_app(b"recipe?" * 50)
        got = await dev.until(lambda e: isinstance(e, AppDataReceived), mark)
        assert got.data == b"echo:" + b"recipe?" * 50  # type: ignore[attr-defined]
        await dev.close()
        assert dev.ws is not None and dev.ws.close_code == 1000
        await server.wait_for(f"frag-{size}", lambda v: not v["online"])
        await all_closed(server)

    async def test_fragments_are_reassembled_before_the_size_cap(self, server: Server) -> None:
        """Five 1000-byte fragments are one 5000-byte message: over the 4 KiB pre-auth cap
        (FRAME_TOO_LARGE), not five malformed frames."""
        async with websockets.connect(server.device_url, open_timeout=WAIT) as ws:
            await ws.send([b"\x00" * 1000] * 5)
            assert await raw_close_code(ws) == FRAME_TOO_LARGE
        await all_closed(server)

    async def test_fragments_over_the_transport_cap_are_1009(self, server: Server) -> None:
        part = b"\x00" * 65536
        count = WS_MAX_SIZE // len(part) + 1
        async with websockets.connect(server.device_url, open_timeout=WAIT) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send([part] * count)
            assert await raw_close_code(ws) == 1009
        await all_closed(server)
        await device_path_serves(server)

    async def test_fragmented_text_is_malformed(self, server: Server) -> None:
        async with websockets.connect(server.device_url, open_timeout=WAIT) as ws:
            await ws.send(["text ", "in ", "three"])
            assert await raw_close_code(ws) == MALFORMED
        await all_closed(server)

    async def test_binary_fragments_with_a_text_start_are_malformed(self, server: Server) -> None:
        """A message is text or binary by its first frame: a text start whose continuations
        carry arbitrary bytes is still text."""
        async with websockets.connect(server.device_url, open_timeout=WAIT) as ws:
            await ws.send([b"\x00\x01", b"\x02"], text=True)
            assert await raw_close_code(ws) == MALFORMED

    async def test_ping_between_fragments_is_answered_and_the_message_is_whole(
        self, server: Server
    ) -> None:
        """A HELLO in two fragments with a ping between them: the pong comes back and the
        HELLO is handled as if sent whole (the same first reply as a normal device gets)."""
        ref = await server.provision("ping-ref")
        await ref.connect()
        await ref.until(seed_at(1))
        await ref.close()
        await all_closed(server)
        # The HELLO this device's core sends first.
        probe = await server.provision("ping-frag")
        now = time.monotonic()
        core = DeviceProtocol(probe.disk.keystore, now=now)
        core.connect(now)
        hello = core.messages_to_send()[0]
        assert frame_type(hello) == frame_type(ref.sent[0])

        raw = RawClient(server.device_url)
        await raw.open("127.0.0.1", server.running.device_port)
        try:
            half = len(hello) // 2
            raw.proto.send_binary(hello[:half], fin=False)
            raw.proto.send_ping(b"between")
            raw.proto.send_continuation(hello[half:], fin=True)
            raw.flush()
            await raw.until(lambda fs: any(f.opcode is Opcode.BINARY for f in fs))
            pongs = [f for f in raw.frames if f.opcode is Opcode.PONG]
            assert [p.data for p in pongs] == [b"between"]
            first = next(f for f in raw.frames if f.opcode is Opcode.BINARY)
            assert frame_type(bytes(first.data)) == frame_type(ref.received[0])
            assert not raw.close_codes()
        finally:
            raw.abort()
        await all_closed(server)

    async def test_continuation_without_a_start_is_a_protocol_error(self, server: Server) -> None:
        raw = RawClient(server.device_url)
        await raw.open("127.0.0.1", server.running.device_port)
        try:
            # websockets refuses to send this itself: a raw frame.
            raw.writer.write(Frame(Opcode.CONT, b"orphan", fin=True).serialize(mask=True))
            await raw.until(lambda fs: any(f.opcode is Opcode.CLOSE for f in fs))
            assert raw.close_codes() == [1002]
        finally:
            raw.abort()
        await all_closed(server)
        await device_path_serves(server)


# -- closing -----------------------------------------------------------------------------


class TestClosing:
    async def test_peer_close_frame_ends_an_idle_connection(self, server: Server) -> None:
        ws = await websockets.connect(server.device_url, open_timeout=WAIT)
        await eventually(lambda: len(server.rt.connections) == 1, "the connection to open")
        assert len(wires(server)) == 1
        await asyncio.wait_for(ws.close(), WAIT)
        assert ws.close_code == 1000  # the server answered our close frame with its code
        assert ws.close_reason == ""
        await all_closed(server)
        await alive(server)

    async def test_peer_close_of_an_enrolled_device_detaches_it(self, server: Server) -> None:
        dev = await enrol(server, "closer")
        assert (await server.device("closer"))["online"]
        await dev.close()
        assert dev.ws is not None and dev.ws.close_code == 1000
        await server.wait_for("closer", lambda v: not v["online"])
        await all_closed(server)

    async def test_tcp_drop_without_close_frame_is_cleaned_up(self, server: Server) -> None:
        dev = await enrol(server, "dropper")
        assert dev.ws is not None
        dev.ws.transport.abort()
        await server.wait_for("dropper", lambda v: not v["online"])
        await all_closed(server)
        # The device comes back on a new connection.
        await dev.connect()
        await server.wait_for("dropper", lambda v: v["online"])
        await dev.close()

    async def test_message_and_close_in_one_write_delivers_the_message(
        self, tmp_path: Path
    ) -> None:
        """A device sends its last application message and closes at once; both frames
        arrive in one read. The message was sent before the close and must reach the app."""

        class Recorder:
            def __init__(self) -> None:
                self.got: list[bytes] = []

            async def handle(self, device_id: str, data: bytes) -> bytes | None:
                self.got.append(data)
                return None

        app = Recorder()
        srv = await start_at(tmp_path / "data", server_app=app)
        try:
            dev = await enrol(srv, "last-words")
            await dev.send_app(b"first")
            await eventually(lambda: app.got == [b"first"], "the first message")
            assert dev.proto is not None and dev.ws is not None
            dev.proto.send_app(b"last", time.monotonic())
            (frame,) = dev.proto.messages_to_send()
            ws = dev.ws
            ws.protocol.send_binary(frame)
            ws.protocol.send_close(1000)
            ws.transport.write(b"".join(ws.protocol.data_to_send()))
            await asyncio.wait_for(asyncio.shield(dev._task), WAIT)
            await all_closed(srv)  # every input of the connection has been handled
            assert app.got == [b"first", b"last"]
        finally:
            await srv.admin.aclose()
            await srv.running.stop()

    async def test_server_close_with_a_silent_peer_is_aborted_after_close_timeout(
        self, server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(wire, "CLOSE_TIMEOUT", 0.3)
        raw = RawClient(server.device_url)
        await raw.open("127.0.0.1", server.running.device_port)
        try:
            raw.proto.send_text(b"not this protocol")
            raw.flush()
            await raw.until(lambda fs: any(f.opcode is Opcode.CLOSE for f in fs))
            assert raw.close_codes() == [MALFORMED]
            # We never answer the close frame: the server gives up after CLOSE_TIMEOUT.
            await all_closed(server)
            await raw.until_eof()
        finally:
            raw.abort()
        await device_path_serves(server)

    async def test_ping_is_answered(self, server: Server) -> None:
        async with websockets.connect(server.device_url, open_timeout=WAIT) as ws:
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, WAIT)
            await ws.send(b"\x00")
            assert await raw_close_code(ws) == MALFORMED

    async def test_server_stop_closes_open_connections(self, tmp_path: Path) -> None:
        srv = await start_at(tmp_path / "data")
        try:
            ws = await websockets.connect(srv.device_url, open_timeout=WAIT)
            await eventually(lambda: len(srv.rt.connections) == 1, "the connection to open")
            conns = uvicorn_connections(srv)
        finally:
            await srv.admin.aclose()
            await asyncio.wait_for(srv.running.stop(), WAIT)
        assert await raw_close_code(ws) == 1000
        assert not srv.rt.connections
        assert not [c for c in conns if isinstance(c, DeviceWire)]


# -- admission and leaks -----------------------------------------------------------------


async def test_admission_limit_closes_with_rate_limited(tmp_path: Path) -> None:
    srv = await start_at(tmp_path / "data", max_connections=1)
    try:
        first = await websockets.connect(srv.device_url, open_timeout=WAIT)
        await eventually(lambda: len(srv.rt.connections) == 1, "the first connection")
        async with websockets.connect(srv.device_url, open_timeout=WAIT) as second:
            assert await raw_close_code(second) == RATE_LIMITED
        assert len(srv.rt.connections) == 1
        await eventually(lambda: len(wires(srv)) == 1, "the refused wire to go")
        await first.close()
        await all_closed(srv)
        await device_path_serves(srv)  # admitted again once the first one left
    finally:
        await srv.admin.aclose()
        await srv.running.stop()


async def test_many_connections_leave_nothing_behind(server: Server) -> None:
    before = len(uvicorn_connections(server))
    for i in range(50):
        async with websockets.connect(server.device_url, open_timeout=WAIT) as ws:
            if i % 10 == 0:
                await eventually(lambda: len(server.rt.connections) >= 1, "the connection")
        assert ws.close_code == 1000
    for path in ("/v1/other", "/v1/device/x"):
        for _ in range(5):
            with pytest.raises(InvalidStatus):
                await websockets.connect(
                    f"ws://127.0.0.1:{server.running.device_port}{path}", open_timeout=WAIT
                )
    for _ in range(10):
        ws = await websockets.connect(server.device_url, open_timeout=WAIT)
        ws.transport.abort()
    await all_closed(server)
    await eventually(
        lambda: len(uvicorn_connections(server)) <= before,
        f"uvicorn's connections back to {before}",
    )
    assert not server.rt.limits._open  # no address still counted by the admission limits
    await device_path_serves(server)
    await alive(server)
