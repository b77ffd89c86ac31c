"""keyseed.bench.system
~~~~~~~~~~~~~~~~~~~~~~~

``keyseed bench``: the whole server on loopback, next to what a TLS stack does on the same
machine in the same run. The keyseed server runs as ``keyseed server`` in its own process and
the TLS peer (an asyncio TLS 1.3 echo server and a ``websockets`` echo server under TLS) in
another; the bench process drives both as clients. Server CPU time is read from the OS
(``/proc/<pid>/stat``) before and after each phase, and memory from ``/proc/<pid>/status``, so
the client's own work never counts as the server's.

Rates on a shared two-core machine move with the load; what the bench reports as capacities
are rates per second of *server* CPU time (one core's worth), and the ratios compare those.

``keyseed bench tls`` measures what TLS adds in front of keyseed: one device, one exchange or
one application round trip at a time, each timed on its own, against a ``keyseed server``
process serving ``ws://``, then ``wss://``, then ``wss://`` with the device's profile reducing
the keyseed layer for TLS; medians, and the differences to ``ws://``.

Run the TLS peer alone with ``python -m keyseed.bench.system peer CERT KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import ipaddress
import json
import os
import re
import resource
import secrets
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection

from ..crypto import get_suite
from ..crypto.schedule import SEED_ID_LEN, p_info
from ..crypto.suites import SUITES
from ..loopback import DeviceDisk
from ..protocol import DeviceProtocol, new_keystore
from ..protocol.device import DeviceConfig
from ..protocol.events import (
    AppDataReceived,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    SeedStored,
)
from ..protocol.server import X_LEN_REKEY
from ..server.config import LOOP_NAMES, ConfigError
from ..server.run import resolve_loop, run_on
from ..storage.sql import SQLITE_PRAGMAS
from .core import BenchFailure, environment, split_available

#: Bytes of application data per round trip.
PAYLOAD = 64
#: Connections (devices) that run round trips at once.
RT_CONNECTIONS = 16
#: Bound on any single wait for the server or the peer; only a hang reaches it.
WAIT = 60.0
_CODE = "12345678"
#: Enrolment window of the bench's registrations, seconds.
_WINDOW_S = 24 * 3600
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Params:
    """How much a run does. ``quick`` and ``full`` are what ``keyseed bench`` offers."""

    rounds: int
    seconds: float
    exchange_devices: int
    rt_connections: int
    idle_counts: tuple[int, ...]
    raw_ops: int
    #: The keyseed server's database URL (None: SQLite in its data folder).
    database: str | None = None
    #: The event loop of the server, the peer and the clients (``keyseed server --loop``).
    loop: str = "auto"

    @classmethod
    def quick(cls) -> Params:
        return cls(3, 0.8, 8, RT_CONNECTIONS, (100, 1000), 200)

    @classmethod
    def full(cls) -> Params:
        return cls(5, 3.0, 16, RT_CONNECTIONS, (100, 1000, 10_000), 500)


# -- the operating system's view of a process --------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (its threads included)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``."""
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if m is None:
        raise BenchFailure(f"no VmRSS for process {pid}")
    return int(m.group(1)) * 1024


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it) to ``needed`` if the hard
    limit allows; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


# -- the raw limit ------------------------------------------------------------------------


def raw_limit(suite_name: str, ops: int, rounds: int) -> float:
    """One core's rate of the server-side public-key work of one exchange: decrypt P and
    make the next one-time key (rsa-oaep has none: decrypt only). Median over rounds, per
    second of this process's CPU time."""
    suite = get_suite(suite_name)
    info = p_info(
        suite=suite_name,
        device_id="bench-raw",
        epoch=2,
        seed_id=os.urandom(SEED_ID_LEN),
        nd=os.urandom(32),
        ns=os.urandom(32),
    )
    x = os.urandom(X_LEN_REKEY)
    key = suite.generate()
    p = suite.encrypt(key.public_key, x, info)
    generate = suite.one_time_keys
    rates = []
    for _ in range(rounds):
        c0 = time.process_time()
        for _ in range(ops):
            if suite.decrypt(key, p, info) != x:
                raise BenchFailure(f"{suite_name}: decryption did not return X")
            if generate:
                suite.generate()
        rates.append(ops / max(time.process_time() - c0, 1e-9))
    return statistics.median(rates)


# -- the TLS peer (a process of its own) --------------------------------------------------


#: Bytes of the row a durable-commit measurement rewrites: about a sealed device record.
RECORD_BYTES = 600


def durable_commit_us(folder: Path, commits: int, rounds: int) -> float:
    """CPU time (user + system, this thread) of one durable SQLite commit: one record-sized
    row rewritten in its own ``BEGIN IMMEDIATE``/``COMMIT``, with the store's pragmas (WAL,
    ``synchronous=FULL``: an fsync per commit) in a file in ``folder``; median over
    rounds. What a write the invariants need costs before any group commit shares it."""
    path = folder / "commit-floor.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in SQLITE_PRAGMAS:
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        db.execute("INSERT INTO t VALUES (1, ?)", (os.urandom(RECORD_BYTES),))
        per_commit = []
        for _ in range(rounds):
            blobs = [os.urandom(RECORD_BYTES) for _ in range(commits)]
            t0 = time.thread_time()
            for blob in blobs:
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE t SET v = ? WHERE id = 1", (blob,))
                db.execute("COMMIT")
            per_commit.append((time.thread_time() - t0) / commits * 1e6)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return statistics.median(per_commit)


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed ECDSA P-256 certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def _server_tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.num_tickets = 0  # no session tickets: every handshake is a full one
    return ctx


