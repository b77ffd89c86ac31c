"""keyseed.protocol.messages
~~~~~~~~~~~~~~~~~~~~~~~~~~~

Every message of the scheme, one frozen dataclass each, and the only place CBOR is touched.

A frame is one WebSocket binary message holding one canonical CBOR array (RFC 8949 section
4.2.1, "core deterministic encoding"):

* plain:  ``[version, type, body]``
* sealed: ``[version, type, epoch, seq, ciphertext]``, the body sealed by the channel
  (:mod:`keyseed.protocol.channel`).

A body is a CBOR map with text keys. The decoder is strict: a size cap checked before parsing,
exact types (a bool is not an int, no floats, no tags), exact or bounded lengths, no unknown or
missing keys, no duplicate keys, and the input must be the canonical encoding of what it
decodes to, so every accepted frame re-encodes byte for byte. Any violation raises
:class:`~keyseed.protocol.errors.MalformedMessage` (or a sibling with its own code); nothing
else escapes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import cbor2

from .constants import (
    DEVICE_ID_RE,
    KEY_ID_LEN,
    MAC_LEN,
    MAX_APP_DATA,
    MAX_CANDIDATES,
    MAX_FRAME,
    MAX_P,
    NONCE_LEN,
    S_LEN,
    SEED_ID_LEN,
    SEED_LEN,
    VERSION,
)
from .errors import FrameTooLarge, MalformedMessage, UnsupportedVersion


class MsgType(enum.IntEnum):
    """Message numbers: the scheme's own (2xx, 3xx, 4xx) and the channel's (1xx)."""

    #: Device -> server: opens a connection (device ID, Nd, proofs of the keys it holds).
    HELLO = 100
    #: Server -> device: Ns, the key the server holds as current, and a MAC under it.
    HELLO_ACK = 101
    #: Device -> server: MAC under the key the device will use; completes the handshake.
    FIN = 102
    #: Either way: closes the connection with an error code. Unauthenticated: only a hint.
    CLOSE = 103
    #: Device -> server: 206 stored durably (rule 3: only this clears the owed 206).
    ACK_206 = 110
    #: Device -> server: a keyed device without a usable seed asks for one.
    SEED_REQUEST = 111
    #: Either way: application data under the current key.
    APP = 120
    #: Setup PC -> server: register a device (fig. 2).
    M201 = 201
    #: Server -> setup PC: registration result; an enrolment window is open.
    M202 = 202
    #: Device -> server: key exchange request carrying S and P (S01-S07).
    M203 = 203
    #: Server -> device: OK with a MAC under the new key, or NG (S21-S26).
    M204 = 204
    #: Device -> server: encrypted communication request under the new key (key confirmation).
    M205 = 205
    #: Server -> device: the next seed R0, its seed_id, a one-time server key, the policy.
    M206 = 206
    #: Either way: arrival confirmation (encrypted ping/pong).
    M207 = 207
    #: Setup PC -> server: confirm that a device is reachable.
    M208 = 208
    #: Server -> setup PC: the confirmation's result.
    M209 = 209
    #: Setup PC -> device: rekey order at the device (fig. 3).
    M301 = 301
    #: Device -> setup PC: order accepted.
    M302 = 302
    #: Setup PC -> server: rekey order by proxy (fig. 4).
    M401 = 401
    #: Server -> setup PC: order queued.
    M402 = 402
    #: Server -> device: rekey order, sealed.
    M403 = 403
    #: Device -> server: order accepted, sealed.
    M404 = 404
    #: Device -> server: a pair key with a peer (relay or end-to-end), or the next epoch of one.
    PAIR_REQUEST = 501
    #: Server -> device: a pair epoch, with its material (relay) or vouched X25519 halves (e2e).
    PAIR_KEY = 502
    #: Device -> server: a 502 was taken; in the end-to-end mode the responder's half.
    PAIR_ACK = 503
    #: Either way: application data sealed under the pair key, relayed by the server.
    PAIR_DATA = 504
    #: Server -> device: a pair request refused, a pair closed, or a 504 not delivered.
    PAIR_REFUSED = 505
    #: Device -> server: the pairs it holds, once per connection (owed 502s, dead pairs).
    PAIR_SYNC = 506


# -- field specifications --------------------------------------------------------------


class Spec:
    """How one field travels. ``check`` returns the value or raises MalformedMessage."""

    optional = False

    def check(self, name: str, value: object) -> object:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Bytes(Spec):
    def __init__(self, exact: int | None = None, max_len: int | None = None) -> None:
        self.exact, self.max_len = exact, max_len

    def check(self, name: str, value: object) -> object:
        if type(value) is not bytes:
            raise MalformedMessage(f"{name}: expected bytes")
        if self.exact is not None and len(value) != self.exact:
            raise MalformedMessage(f"{name}: expected {self.exact} bytes")
        if self.max_len is not None and len(value) > self.max_len:
            raise MalformedMessage(f"{name}: longer than {self.max_len} bytes")
        return value

    def describe(self) -> str:
        if self.exact is not None:
            return f"bstr .size {self.exact}"
        return f"bstr .size (0..{self.max_len})"


class Uint(Spec):
    def __init__(self, max_value: int = 2**63 - 1) -> None:
        self.max_value = max_value

    def check(self, name: str, value: object) -> object:
        if type(value) is not int or not 0 <= value <= self.max_value:
            raise MalformedMessage(f"{name}: expected an unsigned integer <= {self.max_value}")
        return value

    def describe(self) -> str:
        return f"uint .le {self.max_value}"


class Text(Spec):
    #: Values remembered as matching, per spec (device IDs and suite names recur on every
    #: message of a connection); cleared when full.
    SEEN_MAX = 1024

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self._seen: set[str] = set()

    def check(self, name: str, value: object) -> object:
        if type(value) is not str:
            raise MalformedMessage(f"{name}: does not match {self.pattern.pattern}")
        if value in self._seen:
            return value
        if not self.pattern.fullmatch(value):
            # The value itself is never echoed: it may be hostile (REVIEW F15).
            raise MalformedMessage(f"{name}: does not match {self.pattern.pattern}")
        if len(self._seen) >= self.SEEN_MAX:
            self._seen.clear()
        self._seen.add(value)
        return value

    def describe(self) -> str:
        return f"tstr .regexp {self.pattern.pattern!r}"


class Bool(Spec):
    def check(self, name: str, value: object) -> object:
        if type(value) is not bool:
            raise MalformedMessage(f"{name}: expected a bool")
        return value

    def describe(self) -> str:
        return "bool"


class Opt(Spec):
    """Optional: the key may be absent, or null. Encoded as absent."""

    optional = True

    def __init__(self, inner: Spec) -> None:
        self.inner = inner

    def check(self, name: str, value: object) -> object:
        return None if value is None else self.inner.check(name, value)

    def describe(self) -> str:
        return f"? {self.inner.describe()}"


class ListOf(Spec):
    def __init__(self, inner: Spec, max_items: int) -> None:
        self.inner, self.max_items = inner, max_items

    def check(self, name: str, value: object) -> object:
        if type(value) is not list or len(value) > self.max_items:
            raise MalformedMessage(f"{name}: expected a list of at most {self.max_items}")
        return tuple(self.inner.check(name, v) for v in value)

    def describe(self) -> str:
        return f"[* {self.inner.describe()}] (at most {self.max_items})"


DEVICE_ID = Text(DEVICE_ID_RE)
SUITE_NAME = Text(re.compile(r"[a-z0-9-]{1,32}"))
SETUP_CODE = Text(re.compile(r"[0-9]{8,32}"))
EPOCH = Uint(2**32 - 1)
KEY_ID = Bytes(KEY_ID_LEN)
MAC = Bytes(MAC_LEN)
NONCE = Bytes(NONCE_LEN)
SEED_ID = Bytes(SEED_ID_LEN)


# -- the messages ----------------------------------------------------------------------

M = TypeVar("M", bound="Message")

# A field missing from a body (None would be a null, which is refused).
_ABSENT = object()
# Fills a frozen message's fields in from_body.
_setattr = object.__setattr__


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of all messages. Subclasses set ``TYPE`` and ``SPEC`` and add fields."""

    TYPE: ClassVar[MsgType]
    #: Wire key -> Spec, one per dataclass field, same names.
    SPEC: ClassVar[dict[str, Spec]]

    def __post_init__(self) -> None:
        # Validate on construction too: a message that cannot be decoded cannot be built.
        for name, spec in self.SPEC.items():
            value = getattr(self, name)
            if value is None and spec.optional:
                continue
            checked = spec.check(name, list(value) if isinstance(value, tuple) else value)
            if isinstance(checked, tuple):
                object.__setattr__(self, name, checked)
        self._validate()

    def _validate(self) -> None:
        """Rules across fields, once every field is valid on its own (subclasses add them)."""

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.SPEC:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_body(cls: type[M], body: object) -> M:
        """Build a message from a decoded CBOR body, strictly.

        Raises:
            MalformedMessage: wrong type, unknown or missing key, wrong field shape.
        """
        if type(body) is not dict:
            raise MalformedMessage(f"{cls.TYPE.value}: body is not a map")
        spec_map = cls.SPEC
        if not body.keys() <= spec_map.keys():
            raise MalformedMessage(f"{cls.TYPE.value}: unknown field")
        # Every field is checked here, once; the instance is then filled in directly instead
        # of through __init__, whose __post_init__ would check every field a second time.
        msg = object.__new__(cls)
        for name, spec in spec_map.items():
            value = body.get(name, _ABSENT)
            if value is _ABSENT:
                if not spec.optional:
                    raise MalformedMessage(f"{cls.TYPE.value}: missing field {name}")
                value = None
            elif value is None:
                # Absent is the only encoding of "no value": null is not canonical.
                raise MalformedMessage(f"{cls.TYPE.value}: {name} is null")
            else:
                value = spec.check(name, value)
            _setattr(msg, name, value)
        msg._validate()
        return msg

    def encode(self) -> bytes:
        """The plain frame ``[version, type, body]``."""
        return _plain_prefix(self.TYPE) + encode_body(self)

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        """Decode a plain frame that must hold this message type."""
        frame = decode_frame(data)
        if not isinstance(frame, PlainFrame) or frame.type != cls.TYPE:
            raise MalformedMessage(f"expected a plain {cls.TYPE.value} frame")
        return cls.from_body(frame.body)

    def __repr__(self) -> str:
        # Secrets never reach reprs: byte fields show only their length.
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bytes):
                parts.append(f"{f.name}=<{len(v)} bytes>")
            elif isinstance(v, tuple):
                parts.append(f"{f.name}=<{len(v)} items>")
            else:
                parts.append(f"{f.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Hello(Message):
    """Opens a connection. Proofs cover Nd only, so a HELLO can be replayed: the server fences
    nothing until FIN, which covers Ns too, and the only change a HELLO can make (rule 1's
    cancellation) discards an exchange the device has already given up. A keyless device
    names its enrolment candidates."""

    TYPE = MsgType.HELLO
    SPEC: ClassVar[dict[str, Spec]] = {
        "device_id": DEVICE_ID,
        "suite": SUITE_NAME,
        "nd": NONCE,
        "cur_id": Opt(KEY_ID),
        "cur_proof": Opt(MAC),
        "pend_id": Opt(KEY_ID),
        "pend_proof": Opt(MAC),
        "candidates": Opt(ListOf(KEY_ID, MAX_CANDIDATES)),
        "tls_reduced": Opt(Bool()),
    }
    device_id: str
    suite: str
    nd: bytes
    cur_id: bytes | None = None
    cur_proof: bytes | None = None
    pend_id: bytes | None = None
    pend_proof: bytes | None = None
    candidates: tuple[bytes, ...] | None = None
    #: Profiles: the device asks for the TLS reduction on this connection (only when true).
    tls_reduced: bool | None = None

    def _validate(self) -> None:
        if (self.cur_id is None) != (self.cur_proof is None) or (self.pend_id is None) != (
            self.pend_proof is None
        ):
            raise MalformedMessage("100: a key id needs its proof")
        if self.pend_id is not None and self.cur_id is None:
            raise MalformedMessage("100: a pending key without a current key")
        if self.cur_id is not None and self.candidates:
            raise MalformedMessage("100: candidates are for keyless devices only")
        if self.tls_reduced is False:
            raise MalformedMessage("100: tls_reduced is sent only when true")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class HelloAck(Message):
    """The server's nonce, its epoch, and (when it holds a key the device named) that key's id
    with a MAC under it over the whole transcript: the authenticated outcome of rule 1."""

    TYPE = MsgType.HELLO_ACK
    SPEC: ClassVar[dict[str, Spec]] = {
        "ns": NONCE,
        "epoch": EPOCH,
        "key_id": Opt(KEY_ID),
        "mac": Opt(MAC),
        "tls_reduced": Opt(Bool()),
    }
    ns: bytes
    epoch: int
    key_id: bytes | None = None
    mac: bytes | None = None
    #: Profiles: the server grants the TLS reduction on this connection (only when true; the
    #: FIN MAC covers it).
    tls_reduced: bool | None = None

    def _validate(self) -> None:
        if (self.key_id is None) != (self.mac is None):
            raise MalformedMessage("101: a key id needs its MAC")
        if self.tls_reduced is not None and (self.tls_reduced is False or self.key_id is None):
            raise MalformedMessage("101: tls_reduced is sent only when true, and only keyed")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Fin(Message):
    TYPE = MsgType.FIN
    SPEC: ClassVar[dict[str, Spec]] = {"mac": MAC}
    mac: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Close(Message):
    TYPE = MsgType.CLOSE
    SPEC: ClassVar[dict[str, Spec]] = {"code": Uint(255)}
    code: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Ack206(Message):
    TYPE = MsgType.ACK_206
    SPEC: ClassVar[dict[str, Spec]] = {"epoch": EPOCH, "seed_id": SEED_ID}
    epoch: int
    seed_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SeedRequest(Message):
    TYPE = MsgType.SEED_REQUEST
    SPEC: ClassVar[dict[str, Spec]] = {"epoch": EPOCH}
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class App(Message):
    TYPE = MsgType.APP
    SPEC: ClassVar[dict[str, Spec]] = {"data": Bytes(max_len=MAX_APP_DATA)}
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg201(Message):
    """Register a device. No code means an explicit opt-in: the device stays unconfirmed."""

    TYPE = MsgType.M201
    SPEC: ClassVar[dict[str, Spec]] = {
        "device_id": DEVICE_ID,
        "suite": SUITE_NAME,
        "setup_code": Opt(SETUP_CODE),
        "window_s": Uint(7 * 24 * 3600),
    }
    device_id: str
    suite: str
    setup_code: str | None
    window_s: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg202(Message):
    TYPE = MsgType.M202
    SPEC: ClassVar[dict[str, Spec]] = {"device_id": DEVICE_ID, "window_s": Uint(7 * 24 * 3600)}
    device_id: str
    window_s: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg203(Message):
    """S07: {device_id, epoch, suite, seed_id, S, P}. P = PKE(R1 || S || A [|| R0])."""

    TYPE = MsgType.M203
    SPEC: ClassVar[dict[str, Spec]] = {
        "device_id": DEVICE_ID,
        "epoch": EPOCH,
        "suite": SUITE_NAME,
        "seed_id": SEED_ID,
        "s": Bytes(S_LEN),
        "p": Bytes(max_len=MAX_P),
    }
    device_id: str
    epoch: int
    suite: str
    seed_id: bytes
    s: bytes
    p: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg204(Message):
    """S26: OK carries a MAC under the new key; NG is the same bytes whatever the cause."""

    TYPE = MsgType.M204
    SPEC: ClassVar[dict[str, Spec]] = {"ok": Bool(), "mac": Opt(MAC)}
    ok: bool
    mac: bytes | None = None

    def _validate(self) -> None:
        if self.ok != (self.mac is not None):
            raise MalformedMessage("204: OK carries a MAC and NG carries none")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg205(Message):
    TYPE = MsgType.M205
    SPEC: ClassVar[dict[str, Spec]] = {"epoch": EPOCH}
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Policy(Message):
    """The rekey policy carried in 206 (not a frame of its own; encoded inside 206)."""

    TYPE = MsgType.M206
    SPEC: ClassVar[dict[str, Spec]] = {
        "soft_messages": Uint(),
        "hard_messages": Uint(),
        "soft_age_s": Uint(),
        "hard_age_s": Uint(),
    }
    soft_messages: int
    hard_messages: int
    soft_age_s: int
    hard_age_s: int

    def _validate(self) -> None:
        if self.soft_messages > self.hard_messages or self.soft_age_s > self.hard_age_s:
            raise MalformedMessage("206: a soft limit above its hard limit")


class _PolicySpec(Spec):
    def check(self, name: str, value: object) -> object:
        if isinstance(value, Policy):
            return value
        return Policy.from_body(value)

    def describe(self) -> str:
        return "policy"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg206(Message):
    """S29: the next seed, its id, the one-time server key for the next 203 (absent for
    rsa-oaep, which has none), and the rekey policy. Sealed under the new key.

    The rest of the device's profile (docs/protocol.md, "Profiles"): ``suite`` and
    ``server_key`` (the server's long-term key of that suite) only when the next 203 moves
    to another suite than the one that made this key; ``tls_reduced`` only when true."""

    TYPE = MsgType.M206
    SPEC: ClassVar[dict[str, Spec]] = {
        "epoch": EPOCH,
        "r0": Bytes(SEED_LEN),
        "seed_id": SEED_ID,
        "otk": Opt(Bytes(max_len=1600)),
        "policy": _PolicySpec(),
        "suite": Opt(SUITE_NAME),
        "server_key": Opt(Bytes(max_len=1600)),
        "tls_reduced": Opt(Bool()),
    }
    epoch: int
    r0: bytes
    seed_id: bytes
    otk: bytes | None
    policy: Policy
    suite: str | None = None
    server_key: bytes | None = None
    tls_reduced: bool | None = None

    def _validate(self) -> None:
        if (self.suite is None) != (self.server_key is None):
            raise MalformedMessage("206: a new suite comes with its server key")
        if self.tls_reduced is False:
            raise MalformedMessage("206: tls_reduced is sent only when true")

    def body(self) -> dict[str, Any]:
        out = Message.body(self)
        out["policy"] = self.policy.body()
        return out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg207(Message):
    """Arrival confirmation: a ping (``pong`` false) answered by a pong with the same token."""

    TYPE = MsgType.M207
    SPEC: ClassVar[dict[str, Spec]] = {"pong": Bool(), "token": Bytes(8)}
    pong: bool
    token: bytes

    def response(self) -> Msg207:
        return Msg207(pong=True, token=self.token)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg208(Message):
    TYPE = MsgType.M208
    SPEC: ClassVar[dict[str, Spec]] = {"device_id": DEVICE_ID}
    device_id: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg209(Message):
    TYPE = MsgType.M209
    SPEC: ClassVar[dict[str, Spec]] = {
        "device_id": DEVICE_ID,
        "ok": Bool(),
        "rtt_us": Opt(Uint()),
        "epoch": EPOCH,
    }
    device_id: str
    ok: bool
    rtt_us: int | None
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg301(Message):
    TYPE = MsgType.M301
    SPEC: ClassVar[dict[str, Spec]] = {"device_id": DEVICE_ID}
    device_id: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg302(Message):
    TYPE = MsgType.M302
    SPEC: ClassVar[dict[str, Spec]] = {"device_id": DEVICE_ID, "epoch": EPOCH}
    device_id: str
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg401(Message):
    TYPE = MsgType.M401
    SPEC: ClassVar[dict[str, Spec]] = {"device_id": DEVICE_ID}
    device_id: str


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg402(Message):
    TYPE = MsgType.M402
    SPEC: ClassVar[dict[str, Spec]] = {"device_id": DEVICE_ID, "order_epoch": EPOCH}
    device_id: str
    order_epoch: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg403(Message):
    """Rekey order by proxy: supersede ``epoch``. The device ignores it below its own epoch."""

    TYPE = MsgType.M403
    SPEC: ClassVar[dict[str, Spec]] = {"epoch": EPOCH}
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Msg404(Message):
    TYPE = MsgType.M404
    SPEC: ClassVar[dict[str, Spec]] = {"epoch": EPOCH}
    epoch: int


# -- pair keys (5xx; docs/protocol.md, "Pair keys"; logic in keyseed.protocol.pair) -------

PAIR_MODE = Text(re.compile(r"relay|e2e"))
PAIR_ID = Bytes(16)
X25519_PUB = Bytes(32)
#: Most pairs one device names in a 506.
MAX_PAIRS = 64
#: Largest pair ciphertext: MAX_APP_DATA of plaintext and the AEAD tag.
MAX_PAIR_CT = MAX_APP_DATA + 16


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairRequest(Message):
    """501: a pair key with ``peer``. ``e`` is the initiator's ephemeral X25519 half (e2e mode
    only); ``pair_id`` names the live pair whose next epoch is asked for (chained renewal)."""

    TYPE = MsgType.PAIR_REQUEST
    SPEC: ClassVar[dict[str, Spec]] = {
        "peer": DEVICE_ID,
        "mode": PAIR_MODE,
        "e": Opt(X25519_PUB),
        "pair_id": Opt(PAIR_ID),
    }
    peer: str
    mode: str
    e: bytes | None = None
    pair_id: bytes | None = None

    def _validate(self) -> None:
        if (self.e is not None) != (self.mode == "e2e"):
            raise MalformedMessage("501: an X25519 half in e2e mode, and only there")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairKey(Message):
    """502: the server's statement of one pair epoch, sealed on the receiving device's leg.
    Relay mode: the key material and the seed of the next epoch. E2e mode: the initiator's
    half (to the responder), or both halves (to the initiator)."""

    TYPE = MsgType.PAIR_KEY
    SPEC: ClassVar[dict[str, Spec]] = {
        "pair_id": PAIR_ID,
        "epoch": EPOCH,
        "mode": PAIR_MODE,
        "initiator": DEVICE_ID,
        "responder": DEVICE_ID,
        "chained": Bool(),
        "material": Opt(Bytes(32)),
        "seed": Opt(Bytes(32)),
        "e_i": Opt(X25519_PUB),
        "e_r": Opt(X25519_PUB),
    }
    pair_id: bytes
    epoch: int
    mode: str
    initiator: str
    responder: str
    chained: bool
    material: bytes | None = None
    seed: bytes | None = None
    e_i: bytes | None = None
    e_r: bytes | None = None

    def _validate(self) -> None:
        if self.initiator == self.responder:
            raise MalformedMessage("502: a device does not pair with itself")
        relay = self.mode == "relay"
        if relay != (self.material is not None) or relay != (self.seed is not None):
            raise MalformedMessage("502: material and seed in relay mode, and only there")
        if relay == (self.e_i is not None) or (relay and self.e_r is not None):
            raise MalformedMessage("502: X25519 halves in e2e mode, and only there")
        if self.epoch == 0:
            raise MalformedMessage("502: pair epochs start at 1")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairAck(Message):
    """503: the 502 of ``epoch`` was taken; ``e`` is the responder's half in e2e mode."""

    TYPE = MsgType.PAIR_ACK
    SPEC: ClassVar[dict[str, Spec]] = {"pair_id": PAIR_ID, "epoch": EPOCH, "e": Opt(X25519_PUB)}
    pair_id: bytes
    epoch: int
    e: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairData(Message):
    """504: one application message sealed under the pair key of ``epoch``, its own ``seq``."""

    TYPE = MsgType.PAIR_DATA
    SPEC: ClassVar[dict[str, Spec]] = {
        "pair_id": PAIR_ID,
        "epoch": EPOCH,
        "seq": Uint(),
        "ct": Bytes(max_len=MAX_PAIR_CT),
    }
    pair_id: bytes
    epoch: int
    seq: int
    ct: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairRefused(Message):
    """505: ``cause`` (:class:`keyseed.protocol.pair.PairCause`) about the pair with ``peer``
    or the pair ``pair_id`` (at least one of them)."""

    TYPE = MsgType.PAIR_REFUSED
    SPEC: ClassVar[dict[str, Spec]] = {
        "peer": Opt(DEVICE_ID),
        "pair_id": Opt(PAIR_ID),
        "cause": Uint(255),
    }
    cause: int
    peer: str | None = None
    pair_id: bytes | None = None

    def _validate(self) -> None:
        if self.peer is None and self.pair_id is None:
            raise MalformedMessage("505: names a peer or a pair")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PairSync(Message):
    """506: the pair IDs the device holds keys for."""

    TYPE = MsgType.PAIR_SYNC
    SPEC: ClassVar[dict[str, Spec]] = {"held": ListOf(PAIR_ID, MAX_PAIRS)}
    held: tuple[bytes, ...]


#: Pair messages by direction (the state table admits them on open connections).
PAIR_TO_SERVER = frozenset(
    {MsgType.PAIR_REQUEST, MsgType.PAIR_ACK, MsgType.PAIR_DATA, MsgType.PAIR_SYNC}
)
PAIR_TO_DEVICE = frozenset({MsgType.PAIR_KEY, MsgType.PAIR_DATA, MsgType.PAIR_REFUSED})


#: Message class by type. ``Policy`` shares 206's number but is not a frame.
MESSAGES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        HelloAck,
        Fin,
        Close,
        Ack206,
        SeedRequest,
        App,
        Msg201,
        Msg202,
        Msg203,
        Msg204,
        Msg205,
        Msg206,
        Msg207,
        Msg208,
        Msg209,
        Msg301,
        Msg302,
        Msg401,
        Msg402,
        Msg403,
        Msg404,
        PairRequest,
        PairKey,
        PairAck,
        PairData,
        PairRefused,
        PairSync,
    )
}

