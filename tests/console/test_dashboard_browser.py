"""The dashboard in a real browser: Playwright driving Debian's chromium against a real
``keyseed server`` process and a real ``keyseed device`` process on loopback.

An admin logs in with the token, registers a device with the form, watches it enrol (the
table refreshes by itself), presses rekey and sees the epoch go up, presses confirm and sees
the round trip, orders a recipe and sees the oven take it, reads the audit log (where a
hostile string shows as text), and signs out. The browser's console must stay free of errors
(a CSP violation is one), and the token must appear in no URL and no request but the login
form's POST. A screenshot is saved to ``.artifacts/dashboard.png`` (``KEYSEED_ARTIFACTS``
moves the folder).

Needs ``/usr/bin/chromium`` (``KEYSEED_CHROMIUM`` to use another) and the ``playwright``
package (its driver only: no browser download). Without them the test is skipped, or fails
when ``CI`` is set.

Run as a script, this module is the server process the test starts: ``keyseed server`` as
shipped (microwave app), with the dashboard mounted on the admin listener if the admin app does
not mount it itself, and one audit row carrying markup, written at start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import keyseed.server.run as run_mod
from keyseed.cli import main
from keyseed.protocol.events import AuditEntry

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # skipped (or failed in CI) by _require_browser
    expect = sync_playwright = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = os.environ.get("KEYSEED_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("KEYSEED_ARTIFACTS", ROOT / ".artifacts"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Generous bound on any wait; only a hang reaches it.
WAIT_MS = 60_000
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
SETUP_CODE = "12345678"


# -- the server process (this module run as a script) ---------------------------------------


def _serve(argv: list[str]) -> int:
    open_runtime = run_mod.open_runtime

    async def opened(*args: Any, **kw: Any) -> Any:
        rt = await open_runtime(*args, **kw)
        note = AuditEntry(kind="note", device_id="oven-1", epoch=0, detail=HOSTILE)
        await rt.store.add_audit([note])
        return rt

    run_mod.open_runtime = opened  # type: ignore[assignment]
    return int(main(["server", "--app", "microwave", *argv]) or 0)


# -- processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(extra or {})
    return env


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.admin_port = _free_port()
        self.log = tmp / "server.log"
        cmd = [
            sys.executable, str(Path(__file__).resolve()),
            "--data", str(tmp / "server-data"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--admin-port", str(self.admin_port),
        ]  # fmt: skip
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(), cwd=ROOT
            )
        assert self.proc.stdout is not None
        self.token = ""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server did not start:\n{self.log.read_text()[-3000:]}")
            if line.startswith("admin token"):
                self.token = line.rsplit(" ", 1)[1].strip()
            if line.startswith("admin listener"):
                break
        assert self.token

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def server_key(self) -> str:
        with httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        ) as c:
            keys = c.get("/v1/admin/keys").json()
        return str(next(k["public_key"] for k in keys if k["suite"] == "hpke-x25519"))

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_device(tmp: Path, device_id: str, server: Server) -> subprocess.Popen[str]:
    """``keyseed device``, its setup code in the environment as docs/device.md advises."""
    args = [
        "--id", device_id,
        "--server", f"ws://127.0.0.1:{server.port}",
        "--keystore", str(tmp / f"{device_id}.ks"),
        "--server-key", server.server_key(),
        "--backoff-initial", "0.05",
        "--backoff-max", "0.5",
        "--status-interval", "0.5",
        "--cook-speed", "20",
        "--rekey-min-interval", "0",
    ]  # fmt: skip
    with (tmp / f"{device_id}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "keyseed.device", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env({"KEYSEED_DEVICE_SETUP_CODE": SETUP_CODE}),
        )


# -- the test -------------------------------------------------------------------------------


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if sync_playwright is None:
        missing.append("the playwright package")
    if missing:
        why = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    _require_browser()
    srv = Server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def devices() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        _stop(proc)


def test_dashboard_drives_a_real_device(
    tmp_path: Path, server: Server, devices: list[subprocess.Popen[str]]
) -> None:
    requests: list[tuple[str, str, str]] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("request", lambda r: requests.append((r.method, r.url, r.post_data or "")))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))

            # Log in.
            page.goto(server.base + "/")
            expect(page.locator("#token")).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-login.png"))
            page.fill("#token", "kst_not-the-token")
            page.click("#login-submit")
            expect(page.locator("#login-error")).to_have_text("Wrong admin token.")
            page.fill("#token", server.token)
            page.click("#login-submit")
            expect(page.locator("#devices")).to_be_visible()
            expect(page.locator("#live")).to_have_class(re.compile(r"\bok\b"), timeout=WAIT_MS)

            # Register a device with the form.
            page.fill("#reg-id", "oven-1")
            page.fill("#reg-code", SETUP_CODE)
            page.click("#register")
            expect(page.locator("#notice")).to_contain_text("Registered oven-1")
            row = page.locator('tr[data-device="oven-1"]')
            cell = lambda col: row.locator(f'td[data-col="{col}"]')  # noqa: E731
            expect(cell("state")).to_contain_text("enrolment open", timeout=WAIT_MS)
            expect(cell("epoch")).to_have_text("0")

            # Start the device with its setup code and watch it enrol.
            devices.append(start_device(tmp_path, "oven-1", server))
            expect(cell("epoch")).to_have_text("1", timeout=WAIT_MS)
            expect(cell("state")).to_contain_text("active", timeout=WAIT_MS)
            expect(cell("online")).to_have_text("online", timeout=WAIT_MS)
            expect(cell("exchange")).to_contain_text("enrolled", timeout=WAIT_MS)

            # Rekey by proxy (401/402 -> 403 -> 203-206): the epoch goes up.
            row.locator('button[data-action="rekey"]').click()
            expect(page.locator("#notice")).to_contain_text("Rekey ordered for oven-1")
            expect(cell("epoch")).to_have_text("2", timeout=WAIT_MS)
            expect(cell("exchange")).to_contain_text("rekeyed", timeout=WAIT_MS)
            expect(cell("state")).to_contain_text("active", timeout=WAIT_MS)

            # Arrival confirmation (208/209): the round trip shows.
            row.locator('button[data-action="confirm"]').click()
            expect(page.locator("#notice")).to_contain_text("round trip", timeout=WAIT_MS)
            expect(cell("confirmation")).to_contain_text(re.compile(r"\d+\.\d ms"), timeout=WAIT_MS)
            expect(cell("confirmation")).to_contain_text("epoch 2")

            # Cook: the order reaches the oven, which reports back.
            row.locator('select[data-role="recipe"]').select_option("defrost-bread")
            row.locator('button[data-action="cook"]').click()
            expect(page.locator("#notice")).to_contain_text("defrost-bread")
            expect(cell("oven")).to_contain_text("defrost-bread", timeout=WAIT_MS)

            # The audit log, with the hostile detail shown as text, not markup.
            audit = page.locator("#audit-body")
            expect(audit).to_contain_text("confirmed", timeout=WAIT_MS)
            expect(audit).to_contain_text("rekeyed")
            expect(audit.locator("td.detail", has_text=HOSTILE)).to_have_count(1)
            assert audit.locator("img").count() == 0
            assert page.title() != "pwned"

            expect(cell("oven")).to_contain_text("done", timeout=WAIT_MS)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copy(shot, ARTIFACTS / "dashboard.png")

            # Revoke (with the browser's confirmation dialog): the device is fenced.
            page.once("dialog", lambda d: d.accept())
            row.locator('button[data-action="revoke"]').click()
            expect(cell("state")).to_contain_text("revoked", timeout=WAIT_MS)
            expect(cell("online")).to_have_text("offline", timeout=WAIT_MS)

            # Sign out: back to the login form, and the API refuses the old page.
            page.click("#logout")
            expect(page.locator("#token")).to_be_visible()
            status = page.evaluate(
                "async () => (await fetch('/ui/api/overview', {headers: {'X-CSRF-Token': 'x'}}))"
                ".status"
            )
            assert status == 401
        finally:
            browser.close()

    # The wrong token and the last fetch are refused on purpose (401); nothing else may fail,
    # and a CSP violation would show here.
    assert [p for p in problems if "status of 401" not in p] == [], problems
    carrying = [(m, u) for m, u, body in requests if server.token in u or server.token in body]
    assert carrying == [("POST", server.base + "/login")], carrying
    assert all(u.startswith(server.base) for _, u, _ in requests), "a request left the server"


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
