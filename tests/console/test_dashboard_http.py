"""The dashboard over HTTP, against a real server (both uvicorn listeners, in this process,
over the real SQLite store, the microwave recipe service as its app).

What makes it safe on a LAN: the admin token only in a POST body and never in a cookie or URL,
a strict session cookie, a CSRF token on every ``/ui/api`` request, the security headers on
every response, and output that cannot become markup.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyseed.console.dashboard import (
    COOKIE,
    CSP,
    Activity,
    SessionStore,
)
from keyseed.protocol.errors import NgCause
from keyseed.protocol.events import AuditEntry
from keyseed.server import RunningServer, ServerConfig, start_server
from keyseed.server.datadir import open_data_dir

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@dataclass
class Dash:
    running: RunningServer
    token: str
    base: str

    @property
    def rt(self) -> Any:
        return self.running.rt

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=30, follow_redirects=False, **kw)

    def bearer(self) -> httpx.AsyncClient:
        return self.client(headers={"Authorization": f"Bearer {self.token}"})

    @contextlib.asynccontextmanager
    async def login(self) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
        """A client holding a session cookie, and the page's CSRF token."""
        async with self.client() as c:
            r = await c.post("/login", data={"token": self.token})
            assert r.status_code == 303, r.text
            page = await c.get("/")
            m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
            assert m, page.text
            yield c, m.group(1)


@pytest.fixture
async def dash(tmp_path: Path) -> AsyncIterator[Dash]:
    config = ServerConfig(
        data=tmp_path / "data", host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0
    )
    found = open_data_dir(config.data, config.suites)
    assert found.new_token is not None
    running = await start_server(config, secrets=found)
    yield Dash(running, found.new_token, f"http://127.0.0.1:{running.admin_port}")
    await running.stop()


