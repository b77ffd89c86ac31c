"""keyseed.apps.base
~~~~~~~~~~~~~~~~~

The device app seam: the scheme's device control unit talks to its server only through an
:class:`AppLink` the agent hands it. Everything sent through the link travels as APP frames
sealed under the device's current key; while the device is offline or rekeying, messages wait
in a bounded queue, and the oldest are dropped first if it overflows (an app that needs
delivery re-sends its state, as the microwave does with its status reports).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class AppLink(Protocol):
    """What the device agent offers its app."""

    @property
    def connected(self) -> bool:
        """Whether the device has an open, authenticated connection right now."""
        ...

    def send(self, data: bytes) -> None:
        """Queue ``data`` (at most 16 KiB) for the server, sealed under the current key."""
        ...


@runtime_checkable
class DeviceApp(Protocol):
    """A device application (the microwave oven, say)."""

    async def run(self, link: AppLink) -> None:
        """The app's own life (timers, periodic reports); cancelled when the device stops."""
        ...

    async def on_message(self, data: bytes) -> None:
        """One application message from the server (already authenticated and opened)."""
        ...

    def on_connected(self) -> None:
        """A connection is open (its handshake authenticated): report state, ask for orders."""
        ...

    def status(self) -> dict[str, Any]:
        """What the local status endpoint shows of the app (never a secret)."""
        ...


__all__ = ["AppLink", "DeviceApp"]
