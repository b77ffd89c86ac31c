"""The dashboard's profile form in a real browser (Playwright driving Debian's chromium)
against a real ``keyseed server`` process: register with the TLS setting, open a device's
profile, change suite, policy and the TLS setting, see it stored (and waiting for the next
206), and see bad input refused with nothing changed. The console must stay free of errors
(a CSP violation is one). Skipped, or failed when ``CI`` is set, without the browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SETUP_CODE,
    WAIT_MS,
    Server,
    _require_browser,
    expect,
    sync_playwright,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    _require_browser()
    srv = Server(tmp_path)
    yield srv
    srv.stop()


def _view(server: Server, device_id: str) -> dict[str, object]:
    with httpx.Client(
        base_url=server.base, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    ) as c:
        out: dict[str, object] = c.get(f"/v1/admin/devices/{device_id}").json()
        return out


def test_profile_form(server: Server) -> None:
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.base + "/")
            page.fill("#token", server.token)
            page.click("#login-submit")
            expect(page.locator("#live")).to_have_class(re.compile(r"\bok\b"), timeout=WAIT_MS)

            # Register with the TLS setting.
            page.fill("#reg-id", "oven-9")
            page.fill("#reg-code", SETUP_CODE)
            page.check("#reg-tls")
            page.click("#register")
            expect(page.locator("#notice")).to_contain_text("Registered oven-9")
            assert _view(server, "oven-9")["profile"] == {
                "suite": "hpke-x25519",
                "policy": _view(server, "oven-9")["policy"],
                "tls_reduced": True,
            }

            # The profile form shows the device's profile.
            expect(page.locator("#prof-id")).to_have_value("oven-9", timeout=WAIT_MS)
            expect(page.locator("#prof-tls")).to_be_checked()
            expect(page.locator("#prof-suite")).to_have_value("hpke-x25519")

            # Change the policy and the TLS setting.
            page.fill("#prof-soft-messages", "7")
            page.fill("#prof-hard-messages", "70")
            page.uncheck("#prof-tls")
            page.click("#profile-save")
            expect(page.locator("#notice")).to_contain_text("Profile of oven-9 saved")
            # Not enrolled yet: the whole profile goes out with the enrolment's 206.
            expect(page.locator("#prof-state")).to_contain_text("enrolment")
            profile = _view(server, "oven-9")["profile"]
            assert isinstance(profile, dict)
            assert profile["policy"]["soft_messages"] == 7  # type: ignore[index]
            assert profile["tls_reduced"] is False

            # Bad input: a soft limit above the hard one is refused; nothing changes.
            before = _view(server, "oven-9")
            page.fill("#prof-soft-messages", "700")
            page.click("#profile-save")
            expect(page.locator("#notice")).to_contain_text("soft")
            assert _view(server, "oven-9") == before

            # The audit log shows the change.
            expect(page.locator("#audit-body")).to_contain_text("profile_changed", timeout=WAIT_MS)
        finally:
            browser.close()
    # The refused save is a 422 on purpose; nothing else may fail.
    assert [p for p in problems if "status of 422" not in p] == [], problems
