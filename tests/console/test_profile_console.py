"""Profiles from the setup PC: ``keyseed admin register --suite/--policy-*/--tls-reduced``,
``keyseed admin profile DEVICE ...`` and the dashboard's profile form endpoint, against a real
server (both uvicorn listeners in this process, SQLite, every suite enabled). The CLI runs in
a worker thread with its own event loop, exactly as from the shell."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyseed import cli
from keyseed.server import RunningServer, ServerConfig, start_server
from keyseed.server.datadir import open_data_dir

ALL = ("hpke-x25519", "rsa-oaep", "hpke-mlkem768-x25519")


@dataclass
class Srv:
    running: RunningServer
    token: str
    token_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.running.admin_port}"

    def bearer(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    async def view(self, device_id: str) -> dict[str, Any]:
        async with self.bearer() as c:
            r = await c.get(f"/v1/admin/devices/{device_id}")
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

    async def audit_kinds(self, device_id: str) -> list[str]:
        async with self.bearer() as c:
            r = await c.get("/v1/admin/audit", params={"device_id": device_id})
            return [row["kind"] for row in r.json()]

    @contextlib.asynccontextmanager
    async def dashboard(self) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as c:
            r = await c.post("/login", data={"token": self.token})
            assert r.status_code == 303, r.text
            page = await c.get("/")
            m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
            assert m, page.text
            yield c, m.group(1)


@pytest.fixture(scope="module")
def suite_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three suites' long-term keys, made once (RSA-3072 takes a while)."""
    data = tmp_path_factory.mktemp("keys") / "data"
    open_data_dir(data, ALL)
    return data / "keys"


@pytest.fixture
async def srv(
    tmp_path: Path, suite_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Srv]:
    for name in list(os.environ):
        if name.startswith("KEYSEED_"):
            monkeypatch.delenv(name)
    (tmp_path / "data").mkdir(mode=0o700)
    shutil.copytree(suite_keys, tmp_path / "data" / "keys")
    config = ServerConfig(
        data=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        admin_host="127.0.0.1",
        admin_port=0,
        suites=ALL,
    )
    found = open_data_dir(config.data, config.suites)
    assert found.new_token is not None
    running = await start_server(config, secrets=found)
    token_file = tmp_path / "admin.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(found.new_token + "\n")
    yield Srv(running, found.new_token, token_file)
    await running.stop()


