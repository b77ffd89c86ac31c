"""keyseed.server.apps
~~~~~~~~~~~~~~~~~~~~~~

The server function unit: the seam through which application data reaches server-side
handlers. Application data travels sealed under the device's current key (APP frames); the
device channel opens it and hands the plaintext to the :class:`ServerApp`, and seals whatever
the app answers back to the same device. The app never sees keys, frames or connections, only
an authenticated device ID and bytes; a device that is unconfirmed or past its hard key limit
never reaches it (the core refuses its data first).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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


__all__ = ["EchoApp", "NullApp", "ServerApp"]
