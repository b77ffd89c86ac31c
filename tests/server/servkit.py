"""Fixtures: a real server (both uvicorn listeners on ephemeral ports, in this process, on
the test's event loop) over the real SqlStore, an admin HTTP client, and test devices.

``server`` runs on SQLite in the test's tmp folder. ``any_server`` runs the same tests on
SQLite and on PostgreSQL (``KEYSEED_TEST_PG``; a fresh schema per module, dropped afterwards;
unreachable PostgreSQL skips locally and fails when ``CI`` is set).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from devclient import TestDevice

from keyseed.loopback import DeviceDisk
from keyseed.protocol import new_keystore
from keyseed.protocol.device import DeviceConfig
from keyseed.server import EchoApp, RunningServer, ServerConfig, start_server
from keyseed.server.datadir import open_data_dir
from keyseed.storage.sql import open_store
from pgtest import PG_URL, pg_execute, pg_schema  # noqa: F401 - pg_schema: for conftest.py


@dataclass
class Server:
    """A running server and what a test needs to talk to it."""

    running: RunningServer
    token: str
    admin: httpx.AsyncClient
    data: Path

    @property
    def device_url(self) -> str:
        return f"ws://127.0.0.1:{self.running.device_port}/v1/device"

    @property
    def device_http(self) -> str:
        return f"http://127.0.0.1:{self.running.device_port}"

    @property
    def rt(self) -> Any:
        return self.running.rt

    async def register(self, device_id: str, **body: Any) -> httpx.Response:
        return await self.admin.post("/v1/admin/devices", json={"device_id": device_id, **body})

    async def device(self, device_id: str) -> dict[str, Any]:
        r = await self.admin.get(f"/v1/admin/devices/{device_id}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def provision(
        self,
        device_id: str,
        *,
        setup_code: str | None = "12345678",
        suite: str = "hpke-x25519",
        config: DeviceConfig | None = None,
    ) -> TestDevice:
        """201 with the code, and a device keystore installed with the same code."""
        body: dict[str, Any] = {"suite": suite}
        if setup_code is None:
            body["allow_no_code"] = True
        else:
            body["setup_code"] = setup_code
        r = await self.register(device_id, **body)
        assert r.status_code == 201, r.text
        return await self.install(device_id, setup_code=setup_code, suite=suite, config=config)

    async def install(
        self,
        device_id: str,
        *,
        setup_code: str | None = "12345678",
        suite: str = "hpke-x25519",
        config: DeviceConfig | None = None,
    ) -> TestDevice:
        """A fresh device keystore (first install, or a reset device), pinning the key the
        admin API shows."""
        keys = (await self.admin.get("/v1/admin/keys")).json()
        server_key = bytes.fromhex(next(k for k in keys if k["suite"] == suite)["public_key"])
        ks = new_keystore(
            device_id=device_id,
            suite=suite,
            server_key=server_key,
            install_secret=os.urandom(32),
            setup_code=setup_code,
        )
        return TestDevice(self.device_url, DeviceDisk(ks), config)

    async def wait_for(self, device_id: str, pred: Callable[[dict[str, Any]], bool]) -> dict:
        """Poll the admin view until ``pred`` holds (the server commits before it replies,
        but the test reads over another connection)."""
        for _ in range(300):
            view = await self.device(device_id)
            if pred(view):
                return view
            await asyncio.sleep(0.02)
        raise AssertionError(f"device never reached the state; last {view}")


async def start_at(
    data: Path, schema: str | None = None, server_app: Any = None, **overrides: Any
) -> Server:
    """A server on ``data``, on ephemeral ports. Its app: ``server_app`` if given, else the
    one ``overrides["app"]`` names (the server builds it from its configuration), else
    EchoApp."""
    app = server_app
    if app is None and "app" not in overrides:
        app = EchoApp()
    config = ServerConfig(
        data=data, host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0, **overrides
    )
    found = open_data_dir(data, config.suites)
    store = None
    if schema is not None:
        store = await open_store(PG_URL, found.master_key, schema=schema)
    running = await start_server(config, app=app, secrets=found, store=store)
    assert found.new_token is not None
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.admin_port}",
        headers={"Authorization": f"Bearer {found.new_token}"},
        timeout=30,
    )
    return Server(running=running, token=found.new_token, admin=admin, data=data)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_at(tmp_path / "data")
    yield srv
    await srv.admin.aclose()
    await srv.running.stop()


@pytest.fixture
async def short_s27(tmp_path: Path) -> AsyncIterator[Server]:
    """A server whose S27 fires after half a second."""
    srv = await start_at(tmp_path / "data", s27_timeout=0.5)
    yield srv
    await srv.admin.aclose()
    await srv.running.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    schema = None
    if request.param == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        await pg_execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pg_execute(f'CREATE SCHEMA "{schema}"')
    srv = await start_at(tmp_path / "data", schema=schema)
    yield srv
    await srv.admin.aclose()
    await srv.running.stop()
