"""keyseed.protocol.pair
~~~~~~~~~~~~~~~~~~~~~~

Device-to-device pair keys (DESIGN.md section 2; docs/protocol.md, "Pair keys"), sans-I/O.

Theory of operation
-------------------
Two devices that each hold a key with the server obtain a key shared with each other through
it, where an admin policy allows that (unordered) pair. Everything travels as sealed pair
messages (501-506) on each device's own connection, so every hop is authenticated by that
device's channel; the server relays between the two connections.

* **Relay mode** (the scheme's way). The requester (the *initiator*) sends 501; the server
  draws the epoch's material ``M`` and the seed ``R`` of the next epoch, and sends both devices
  the same 502: pair ID, pair epoch, both identities and roles, ``M``, ``R``. The pair key is
  derived from ``M`` with the seed of the previous epoch as HKDF salt
  (:mod:`keyseed.crypto.pairkdf`), so each epoch's key chains to the seed the server handed out
  with the one before, as a device key chains to its R0. The server knows the pair key.
* **End-to-end mode.** The initiator's 501 carries an ephemeral X25519 half ``e_i``; the server
  hands it to the responder in a 502 that states whose it is (identities, roles, pair ID and
  epoch, sealed under the responder's channel: the server's tag); the responder answers 503
  with ``e_r``, which reaches the initiator the same way. The key is derived from the X25519
  secret, salted with a chain seed only the devices know, so the server never learns it.
  Against a server that lies actively while pairing this holds only with static pairing keys
  exchanged out of band, which this version does not have (docs/security.md, "Pair keys").

Each epoch gives one AEAD key and IV per direction (initiator to responder, and back); every
504 carries the pair ID, the epoch and its own sequence number, and a receiver accepts only a
sequence number above the last one it accepted under that key (a gap is a message the server
could not deliver; a duplicate, an older frame or a reflected one fails). A new epoch's first
frame retires the previous epoch's receive key.

This module holds the device's pair logic (:class:`DevicePairs`), the per-epoch channel
(:class:`PairChannel`) and the server's pair state and decisions (:class:`PairRecord` and the
``step_*`` functions). Drivers: :mod:`keyseed.device.pairs` and :mod:`keyseed.server.pairs`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..crypto import Aead, DecryptError, lp, make_nonce
from ..crypto.pairkdf import (
    PAIR_ID_LEN,
    PAIR_MATERIAL_LEN,
    PAIR_SEED_LEN,
    BadPublicKey,
    EphemeralKey,
    PairKeys,
    pair_keys,
    pair_transcript,
)
from .constants import MAX_APP_DATA, MAX_RECORDS_PER_KEY, VERSION
from .errors import (
    AuthenticationFailed,
    BadSequence,
    ErrorCode,
    KeyseedError,
    LocalProtocolError,
    MalformedMessage,
    Rehandshake,
)
from .events import Event
from .messages import (
    MAX_PAIRS,
    Message,
    PairAck,
    PairData,
    PairKey,
    PairRefused,
    PairRequest,
    PairSync,
    _dumps,
    loads_strict,
)

L_PAIR_AAD = "keyseed/1 pair aad"
#: Directions of a pair epoch: initiator to responder, and back.
I2R, R2I = "i2r", "r2i"
RELAY, E2E = "relay", "e2e"
MODES = (RELAY, E2E)

#: Frames one pair key seals per direction; then the pair must renew (as the channel).
PAIR_MAX_RECORDS = MAX_RECORDS_PER_KEY
#: Frames after which the sender asks for the next epoch by itself.
PAIR_RENEW_AT = 2**20

Entropy = Callable[[int], bytes]


class PairCause(enum.IntEnum):
    """The ``cause`` of a 505, on the wire. Why a request was refused stays in the audit log
    (like a 204 NG's cause): the device learns only that it was."""

    #: The request was refused (no allow-pair, a peer not registered, confirmed or live ...).
    REFUSED = 1
    #: The pair is over (deny-pair, either device revoked or re-enrolled): drop its keys.
    CLOSED = 2
    #: A 504 could not be delivered now (the peer is not connected to this server process).
    UNDELIVERED = 3
    #: A 504 or 503 named a pair or epoch that is not live.
    STALE = 4


class PairRole(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PairMessageReceived(Event):
    """Either core: a pair message (5xx) arrived on the connection, for the pair layer."""

    device_id: str
    epoch: int
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class PairEstablished(Event):
    """Device: a pair epoch's keys are installed."""

    peer: str
    pair_id: bytes
    epoch: int
    mode: str
    role: PairRole


@dataclass(frozen=True, slots=True, kw_only=True)
class PairDataReceived(Event):
    """Device: one application message from ``peer``, opened under the pair key."""

    peer: str
    pair_id: bytes
    epoch: int
    seq: int
    data: bytes

    def __repr__(self) -> str:
        return f"PairDataReceived(peer={self.peer!r}, epoch={self.epoch}, <{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class PairClosed(Event):
    """Device: the server refused or closed a pair, or could not deliver a 504 (``cause``)."""

    peer: str | None
    pair_id: bytes | None
    cause: PairCause


@dataclass(frozen=True, slots=True, kw_only=True)
class PairRejected(Event):
    """Device: a pair message was refused (replayed, tampered, unknown pair, bad half)."""

    peer: str | None
    code: ErrorCode
    reason: str


# -- the channel of one pair epoch ----------------------------------------------------------


def pair_aad(pair_id: bytes, epoch: int, direction: str, seq: int) -> bytes:
    return lp(L_PAIR_AAD, VERSION, pair_id, epoch, direction, seq)


class PairChannel:
    """Seals and opens one pair epoch's 504s, one key, IV and sequence per direction.

    Args:
        keys: the epoch's keys.
        pair_id, epoch: bound into every AAD.
        role: our role in this epoch (picks the sending direction).
        max_records: frames per key and direction.
    """

    def __init__(
        self,
        keys: PairKeys,
        *,
        pair_id: bytes,
        epoch: int,
        role: PairRole,
        max_records: int = PAIR_MAX_RECORDS,
    ) -> None:
        initiator = role is PairRole.INITIATOR
        self.pair_id = pair_id
        self.epoch = epoch
        # Our sending direction, its AEAD, IV and next sequence number.
        self._out_dir = I2R if initiator else R2I
        self._in_dir = R2I if initiator else I2R
        out_key, out_iv = (keys.i2r_key, keys.i2r_iv) if initiator else (keys.r2i_key, keys.r2i_iv)
        in_key, in_iv = (keys.r2i_key, keys.r2i_iv) if initiator else (keys.i2r_key, keys.i2r_iv)
        self._out, self._out_iv = Aead(out_key), out_iv
        self._in, self._in_iv = Aead(in_key), in_iv
        self.send_seq = 0
        # Highest sequence number accepted so far (-1: none yet).
        self.recv_seq = -1
        self._max = max_records

    def seal(self, data: bytes) -> PairData:
        """The next 504 carrying ``data``.

        Raises:
            Rehandshake: this key sealed its limit of frames (renew the pair first).
            LocalProtocolError: ``data`` is over 16 KiB.
        """
        if len(data) > MAX_APP_DATA:
            raise LocalProtocolError("pair data over 16 KiB")
        if self.send_seq >= self._max:
            raise Rehandshake("pair key usage limit reached; renew the pair")
        seq = self.send_seq
        ct = self._out.seal(
            make_nonce(self._out_iv, seq),
            data,
            pair_aad(self.pair_id, self.epoch, self._out_dir, seq),
        )
        self.send_seq += 1
        return PairData(pair_id=self.pair_id, epoch=self.epoch, seq=seq, ct=ct)

    def open(self, msg: PairData) -> bytes:
        """Open a 504 of this epoch.

        Raises:
            BadSequence: a sequence number not above the last one accepted (replay, reorder).
            AuthenticationFailed: the tag does not verify (tampered, reflected, other key).
        """
        if msg.seq <= self.recv_seq or msg.seq >= self._max:
            raise BadSequence("pair frame replayed, reordered or past the key's limit")
        try:
            data = self._in.open(
                make_nonce(self._in_iv, msg.seq),
                msg.ct,
                # The header as received: a frame moved to another pair or epoch fails.
                pair_aad(msg.pair_id, msg.epoch, self._in_dir, msg.seq),
            )
        except DecryptError:
            raise AuthenticationFailed("pair frame does not authenticate") from None
        self.recv_seq = msg.seq
        return data

    def __repr__(self) -> str:
        return f"PairChannel(epoch={self.epoch}, send_seq={self.send_seq})"


def derive_epoch_keys(msg: PairKey, salt: bytes, secret: bytes) -> PairKeys:
    """An epoch's keys from its 502: ``secret`` is the material (relay) or the X25519 secret."""
    th = pair_transcript(
        mode=msg.mode,
        pair_id=msg.pair_id,
        epoch=msg.epoch,
        initiator=msg.initiator,
        responder=msg.responder,
        e_i=msg.e_i or b"",
        e_r=msg.e_r or b"",
    )
    return pair_keys(secret, salt, th)


# -- the device side ------------------------------------------------------------------------


@dataclass(slots=True)
class _DevicePair:
    """What a device holds of one pair (memory only: a restart starts a new chain)."""

    peer: str
    pair_id: bytes
    mode: str
    epoch: int
    role: PairRole
    channel: PairChannel
    # The previous epoch's channel, receive only, until the peer's first frame of this one.
    prev: PairChannel | None
    # HKDF salt of the next epoch: the server's seed (relay) or the chain seed (e2e).
    next_salt: bytes
    # Our own X25519 half of this epoch, if we were its e2e responder (a 502 redelivered
    # after a lost 503 is answered with the same half).
    my_half: bytes | None = None


class DevicePairs:
    """A device's pairs. Inputs: :meth:`receive` (a pair message the core handed over),
    :meth:`request`, :meth:`send`, :meth:`sync`. Outputs: :meth:`messages_to_send` (for the
    core's ``send_pair``) and :meth:`events_received`. Never raises for bad input: it becomes
    a :class:`PairRejected` event.

    Args:
        device_id: this device.
        renew_at: frames after which the sender asks for the pair's next epoch by itself.
        max_records: frames per pair key and direction.
    """

    def __init__(
        self,
        device_id: str,
        *,
        renew_at: int = PAIR_RENEW_AT,
        max_records: int = PAIR_MAX_RECORDS,
    ) -> None:
        self.device_id = device_id
        self._renew_at = renew_at
        self._max = max_records
        # Pairs by peer, and the peer of each pair ID.
        self._pairs: dict[str, _DevicePair] = {}
        # Requests in flight by peer: (mode, our ephemeral key for e2e).
        self._requests: dict[str, tuple[str, EphemeralKey | None]] = {}
        self._out: list[Message] = []
        self._events: list[Event] = []

    # -- inputs ---------------------------------------------------------------------------

    def request(self, peer: str, mode: str = E2E) -> None:
        """501: ask for a pair key with ``peer``; the next epoch of the live pair if there is
        one in the same mode (chained), else a new pair.

        Raises:
            LocalProtocolError: ``peer`` is this device, or ``mode`` is unknown.
        """
        if peer == self.device_id:
            raise LocalProtocolError("a device does not pair with itself")
        if mode not in MODES:
            raise LocalProtocolError(f"unknown pair mode {mode!r}")
        held = self._pairs.get(peer)
        pair_id = held.pair_id if held is not None and held.mode == mode else None
        eph = EphemeralKey() if mode == E2E else None
        self._requests[peer] = (mode, eph)
        self._out.append(
            PairRequest(
                peer=peer, mode=mode, e=None if eph is None else eph.public, pair_id=pair_id
            )
        )

    def send(self, peer: str, data: bytes) -> None:
        """504: ``data`` for ``peer`` under the pair key.

        Raises:
            LocalProtocolError: no pair with ``peer``, or ``data`` over 16 KiB.
            Rehandshake: the pair key reached its limit (a renewal is already asked for).
        """
        pair = self._pairs.get(peer)
        if pair is None:
            raise LocalProtocolError("no pair key with this peer")
        self._out.append(pair.channel.seal(data))
        if pair.channel.send_seq == self._renew_at and peer not in self._requests:
            self.request(peer, pair.mode)

    def sync(self) -> None:
        """506: a new connection is open; name the pairs held (the server answers with the
        502s owed and a 505 for each pair that is over)."""
        held = tuple(p.pair_id for p in self._pairs.values())[:MAX_PAIRS]
        self._out.append(PairSync(held=held))

    def receive(self, msg: Message) -> None:
        """A pair message from the server. Never raises."""
        try:
            if isinstance(msg, PairKey):
                self._handle_502(msg)
            elif isinstance(msg, PairData):
                self._handle_504(msg)
            elif isinstance(msg, PairRefused):
                self._handle_505(msg)
            else:
                raise MalformedMessage(f"{msg.TYPE.value} is not for a device")
        except KeyseedError as exc:
            self._events.append(
                PairRejected(peer=self._peer_of(msg), code=exc.code, reason=str(exc))
            )

    def forget(self, peer: str) -> None:
        """Drop every key and request for ``peer``."""
        self._pairs.pop(peer, None)
        self._requests.pop(peer, None)

    # -- outputs --------------------------------------------------------------------------

    def messages_to_send(self) -> list[Message]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def pair_of(self, peer: str) -> tuple[bytes, int, str] | None:
        """(pair ID, epoch, mode) of the live pair with ``peer``, if any."""
        p = self._pairs.get(peer)
        return None if p is None else (p.pair_id, p.epoch, p.mode)

    @property
    def peers(self) -> list[str]:
        return sorted(self._pairs)

    # -- handlers -------------------------------------------------------------------------

    def _handle_502(self, msg: PairKey) -> None:
        if self.device_id == msg.initiator:
            role, peer = PairRole.INITIATOR, msg.responder
        elif self.device_id == msg.responder:
            role, peer = PairRole.RESPONDER, msg.initiator
        else:
            raise MalformedMessage("502 for a pair this device is not part of")
        held = self._pairs.get(peer)
        if held is not None and held.pair_id == msg.pair_id and held.epoch == msg.epoch:
            # A redelivery (our 503 was lost): take nothing new, acknowledge again.
            self._out.append(PairAck(pair_id=msg.pair_id, epoch=msg.epoch, e=held.my_half))
            return
        salt = b""
        if msg.chained:
            if held is None or held.pair_id != msg.pair_id or held.epoch != msg.epoch - 1:
                # The chain seed is gone (a restart, a missed epoch): start a new chain.
                self.forget(peer)
                self.request(peer, msg.mode)
                raise AuthenticationFailed("chained 502 without the previous epoch's seed")
            salt = held.next_salt
        my_half: bytes | None = None
        if msg.mode == RELAY:
            assert msg.material is not None and msg.seed is not None
            keys = derive_epoch_keys(msg, salt, msg.material)
            next_salt = msg.seed
            self._requests.pop(peer, None)
        else:
            assert msg.e_i is not None
            if role is PairRole.RESPONDER:
                if msg.e_r is not None:
                    raise MalformedMessage("502 to the responder carries the initiator's half only")
                eph = EphemeralKey()
                my_half = eph.public
                secret = self._exchange(eph, msg.e_i)
                msg = replace(msg, e_r=my_half)
            else:
                pending = self._requests.get(peer)
                if msg.e_r is None or pending is None or pending[1] is None:
                    raise MalformedMessage("502 to the initiator without a request or both halves")
                eph = pending[1]
                if eph.public != msg.e_i:
                    # The server did not relay our half as we sent it.
                    raise AuthenticationFailed("502 names another initiator half")
                secret = self._exchange(eph, msg.e_r)
                self._requests.pop(peer, None)
            keys = derive_epoch_keys(msg, salt, secret)
            next_salt = keys.chain
        channel = PairChannel(
            keys, pair_id=msg.pair_id, epoch=msg.epoch, role=role, max_records=self._max
        )
        prev = held.channel if held is not None and held.pair_id == msg.pair_id else None
        self._pairs[peer] = _DevicePair(
            peer=peer,
            pair_id=msg.pair_id,
            mode=msg.mode,
            epoch=msg.epoch,
            role=role,
            channel=channel,
            prev=prev,
            next_salt=next_salt,
            my_half=my_half,
        )
        self._out.append(PairAck(pair_id=msg.pair_id, epoch=msg.epoch, e=my_half))
        self._events.append(
            PairEstablished(
                peer=peer, pair_id=msg.pair_id, epoch=msg.epoch, mode=msg.mode, role=role
            )
        )

    @staticmethod
    def _exchange(eph: EphemeralKey, peer_half: bytes) -> bytes:
        try:
            return eph.exchange(peer_half)
        except BadPublicKey:
            raise AuthenticationFailed("unusable X25519 half") from None

    def _handle_504(self, msg: PairData) -> None:
        pair = self._by_id(msg.pair_id)
        if pair is None:
            raise AuthenticationFailed("504 of an unknown pair")
        if msg.epoch == pair.epoch:
            data = pair.channel.open(msg)
            pair.prev = None  # the peer is on this epoch: older frames open nothing more
        elif pair.prev is not None and msg.epoch == pair.prev.epoch:
            data = pair.prev.open(msg)
        else:
            raise AuthenticationFailed("504 under an epoch this device does not hold")
        self._events.append(
            PairDataReceived(
                peer=pair.peer, pair_id=msg.pair_id, epoch=msg.epoch, seq=msg.seq, data=data
            )
        )

    def _handle_505(self, msg: PairRefused) -> None:
        try:
            cause = PairCause(msg.cause)
        except ValueError:
            raise MalformedMessage("505 with an unknown cause") from None
        pair = self._by_id(msg.pair_id) if msg.pair_id is not None else None
        peer = msg.peer if msg.peer is not None else (pair.peer if pair is not None else None)
        if cause is PairCause.REFUSED and peer is not None:
            self._requests.pop(peer, None)
        elif cause is PairCause.CLOSED:
            if pair is not None:
                self.forget(pair.peer)
            elif peer is not None and (
                msg.pair_id is None
                or (peer in self._pairs and self._pairs[peer].pair_id == msg.pair_id)
            ):
                self.forget(peer)
        self._events.append(PairClosed(peer=peer, pair_id=msg.pair_id, cause=cause))

    def _by_id(self, pair_id: bytes) -> _DevicePair | None:
        for p in self._pairs.values():
            if p.pair_id == pair_id:
                return p
        return None

    def _peer_of(self, msg: Message) -> str | None:
        pair_id = getattr(msg, "pair_id", None)
        pair = self._by_id(pair_id) if isinstance(pair_id, bytes) else None
        return None if pair is None else pair.peer


# -- the server side ------------------------------------------------------------------------


class PairStatus(enum.Enum):
    #: 502s handed out; waiting for both 503s.
    OFFERED = "offered"
    #: Both devices took the epoch's keys.
    ESTABLISHED = "established"
    #: Over (deny-pair, a revocation, a re-enrolment): relays nothing more.
    CLOSED = "closed"


class PairError(KeyseedError):
    """A pair step refused; ``cause`` goes on the wire (505), ``detail`` to the audit log."""

    code = ErrorCode.UNEXPECTED_MESSAGE

    def __init__(self, cause: PairCause, detail: str) -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"pair {cause.name.lower()}: {detail}")


def pair_key_of(a: str, b: str) -> tuple[str, str]:
    """The unordered pair {a, b} as stored: (lower ID, higher ID)."""
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairRecord:
    """Everything the server keeps of one unordered pair (one row, sealed at rest).

    In relay mode ``material``, ``seed`` and ``prev_seed`` are enough to derive the pair key:
    the server is trusted with it (documented). In e2e mode the row holds public halves only.
    """

    lo: str
    hi: str
    pair_id: bytes
    mode: str
    #: Only grows, also across new chains of the same pair.
    epoch: int
    initiator: str
    responder: str
    #: Whether this epoch's key is salted with the previous epoch's seed.
    chained: bool
    status: PairStatus
    material: bytes | None = None
    seed: bytes | None = None
    prev_seed: bytes | None = None
    e_i: bytes | None = None
    e_r: bytes | None = None
    acked_i: bool = False
    acked_r: bool = False
    #: Compare-and-set version of the row.
    version: int = 0

    def __repr__(self) -> str:
        return (
            f"PairRecord({self.lo!r}, {self.hi!r}, epoch={self.epoch}, mode={self.mode}, "
            f"status={self.status.value})"
        )

    @property
    def live(self) -> bool:
        return self.status is not PairStatus.CLOSED

    def member(self, device_id: str) -> bool:
        return device_id in (self.lo, self.hi)

    def peer_of(self, device_id: str) -> str:
        return self.hi if device_id == self.lo else self.lo

    def with_(self, **changes: Any) -> PairRecord:
        return replace(self, version=self.version + 1, **changes)

    # -- serialisation (sealed at rest by the storage layer) -------------------------------

    def encode(self) -> bytes:
        d: dict[str, Any] = {
            "lo": self.lo,
            "hi": self.hi,
            "pair_id": self.pair_id,
            "mode": self.mode,
            "epoch": self.epoch,
            "initiator": self.initiator,
            "responder": self.responder,
            "chained": self.chained,
            "status": self.status.value,
            "acked_i": self.acked_i,
            "acked_r": self.acked_r,
            "version": self.version,
        }
        for name in ("material", "seed", "prev_seed", "e_i", "e_r"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        return _dumps(d)

    @classmethod
    def decode(cls, data: bytes) -> PairRecord:
        """Raises MalformedMessage for anything but a record this module wrote."""
        d = loads_strict(data)
        if type(d) is not dict:
            raise MalformedMessage("pair record is not a map")
        try:
            rec = cls(
                lo=_typed(d.pop("lo"), str),
                hi=_typed(d.pop("hi"), str),
                pair_id=_typed(d.pop("pair_id"), bytes),
                mode=_typed(d.pop("mode"), str),
                epoch=_typed(d.pop("epoch"), int),
                initiator=_typed(d.pop("initiator"), str),
                responder=_typed(d.pop("responder"), str),
                chained=_typed(d.pop("chained"), bool),
                status=PairStatus(d.pop("status")),
                acked_i=_typed(d.pop("acked_i"), bool),
                acked_r=_typed(d.pop("acked_r"), bool),
                version=_typed(d.pop("version"), int),
                **{
                    name: _typed(d.pop(name), bytes)
                    for name in ("material", "seed", "prev_seed", "e_i", "e_r")
                    if name in d
                },
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedMessage("pair record is damaged") from exc
        if d:
            raise MalformedMessage("pair record has unknown fields")
        if (
            rec.mode not in MODES
            or not rec.lo < rec.hi
            or {rec.initiator, rec.responder} != {rec.lo, rec.hi}
            or len(rec.pair_id) != PAIR_ID_LEN
            or rec.epoch < 1
        ):
            raise MalformedMessage("pair record is inconsistent")
        return rec


def _typed(value: object, t: type) -> Any:
    if type(value) is not t:
        raise TypeError("wrong type")
    return value


def step_request(
    req: PairRequest,
    requester: str,
    existing: PairRecord | None,
    *,
    entropy: Entropy = os.urandom,
) -> PairRecord:
    """501 admitted (policy and both devices already checked): the pair's next epoch.

    Chained (salted with the previous epoch's seed) when the request names the live pair,
    which is established in the same mode; otherwise a new chain with a fresh pair ID.

    Raises:
        PairError: REFUSED when a device names itself.
    """
    if requester == req.peer:
        raise PairError(PairCause.REFUSED, "a device does not pair with itself")
    lo, hi = pair_key_of(requester, req.peer)
    chained = (
        existing is not None
        and existing.status is PairStatus.ESTABLISHED
        and existing.mode == req.mode
        and req.pair_id is not None
        and req.pair_id == existing.pair_id
    )
    relay = req.mode == RELAY
    fields: dict[str, Any] = {
        "pair_id": existing.pair_id if chained and existing else entropy(PAIR_ID_LEN),
        "mode": req.mode,
        "epoch": (existing.epoch if existing else 0) + 1,
        "initiator": requester,
        "responder": req.peer,
        "chained": chained,
        "status": PairStatus.OFFERED,
        "material": entropy(PAIR_MATERIAL_LEN) if relay else None,
        "seed": entropy(PAIR_SEED_LEN) if relay else None,
        "prev_seed": existing.seed if chained and existing and relay else None,
        "e_i": None if relay else req.e,
        "e_r": None,
        "acked_i": False,
        "acked_r": False,
    }
    if existing is None:
        return PairRecord(lo=lo, hi=hi, version=1, **fields)
    return existing.with_(**fields)


def owed_key(rec: PairRecord, device_id: str) -> PairKey | None:
    """The 502 the server owes ``device_id`` in this state (None: nothing owed)."""
    if not rec.live:
        return None
    initiator = device_id == rec.initiator
    if (rec.acked_i if initiator else rec.acked_r) or not rec.member(device_id):
        return None
    common: dict[str, Any] = {
        "pair_id": rec.pair_id,
        "epoch": rec.epoch,
        "mode": rec.mode,
        "initiator": rec.initiator,
        "responder": rec.responder,
        "chained": rec.chained,
    }
    if rec.mode == RELAY:
        return PairKey(material=rec.material, seed=rec.seed, **common)
    if not initiator:
        return PairKey(e_i=rec.e_i, **common)
    if rec.e_r is None:
        return None  # the responder has not answered yet
    return PairKey(e_i=rec.e_i, e_r=rec.e_r, **common)


def step_ack(rec: PairRecord, device_id: str, ack: PairAck) -> PairRecord | None:
    """503 from ``device_id``: the new record, or None if it changes nothing (a duplicate).

    Raises:
        PairError: STALE for another pair or epoch, or an ack the state does not allow.
    """
    if not rec.live or ack.pair_id != rec.pair_id or ack.epoch != rec.epoch:
        raise PairError(PairCause.STALE, "503 for a pair epoch that is not live")
    if device_id == rec.initiator:
        if rec.acked_i:
            return None
        if owed_key(rec, device_id) is None:
            raise PairError(PairCause.STALE, "503 before the initiator's 502")
        if ack.e is not None:
            raise PairError(PairCause.STALE, "the initiator's 503 carries no half")
        changes: dict[str, Any] = {"acked_i": True}
    elif device_id == rec.responder:
        if rec.mode == E2E:
            if ack.e is None:
                raise PairError(PairCause.STALE, "the e2e responder's 503 carries its half")
            if rec.e_r is not None:
                return None if ack.e == rec.e_r else _raise_stale("another responder half")
        elif ack.e is not None:
            raise PairError(PairCause.STALE, "a relay 503 carries no half")
        if rec.acked_r:
            return None
        changes = {"acked_r": True}
        if rec.mode == E2E:
            changes["e_r"] = ack.e
    else:
        raise PairError(PairCause.STALE, "503 from a device outside the pair")
    new = rec.with_(**changes)
    if new.acked_i and new.acked_r:
        new = replace(new, status=PairStatus.ESTABLISHED)
    return new


def _raise_stale(detail: str) -> PairRecord | None:
    raise PairError(PairCause.STALE, detail)


def check_data(rec: PairRecord | None, device_id: str, msg: PairData) -> str:
    """504 from ``device_id``: the peer to relay it to.

    Raises:
        PairError: STALE for an unknown, closed or foreign pair, or an epoch not in use.
    """
    if rec is None or not rec.live or rec.pair_id != msg.pair_id or not rec.member(device_id):
        raise PairError(PairCause.STALE, "504 of a pair that is not live")
    if not (msg.epoch == rec.epoch or (rec.chained and msg.epoch == rec.epoch - 1)):
        raise PairError(PairCause.STALE, "504 under an epoch not in use")
    return rec.peer_of(device_id)


def close_record(rec: PairRecord) -> PairRecord:
    """The pair is over: nothing secret stays in the row."""
    return rec.with_(status=PairStatus.CLOSED, material=None, seed=None, prev_seed=None)


__all__ = [
    "E2E",
    "I2R",
    "L_PAIR_AAD",
    "MODES",
    "PAIR_MAX_RECORDS",
    "PAIR_RENEW_AT",
    "R2I",
    "RELAY",
    "DevicePairs",
    "PairCause",
    "PairChannel",
    "PairClosed",
    "PairDataReceived",
    "PairError",
    "PairEstablished",
    "PairMessageReceived",
    "PairRecord",
    "PairRejected",
    "PairRole",
    "PairStatus",
    "check_data",
    "close_record",
    "derive_epoch_keys",
    "owed_key",
    "pair_aad",
    "pair_key_of",
    "step_ack",
    "step_request",
]
