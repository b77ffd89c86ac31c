"""The dashboard's device-pairs section in a real browser (Playwright driving Debian's chromium
against a real ``keyseed server`` process; the fixtures of test_dashboard_browser.py): the
admin allows a pair with the form, sees it in the table, revokes it from its row (with the
browser's confirmation dialog), and the browser's console stays free of errors."""

from __future__ import annotations

import re

from test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    Server,
    expect,
    server,
    sync_playwright,
)

__all__ = ["server"]  # the fixture, used by name


def test_allow_and_revoke_a_pair_in_the_browser(server: Server) -> None:
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.base + "/")
            page.fill("#token", server.token)
            page.click("#login-submit")
            expect(page.locator("#live")).to_have_class(re.compile(r"\bok\b"), timeout=WAIT_MS)
            expect(page.locator("#pairs-empty")).to_be_visible(timeout=WAIT_MS)

            page.fill("#pair-a", "oven-5")
            page.fill("#pair-b", "oven-4")
            page.click("#pair-allow")
            expect(page.locator("#notice")).to_contain_text("may now obtain a pair key")
            row = page.locator('tr[data-pair="oven-4 oven-5"]')
            expect(row).to_contain_text("allowed", timeout=WAIT_MS)
            expect(row).to_contain_text("none")
            expect(page.locator("#pairs-empty")).to_be_hidden()

            page.once("dialog", lambda d: d.accept())
            row.locator('button[data-action="deny-pair"]').click()
            expect(page.locator("#notice")).to_contain_text("revoked", timeout=WAIT_MS)
            expect(row).to_contain_text("denied", timeout=WAIT_MS)
            expect(page.locator("#audit-body")).to_contain_text("pair_denied", timeout=WAIT_MS)
        finally:
            browser.close()
    assert problems == [], problems