def _client_tls(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def _peer_main(cert: str, key: str) -> None:
    """Serve TLS echo, wss:// echo and plain ws:// echo until stdin closes; print the ports
    first."""
    ctx = _server_tls(cert, key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def ws_echo(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    tls = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    async with (
        websockets.serve(
            ws_echo, "127.0.0.1", 0, ssl=ctx, compression=None, max_size=1 << 16
        ) as wss,
        websockets.serve(ws_echo, "127.0.0.1", 0, compression=None, max_size=1 << 16) as ws,
    ):
        tls_port = tls.sockets[0].getsockname()[1]
        wss_port = next(iter(wss.sockets)).getsockname()[1]
        ws_port = next(iter(ws.sockets)).getsockname()[1]
        print(f"tls {tls_port}\nws {ws_port}\nwss {wss_port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
    tls.close()


# -- a device driven over a real WebSocket ------------------------------------------------


class BenchDevice:
    """The real device core over a real WebSocket, with the driver loop every keyseed
    driver follows: persist durable events, send, re-arm the timer."""

    def __init__(
        self,
        url: str,
        disk: DeviceDisk,
        *,
        tls: ssl.SSLContext | None = None,
        config: DeviceConfig | None = None,
    ) -> None:
        self.url = url
        self.disk = disk
        self.tls = tls
        self.config = config
        self.proto: DeviceProtocol | None = None
        self.ws: ClientConnection | None = None
        self._waiter: tuple[Callable[[Event], bool], asyncio.Future[Event]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await websockets.connect(
            self.url, max_size=None, compression=None, open_timeout=WAIT, ssl=self.tls
        )
        now = time.monotonic()
        self.proto = DeviceProtocol(self.disk.keystore, now=now, config=self.config)
        self.proto.connect(now)
        await self._flush()
        self._task = asyncio.create_task(self._drive(self.proto, self.ws))

    async def _drive(self, proto: DeviceProtocol, ws: ClientConnection) -> None:
        while True:
            timer = proto.get_timer()
            wait = None if timer is None else max(timer - time.monotonic(), 0.0)
            try:
                data = await asyncio.wait_for(ws.recv(), wait)
            except TimeoutError:
                proto.handle_timer(time.monotonic())
            except websockets.ConnectionClosed:
                proto.receive_eof()
                await self._flush()
                return
            else:
                assert isinstance(data, bytes)
                proto.receive_message(data, time.monotonic())
            await self._flush()

    async def _flush(self) -> None:
        assert self.proto is not None and self.ws is not None
        events = self.proto.events_received()
        self.disk.commit(events)  # durable first
        for ev in events:
            w = self._waiter
            if isinstance(ev, ConnectionClosed) and w is not None and not w[1].done():
                w[1].set_exception(BenchFailure(f"{self.disk.keystore.device_id}: {ev.code}"))
            elif w is not None and not w[1].done() and w[0](ev):
                w[1].set_result(ev)
        for data in self.proto.messages_to_send():
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(data)
        if self.proto.close_expected():
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.close()

    async def _until(self, pred: Callable[[Event], bool], start: Callable[[], None]) -> Event:
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiter = (pred, fut)
        try:
            start()
            await self._flush()
            return await asyncio.wait_for(fut, WAIT)
        finally:
            self._waiter = None

    async def enrolled(self) -> None:
        """Connect and wait for the enrolment's 206 (the device enrols by itself)."""

        async def go() -> Event:
            fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
            self._waiter = (lambda ev: isinstance(ev, SeedStored), fut)
            try:
                await self.connect()
                return await asyncio.wait_for(fut, WAIT)
            finally:
                self._waiter = None

        await go()

    async def handshake(self) -> None:
        """Connect and wait until the handshake has authenticated (HELLO to FIN)."""
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiter = (lambda ev: isinstance(ev, HandshakeComplete) and ev.authenticated, fut)
        try:
            await self.connect()
            await asyncio.wait_for(fut, WAIT)
        finally:
            self._waiter = None

    async def exchange(self) -> None:
        """One complete rekey, 203 to 206, on this connection."""
        assert self.proto is not None
        proto = self.proto
        await self._until(
            lambda ev: isinstance(ev, SeedStored), lambda: proto.request_rekey(time.monotonic())
        )

    async def round_trip(self, data: bytes) -> None:
        """One sealed application message and the echo app's sealed answer."""
        assert self.proto is not None
        proto = self.proto
        await self._until(
            lambda ev: isinstance(ev, AppDataReceived),
            lambda: proto.send_app(data, time.monotonic()),
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, WAIT)


# -- the processes ------------------------------------------------------------------------


class _Process:
    """A child process whose first stdout lines announce where it listens."""

    def __init__(self, argv: list[str], until: str, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log = log
        with log.open("a") as err:
            self.p = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
        assert self.p.stdout is not None
        lines = []
        for line in self.p.stdout:
            lines.append(line)
            if line.startswith(until):
                break
        self.out = "".join(lines)
        if not self.out or not lines[-1].startswith(until):
            self.stop()
            raise BenchFailure(f"{argv[2]} did not start: {log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.p.pid

    def cpu(self) -> float:
        return cpu_seconds(self.p.pid)

    def rss(self) -> int:
        return rss_bytes(self.p.pid)

    def stop(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(OSError):
                assert self.p.stdin is not None
                self.p.stdin.close()
            self.p.terminate()
            try:
                self.p.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def _start_server(
    data: Path,
    suites: list[str],
    max_conn: int,
    *,
    tls: tuple[Path, Path] | None = None,
    database: str | None = None,
    loop: str = "auto",
) -> _Process:
    extra = [] if tls is None else ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    if database is not None:
        extra += ["--db", database]
    return _Process(
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
            "--app",
            "echo",
            "--suites",
            ",".join(suites),
            "--max-connections",
            str(max_conn),
            "--idle-timeout",
            "3600",
            "--log-level",
            "warning",
            "--loop",
            loop,
            *extra,
        ],
        "admin listener:",
        data.parent / "server.log",
    )


def _start_peer(cert: Path, key: Path, log: Path, loop: str = "auto") -> _Process:
    argv = [sys.executable, "-m", "keyseed.bench.system", "peer", str(cert), str(key), loop]
    return _Process(argv, "wss ", log)


# -- measurement helpers ------------------------------------------------------------------


async def _timed(
    server: _Process, seconds: float, workers: list[Callable[[], Awaitable[None]]]
) -> tuple[int, float, float, list[float]]:
    """Run every worker in a loop for ``seconds``: operations, wall seconds, server CPU
    seconds, and each operation's latency."""
    latencies: list[float] = []
    stop_at = 0.0

    async def loop(work: Callable[[], Awaitable[None]]) -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await work()
            latencies.append(time.perf_counter() - t)

    c0 = server.cpu()
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(loop(w) for w in workers))
    wall = time.perf_counter() - t0
    cpu = server.cpu() - c0
    return len(latencies), wall, cpu, latencies


@dataclass
class _Rates:
    """Medians over rounds of one timed operation."""

    per_s: float
    server_cpu_us: float
    latency_us: float

    @property
    def capacity(self) -> float:
        """Operations per second of server CPU: one core's capacity."""
        return 1e6 / self.server_cpu_us

    def to_dict(self, name: str) -> dict[str, float]:
        return {
            f"{name}_per_s": round(self.per_s, 1),
            f"{name}_server_cpu_us": round(self.server_cpu_us, 1),
            f"{name}_capacity_per_core_s": round(self.capacity, 1),
            f"{name}_latency_us": round(self.latency_us, 1),
        }


async def _rounds(
    server: _Process, p: Params, workers: list[Callable[[], Awaitable[None]]]
) -> _Rates:
    await _timed(server, min(0.3, p.seconds), workers)  # warm-up
    per_s, cpu_us, lat = [], [], []
    for _ in range(p.rounds):
        n, wall, cpu, latencies = await _timed(server, p.seconds, workers)
        if n == 0:
            raise BenchFailure("no operation completed in a round")
        per_s.append(n / wall)
        # /proc counts in clock ticks; a round too short to show one still used some CPU.
        cpu_us.append(max(cpu, 1.0 / _TICK) * 1e6 / n)
        lat.append(statistics.median(latencies))
    return _Rates(statistics.median(per_s), statistics.median(cpu_us), statistics.median(lat) * 1e6)


async def _settled_rss(proc: _Process) -> int:
    """RSS once it stops moving (a few samples apart)."""
    last = proc.rss()
    for _ in range(20):
        await asyncio.sleep(0.2)
        now = proc.rss()
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


# -- the keyseed side ---------------------------------------------------------------------


class _Keyseed:
    def __init__(self, server: _Process) -> None:
        out = server.out
        m = re.search(r"device listener: (wss?://\S+)", out)
        a = re.search(r"admin listener: (http://[^/\s]+)", out)
        t = re.search(r"admin token \(shown once; store it now\): (\S+)", out)
        if not (m and a and t):
            raise BenchFailure("keyseed server printed no listeners or token")
        self.server = server
        self.url = m.group(1)
        self.admin = httpx.AsyncClient(
            base_url=a.group(1), headers={"Authorization": f"Bearer {t.group(1)}"}, timeout=WAIT
        )
        self.keys: dict[str, bytes] = {}
        self.count = 0
        self.run = secrets.token_hex(3)

    async def counters(self) -> tuple[float, float | None, float | None]:
        """From the server's ``/metrics``: exchanges completed OK, durable COMMITs and the
        writes they carried (None where the store does not count them: PostgreSQL)."""
        r = await self.admin.get("/metrics")
        r.raise_for_status()
        ok = 0.0
        commits = writes = None
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == "keyseed_exchanges_total" and sample.labels == {
                    "result": "ok",
                    "cause": "none",
                }:
                    ok = sample.value
                elif sample.name == "keyseed_db_commits_total":
                    commits = sample.value
                elif sample.name == "keyseed_db_committed_writes_total":
                    writes = sample.value
        return ok, commits, writes

    async def load_keys(self) -> None:
        r = await self.admin.get("/v1/admin/keys")
        r.raise_for_status()
        self.keys = {k["suite"]: bytes.fromhex(k["public_key"]) for k in r.json()}

    async def register(self, suite: str, n: int, parallel: int = 16) -> list[BenchDevice]:
        """Register ``n`` devices (201 with a setup code; the server derives each code's
        scrypt key here) and build their keystores; nothing is connected yet."""
        devices: list[BenchDevice] = []
        sem = asyncio.Semaphore(parallel)

        async def one(device_id: str) -> None:
            async with sem:
                r = await self.admin.post(
                    "/v1/admin/devices",
                    # A long window: the full run registers 10,000 devices (one scrypt each)
                    # before the first one connects, which outlasts the default window.
                    json={
                        "device_id": device_id,
                        "suite": suite,
                        "setup_code": _CODE,
                        "window_s": _WINDOW_S,
                    },
                )
                if r.status_code != 201:
                    raise BenchFailure(f"registration failed: {r.status_code}")
                ks = await asyncio.to_thread(
                    new_keystore,
                    device_id=device_id,
                    suite=suite,
                    server_key=self.keys[suite],
                    install_secret=os.urandom(32),
                    setup_code=_CODE,
                )
                devices.append(BenchDevice(self.url, DeviceDisk(ks)))

        # The run's own tag: a database given with --database may hold an earlier run's.
        ids = [f"bench-{self.run}-{suite}-{self.count + i}" for i in range(n)]
        self.count += n
        await asyncio.gather(*(one(i) for i in ids))
        return devices

    @staticmethod
    async def connect(devices: list[BenchDevice], parallel: int = 16) -> list[BenchDevice]:
        """Enrol each registered device on its own connection, which then stays open."""
        sem = asyncio.Semaphore(parallel)

        async def one(dev: BenchDevice) -> None:
            async with sem:
                await dev.enrolled()

        await asyncio.gather(*(one(d) for d in devices))
        return devices

    async def enrol(self, suite: str, n: int, parallel: int = 16) -> list[BenchDevice]:
        """:meth:`register` then :meth:`connect`."""
        return await self.connect(await self.register(suite, n, parallel), parallel)


async def _close_all(devices: list[BenchDevice]) -> None:
    for i in range(0, len(devices), 200):
        await asyncio.gather(*(d.close() for d in devices[i : i + 200]))


# -- the TLS side -------------------------------------------------------------------------


async def _tls_handshake(port: int, ctx: ssl.SSLContext) -> None:
    """One full TLS 1.3 handshake, seen complete by both sides (one byte echoed), then a
    close."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    writer.write(b"x")
    await reader.readexactly(1)
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def _tls_streams(
    port: int, ctx: ssl.SSLContext, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [
        await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        for _ in range(n)
    ]


def _tls_rt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Callable[[], Any]:
    data = os.urandom(PAYLOAD)

    async def rt() -> None:
        writer.write(data)
        await reader.readexactly(PAYLOAD)

    return rt


def _ws_rt(ws: ClientConnection) -> Callable[[], Any]:
    data = os.urandom(PAYLOAD)

    async def rt() -> None:
        await ws.send(data)
        await ws.recv()

    return rt


async def _idle_wss(url: str, ctx: ssl.SSLContext | None, n: int) -> list[ClientConnection]:
    sem = asyncio.Semaphore(32)

    async def one() -> ClientConnection:
        async with sem:
            return await websockets.connect(url, ssl=ctx, compression=None, open_timeout=WAIT)

    return list(await asyncio.gather(*(one() for _ in range(n))))


# -- the run ------------------------------------------------------------------------------


async def _run(p: Params, progress: Callable[[str], None] | None) -> dict[str, Any]:
    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    suites, unavailable = split_available(list(SUITES))
    result: dict[str, Any] = {
        "benchmark": "system",
        "params": {
            "rounds": p.rounds,
            "seconds_per_round": p.seconds,
            "exchange_devices": p.exchange_devices,
            "rt_connections": p.rt_connections,
            "idle_counts": list(p.idle_counts),
            "database": _database_label(p.database),
            "loop": p.loop,
            "payload_bytes": PAYLOAD,
        },
        "environment": environment(),
        "unavailable": unavailable,
    }
    most = max(p.idle_counts)
    result["fd_limit"] = raise_fd_limit(2 * most + 1024)

    say("raw limit")
    raw = {s: round(raw_limit(s, p.raw_ops, p.rounds), 1) for s in suites}
    result["raw_limit_per_s"] = raw

    tmp = Path(tempfile.mkdtemp(prefix="keyseed-bench-"))
    server = peer = None
    ks: _Keyseed | None = None
    try:
        if p.database is None:
            say("durable commit")
            result["durable_commit_cpu_us"] = round(
                await asyncio.to_thread(durable_commit_us, tmp, p.raw_ops, p.rounds), 1
            )
        cert, key = make_cert(tmp)
        client_ctx = _client_tls(cert)
        peer = _start_peer(cert, key, tmp / "peer.log", p.loop)
        ports = dict(line.split() for line in peer.out.splitlines())
        tls_port, wss_port, ws_port = int(ports["tls"]), int(ports["wss"]), int(ports["ws"])
        wss_url = f"wss://localhost:{wss_port}"

        # The peer: TLS handshakes, then round trips over TLS and over wss://.
        say("TLS handshakes")
        hs = await _rounds(
            peer, p, [lambda: _tls_handshake(tls_port, client_ctx) for _ in range(8)]
        )
        result["tls"] = hs.to_dict("handshake")
        say("TLS round trips")
        streams = await _tls_streams(tls_port, client_ctx, p.rt_connections)
        tls_rt = await _rounds(peer, p, [_tls_rt(r, w) for r, w in streams])
        result["tls"].update(tls_rt.to_dict("rt"))
        for _, w in streams:
            w.close()
        say("wss:// round trips")
        conns = await _idle_wss(wss_url, client_ctx, p.rt_connections)
        wss_rt = await _rounds(peer, p, [_ws_rt(c) for c in conns])
        result["wss"] = wss_rt.to_dict("rt")
        for c in conns:
            await c.close()
        say("ws:// round trips")
        conns = await _idle_wss(f"ws://127.0.0.1:{ws_port}", None, p.rt_connections)
        result["ws"] = (await _rounds(peer, p, [_ws_rt(c) for c in conns])).to_dict("rt")
        for c in conns:
            await c.close()

        say(f"wss:// memory, {most} idle connections")
        await asyncio.sleep(0.5)
        base = await _settled_rss(peer)
        conns = await _idle_wss(wss_url, client_ctx, most)
        result["wss"]["memory_per_connection_bytes"] = round(
            (await _settled_rss(peer) - base) / most
        )
        result["wss"]["idle_connections"] = most
        for i in range(0, len(conns), 200):
            await asyncio.gather(*(c.close() for c in conns[i : i + 200]))
        peer.stop()
        peer = None

        # keyseed: a server process of its own.
        say("keyseed server")
        server = _start_server(tmp / "data", suites, most + 1024, database=p.database, loop=p.loop)
        ks = _Keyseed(server)
        await ks.load_keys()
        exchanges: dict[str, Any] = {}
        for suite in suites:
            say(f"keyseed exchanges, {suite}")
            devices = await ks.enrol(suite, p.exchange_devices)
            before = await ks.counters()
            rates = await _rounds(server, p, [d.exchange for d in devices])
            after = await ks.counters()
            exchanges[suite] = rates.to_dict("exchange")
            done = after[0] - before[0]
            for i, name in ((1, "commits_per_exchange"), (2, "writes_per_exchange")):
                b, a = before[i], after[i]
                if done > 0 and a is not None and b is not None:
                    exchanges[suite][name] = round((a - b) / done, 3)
            if suite == suites[0]:
                say("keyseed round trips")
                data = os.urandom(PAYLOAD)
                rt_devices = devices[: p.rt_connections]
                rt_devices += await ks.enrol(suite, p.rt_connections - len(rt_devices))
                rt = await _rounds(
                    server, p, [functools.partial(d.round_trip, data) for d in rt_devices]
                )
                result["keyseed_rt"] = rt.to_dict("rt")
                await _close_all(rt_devices[len(devices) :])
            await _close_all(devices)
        result["keyseed_exchange"] = exchanges

        memory: dict[str, int] = {}
        loaded: dict[str, dict[str, float]] = {}
        # Registered first: a registration derives the setup code's scrypt key (16 MiB of
        # scratch), whose heap high-water mark is not a connection's memory.
        say(f"keyseed: registering {most} devices")
        waiting = await ks.register(suites[0], most, parallel=32)
        await asyncio.sleep(0.5)
        base = await _settled_rss(server)
        idle: list[BenchDevice] = []
        for count in sorted(p.idle_counts):
            say(f"keyseed memory, {count} idle devices")
            idle += await ks.connect(waiting[len(idle) : count], parallel=32)
            memory[str(count)] = round((await _settled_rss(server) - base) / count)
            # The exchange cost with this many devices connected: the first few rekey while
            # the rest stay idle.
            say(f"keyseed exchanges among {count} connected devices")
            busy = idle[: p.exchange_devices]
            loaded[str(count)] = (await _rounds(server, p, [d.exchange for d in busy])).to_dict(
                "exchange"
            )
        result["keyseed_memory_per_device_bytes"] = memory
        result["keyseed_exchange_among_connected"] = loaded
        say("closing")
        await _close_all(idle)
    finally:
        if ks is not None:
            await ks.admin.aclose()
        for proc in (peer, server):
            if proc is not None:
                proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    result["ratios"] = _ratios(result, suites)
    result["floor"] = _floor(result, suites[0])
    return result


def _database_label(url: str | None) -> str:
    """The database a run used, for the report (never a password)."""
    if url is None:
        return "sqlite (data folder)"
    return make_url(url).render_as_string(hide_password=True)


def _ratios(r: dict[str, Any], suites: list[str]) -> dict[str, Any]:
    ex = r["keyseed_exchange"]
    hs = r["tls"]["handshake_capacity_per_core_s"]
    out: dict[str, Any] = {
        "exchange_vs_tls_handshake": {
            s: round(ex[s]["exchange_capacity_per_core_s"] / hs, 3) for s in suites
        },
        "exchange_vs_raw_limit": {
            s: round(ex[s]["exchange_capacity_per_core_s"] / r["raw_limit_per_s"][s], 3)
            for s in suites
        },
    }
    k, tls, wss = r["keyseed_rt"], r["tls"], r["wss"]
    loaded = r["keyseed_exchange_among_connected"]
    counts = sorted(loaded, key=int)
    cost = [loaded[n]["exchange_server_cpu_us"] for n in counts]
    # Server CPU per exchange among the most connected devices ÷ among the fewest.
    out["exchange_cost_most_vs_fewest_connected"] = round(cost[-1] / cost[0], 3)
    out["rt_vs_tls"] = round(k["rt_per_s"] / tls["rt_per_s"], 3)
    out["rt_vs_wss"] = round(k["rt_per_s"] / wss["rt_per_s"], 3)
    out["rt_capacity_vs_tls"] = round(
        k["rt_capacity_per_core_s"] / tls["rt_capacity_per_core_s"], 3
    )
    out["rt_capacity_vs_wss"] = round(
        k["rt_capacity_per_core_s"] / wss["rt_capacity_per_core_s"], 3
    )
    per_wss = wss["memory_per_connection_bytes"]
    out["memory_vs_wss"] = {
        n: (round(b / per_wss, 2) if per_wss > 0 else None)
        for n, b in r["keyseed_memory_per_device_bytes"].items()
    }
    return out


#: The targets the floor is held against: exchange capacity ≥ 3× the TLS handshake's and
#: ≥ 40% of the raw limit; round trips ≥ 0.8× TLS's and ≥ 1.2× wss://'s.
TARGETS = {"exchange_vs_tls": 3.0, "exchange_vs_raw": 0.4, "rt_vs_tls": 0.8, "rt_vs_wss": 1.2}


def _floor(r: dict[str, Any], suite: str) -> dict[str, Any]:
    """What the targets leave for one exchange and one round trip, in server CPU us, against
    what no keyseed server on this stack can avoid, from figures of this run: the public-key
    work (the raw limit), moving the exchange's five WebSocket messages (three in, two out:
    2.5 plain ``ws://`` echo round trips of the peer, which does nothing else), and the
    durable commits the server made per exchange (group commit included) at the cost of one
    lone commit. Nothing of the protocol itself (key schedule, AEAD, CBOR, state) is in it."""
    hs = r["tls"]["handshake_server_cpu_us"]
    raw_us = 1e6 / r["raw_limit_per_s"][suite]
    budget = min(hs / TARGETS["exchange_vs_tls"], raw_us / TARGETS["exchange_vs_raw"])
    ws = r["ws"]["rt_server_cpu_us"]
    ex = r["keyseed_exchange"][suite]
    commit = r.get("durable_commit_cpu_us")
    commits = ex.get("commits_per_exchange")
    commits_us = commit * commits if commit is not None and commits is not None else None
    floor = raw_us + 2.5 * ws + (commits_us or 0.0)
    rt_budget = min(
        r["tls"]["rt_server_cpu_us"] / TARGETS["rt_vs_tls"],
        r["wss"]["rt_server_cpu_us"] / TARGETS["rt_vs_wss"],
    )
    return {
        "suite": suite,
        "exchange_budget_us": round(budget, 1),
        "public_key_us": round(raw_us, 1),
        "messages_us": round(2.5 * ws, 1),
        "commits_us": None if commits_us is None else round(commits_us, 1),
        "exchange_floor_us": round(floor, 1),
        "exchange_floor_vs_budget": round(floor / budget, 2),
        "rt_budget_us": round(rt_budget, 1),
        "rt_floor_us": round(ws, 1),
        "rt_floor_vs_budget": round(ws / rt_budget, 2),
    }


def run_system_bench(
    *,
    quick: bool = False,
    params: Params | None = None,
    progress: Callable[[str], None] | None = None,
    database: str | None = None,
    loop: str | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark; one dict with every figure and ratio (what ``--json``
    prints). ``params`` overrides the quick or full sizes. ``loop`` (default ``auto``) is
    the event loop of all three processes: the peer runs on the server's, so that neither
    side of a comparison has a faster loop than the other.

    Raises:
        BenchFailure: a process did not start, or an exchange or round trip failed.
        ConfigError: ``loop`` is ``uvloop`` and uvloop is not installed.
    """
    p = params or (Params.quick() if quick else Params.full())
    if database is not None:
        p = dataclasses.replace(p, database=database)
    p = dataclasses.replace(p, loop=resolve_loop(loop or p.loop))
    try:
        return run_on(p.loop, _run(p, progress))
    except (OSError, TimeoutError, websockets.WebSocketException, httpx.HTTPError) as exc:
        raise BenchFailure(f"{type(exc).__name__}: {exc}") from exc


# -- what TLS adds (keyseed bench tls) ----------------------------------------------------

#: The three ways ``keyseed bench tls`` connects one device.
TLS_MODES = ("ws", "wss", "wss-reduced")


class _TlsMode:
    """One mode of ``keyseed bench tls``: its server process and its one device."""

    def __init__(self, mode: str, tmp: Path, cert: tuple[Path, Path]) -> None:
        self.mode = mode
        tls = mode != "ws"
        self.server = _start_server(
            tmp / f"data-{mode}", ["hpke-x25519"], 64, tls=cert if tls else None
        )
        self.ks = _Keyseed(self.server)
        self.ctx = _client_tls(cert[0]) if tls else None
        # The device agrees to the reduction wherever it runs over TLS; its profile decides.
        self.config = DeviceConfig(tls_reduced_ok=tls)
        self.disk: DeviceDisk | None = None
        self.dev: BenchDevice | None = None

    async def enrol(self) -> None:
        await self.ks.load_keys()
        device_id = f"bench-tls-{self.mode}"
        r = await self.ks.admin.post(
            "/v1/admin/devices",
            json={
                "device_id": device_id,
                "setup_code": _CODE,
                "tls_reduced": self.mode == "wss-reduced",
            },
        )
        if r.status_code != 201:
            raise BenchFailure(f"registration failed: {r.status_code}")
        self.disk = DeviceDisk(
            new_keystore(
                device_id=device_id,
                suite="hpke-x25519",
                server_key=self.ks.keys["hpke-x25519"],
                install_secret=os.urandom(32),
                setup_code=_CODE,
            )
        )
        self.dev = BenchDevice(self.ks.url, self.disk, tls=self.ctx, config=self.config)
        await self.dev.enrolled()  # its 206 brings the profile
        await self.reconnect()
        assert self.dev.proto is not None
        if self.dev.proto.tls_reduced != (self.mode == "wss-reduced"):
            raise BenchFailure(f"{self.mode}: the connection's reduction is not as set")

    async def reconnect(self) -> None:
        """A new connection: TCP, TLS, WebSocket, HELLO to FIN, and one round trip (so the
        server has taken the FIN too)."""
        assert self.disk is not None and self.dev is not None
        await self.dev.close()
        self.dev = BenchDevice(self.ks.url, self.disk, tls=self.ctx, config=self.config)
        await self.dev.handshake()
        await self.dev.round_trip(b"ready")

    async def exchange(self) -> None:
        assert self.dev is not None
        await self.dev.exchange()

    async def round_trip(self) -> None:
        assert self.dev is not None
        await self.dev.round_trip(_PAYLOAD_BYTES)

    async def close(self) -> None:
        if self.dev is not None:
            await self.dev.close()
        await self.ks.admin.aclose()
        self.server.stop()


_PAYLOAD_BYTES = bytes(range(PAYLOAD))


async def _interleaved_ms(
    n: int, ops: dict[str, Callable[[], Awaitable[None]]]
) -> dict[str, float]:
    """Median milliseconds of ``n`` runs of each op, one at a time, the modes taking turns
    (so a shift in the machine's load hits every mode alike), after a few untimed runs."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for i in range(n + 3):
        for name, op in ops.items():
            t = time.perf_counter()
            await op()
            if i >= 3:
                times[name].append(time.perf_counter() - t)
    return {name: round(statistics.median(ts) * 1e3, 3) for name, ts in times.items()}


async def _run_tls(n: int, progress: Callable[[str], None] | None) -> dict[str, Any]:
    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    tmp = Path(tempfile.mkdtemp(prefix="keyseed-bench-tls-"))
    modes: list[_TlsMode] = []
    figures: dict[str, dict[str, Any]] = {m: {} for m in TLS_MODES}
    try:
        cert = make_cert(tmp)
        say("three servers (ws://, wss://, wss:// reduced), one device each")
        for mode in TLS_MODES:
            modes.append(_TlsMode(mode, tmp, cert))
            await modes[-1].enrol()
        for what, key, count in (
            ("connections", "connect_and_round_trip_ms", max(10, n // 4)),
            ("exchanges", "exchange_ms", n),
            ("round trips", "round_trip_ms", n),
        ):
            say(f"{count} {what} per mode, taking turns")
            attr = {"connections": "reconnect", "exchanges": "exchange"}.get(what, "round_trip")
            medians = await _interleaved_ms(count, {m.mode: getattr(m, attr) for m in modes})
            for mode, ms in medians.items():
                figures[mode][key] = ms
        for m in modes:
            assert m.dev is not None and m.dev.proto is not None
            figures[m.mode]["reduced"] = m.dev.proto.tls_reduced
    finally:
        for m in modes:
            with contextlib.suppress(Exception):
                await m.close()
        shutil.rmtree(tmp, ignore_errors=True)
    base = figures["ws"]
    added = {
        mode: {
            k: round(figures[mode][k] - base[k], 3)
            for k in ("connect_and_round_trip_ms", "exchange_ms", "round_trip_ms")
        }
        for mode in TLS_MODES[1:]
    }
    return {
        "benchmark": "tls",
        "params": {"n": n, "payload_bytes": PAYLOAD, "suite": "hpke-x25519"},
        "environment": environment(),
        "modes": figures,
        "added_vs_ws_ms": added,
    }


def run_tls_bench(n: int = 200, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``keyseed bench tls``: medians per mode and what TLS adds to each (``--json``).

    Raises:
        BenchFailure: a process did not start, or an exchange or round trip failed.
    """
    try:
        return asyncio.run(_run_tls(n, progress))
    except (OSError, TimeoutError, websockets.WebSocketException, httpx.HTTPError) as exc:
        raise BenchFailure(f"{type(exc).__name__}: {exc}") from exc


def format_tls_table(r: dict[str, Any]) -> str:
    modes, added = r["modes"], r["added_vs_ws_ms"]
    rows = [
        ("connect + first round trip", "connect_and_round_trip_ms"),
        ("exchange (203 to 206)", "exchange_ms"),
        (f"app round trip ({r['params']['payload_bytes']} B)", "round_trip_ms"),
    ]
    lines = [
        f"keyseed bench tls: one device, medians of {r['params']['n']} (ms), same machine",
        f"{'':30}{'ws://':>10}{'wss://':>10}{'reduced':>10}{'+wss':>10}{'+reduced':>10}",
    ]
    for label, key in rows:
        lines.append(
            f"{label:30}{modes['ws'][key]:>10.3f}{modes['wss'][key]:>10.3f}"
            f"{modes['wss-reduced'][key]:>10.3f}{added['wss'][key]:>+10.3f}"
            f"{added['wss-reduced'][key]:>+10.3f}"
        )
    return "\n".join(lines)


def add_bench_tls(benchmarks: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``keyseed bench tls [--n N] [--json]``."""
    parser = benchmarks.add_parser(
        "tls",
        help="what TLS (wss://) adds to an exchange and to a round trip",
        description="One device against a keyseed server process over ws://, wss:// and "
        "wss:// with the profile's TLS reduction: the median of N exchanges and N application "
        "round trips, each timed alone, and what TLS adds to each.",
    )
    parser.add_argument("--n", type=int, default=200, metavar="N", help="timed runs (200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_bench_tls, parser=parser)


def run_bench_tls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The handler: 0 done, 1 the bench failed."""
    if args.n < 1:
        parser.error("--n must be at least 1")

    def show(message: str) -> None:
        print(f"keyseed bench tls: {message} ...", file=sys.stderr, flush=True)

    try:
        report = run_tls_bench(args.n, progress=None if args.json else show)
    except BenchFailure as exc:
        print(f"keyseed bench tls: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_tls_table(report))
    return 0


# -- the table ----------------------------------------------------------------------------


def format_table(r: dict[str, Any]) -> str:
    """The report as ``keyseed bench`` prints it."""
    env, prm, q = r["environment"], r["params"], r["ratios"]
    lines = [
        "keyseed bench: the server on loopback in its own process, vs. TLS 1.3 in the same run",
        f"medians of {prm['rounds']} rounds of {prm['seconds_per_round']:g} s; "
        f"Python {env['python']}, cryptography {env['cryptography']}, {env['cpu_count']} CPUs; "
        "server CPU from /proc",
        "",
        f"{'exchanges (203->206)':<26}{'raw limit/s':>12}{'exch/s':>9}{'server CPU us':>14}"
        f"{'capacity/s':>11}{'÷ TLS hs':>9}{'÷ raw':>7}",
    ]
    for s, e in r["keyseed_exchange"].items():
        lines.append(
            f"{s:<26}{r['raw_limit_per_s'][s]:>12.0f}{e['exchange_per_s']:>9.0f}"
            f"{e['exchange_server_cpu_us']:>14.0f}{e['exchange_capacity_per_core_s']:>11.0f}"
            f"{q['exchange_vs_tls_handshake'][s]:>9.2f}{q['exchange_vs_raw_limit'][s]:>7.2f}"
        )
    t = r["tls"]
    lines.append(
        f"{'TLS 1.3 full handshake':<26}{'':>12}{t['handshake_per_s']:>9.0f}"
        f"{t['handshake_server_cpu_us']:>14.0f}{t['handshake_capacity_per_core_s']:>11.0f}"
    )
    lines += [
        "",
        f"{'64-byte round trips, ' + str(prm['rt_connections']) + ' conn':<26}{'rt/s':>9}"
        f"{'latency us':>11}{'server CPU us':>14}{'capacity/s':>11}{'rt/s ratio':>11}"
        f"{'cap. ratio':>11}",
    ]
    rows: list[tuple[str, dict[str, Any], str, str]] = [
        ("keyseed (sealed, echo app)", r["keyseed_rt"], "", ""),
        ("TLS 1.3", t, f"{q['rt_vs_tls']:.2f}", f"{q['rt_capacity_vs_tls']:.2f}"),
        ("wss://", r["wss"], f"{q['rt_vs_wss']:.2f}", f"{q['rt_capacity_vs_wss']:.2f}"),
    ]
    for name, d, ratio, cap in rows:
        lines.append(
            f"{name:<26}{d['rt_per_s']:>9.0f}{d['rt_latency_us']:>11.0f}"
            f"{d['rt_server_cpu_us']:>14.0f}{d['rt_capacity_per_core_s']:>11.0f}"
            f"{ratio:>11}{cap:>11}"
        )
    lines += ["", f"{'server memory, idle':<26}{'bytes/conn':>11}{'÷ wss://':>9}"]
    for n, b in r["keyseed_memory_per_device_bytes"].items():
        m = q["memory_vs_wss"][n]
        lines.append(
            f"{'keyseed, ' + n + ' devices':<26}{b:>11}{'' if m is None else f'{m:.2f}':>9}"
        )
    w = r["wss"]
    lines.append(
        f"{'wss://, ' + str(w['idle_connections']) + ' conns':<26}"
        f"{w['memory_per_connection_bytes']:>11}"
    )
    loaded = r["keyseed_exchange_among_connected"]
    lines += ["", f"{'exchanges among N connected':<26}{'exch/s':>9}{'server CPU us':>14}"]
    for n, e in loaded.items():
        lines.append(
            f"{'keyseed, ' + n + ' devices':<26}{e['exchange_per_s']:>9.0f}"
            f"{e['exchange_server_cpu_us']:>14.0f}"
        )
    lines.append(
        f"{'most ÷ fewest connected':<26}{'':>9}"
        f"{q['exchange_cost_most_vs_fewest_connected']:>14.2f}"
    )
    f = r["floor"]
    commits = r["keyseed_exchange"][f["suite"]].get("commits_per_exchange")
    lines += [
        "",
        f"{'what the targets leave, ' + f['suite']:<48}{'server CPU us':>14}",
        f"{'exchange: 3x TLS hs and 40% of raw allow':<48}{f['exchange_budget_us']:>14.0f}",
        f"{'  public-key work (the raw limit)':<48}{f['public_key_us']:>14.0f}",
        f"{'  3 messages in, 2 out (2.5 ws:// echoes)':<48}{f['messages_us']:>14.0f}",
    ]
    if f["commits_us"] is not None:
        label = f"  durable commits ({commits:.2f} x {r['durable_commit_cpu_us']:.0f} us)"
        lines.append(f"{label:<48}{f['commits_us']:>14.0f}")
    lines += [
        f"{'  sum, before any protocol work':<48}{f['exchange_floor_us']:>14.0f}"
        f"   {f['exchange_floor_vs_budget']:.2f}x the budget",
        f"{'round trip: 0.8x TLS and 1.2x wss:// allow':<48}{f['rt_budget_us']:>14.0f}",
        f"{'  one ws:// echo with no keyseed work':<48}{f['rt_floor_us']:>14.0f}"
        f"   {f['rt_floor_vs_budget']:.2f}x the budget",
    ]
    lines += [
        "",
        f"database: {prm['database']}; event loop (server, peer and clients): {prm['loop']}",
        "keyseed ratios: rekey rows ÷ TLS hs and ÷ raw compare capacities (per second of "
        "server CPU);",
        "round-trip 'rt/s ratio' = keyseed rt/s ÷ that row's; 'cap. ratio' the same per "
        "second of server CPU",
    ]
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------


def add_bench_system(
    bench: argparse.ArgumentParser,
    benchmarks: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Make ``keyseed bench [--quick] [--json]`` run this benchmark (and ``keyseed bench
    system`` too). ``bench`` is the ``keyseed bench`` parser, ``benchmarks`` its
    subcommands; a subcommand named after ``bench`` (``core``) keeps its own handler."""
    for parser in (bench, benchmarks.add_parser("system", help="the server vs. TLS 1.3")):
        parser.add_argument(
            "--quick",
            action="store_true",
            help="fewer, shorter rounds and 1,000 idle devices only (under two minutes)",
        )
        parser.add_argument(
            "--json", action="store_true", help="print one JSON object with every figure"
        )
        parser.add_argument(
            "--database",
            metavar="URL",
            help="run the keyseed server on this database (postgresql+asyncpg://...; "
            "default: SQLite in a fresh data folder)",
        )
        parser.add_argument(
            "--loop",
            choices=LOOP_NAMES,
            default="auto",
            help="event loop of the keyseed server, the TLS peer and the clients alike "
            "(default: auto, uvloop where installed)",
        )
        parser.set_defaults(handler=run_bench_system, parser=parser)


def run_bench_system(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The handler: 0 done, 1 the bench failed."""

    def show(message: str) -> None:
        print(f"keyseed bench: {message} ...", file=sys.stderr, flush=True)

    try:
        report = run_system_bench(
            quick=args.quick,
            progress=None if args.json else show,
            database=args.database,
            loop=args.loop,
        )
    except (BenchFailure, ConfigError) as exc:
        print(f"keyseed bench: FAILED: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0


def _peer_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m keyseed.bench.system")
    parser.add_argument("command", choices=["peer"])
    parser.add_argument("cert")
    parser.add_argument("key")
    parser.add_argument("loop", nargs="?", default="auto", choices=LOOP_NAMES)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run_on(args.loop, _peer_main(args.cert, args.key))
    return 0


__all__ = [
    "PAYLOAD",
    "RT_CONNECTIONS",
    "TLS_MODES",
    "BenchDevice",
    "Params",
    "add_bench_system",
    "add_bench_tls",
    "cpu_seconds",
    "format_table",
    "make_cert",
    "raise_fd_limit",
    "raw_limit",
    "rss_bytes",
    "run_bench_system",
    "run_bench_tls",
    "run_system_bench",
    "run_tls_bench",
]

if __name__ == "__main__":
    sys.exit(_peer_cli(sys.argv[1:]))
