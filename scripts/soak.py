"""Crash under load: ``keyseed simulate --until-converged`` runs a fleet
that enrols, rekeys (by policy and by proxy) and exchanges application messages against a
``keyseed server`` process on PostgreSQL, while this script injects faults:

* a batch of 401 rekey orders queued through the admin API, then at once
* SIGKILL of the server process, restarted on the same ports and database (``--kills`` times),
* ``pg_terminate_backend`` of every PostgreSQL connection of the server (``--terminations``),

each fault followed by ``--phase`` seconds of traffic. Then the fleet is told to wind down
(SIGUSR1): every device must settle, rekey once more, and be confirmed by the server (208/209)
at the epoch it holds. Afterwards the server's records are checked: no registration lost,
every device enrolled with no exchange half done and no 206 owed (its seed delivered), and
every queued order carried out (the device rekeyed past the epoch the order superseded).

The report counts faults injected, exchanges completed and messages lost (0 expected)::

    .venv/bin/python scripts/soak.py                 # make soak: 1,000 devices, 2 kills, 1 cut
    .venv/bin/python scripts/soak.py --devices 60 --kills 1 --json

PostgreSQL comes from ``KEYSEED_TEST_PG`` (default: the local ``test`` database's server); a
fresh database is created for the run and dropped afterwards. Exit 0 only if nothing was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("KEYSEED_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
#: Bound on waiting for one step (a start, the fleet to enrol); only a hang reaches it.
WAIT = 600.0
PREFIX = "soak-"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pg_args(database: str | None = None) -> dict[str, Any]:
    url = make_url(PG_URL)
    return {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "database": database or url.database,
    }


async def _pg(sql: str, *args: Any, database: str | None = None) -> Any:
    conn = await asyncpg.connect(**_pg_args(database), timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def pg(sql: str, *args: Any, database: str | None = None) -> Any:
    """One statement on PostgreSQL; its first value."""
    return asyncio.run(_pg(sql, *args, database=database))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """``keyseed server`` on PostgreSQL, restartable on the same ports, data and database."""

    def __init__(self, tmp: Path, db_url: str, log_level: str = "warning") -> None:
        self.log_level = log_level
        self.data = tmp / "data"
        self.db_url = db_url
        self.port = _free_port()
        self.admin_port = _free_port()
        self.log = tmp / "server.log"
        self.token = ""
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        #: Admin requests that failed (connection refused, 5xx) and were repeated.
        self.admin_failures = 0

    def start(self) -> float:
        """Start it; seconds until both listeners answered."""
        t0 = time.monotonic()
        cmd = [
            sys.executable, "-m", "keyseed", "server", "--data", str(self.data),
            "--db", self.db_url, "--host", "127.0.0.1", "--port", str(self.port),
            "--admin-port", str(self.admin_port), "--app", "echo", "--log-level", self.log_level,
        ]  # fmt: skip
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_env()
            )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.match(r"admin token \(shown once; store it now\): (\S+)", line)
            if m:
                self.token = m.group(1)
            if line.startswith("admin listener:"):
                break
        else:
            raise RuntimeError(f"the server did not start:\n{self.log.read_text()[-3000:]}")
        self.starts += 1
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL: no shutdown, no close frames, nothing flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.admin_port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=120,
        )

    def devices(self) -> list[dict[str, Any]]:
        """The fleet as the admin API lists it. An answer other than 200 (a 500 from a
        database connection the faults cut, say) is counted in ``admin_failures`` and the
        request repeated."""
        with self.admin() as c:
            for _ in range(20):
                try:
                    r = c.get("/v1/admin/devices")
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code == 200:
                    return [d for d in r.json() if d["device_id"].startswith(PREFIX)]
                self.admin_failures += 1
                time.sleep(0.5)
        raise RuntimeError("the admin API did not list the devices")


def _wait(what: str, fn: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}; last: {last!r}")


def _order(c: httpx.Client, device_id: str) -> int | None:
    """401 through the admin API; the epoch the order supersedes (None: not taken). A busy
    server may reset the request or answer 409 (the record changed under it): try again."""
    for _ in range(10):
        try:
            r = c.post(f"/v1/admin/devices/{device_id}/rekey")
        except httpx.HTTPError:
            time.sleep(0.5)
            continue
        if r.status_code == 202:
            return int(r.json()["order_epoch"])
        time.sleep(0.5)
    return None


def campaign(
    tmp: Path,
    *,
    devices: int,
    kills: int,
    terminations: int,
    phase: float,
    rate: float,
    rekey_messages: int,
    converge_timeout: float,
    ramp: float = 0.0,
    say: Any = print,
    log_level: str = "warning",
) -> dict[str, Any]:
    """One campaign; its report (``ok`` says whether nothing was lost)."""
    t_start = time.monotonic()
    database = f"ks_soak_{secrets.token_hex(5)}"
    pg(f'CREATE DATABASE "{database}"')
    db_url = make_url(PG_URL).set(database=database).render_as_string(hide_password=False)
    server = Server(tmp, db_url, log_level)
    sim: subprocess.Popen[str] | None = None
    faults = {"orders_queued": 0, "sigkill": 0, "restarts": 0, "pg_terminate": 0}
    backends_terminated = 0
    restart_s: list[float] = []
    try:
        server.start()
        token_file = tmp / "admin.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(server.token + "\n")
        cmd = [
            sys.executable, "-m", "keyseed", "simulate",
            "--server", f"ws://127.0.0.1:{server.port}", "--devices", str(devices),
            "--rate", str(rate), "--duration", str(WAIT * 4),
            "--rekey-messages", str(rekey_messages), "--prefix", PREFIX,
            "--admin-url", f"http://127.0.0.1:{server.admin_port}",
            "--admin-token-file", str(token_file),
            "--until-converged", "--converge-timeout", str(converge_timeout),
            "--ramp", str(ramp), "--json",
        ]  # fmt: skip
        with (tmp / "simulate.log").open("w") as err:
            sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_env())
        say(f"registering and enrolling {devices} devices")
        t0 = time.monotonic()
        _wait(
            "the fleet to enrol",
            lambda: sum(1 for d in server.devices() if d["enrolled"]) == devices,
        )
        enrol_s = time.monotonic() - t0
        say(f"enrolled in {enrol_s:.1f} s; traffic for {phase:g} s")
        time.sleep(phase)

        # Orders queued just before the first fault: some 403s are in flight, some exchanges
        # they start are half done when the server dies.
        ordered: dict[str, int] = {}
        ids = sorted(d["device_id"] for d in server.devices())
        with server.admin() as c:
            for device_id in ids[:: max(1, devices // max(5, devices // 10))]:
                epoch = _order(c, device_id)
                if epoch is not None:
                    ordered[device_id] = epoch
        faults["orders_queued"] = len(ordered)

        # Interleaved (kill, terminate, kill, ...) so each kind meets a fleet under load.
        order = []
        k, t = kills, terminations
        while k or t:
            if k:
                order.append("kill")
                k -= 1
            if t:
                order.append("terminate")
                t -= 1
        for fault in order:
            if fault == "kill":
                say("SIGKILL the server, restart it")
                server.kill()
                faults["sigkill"] += 1
                restart_s.append(round(server.start(), 2))
                faults["restarts"] += 1
            else:
                say("pg_terminate_backend every connection of the server")
                backends_terminated += int(
                    pg(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = $1 AND pid <> pg_backend_pid()",
                        database,
                    )
                )
                faults["pg_terminate"] += 1
            time.sleep(phase)

        say("winding down: settle, rekey once more, confirm every device")
        sim.send_signal(signal.SIGUSR1)
        out, _ = sim.communicate(timeout=converge_timeout + WAIT)
        report_sim: dict[str, Any] = json.loads(out)

        # The server's side: nothing lost.
        views = {d["device_id"]: d for d in server.devices()}
        carried_out = sum(
            1
            for d, epoch in ordered.items()
            if d in views and views[d]["epoch"] > epoch and views[d]["order_epoch"] is None
        )
        server_side = {
            "registered": len(views),
            "enrolled": sum(1 for v in views.values() if v["enrolled"]),
            "confirmed": sum(1 for v in views.values() if v["confirmed"]),
            "pending_exchange": sum(1 for v in views.values() if v["pending_exchange"]),
            "owed_206": sum(1 for v in views.values() if v["owed_206"]),
            "orders_outstanding": sum(1 for v in views.values() if v["order_epoch"] is not None),
            "epochs_total": sum(v["epoch"] for v in views.values()),
        }
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        server.stop()
        pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    conv = report_sim.get("converged", {})
    msgs = report_sim["messages"]
    report = {
        "devices": devices,
        "faults": {**faults, "backends_terminated": backends_terminated},
        "restart_s": restart_s,
        "admin_requests_repeated": server.admin_failures,
        "enrol_s": round(enrol_s, 1),
        "exchanges_completed": report_sim["exchanges"]["ok"],
        "exchanges_ng": report_sim["exchanges"]["ng"],
        "rekeys": report_sim["exchanges"]["rekeys"],
        "messages": {
            "sent": msgs["sent"],
            "answered": msgs["answered"],
            "retried": msgs["retried"],
            "lost": msgs["lost"],
        },
        "orders": {"queued": len(ordered), "carried_out": carried_out},
        "connections": report_sim["connections"],
        "closes": report_sim["closes"],
        "errors": report_sim["errors"],
        "converged": conv,
        "server": server_side,
        "simulate_ok": report_sim["ok"],
        "duration_s": round(time.monotonic() - t_start, 1),
    }
    report["ok"] = bool(
        report_sim["ok"]
        and msgs["lost"] == 0
        and conv.get("confirmed") == devices
        and conv.get("epoch_mismatch") == 0
        and conv.get("without_seed") == 0
        and server_side["registered"] == devices
        and server_side["enrolled"] == devices
        and server_side["pending_exchange"] == 0
        and server_side["owed_206"] == 0
        and server_side["orders_outstanding"] == 0
        and carried_out == len(ordered)
        # Every exchange a device saw complete is one the server committed, and no other.
        and server_side["epochs_total"] == report_sim["exchanges"]["ok"]
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILL + restart (default: 2)")
    parser.add_argument(
        "--terminations", type=int, default=1, help="pg_terminate_backend rounds (default: 1)"
    )
    parser.add_argument(
        "--phase", type=float, default=20.0, help="seconds of traffic after each fault"
    )
    parser.add_argument(
        "--rate", type=float, default=0.05, help="messages per second per device (default 0.05)"
    )
    parser.add_argument(
        "--rekey-messages",
        type=int,
        default=10,
        help="rekey policy: messages per key, both directions (default 10: 5 round trips)",
    )
    parser.add_argument("--converge-timeout", type=float, default=300.0)
    parser.add_argument(
        "--ramp", type=float, default=50.0, help="devices started per second (default 50)"
    )
    parser.add_argument("--log-level", default="warning", help="the server's (default: warning)")
    parser.add_argument("--keep", metavar="DIR", help="keep the logs in DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="keyseed-soak-") as tmp:
        try:
            report = campaign(
                Path(tmp),
                devices=args.devices,
                kills=args.kills,
                terminations=args.terminations,
                phase=args.phase,
                rate=args.rate,
                rekey_messages=args.rekey_messages,
                converge_timeout=args.converge_timeout,
                ramp=args.ramp,
                say=say,
                log_level=args.log_level,
            )
        except Exception:
            for name in ("server.log", "simulate.log"):
                log = Path(tmp) / name
                if log.exists():
                    print(f"--- {name} (tail)\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            if args.keep:
                for name in ("server.log", "simulate.log"):
                    if (Path(tmp) / name).exists():
                        Path(args.keep).mkdir(parents=True, exist_ok=True)
                        (Path(tmp) / name).replace(Path(args.keep) / name)
    print(json.dumps(report, indent=None if args.json else 2, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
