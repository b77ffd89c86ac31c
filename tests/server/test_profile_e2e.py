"""Per-device profiles through the real server (both uvicorn listeners, SQLite, the three
suites' long-term keys in the data folder) and a real device core over a WebSocket.

A profile change is stored and audited at once, reaches the device with the 206 of its next
exchange, and a new suite is used from the 203 after that; bad input is a typed 4xx that
leaves the record untouched."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from servkit import Server, start_at
from test_flows_e2e import enrol, key_at, seed_at

from keyseed.crypto import fingerprint
from keyseed.protocol.events import AppDataReceived
from keyseed.server.datadir import open_data_dir

ALL = ("hpke-x25519", "rsa-oaep", "hpke-mlkem768-x25519")


@pytest.fixture(scope="module")
def suite_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three suites' long-term keys, made once (RSA-3072 takes a while): each test's
    server starts on a fresh data folder holding a copy of them."""
    data = tmp_path_factory.mktemp("keys") / "data"
    open_data_dir(data, ALL)
    return data / "keys"


@pytest.fixture
async def srv(tmp_path: Path, suite_keys: Path) -> AsyncIterator[Server]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    shutil.copytree(suite_keys, data / "keys")
    s = await start_at(data, suites=ALL)
    yield s
    await s.admin.aclose()
    await s.running.stop()


async def profile(srv: Server, device_id: str, **body: Any) -> Any:
    return await srv.admin.patch(f"/v1/admin/devices/{device_id}/profile", json=body)


async def rekey(srv: Server, dev: Any, epoch: int) -> None:
    """401/402, then 403-206 on the device's live connection, up to ``epoch``."""
    r = await srv.admin.post(f"/v1/admin/devices/{dev.keystore.device_id}/rekey")
    assert r.status_code == 202, r.text
    await dev.until(seed_at(epoch))
    await srv.wait_for(dev.keystore.device_id, lambda v: v["epoch"] == epoch and not v["owed_206"])


async def app_round_trip(dev: Any, data: bytes) -> None:
    start = len(dev.events)
    await dev.send_app(data)
    ev = await dev.until(lambda e: isinstance(e, AppDataReceived), start)
    assert ev.data == b"echo:" + data  # the echo app


@pytest.mark.parametrize("start", ALL)
async def test_suite_cycle_through_every_suite(srv: Server, start: str) -> None:
    """From ``start`` through both other suites and back, each move at the next exchange."""
    others = [s for s in ALL if s != start]
    dev = await enrol(srv, "oven-p", suite=start)
    pinned = fingerprint(start, dev.keystore.server_key)
    keys = {k["suite"]: k for k in (await srv.admin.get("/v1/admin/keys")).json()}
    epoch = 1
    for target in [*others, start]:
        r = await profile(srv, "oven-p", suite=target)
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["profile"]["suite"] == target
        assert view["suite_in_force"] != target  # not before the next 206
        # Exchange 1: still in the old suite; its 206 moves the device.
        epoch += 1
        await rekey(srv, dev, epoch)
        ks = dev.keystore
        assert ks.suite == target
        assert ks.server_key.hex() == keys[target]["public_key"]
        view = await srv.device("oven-p")
        assert view["suite_in_force"] == target and view["suite"] != target
        # Exchange 2: the 203 in the new suite (the record's key suite follows).
        epoch += 1
        await rekey(srv, dev, epoch)
        view = await srv.device("oven-p")
        assert view["suite"] == target and view["suite_in_force"] == target
        await app_round_trip(dev, f"under {target}".encode())
    assert dev.keystore.pinned_fp == pinned
    # Every move is in the audit log, with what was set.
    rows = (await srv.admin.get("/v1/admin/audit", params={"device_id": "oven-p"})).json()
    changes = [r["detail"] for r in rows if r["kind"] == "profile_changed"]
    assert len(changes) == 3
    assert all(d.startswith("suite=") for d in changes)
    await dev.close()


