"""What the server offers beyond the key scheme itself: the public keys on the device
listener (``GET /v1/keys``, checked by a device against its pin), the rekey policy chosen at
registration or by server default (and carried to the device in 206), and the microwave
demo's cooking orders (``POST .../cook``, pushed to a live oven or held for its next report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from servkit import Server, start_at
from test_flows_e2e import enrol

from keyseed.apps.microwave import RecipeService
from keyseed.protocol.events import AppDataReceived
from keyseed.protocol.policy import DEFAULT_POLICY, RekeyPolicy
from keyseed.server.apps import EchoApp, NullApp, make_app
from keyseed.server.config import ConfigError, ServerConfig, load_config

POLICY = {"soft_messages": 50, "hard_messages": 500, "soft_age_s": 3600, "hard_age_s": 7200}


def app_data(ev: Any) -> bool:
    return isinstance(ev, AppDataReceived)


async def audit_kinds(srv: Server, device_id: str) -> list[str]:
    r = await srv.admin.get("/v1/admin/audit", params={"device_id": device_id})
    return [row["kind"] for row in r.json()]


@pytest.fixture
async def oven_server(tmp_path: Path) -> Any:
    """A server whose app comes from its configuration: the microwave recipe service."""
    srv = await start_at(tmp_path / "data", app="microwave")
    yield srv
    await srv.admin.aclose()
    await srv.running.stop()


class TestPublicKeys:
    async def test_device_listener_serves_the_admin_key_list(self, tmp_path: Path) -> None:
        suites = ("hpke-x25519", "hpke-mlkem768-x25519")
        srv = await start_at(tmp_path / "data", suites=suites)
        try:
            async with httpx.AsyncClient(base_url=srv.device_http) as c:
                r = await c.get("/v1/keys")  # no token: public keys are public
                assert r.status_code == 200, r.text
                assert (await c.post("/v1/keys")).status_code == 405
            body = r.json()
            assert [k["suite"] for k in body] == list(suites)
            assert {k["suite"]: k["fingerprint"] for k in body} == srv.rt.secrets.fingerprints()
            admin = await srv.admin.get("/v1/admin/keys")
            assert admin.status_code == 200 and admin.json() == body
            # The admin listener keeps its own (token-protected) route only.
            assert (await srv.admin.get("/v1/keys")).status_code == 404
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{srv.running.admin_port}"
            ) as c:
                assert (await c.get("/v1/admin/keys")).status_code == 401
        finally:
            await srv.admin.aclose()
            await srv.running.stop()


class TestPolicy:
    async def test_registered_policy_reaches_the_device(self, server: Server) -> None:
        r = await server.register("oven-p", setup_code="12345678", policy=POLICY)
        assert r.status_code == 201, r.text
        assert r.json()["policy"] == POLICY and r.json()["policy_next"] is None
        dev = await server.install("oven-p")
        await dev.connect()
        await server.wait_for("oven-p", lambda v: v["epoch"] == 1 and not v["owed_206"])
        assert dev.keystore.policy == RekeyPolicy(**POLICY)  # carried in 206
        view = await server.device("oven-p")
        assert view["policy"] == POLICY and view["policy_next"] is None
        await dev.close()

    async def test_default_policy_is_the_servers(self, tmp_path: Path) -> None:
        srv = await start_at(
            tmp_path / "data",
            policy_soft_messages=7,
            policy_hard_messages=70,
            policy_soft_age_s=60,
            policy_hard_age_s=600,
        )
        try:
            r = await srv.register("oven-d", setup_code="12345678")
            assert r.status_code == 201, r.text
            assert r.json()["policy"] == {
                "soft_messages": 7,
                "hard_messages": 70,
                "soft_age_s": 60,
                "hard_age_s": 600,
            }
            r = await srv.register("oven-e", setup_code="12345678", policy=POLICY)
            assert r.json()["policy"] == POLICY
        finally:
            await srv.admin.aclose()
            await srv.running.stop()

    async def test_view_without_policy_shows_the_default(self, server: Server) -> None:
        r = await server.register("oven-0", setup_code="12345678")
        assert r.status_code == 201
        expected = {
            "soft_messages": DEFAULT_POLICY.soft_messages,
            "hard_messages": DEFAULT_POLICY.hard_messages,
            "soft_age_s": DEFAULT_POLICY.soft_age_s,
            "hard_age_s": DEFAULT_POLICY.hard_age_s,
        }
        assert (await server.device("oven-0"))["policy"] == expected

    @pytest.mark.parametrize(
        "policy",
        [
            {**POLICY, "soft_messages": 501},  # soft above hard
            {**POLICY, "soft_age_s": 7201},
            {**POLICY, "soft_messages": 0},
            {**POLICY, "hard_age_s": -1},
            {**POLICY, "soft_messages": "50"},
            {**POLICY, "soft_messages": True},
            {**POLICY, "soft_age_s": 1.5},
            {**POLICY, "hard_messages": 2**63},
            {k: v for k, v in POLICY.items() if k != "hard_age_s"},
            {**POLICY, "extra": 1},
            "6,86400",
        ],
    )
    async def test_bad_policy_is_422_and_stores_nothing(self, server: Server, policy: Any) -> None:
        r = await server.register("oven-bad", setup_code="12345678", policy=policy)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "validation_error"
        assert "12345678" not in r.text
        assert (await server.admin.get("/v1/admin/devices/oven-bad")).status_code == 404
        assert await audit_kinds(server, "oven-bad") == []

    def test_config_sources_and_checks(self, tmp_path: Path) -> None:
        toml = tmp_path / "ks.toml"
        toml.write_text('app = "echo"\npolicy_soft_messages = 10\npolicy-hard-messages = 20\n')
        cfg = load_config({"policy_soft_age_s": "5"}, {"KEYSEED_CONFIG": str(toml)})
        assert cfg.app == "echo"
        assert cfg.policy == RekeyPolicy(
            soft_messages=10,
            hard_messages=20,
            soft_age_s=5,
            hard_age_s=DEFAULT_POLICY.hard_age_s,
        )
        assert load_config({}, {"KEYSEED_APP": "none"}).app == "none"
        assert load_config({}, {}).app == "microwave"
        assert load_config({}, {}).policy == DEFAULT_POLICY
        for flags in (
            {"app": "toaster"},
            {"policy_soft_messages": "0"},
            {"policy_soft_messages": "x"},
            {"policy_hard_age_s": str(2**63)},
            {"policy_soft_messages": "30", "policy_hard_messages": "20"},  # soft above hard
        ):
            with pytest.raises(ConfigError):
                load_config(flags, {})
        with pytest.raises(ConfigError):
            ServerConfig(policy_soft_age_s=10, policy_hard_age_s=5)

    def test_make_app(self) -> None:
        assert isinstance(make_app("microwave"), RecipeService)
        assert isinstance(make_app("echo"), EchoApp)
        assert isinstance(make_app("none"), NullApp)
        with pytest.raises(ValueError, match="unknown server app"):
            make_app("toaster")


class TestCook:
    async def test_online_oven_gets_the_order_at_once(self, oven_server: Server) -> None:
        srv = oven_server
        assert isinstance(srv.rt.app, RecipeService)
        dev = await enrol(srv, "oven-1")
        mark = len(dev.events)
        r = await srv.admin.post("/v1/admin/devices/oven-1/cook", json={"recipe": "popcorn"})
        assert r.status_code == 202, r.text
        assert r.json() == {"device_id": "oven-1", "recipe": "popcorn", "pushed": True}
        ev = await dev.until(app_data, mark)
        assert json.loads(ev.data) == {"t": "cook", "name": "popcorn"}  # type: ignore[attr-defined]
        assert "cook_ordered" in await audit_kinds(srv, "oven-1")

        # The oven reports; the admin sees the app state (and no order is left waiting).
        assert (await srv.device("oven-1"))["app"] == {
            "name": "microwave",
            "state": None,
            "recipe": None,
            "left_s": None,
        }
        mark = len(dev.events)
        status = {"t": "status", "state": "cooking", "recipe": "popcorn", "left_s": 150}
        await dev.send_app(json.dumps(status).encode())
        ev = await dev.until(app_data, mark)
        assert json.loads(ev.data) == {"t": "ack", "orders": []}  # type: ignore[attr-defined]
        want = {"name": "microwave", "state": "cooking", "recipe": "popcorn", "left_s": 150}
        assert (await srv.device("oven-1"))["app"] == want
        r = await srv.admin.get("/v1/admin/devices/oven-1/app")
        assert r.status_code == 200 and r.json() == want
        await dev.close()

    async def test_offline_oven_gets_the_order_with_its_next_report(
        self, oven_server: Server
    ) -> None:
        srv = oven_server
        dev = await enrol(srv, "oven-2")
        await dev.close()
        await srv.wait_for("oven-2", lambda v: not v["online"])
        r = await srv.admin.post("/v1/admin/devices/oven-2/cook", json={"recipe": "popcorn"})
        assert r.status_code == 202 and r.json()["pushed"] is False
        await dev.connect()
        await srv.wait_for("oven-2", lambda v: v["online"])
        mark = len(dev.events)
        await dev.send_app(b'{"t":"status","state":"idle"}')
        ev = await dev.until(app_data, mark)
        assert json.loads(ev.data) == {"t": "ack", "orders": [{"cook": "popcorn"}]}  # type: ignore[attr-defined]
        await dev.close()

    async def test_unconfirmed_device_gets_no_push(self, oven_server: Server) -> None:
        srv = oven_server
        dev = await enrol(srv, "oven-nc", setup_code=None)
        mark = len(dev.events)
        r = await srv.admin.post("/v1/admin/devices/oven-nc/cook", json={"recipe": "popcorn"})
        assert r.status_code == 202 and r.json()["pushed"] is False  # the core refused it
        assert not any(app_data(ev) for ev in dev.events[mark:])
        assert (await srv.device("oven-nc"))["online"]  # the connection is unharmed
        await dev.close()

    async def test_errors(self, oven_server: Server) -> None:
        srv = oven_server
        r = await srv.admin.post("/v1/admin/devices/nobody/cook", json={"recipe": "popcorn"})
        assert r.status_code == 404 and r.json()["error"] == "unknown_device"
        assert (await srv.admin.get("/v1/admin/devices/nobody/app")).status_code == 404
        assert (await srv.register("oven-3", setup_code="12345678")).status_code == 201
        r = await srv.admin.post("/v1/admin/devices/oven-3/cook", json={"recipe": "haggis"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_recipe"
        for body in ({}, {"recipe": ""}, {"recipe": "popcorn", "x": 1}, {"recipe": 3}):
            r = await srv.admin.post("/v1/admin/devices/oven-3/cook", json=body)
            assert r.status_code == 422, body
        assert "cook_ordered" not in await audit_kinds(srv, "oven-3")
        assert (await srv.admin.post("/v1/admin/devices/oven-3/revoke")).status_code == 200
        r = await srv.admin.post("/v1/admin/devices/oven-3/cook", json={"recipe": "popcorn"})
        assert r.status_code == 409 and r.json()["error"] == "not_allowed"
        async with httpx.AsyncClient(base_url=srv.admin.base_url) as anonymous:
            r = await anonymous.post("/v1/admin/devices/oven-3/cook", json={"recipe": "popcorn"})
        assert r.status_code == 401

    async def test_not_the_recipe_service_is_409(self, server: Server) -> None:
        assert (await server.register("oven-4", setup_code="12345678")).status_code == 201
        r = await server.admin.post("/v1/admin/devices/oven-4/cook", json={"recipe": "popcorn"})
        assert r.status_code == 409 and r.json()["error"] == "no_recipe_service"
        r = await server.admin.get("/v1/admin/devices/oven-4/app")
        assert r.status_code == 409
        assert (await server.device("oven-4"))["app"] is None
