"""Floods against a real ``keyseed server`` process on SQLite (DESIGN.md section 4, "Bounded
half-open state"): 203s from unregistered device IDs, 203s under one registered ID by a
sender that does not hold its key, and connections that open and never speak. Each 203 is
built by the real device core (HELLO, unauthenticated HELLO_ACK, enrolment 203 with a real
HPKE P) on a connection of its own, since the server closes a connection after its 204 NG.

While each flood runs, a legitimate device registers and enrols (the real device core over
its own WebSocket). Afterwards the server's open connections are back to none, its database
holds no row the flood added (audit rows for refusals stay within the audit budget) and the
flooded device still confirms under its key.

The tests use a few thousand frames. The figures in docs/security.md come from the full
counts, measured against the same server process::

    .venv/bin/python tests/security/test_floods.py --json              # 10,000 / 10,000 / 1,000
    .venv/bin/python tests/security/test_floods.py --count 2000 --idle 500

Memory is the server process's resident set (VmRSS), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE.parent / "server"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import httpx  # noqa: E402
import pytest  # noqa: E402
import uvicorn  # noqa: E402
import websockets  # noqa: E402
from devclient import TestDevice  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from keyseed.loopback import DeviceDisk  # noqa: E402
from keyseed.protocol import DeviceProtocol, new_keystore  # noqa: E402
from keyseed.protocol.errors import ErrorCode  # noqa: E402
from keyseed.protocol.events import KeyEstablished  # noqa: E402
from keyseed.protocol.messages import MsgType, decode_frame  # noqa: E402
from keyseed.protocol.records import Keystore  # noqa: E402
from keyseed.server import ratelimit  # noqa: E402
from keyseed.server.config import ConfigError, load_config  # noqa: E402
from keyseed.server.runtime import AUDIT_BUDGET_PER_MIN  # noqa: E402

ROOT = HERE.parents[1]
SUITE = "hpke-x25519"
CODE = "12345678"
#: Generous bound on any single wait; only a hang reaches it.
WAIT = 60.0
#: Flood connections in flight at once (one client process).
CONCURRENCY = 32
#: Counts of the tests (the figures use the full counts, see the module docstring).
TEST_COUNT = 1500
TEST_IDLE = 200
#: Growth of the server's RSS over a second flood of the same kind (the first warms the
#: allocator up) that would mean a leak: at test counts, 1,500 203s leaking 2.7 KiB each or
#: 200 idle connections leaking 20 KiB each (an idle connection costs about 23 KiB).
LEAK_MIB = 4.0
#: Seconds silent TCP connections are watched (three handshake deadlines).
SILENT_HOLD = 15.0


# -- the server process -----------------------------------------------------------------


class ServerProc:
    """``keyseed server`` on SQLite in its own process; its RSS, rows and metrics."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.data = tmp / "data"
        self.log = tmp / "server.log"
        penv = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
        penv["PYTHONPATH"] = str(ROOT / "src")
        penv.update(env or {})
        cmd = [
            sys.executable, "-m", "keyseed", "server", "--data", str(self.data),
            "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--app", "echo",
        ]  # fmt: skip
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=penv
            )
        assert self.proc.stdout is not None
        out = []
        for line in self.proc.stdout:
            out.append(line)
            if line.startswith("admin listener:"):
                break
        text = "".join(out)
        dev = re.search(r"device listener: ws://[\d.]+:(\d+)/v1/device", text)
        adm = re.search(r"admin listener: http://[\d.]+:(\d+)/v1/admin", text)
        tok = re.search(r"admin token \(shown once; store it now\): (\S+)", text)
        assert dev and adm and tok, text + self.log.read_text()[-3000:]
        self.port = int(dev.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/v1/device"
        self.admin = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{adm.group(1)}",
            headers={"Authorization": f"Bearer {tok.group(1)}"},
            timeout=WAIT,
        )

    def rss_mib(self) -> float:
        """Resident set of the server process, MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert m, status
        return int(m.group(1)) / 1024

    def rows(self) -> dict[str, int]:
        """Rows of the tables a flood could grow, read from the database file."""
        db = sqlite3.connect(f"file:{self.data / 'keyseed.db'}?mode=ro", uri=True, timeout=30)
        try:
            return {
                t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("devices", "audit")
            }
        finally:
            db.close()

    async def metrics(self) -> dict[str, float]:
        """The /metrics samples, keyed by name with labels."""
        r = await self.admin.get("/metrics")
        assert r.status_code == 200, r.text
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    async def unauthenticated(self) -> float:
        """Open device connections that have proven no key (every flood connection)."""
        return (await self.metrics()).get("keyseed_unauthenticated_connections", -1.0)

    async def server_key(self) -> bytes:
        keys = (await self.admin.get("/v1/admin/keys")).json()
        return bytes.fromhex(next(k["public_key"] for k in keys if k["suite"] == SUITE))

    async def register(self, device_id: str) -> None:
        r = await self.admin.post(
            "/v1/admin/devices", json={"device_id": device_id, "setup_code": CODE}
        )
        assert r.status_code == 201, r.text

    async def view(self, device_id: str) -> dict[str, Any]:
        r = await self.admin.get(f"/v1/admin/devices/{device_id}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def close(self) -> None:
        await self.admin.aclose()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Sampler:
    """The server's RSS every 50 ms while a flood runs: its peak."""

    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.peak = srv.rss_mib()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.srv.rss_mib())
            await asyncio.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, self.srv.rss_mib())


