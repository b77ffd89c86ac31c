"""The full scheme between the server and a test device over a real WebSocket: registration
(201/202), enrolment (203-206), arrival confirmation (208/209 via 207), application data,
rekey by proxy (401-404) with the device online and offline, approval by SAS, revocation.
Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from servkit import Server

from keyseed.protocol.events import (
    AppDataReceived,
    ConnectionClosed,
    KeyEstablished,
    RekeyOrdered,
    SeedStored,
)


def key_at(epoch: int) -> Any:
    return lambda ev: isinstance(ev, KeyEstablished) and ev.epoch == epoch


def seed_at(epoch: int) -> Any:
    return lambda ev: isinstance(ev, SeedStored) and ev.epoch == epoch


def closed(ev: Any) -> bool:
    return isinstance(ev, ConnectionClosed)


async def enrol(srv: Server, device_id: str, **kw: Any) -> Any:
    dev = await srv.provision(device_id, **kw)
    await dev.connect()
    await dev.until(seed_at(1))
    await srv.wait_for(device_id, lambda v: v["online"] and not v["owed_206"])
    return dev


class TestFullScheme:
    """201/202 -> 203-206 -> 207/208/209 -> APP -> 401-404 online and offline -> revoke."""

    async def test_register_enrol_confirm_rekey_revoke(self, any_server: Server) -> None:
        srv = any_server
        dev = await enrol(srv, "oven-1")
        assert dev.keystore.epoch == 1 and dev.keystore.seed is not None
        view = await srv.device("oven-1")
        assert view["enrolled"] and view["confirmed"] and view["epoch"] == 1
        assert not view["window_open"] and not view["pending_exchange"]
        assert "key" not in view and "sas" not in view

        # 208/209: the server runs 207 with the device.
        r = await srv.admin.post("/v1/admin/devices/oven-1/confirm")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"] is True and body["epoch"] == 1 and body["rtt_ms"] >= 0

        # Application data reaches the server app (echo) and its answer comes back sealed.
        mark = len(dev.events)
        await dev.send_app(b"recipe?")
        got = await dev.until(lambda ev: isinstance(ev, AppDataReceived), mark)
        assert got.data == b"echo:recipe?"  # type: ignore[attr-defined]

        # 401/402 with the device online: 403 goes out at once, the device rekeys.
        mark = len(dev.events)
        pump = asyncio.create_task(dev.until(seed_at(2), mark))
        r = await srv.admin.post("/v1/admin/devices/oven-1/rekey")
        assert r.status_code == 202, r.text
        assert r.json() == {
            "device_id": "oven-1",
            "order_epoch": 1,
            "delivered": True,
            "already_ordered": False,
        }
        await pump
        assert any(isinstance(e, RekeyOrdered) for e in dev.events[mark:])
        assert dev.keystore.epoch == 2
        view = await srv.wait_for("oven-1", lambda v: v["epoch"] == 2 and not v["owed_206"])
        assert view["order_epoch"] is None

        # 401/402 with the device offline: queued durably, delivered at the next connection.
        await dev.close()
        await srv.wait_for("oven-1", lambda v: not v["online"])
        r = await srv.admin.post("/v1/admin/devices/oven-1/rekey")
        assert r.status_code == 202
        assert r.json()["delivered"] is False and r.json()["order_epoch"] == 2
        # Ordering again while one is outstanding changes nothing (at most one order).
        r = await srv.admin.post("/v1/admin/devices/oven-1/rekey")
        assert r.json()["already_ordered"] is True
        assert (await srv.device("oven-1"))["order_epoch"] == 2
        await dev.connect()
        await dev.until(seed_at(3))
        assert dev.keystore.epoch == 3
        await srv.wait_for("oven-1", lambda v: v["epoch"] == 3 and v["order_epoch"] is None)

        # Revocation closes the live connection, and the device's key opens nothing after.
        mark = len(dev.events)
        pump = asyncio.create_task(dev.until(closed, mark))
        r = await srv.admin.post("/v1/admin/devices/oven-1/revoke")
        assert r.status_code == 200 and r.json()["revoked"] is True
        ev = await pump
        assert isinstance(ev, ConnectionClosed) and ev.by_peer
        await dev.connect()
        code = await dev.closed_code()
        assert code == 4007  # HANDSHAKE_REFUSED
        view = await srv.device("oven-1")
        assert view["revoked"] and not view["enrolled"] and view["epoch"] == 3

        # The audit log holds every step, newest first.
        r = await srv.admin.get("/v1/admin/audit", params={"device_id": "oven-1", "limit": 500})
        kinds = [row["kind"] for row in r.json()][::-1]
        for kind in ("registered", "enrolled", "confirmed", "rekey_ordered", "rekeyed", "revoked"):
            assert kind in kinds, kinds
        assert kinds.index("registered") < kinds.index("enrolled") < kinds.index("revoked")

    async def test_reregistration_after_revocation_keeps_epochs_growing(
        self, server: Server
    ) -> None:
        dev = await enrol(server, "oven-2")
        r = await server.admin.post("/v1/admin/devices/oven-2/revoke")
        assert r.status_code == 200
        await dev.close()
        # A fresh code and a fresh keystore (the device lost its state or was reset).
        r = await server.register("oven-2", setup_code="87654321")
        assert r.status_code == 201, r.text
        again = await server.install("oven-2", setup_code="87654321")
        await again.connect()
        await again.until(seed_at(2))
        assert again.keystore.epoch == 2


class TestApproval:
    """A device registered without a code stays unconfirmed until its SAS is compared."""

    async def test_sas_approval(self, server: Server) -> None:
        dev = await enrol(server, "oven-nc", setup_code=None)
        view = await server.device("oven-nc")
        assert view["enrolled"] and not view["confirmed"]
        sas = next(e.sas for e in dev.events if isinstance(e, KeyEstablished))
        # No orders to an unconfirmed device.
        r = await server.admin.post("/v1/admin/devices/oven-nc/rekey")
        assert r.status_code == 409 and r.json()["error"] == "not_allowed"
        wrong = f"{(int(sas) + 1) % 1_000_000:06d}"
        r = await server.admin.post("/v1/admin/devices/oven-nc/approve", json={"sas": wrong})
        assert r.status_code == 409 and r.json()["error"] == "sas_mismatch"
        assert not (await server.device("oven-nc"))["confirmed"]
        r = await server.admin.post("/v1/admin/devices/oven-nc/approve", json={"sas": sas})
        assert r.status_code == 200 and r.json()["confirmed"] is True
        # The live connection saw the new record: its next exchange commits normally.
        mark = len(dev.events)
        pump = asyncio.create_task(dev.until(seed_at(2), mark))
        r = await server.admin.post("/v1/admin/devices/oven-nc/rekey")
        assert r.status_code == 202 and r.json()["delivered"] is True
        await pump
