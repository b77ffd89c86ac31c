"""keyseed.server.pairs
~~~~~~~~~~~~~~~~~~~~~~

The server's side of pair keys (docs/protocol.md, "Pair keys"): the driver around the pure
steps of :mod:`keyseed.protocol.pair`, between two device connections.

* 501 from A: the admin policy (allow-pair A B) and both devices (registered, enrolled,
  confirmed, not revoked) are checked, the pair's next epoch is written (compare-and-set on
  the pair row, with its audit row), and the 502s it owes go out: on A's connection at once,
  to B through B's outbox.
* 503: the pair row records the acknowledgement (and, end-to-end, the responder's half, which
  then goes to the initiator); both acknowledged is "established" in the audit log.
* 504: relayed as it came to the peer's live connection, re-sealed on the peer's leg; a pair
  that is not live, or an epoch not in use, gets 505 STALE; an offline peer, 505 UNDELIVERED.
* 506: the 502s owed to the device, and 505 CLOSED for each pair it holds that is over.
* deny-pair, a revocation, a re-registration: the pair rows are closed in the same
  transaction as the audit rows, and both devices, if connected here, get 505 CLOSED.

Deliveries to another connection go through a per-device outbox drained by one task, never
under the sending connection's lock (two connections relaying to each other would otherwise
deadlock) and in order (a 502 before the 504s that depend on it).

Several processes (PostgreSQL): the pair rows are shared through the database. When the
peer's connection is not held here, the server publishes on the notify bus's pair channel
(:data:`~keyseed.storage.notify.PAIR`): ``sync`` for a 502 or a closed pair (the holder
recomputes what the device is owed from the database, as for a 506), ``data`` with the 504's
canonical body for pair data. A 504 whose body does not fit a notification (about 5.8 KiB)
gets 505 UNDELIVERED, as does any 504 when no other process can hold the peer (SQLite). A
lost notification costs a 502 nothing (it stays owed until the device's next 506) and a 504
its delivery, like an offline peer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, cast

from ..protocol.constants import DEVICE_ID_RE
from ..protocol.errors import KeyseedError
from ..protocol.events import AuditEntry
from ..protocol.messages import (
    Message,
    PairAck,
    PairData,
    PairRefused,
    PairRequest,
    PairSync,
    encode_body,
    loads_strict,
)
from ..protocol.pair import (
    E2E,
    PairCause,
    PairError,
    PairMessageReceived,
    PairRecord,
    PairStatus,
    check_data,
    owed_key,
    step_ack,
    step_request,
)
from ..protocol.server import ServerProtocol
from ..storage.notify import MAX_PAYLOAD, PAIR
from ..storage.repository import PairRow, PairStore, Store

if TYPE_CHECKING:
    from .device_channel import DeviceConnection
    from .hub import Hub
    from .runtime import Runtime

log = logging.getLogger("keyseed.server.pairs")

#: Compare-and-set attempts of one pair step before the request is refused as busy.
CAS_ATTEMPTS = 4
#: Messages waiting for one device's connection; the oldest go first beyond this.
OUTBOX = 1024


class PairService:
    """Pair keys for one server process (one per :class:`~keyseed.server.runtime.Runtime`)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # Per device ID: messages waiting for its connection, and the task sending them.
        self._outbox: dict[str, deque[Message]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}
        # The same for notifications to the process holding a device (in order).
        self._bus_out: dict[str, deque[str]] = {}
        self._bus_drains: dict[str, asyncio.Task[None]] = {}

    @property
    def store(self) -> PairStore:
        # The SQL store holds the pairs too (keyseed.storage.pairstore).
        return cast("PairStore", self.rt.store)

    # -- from a device connection (under its lock) -----------------------------------------

    async def on_message(self, conn: DeviceConnection, ev: PairMessageReceived) -> bool:
        """A pair message from ``conn``'s device. Returns whether ``conn``'s core has output.
        Never raises: a storage failure is logged and the message dropped."""
        msg, device_id = ev.message, ev.device_id
        try:
            if isinstance(msg, PairRequest):
                return await self._handle_501(conn, device_id, msg)
            if isinstance(msg, PairAck):
                return await self._handle_503(conn, device_id, msg)
            if isinstance(msg, PairData):
                return await self._handle_504(conn, device_id, msg)
            if isinstance(msg, PairSync):
                return await self._handle_506(conn, device_id, msg)
        except Exception:
            log.exception("pair step failed device=%s type=%d", device_id, msg.TYPE.value)
        return False

    async def _handle_501(self, conn: DeviceConnection, device_id: str, msg: PairRequest) -> bool:
        peer = msg.peer
        log.info("< 501 device=%s peer=%s mode=%s", device_id, peer, msg.mode)
        refusal = await self._refusal(device_id, peer)
        if refusal is not None:
            await self.rt.limited_audit(
                AuditEntry(
                    kind="pair_refused",
                    device_id=device_id,
                    epoch=0,
                    detail=f"peer={peer} mode={msg.mode}: {refusal}",
                )
            )
            log.info("> 505 REFUSED device=%s peer=%s (%s)", device_id, peer, refusal)
            return self._send_here(conn, PairRefused(peer=peer, cause=int(PairCause.REFUSED)))
        for _ in range(CAS_ATTEMPTS):
            existing = await self.store.load_pair(device_id, peer)
            new = step_request(msg, device_id, existing)
            audit = AuditEntry(
                kind="pair_requested",
                device_id=device_id,
                epoch=new.epoch,
                detail=f"peer={peer} mode={new.mode} chained={'yes' if new.chained else 'no'}",
            )
            if await self.store.put_pair(new, existing.version if existing else 0):
                break
        else:
            return self._send_here(conn, PairRefused(peer=peer, cause=int(PairCause.REFUSED)))
        # Rate-limited like every row a device alone can cause: a device repeating 501s
        # rewrites one pair row but must not grow the audit log without bound.
        await self.rt.limited_audit(audit)
        more = False
        for member in (device_id, peer):
            key = owed_key(new, member)
            if key is None:
                continue
            log.info("> 502 device=%s pair epoch=%d mode=%s", member, new.epoch, new.mode)
            if member == device_id:
                more |= self._send_here(conn, key)
            else:
                self.deliver(member, key)
        return more

    async def _handle_503(self, conn: DeviceConnection, device_id: str, msg: PairAck) -> bool:
        for _ in range(CAS_ATTEMPTS):
            rec = await self.store.load_pair_by_id(msg.pair_id)
            if rec is None or not rec.member(device_id):
                return self._stale(conn, None, msg.pair_id)
            try:
                new = step_ack(rec, device_id, msg)
            except PairError as exc:
                log.info("503 refused device=%s: %s", device_id, exc.detail)
                return self._stale(conn, rec.peer_of(device_id), msg.pair_id)
            if new is None:
                return False  # a duplicate
            audit: tuple[AuditEntry, ...] = ()
            if new.status is PairStatus.ESTABLISHED:
                audit = tuple(
                    AuditEntry(
                        kind="pair_established",
                        device_id=member,
                        epoch=new.epoch,
                        detail=f"peer={new.peer_of(member)} mode={new.mode} "
                        f"role={'initiator' if member == new.initiator else 'responder'}",
                    )
                    for member in (new.initiator, new.responder)
                )
            if await self.store.put_pair(new, rec.version, audit):
                break
        else:
            return False
        log.info("< 503 device=%s pair epoch=%d status=%s", device_id, new.epoch, new.status.value)
        if (
            new.mode == E2E
            and rec.e_r is None
            and new.e_r is not None
            and (key := owed_key(new, new.initiator)) is not None
        ):
            # End-to-end: the responder's half, just recorded, goes to the initiator.
            log.info("> 502 device=%s pair epoch=%d mode=%s", new.initiator, new.epoch, new.mode)
            self.deliver(new.initiator, key)
        return False

    async def _handle_504(self, conn: DeviceConnection, device_id: str, msg: PairData) -> bool:
        rec = await self.store.load_pair_by_id(msg.pair_id)
        try:
            peer = check_data(rec, device_id, msg)
        except PairError as exc:
            log.info("504 refused device=%s: %s", device_id, exc.detail)
            return self._stale(conn, None if rec is None else rec.peer_of(device_id), msg.pair_id)
        hub = self.rt.hub
        if hub.get(peer) is None and (not hub.bus.shared or not _fits(msg)):
            return self._send_here(
                conn,
                PairRefused(peer=peer, pair_id=msg.pair_id, cause=int(PairCause.UNDELIVERED)),
            )
        self.deliver(peer, msg)
        return False

    async def _handle_506(self, conn: DeviceConnection, device_id: str, msg: PairSync) -> bool:
        recs = await self.store.pairs_of(device_id)
        live = {r.pair_id: r for r in recs if r.live}
        more = False
        for held in msg.held:
            if held not in live:
                more |= self._send_here(
                    conn, PairRefused(pair_id=held, cause=int(PairCause.CLOSED))
                )
        for rec in live.values():
            key = owed_key(rec, device_id)
            if key is not None:
                log.info("> 502 device=%s pair epoch=%d (owed)", device_id, rec.epoch)
                more |= self._send_here(conn, key)
        return more

    async def _refusal(self, device_id: str, peer: str) -> str | None:
        """Why a 501 from ``device_id`` for ``peer`` is refused (None: admitted)."""
        if peer == device_id:
            return "a device does not pair with itself"
        if not await self.store.pair_allowed(device_id, peer):
            return "no allow-pair"
        for who in (device_id, peer):
            rec, _ = await self.rt.store.load(who)
            if rec is None:
                return f"{who} is not registered"
            if rec.revoked:
                return f"{who} is revoked"
            if rec.key is None:
                return f"{who} is not enrolled"
            if not rec.confirmed:
                return f"{who} is not confirmed"
        return None

    def _stale(self, conn: DeviceConnection, peer: str | None, pair_id: bytes) -> bool:
        return self._send_here(
            conn, PairRefused(peer=peer, pair_id=pair_id, cause=int(PairCause.STALE))
        )

    @staticmethod
    def _send_here(conn: DeviceConnection, msg: Message) -> bool:
        """``msg`` on the connection whose lock the caller holds."""
        try:
            conn.proto.send_pair(msg, time.monotonic())
        except KeyseedError as exc:
            log.info("pair message not sent: %s", type(exc).__name__)
            return False
        return True

    # -- to another connection --------------------------------------------------------------

    def deliver(self, device_id: str, msg: Message) -> None:
        """Queue ``msg`` for ``device_id``'s live connection in this process, or hand it to
        the process holding it (bus); dropped if no one holds it by then (502s stay owed in
        the pair row)."""
        hub = self.rt.hub
        if hub.get(device_id) is None and hub.bus.shared:
            self._publish(device_id, msg)
            return
        box = self._outbox.setdefault(device_id, deque(maxlen=OUTBOX))
        box.append(msg)
        task = self._drains.get(device_id)
        if task is None or task.done():
            self._drains[device_id] = asyncio.get_running_loop().create_task(self._drain(device_id))

    async def _drain(self, device_id: str) -> None:
        box = self._outbox.get(device_id)
        while box:
            msg = box.popleft()
            conn = self.rt.hub.get(device_id)
            if conn is None:
                continue

            def send(proto: ServerProtocol, now: float, msg: Message = msg) -> None:
                proto.send_pair(msg, now)

            try:
                await conn.call(send)
            except (ConnectionError, KeyseedError) as exc:
                log.info("pair message to %s not sent: %s", device_id, type(exc).__name__)
            except Exception:
                log.exception("pair delivery failed device=%s", device_id)
        self._outbox.pop(device_id, None)
        self._drains.pop(device_id, None)

    def _publish(self, device_id: str, msg: Message) -> None:
        """Wake the process holding ``device_id`` (in the background, in order)."""
        notice: dict[str, str] = {"device_id": device_id, "kind": "sync"}
        if isinstance(msg, PairData):
            if not _fits(msg):
                return
            notice = {"device_id": device_id, "kind": "data", "body": _b64(msg)}
        elif isinstance(msg, PairRefused) and msg.pair_id is not None:
            notice["closed"] = msg.pair_id.hex()
        box = self._bus_out.setdefault(device_id, deque(maxlen=OUTBOX))
        box.append(json.dumps(notice))
        task = self._bus_drains.get(device_id)
        if task is None or task.done():
            self._bus_drains[device_id] = asyncio.get_running_loop().create_task(
                self._drain_bus(device_id)
            )

    async def _drain_bus(self, device_id: str) -> None:
        box = self._bus_out.get(device_id)
        while box:
            payload = box.popleft()
            try:
                await self.rt.hub.bus.publish(PAIR, payload)
            except Exception:
                log.exception("pair notification failed device=%s", device_id)
        self._bus_out.pop(device_id, None)
        self._bus_drains.pop(device_id, None)

    # -- admin --------------------------------------------------------------------------------

    async def set_policy(self, a: str, b: str, *, allowed: bool) -> PairRecord | None:
        """allow-pair / deny-pair, audited on both devices; a deny closes the live pair and
        tells both devices (505 CLOSED). Returns the pair as closed, if it was live."""
        kind = "pair_allowed" if allowed else "pair_denied"
        audit = [
            AuditEntry(kind=kind, device_id=x, epoch=0, detail=f"peer={y}")
            for x, y in ((a, b), (b, a))
        ]
        closed = await self.store.set_pair_policy(a, b, allowed=allowed, audit=audit)
        if closed is not None:
            await self._closed([closed], "deny-pair")
        log.info("%s %s %s", kind, a, b)
        return closed

    async def close_device(self, device_id: str, reason: str) -> list[PairRecord]:
        """Every live pair of ``device_id`` is over (revoked, re-registered): closed and
        audited in one transaction, and the devices told."""
        recs = [r for r in await self.store.pairs_of(device_id) if r.live]
        if not recs:
            return []
        audit = [
            AuditEntry(
                kind="pair_closed",
                device_id=member,
                epoch=r.epoch,
                detail=f"peer={r.peer_of(member)}: {reason} {device_id}",
            )
            for r in recs
            for member in (r.lo, r.hi)
        ]
        closed = await self.store.close_pairs_of(device_id, audit)
        await self._closed(closed, reason, audited=True)
        return closed

    async def _closed(self, recs: list[PairRecord], reason: str, *, audited: bool = False) -> None:
        if not audited:
            await self.rt.store.add_audit(
                [
                    AuditEntry(
                        kind="pair_closed",
                        device_id=member,
                        epoch=r.epoch,
                        detail=f"peer={r.peer_of(member)}: {reason}",
                    )
                    for r in recs
                    for member in (r.lo, r.hi)
                ]
            )
        for r in recs:
            for member in (r.lo, r.hi):
                self.deliver(
                    member,
                    PairRefused(
                        peer=r.peer_of(member), pair_id=r.pair_id, cause=int(PairCause.CLOSED)
                    ),
                )

    async def list_pairs(self) -> list[PairRow]:
        return await self.store.list_pairs()