# -- flood clients ----------------------------------------------------------------------


def _close_outcome(code: int | None) -> str:
    if code is None:
        return "eof"
    if code >= 4000:
        try:
            return f"close:{ErrorCode(code - 4000).name}"
        except ValueError:
            pass
    return f"close:{code}"


async def send_203(url: str, ks: Keystore) -> str:
    """One connection from the real device core: HELLO, then the enrolment 203 it sends on
    an unauthenticated HELLO_ACK. The outcome: ``204_ng`` (the server answered the 203 with a
    204 NG), ``refused`` (turned away before the WebSocket opened), or how it closed."""
    try:
        ws = await connect(url, compression=None, open_timeout=WAIT, close_timeout=1)
    except websockets.InvalidStatus as exc:
        return f"refused:{exc.response.status_code}"
    except (OSError, TimeoutError) as exc:
        return f"connect:{type(exc).__name__}"
    outcome = ""
    try:
        proto = DeviceProtocol(ks, now=time.monotonic())
        proto.connect(time.monotonic())
        while True:
            proto.events_received()  # the keystore is thrown away: nothing to persist
            for frame in proto.messages_to_send():
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(frame)
            if proto.close_expected():
                break
            try:
                data = await asyncio.wait_for(ws.recv(), WAIT)
            except websockets.ConnectionClosed:
                break
            assert isinstance(data, bytes)
            if decode_frame(data).type is MsgType.M204:
                outcome = "204_ng"  # NG: every 204 NG is the same bytes
            proto.receive_message(data, time.monotonic())
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
    return outcome or _close_outcome(ws.close_code)


