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

Several processes (DESIGN.md section 6): the device's connection may be held by another
process sharing the PostgreSQL database. After every admin change the process that made it
publishes the device ID on the bus (:mod:`keyseed.storage.notify`); every process that holds
a connection of that device reloads the record under the connection's lock and hands it over
(the same local path, :meth:`Hub.refresh`), sending the 403 if an order is outstanding and
this connection has not carried it yet. It then says so (``keyseed_order_sent``), so that the
ordering process can report the order as delivered. An arrival confirmation is a request and
an answer over the bus: the holder claims it at once, runs the 207 and publishes the outcome;
no claim within :data:`HOLDER_WAIT` means no process holds the device (offline). Nothing but
these wake-ups crosses processes outside the database; a lost one costs only latency, since
every process reloads the records of the devices it holds whenever it (re)starts listening.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.constants import DEVICE_ID_RE
from ..protocol.errors import KeyseedError
from ..protocol.events import PeerConfirmed
from ..protocol.records import DeviceRecord
from ..protocol.server import ServerProtocol
from ..storage.notify import CONFIRM, CONFIRM_RESULT, DEVICE, ORDER_SENT, PAIR, Bus, LocalBus
from ..storage.repository import Store
from .pairs import pair_notice

if TYPE_CHECKING:
    from .device_channel import DeviceConnection

log = logging.getLogger("keyseed.server.hub")