# -- the bus (several server processes) ------------------------------------------------------

#: Largest 504 body sent in a notification: its base64 and the JSON around it stay within
#: PostgreSQL's NOTIFY payload limit.
MAX_BUS_BODY = (MAX_PAYLOAD - 256) * 3 // 4


def _fits(msg: PairData) -> bool:
    return len(encode_body(msg)) <= MAX_BUS_BODY


def _b64(msg: PairData) -> str:
    return base64.b64encode(encode_body(msg)).decode("ascii")


class _Holder:
    """The holding side of pair notifications, per hub: one ordered queue per device."""

    def __init__(self) -> None:
        self.boxes: dict[str, deque[dict[str, str]]] = {}
        self.drains: dict[str, asyncio.Task[None]] = {}


_HOLDERS: weakref.WeakKeyDictionary[Hub, _Holder] = weakref.WeakKeyDictionary()


async def pair_notice(hub: Hub, store: Store, payload: str) -> None:
    """A pair notification from another process: act on it if ``hub`` holds the device.
    Parsed and queued at once, so notifications for one device are handled in order."""
    try:
        notice = json.loads(payload)
    except ValueError:
        notice = None
    if (
        not isinstance(notice, dict)
        or not all(isinstance(v, str) for v in notice.values())
        or not DEVICE_ID_RE.fullmatch(notice.get("device_id", ""))
        or notice.get("kind") not in ("sync", "data")
    ):
        log.warning("malformed pair notification")
        return
    device_id = notice["device_id"]
    if hub.get(device_id) is None:
        return
    holder = _HOLDERS.get(hub)
    if holder is None:
        holder = _HOLDERS[hub] = _Holder()
    holder.boxes.setdefault(device_id, deque(maxlen=OUTBOX)).append(notice)
    task = holder.drains.get(device_id)
    if task is None or task.done():
        holder.drains[device_id] = asyncio.get_running_loop().create_task(
            _hold(hub, cast("PairStore", store), holder, device_id)
        )


