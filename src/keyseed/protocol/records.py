"""keyseed.protocol.records
~~~~~~~~~~~~~~~~~~~~~~~~~~

The persistable state of both sides, as explicit frozen data, so that the I/O layers only load
and save it:

* :class:`Keystore`: everything a device must keep across a crash (its keystore file);
* :class:`DeviceRecord`: everything the server keeps per device (one database row).

Both serialise to plain CBOR-able dicts (``to_dict``/``from_dict``) and to canonical CBOR
bytes (``encode``/``decode``). Neither repr shows key material.

Server times (``*_at``) are seconds of the database clock, read in the same transaction as the
change; the device's ``key_age`` is seconds of persisted uptime (DESIGN.md section 4, "Time").
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..crypto.schedule import SharedKey
from .errors import MalformedMessage
from .messages import _dumps_ordered, _key_order, loads_strict
from .policy import DEFAULT_POLICY, RekeyPolicy

T = TypeVar("T")

#: Format version of the serialised records.
RECORD_FORMAT = 1


def _key_to(v: SharedKey | None) -> bytes | None:
    return None if v is None else v.raw


def _key_from(v: object) -> SharedKey | None:
    if v is None:
        return None
    if type(v) is not bytes:
        raise MalformedMessage("key is not bytes")
    return SharedKey(v)


_POLICY_NAMES = tuple(f.name for f in dataclasses.fields(RekeyPolicy))
_POLICY_FIELDS = frozenset(_POLICY_NAMES)


def _policy_to(p: RekeyPolicy) -> dict[str, int]:
    # Not dataclasses.asdict: its deep copy was a visible share of every record written.
    return {name: getattr(p, name) for name in _POLICY_NAMES}


def _policy_from(d: object) -> RekeyPolicy:
    if type(d) is not dict or set(d) != _POLICY_FIELDS:
        raise MalformedMessage("policy is not a map of its four limits")
    if any(type(v) is not int for v in d.values()):
        raise MalformedMessage("policy limits are integers")
    return RekeyPolicy(**d)


_HINTS: dict[type, dict[str, Any]] = {}

# Per record class: its field names and a getter of all of them at once, for _copy_with.
_COPY_PLAN: dict[type, tuple[tuple[str, ...], frozenset[str], Callable[[Any], Any]]] = {}
_setattr = object.__setattr__


def _copy_with(obj: T, changes: dict[str, Any]) -> T:
    """``dataclasses.replace(obj, **changes)`` for the records here (frozen, slotted, no
    ``__post_init__``, every field set by ``__init__``), without re-running ``__init__``
    field by field: the cores copy a record several times per exchange."""
    cls = type(obj)
    plan = _COPY_PLAN.get(cls)
    if plan is None:
        names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        plan = _COPY_PLAN[cls] = (names, frozenset(names), operator.attrgetter(*names))
    names, known, get_all = plan
    if not changes.keys() <= known:
        return replace(obj, **changes)  # type: ignore[type-var]  # raises its TypeError
    new = object.__new__(cls)
    for name, value in zip(names, get_all(obj), strict=True):
        _setattr(new, name, value)
    for name, value in changes.items():
        _setattr(new, name, value)
    return new


def _matches(value: object, hint: Any) -> bool:
    """Exact type check against a field annotation (a bool is not an int)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return type(value) is tuple and all(_matches(v, inner) for v in value)
    if hint is float:
        return type(value) in (int, float)
    if hint in (int, bool, bytes, str):
        return type(value) is hint
    return isinstance(value, hint)


