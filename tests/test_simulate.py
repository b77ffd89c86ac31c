"""``keyseed simulate`` against a real server (both uvicorn listeners in this process, SQLite in
the test's folder): the command runs in a worker thread with its own event loop, exactly as
from the shell, and the server's admin API is asked afterwards whether it agrees."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyseed.server import EchoApp, RunningServer, ServerConfig, start_server
from keyseed.server.datadir import open_data_dir
from keyseed.settings import ConfigError
from keyseed.simulate import main, percentile, ws_url


@dataclass
class Srv:
    running: RunningServer
    admin: httpx.AsyncClient
    token_file: Path

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.running.device_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.running.admin_port}"

    async def devices(self, prefix: str) -> list[dict[str, Any]]:
        r = await self.admin.get("/v1/admin/devices")
        assert r.status_code == 200, r.text
        return [d for d in r.json() if d["device_id"].startswith(prefix)]


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Srv]:
    data = tmp_path / "data"
    config = ServerConfig(data=data, host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    found = open_data_dir(data, config.suites)
    running = await start_server(config, app=EchoApp(), secrets=found)
    assert found.new_token is not None
    token_file = tmp_path / "admin.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(found.new_token + "\n")
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.admin_port}",
        headers={"Authorization": f"Bearer {found.new_token}"},
        timeout=30,
    )
    yield Srv(running, admin, token_file)
    await admin.aclose()
    await running.stop()


def _env_without_keyseed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYSEED_"):
            monkeypatch.delenv(name)


async def test_fleet_enrols_exchanges_and_rekeys(
    srv: Srv, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_without_keyseed(monkeypatch)
    argv = [
        "--server", srv.ws,
        "--devices", "20",
        "--duration", "4",
        "--rate", "2",
        "--rekey-messages", "1",
        "--orders", "1",
        "--prefix", "fleet-",
        "--admin-url", srv.admin_url,
        "--admin-token-file", str(srv.token_file),
        "--json",
    ]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == {"total": 0}, out
    assert code == 0, out
    assert out["ok"] is True
    assert out["enrolled"] == 20 and out["not_enrolled"] == 0
    assert out["exchanges"]["ng"] == 0
    # Every enrolment, and a rekey by policy (1 message per key) after every message.
    assert out["exchanges"]["ok"] == 20 + out["exchanges"]["rekeys"]
    assert out["exchanges"]["rekeys"] >= 20
    # Only compare-and-set races (an order against an exchange) may have cost a connection.
    assert set(out["closes"]) <= {"CONFLICT"}, out
    assert out["orders"]["sent"] >= 1
    assert out["orders"]["received"] >= 1
    assert out["messages"]["sent"] > 0
    # Every message answered, except one in flight on a connection a CONFLICT closed.
    msgs = out["messages"]
    assert msgs["answered"] + msgs["unanswered"] == msgs["sent"]
    assert msgs["unanswered"] <= out["closes"].get("CONFLICT", 0)
    assert 0 < out["latency"]["exchange"]["count"] <= out["exchanges"]["ok"]
    assert out["latency"]["exchange"]["p50_ms"] is not None
    assert out["latency"]["app"]["count"] == out["messages"]["answered"]
    # The server agrees: every device enrolled, confirmed and rekeyed at least once, nothing
    # left half-done.
    devices = await srv.devices("fleet-")
    assert len(devices) == 20
    for d in devices:
        assert d["enrolled"] and d["confirmed"] and not d["revoked"], d
        assert d["epoch"] >= 2, d
        assert not d["pending_exchange"] and not d["owed_206"], d
    assert sum(d["epoch"] for d in devices) == out["exchanges"]["ok"]
    r = await srv.admin.get("/v1/admin/audit", params={"limit": 1000})
    kinds = [row["kind"] for row in r.json()]
    assert kinds.count("rekey_ordered") == out["orders"]["sent"]


async def test_refused_token_registers_nothing(
    srv: Srv, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_without_keyseed(monkeypatch)
    wrong = tmp_path / "wrong.token"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("not-the-token\n")
    argv = [
        "--server", srv.ws, "--devices", "3", "--duration", "1", "--prefix", "nope-",
        "--admin-url", srv.admin_url, "--admin-token-file", str(wrong), "--json",
    ]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert code == 4
    assert captured.out == ""
    assert "refused the admin token" in captured.err
    assert "not-the-token" not in captured.err
    assert await srv.devices("nope-") == []


async def test_wrong_listener_is_refused(
    srv: Srv, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --server that is not a keyseed device listener: no key, nothing registered."""
    _env_without_keyseed(monkeypatch)
    argv = [
        "--server", f"ws://127.0.0.1:{srv.running.admin_port}", "--devices", "2",
        "--prefix", "bad-", "--admin-url", srv.admin_url,
        "--admin-token-file", str(srv.token_file), "--json",
    ]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    assert code == 1
    assert "server key" in capsys.readouterr().err
    assert await srv.devices("bad-") == []


def test_usage_errors() -> None:
    assert main(["--devices", "2"]) == 2  # no --server
    assert main(["--server", "ftp://x", "--devices", "2"]) == 2
    assert main(["--server", "ws://127.0.0.1:1", "--devices", "0"]) == 2
    assert main(["--server", "ws://127.0.0.1:1", "--devices", "1", "--rate", "nan"]) == 2


def test_ws_url_and_percentile() -> None:
    assert ws_url("http://h:1") == "ws://h:1/v1/device"
    assert ws_url("https://h:1") == "wss://h:1/v1/device"
    assert ws_url("ws://h:1/v1/device") == "ws://h:1/v1/device"
    with pytest.raises(ConfigError):
        ws_url("ws://user:pw@h:1")
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 90) == 3.0