#: Seconds a process waits for the holder of a device's connection to answer (claim a
#: confirmation, report an order sent) before it takes the device as offline. A late answer
#: only makes the reply pessimistic: the order stays in the record either way.
HOLDER_WAIT = 2.0
#: Longest confirmation timeout a process accepts from another one.
MAX_CONFIRM_TIMEOUT = 300.0
_REQUEST_ID_RE = re.compile(r"[0-9a-f]{32}")


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
        # Where records are reloaded from (set by start()).
        self._store: Store | None = None
        # Wakes the other processes sharing the database.
        self._bus: Bus = LocalBus()
        # Connection -> the order epoch the hub has sent a 403 for on it.
        self._sent: dict[DeviceConnection, int] = {}
        # "device_id order_epoch" -> futures of processes' ORDER_SENT, awaited by deliver_order.
        self._order_waiters: dict[str, set[asyncio.Future[None]]] = {}
        # request_id -> (claimed, outcome) futures of a confirmation another process runs.
        self._confirm_waiters: dict[
            str, tuple[asyncio.Future[None], asyncio.Future[Confirmation]]
        ] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._conns

    @property
    def bus(self) -> Bus:
        return self._bus

    async def start(self, store: Store, bus: Bus) -> None:
        """Reload records from ``store`` and listen on ``bus`` from now on."""
        self._store, self._bus = store, bus
        await bus.start(self._on_notify, self._on_listen)

    async def stop(self) -> None:
        """Stop listening (the connections are closed by :meth:`close_all`)."""
        await self._bus.close()

    def attach(self, device_id: str, conn: DeviceConnection) -> None:
        """A connection proved the device's key; it is the device's connection from now on
        (an older one is fenced by the record's connection generation)."""
        self._conns[device_id] = conn

    def detach(self, device_id: str, conn: DeviceConnection) -> None:
        self._sent.pop(conn, None)
        if self._conns.get(device_id) is conn:
            del self._conns[device_id]

    def get(self, device_id: str) -> DeviceConnection | None:
        conn = self._conns.get(device_id)
        return None if conn is None or conn.closed else conn

    # -- records ----------------------------------------------------------------------------

    async def refresh(self, device_id: str) -> int | None:
        """The local path of every change: reload the device's record under its live
        connection's lock, hand it to the core (a revocation or newer connection fences it)
        and send the 403 of an outstanding order this connection has not carried yet.

        Returns:
            The outstanding order's epoch if this connection has carried its 403 (now or
            before), else None (no connection here, no order, or not sendable now).
        """
        conn = self.get(device_id)
        if conn is None:
            return None

        def update(
            proto: ServerProtocol, record: DeviceRecord | None, db_now: float, now: float
        ) -> int | None:
            if record is None:
                return None
            proto.update_record(record, db_now, now)
            order = record.order_epoch
            if order is None or order < record.epoch or not record.confirmed:
                return None
            if self._sent.get(conn) != order:
                proto.order_rekey(order, now)
                self._sent[conn] = order
            return order

        try:
            order = await conn.call_with_record(update)
        except (ConnectionError, KeyseedError) as exc:
            log.info("record not handed over device=%s: %s", device_id, type(exc).__name__)
            return None
        except Exception:
            log.exception("record reload failed device=%s", device_id)
            return None
        return None if conn.closed else order

    async def record_changed(self, record: DeviceRecord, db_now: float) -> None:
        """Hand a record the admin changed to the device's live connection, here or in
        another process. A revoked (or re-registered) record fences it: the core closes it."""
        await self.refresh(record.device_id)
        await self._bus.publish(DEVICE, record.device_id)

    async def deliver_order(self, record: DeviceRecord, db_now: float) -> bool:
        """403 over the live connection, for the order already stored in ``record``.

        Returns:
            Whether the 403 left now, from this process or another one (False: offline; it
            goes out at the next connection).
        """
        order_epoch = record.order_epoch
        if order_epoch is None:
            return False
        key = f"{record.device_id} {order_epoch}"
        waiter: asyncio.Future[None] | None = None
        if self._bus.shared and self.get(record.device_id) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._order_waiters.setdefault(key, set()).add(waiter)
        try:
            sent = await self.refresh(record.device_id)
            published = await self._bus.publish(DEVICE, record.device_id)
            if sent == order_epoch:
                return True
            if waiter is None or not published:
                return False
            try:
                await asyncio.wait_for(waiter, HOLDER_WAIT)
            except TimeoutError:
                return False
            return True
        finally:
            if waiter is not None:
                waiters = self._order_waiters.get(key, set())
                waiters.discard(waiter)
                if not waiters:
                    self._order_waiters.pop(key, None)

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
        """208 -> 207 with the device -> 209, by this process or the one holding the device."""
        if self.get(record.device_id) is not None or not self._bus.shared:
            return await self._confirm_here(record, timeout)
        loop = asyncio.get_running_loop()
        request_id = secrets.token_hex(16)
        claimed: asyncio.Future[None] = loop.create_future()
        outcome: asyncio.Future[Confirmation] = loop.create_future()
        self._confirm_waiters[request_id] = (claimed, outcome)
        offline = Confirmation(ok=False, rtt_ms=None, epoch=record.epoch, detail="offline")
        try:
            request = {"request_id": request_id, "device_id": record.device_id, "timeout": timeout}
            if not await self._bus.publish(CONFIRM, json.dumps(request)):
                return offline
            try:
                await asyncio.wait_for(asyncio.shield(claimed), min(HOLDER_WAIT, timeout))
            except TimeoutError:
                return offline
            try:
                # The holder waits ``timeout`` for the pong; its answer needs a moment more.
                return await asyncio.wait_for(outcome, timeout + HOLDER_WAIT)
            except TimeoutError:
                return Confirmation(ok=False, rtt_ms=None, epoch=record.epoch, detail="timeout")
        finally:
            self._confirm_waiters.pop(request_id, None)

    async def _confirm_here(self, record: DeviceRecord, timeout: float) -> Confirmation:
        """208 -> 207 over this process's connection -> 209."""
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

    # -- notifications ----------------------------------------------------------------------

    async def _on_listen(self) -> None:
        """(Re)listening: changes published meanwhile were missed; reload what we hold."""
        for device_id in list(self._conns):
            await self.refresh(device_id)

    async def _on_notify(self, channel: str, payload: str) -> None:
        if channel == PAIR:
            if self._store is not None:
                # Pair traffic for a device held here (keyseed.server.pairs).
                await pair_notice(self, self._store, payload)
            return
        if channel == DEVICE:
            if not DEVICE_ID_RE.fullmatch(payload) or self.get(payload) is None:
                return
            order = await self.refresh(payload)
            if order is not None:
                body = {"device_id": payload, "order_epoch": order}
                await self._bus.publish(ORDER_SENT, json.dumps(body))
            return
        try:
            msg = json.loads(payload)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            log.warning("malformed notification on %s", channel)
            return
        if channel == ORDER_SENT:
            key = f"{msg.get('device_id')} {msg.get('order_epoch')}"
            for fut in self._order_waiters.get(key, ()):
                if not fut.done():
                    fut.set_result(None)
        elif channel == CONFIRM:
            await self._confirm_for_other(msg)
        elif channel == CONFIRM_RESULT:
            self._confirm_answered(msg)

    async def _confirm_for_other(self, msg: dict[str, Any]) -> None:
        """Another process asked for a 207 with a device: claim it if we hold the device."""
        request_id, device_id, timeout = (
            msg.get("request_id"),
            msg.get("device_id"),
            msg.get("timeout"),
        )
        if (
            not isinstance(request_id, str)
            or not _REQUEST_ID_RE.fullmatch(request_id)
            or not isinstance(device_id, str)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_CONFIRM_TIMEOUT
            or self.get(device_id) is None
            or self._store is None
        ):
            return
        await self._bus.publish(
            CONFIRM_RESULT, json.dumps({"request_id": request_id, "state": "claimed"})
        )
        record, _ = await self._store.load(device_id)
        if record is None:
            result = Confirmation(ok=False, rtt_ms=None, epoch=0, detail="offline")
        else:
            result = await self._confirm_here(record, float(timeout))
        rtt_us = None if result.rtt_ms is None else round(result.rtt_ms * 1000)
        body = {
            "request_id": request_id,
            "state": "done",
            "ok": result.ok,
            "rtt_us": rtt_us,
            "epoch": result.epoch,
            "detail": result.detail,
        }
        await self._bus.publish(CONFIRM_RESULT, json.dumps(body))

    def _confirm_answered(self, msg: dict[str, Any]) -> None:
        request_id = msg.get("request_id")
        waiting = self._confirm_waiters.get(request_id) if isinstance(request_id, str) else None
        if waiting is None:
            return
        claimed, outcome = waiting
        if not claimed.done():
            claimed.set_result(None)
        if msg.get("state") != "done" or outcome.done():
            return
        ok, rtt_us, epoch, detail = (
            msg.get("ok"),
            msg.get("rtt_us"),
            msg.get("epoch"),
            msg.get("detail"),
        )
        if (
            not isinstance(ok, bool)
            or not isinstance(epoch, int)
            or not isinstance(detail, str)
            or not (rtt_us is None or isinstance(rtt_us, int))
            or ok != (rtt_us is not None)
        ):
            log.warning("malformed confirmation answer")
            return
        rtt_ms = None if rtt_us is None else rtt_us / 1000
        outcome.set_result(Confirmation(ok=ok, rtt_ms=rtt_ms, epoch=epoch, detail=detail))

    async def close_all(self) -> None:
        """Close every live connection (shutdown)."""
        for conn in list(self._conns.values()):
            await conn.close_now()


__all__ = ["HOLDER_WAIT", "Confirmation", "Hub"]