def assert_secure_headers(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


class TestLogin:
    async def test_login_page_posts_the_token_in_a_form(self, dash: Dash) -> None:
        async with dash.client() as c:
            r = await c.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert_secure_headers(r)
        assert r.headers["cache-control"] == "no-store"
        assert '<form method="post" action="/login"' in r.text
        assert 'type="password"' in r.text
        assert "set-cookie" not in r.headers
        # No inline script or style: the CSP would refuse them anyway.
        assert "<script>" not in r.text and "style=" not in r.text and "<style" not in r.text

    @pytest.mark.parametrize("token", ["", "kst_wrong", "x" * 3000])
    async def test_wrong_token_is_401_and_sets_no_cookie(self, dash: Dash, token: str) -> None:
        async with dash.client() as c:
            r = await c.post("/login", data={"token": token})
            assert r.status_code == 401
            assert "set-cookie" not in r.headers
            assert "Wrong admin token." in r.text
            assert_secure_headers(r)
            assert (await c.get("/ui/api/overview")).status_code == 401

    async def test_session_cookie_is_strict_and_never_the_token(self, dash: Dash) -> None:
        async with dash.client() as c:
            r = await c.post("/login", data={"token": dash.token})
            assert r.status_code == 303 and r.headers["location"] == "/"
            assert_secure_headers(r)
            cookie = r.headers["set-cookie"]
            name, _, rest = cookie.partition("=")
            value = rest.split(";")[0]
            attrs = {a.strip().lower() for a in rest.split(";")[1:]}
            assert name == COOKIE
            assert {"httponly", "samesite=strict", "path=/"} <= attrs
            assert "secure" not in attrs  # plain HTTP here; over HTTPS it is __Host- and Secure
            assert not any(a.startswith(("domain", "max-age", "expires")) for a in attrs)
            assert len(value) >= 40 and dash.token not in cookie
            page = await c.get("/")
        assert page.status_code == 200
        assert_secure_headers(page)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert csrf and len(csrf.group(1)) >= 40
        assert csrf.group(1) != value
        assert dash.token not in page.text
        assert '<script src="/static/dashboard.js" defer></script>' in page.text

    async def test_token_in_a_url_logs_nobody_in(self, dash: Dash) -> None:
        async with dash.client() as c:
            for url in (f"/?token={dash.token}", f"/login?token={dash.token}"):
                r = await c.get(url)
                assert "set-cookie" not in r.headers
                assert r.status_code in (200, 303)
                if r.status_code == 303:
                    assert r.headers["location"] == "/"
            assert (await c.get("/ui/api/overview")).status_code == 401
            # Only a form body counts: JSON or a query string on the POST do not.
            r = await c.post("/login", json={"token": dash.token})
            assert r.status_code == 415 and "set-cookie" not in r.headers
            r = await c.post(f"/login?token={dash.token}", data={"other": "1"})
            assert r.status_code == 401 and "set-cookie" not in r.headers

    async def test_login_from_a_foreign_origin_is_refused(self, dash: Dash) -> None:
        async with dash.client() as c:
            for headers in (
                {"Origin": "http://evil.example"},
                {"Sec-Fetch-Site": "cross-site"},
            ):
                r = await c.post("/login", data={"token": dash.token}, headers=headers)
                assert r.status_code == 403 and "set-cookie" not in r.headers
                assert_secure_headers(r)
            # Under Referrer-Policy no-referrer a browser's own form post says Origin: null.
            for same in (
                {"Origin": dash.base, "Sec-Fetch-Site": "same-origin"},
                {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
                {"Origin": "null"},
            ):
                r = await c.post("/login", data={"token": dash.token}, headers=same)
                assert r.status_code == 303 and "set-cookie" in r.headers
            r = await c.post(
                "/login",
                data={"token": dash.token},
                headers={"Origin": "null", "Sec-Fetch-Site": "same-site"},
            )
            assert r.status_code == 403

    async def test_oversized_login_form_is_refused(self, dash: Dash) -> None:
        async with dash.client() as c:
            r = await c.post("/login", data={"token": dash.token, "pad": "x" * 10_000})
        assert r.status_code == 413 and "set-cookie" not in r.headers

    async def test_logout_needs_csrf_and_ends_the_session(self, dash: Dash) -> None:
        async with dash.login() as (c, csrf):
            r = await c.post("/logout", data={"csrf": "wrong"})
            assert r.status_code == 403
            assert (await c.get("/ui/api/meta", headers={"X-CSRF-Token": csrf})).status_code == 200
            r = await c.post("/logout", data={"csrf": csrf})
            assert r.status_code == 303
            assert_secure_headers(r)
            assert "Max-Age=0" in r.headers["set-cookie"] or "expires" in r.headers["set-cookie"]
            old = {COOKIE: c.cookies.get(COOKIE) or ""}
        async with dash.client(cookies=old) as c2:
            # The same cookie, replayed after logout, is worth nothing.
            r = await c2.get("/ui/api/meta", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 401
            assert "csrf-token" not in (await c2.get("/")).text

    async def test_session_does_not_open_the_bearer_api(self, dash: Dash) -> None:
        async with dash.login() as (c, csrf):
            r = await c.get("/v1/admin/devices", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 401
        async with dash.bearer() as b:
            assert (await b.get("/v1/admin/devices")).status_code == 200
            spec = (await b.get("/openapi.json")).json()
        assert not [p for p in spec["paths"] if p.startswith(("/ui", "/login", "/logout"))]


class TestCsrf:
    async def test_state_change_without_or_with_wrong_csrf_is_403(self, dash: Dash) -> None:
        body = {"device_id": "oven-1", "setup_code": "12345678"}
        async with dash.login() as (c, csrf), dash.bearer() as b:
            for headers in (
                {},
                {"X-CSRF-Token": ""},
                {"X-CSRF-Token": "wrong"},
                {"X-CSRF-Token": csrf[:-1]},
                {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
                {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
            ):
                r = await c.post("/ui/api/devices", json=body, headers=headers)
                assert r.status_code == 403, headers
                assert r.json()["error"] == "forbidden"
                assert_secure_headers(r)
                assert (await b.get("/v1/admin/devices/oven-1")).status_code == 404
            r = await c.post(
                "/ui/api/devices", json=body, headers={"X-CSRF-Token": csrf, "Origin": dash.base}
            )
            assert r.status_code == 201, r.text
            assert (await b.get("/v1/admin/devices/oven-1")).status_code == 200

    async def test_another_sessions_csrf_token_does_not_count(self, dash: Dash) -> None:
        async with dash.login() as (c1, _), dash.login() as (_c2, csrf2):
            r = await c1.post("/ui/api/devices/oven-1/revoke", headers={"X-CSRF-Token": csrf2})
            assert r.status_code == 403

    @pytest.mark.parametrize(
        "path", ["/devices", "/devices/a/rekey", "/devices/a/confirm", "/devices/a/revoke"]
    )
    async def test_no_session_is_401_even_with_a_token(self, dash: Dash, path: str) -> None:
        async with dash.client() as c:
            r = await c.post(
                "/ui/api" + path,
                json={},
                headers={"X-CSRF-Token": "x", "Authorization": f"Bearer {dash.token}"},
            )
        assert r.status_code == 401
        assert_secure_headers(r)

    async def test_reads_need_the_csrf_token_too(self, dash: Dash) -> None:
        async with dash.login() as (c, csrf):
            assert (await c.get("/ui/api/overview")).status_code == 403
            r = await c.get("/ui/api/overview", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200
            assert r.json()["devices"] == []


class TestActions:
    async def test_register_rekey_confirm_cook_revoke_through_the_session(self, dash: Dash) -> None:
        async with dash.login() as (c, csrf):
            h = {"X-CSRF-Token": csrf}
            r = await c.post(
                "/ui/api/devices", json={"device_id": "oven-1", "setup_code": "12345678"}, headers=h
            )
            assert r.status_code == 201 and r.json()["window_open"] is True
            assert "12345678" not in r.text
            # The same rules as the API: not enrolled yet.
            r = await c.post("/ui/api/devices/oven-1/confirm", headers=h)
            assert r.status_code == 409 and r.json()["error"] == "not_enrolled"
            r = await c.post("/ui/api/devices/ghost/rekey", headers=h)
            assert r.status_code == 404 and r.json()["error"] == "unknown_device"
            r = await c.post("/ui/api/devices/oven-1/cook", json={"recipe": "nope"}, headers=h)
            assert r.status_code == 422 and r.json()["error"] == "unknown_recipe"
            r = await c.post("/ui/api/devices/oven-1/cook", json={"recipe": "popcorn"}, headers=h)
            assert r.status_code == 202 and r.json() == {
                "device_id": "oven-1",
                "recipe": "popcorn",
                "pushed": False,
            }
            r = await c.post("/ui/api/devices/oven-1/revoke", headers=h)
            assert r.status_code == 200 and r.json()["revoked"] is True
            meta = (await c.get("/ui/api/meta", headers=h)).json()
            assert meta["cook"]["available"] is True
            assert "popcorn" in [x["name"] for x in meta["cook"]["recipes"]]
            overview = (await c.get("/ui/api/overview", headers=h)).json()
        kinds = [a["kind"] for a in overview["audit"]]
        assert kinds[:3] == ["revoked", "cook_ordered", "registered"]
        (dev,) = overview["devices"]
        assert dev["device_id"] == "oven-1" and dev["revoked"] is True

    @pytest.mark.parametrize(
        "device_id", ["<script>", "a b", "x" * 65, "oven/1", "<img src=x onerror=alert(1)>"]
    )
    async def test_markup_cannot_be_a_device_id(self, dash: Dash, device_id: str) -> None:
        async with dash.login() as (c, csrf), dash.bearer() as b:
            r = await c.post(
                "/ui/api/devices",
                json={"device_id": device_id, "setup_code": "12345678"},
                headers={"X-CSRF-Token": csrf},
            )
            assert r.status_code == 422 and r.json()["error"] == "validation_error"
            assert device_id not in r.text  # the error names the field, never echoes input
            assert_secure_headers(r)
            assert (await b.get("/v1/admin/devices")).json() == []

    async def test_setup_code_never_echoed_in_errors(self, dash: Dash) -> None:
        async with dash.login() as (c, csrf):
            r = await c.post(
                "/ui/api/devices",
                json={"device_id": "oven-1", "setup_code": "12ab-secret-code"},
                headers={"X-CSRF-Token": csrf},
            )
        assert r.status_code == 422 and "secret" not in r.text


class TestEscaping:
    async def test_hostile_text_reaches_the_page_only_as_json_data(self, dash: Dash) -> None:
        """A compromised oven can report any recipe name, and audit details carry text: both
        reach the page as JSON strings (never HTML), and the page itself holds no data."""
        async with dash.login() as (c, csrf):
            h = {"X-CSRF-Token": csrf}
            r = await c.post(
                "/ui/api/devices",
                json={"device_id": "microwave-7", "setup_code": "12345678"},
                headers=h,
            )
            assert r.status_code == 201
            await dash.rt.store.add_audit(
                [AuditEntry(kind="note", device_id="microwave-7", epoch=0, detail=HOSTILE)]
            )
            status = {"t": "status", "state": "cooking", "recipe": HOSTILE, "left_s": 3}
            await dash.rt.app.handle("microwave-7", json.dumps(status).encode())
            r = await c.get("/ui/api/overview", headers=h)
            page = await c.get("/")
        assert r.headers["content-type"] == "application/json"
        assert_secure_headers(r)
        data = r.json()
        assert data["audit"][0]["detail"] == HOSTILE
        assert data["devices"][0]["app"]["recipe"] == HOSTILE
        assert "onerror" not in page.text and "microwave-7" not in page.text

    async def test_every_response_carries_the_headers(self, dash: Dash) -> None:
        async with dash.login() as (c, csrf):
            responses = [
                await c.get("/"),
                await c.get("/login"),
                await c.get("/static/dashboard.js"),
                await c.get("/static/dashboard.css"),
                await c.get("/static/favicon.svg"),
                await c.get("/static/nothing.js"),
                await c.get("/static/dashboard.py"),
                await c.get("/ui/api/meta", headers={"X-CSRF-Token": csrf}),
                await c.get("/ui/api/meta"),
                await c.post("/ui/api/devices/bad%20id/rekey", headers={"X-CSRF-Token": csrf}),
                await c.post("/ui/api/devices", content=b"{", headers={"X-CSRF-Token": csrf}),
                await c.post("/logout", data={"csrf": "no"}),
            ]
        for r in responses:
            assert_secure_headers(r)
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 303, 200, 200, 200, 404, 404, 200, 403, 422, 422, 403]
        assert responses[2].headers["content-type"].startswith("text/javascript")
        assert responses[3].headers["content-type"].startswith("text/css")
        async with dash.client() as c:
            r = await c.get("/static/..%2F..%2Fdashboard.py")
        assert r.status_code == 404 and "import" not in r.text


class TestActivity:
    async def test_last_exchange_and_confirmation_come_from_the_audit_log(self, dash: Dash) -> None:
        store = dash.rt.store
        await store.add_audit(
            [
                AuditEntry(kind="enrolled", device_id="a", epoch=1),
                AuditEntry(kind="confirmed", device_id="a", epoch=1, detail="rtt_ms=2.5"),
                AuditEntry(kind="handshake", device_id="a", epoch=1),
                AuditEntry(kind="rekeyed", device_id="b", epoch=4),
            ]
        )
        act = Activity()
        await act.refresh(store, ["a", "b", "c"])
        assert act.exchange["a"].kind == "enrolled" and act.exchange["b"].epoch == 4
        assert act.confirmation["a"].detail == "rtt_ms=2.5"
        assert "c" not in act.exchange
        cause = int(NgCause.DECRYPT_FAILED)
        await store.add_audit(
            [
                AuditEntry(kind="204_ng", device_id="a", epoch=2, cause=cause),
                AuditEntry(kind="confirm_failed", device_id="a", epoch=1, detail="offline"),
            ]
        )
        await act.refresh(store, ["a", "b"])
        assert act.exchange["a"].kind == "204_ng"
        assert act.exchange["a"].cause == NgCause.DECRYPT_FAILED.name
        assert act.confirmation["a"].kind == "confirm_failed"
        # A fresh reader over many rows (more than its page budget) agrees.
        act.PAGE = 2
        act.MAX_PAGES = 1
        again = Activity()
        again.PAGE, again.MAX_PAGES = 2, 1
        await again.refresh(store, ["a", "b"])
        assert again.exchange["a"].kind == "204_ng" and again.exchange["b"].kind == "rekeyed"


class TestSessions:
    def test_idle_and_absolute_expiry_and_the_cap(self) -> None:
        now = [1000.0]
        store = SessionStore(idle_s=10, max_s=25, cap=3, clock=lambda: now[0])
        sid, session = store.create()
        assert store.get(sid) is session
        assert "csrf" not in repr(session) and session.csrf not in repr(session)
        now[0] += 9
        assert store.get(sid) is session  # activity restarts the idle timer
        now[0] += 9
        assert store.get(sid) is session
        now[0] += 9  # 27 s after login: past the absolute limit
        assert store.get(sid) is None
        sid2, _ = store.create()
        now[0] += 11
        assert store.get(sid2) is None  # idle too long
        ids = [store.create()[0] for _ in range(4)]
        assert len(store) == 3 and store.get(ids[0]) is None and store.get(ids[3]) is not None
        assert store.get(None) is None and store.get("x" * 500) is None
        store.drop(ids[3])
        assert store.get(ids[3]) is None