#: Messages that travel only sealed under the channel.
SEALED_ONLY = frozenset(
    {
        MsgType.ACK_206,
        MsgType.SEED_REQUEST,
        MsgType.APP,
        MsgType.M205,
        MsgType.M206,
        MsgType.M207,
        MsgType.M403,
        MsgType.M404,
        *PAIR_TO_SERVER,
        *PAIR_TO_DEVICE,
    }
)
#: Messages that travel only plain: the handshake, CLOSE (a hint), and 204 (an OK is a MAC
#: under the new key; an NG must be the same bytes on every connection).
PLAIN_ONLY = frozenset({MsgType.HELLO, MsgType.HELLO_ACK, MsgType.FIN, MsgType.CLOSE, MsgType.M204})
#: Messages of the setup PC's interfaces (admin API, local setup endpoint), never on a channel.
SETUP_ONLY = frozenset(
    {
        MsgType.M201,
        MsgType.M202,
        MsgType.M208,
        MsgType.M209,
        MsgType.M301,
        MsgType.M302,
        MsgType.M401,
        MsgType.M402,
    }
)


#: Types a sealed frame may carry, by number (the rest are refused by the general path).
_SEALABLE = {int(t): t for t in MESSAGES if t not in PLAIN_ONLY and t not in SETUP_ONLY}

