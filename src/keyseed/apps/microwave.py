"""keyseed.apps.microwave
~~~~~~~~~~~~~~~~~~~~~~~~

The scheme's own example: a microwave oven (appliance 101) that fetches recipes from its
server (102) and reports its cooking status, and the server's recipe service.

Application messages are small JSON objects, each one APP frame sealed under the current key:

============================================  =============================================
device -> server                              server -> device (the reply)
============================================  =============================================
``{"t": "list"}``                             ``{"t": "recipes", "names": [...]}``
``{"t": "get", "name": N}``                   ``{"t": "recipe", "recipe": {...}}`` or
                                              ``{"t": "error", "error": "unknown_recipe"}``
``{"t": "status", "state": S, "recipe": N,    ``{"t": "ack", "orders": [{"cook": N}, ...]}``
"left_s": L}``
============================================  =============================================

``S`` is ``idle``, ``cooking`` or ``done``. The setup PC orders "start cooking recipe N"
through the server (:meth:`RecipeService.order_cook`); the order waits in the service and
reaches the oven with the reply to its next status report (the oven reports on every
connection, on every change and every ``status_interval``), or at once when the server can
push (:meth:`RecipeService.attach_push`). The oven also accepts a pushed ``{"t": "cook",
"name": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..protocol.constants import MAX_APP_DATA
from .base import AppLink

log = logging.getLogger("keyseed.apps.microwave")

#: Orders a device can have waiting at the server.
MAX_ORDERS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    name: str
    title: str
    power_w: int
    seconds: int
    steps: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "power_w": self.power_w,
            "seconds": self.seconds,
            "steps": list(self.steps),
        }

    @classmethod
    def from_json(cls, d: Any) -> Recipe:
        """Raises ValueError on anything but a well-formed recipe."""
        if not isinstance(d, dict):
            raise ValueError("recipe is not an object")
        name, title, power, seconds, steps = (
            d.get("name"),
            d.get("title"),
            d.get("power_w"),
            d.get("seconds"),
            d.get("steps"),
        )
        if not (isinstance(name, str) and 0 < len(name) <= 64 and isinstance(title, str)):
            raise ValueError("recipe name/title")
        if not (type(power) is int and 0 < power <= 3000):
            raise ValueError("recipe power")
        if not (type(seconds) is int and 0 < seconds <= 3600):
            raise ValueError("recipe time")
        if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
            raise ValueError("recipe steps")
        return cls(name=name, title=title, power_w=power, seconds=seconds, steps=tuple(steps))


def load_recipes() -> dict[str, Recipe]:
    """The recipe set shipped with the package (``keyseed/apps/recipes.json``)."""
    text = resources.files("keyseed.apps").joinpath("recipes.json").read_text("utf-8")
    data = json.loads(text)
    return {r.name: r for r in (Recipe.from_json(x) for x in data["recipes"])}


def _encode(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_APP_DATA:
        raise ValueError("application message too large")
    return data


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("t"), str) else None


# -- server side ----------------------------------------------------------------------


Push = Callable[[str, bytes], Awaitable[bool]]


class RecipeService:
    """The server app of the microwave demo: serves recipes, keeps each oven's last status,
    and holds cooking orders from the setup PC until the oven picks them up."""

    def __init__(self, recipes: dict[str, Recipe] | None = None) -> None:
        #: The recipe set served.
        self.recipes = recipes if recipes is not None else load_recipes()
        #: Last status each device reported.
        self.statuses: dict[str, dict[str, Any]] = {}
        # device ID -> orders not yet handed to the oven.
        self._orders: dict[str, deque[str]] = {}
        # Sends an APP message to a connected device now (set by the server, optional).
        self._push: Push | None = None

    def attach_push(self, push: Push) -> None:
        """Let orders reach a connected oven at once (``push(device_id, data)`` returns
        whether it was sent)."""
        self._push = push

    async def order_cook(self, device_id: str, recipe: str) -> bool:
        """The setup PC orders ``device_id`` to cook ``recipe``.

        Returns:
            True if it was pushed now, False if it waits for the oven's next report.
        Raises:
            KeyError: unknown recipe.
        """
        if recipe not in self.recipes:
            raise KeyError(recipe)
        if self._push is not None and await self._push(
            device_id, _encode({"t": "cook", "name": recipe})
        ):
            return True
        self._orders.setdefault(device_id, deque(maxlen=MAX_ORDERS)).append(recipe)
        return False

    async def handle(self, device_id: str, data: bytes) -> bytes | None:
        """One message from an oven (the ServerApp seam)."""
        msg = _decode(data)
        if msg is None:
            return _encode({"t": "error", "error": "malformed"})
        kind = msg["t"]
        if kind == "list":
            return _encode({"t": "recipes", "names": sorted(self.recipes)})
        if kind == "get":
            recipe = self.recipes.get(str(msg.get("name")))
            if recipe is None:
                return _encode({"t": "error", "error": "unknown_recipe"})
            return _encode({"t": "recipe", "recipe": recipe.to_json()})
        if kind == "status":
            state = msg.get("state")
            if state not in ("idle", "cooking", "done"):
                return _encode({"t": "error", "error": "malformed"})
            left = msg.get("left_s")
            self.statuses[device_id] = {
                "state": state,
                "recipe": msg.get("recipe") if isinstance(msg.get("recipe"), str) else None,
                "left_s": left if type(left) in (int, float) else None,
            }
            queue = self._orders.pop(device_id, deque())
            return _encode({"t": "ack", "orders": [{"cook": name} for name in queue]})
        return _encode({"t": "error", "error": "unknown_type"})


# -- device side ----------------------------------------------------------------------


class MicrowaveApp:
    """The oven: idle, cooking (with time left) or done; recipes come from the server."""

    def __init__(self, *, status_interval: float = 30.0, speed: float = 1.0) -> None:
        #: Seconds between status reports (each also polls for orders).
        self.status_interval = status_interval
        #: Cooking seconds per real second (a demo knob).
        self.speed = speed
        #: idle, cooking or done.
        self.state = "idle"
        #: The recipe cooking or last cooked.
        self.recipe: Recipe | None = None
        #: Recipe names the server offers (after a ``list``).
        self.menu: list[str] = []
        #: Recipes fetched from the server, by name.
        self.cache: dict[str, Recipe] = {}
        self._link: AppLink | None = None
        self._ends_at = 0.0
        self._wanted: str | None = None
        self._wake = asyncio.Event()

    # -- the seam ---------------------------------------------------------------------

    async def run(self, link: AppLink) -> None:
        self._link = link
        next_report = 0.0
        while True:
            now = time.monotonic()
            if self.state == "cooking" and now >= self._ends_at:
                self.state = "done"
                log.info("done cooking %s", self.recipe.name if self.recipe else "-")
                self._report()
                next_report = now + self.status_interval
            elif now >= next_report:
                self._report()
                next_report = now + self.status_interval
            wake_at = next_report
            if self.state == "cooking":
                wake_at = min(wake_at, self._ends_at)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake_at - time.monotonic()))

    def on_connected(self) -> None:
        if self._link is None:
            return
        self._link.send(_encode({"t": "list"}))
        self._report()

    async def on_message(self, data: bytes) -> None:
        msg = _decode(data)
        if msg is None:
            log.info("ignored a malformed application message")
            return
        kind = msg["t"]
        if kind == "recipes" and isinstance(msg.get("names"), list):
            self.menu = [n for n in msg["names"] if isinstance(n, str)]
        elif kind == "recipe":
            try:
                recipe = Recipe.from_json(msg.get("recipe"))
            except ValueError:
                log.info("ignored a malformed recipe")
                return
            self.cache[recipe.name] = recipe
            if self._wanted == recipe.name:
                self._wanted = None
                self._start(recipe)
        elif kind == "ack":
            for order in msg.get("orders") or ():
                if isinstance(order, dict) and isinstance(order.get("cook"), str):
                    self.cook(order["cook"])
        elif kind == "cook" and isinstance(msg.get("name"), str):
            self.cook(msg["name"])
        elif kind == "error":
            log.info("server app: %s", str(msg.get("error"))[:64])
            self._wanted = None

    def status(self) -> dict[str, Any]:
        return {
            "app": "microwave",
            "state": self.state,
            "recipe": None if self.recipe is None else self.recipe.name,
            "left_s": self.left_s(),
            "menu": list(self.menu),
        }

    # -- the oven ---------------------------------------------------------------------

    def cook(self, name: str) -> None:
        """Start cooking ``name``: from the cache, else after fetching it from the server."""
        recipe = self.cache.get(name)
        if recipe is not None:
            self._start(recipe)
            return
        self._wanted = name
        if self._link is not None:
            self._link.send(_encode({"t": "get", "name": name}))

    def left_s(self) -> float | None:
        if self.state != "cooking":
            return None
        return round(max(0.0, self._ends_at - time.monotonic()) * self.speed, 1)

    def _start(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.state = "cooking"
        self._ends_at = time.monotonic() + recipe.seconds / self.speed
        log.info("cooking %s for %ds", recipe.name, recipe.seconds)
        self._report()
        self._wake.set()

    def _report(self) -> None:
        if self._link is None:
            return
        self._link.send(
            _encode(
                {
                    "t": "status",
                    "state": self.state,
                    "recipe": None if self.recipe is None else self.recipe.name,
                    "left_s": self.left_s(),
                }
            )
        )


__all__ = ["MicrowaveApp", "Recipe", "RecipeService", "load_recipes"]