class _Redacted:
    """Mixin: a repr that names fields but shows no bytes and no keys."""

    __slots__ = ()

    def _check_types(self) -> None:
        """Raise TypeError if a field (or a nested record's) has the wrong type.

        A damaged record whose CBOR still parses must not load with a field of the wrong
        type; from_dict calls this and turns the TypeError into MalformedMessage. Records the
        cores build themselves are not checked again on every copy.
        """
        cls = type(self)
        hints = _HINTS.get(cls)
        if hints is None:
            hints = _HINTS[cls] = typing.get_type_hints(cls)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise TypeError(f"{cls.__name__}.{f.name} has the wrong type")
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, _Redacted):
                    item._check_types()

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, bytes):
                v = f"<{len(v)} bytes>"
            elif isinstance(v, SharedKey):
                v = repr(v)
            elif isinstance(v, tuple) and v and not isinstance(v[0], str | int):
                v = f"<{len(v)} items>"
            parts.append(f"{f.name}={v}")
        return f"{type(self).__name__}({', '.join(parts)})"


# -- device --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Seed(_Redacted):
    """A seed the server issued in 206: R0, its id, and the one-time key for the next 203."""

    r0: bytes
    seed_id: bytes
    #: One-time server public key (wire bytes); None for rsa-oaep, which has none.
    otk: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PendingKey(_Redacted):
    """A key the device derived and sent a 203 for, waiting for an authenticated outcome."""

    key: SharedKey
    epoch: int
    seed_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Keystore(_Redacted):
    """The device's persistable state: exactly what its keystore file holds."""

    device_id: str
    suite: str
    #: The pinned long-term server public key (wire bytes) for ``suite``.
    server_key: bytes
    #: Randomness pool: starts from the install secret, absorbs every R0 and every draw.
    pool: bytes
    #: Connection counter, part of every Nd; persisted before each HELLO.
    conn_counter: int = 0
    #: k_code for the next enrolment (scrypt of the setup code); None once enrolled.
    k_code: bytes | None = None
    #: Epoch of ``key`` (0: no key yet).
    epoch: int = 0
    key: SharedKey | None = None
    #: Seconds of uptime the current key has lived, as of the last persist.
    key_age: float = 0.0
    #: Application messages under the current key, as of the last persist.
    messages: int = 0
    seed: Seed | None = None
    policy: RekeyPolicy = field(default=DEFAULT_POLICY)
    #: Rule 1: the exchange in flight, kept until an authenticated HELLO_ACK settles it.
    pending: PendingKey | None = None
    #: Rule 1 for a keyless device: every enrolment candidate sent, until one is proven.
    candidates: tuple[PendingKey, ...] = ()
    #: A rekey ordered (301 or 403) and not yet started; survives a restart.
    rekey_requested: bool = False
    #: Profile: the server allows application data authenticated-only over TLS (from 206).
    tls_reduced: bool = False
    #: Fingerprint of the long-term key pinned at install, kept once a 206 moved the device
    #: to another suite (``server_key`` is then that suite's key): a restart with the
    #: install-time settings still matches it.
    pinned_fp: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "device_id": self.device_id,
            "suite": self.suite,
            "server_key": self.server_key,
            "pool": self.pool,
            "conn_counter": self.conn_counter,
            "k_code": self.k_code,
            "epoch": self.epoch,
            "key": _key_to(self.key),
            "key_age_ms": int(self.key_age * 1000),
            "messages": self.messages,
            "seed": None
            if self.seed is None
            else {"r0": self.seed.r0, "seed_id": self.seed.seed_id, "otk": self.seed.otk},
            "policy": _policy_to(self.policy),
            "pending": None if self.pending is None else _pending_to(self.pending),
            "candidates": [_pending_to(c) for c in self.candidates],
            "rekey_requested": self.rekey_requested,
            # Absent when off or unset, so keystores written before profiles read the same.
            "tls_reduced": True if self.tls_reduced else None,
            "pinned_fp": self.pinned_fp,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Keystore:
        try:
            if d.get("format") != RECORD_FORMAT:
                raise MalformedMessage("unknown keystore format")
            seed = d["seed"]
            value = cls(
                device_id=d["device_id"],
                suite=d["suite"],
                server_key=d["server_key"],
                pool=d["pool"],
                conn_counter=d["conn_counter"],
                k_code=d["k_code"],
                epoch=d["epoch"],
                key=_key_from(d["key"]),
                key_age=d["key_age_ms"] / 1000,
                messages=d["messages"],
                seed=None if seed is None else Seed(**seed),
                policy=_policy_from(d["policy"]),
                pending=None if d["pending"] is None else _pending_from(d["pending"]),
                candidates=tuple(_pending_from(c) for c in d["candidates"]),
                rekey_requested=d["rekey_requested"],
                tls_reduced=_flag_from(d.get("tls_reduced")),
                pinned_fp=d.get("pinned_fp"),
            )
            value._check_types()
            return value
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage("keystore is damaged") from exc

    def encode(self) -> bytes:
        return _dumps_ordered(_canonical(self.to_dict()))

    @classmethod
    def decode(cls, data: bytes) -> Keystore:
        obj = loads_strict(data)
        if type(obj) is not dict:
            raise MalformedMessage("keystore is not a map")
        value = cls.from_dict(_with_nones(obj, _KEYSTORE_OPTIONAL, ("otk",)))
        if value.encode() != data:
            raise MalformedMessage("keystore is not in its canonical form")
        return value

    def with_(self, **changes: Any) -> Keystore:
        return _copy_with(self, changes)