# -- frames ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlainFrame:
    type: MsgType
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SealedFrame:
    type: MsgType
    epoch: int
    seq: int
    ciphertext: bytes

    def encode(self) -> bytes:
        return encode_sealed(self.type, self.epoch, self.seq, self.ciphertext)


def encode_sealed(mtype: MsgType, epoch: int, seq: int, ciphertext: bytes) -> bytes:
    """``SealedFrame(mtype, epoch, seq, ciphertext).encode()``, without building the frame
    or calling a CBOR encoder: an array of five scalars, each with its shortest head, is
    the canonical encoding (the tests compare it with cbor2's)."""
    if not 0 <= epoch < 2**64 or not 0 <= seq < 2**64:
        raise ValueError("epoch and seq are unsigned 64-bit integers")
    return b"".join(
        (
            _SEALED_PREFIX,
            _head(0, int(mtype)),
            _head(0, epoch),
            _head(0, seq),
            _head(2, len(ciphertext)),
            ciphertext,
        )
    )


#: ``[`` of five items, then the version (0 to 23: one byte).
_SEALED_PREFIX = bytes((0x85, VERSION))


def _head(major: int, value: int) -> bytes:
    """The shortest CBOR head of major type ``major`` (0: uint, 2: byte string length)."""
    m = major << 5
    if value < 24:
        return bytes((m | value,))
    if value < 0x100:
        return bytes((m | 24, value))
    if value < 0x1_0000:
        return bytes((m | 25,)) + value.to_bytes(2, "big")
    if value < 0x1_0000_0000:
        return bytes((m | 26,)) + value.to_bytes(4, "big")
    return bytes((m | 27,)) + value.to_bytes(8, "big")


