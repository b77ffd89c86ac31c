"""Admin API bodies the scan does not send: JSON that does not parse, and bodies of
megabytes, with and without the token. The token is checked before the body is read, so
without it every one is 401; with it, a body that is not JSON is 400 and an oversized field
422. Nothing is stored either way."""

from __future__ import annotations

import httpx
import pytest
from servkit import Server

BODIES = [b"{", b"\xff\xfe", b'{"device_id": "x1", }', b"[" * 5000, b"null"]


@pytest.mark.parametrize("body", BODIES, ids=["open-brace", "not-utf8", "trailing-comma",
                                              "deep-nesting", "null"])  # fmt: skip
async def test_malformed_json(server: Server, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    r = await server.admin.post("/v1/admin/devices", content=body, headers=headers)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"] in ("bad_request", "validation_error")
    async with httpx.AsyncClient(base_url=str(server.admin.base_url)) as anon:
        r = await anon.post("/v1/admin/devices", content=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert (await server.admin.get("/v1/admin/devices")).json() == []


async def test_oversized_bodies(server: Server) -> None:
    big = {"device_id": "x" * 2_000_000, "setup_code": "12345678"}
    r = await server.admin.post("/v1/admin/devices", json=big)
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert "xxxxxxxx" not in r.text  # the input is not echoed
    async with httpx.AsyncClient(base_url=str(server.admin.base_url)) as anon:
        r = await anon.post("/v1/admin/devices", json=big)
        assert r.status_code == 401
        r = await anon.post("/v1/admin/devices/x1/approve", json={"sas": "1" * 2_000_000})
        assert r.status_code == 401
    assert (await server.admin.get("/v1/admin/devices")).json() == []
