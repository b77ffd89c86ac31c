"""A ``keyseed server`` process for the device tests: the real server (``serve``), with the
microwave recipe service as its app and three test-only additions wired in around it:

* the crash hooks of :mod:`keyseed.faults` on the device channel (``server.recv.<type>``
  before a frame reaches the core, ``server.send.<type>`` / ``server.sent.<type>`` around each
  frame sent, so ``server.send.206`` is after the commit and before the 206 leaves);
* ``GET /v1/keys`` on the device listener (public keys and fingerprints, what a device
  fetches and checks against its pin) and ``POST /v1/admin/devices/{id}/cook`` on the admin
  listener (the setup PC orders "start cooking recipe X" through the server);
* ``KEYSEED_TEST_POLICY=soft_messages,soft_age_s``: the rekey policy registered devices get.

Usage: ``python tests/device/server_main.py [keyseed server options]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import keyseed.server.run as run_mod
import keyseed.server.runtime as runtime_mod
from keyseed import faults
from keyseed.apps.microwave import RecipeService
from keyseed.protocol.admin import set_policy
from keyseed.protocol.policy import RekeyPolicy
from keyseed.server.config import load_config
from keyseed.server.device_channel import DeviceConnection

SERVICE = RecipeService()


def _hook_channel() -> None:
    send, on_item = DeviceConnection._send, DeviceConnection._on_item

    async def _send(self: DeviceConnection, frames: list[bytes]) -> None:
        for frame in frames:
            faults.crash_frame("server.send", frame)
            await send(self, [frame])
            faults.crash_frame("server.sent", frame)

    async def _on_item(self: DeviceConnection, item: object) -> None:
        if isinstance(item, bytes):
            faults.crash_frame("server.recv", item)
        await on_item(self, item)

    DeviceConnection._send = _send  # type: ignore[method-assign]
    DeviceConnection._on_item = _on_item  # type: ignore[method-assign]


def _hook_policy() -> None:
    spec = os.environ.get("KEYSEED_TEST_POLICY")
    if not spec:
        return
    soft_messages, soft_age = (int(x) for x in spec.split(","))
    policy = RekeyPolicy(
        soft_messages=soft_messages,
        hard_messages=soft_messages * 1000,
        soft_age_s=soft_age,
        hard_age_s=soft_age * 1000,
    )
    open_store = runtime_mod.open_store

    async def patched(*args: Any, **kw: Any) -> Any:
        store = await open_store(*args, **kw)
        insert = store.insert

        async def insert_with_policy(record: Any, audit: Any = ()) -> bool:
            return bool(await insert(set_policy(record, policy), audit))

        store.insert = insert_with_policy  # type: ignore[method-assign]
        return store

    runtime_mod.open_store = patched  # type: ignore[assignment]


def _hook_routes() -> None:
    device_app, admin_app = run_mod.device_app, run_mod.admin_app

    def patched_device_app(rt: Any) -> Any:
        app = device_app(rt)

        async def keys(request: Request) -> Response:
            return JSONResponse(
                [
                    {
                        "suite": name,
                        "public_key": key.public_key.raw.hex(),
                        "fingerprint": key.public_key.fingerprint.hex(),
                    }
                    for name, key in rt.secrets.keys.items()
                ]
            )

        app.router.routes.append(Route("/v1/keys", keys, methods=["GET"]))
        return app

    def patched_admin_app(rt: Any) -> Any:
        app = admin_app(rt)

        async def push(device_id: str, data: bytes) -> bool:
            conn = rt.hub.get(device_id)
            if conn is None:
                return False
            try:
                await conn.call(lambda proto, now: proto.send_app(data, time.monotonic()))
            except Exception:
                return False
            return True

        SERVICE.attach_push(push)

        @app.post("/v1/admin/devices/{device_id}/cook")
        async def cook(device_id: str, request: Request) -> Response:
            body = await request.json()
            try:
                pushed = await SERVICE.order_cook(device_id, str(body.get("recipe")))
            except KeyError:
                return JSONResponse({"error": "unknown_recipe"}, status_code=422)
            return JSONResponse({"pushed": pushed}, status_code=202)

        @app.get("/v1/admin/devices/{device_id}/app")
        async def app_status(device_id: str) -> Response:
            return JSONResponse(SERVICE.statuses.get(device_id) or {})

        return app

    run_mod.device_app = patched_device_app  # type: ignore[assignment]
    run_mod.admin_app = patched_admin_app  # type: ignore[assignment]


def main(argv: list[str]) -> None:
    flags: dict[str, Any] = {}
    it = iter(argv)
    for arg in it:
        flags[arg.lstrip("-").replace("-", "_")] = next(it)
    _hook_channel()
    _hook_policy()
    _hook_routes()
    asyncio.run(run_mod.serve(load_config(flags), app=SERVICE))


if __name__ == "__main__":
    main(sys.argv[1:])