async def flood_203(
    url: str,
    keystores: Iterator[Keystore],
    count: int,
    legit: Callable[[], Awaitable[float]] | None = None,
    concurrency: int = CONCURRENCY,
) -> dict[str, Any]:
    """``count`` 203s, ``concurrency`` connections at a time; outcomes and rate. ``legit``
    starts once a quarter of the flood is done; the report says how far the flood was when it
    started and when it finished (it ran *during* the flood if the second is under
    ``count``)."""
    outcomes: Counter[str] = Counter()
    left = iter(range(count))
    done = 0
    legit_task: asyncio.Task[float] | None = None
    legit_at: list[int] = []
    t0 = time.monotonic()

    async def run_legit() -> float:
        assert legit is not None
        legit_at.append(done)
        seconds = await legit()
        legit_at.append(done)
        return seconds

    async def sender() -> None:
        nonlocal done, legit_task
        for _ in left:
            outcomes[await send_203(url, next(keystores))] += 1
            done += 1
            if legit is not None and legit_task is None and done >= count // 4:
                legit_task = asyncio.ensure_future(run_legit())

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {
        "frames": count,
        "seconds": round(elapsed, 2),
        "per_s": round(count / elapsed, 1),
        "outcomes": dict(sorted(outcomes.items())),
    }
    if legit_task is not None:
        out["legit_enrol_s"] = round(await legit_task, 3)
        out["legit_between_frames"] = legit_at
    return out


def keystores(template: Keystore, ids: Callable[[int], str]) -> Iterator[Keystore]:
    """Keystores for the flood: the template (one scrypt for all; its k_code is wrong for
    any other ID, which a flooder's is too) under each ID in turn."""
    n = 0
    while True:
        yield dataclasses.replace(template, device_id=ids(n))
        n += 1


