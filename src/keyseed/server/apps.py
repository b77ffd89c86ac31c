"""keyseed.server.apps
~~~~~~~~~~~~~~~~~~~~~~

The server function unit: the seam through which application data reaches server-side
handlers. Application data travels sealed under the device's current key (APP frames); the
device channel opens it and hands the plaintext to the :class:`ServerApp`, and seals whatever
the app answers back to the same device. The app never sees keys, frames or connections, only
an authenticated device ID and bytes; a device that is unconfirmed or past its hard key limit
never reaches it (the core refuses its data first).

:func:`make_app` builds the app ``keyseed server --app`` names; :func:`app_status` is what the
admin API shows of a device's app state (the microwave's last status report), never its data.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..apps.microwave import RecipeService
from ..protocol.constants import MAX_APP_DATA


@runtime_checkable
class ServerApp(Protocol):
    """An application served to devices (the microwave recipe service, say)."""

    async def handle(self, device_id: str, data: bytes) -> bytes | None:
        """One application message from ``device_id``.

        Returns:
            The reply to seal back to the device (at most 16 KiB), or None for no reply.
        """
        ...


class EchoApp:
    """Answers every message with itself, prefixed with ``b"echo:"`` (used by the tests)."""

    async def handle(self, device_id: str, data: bytes) -> bytes | None:
        return (b"echo:" + data)[:MAX_APP_DATA]


class NullApp:
    """No application: data is accepted and nothing is answered."""

    async def handle(self, device_id: str, data: bytes) -> bytes | None:
        return None


def make_app(name: str) -> ServerApp:
    """The server app named ``name`` (one of :data:`keyseed.server.config.APP_NAMES`).

    Raises:
        ValueError: an unknown name.
    """
    if name == "microwave":
        return RecipeService()
    if name == "echo":
        return EchoApp()
    if name == "none":
        return NullApp()
    raise ValueError(f"unknown server app {name!r}")


def app_name(app: ServerApp) -> str:
    """The name the admin API shows for ``app``."""
    if isinstance(app, RecipeService):
        return "microwave"
    if isinstance(app, EchoApp):
        return "echo"
    if isinstance(app, NullApp):
        return "none"
    return type(app).__name__


def app_status(app: ServerApp, device_id: str) -> dict[str, Any] | None:
    """What ``app`` keeps of ``device_id``'s state (the oven's last report: state, recipe,
    time left), or None when the app keeps nothing per device."""
    if not isinstance(app, RecipeService):
        return None
    status = app.statuses.get(device_id) or {}
    return {
        "state": status.get("state"),
        "recipe": status.get("recipe"),
        "left_s": status.get("left_s"),
    }


__all__ = ["EchoApp", "NullApp", "ServerApp", "app_name", "app_status", "make_app"]
