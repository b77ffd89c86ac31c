"""The dashboard's device-pairs section over HTTP (a real server in this process, the fixtures
of test_dashboard_http.py): the page has the section and its form, the pairs JSON needs a
session and its CSRF token, allow and revoke work and are audited, and bad input is refused
with nothing stored."""

from __future__ import annotations

from test_dashboard_http import Dash, dash

__all__ = ["dash"]  # the fixture, used by name


async def test_page_has_the_pairs_section_and_form(dash: Dash) -> None:
    async with dash.login() as (c, _):
        page = (await c.get("/")).text
    for needle in ('id="pairs-card"', 'id="pairs-body"', 'id="pair-form"', 'id="pair-allow"'):
        assert needle in page


async def test_allow_and_revoke_a_pair(dash: Dash) -> None:
    async with dash.login() as (c, csrf):
        h = {"X-CSRF-Token": csrf}
        assert (await c.get("/ui/api/pairs", headers=h)).json() == []
        r = await c.post("/ui/api/pairs/allow", json={"a": "oven-5", "b": "oven-4"}, headers=h)
        assert r.status_code == 200, r.text
        view = r.json()
        assert (view["a"], view["b"], view["allowed"], view["status"]) == (
            "oven-4",
            "oven-5",
            True,
            "none",
        )
        r = await c.post("/ui/api/pairs/deny", json={"a": "oven-4", "b": "oven-5"}, headers=h)
        assert r.status_code == 200 and r.json()["allowed"] is False
        rows = (await c.get("/ui/api/pairs", headers=h)).json()
        assert [(p["a"], p["b"], p["allowed"]) for p in rows] == [("oven-4", "oven-5", False)]
        audit = (await c.get("/ui/api/overview", headers=h)).json()["audit"]
        assert [a["kind"] for a in audit][:2] == ["pair_denied", "pair_denied"]


async def test_pairs_need_the_session_and_its_csrf_token(dash: Dash) -> None:
    body = {"a": "oven-4", "b": "oven-5"}
    async with dash.client() as c:
        assert (await c.get("/ui/api/pairs")).status_code == 401
        assert (await c.post("/ui/api/pairs/allow", json=body)).status_code == 401
    async with dash.login() as (c, _):
        r = await c.post("/ui/api/pairs/allow", json=body)
        assert r.status_code in (401, 403)
    async with dash.login() as (c, csrf):
        h = {"X-CSRF-Token": csrf}
        assert (await c.get("/ui/api/pairs", headers=h)).json() == []


async def test_bad_pairs_are_refused_and_store_nothing(dash: Dash) -> None:
    async with dash.login() as (c, csrf):
        h = {"X-CSRF-Token": csrf}
        for body in (
            {"a": "oven-4", "b": "oven-4"},
            {"a": "<img src=x>", "b": "oven-4"},
            {"a": "oven-4"},
            {"a": "oven-4", "b": "oven-5", "extra": 1},
        ):
            r = await c.post("/ui/api/pairs/allow", json=body, headers=h)
            assert r.status_code == 422, (body, r.text)
        assert (await c.get("/ui/api/pairs", headers=h)).json() == []