def _dumps(obj: object) -> bytes:
    return bytes(cbor2.dumps(obj, canonical=True))


def _dumps_ordered(obj: object) -> bytes:
    """CBOR of plain data whose maps are already in canonical key order.

    For the items the codec admits (uints, byte and text strings, bools, arrays, maps with
    text keys) cbor2 always writes the shortest heads, so canonical encoding differs from the
    plain one only in the order of map keys; with the keys in that order the two are the
    same bytes, without the sort.
    """
    return bytes(cbor2.dumps(obj))


def _key_order(key: str) -> tuple[int, bytes]:
    """A text key's place in canonical order (RFC 7049 section 3.9, as cbor2 sorts them):
    shorter encodings first, then bytewise. A text key's head grows with its length, so
    that is its UTF-8 length, then its UTF-8 bytes."""
    raw = key.encode("utf-8")
    return len(raw), raw


_SCALARS = frozenset({int, bytes, str, bool, type(None)})
_MAX_NESTING = 4
_U64_END = 0x1_0000_0000_0000_0000


def _check_plain_data(obj: object, depth: int = 0) -> bool:
    """Only maps with text keys, arrays, uints, byte and text strings, bools: no floats, no
    tags (cbor2 turns tags into datetimes, decimals ...), no negative integers; at most four
    levels below the top.

    Returns whether every map's keys are in canonical order (:func:`_key_order`; the rest of
    canonical form is checked by re-encoding). Scalars one level down are checked inline,
    as long as that level is allowed at all: this runs on every frame and body received.
    """
    if depth > _MAX_NESTING:
        raise MalformedMessage("nested too deep")
    t = type(obj)
    ordered = True
    inline = depth < _MAX_NESTING
    if t is dict:
        prev_len, prev_raw = -1, b""
        for k, v in obj.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise MalformedMessage("map key is not text")
            raw = k.encode("utf-8")
            n = len(raw)
            if n < prev_len or (n == prev_len and raw <= prev_raw):
                ordered = False
            prev_len, prev_raw = n, raw
            if inline:
                t_v = type(v)
                if t_v is bytes or t_v is str or t_v is bool or v is None:
                    continue
                if t_v is int and 0 <= v < _U64_END:
                    continue
            ordered = _check_plain_data(v, depth + 1) and ordered
    elif t is list:
        for v in obj:  # type: ignore[attr-defined]
            if inline:
                t_v = type(v)
                if t_v is bytes or t_v is str or t_v is bool or v is None:
                    continue
                if t_v is int and 0 <= v < _U64_END:
                    continue
            ordered = _check_plain_data(v, depth + 1) and ordered
    elif t not in _SCALARS:
        raise MalformedMessage("unsupported CBOR item")
    elif t is int and not 0 <= obj < _U64_END:  # type: ignore[operator]
        raise MalformedMessage("integer out of range")
    return ordered


