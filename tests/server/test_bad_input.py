"""Bad input on every endpoint: malformed, oversized and text frames, a message in the wrong
state, replayed 203 and 205, a 205 after S27, unregistered and revoked IDs, missing and wrong
admin tokens, invalid admin requests. Each gets its documented error; the process stays up
and stored state is unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import websockets
from devclient import frame_type, raw_close_code
from prometheus_client.parser import text_string_to_metric_families
from servkit import Server, start_at
from test_flows_e2e import enrol, seed_at

from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import KeyEstablished
from keyseed.protocol.messages import Fin, MsgType
from keyseed.server import ServerConfig, ratelimit
from keyseed.server.run import WS_MAX_SIZE


def ws_code(code: ErrorCode) -> int:
    return 4000 + int(code)


async def alive(srv: Server) -> None:
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{srv.device_http}/healthz")).json() == {"status": "ok"}
    assert (await srv.admin.get("/healthz")).status_code == 200


async def stored(srv: Server, device_id: str) -> Any:
    record, _ = await srv.rt.store.load(device_id)
    return record


class TestListeners:
    async def test_device_listener_carries_no_admin_routes(self, server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.device_http) as c:
            for path in ("/v1/admin/devices", "/v1/admin/keys", "/metrics", "/openapi.json", "/"):
                r = await c.get(path, headers={"Authorization": f"Bearer {server.token}"})
                assert r.status_code == 404, path
            assert (await c.get("/healthz")).status_code == 200

    async def test_admin_listener_is_loopback_by_default(self) -> None:
        assert ServerConfig().admin_host == "127.0.0.1"

    async def test_openapi_document_lists_the_admin_api(self, server: Server) -> None:
        doc = (await server.admin.get("/openapi.json")).json()
        paths = set(doc["paths"])
        assert {
            "/v1/admin/devices",
            "/v1/admin/devices/{device_id}",
            "/v1/admin/devices/{device_id}/rekey",
            "/v1/admin/devices/{device_id}/confirm",
            "/v1/admin/devices/{device_id}/approve",
            "/v1/admin/devices/{device_id}/revoke",
            "/v1/admin/audit",
            "/v1/admin/keys",
        } <= paths


ENDPOINTS = [
    ("POST", "/v1/admin/devices", {"device_id": "x1", "setup_code": "12345678"}),
    ("GET", "/v1/admin/devices", None),
    ("GET", "/v1/admin/devices/x1", None),
    ("POST", "/v1/admin/devices/x1/rekey", None),
    ("POST", "/v1/admin/devices/x1/confirm", None),
    ("POST", "/v1/admin/devices/x1/approve", {"sas": "123456"}),
    ("POST", "/v1/admin/devices/x1/revoke", None),
    ("GET", "/v1/admin/audit", None),
    ("GET", "/v1/admin/keys", None),
]


BAD_REGISTRATIONS: list[dict[str, Any]] = [
    {"device_id": "bad id!", "setup_code": "12345678"},
    {"device_id": "x" * 65, "setup_code": "12345678"},
    {"device_id": "x2"},  # no code and no opt-in
    {"device_id": "x2", "setup_code": "1234567"},  # too short
    {"device_id": "x2", "setup_code": "12ab5678"},
    {"device_id": "x2", "setup_code": "12345678", "suite": "nope"},
    {"device_id": "x2", "setup_code": "12345678", "window_s": 0},
    {"device_id": "x2", "setup_code": "12345678", "extra": 1},
    {"device_id": "x2", "setup_code": "12345678", "suite": "rsa-oaep"},  # not enabled
]


class TestAdminAuth:
    @pytest.mark.parametrize(
        "auth", [None, "Bearer kst_wrong", "Basic eDp5", "Bearer", "token-without-scheme"]
    )
    async def test_missing_or_wrong_token(self, server: Server, auth: str | None) -> None:
        headers = {} if auth is None else {"Authorization": auth}
        async with httpx.AsyncClient(base_url=str(server.admin.base_url)) as c:
            for method, path, body in ENDPOINTS:
                r = await c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, path
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
            # The right token with one character changed.
            wrong = server.token[:-1] + ("A" if server.token[-1] != "A" else "B")
            r = await c.get("/v1/admin/devices", headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 401
        assert await stored(server, "x1") is None


class TestAdminErrors:
    async def test_unknown_device_is_404(self, server: Server) -> None:
        for method, path, body in ENDPOINTS:
            if not path.startswith("/v1/admin/devices/x1"):
                continue
            r = await server.admin.request(method, path, json=body)
            assert r.status_code == 404, path
            assert r.json()["error"] == "unknown_device"
        assert await stored(server, "x1") is None

    async def test_invalid_registration_is_422_and_writes_nothing(self, server: Server) -> None:
        for body in BAD_REGISTRATIONS:
            r = await server.admin.post("/v1/admin/devices", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"] == "validation_error"
            assert "1234567" not in r.text and "12ab" not in r.text  # no code echoed
        assert (await server.admin.get("/v1/admin/devices")).json() == []

    async def test_bad_path_and_query_are_422(self, server: Server) -> None:
        assert (await server.admin.get("/v1/admin/devices/bad%20id")).status_code == 422
        for q in ({"limit": 0}, {"limit": 5000}, {"before_id": 0}, {"device_id": "a b"}):
            r = await server.admin.get("/v1/admin/audit", params=q)
            assert r.status_code == 422 and r.json()["error"] == "validation_error"

    async def test_conflicts_are_409(self, server: Server) -> None:
        r = await server.register("x3", setup_code="12345678")
        assert r.status_code == 201
        before = await stored(server, "x3")
        for path in ("rekey", "confirm"):
            r = await server.admin.post(f"/v1/admin/devices/x3/{path}")
            assert r.status_code == 409, path
        r = await server.admin.post("/v1/admin/devices/x3/approve", json={"sas": "000000"})
        assert r.status_code == 409
        assert await stored(server, "x3") == before
        dev = await enrol(server, "x4")
        await dev.close()
        r = await server.register("x4", setup_code="12345678")
        assert r.status_code == 409 and r.json()["error"] == "device_exists"


class TestFrames:
    """Every bad frame gets a typed CLOSE (WebSocket code 4000 + ErrorCode) and changes
    nothing stored."""

    @pytest.mark.parametrize(
        ("frame", "code"),
        [
            ("text is not this protocol", ws_code(ErrorCode.MALFORMED)),
            (b"", ws_code(ErrorCode.MALFORMED)),
            (b"\xff\x00garbage", ws_code(ErrorCode.MALFORMED)),
            (b"\x83\x01\x18\x64\xa0", ws_code(ErrorCode.MALFORMED)),  # non-canonical
            (b"\x00" * 5000, ws_code(ErrorCode.FRAME_TOO_LARGE)),  # over the pre-auth cap
            (b"\x00" * (WS_MAX_SIZE + 1), 1009),  # over the transport cap
            (Fin(mac=bytes(32)).encode(), ws_code(ErrorCode.UNEXPECTED_MESSAGE)),
        ],
        ids=["text", "empty", "garbage", "noncanonical", "preauth-cap", "ws-cap", "fin-first"],
    )
    async def test_bad_first_frame(self, server: Server, frame: bytes | str, code: int) -> None:
        dev = await enrol(server, "f1")
        await dev.close()
        before = await stored(server, "f1")
        async with websockets.connect(server.device_url, max_size=None) as ws:
            await ws.send(frame)
            assert await raw_close_code(ws) == code
        await alive(server)
        assert await stored(server, "f1") == before

    async def test_bad_frame_on_an_open_connection(self, server: Server) -> None:
        dev = await enrol(server, "f2")
        before = await stored(server, "f2")
        await dev.send_raw(b"\x00" * 70_000)  # over the authenticated cap
        assert await dev.closed_code() == ws_code(ErrorCode.FRAME_TOO_LARGE)
        after = await stored(server, "f2")
        assert after.key == before.key and after.seed == before.seed
        await alive(server)

    async def test_hello_twice(self, server: Server) -> None:
        dev = await enrol(server, "f3")
        await dev.send_raw(dev.sent[0])  # the HELLO of this connection again
        assert await dev.closed_code() == ws_code(ErrorCode.UNEXPECTED_MESSAGE)
        await alive(server)

    async def test_unregistered_id_gets_ng_and_no_write(self, server: Server) -> None:
        dev = await server.install("ghost")
        await dev.connect()
        assert await dev.closed_code() == 1000  # 204 NG, then a normal close
        assert any(getattr(e, "cause", 1) is None for e in dev.events)  # ExchangeFailed
        assert await stored(server, "ghost") is None
        assert (await server.admin.get("/v1/admin/devices")).json() == []
        audit = (await server.admin.get("/v1/admin/audit", params={"device_id": "ghost"})).json()
        assert [(a["kind"], a["cause"]) for a in audit] == [("204_ng", "UNREGISTERED")]

    async def test_revoked_id_is_refused(self, server: Server) -> None:
        dev = await enrol(server, "f4")
        await dev.close()
        assert (await server.admin.post("/v1/admin/devices/f4/revoke")).status_code == 200
        before = await stored(server, "f4")
        await dev.connect()
        assert await dev.closed_code() == ws_code(ErrorCode.HANDSHAKE_REFUSED)
        # A keyless HELLO for the revoked ID may only enrol, and that is refused too.
        fresh = await server.install("f4")
        await fresh.connect()
        assert await fresh.closed_code() == 1000
        assert await stored(server, "f4") == before
        await alive(server)

    async def test_replayed_203_and_205(self, server: Server) -> None:
        dev = await enrol(server, "f5")
        mark = len(dev.events)
        r = await server.admin.post("/v1/admin/devices/f5/rekey")
        assert r.json()["delivered"]
        await dev.until(seed_at(2), mark)
        await server.wait_for("f5", lambda v: not v["owed_206"])
        by_type: dict[MsgType, bytes] = {}
        for frame in dev.sent:
            by_type.setdefault(frame_type(frame), frame)
        before = await stored(server, "f5")
        await dev.send_raw(by_type[MsgType.M205])
        # A replayed sealed frame fails the channel: its sequence number or its tag.
        assert await dev.closed_code() in (
            ws_code(ErrorCode.BAD_SEQUENCE),
            ws_code(ErrorCode.AUTH_FAILED),
        )
        assert await stored(server, "f5") == before
        # The 203 of that exchange, on a new connection under the new key.
        await dev.connect()
        await dev.until(lambda e: type(e).__name__ == "HandshakeComplete", len(dev.events))
        await dev.send_raw(by_type[MsgType.M203])
        assert await dev.closed_code() in (
            ws_code(ErrorCode.BAD_SEQUENCE),
            ws_code(ErrorCode.AUTH_FAILED),
            ws_code(ErrorCode.UNEXPECTED_MESSAGE),
        )
        after = await stored(server, "f5")
        assert (after.epoch, after.key, after.seed) == (before.epoch, before.key, before.seed)
        await alive(server)

    async def test_205_after_s27(self, short_s27: Server) -> None:
        srv = short_s27
        dev = await enrol(srv, "f6")
        dev.hold = {MsgType.M205}
        mark = len(dev.events)
        r = await srv.admin.post("/v1/admin/devices/f6/rekey")
        assert r.json()["delivered"]
        await srv.wait_for("f6", lambda v: v["pending_exchange"])
        await srv.wait_for("f6", lambda v: not v["pending_exchange"])  # S27 fired
        before = await stored(srv, "f6")
        assert dev.held and before.epoch == 1
        await dev.send_raw(dev.held[0])
        assert await dev.closed_code() == ws_code(ErrorCode.EXCHANGE_EXPIRED)
        assert await stored(srv, "f6") == before
        # No bricking: the device reconnects and the next exchange commits.
        dev.hold = set()
        await dev.connect()
        await dev.until(seed_at(2), mark)
        audit = (await srv.admin.get("/v1/admin/audit", params={"device_id": "f6"})).json()
        assert "exchange_expired" in [a["kind"] for a in audit]
        assert any(isinstance(e, KeyEstablished) and e.epoch == 2 for e in dev.events)


class TestMetrics:
    async def test_metrics_count_without_device_labels(self, server: Server) -> None:
        dev = await enrol(server, "metric-device-1")
        await dev.send_raw("text")
        await dev.closed_code()
        text = (await server.admin.get("/metrics")).text
        assert 'keyseed_exchanges_total{cause="none",result="ok"} 1.0' in text
        assert 'keyseed_frame_errors_total{code="MALFORMED"} 1.0' in text
        assert "keyseed_connected_devices" in text and "keyseed_pending_exchanges" in text
        assert "keyseed_confirmations_total" in text
        assert "metric-device-1" not in text

    async def test_group_commit_counters_follow_the_writes(self, any_server: Server) -> None:
        server = any_server

        def counts(text: str) -> tuple[float, float] | None:
            found = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    found[sample.name] = sample.value
            if "keyseed_db_commits_total" not in found:
                return None
            return found["keyseed_db_commits_total"], found["keyseed_db_committed_writes_total"]

        first = counts((await server.admin.get("/metrics")).text)
        if server.running.rt.store.dialect == "postgresql":  # type: ignore[attr-defined]
            # PostgreSQL: the store does not count its commits (PostgreSQL's own statistics do).
            assert first is None
            return
        assert first is not None
        dev = await enrol(server, "metric-device-2")
        second = counts((await server.admin.get("/metrics")).text)
        assert second is not None
        # Registration and enrolment wrote; each COMMIT carried at least one writer.
        assert second[0] > first[0] and second[1] - first[1] >= second[0] - first[0]
        mark = len(dev.events)
        pump = asyncio.create_task(dev.until(seed_at(2), mark))
        assert (await server.admin.post("/v1/admin/devices/metric-device-2/rekey")).is_success
        await pump
        await server.wait_for("metric-device-2", lambda v: not v["owed_206"])
        third = counts((await server.admin.get("/metrics")).text)
        assert third is not None
        # A rekey writes at 203, 205 and ACK_206.
        assert third[0] > second[0] and third[1] - second[1] >= 3


class TestTimeouts:
    async def test_silent_connection_gets_timeout(self, tmp_path: Any) -> None:
        srv = await start_at(tmp_path / "data", handshake_timeout=0.3, idle_timeout=0.6)
        try:
            async with websockets.connect(srv.device_url) as ws:
                assert await raw_close_code(ws) == ws_code(ErrorCode.TIMEOUT)
            # An authenticated connection that stays silent past the idle timeout.
            dev = await enrol(srv, "idle")
            assert await dev.closed_code() == ws_code(ErrorCode.TIMEOUT)
            await alive(srv)
        finally:
            await srv.admin.aclose()
            await srv.running.stop()


async def test_device_listener_closes_a_connection_that_sends_no_request(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device listener runs HeadDeadline: a TCP connection that never completes its
    request head is closed (uvicorn alone keeps it open for good), while one that upgrades in
    time is served."""
    monkeypatch.setattr(ratelimit, "HEAD_TIMEOUT", 0.5)
    port = server.running.device_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v1/device HTTP/1.1\r\nHost: x\r\n")  # never finished
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    async with websockets.connect(server.device_url) as ws:
        await asyncio.sleep(0.8)  # past the head deadline: the upgraded connection lives on
        await ws.send(b"\x00")  # not a frame of this protocol: answered with a typed close
        code = await raw_close_code(ws)
    assert code == 4000 + int(ErrorCode.MALFORMED)
