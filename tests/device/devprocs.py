"""Real processes for the device tests (helpers and fixtures): a ``keyseed server``
process (``server_main.py``: the real server with the recipe service and the test-only crash
hooks) and ``keyseed device`` processes (``python -m keyseed.device``), talking over real
sockets on loopback.

Waiting is by polling an observable state (the admin API, the device's setup endpoint, a
process exit) up to a generous bound; a bound that runs out fails the test, nothing asserts
on time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from waiting import WAIT, wait_until

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(extra or {})
    return env


class ServerProc:
    """``keyseed server`` in its own process; restartable on the same data and ports."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "server-data"
        self.port = free_port()
        self.admin_port = free_port()
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen[str] | None = None
        self.token = ""
        self.fingerprint = ""
        self.policy: str | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, crash_at: str | None = None) -> None:
        extra = {"KEYSEED_CRASH_AT": crash_at} if crash_at else {}
        if self.policy:
            extra["KEYSEED_TEST_POLICY"] = self.policy
        cmd = [
            sys.executable,
            str(HERE / "server_main.py"),
            "--data", str(self.data),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--admin-port", str(self.admin_port),
            "--s27-timeout", "5",
        ]  # fmt: skip
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(extra)
            )
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server did not start:\n{self.log.read_text()[-3000:]}")
            if line.startswith("admin token"):
                self.token = line.rsplit(" ", 1)[1].strip()
            if line.startswith("server key hpke-x25519"):
                self.fingerprint = line.rsplit(" ", 1)[1].strip()
            if line.startswith("admin listener"):
                return

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.admin_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def server_key(self) -> str:
        with self.admin() as c:
            keys = c.get("/v1/admin/keys").json()
        return str(next(k["public_key"] for k in keys if k["suite"] == "hpke-x25519"))

    def register(self, device_id: str, code: str = "12345678") -> None:
        with self.admin() as c:
            r = c.post("/v1/admin/devices", json={"device_id": device_id, "setup_code": code})
        assert r.status_code == 201, r.text

    def view(self, device_id: str) -> dict[str, Any]:
        with self.admin() as c:
            r = c.get(f"/v1/admin/devices/{device_id}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def wait_dead(self) -> int:
        assert self.proc is not None
        return self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class DeviceProc:
    """``keyseed device`` in its own process, with its setup endpoint on loopback."""

    def __init__(self, tmp: Path, device_id: str, server: ServerProc) -> None:
        self.device_id = device_id
        self.server = server
        self.keystore = tmp / f"{device_id}.ks"
        self.listen_port = free_port()
        self.log = tmp / f"{device_id}.log"
        self.proc: subprocess.Popen[str] | None = None

    def args(self, *extra: str) -> list[str]:
        return [
            "--id", self.device_id,
            "--server", self.server.url,
            "--keystore", str(self.keystore),
            "--listen", f"127.0.0.1:{self.listen_port}",
            "--backoff-initial", "0.05",
            "--backoff-max", "0.5",
            "--status-interval", "0.5",
            "--cook-speed", "20",
            "--rekey-min-interval", "0",
            *extra,
        ]  # fmt: skip

    def run(
        self, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (for starts that must fail)."""
        return subprocess.run(
            [sys.executable, "-m", "keyseed.device", *self.args(*extra)],
            capture_output=True,
            text=True,
            env=_env(env),
            timeout=WAIT,
            check=False,
        )

    def start(self, *extra: str, crash_at: str | None = None) -> None:
        env = {"KEYSEED_CRASH_AT": crash_at} if crash_at else {}
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keyseed.device", *self.args(*extra)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=_env(env),
            )

    @property
    def token(self) -> str:
        return self.keystore.with_name(self.keystore.name + ".token").read_text().strip()

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.listen_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )

    def status(self) -> dict[str, Any] | None:
        if not self.keystore.with_name(self.keystore.name + ".token").exists():
            return None
        with self.http() as c:
            r = c.get("/v1/status")
        if r.status_code != 200:
            return None
        out: dict[str, Any] = r.json()
        return out

    def rekey(self) -> httpx.Response:
        with self.http() as c:
            return c.post("/v1/rekey")

    def wait_dead(self) -> int:
        assert self.proc is not None
        return self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


def enrolled(dev: DeviceProc, srv: ServerProc, *extra: str) -> dict[str, Any]:
    srv.register(dev.device_id)
    dev.start("--server-key", srv.server_key(), "--setup-code", "12345678", *extra)
    return wait_until(
        lambda: (s := dev.status()) and s["epoch"] >= 1 and s["connected"] and s, "enrolment"
    )


def converged(dev: DeviceProc, srv: ServerProc, min_epoch: int) -> dict[str, Any]:
    """One key on both sides, the 206 acknowledged, a seed on the device, online."""

    def check() -> dict[str, Any] | None:
        s = dev.status()
        if not s or not s["connected"] or not s["has_seed"] or s["epoch"] < min_epoch:
            return None
        v = srv.view(dev.device_id)
        if v["epoch"] != s["epoch"] or v["owed_206"] or v["pending_exchange"]:
            return None
        return s

    return wait_until(check, f"convergence at epoch >= {min_epoch}")


def cooks(dev: DeviceProc, srv: ServerProc, recipe: str = "warm-milk") -> None:
    """Application traffic both ways: the setup PC orders through the server, the oven
    fetches the recipe, cooks, and reports done."""
    with srv.admin() as c:
        r = c.post(f"/v1/admin/devices/{dev.device_id}/cook", json={"recipe": recipe})
    assert r.status_code == 202, r.text
    wait_until(
        lambda: (
            (s := dev.status()) and s["app"]["recipe"] == recipe and s["app"]["state"] == "done"
        ),
        "the oven to cook",
    )

    def reported() -> bool:
        with srv.admin() as c:
            app = c.get(f"/v1/admin/devices/{dev.device_id}/app").json()
        return app.get("recipe") == recipe and app.get("state") == "done"

    wait_until(reported, "the server to hear the status")


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path) -> Iterator[ServerProc]:
    srv = ServerProc(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(name="devices")
def devices_fixture(tmp_path: Path) -> Iterator[list[DeviceProc]]:
    started: list[DeviceProc] = []
    yield started
    for dev in started:
        dev.stop()


@pytest.fixture(name="policy_server")
def policy_server_fixture(tmp_path: Any, request: pytest.FixtureRequest) -> Any:
    srv = ServerProc(tmp_path)
    srv.policy = request.param
    srv.start()
    yield srv
    srv.stop()