async def open_idle(url: str, count: int) -> list[Any]:
    """``count`` WebSocket connections that never send a frame (opened 32 at a time)."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> Any:
        async with sem:
            return await connect(url, compression=None, open_timeout=WAIT)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def idle_closes(conns: list[Any]) -> Counter[str]:
    """Wait until the server closes every idle connection; how each closed."""

    async def one(ws: Any) -> str:
        # The server's CLOSE frame (the protocol's) comes first, then the WebSocket close.
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                data = await asyncio.wait_for(ws.recv(), WAIT)
                if not isinstance(data, bytes) or decode_frame(data).type is not MsgType.CLOSE:
                    return "spoke"
        return _close_outcome(ws.close_code)

    return Counter(await asyncio.gather(*(one(ws) for ws in conns)))


async def silent_tcp(srv: ServerProc, count: int) -> dict[str, Any]:
    """``count`` TCP connections to the device listener that never send the HTTP upgrade:
    how many the server has closed after ``SILENT_HOLD`` seconds, and what they cost."""
    before = srv.rss_mib()
    pairs = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(count)]
    held = srv.rss_mib()
    await asyncio.sleep(SILENT_HOLD)
    closed = sum(1 for reader, _ in pairs if reader.at_eof())
    for _, writer in pairs:
        writer.close()
    return {
        "opened": count,
        "rss_mib": {"before": round(before, 1), "held": round(held, 1)},
        "seconds_watched": SILENT_HOLD,
        "closed_by_server": closed,
    }


# -- a legitimate device meanwhile ------------------------------------------------------

#: The legitimate device's own address (all of 127/8 is loopback): the floods come from
#: 127.0.0.1, and the per-address limits must not count it with them.
LEGIT_ADDR = "127.0.0.2"


class LegitDevice(TestDevice):
    """A test device that connects from :data:`LEGIT_ADDR`."""

    async def connect(self) -> None:
        self.ws = await connect(
            self.url, max_size=None, compression=None, local_addr=(LEGIT_ADDR, 0)
        )
        now = time.monotonic()
        self.proto = DeviceProtocol(self.disk.keystore, now=now, config=self.config)
        self.sent, self.received, self.held = [], [], []
        self._changed = asyncio.Event()
        self.proto.connect(now)
        await self.flush()
        self._task = asyncio.create_task(self._drive(self.proto, self.ws))


async def legit_keystore(srv: ServerProc, device_id: str) -> Keystore:
    """A fresh keystore installed with the setup code the registration used."""
    return new_keystore(
        device_id=device_id,
        suite=SUITE,
        server_key=await srv.server_key(),
        install_secret=os.urandom(32),
        setup_code=CODE,
    )


async def enrol_connected(srv: ServerProc, device_id: str) -> LegitDevice:
    """Register ``device_id`` and enrol it with the real device core; it stays connected."""
    await srv.register(device_id)
    dev = LegitDevice(srv.url, DeviceDisk(await legit_keystore(srv, device_id)))
    await dev.connect()
    ev = await dev.until(lambda e: isinstance(e, KeyEstablished))
    assert isinstance(ev, KeyEstablished) and ev.enrolment
    view = await srv.view(device_id)
    assert view["enrolled"] and view["epoch"] == 1, view
    return dev


async def enrol_legit(srv: ServerProc, device_id: str) -> float:
    """Register ``device_id`` and enrol it with the real device core; seconds it took."""
    t0 = time.monotonic()
    dev = await enrol_connected(srv, device_id)
    await dev.close()
    return time.monotonic() - t0


async def wait_quiet(srv: ServerProc) -> None:
    """Until the server holds no unauthenticated connection (the flood's are all gone)."""
    deadline = time.monotonic() + WAIT
    while (n := await srv.unauthenticated()) != 0:
        assert time.monotonic() < deadline, f"{n} connections still open"
        await asyncio.sleep(0.1)


# -- the campaign -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def measured(srv: ServerProc, name: str, report: dict[str, Any]) -> AsyncIterator[Sampler]:
    """Figures around one flood: RSS before/peak/after, rows before/after, audit budget."""
    before_rows, before_rss = srv.rows(), srv.rss_mib()
    before_m = await srv.metrics()
    t0 = time.monotonic()
    with Sampler(srv) as sampler:
        yield sampler
    await wait_quiet(srv)
    after_m = await srv.metrics()
    minutes = (time.monotonic() - t0) / 60
    entry = report.setdefault(name, {})
    entry.update(
        {
            "rss_mib": {
                "before": round(before_rss, 1),
                "peak": round(sampler.peak, 1),
                "after": round(srv.rss_mib(), 1),
            },
            "rows_before": before_rows,
            "rows_after": srv.rows(),
            "audit_budget": int(AUDIT_BUDGET_PER_MIN * (1 + minutes)) + 1,
            "audit_dropped": after_m.get("keyseed_audit_dropped_total", 0.0)
            - before_m.get("keyseed_audit_dropped_total", 0.0),
            "rate_limited": {
                k: after_m[k] - before_m.get(k, 0.0)
                for k in after_m
                if k.startswith("keyseed_rate_limited_total")
            },
        }
    )


async def campaign(
    tmp: Path, count: int, idle: int, env: dict[str, str], silent: int = 0
) -> dict[str, Any]:
    """The three floods against one server process (and ``silent`` TCP connections that
    never send the upgrade, when asked); the report."""
    srv = ServerProc(tmp, env)
    report: dict[str, Any] = {"count_203": count, "idle": idle, "env": env}
    try:
        server_key = await srv.server_key()
        template = new_keystore(
            device_id="template",
            suite=SUITE,
            server_key=server_key,
            install_secret=os.urandom(32),
            setup_code=secrets.token_hex(8),
        )
        # A registered, enrolled device whose ID the second flood uses without its key; it
        # stays connected through the flood.
        victim = await enrol_connected(srv, "victim")
        report["rss_mib_start"] = round(srv.rss_mib(), 1)

        def unknown(n: int) -> str:
            return f"nobody-{secrets.token_hex(4)}-{n}"

        async with measured(srv, "unregistered_203", report):
            report["unregistered_203"] = await flood_203(
                srv.url, keystores(template, unknown), count, lambda: enrol_legit(srv, "legit-1")
            )
        async with measured(srv, "registered_203", report):
            report["registered_203"] = await flood_203(
                srv.url,
                keystores(template, lambda n: "victim"),
                count,
                lambda: enrol_legit(srv, "legit-2"),
            )
        # The flooded device still holds the key the server agrees on: 208 -> 207 -> 209 on
        # the connection it kept through the flood.
        r = await srv.admin.post("/v1/admin/devices/victim/confirm")
        assert r.status_code == 200, r.text
        report["victim_confirmed"] = {k: r.json()[k] for k in ("ok", "epoch")}
        await victim.close()

        # Twice: the first round leaves the allocator's high-water mark, a second must not
        # add to it (a leak would).
        for round_, name in enumerate(("idle_ws", "idle_ws_again"), start=3):
            async with measured(srv, name, report) as sampler:
                conns = await open_idle(srv.url, idle)
                sampler.peak = max(sampler.peak, srv.rss_mib())
                legit_s = await enrol_legit(srv, f"legit-{round_}")
                closes = await idle_closes(conns)
                report[name] = {
                    "opened": len(conns),
                    "closed_by_server": dict(sorted(closes.items())),
                    "legit_enrol_s": round(legit_s, 3),
                }
        if silent:
            report["tcp_silent"] = await silent_tcp(srv, silent)
        report["rss_mib_end"] = round(srv.rss_mib(), 1)
    finally:
        await srv.close()
    return report


def check(report: dict[str, Any]) -> None:
    """What must hold after the floods, whatever the counts."""
    for name in ("unregistered_203", "registered_203"):
        r = report[name]
        assert sum(r["outcomes"].values()) == report["count_203"], r
        # The legitimate device that enrolled meanwhile is the only new device row.
        assert r["rows_after"]["devices"] == r["rows_before"]["devices"] + 1, r
        grown = r["rows_after"]["audit"] - r["rows_before"]["audit"]
        # The legitimate enrolment writes a handful; the refusals stay within the budget.
        assert grown <= r["audit_budget"] + 10, r
        assert r["audit_dropped"] >= report["count_203"] - r["audit_budget"], r
    # Every 203 got its 204 NG (none was refused: no limit was reached).
    for name in ("unregistered_203", "registered_203"):
        assert report[name]["outcomes"] == {"204_ng": report["count_203"]}, report[name]
        # The legitimate device enrolled while the flood was still being sent.
        assert report[name]["legit_between_frames"][1] < report["count_203"], report[name]
    # No leak: the second flood (after the first warmed the allocator up) adds next to
    # nothing, whatever its size.
    rss = report["registered_203"]["rss_mib"]
    assert rss["after"] - rss["before"] < LEAK_MIB, rss
    for name in ("idle_ws", "idle_ws_again"):
        idle = report[name]
        assert idle["opened"] == sum(idle["closed_by_server"].values()) == report["idle"], idle
        # Connections that never spoke are closed by the handshake deadline (or refused at
        # once over a per-address limit).
        allowed = {f"close:{ErrorCode.TIMEOUT.name}", f"close:{ErrorCode.RATE_LIMITED.name}"}
        assert set(idle["closed_by_server"]) <= allowed, idle
        assert idle["rows_after"]["devices"] == idle["rows_before"]["devices"] + 1, idle
    again = report["idle_ws_again"]["rss_mib"]
    assert again["after"] - again["before"] < LEAK_MIB, again


# -- tests ------------------------------------------------------------------------------


async def test_floods_stay_bounded(tmp_path: Path) -> None:
    """The three floods at test counts: nothing grows that should not, a legitimate device
    enrols during each, and the flooded device keeps its key."""
    report = await campaign(tmp_path, TEST_COUNT, TEST_IDLE, {"KEYSEED_HANDSHAKE_TIMEOUT": "3"})
    check(report)
    assert report["victim_confirmed"] == {"ok": True, "epoch": 1}


async def test_one_address_cannot_take_every_slot(tmp_path: Path) -> None:
    """Why ``max_pending_per_ip`` exists: without it, connections from one address that
    never speak take every slot of ``max_connections`` and a legitimate device is turned
    away; with it, the flood is closed with RATE_LIMITED past the limit and the legitimate
    device enrols."""
    timeout, limited_code = f"close:{ErrorCode.TIMEOUT.name}", ErrorCode.RATE_LIMITED
    fast = {"KEYSEED_HANDSHAKE_TIMEOUT": "3"}
    unlimited = ServerProc(
        tmp_path / "a",
        {"KEYSEED_MAX_CONNECTIONS": "60", "KEYSEED_MAX_PENDING_PER_IP": "0", **fast},
    )
    try:
        conns = await open_idle(unlimited.url, 60)
        await unlimited.register("legit")
        dev = LegitDevice(unlimited.url, DeviceDisk(await legit_keystore(unlimited, "legit")))
        await dev.connect()
        assert await dev.closed_code() == 4000 + int(limited_code)
        m = await unlimited.metrics()
        assert m['keyseed_rate_limited_total{limit="max_connections"}'] == 1.0
        assert await idle_closes(conns) == {timeout: 60}
    finally:
        await unlimited.close()

    limited = ServerProc(
        tmp_path / "b",
        {"KEYSEED_MAX_CONNECTIONS": "60", "KEYSEED_MAX_PENDING_PER_IP": "20", **fast},
    )
    try:
        conns = await open_idle(limited.url, 60)
        await enrol_legit(limited, "legit")
        m = await limited.metrics()
        assert m['keyseed_rate_limited_total{limit="pending_per_ip"}'] == 40.0
        assert m['keyseed_rate_limited_total{limit="max_connections"}'] == 0.0
        assert await idle_closes(conns) == {f"close:{limited_code.name}": 40, timeout: 20}
        await wait_quiet(limited)
        assert limited.rows()["devices"] == 1
    finally:
        await limited.close()


async def test_connect_rate_per_ip_refuses_a_fast_sender(tmp_path: Path) -> None:
    """``connect_rate_per_ip``: a sender over the rate gets 429 (counted) before anything
    else is spent on it; a device from another address enrols meanwhile."""
    srv = ServerProc(tmp_path, {"KEYSEED_CONNECT_RATE_PER_IP": "2"})
    try:
        server_key = await srv.server_key()
        template = new_keystore(
            device_id="t", suite=SUITE, server_key=server_key,
            install_secret=os.urandom(32), setup_code=None,
        )  # fmt: skip
        out = await flood_203(
            srv.url,
            keystores(template, lambda n: f"x-{n}"),
            200,
            lambda: enrol_legit(srv, "legit"),
        )
        outcomes = out["outcomes"]
        ng, refused = outcomes.get("204_ng", 0), outcomes.get("close:RATE_LIMITED", 0)
        assert ng + refused == 200, out
        # A burst of 4, then 2 a second: most of a 200-frame flood is refused.
        assert refused > 100, out
        m = await srv.metrics()
        assert m['keyseed_rate_limited_total{limit="rate_per_ip"}'] == refused
        assert (await srv.view("legit"))["enrolled"]
    finally:
        await srv.close()


class _Conn:
    def __init__(self) -> None:
        self.device_id: str | None = None


def test_limits_count_only_unauthenticated_connections() -> None:
    limits = ratelimit.ConnectionLimits(
        max_pending_per_ip=2,
        connect_rate_per_ip=0,
        authenticated=lambda c: getattr(c, "device_id", None) is not None,
        registry=CollectorRegistry(),
    )
    a, b = _Conn(), _Conn()
    assert limits.admit("10.0.0.1", open_now=0, cap=10) is None
    limits.add("10.0.0.1", a)
    limits.add("10.0.0.1", b)
    assert limits.admit("10.0.0.1", open_now=2, cap=10) == "pending_per_ip"
    assert limits.admit("10.0.0.2", open_now=2, cap=10) is None  # another address
    assert limits.admit("10.0.0.2", open_now=10, cap=10) == "max_connections"
    a.device_id = "dev"  # proved a key: no longer counted
    assert limits.admit("10.0.0.1", open_now=2, cap=10) is None
    limits.discard("10.0.0.1", a)
    limits.discard("10.0.0.1", b)
    assert limits.unauthenticated() == 0


def test_rate_limit_bucket_refills_and_its_table_stays_bounded() -> None:
    now = [100.0]
    limits = ratelimit.ConnectionLimits(
        max_pending_per_ip=0,
        connect_rate_per_ip=1.0,
        authenticated=lambda c: False,
        registry=CollectorRegistry(),
        clock=lambda: now[0],
    )
    ok = [limits.admit("10.0.0.1", open_now=0, cap=10) for _ in range(3)]
    assert ok == [None, None, "rate_per_ip"]  # a burst of 2 at 1/s
    now[0] += 1.0
    assert limits.admit("10.0.0.1", open_now=0, cap=10) is None
    assert limits.admit("10.0.0.1", open_now=0, cap=10) == "rate_per_ip"
    # Many addresses, all within the same instant: the table never outgrows its bound.
    for i in range(ratelimit.MAX_TRACKED + 500):
        limits.admit(f"10.1.{i // 256}.{i % 256}", open_now=0, cap=10)
    assert len(limits._buckets) <= ratelimit.MAX_TRACKED


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"KEYSEED_MAX_PENDING_PER_IP": "5"}, "max_pending_per_ip", 5),
        ({"KEYSEED_CONNECT_RATE_PER_IP": "2.5"}, "connect_rate_per_ip", 2.5),
        ({}, "max_pending_per_ip", 1000),
        ({}, "connect_rate_per_ip", 0.0),
    ],
)
def test_limits_config(env: dict[str, str], field: str, value: float) -> None:
    assert getattr(load_config({}, env), field) == value


