"""Restart: ``keyseed server`` as a real process, killed with SIGKILL and started again.
Registrations, keys, seeds, a queued rekey order and the audit log survive, the admin token
still works (stored as a hash), and the device reconnects under its key."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from devclient import TestDevice
from test_flows_e2e import seed_at

from keyseed.loopback import DeviceDisk
from keyseed.protocol import new_keystore


class Proc:
    def __init__(self, data: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KEYSEED_CONFIG", None)
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyseed",
                "server",
                "--data",
                str(data),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--admin-port",
                "0",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("admin listener:"):
                break
        out = "\n".join(self.lines)
        m = re.search(r"device listener: ws://127\.0\.0\.1:(\d+)/v1/device", out)
        a = re.search(r"admin listener: http://127\.0\.0\.1:(\d+)/v1/admin", out)
        assert m and a, out
        self.device_url = f"ws://127.0.0.1:{m.group(1)}/v1/device"
        self.admin_url = f"http://127.0.0.1:{a.group(1)}"
        t = re.search(r"admin token \(shown once; store it now\): (\S+)", out)
        self.token = t.group(1) if t else None
        self.fingerprint = re.search(r"fingerprint ([0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.p.poll() is None:
            p.kill()


async def test_sigkill_restart_keeps_everything(tmp_path: Path, procs: list[Proc]) -> None:
    data = tmp_path / "data"
    first = Proc(data)
    procs.append(first)
    assert first.token is not None
    headers = {"Authorization": f"Bearer {first.token}"}
    async with httpx.AsyncClient(base_url=first.admin_url, headers=headers) as admin:
        r = await admin.post(
            "/v1/admin/devices", json={"device_id": "r1", "setup_code": "31415926"}
        )
        assert r.status_code == 201
        keys = (await admin.get("/v1/admin/keys")).json()
        assert keys[0]["fingerprint"] == first.fingerprint
        ks = new_keystore(
            device_id="r1",
            suite="hpke-x25519",
            server_key=bytes.fromhex(keys[0]["public_key"]),
            install_secret=os.urandom(32),
            setup_code="31415926",
        )
        dev = TestDevice(first.device_url, DeviceDisk(ks))
        await dev.connect()
        await dev.until(seed_at(1))
        for _ in range(200):
            if not (await admin.get("/v1/admin/devices/r1")).json()["owed_206"]:
                break
            await asyncio.sleep(0.02)
        await dev.close()
        for _ in range(200):
            if not (await admin.get("/v1/admin/devices/r1")).json()["online"]:
                break
            await asyncio.sleep(0.02)
        # A rekey order while the device is offline: queued durably.
        r = await admin.post("/v1/admin/devices/r1/rekey")
        assert r.status_code == 202 and r.json()["delivered"] is False
        before = (await admin.get("/v1/admin/devices/r1")).json()
        audit_before = (await admin.get("/v1/admin/audit")).json()

    first.kill()

    second = Proc(data)
    procs.append(second)
    assert second.token is None  # shown once only, on the first start
    assert second.fingerprint == first.fingerprint  # same long-term key
    async with httpx.AsyncClient(base_url=second.admin_url, headers=headers) as admin:
        after = (await admin.get("/v1/admin/devices/r1")).json()
        assert {k: v for k, v in after.items() if k not in ("key_age_s", "online")} == {
            k: v for k, v in before.items() if k not in ("key_age_s", "online")
        }
        assert after["order_epoch"] == 1 and after["epoch"] == 1
        audit_after = (await admin.get("/v1/admin/audit")).json()
        assert audit_after == audit_before
        # The device reconnects under its key; the queued 403 goes out; it rekeys with the
        # seed issued before the crash.
        dev.url = second.device_url
        mark = len(dev.events)
        await dev.connect()
        await dev.until(seed_at(2), mark)
        assert dev.keystore.epoch == 2
        for _ in range(200):
            view = (await admin.get("/v1/admin/devices/r1")).json()
            if view["epoch"] == 2 and view["order_epoch"] is None:
                break
            await asyncio.sleep(0.02)
        assert view["epoch"] == 2 and view["order_epoch"] is None
        await dev.close()
        r = await admin.get("/v1/admin/devices", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    second.p.send_signal(signal.SIGTERM)
    assert second.p.wait(15) == 0
