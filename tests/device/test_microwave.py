"""The microwave demo: the recipe service (server app) and the oven (device app), joined
directly (bytes in, bytes out, as the sealed channel carries them)."""

from __future__ import annotations

import asyncio
import json

from keyseed.apps.microwave import MicrowaveApp, RecipeService, load_recipes
from keyseed.server.apps import ServerApp


class Link:
    """The oven's link, delivering to the service and the reply back to the oven."""

    def __init__(self, service: RecipeService, oven: MicrowaveApp) -> None:
        self.service, self.oven = service, oven
        self.sent: list[bytes] = []
        self.connected = True

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def pump(self) -> None:
        while self.sent:
            reply = await self.service.handle("oven-1", self.sent.pop(0))
            if reply is not None:
                await self.oven.on_message(reply)


def test_recipes_ship_with_the_package() -> None:
    recipes = load_recipes()
    assert {"popcorn", "warm-milk"} <= set(recipes)
    assert isinstance(RecipeService(), ServerApp)


async def test_order_through_the_server_cooks_and_reports() -> None:
    service = RecipeService()
    oven = MicrowaveApp(status_interval=3600, speed=1000)
    link = Link(service, oven)
    task = asyncio.create_task(oven.run(link))
    try:
        await asyncio.sleep(0)
        oven.on_connected()
        await link.pump()
        assert "popcorn" in oven.menu
        assert service.statuses["oven-1"]["state"] == "idle"
        assert await service.order_cook("oven-1", "warm-milk") is False  # no push: queued
        oven._report()  # the next periodic report picks the order up
        await link.pump()
        assert oven.state in ("cooking", "done")
        assert oven.recipe is not None and oven.recipe.name == "warm-milk"
        for _ in range(200):
            await link.pump()
            if service.statuses["oven-1"]["state"] == "done":
                break
            await asyncio.sleep(0.01)
        assert oven.state == "done"
        assert service.statuses["oven-1"] == {
            "state": "done",
            "recipe": "warm-milk",
            "left_s": None,
        }
    finally:
        task.cancel()


async def test_bad_messages_get_errors_not_crashes() -> None:
    service = RecipeService()
    for data in (b"\xff", b"[]", b'{"t": 1}', b'{"t": "nope"}', b'{"t": "status", "state": "x"}'):
        reply = await service.handle("oven-1", data)
        assert reply is not None and json.loads(reply)["t"] == "error"
    reply = await service.handle("oven-1", b'{"t": "get", "name": "caviar"}')
    assert reply is not None and json.loads(reply)["error"] == "unknown_recipe"
    oven = MicrowaveApp()
    for data in (b"\x00", b'{"t": "recipe", "recipe": {"name": "x"}}', b'{"t": "ack"}'):
        await oven.on_message(data)
    assert oven.state == "idle"