@pytest.mark.parametrize(
    "env",
    [
        {"KEYSEED_MAX_PENDING_PER_IP": "-1"},
        {"KEYSEED_MAX_PENDING_PER_IP": "many"},
        {"KEYSEED_CONNECT_RATE_PER_IP": "nan"},
        {"KEYSEED_CONNECT_RATE_PER_IP": "-0.5"},
    ],
)
def test_limits_config_refuses_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="bad value"):
        load_config({}, env)


async def test_head_deadline_closes_silent_tcp_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """:class:`~keyseed.server.ratelimit.HeadDeadline`: a TCP connection that never sends a
    request head (or sends it too slowly) is closed at the deadline; a WebSocket opened in
    time, and a plain request, are not touched by it."""
    monkeypatch.setattr(ratelimit, "HEAD_TIMEOUT", 0.5)

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_bytes(await ws.receive_bytes())
        await ws.close()

    async def ok(request: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[WebSocketRoute("/ws", echo), Route("/ok", ok)])
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, http=ratelimit.HeadDeadline, log_config=None,
            lifespan="off",
        )
    )  # fmt: skip
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        silent = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"GET /ok HTTP/1.1\r\n")  # never finishes its head
        ws = await connect(f"ws://127.0.0.1:{port}/ws")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/ok")).text == "ok"
        assert await asyncio.wait_for(silent[0].read(), WAIT) == b""
        assert await asyncio.wait_for(slow[0].read(), WAIT) == b""
        # The WebSocket outlived the deadline and still works.
        await ws.send(b"still here")
        assert await ws.recv() == b"still here"
        await ws.close()
        for _, writer in (silent, slow):
            writer.close()
    finally:
        server.should_exit = True
        await task


# -- command line -----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="203s per flood")
    parser.add_argument("--idle", type=int, default=1000, help="connections that never speak")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEYSEED_X=V",
        help="server environment (a limit, say)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(campaign(Path(tmp), args.count, args.idle, env, args.idle))
    if not env:
        check(report)  # with limits given, refusals are expected and the checks differ
    print(json.dumps(report, indent=None if args.json else 2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