def loads_strict(data: bytes) -> Any:
    """Decode canonical CBOR strictly; see the module docstring."""
    try:
        obj = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=8)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise MalformedMessage("not CBOR") from None
    except Exception:  # cbor2's semantic decoders raise assorted errors on hostile tags
        raise MalformedMessage("not CBOR") from None
    # Canonical: keys in canonical order and, that given, the same bytes re-encoded (which
    # also rules out trailing bytes).
    if not _check_plain_data(obj) or _dumps_ordered(obj) != data:
        raise MalformedMessage("not the canonical encoding (or trailing bytes)")
    return obj


def _arg_at(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """The argument of the item head at ``pos`` if it is of major type ``major`` (0: uint,
    2: byte string) and as short as it can be, and the position after the head; else
    (-1, pos)."""
    if pos >= len(data):
        return -1, pos
    head = data[pos]
    if head >> 5 != major:
        return -1, pos
    info = head & 0x1F
    if info < 24:
        return info, pos + 1
    width = _ARG_WIDTH.get(info)
    end = pos + 1 + (width or 0)
    if width is None or end > len(data):
        return -1, pos
    value = int.from_bytes(data[pos + 1 : end], "big")
    if value < _ARG_MIN[width]:
        return -1, pos  # a longer head than needed: not canonical
    return value, end


_ARG_WIDTH = {24: 1, 25: 2, 26: 4, 27: 8}
_ARG_MIN = {1: 24, 2: 0x100, 4: 0x1_0000, 8: 0x1_0000_0000}


def _decode_sealed_fast(data: bytes) -> SealedFrame | None:
    """A well-formed sealed frame ``[1, type, epoch, seq, ciphertext]`` in canonical CBOR,
    read without building and re-encoding a CBOR item; None for anything else, which then
    takes the general path. It accepts only frames the general path accepts, with the same
    result, so the two differ in cost alone."""
    if len(data) < 6 or data[0] != 0x85 or data[1] != VERSION:
        return None
    mtype, pos = _arg_at(data, 2, 0)
    kind = _SEALABLE.get(mtype)
    if kind is None:
        return None
    epoch, pos = _arg_at(data, pos, 0)
    if not 0 <= epoch <= EPOCH.max_value:
        return None
    seq, pos = _arg_at(data, pos, 0)
    if seq < 0:
        return None
    length, pos = _arg_at(data, pos, 2)
    if length < 0 or pos + length != len(data):
        return None
    return SealedFrame(kind, epoch, seq, data[pos:])


#: The canonical start of an APP body: a map of one pair, whose key is the text ``data``.
_APP_HEAD = b"\xa1\x64data"


def encode_app_body(data: bytes) -> bytes:
    """The canonical body of APP ``data``: the bytes :func:`encode_body` gives, built
    without a CBOR encoder (APP is the message every round trip carries)."""
    return _APP_HEAD + _head(2, len(data)) + data


def decode_app_fast(body: bytes) -> App | None:
    """An APP body ``{"data": bstr}`` in canonical CBOR, read without building a CBOR item;
    None for anything else, which then takes the general path (:func:`loads_strict`, then
    :func:`decode_body`). It accepts only bodies the general path accepts, with the same
    result, so the two differ in cost alone."""
    if not body.startswith(_APP_HEAD):
        return None
    length, pos = _arg_at(body, len(_APP_HEAD), 2)
    if length < 0 or pos + length != len(body) or length > MAX_APP_DATA:
        return None
    msg = object.__new__(App)
    _setattr(msg, "data", body[pos:])
    return msg


def decode_frame(data: bytes, max_size: int = MAX_FRAME) -> PlainFrame | SealedFrame:
    """Split a frame into its header and (plain) body or (sealed) ciphertext.

    Raises:
        FrameTooLarge: over ``max_size``, checked before parsing.
        UnsupportedVersion: the version is not ours.
        MalformedMessage: anything else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("a frame is bytes")
    if len(data) > max_size:
        raise FrameTooLarge(f"frame of {len(data)} bytes over {max_size}")
    data = bytes(data)
    fast = _decode_sealed_fast(data)
    if fast is not None:
        return fast
    obj = loads_strict(data)
    if type(obj) is not list or len(obj) not in (3, 5):
        raise MalformedMessage("a frame is an array of 3 or 5 items")
    if type(obj[0]) is not int:
        raise MalformedMessage("version is not an integer")
    if obj[0] != VERSION:
        raise UnsupportedVersion(f"version {obj[0]}")
    try:
        mtype = MsgType(obj[1])
    except ValueError:
        raise MalformedMessage("unknown message type") from None
    if type(obj[1]) is not int:
        raise MalformedMessage("message type is not an integer")
    if len(obj) == 3:
        # Whether a plain frame of a sealed-only type is acceptable is the protocol's call
        # (it is not, on a channel); the codec only checks shape.
        if type(obj[2]) is not dict:
            raise MalformedMessage("body is not a map")
        return PlainFrame(mtype, obj[2])
    if mtype in PLAIN_ONLY or mtype in SETUP_ONLY:
        raise MalformedMessage(f"{mtype.value} is never sealed")
    epoch, seq, ct = obj[2], obj[3], obj[4]
    EPOCH.check("epoch", epoch)
    Uint(2**64 - 1).check("seq", seq)
    if type(ct) is not bytes:
        raise MalformedMessage("ciphertext is not bytes")
    return SealedFrame(mtype, epoch, seq, ct)


def decode_body(mtype: MsgType, body: object) -> Message:
    """Build the message of type ``mtype`` from its body map."""
    return MESSAGES[mtype].from_body(body)


def decode_plain(data: bytes, max_size: int = MAX_FRAME) -> Message:
    """Decode a plain frame of any type."""
    frame = decode_frame(data, max_size)
    if not isinstance(frame, PlainFrame):
        raise MalformedMessage("expected a plain frame")
    return decode_body(frame.type, frame.body)


def encode_body(msg: Message) -> bytes:
    """The canonical CBOR of a message's body (what the channel seals)."""
    if type(msg) is App:
        return encode_app_body(msg.data)
    return _dumps_ordered(_wire_body(msg))


def _wire_body(msg: Message) -> dict[str, Any]:
    """:meth:`Message.body` with its keys in canonical order (see :func:`_dumps_ordered`)."""
    cls = type(msg)
    order = _WIRE_ORDER.get(cls)
    if order is None:
        order = _WIRE_ORDER[cls] = tuple(sorted(cls.SPEC, key=_key_order))
    out: dict[str, Any] = {}
    for name in order:
        value = getattr(msg, name)
        if value is None:
            continue
        t = type(value)
        if t is tuple:
            value = list(value)
        elif t is Policy:
            value = _wire_body(value)
        out[name] = value
    return out


_WIRE_ORDER: dict[type[Message], tuple[str, ...]] = {}


def _plain_prefix(mtype: MsgType) -> bytes:
    """``[version, type,`` of a plain frame: the frame is this followed by the body."""
    prefix = _PLAIN_PREFIX.get(mtype)
    if prefix is None:
        whole = _dumps([VERSION, int(mtype), {}])
        prefix = _PLAIN_PREFIX[mtype] = whole[:-1]  # less the empty map (one byte, 0xa0)
    return prefix


_PLAIN_PREFIX: dict[MsgType, bytes] = {}


def plain_frame_of_body(mtype: MsgType, body: bytes) -> bytes:
    """The plain frame of a message of type ``mtype`` whose canonical body is ``body``: what
    ``msg.encode()`` returns, without encoding the body again."""
    return _plain_prefix(mtype) + body