async def admin(srv: Srv, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``keyseed admin ARGV --url ... --token-file ...``: exit code and stdout."""
    full = ["admin", *argv, "--url", srv.url, "--token-file", str(srv.token_file)]

    def run() -> int:
        try:
            return cli.main(full)
        except SystemExit as exc:  # argparse usage errors
            return int(exc.code or 0)

    code = await asyncio.to_thread(run)
    return code, capsys.readouterr().out


async def test_register_with_a_profile_then_change_it(
    srv: Srv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await admin(
        srv, capsys,
        "register", "oven-1", "--setup-code", "12345678", "--suite", "rsa-oaep",
        "--policy-soft-messages", "5", "--policy-hard-messages", "50", "--tls-reduced", "--json",
    )  # fmt: skip
    assert code == 0, out
    view = json.loads(out)
    assert view["profile"]["suite"] == "rsa-oaep" and view["profile"]["tls_reduced"]
    assert view["profile"]["policy"]["soft_messages"] == 5
    # Change the suite and one age limit; the other limits keep their values.
    code, out = await admin(
        srv, capsys,
        "profile", "oven-1", "--suite", "hpke-mlkem768-x25519", "--policy-soft-age-s", "100",
        "--no-tls-reduced", "--json",
    )  # fmt: skip
    assert code == 0, out
    view = json.loads(out)
    profile = view["profile"]
    assert profile["suite"] == "hpke-mlkem768-x25519" and not profile["tls_reduced"]
    assert profile["policy"]["soft_messages"] == 5 and profile["policy"]["hard_messages"] == 50
    assert profile["policy"]["soft_age_s"] == 100
    # Not enrolled yet: the enrolment's 203 still uses the registered suite.
    assert view["suite"] == "rsa-oaep" and view["suite_in_force"] == "rsa-oaep"
    assert "profile_changed" in await srv.audit_kinds("oven-1")
    # The table view names the profile and that it waits for the next 206.
    code, out = await admin(srv, capsys, "profile", "oven-1", "--tls-reduced")
    assert code == 0, out
    assert "next 206" in out and "reduced over TLS" in out


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--suite", "des-cbc"], 2),  # not a suite: argparse
        (["--policy-soft-messages", "-3"], 2),  # not a positive integer: argparse
        (["--policy-soft-messages", "0"], 2),
        (["--policy-soft-messages", "900"], 2),  # above the hard limit (50): server 422
        ([], 2),  # nothing to change
        (["--tls-reduced", "--no-tls-reduced"], 2),
    ],
)
async def test_bad_profile_input_exits_2_and_changes_nothing(
    srv: Srv, capsys: pytest.CaptureFixture[str], argv: list[str], code: int
) -> None:
    got, out = await admin(
        srv, capsys,
        "register", "oven-2", "--setup-code", "12345678",
        "--policy-soft-messages", "5", "--policy-hard-messages", "50", "--json",
    )  # fmt: skip
    assert got == 0, out
    before = await srv.view("oven-2")
    got, _ = await admin(srv, capsys, "profile", "oven-2", *argv)
    assert got == code
    assert await srv.view("oven-2") == before
    assert "profile_changed" not in await srv.audit_kinds("oven-2")


async def test_unknown_device_exits_5(srv: Srv, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = await admin(srv, capsys, "profile", "nobody", "--suite", "rsa-oaep")
    assert code == 5


async def test_dashboard_profile_endpoint(srv: Srv, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = await admin(srv, capsys, "register", "oven-3", "--setup-code", "12345678")
    assert code == 0
    policy = {"soft_messages": 9, "hard_messages": 90, "soft_age_s": 60, "hard_age_s": 600}
    body = {"suite": "rsa-oaep", "policy": policy, "tls_reduced": True}
    async with srv.dashboard() as (c, csrf):
        # Without the CSRF token: refused, nothing changes.
        before = await srv.view("oven-3")
        r = await c.post("/ui/api/devices/oven-3/profile", json=body)
        assert r.status_code == 403
        assert await srv.view("oven-3") == before
        headers = {"X-CSRF-Token": csrf}
        r = await c.post("/ui/api/devices/oven-3/profile", json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["profile"] == body
        # Bad input: a typed 422 and the record as it was.
        before = await srv.view("oven-3")
        bad = {"policy": {**policy, "soft_age_s": 6000}}
        r = await c.post("/ui/api/devices/oven-3/profile", json=bad, headers=headers)
        assert r.status_code == 422 and r.json()["error"] == "validation_error"
        r = await c.post("/ui/api/devices/oven-3/profile", json={"suite": "nope"}, headers=headers)
        assert r.status_code == 422
        assert await srv.view("oven-3") == before
        r = await c.post("/ui/api/devices/ghost/profile", json=body, headers=headers)
        assert r.status_code == 404
        # Registration from the dashboard with the TLS setting.
        r = await c.post(
            "/ui/api/devices",
            json={"device_id": "oven-4", "setup_code": "12345678", "tls_reduced": True},
            headers=headers,
        )
        assert r.status_code == 201 and r.json()["profile"]["tls_reduced"] is True
        # The overview carries the profile the page shows.
        r = await c.get("/ui/api/overview", headers=headers)
        devices = {d["device_id"]: d for d in r.json()["devices"]}
        assert devices["oven-3"]["profile"]["suite"] == "rsa-oaep"
        assert devices["oven-3"]["suite_in_force"] == "hpke-x25519"
    assert "profile_changed" in await srv.audit_kinds("oven-3")
