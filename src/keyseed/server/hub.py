"""keyseed.server.hub
~~~~~~~~~~~~~~~~~~~~~

The devices connected to this process, by device ID, and the admin actions that reach a live
connection: a rekey order by proxy (403), an arrival confirmation (207 for 208/209), a
newer record (a confirmation or revocation by the admin), and application data the server
app pushes (:meth:`Hub.send_app`, a cooking order of the microwave demo).

An order is written durably *before* the live connection is told (fig. 4, 401/402): if the
device is offline, or the connection drops before the 403 leaves, the order waits in its
record and goes out in the next connection's handshake. Every admin change of a record is
handed to the live connection (:meth:`Hub.record_changed`), so that the core compares and sets
against the newest version and a revocation fences the connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol.errors import KeyseedError
from ..protocol.events import PeerConfirmed
from ..protocol.records import DeviceRecord
from ..protocol.server import ServerProtocol

if TYPE_CHECKING:
    from .device_channel import DeviceConnection

log = logging.getLogger("keyseed.server.hub")


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirmation:
    """The result of an arrival confirmation (209)."""

    ok: bool
    #: Round trip in milliseconds (None unless ok).
    rtt_ms: float | None
    #: Epoch of the key the pong came back under (the stored epoch if it did not).
    epoch: int
    #: Why it failed: "offline", "timeout", "closed", "not_open".
    detail: str = ""


class Hub:
    """Live device connections of this process."""

    def __init__(self) -> None:
        # device ID -> the newest connection that proved the device's key.
        self._conns: dict[str, DeviceConnection] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._conns

    def attach(self, device_id: str, conn: DeviceConnection) -> None:
        """A connection proved the device's key; it is the device's connection from now on
        (an older one is fenced by the record's connection generation)."""
        self._conns[device_id] = conn

    def detach(self, device_id: str, conn: DeviceConnection) -> None:
        if self._conns.get(device_id) is conn:
            del self._conns[device_id]

    def get(self, device_id: str) -> DeviceConnection | None:
        conn = self._conns.get(device_id)
        return None if conn is None or conn.closed else conn

    async def record_changed(self, record: DeviceRecord, db_now: float) -> None:
        """Hand a record the admin changed to the device's live connection, if any. A
        revoked (or re-registered) record fences it: the core closes it."""
        conn = self.get(record.device_id)
        if conn is None:
            return

        def update(proto: ServerProtocol, now: float) -> None:
            proto.update_record(record, db_now, now)

        with contextlib.suppress(ConnectionError, KeyseedError):
            await conn.call(update)

    async def deliver_order(self, record: DeviceRecord, db_now: float) -> bool:
        """403 over the live connection, for the order already stored in ``record``.

        Returns:
            Whether the 403 left now (False: offline; it goes out at the next connection).
        """
        order_epoch = record.order_epoch
        conn = self.get(record.device_id)
        if conn is None or order_epoch is None:
            return False

        def send_403(proto: ServerProtocol, now: float) -> None:
            proto.update_record(record, db_now, now)
            proto.order_rekey(order_epoch, now)

        try:
            await conn.call(send_403)
        except (ConnectionError, KeyseedError) as exc:
            log.info("403 not delivered live device=%s: %s", record.device_id, exc)
            return False
        return not conn.closed

    async def send_app(self, device_id: str, data: bytes) -> bool:
        """Application data to ``device_id`` over its live connection, sealed under its
        current key. The core refuses it for an unconfirmed device, a key past its hard limit
        or a connection not open; nothing is queued here (the app keeps what must wait).

        Returns:
            Whether the APP frame left now.
        """
        conn = self.get(device_id)
        if conn is None:
            return False

        def send(proto: ServerProtocol, now: float) -> None:
            proto.send_app(data, now)

        try:
            await conn.call(send)
        except (ConnectionError, KeyseedError) as exc:
            log.info("app data not sent device=%s: %s", device_id, type(exc).__name__)
            return False
        return not conn.closed

    async def confirm(self, record: DeviceRecord, timeout: float) -> Confirmation:
        """208 -> 207 with the device -> 209."""
        conn = self.get(record.device_id)
        if conn is None:
            return Confirmation(ok=False, rtt_ms=None, epoch=record.epoch, detail="offline")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PeerConfirmed] = loop.create_future()

        def ping(proto: ServerProtocol, now: float) -> None:
            conn.pings[proto.ping(now)] = fut

        started = time.monotonic()
        try:
            await conn.call(ping)
        except (ConnectionError, KeyseedError):
            return Confirmation(ok=False, rtt_ms=None, epoch=record.epoch, detail="not_open")
        try:
            pong = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return Confirmation(ok=False, rtt_ms=None, epoch=record.epoch, detail="timeout")
        except ConnectionError:
            return Confirmation(ok=False, rtt_ms=None, epoch=record.epoch, detail="closed")
        finally:
            for token, f in list(conn.pings.items()):
                if f is fut:
                    del conn.pings[token]
        rtt = pong.rtt if pong.rtt > 0 else time.monotonic() - started
        return Confirmation(ok=True, rtt_ms=round(rtt * 1000, 3), epoch=pong.epoch)

    async def close_all(self) -> None:
        """Close every live connection (shutdown)."""
        for conn in list(self._conns.values()):
            await conn.close_now()


__all__ = ["Confirmation", "Hub"]