async def test_policy_and_tls_setting_reach_the_device_in_206(srv: Server) -> None:
    dev = await enrol(srv, "oven-q")
    policy = {"soft_messages": 4, "hard_messages": 40, "soft_age_s": 3600, "hard_age_s": 7200}
    r = await profile(srv, "oven-q", policy=policy, tls_reduced=True)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["profile"]["policy"] == policy and view["profile"]["tls_reduced"]
    assert view["policy_next"] == policy and view["policy"] != policy
    assert view["tls_reduced"] is False
    await rekey(srv, dev, 2)
    assert dev.keystore.policy.soft_messages == 4 and dev.keystore.tls_reduced
    view = await srv.device("oven-q")
    assert view["policy"] == policy and view["policy_next"] is None and view["tls_reduced"]
    # The device follows the new policy by itself: 4 messages, then a rekey (epoch 3).
    for i in range(4):
        await app_round_trip(dev, b"m%d" % i)
    await dev.until(key_at(3))
    await dev.close()


BAD_BODIES: list[dict[str, Any]] = [
    {"suite": "aes-nothing"},
    {"policy": {"soft_messages": -1, "hard_messages": 5, "soft_age_s": 1, "hard_age_s": 2}},
    {"policy": {"soft_messages": 9, "hard_messages": 5, "soft_age_s": 1, "hard_age_s": 2}},
    {"policy": {"soft_messages": 1, "hard_messages": 5, "soft_age_s": 0, "hard_age_s": 2}},
    {"policy": {"soft_messages": 1, "hard_messages": 5, "soft_age_s": 3}},
    {"tls_reduced": "yes please"},
    {"suite": "rsa-oaep", "colour": "blue"},
    {},
]


async def test_bad_input_is_a_typed_4xx_and_changes_nothing(srv: Server) -> None:
    r = await srv.register("oven-bad", setup_code="12345678")
    assert r.status_code == 201
    before = await srv.device("oven-bad")
    for body in BAD_BODIES:
        r = await profile(srv, "oven-bad", **body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"] == "validation_error", body
        assert await srv.device("oven-bad") == before, body
    rows = (await srv.admin.get("/v1/admin/audit", params={"device_id": "oven-bad"})).json()
    assert "profile_changed" not in [row["kind"] for row in rows]


async def test_unknown_or_revoked_device(srv: Server) -> None:
    r = await profile(srv, "nobody", suite="rsa-oaep")
    assert r.status_code == 404 and r.json()["error"] == "unknown_device"
    await srv.register("oven-r", setup_code="12345678")
    assert (await srv.admin.post("/v1/admin/devices/oven-r/revoke")).status_code == 200
    before = await srv.device("oven-r")
    r = await profile(srv, "oven-r", suite="rsa-oaep")
    assert r.status_code == 409 and r.json()["error"] == "not_allowed"
    assert await srv.device("oven-r") == before


async def test_a_suite_the_server_has_no_key_for_is_refused(tmp_path: Path) -> None:
    s = await start_at(tmp_path / "only-x25519")
    try:
        await s.register("oven-s", setup_code="12345678")
        before = await s.device("oven-s")
        r = await profile(s, "oven-s", suite="rsa-oaep")
        assert r.status_code == 422 and "not enabled" in r.json()["detail"]
        assert await s.device("oven-s") == before
    finally:
        await s.admin.aclose()
        await s.running.stop()


async def test_registration_sets_the_profile(srv: Server) -> None:
    policy = {"soft_messages": 7, "hard_messages": 70, "soft_age_s": 60, "hard_age_s": 600}
    r = await srv.register(
        "oven-t", setup_code="12345678", suite="rsa-oaep", policy=policy, tls_reduced=True
    )
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["profile"] == {"suite": "rsa-oaep", "policy": policy, "tls_reduced": True}
    rows = (await srv.admin.get("/v1/admin/audit", params={"device_id": "oven-t"})).json()
    assert "tls_reduced=yes" in rows[0]["detail"]
    dev = await srv.install("oven-t", suite="rsa-oaep")
    await dev.connect()
    await dev.until(seed_at(1))
    assert dev.keystore.tls_reduced and dev.keystore.policy.soft_messages == 7
    await dev.close()
