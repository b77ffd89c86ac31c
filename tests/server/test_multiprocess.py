"""Several ``keyseed server`` processes sharing one PostgreSQL database (DESIGN.md section 6):
real processes on one data folder (keys, master key, token hash) and a fresh database each
test, a test device on loopback.

An order or a confirmation made through process A reaches the device connected to process
B (LISTEN/NOTIFY wakes B; the order itself is in the record); a revocation through A fences
B's connection; the LISTEN connection comes back after PostgreSQL drops it; a device whose
process is killed mid-exchange reconnects to the other one and converges; two processes
racing to consume the same seed let exactly one win. Skipped when PostgreSQL is unreachable,
failed instead when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from devclient import TestDevice
from sqlalchemy.engine import make_url

from keyseed.loopback import DeviceDisk
from keyseed.protocol import new_keystore
from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import (
    ConnectionClosed,
    HandshakeComplete,
    KeyEstablished,
    SeedStored,
)
from keyseed.server.device_channel import ws_close_code
from keyseed.storage.notify import LISTENER_NAME

PG_URL = os.environ.get("KEYSEED_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
#: Generous bound on any wait; only a hang reaches it.
WAIT = 30.0
CODE = "12345678"
SERVER = [sys.executable, "-m", "keyseed", "server", "--log-level", "info"]
LISTENERS = ["--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]


def _pg_args(database: str | None = None) -> dict[str, Any]:
    url = make_url(PG_URL)
    return {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "database": database or url.database,
    }


async def _admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(**_pg_args(), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh database (the CLI has no schema option); its name."""
    name = f"ks_mp_{secrets.token_hex(5)}"
    try:
        await _admin_sql(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL unreachable ({type(exc).__name__}); set KEYSEED_TEST_PG")
    yield name
    await _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Proc:
    """``keyseed server --db <PostgreSQL>`` in its own process."""

    def __init__(
        self, data: Path, db_url: str, log: Path, crash_at: str | None = None, loop: str = "auto"
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
        env["PYTHONUNBUFFERED"] = "1"
        if crash_at:
            env["KEYSEED_CRASH_AT"] = crash_at
        self.log = log
        with log.open("a") as err:
            self.p = subprocess.Popen(
                [*SERVER, "--data", str(data), "--db", db_url, "--loop", loop, *LISTENERS],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
        lines: list[str] = []
        assert self.p.stdout is not None
        for line in self.p.stdout:
            lines.append(line)
            if line.startswith("admin listener:"):
                break
        out = "".join(lines)
        m = re.search(r"device listener: ws://127\.0\.0\.1:(\d+)/v1/device", out)
        a = re.search(r"admin listener: http://127\.0\.0\.1:(\d+)/v1/admin", out)
        assert m and a, out + log.read_text()[-3000:]
        t = re.search(r"admin token \(shown once; store it now\): (\S+)", out)
        self.token = t.group(1) if t else None
        self.device_url = f"ws://127.0.0.1:{m.group(1)}/v1/device"
        self.admin_url = f"http://127.0.0.1:{a.group(1)}"

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(WAIT)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.p.stdout is not None:
            self.p.stdout.close()


class Cluster:
    """Processes A and B on one data folder and one database, with an admin client each."""

    def __init__(self, tmp: Path, database: str, crash_b: str | None = None) -> None:
        self.database = database
        url = make_url(PG_URL).set(database=database).render_as_string(hide_password=False)
        data = tmp / "data"
        # The two processes run on the two event loops a server offers.
        self.a = Proc(data, url, tmp / "a.log", loop="uvloop")
        assert self.a.token is not None  # A initialised the data folder
        self.b = Proc(data, url, tmp / "b.log", crash_at=crash_b, loop="asyncio")
        assert self.b.token is None  # B loaded the same folder: same keys, same token hash
        headers = {"Authorization": f"Bearer {self.a.token}"}
        self.admin_a = httpx.AsyncClient(base_url=self.a.admin_url, headers=headers, timeout=60)
        self.admin_b = httpx.AsyncClient(base_url=self.b.admin_url, headers=headers, timeout=60)

    async def close(self) -> None:
        await self.admin_a.aclose()
        await self.admin_b.aclose()
        self.a.stop()
        self.b.stop()

    async def view(self, device_id: str, admin: httpx.AsyncClient | None = None) -> dict[str, Any]:
        """The device as process A (or ``admin``'s process) shows it; ``online`` means
        connected to that process."""
        r = await (admin or self.admin_a).get(f"/v1/admin/devices/{device_id}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def wait_view(
        self, device_id: str, pred: Any, admin: httpx.AsyncClient | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            view = await self.view(device_id, admin)
            if pred(view):
                return view
            assert time.monotonic() < deadline, f"never reached; last {view}"
            await asyncio.sleep(0.05)

    async def provision(self, device_id: str, url: str) -> TestDevice:
        """Register through A, and a device keystore pinning the shared server key."""
        r = await self.admin_a.post(
            "/v1/admin/devices", json={"device_id": device_id, "setup_code": CODE}
        )
        assert r.status_code == 201, r.text
        keys = (await self.admin_b.get("/v1/admin/keys")).json()
        server_key = bytes.fromhex(
            next(k for k in keys if k["suite"] == "hpke-x25519")["public_key"]
        )
        ks = new_keystore(
            device_id=device_id,
            suite="hpke-x25519",
            server_key=server_key,
            install_secret=os.urandom(32),
            setup_code=CODE,
        )
        return TestDevice(url, DeviceDisk(ks))

    async def audit(self, device_id: str) -> list[dict[str, Any]]:
        r = await self.admin_b.get("/v1/admin/audit", params={"device_id": device_id, "limit": 500})
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()
        return rows

    async def listeners(self) -> int:
        conn = await asyncpg.connect(**_pg_args(self.database), timeout=5)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND application_name = $2",
                self.database,
                LISTENER_NAME,
            )
            return n
        finally:
            await conn.close()

    async def drop_listeners(self) -> None:
        conn = await asyncpg.connect(**_pg_args(self.database), timeout=5)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name = $2",
                self.database,
                LISTENER_NAME,
            )
        finally:
            await conn.close()


async def _cluster(tmp: Path, database: str, crash_b: str | None = None) -> Cluster:
    return await asyncio.to_thread(Cluster, tmp, database, crash_b)


def seed_at(epoch: int) -> Any:
    return lambda ev: isinstance(ev, SeedStored) and ev.epoch == epoch


def closed(ev: Any) -> bool:
    return isinstance(ev, ConnectionClosed)


async def _poll(pred: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_order_confirm_and_revoke_through_the_other_process(
    tmp_path: Path, database: str
) -> None:
    c = await _cluster(tmp_path, database)
    try:
        assert "event loop: uvloop" in c.a.log.read_text()
        assert "event loop: asyncio" in c.b.log.read_text()
        dev = await c.provision("oven-1", c.b.device_url)
        await dev.connect()
        await dev.until(seed_at(1))
        await c.wait_view("oven-1", lambda v: v["epoch"] == 1 and not v["owed_206"])
        ws = dev.ws

        # 401 on A: B holds the connection, is woken, and sends the 403; the device rekeys
        # on the same connection.
        mark = len(dev.events)
        r = await c.admin_a.post("/v1/admin/devices/oven-1/rekey")
        assert r.status_code == 202, r.text
        assert r.json()["delivered"] is True and r.json()["order_epoch"] == 1
        await dev.until(seed_at(2), mark)
        assert dev.ws is ws and not any(closed(e) for e in dev.events[mark:])
        await c.wait_view("oven-1", lambda v: v["epoch"] == 2 and v["order_epoch"] is None)

        # 208 on A: B runs the 207 and A answers with its outcome.
        r = await c.admin_a.post("/v1/admin/devices/oven-1/confirm")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"] is True and body["epoch"] == 2 and body["rtt_ms"] >= 0, body
        kinds = [row["kind"] for row in await c.audit("oven-1")]
        assert "confirmed" in kinds

        # PostgreSQL drops both LISTEN connections: each process listens again, and an
        # order through A still reaches the device on B.
        assert await c.listeners() == 2
        await c.drop_listeners()

        async def relistening() -> bool:
            return await c.listeners() == 2

        await _poll(relistening, "both processes to LISTEN again")
        mark = len(dev.events)
        r = await c.admin_a.post("/v1/admin/devices/oven-1/rekey")
        assert r.status_code == 202 and r.json()["order_epoch"] == 2, r.text
        await dev.until(seed_at(3), mark)
        assert dev.ws is ws

        # Revocation on A fences B's connection at once (the record's connection generation
        # moved on), and B refuses the key from then on.
        r = await c.admin_a.post("/v1/admin/devices/oven-1/revoke")
        assert r.status_code == 200 and r.json()["revoked"] is True
        assert await dev.closed_code() == ws_close_code(ErrorCode.CONFLICT)
        await dev.connect()
        assert await dev.closed_code() == ws_close_code(ErrorCode.HANDSHAKE_REFUSED)
    finally:
        await c.close()


async def test_killed_mid_exchange_reconnects_to_the_other_process(
    tmp_path: Path, database: str
) -> None:
    # B dies after committing the rekey's 205 and before its 206 leaves.
    c = await _cluster(tmp_path, database, crash_b="server.send.206")
    try:
        dev = await c.provision("oven-2", c.a.device_url)
        await dev.connect()
        await dev.until(seed_at(1))
        await c.wait_view("oven-2", lambda v: v["epoch"] == 1 and not v["owed_206"])
        await dev.close()

        dev.url = c.b.device_url
        mark = len(dev.events)
        await dev.connect()
        await dev.until(lambda e: isinstance(e, HandshakeComplete) and e.authenticated, mark)
        await c.wait_view("oven-2", lambda v: v["online"], c.admin_b)  # B holds it
        r = await c.admin_a.post("/v1/admin/devices/oven-2/rekey")
        assert r.status_code == 202, r.text
        await dev.until(closed, mark)
        assert await asyncio.to_thread(c.b.p.wait, WAIT) == -signal.SIGKILL
        view = await c.view("oven-2")
        assert view["epoch"] == 2 and view["owed_206"] and not view["online"]
        assert dev.keystore.epoch == 1  # the 206 never came; the new key is pending

        # Nobody holds the device now: A answers "offline" once no process claims it.
        r = await c.admin_a.post("/v1/admin/devices/oven-2/confirm")
        assert r.status_code == 200 and r.json()["detail"] == "offline", r.text

        # The device comes back through A, which sends the owed 206: one key on both sides.
        dev.url = c.a.device_url
        mark = len(dev.events)
        await dev.connect()
        await dev.until(seed_at(2), mark)
        view = await c.wait_view("oven-2", lambda v: not v["owed_206"] and v["online"])
        assert view["epoch"] == dev.keystore.epoch == 2 and not view["pending_exchange"]
        r = await c.admin_a.post("/v1/admin/devices/oven-2/confirm")
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        await dev.close()
    finally:
        await c.close()


async def test_two_processes_race_for_one_seed(tmp_path: Path, database: str) -> None:
    c = await _cluster(tmp_path, database)
    try:
        first = await c.provision("oven-3", c.a.device_url)
        await first.connect()
        await first.until(seed_at(1))
        await c.wait_view("oven-3", lambda v: v["epoch"] == 1 and not v["owed_206"])
        await first.close()
        # A cloned device: the same keystore (same key, same seed) talking to B.
        clone = TestDevice(c.b.device_url, DeviceDisk(first.keystore))
        devices = (first, clone)
        marks = {d: len(d.events) for d in devices}
        await asyncio.gather(*(d.connect() for d in devices))

        async def settled(d: TestDevice) -> None:
            """Until this device has its connection open (or lost)."""
            with contextlib.suppress(AssertionError):
                await d.until(lambda e: isinstance(e, HandshakeComplete) or closed(e), marks[d])

        await asyncio.gather(*(settled(d) for d in devices))

        async def rekey(d: TestDevice) -> None:
            assert d.proto is not None
            d.proto.request_rekey(time.monotonic())
            await d.flush()

        await asyncio.gather(*(rekey(d) for d in devices))

        async def outcome(d: TestDevice) -> bool:
            """Whether this device stored a seed at epoch 2 (False: it lost the race)."""
            with contextlib.suppress(AssertionError):
                await d.until(lambda e: seed_at(2)(e) or closed(e), marks[d])
            return any(seed_at(2)(e) for e in d.events[marks[d] :])

        won = await asyncio.gather(*(outcome(d) for d in devices))
        assert sorted(won) == [False, True], won
        winner = devices[won.index(True)]
        loser = devices[won.index(False)]
        assert not any(
            isinstance(e, KeyEstablished) and e.epoch == 2 for e in loser.events[marks[loser] :]
        )

        # Exactly one commit of epoch 2: one "rekeyed" row, the winner's key is the record's.
        view = await c.wait_view("oven-3", lambda v: not v["owed_206"])
        assert view["epoch"] == 2 == winner.keystore.epoch
        rows = await c.audit("oven-3")
        assert [r["epoch"] for r in rows if r["kind"] == "rekeyed"] == [2]
        for d in devices:
            with contextlib.suppress(Exception):
                await d.close()
        winner.url = c.a.device_url
        mark = len(winner.events)
        await winner.connect()
        await winner.until(lambda e: isinstance(e, HandshakeComplete) and e.authenticated, mark)
        # The device completes its handshake when it sends FIN; the server holds the device
        # only once it has processed that FIN, so the first confirm may still find it offline.
        for _ in range(50):
            r = await c.admin_b.post("/v1/admin/devices/oven-3/confirm")
            if r.status_code == 200 and r.json()["ok"]:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["epoch"] == 2
        await winner.close()
    finally:
        await c.close()