def _flag_from(v: object) -> Any:
    """A flag stored only when true: absent reads as False (a stored False is not canonical
    and fails the re-encoding check)."""
    return False if v is None else v


def _pending_to(p: PendingKey) -> dict[str, Any]:
    return {"key": p.key.raw, "epoch": p.epoch, "seed_id": p.seed_id}


def _pending_from(d: dict[str, Any]) -> PendingKey:
    key = _key_from(d["key"])
    assert key is not None
    return PendingKey(key=key, epoch=d["epoch"], seed_id=d["seed_id"])


# -- server --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Window(_Redacted):
    """An enrolment window: single use, closed after too many failures (REVIEW F20, F21)."""

    window_id: bytes
    expires_at: float
    #: k_code the server computed from the setup code at registration (never the code).
    k_code: bytes
    #: False for a registration without a code (explicit opt-in; the device stays unconfirmed).
    code_required: bool
    failures: int = 0


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class IssuedSeed(_Redacted):
    """The seed the server issued for the device's next 203, with the one-time key named by
    its seed_id. Fixed at commit; its private half dies in the commit that consumes it."""

    r0: bytes
    seed_id: bytes
    #: One-time private key, serialised by its suite (the storage layer seals it at rest).
    otk_private: bytes | None
    otk_public: bytes | None
    #: The policy sent with this seed in 206.
    policy: RekeyPolicy
    #: Suite of the one-time key, hence of the device's next 203 (the profile's suite when
    #: the seed was issued). Empty: the record's ``suite`` (records written before profiles).
    suite: str = ""
    #: Profile sent with this seed in 206: application data may travel authenticated-only
    #: over a TLS connection (docs/protocol.md, "Profiles").
    tls_reduced: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PendingExchange(_Redacted):
    """At most one per device: a 203 the server answered with 204 OK, waiting for 205."""

    key: SharedKey
    epoch: int
    seed_id: bytes
    #: Ns of the connection that carried the 203: only that connection's 205 commits it.
    ns: bytes
    #: Database time of the 204 OK (S27 is enforced from it, whichever process reads it).
    created_at: float
    #: True for an enrolment (window), False for a rekey under the current key.
    enrol: bool


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DeviceRecord(_Redacted):
    """Everything the server keeps per device. Every change bumps ``version``; the storage
    layer writes it with one compare-and-set on (device_id, version) (rule 6)."""

    device_id: str
    suite: str
    policy: RekeyPolicy = field(default=DEFAULT_POLICY)
    #: Compare-and-set version.
    version: int = 0
    #: Connection generation: bumped when a connection completes its handshake (fencing).
    conn_gen: int = 0
    revoked: bool = False
    #: False after an enrolment without a code, until the admin compares the SAS.
    confirmed: bool = False
    #: Epoch of ``key``; only grows, also across revocation and re-registration.
    epoch: int = 0
    key: SharedKey | None = None
    key_created_at: float = 0.0
    #: Rule 2: the key before ``key``, good only together with a proof of ``key``.
    prev_key: SharedKey | None = None
    window: Window | None = None
    seed: IssuedSeed | None = None
    #: Rule 3: the 206 for ``epoch`` is owed until the device sends ACK_206.
    owed_206: bool = False
    pending: PendingExchange | None = None
    #: Outstanding rekey order: the epoch it supersedes (cleared by any commit past it).
    order_epoch: int | None = None
    #: Profile: the suite set for the device when it differs from ``suite`` (the suite of
    #: its current key); sent with the next 206, used from the 203 after it.
    next_suite: str | None = None
    #: Profile: application data may travel authenticated-only over a TLS connection; sent
    #: with the next 206, like ``policy``.
    tls_reduced: bool = False

    @property
    def policy_in_force(self) -> RekeyPolicy:
        """The policy the device was sent: a new ``policy`` waits for the next 206."""
        return self.seed.policy if self.seed is not None else self.policy

    @property
    def profile_suite(self) -> str:
        """The suite of the device's profile (what the next seed is issued in)."""
        return self.next_suite or self.suite

    @property
    def suite_in_force(self) -> str:
        """The suite the device's next 203 must use: its seed's, else (enrolment) ``suite``."""
        if self.seed is not None and self.seed.suite:
            return self.seed.suite
        return self.suite

    @property
    def tls_reduced_in_force(self) -> bool:
        """Whether the device was told (in the last 206) that TLS may reduce its layer."""
        return self.seed is not None and self.seed.tls_reduced

    def with_profile(
        self,
        *,
        suite: str | None = None,
        policy: RekeyPolicy | None = None,
        tls_reduced: bool | None = None,
    ) -> DeviceRecord:
        """The record with its profile changed (None: that part unchanged); the change
        reaches the device with its next 206. ``self`` itself when nothing changes."""
        changes: dict[str, Any] = {}
        if suite is not None and suite != self.profile_suite:
            changes["next_suite"] = None if suite == self.suite else suite
        if policy is not None and policy != self.policy:
            changes["policy"] = policy
        if tls_reduced is not None and tls_reduced != self.tls_reduced:
            changes["tls_reduced"] = tls_reduced
        return self.with_(**changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        w, s, p = self.window, self.seed, self.pending
        return {
            "format": RECORD_FORMAT,
            "device_id": self.device_id,
            "suite": self.suite,
            "policy": _policy_to(self.policy),
            "version": self.version,
            "conn_gen": self.conn_gen,
            "revoked": self.revoked,
            "confirmed": self.confirmed,
            "epoch": self.epoch,
            "key": _key_to(self.key),
            "key_created_at_ms": int(self.key_created_at * 1000),
            "prev_key": _key_to(self.prev_key),
            "window": None
            if w is None
            else {
                "window_id": w.window_id,
                "expires_at_ms": int(w.expires_at * 1000),
                "k_code": w.k_code,
                "code_required": w.code_required,
                "failures": w.failures,
            },
            "seed": None
            if s is None
            else {
                "r0": s.r0,
                "seed_id": s.seed_id,
                "otk_private": s.otk_private,
                "otk_public": s.otk_public,
                "policy": _policy_to(s.policy),
                # Absent in records written before profiles (and read back as such).
                "suite": s.suite or None,
                "tls_reduced": True if s.tls_reduced else None,
            },
            "owed_206": self.owed_206,
            "pending": None
            if p is None
            else {
                "key": p.key.raw,
                "epoch": p.epoch,
                "seed_id": p.seed_id,
                "ns": p.ns,
                "created_at_ms": int(p.created_at * 1000),
                "enrol": p.enrol,
            },
            "order_epoch": self.order_epoch,
            "next_suite": self.next_suite,
            "tls_reduced": True if self.tls_reduced else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceRecord:
        try:
            if d.get("format") != RECORD_FORMAT:
                raise MalformedMessage("unknown record format")
            w, s, p = d["window"], d["seed"], d["pending"]
            pk = None if p is None else _key_from(p["key"])
            value = cls(
                device_id=d["device_id"],
                suite=d["suite"],
                policy=_policy_from(d["policy"]),
                version=d["version"],
                conn_gen=d["conn_gen"],
                revoked=d["revoked"],
                confirmed=d["confirmed"],
                epoch=d["epoch"],
                key=_key_from(d["key"]),
                key_created_at=d["key_created_at_ms"] / 1000,
                prev_key=_key_from(d["prev_key"]),
                window=None
                if w is None
                else Window(
                    window_id=w["window_id"],
                    expires_at=w["expires_at_ms"] / 1000,
                    k_code=w["k_code"],
                    code_required=w["code_required"],
                    failures=w["failures"],
                ),
                seed=None
                if s is None
                else IssuedSeed(
                    r0=s["r0"],
                    seed_id=s["seed_id"],
                    otk_private=s["otk_private"],
                    otk_public=s["otk_public"],
                    policy=_policy_from(s["policy"]),
                    suite=s.get("suite") or "",
                    tls_reduced=_flag_from(s.get("tls_reduced")),
                ),
                owed_206=d["owed_206"],
                pending=None
                if p is None or pk is None
                else PendingExchange(
                    key=pk,
                    epoch=p["epoch"],
                    seed_id=p["seed_id"],
                    ns=p["ns"],
                    created_at=p["created_at_ms"] / 1000,
                    enrol=p["enrol"],
                ),
                order_epoch=d["order_epoch"],
                next_suite=d.get("next_suite"),
                tls_reduced=_flag_from(d.get("tls_reduced")),
            )
            value._check_types()
            return value
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage("device record is damaged") from exc

    def encode(self) -> bytes:
        return _dumps_ordered(_canonical(self.to_dict()))

    @classmethod
    def decode(cls, data: bytes) -> DeviceRecord:
        obj = loads_strict(data)
        if type(obj) is not dict:
            raise MalformedMessage("record is not a map")
        value = cls.from_dict(_with_nones(obj, _RECORD_OPTIONAL, ("otk_private", "otk_public")))
        if value.encode() != data:
            raise MalformedMessage("device record is not in its canonical form")
        return value

    def with_(self, **changes: Any) -> DeviceRecord:
        """A changed copy with ``version`` bumped: every change is a new version."""
        if "version" in changes:
            return replace(self, version=self.version + 1, **changes)  # its TypeError
        changes["version"] = self.version + 1
        return _copy_with(self, changes)


_KEYSTORE_OPTIONAL = ("k_code", "key", "seed", "pending")
_RECORD_OPTIONAL = ("key", "prev_key", "window", "seed", "pending", "order_epoch")


def _canonical(d: Any) -> Any:
    """``d`` without its None values (absent keys stand for None: the strict decoder refuses
    null), every map's keys in canonical order, so that the plain CBOR encoding is the
    canonical one (:func:`~keyseed.protocol.messages._dumps_ordered`) without a sort in the
    encoder. A record has a handful of key sets: each one's order is worked out once."""
    if type(d) is dict:
        keys = tuple(k for k, v in d.items() if v is not None)
        order = _ORDERS.get(keys)
        if order is None:
            order = tuple(sorted(keys, key=_key_order))
            if len(_ORDERS) < _MAX_ORDERS:
                _ORDERS[keys] = order
        return {k: _canonical(d[k]) for k in order}
    if type(d) is list:
        return [_canonical(v) for v in d]
    return d


#: Canonical key orders by key set (see :func:`_canonical`), and how many are kept.
_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_ORDERS = 256


def _with_nones(
    d: dict[str, Any], optional: tuple[str, ...], seed_optional: tuple[str, ...]
) -> dict[str, Any]:
    out = dict(d)
    for k in optional:
        out.setdefault(k, None)
    if isinstance(out.get("seed"), dict):
        out["seed"] = dict(out["seed"])
        for k in seed_optional:
            out["seed"].setdefault(k, None)
    return out