async def _hold(hub: Hub, store: PairStore, holder: _Holder, device_id: str) -> None:
    box = holder.boxes.get(device_id)
    while box:
        notice = box.popleft()
        try:
            msgs = await _notice_messages(store, device_id, notice)
        except Exception:
            log.exception("pair notification failed device=%s", device_id)
            continue
        conn = hub.get(device_id)
        if conn is None:
            continue
        for msg in msgs:

            def send(proto: ServerProtocol, now: float, msg: Message = msg) -> None:
                proto.send_pair(msg, now)

            try:
                await conn.call(send)
            except (ConnectionError, KeyseedError) as exc:
                log.info("pair message to %s not sent: %s", device_id, type(exc).__name__)
    holder.boxes.pop(device_id, None)
    holder.drains.pop(device_id, None)


async def _notice_messages(
    store: PairStore, device_id: str, notice: dict[str, str]
) -> list[Message]:
    """What a notification means for ``device_id``, checked against the database."""
    if notice["kind"] == "data":
        try:
            body = base64.b64decode(notice.get("body", ""), validate=True)
            msg = PairData.from_body(loads_strict(body))
        except (ValueError, KeyseedError):
            log.warning("malformed pair notification")
            return []
        rec = await store.load_pair_by_id(msg.pair_id)
        if rec is None or not rec.member(device_id):
            return []
        try:
            check_data(rec, rec.peer_of(device_id), msg)
        except PairError:
            return []
        return [msg]
    out: list[Message] = []
    recs = [r for r in await store.pairs_of(device_id) if r.live]
    closed = notice.get("closed")
    if closed is not None and closed not in {r.pair_id.hex() for r in recs}:
        try:
            pair_id = bytes.fromhex(closed)
            out.append(PairRefused(pair_id=pair_id, cause=int(PairCause.CLOSED)))
        except (ValueError, KeyseedError):
            log.warning("malformed pair notification")
    for rec in recs:
        key = owed_key(rec, device_id)
        if key is not None:
            out.append(key)
    return out


_SERVICES: weakref.WeakKeyDictionary[Runtime, PairService] = weakref.WeakKeyDictionary()


def pair_service(rt: Runtime) -> PairService:
    """The pair service of ``rt`` (made on first use)."""
    svc = _SERVICES.get(rt)
    if svc is None:
        svc = _SERVICES[rt] = PairService(rt)
    return svc


__all__ = ["PairService", "pair_service"]
