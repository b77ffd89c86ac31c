"""keyseed.protocol.device
~~~~~~~~~~~~~~~~~~~~~~~~~

:class:`DeviceProtocol`: the device (appliance 101) side of one connection, steps S01-S11.

The device changes its stored key or seed only on a statement it has authenticated: the
server's HELLO_ACK MAC, a 204 OK MAC, a sealed 206 (DESIGN.md section 4, "Authenticated
outcomes"). A 204 NG, a CLOSE, an unauthenticated frame or a timeout is a hint that ends the
connection; it never changes the keystore. The pending exchange is persisted before its 203
leaves and kept until an authenticated HELLO_ACK settles it (rule 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..crypto import ct_equal, fingerprint, get_suite, sha256
from ..crypto.errors import UnsupportedSuite
from ..crypto.schedule import (
    L_204_OK,
    L_FIN,
    L_HELLO_ACK,
    L_HELLO_PROOF,
    R1_LEN,
    S_LEN,
    SEED_ID_LEN,
    SEED_LEN,
    SharedKey,
    authenticator,
    derive_k,
    p_info,
    pool_absorb,
    pool_draw,
    pool_init,
    setup_code_key,
)
from .base import Entropy, Protocol
from .channel import Channel
from .constants import (
    HANDSHAKE_TIMEOUT,
    MAX_CANDIDATES,
    MAX_RECORDS_PER_KEY,
    NONCE_LEN,
    RESPONSE_TIMEOUT,
)
from .errors import (
    AuthenticationFailed,
    ErrorCode,
    HandshakeRefused,
    HandshakeTimeout,
    KeyExpired,
    LocalProtocolError,
    MalformedMessage,
    UnexpectedMessage,
)
from .events import (
    ExchangeFailed,
    ExchangeStarted,
    HandshakeComplete,
    KeyEstablished,
    PersistState,
    RekeyOrdered,
    SeedStored,
)
from .messages import (
    Ack206,
    Fin,
    Hello,
    HelloAck,
    Message,
    Msg203,
    Msg204,
    Msg205,
    Msg206,
    Msg403,
    Msg404,
    MsgType,
    SeedRequest,
    encode_body,
    plain_frame_of_body,
)
from .policy import RekeyPolicy
from .records import Keystore, PendingKey, Seed
from .states import DeviceState, Role, State


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """Device-side tunables. Defaults follow DESIGN.md."""

    #: Seconds to wait for HELLO_ACK.
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    #: Seconds to wait for 204 and for 206 before giving up on the connection.
    response_timeout: float = RESPONSE_TIMEOUT
    #: Frames one traffic key seals before the connection re-handshakes.
    max_records: int = MAX_RECORDS_PER_KEY
    #: Application messages between lazy persists of the message count.
    persist_every: int = 256
    #: Start an enrolment 203 by itself when the server holds no key of ours.
    auto_enrol: bool = True
    #: Channel cipher.
    cipher: str = "chacha20-poly1305"
    #: Seconds between persists of the key age while connected (a crash loses at most this).
    age_persist_interval: float = 300.0
    #: The connection runs over TLS that verified the server (wss://), and this device
    #: agrees to the TLS reduction when its profile allows it (docs/protocol.md, "Profiles").
    tls_reduced_ok: bool = False


class DeviceProtocol(Protocol):
    """One connection of a device. Create it with the keystore as last persisted, then call
    :meth:`connect`."""

    role = Role.DEVICE

    def __init__(
        self,
        keystore: Keystore,
        *,
        now: float,
        config: DeviceConfig | None = None,
        entropy: Entropy | None = None,
    ) -> None:
        super().__init__(state=DeviceState.AWAIT_HELLO_ACK, entropy=entropy)
        self.config = config or DeviceConfig()
        self.device_id = keystore.device_id
        # The suite is the keystore's; only a sealed 206 (the profile) ever changes it.
        self._suite = get_suite(keystore.suite)
        self._server_key = self._suite.load_public(keystore.server_key)
        self._server_fp = fingerprint(keystore.suite, keystore.server_key)
        # Keystore as of now (persisted through PersistState events).
        self._ks = keystore
        # Monotonic time at which self._ks.key_age was exact.
        self._age_ref = now
        # Messages counted since the last persist.
        self._unpersisted = 0
        self._now = now
        # Handshake transcript.
        self._nd = b""
        self._hello = b""
        self._ns = b""
        # The server's epoch as HELLO_ACK stated it (for an enrolment 203).
        self._server_epoch = 0
        # The exchange this connection is running: its key, 203 hash.
        self._exchange: PendingKey | None = None
        self._exchange_enrol = False
        self._h203 = b""
        # PersistState events emitted so far (to tell whether a step wrote the keystore).
        self._persists = 0

    # -- public API -------------------------------------------------------------------

    @property
    def keystore(self) -> Keystore:
        """The keystore as the core holds it now (key age folded in)."""
        return self._ks

    def connect(self, now: float) -> None:
        """Send HELLO. The connection counter is persisted first (it is part of Nd)."""
        if self._hello:
            raise LocalProtocolError("connect() twice")
        ks = self._ks.with_(conn_counter=self._ks.conn_counter + 1)
        self._ks = ks
        self._nd = ks.conn_counter.to_bytes(8, "big") + self._draw(NONCE_LEN - 8)
        self._persist(now)
        hello = Hello(
            device_id=ks.device_id,
            suite=ks.suite,
            nd=self._nd,
            cur_id=None if ks.key is None else ks.key.key_id,
            cur_proof=None if ks.key is None else self._proof(ks.key),
            pend_id=None if ks.pending is None or ks.key is None else ks.pending.key.key_id,
            pend_proof=None
            if ks.pending is None or ks.key is None
            else self._proof(ks.pending.key),
            candidates=tuple(c.key.key_id for c in ks.candidates) if ks.key is None else None,
            tls_reduced=True if self._asks_reduced() else None,
        )
        self._hello = self._send_plain(hello)
        self._timers["handshake"] = now + self.config.handshake_timeout

    def request_rekey(self, now: float) -> None:
        """301 (or a local decision): rekey as soon as possible. Survives a restart."""
        if self._ks.rekey_requested:
            if self.state is DeviceState.OPEN:
                self._step_s03(now)
            return
        self._ks = self._ks.with_(rekey_requested=True)
        persisted = self._persists
        try:
            if self.state is DeviceState.OPEN:
                self._step_s03(now)
        finally:
            # The order is durable before this returns: in the exchange's own write when one
            # started (that write comes before its 203), else in a write of its own.
            if self._persists == persisted:
                self._persist(now)

    def key_age(self, now: float) -> float:
        """Seconds of uptime the current key has lived."""
        return self._ks.key_age + (now - self._age_ref)

    # -- handlers -----------------------------------------------------------------------

    def _dispatch(
        self,
        msg: Message,
        sealed_epoch: int | None,
        raw: bytes,
        now: float,
        targets: tuple[State, ...],
    ) -> None:
        if isinstance(msg, HelloAck):
            self._handle_hello_ack(msg, raw, now, targets)
        elif isinstance(msg, Msg204):
            self._handle_204(msg, now, targets)
        elif isinstance(msg, Msg206):
            assert sealed_epoch is not None
            self._handle_206(msg, sealed_epoch, now, targets)
        elif isinstance(msg, Msg403):
            self._handle_403(msg, now, targets)
        else:  # pragma: no cover - the table admits nothing else
            raise UnexpectedMessage(f"{msg.TYPE.value}")

    def _handle_hello_ack(
        self, msg: HelloAck, raw: bytes, now: float, targets: tuple[State, ...]
    ) -> None:
        ks = self._ks
        self._ns = msg.ns
        self._server_epoch = msg.epoch
        del self._timers["handshake"]
        if msg.tls_reduced and not self._asks_reduced():
            raise UnexpectedMessage("HELLO_ACK grants a TLS reduction not asked for")
        if msg.key_id is None:
            # Unauthenticated: the server holds no key we named. Only a keyless device may
            # go on, and only to enrol; a keyed device takes it as a hint and reconnects.
            if ks.key is not None:
                raise HandshakeRefused("server named no key of ours")
            self._channel = self._new_channel()
            self._set_state(DeviceState.ENROL, targets)
            self._events.append(
                HandshakeComplete(device_id=ks.device_id, epoch=msg.epoch, authenticated=False)
            )
            if self.config.auto_enrol:
                self._step_s01_enrol(now)
            return
        # Rule 1: act only on the server's authenticated statement of the key it holds.
        key, epoch, promoted = self._match_key(msg.key_id)
        if key is None:
            raise HandshakeRefused("server holds a key we do not")
        expected = key.mac(L_HELLO_ACK, sha256(self._hello), msg.ns, msg.epoch, msg.key_id)
        if not _ct_eq(expected, msg.mac or b""):
            raise AuthenticationFailed("HELLO_ACK MAC")
        if msg.epoch != epoch:
            raise AuthenticationFailed("HELLO_ACK epoch does not match its key")
        if promoted:
            # The server proves it committed our pending key (or an enrolment candidate):
            # promote it. Its seed was consumed by that commit; the 206 is owed to us.
            ks = ks.with_(
                key=key,
                epoch=epoch,
                seed=None,
                pending=None,
                candidates=(),
                k_code=None,
                key_age=0.0,
                messages=0,
                rekey_requested=False,
            )
            self._age_ref = now
            self._events.append(
                KeyEstablished(
                    device_id=ks.device_id,
                    epoch=epoch,
                    key_id=key.key_id,
                    sas=key.sas(),
                    enrolment=self._ks.key is None,
                )
            )
        elif ks.pending is not None:
            # The server proves it still holds our current key: the pending exchange did not
            # commit, and the server discarded it in the same step (rule 1, CANCEL).
            ks = ks.with_(pending=None)
        if ks is not self._ks:
            self._ks = ks
            self._persist(now)
        self._send_plain(Fin(mac=key.mac(L_FIN, sha256(self._hello), sha256(raw))))
        self._channel = self._new_channel()
        # The server checks FIN over HELLO and HELLO_ACK: both sides agree on the reduction.
        self._channel.auth_only_app = msg.tls_reduced is True
        self._channel.install_send(key, epoch)
        self._channel.install_recv(key, epoch)
        self._epoch = epoch
        self._authenticated = True
        self._set_state(DeviceState.OPEN, targets)
        self._events.append(
            HandshakeComplete(device_id=ks.device_id, epoch=epoch, authenticated=True)
        )
        if ks.seed is None:
            # No usable seed: ask for one (the server answers with the owed 206 or a fresh one).
            self._send_sealed(SeedRequest(epoch=epoch))
        self._arm_rekey_timer(now)
        self._step_s03(now)

    def _asks_reduced(self) -> bool:
        """Ask for the TLS reduction: over verified TLS, agreed locally, allowed by the
        profile of the last 206, and only under a key (never to enrol)."""
        ks = self._ks
        return self.config.tls_reduced_ok and ks.tls_reduced and ks.key is not None

    def _match_key(self, key_id: bytes) -> tuple[SharedKey | None, int, bool]:
        ks = self._ks
        if ks.key is not None and _ct_eq(key_id, ks.key.key_id):
            return ks.key, ks.epoch, False
        if ks.pending is not None and _ct_eq(key_id, ks.pending.key.key_id):
            return ks.pending.key, ks.pending.epoch, True
        for cand in ks.candidates:
            if ks.key is None and _ct_eq(key_id, cand.key.key_id):
                return cand.key, cand.epoch, True
        return None, 0, False

    def _step_s03(self, now: float) -> None:
        """S03: is a new key needed? No key yet, a rekey order, or the policy's limits."""
        ks = self._ks
        if self.state is not DeviceState.OPEN or ks.key is None:
            return
        if not (
            ks.rekey_requested
            or ks.policy.needs_rekey(ks.messages + self._unpersisted, self.key_age(now))
        ):
            return
        if ks.seed is None:
            return  # a SeedRequest is out; the 206 will bring the seed
        self._step_s04_s07(now, enrol=False)

    def _step_s01_enrol(self, now: float) -> None:
        """S01/S02: a keyless device draws R0 itself; allowed only inside a window."""
        if self._ks.k_code is None:
            raise HandshakeRefused("no key and no setup code: cannot enrol")
        self._step_s04_s07(now, enrol=True)

    def _step_s04_s07(self, now: float, *, enrol: bool) -> None:
        ks = self._ks
        suite = self._suite
        pool = ks.pool
        if enrol:
            # S01/S02: our own R0 and seed id; P carries R0 to the server.
            r0, pool = self._draw_from(pool, SEED_LEN)
            seed_id, pool = self._draw_from(pool, SEED_ID_LEN)
            epoch = self._server_epoch + 1
            pub = self._server_key
            prev_key_id = b""
            assert ks.k_code is not None
            akey = ks.k_code
        else:
            assert ks.seed is not None and ks.key is not None
            r0, seed_id = ks.seed.r0, ks.seed.seed_id
            epoch = ks.epoch + 1
            # Forward secrecy: encrypt to the one-time key the server issued with this seed.
            pub = self._server_key if ks.seed.otk is None else suite.load_public(ks.seed.otk)
            prev_key_id = ks.key.key_id
            akey = ks.key.continuity
        # S04: R1 and S, in one draw (R1 || S).
        r1_s, pool = self._draw_from(pool, R1_LEN + S_LEN)
        r1, s = r1_s[:R1_LEN], r1_s[R1_LEN:]
        # S06: P = PKE(R1 || S || A [|| R0]), bound to this connection's nonces.
        a = authenticator(
            akey,
            suite=ks.suite,
            device_id=ks.device_id,
            epoch=epoch,
            seed_id=seed_id,
            nd=self._nd,
            ns=self._ns,
            r1=r1,
            s=s,
            r0=r0 if enrol else b"",
        )
        x = r1 + s + a + (r0 if enrol else b"")
        info = p_info(
            suite=ks.suite,
            device_id=ks.device_id,
            epoch=epoch,
            seed_id=seed_id,
            nd=self._nd,
            ns=self._ns,
        )
        p = suite.encrypt(pub, x, info)
        # S07: 203.
        msg = Msg203(device_id=ks.device_id, epoch=epoch, suite=ks.suite, seed_id=seed_id, s=s, p=p)
        body = encode_body(msg)
        frame = plain_frame_of_body(MsgType.M203, body)  # == msg.encode()
        self._h203 = sha256(frame)
        # S05: K from the seed and R1, every context field bound in.
        key = derive_k(
            r0,
            r1,
            suite=ks.suite,
            device_id=ks.device_id,
            epoch=epoch,
            seed_id=seed_id,
            server_fp=self._server_fp,
            prev_key_id=prev_key_id,
            h203=self._h203,
        )
        pending = PendingKey(key=key, epoch=epoch, seed_id=seed_id)
        self._exchange = pending
        self._exchange_enrol = enrol
        # Rule 1: the pending exchange is durable before 203 leaves.
        if enrol:
            cands = (*ks.candidates, pending)[-MAX_CANDIDATES:]
            self._persist(now, candidates=cands, pool=pool)
            self._out.append(frame)
        else:
            self._persist(now, pending=pending, pool=pool)
            self._send_sealed(msg, body)
        self.state = DeviceState.AWAIT_204
        self._timers["response"] = now + self.config.response_timeout
        self._timers.pop("rekey", None)
        self._events.append(ExchangeStarted(device_id=ks.device_id, epoch=epoch, enrolment=enrol))

    def _handle_204(self, msg: Msg204, now: float, targets: tuple[State, ...]) -> None:
        exchange = self._exchange
        assert exchange is not None
        if not msg.ok:
            # A hint, never an outcome: the pending key stays until a HELLO_ACK settles it.
            self._events.append(
                ExchangeFailed(device_id=self._ks.device_id, epoch=exchange.epoch, cause=None)
            )
            self._closed(ErrorCode.NORMAL, by_peer=True, reason="204 NG")
            return
        expected = exchange.key.mac(L_204_OK, self._h203, self._nd, self._ns)
        if not _ct_eq(expected, msg.mac or b""):
            raise AuthenticationFailed("204 OK MAC")
        # Key confirmation: 205 sealed under the new key.
        assert self._channel is not None
        self._channel.install_send(exchange.key, exchange.epoch)
        self._channel.install_recv(exchange.key, exchange.epoch)
        self._send_sealed(Msg205(epoch=exchange.epoch))
        self._set_state(DeviceState.AWAIT_206, targets)
        self._timers["response"] = now + self.config.response_timeout

    def _handle_206(
        self, msg: Msg206, sealed_epoch: int, now: float, targets: tuple[State, ...]
    ) -> None:
        if msg.epoch != sealed_epoch:
            raise AuthenticationFailed("206 epoch differs from its key's")
        ks = self._ks
        policy = RekeyPolicy.from_msg(msg.policy)
        # The profile: a suite change (with the long-term key of the new suite), checked
        # before anything is stored; the one-time key is a key of the suite in force next.
        profile = self._step_s10_profile(msg)
        suite = get_suite(profile.get("suite", ks.suite))
        if suite.one_time_keys:
            if msg.otk is None:
                raise MalformedMessage("206 without a one-time key")
            try:
                suite.load_public(msg.otk)
            except ValueError:
                raise MalformedMessage("206 one-time key is not a key of our suite") from None
        elif msg.otk is not None:
            raise MalformedMessage("206 with a one-time key for a suite that has none")
        seed = Seed(r0=msg.r0, seed_id=msg.seed_id, otk=msg.otk)
        exchange = self._exchange
        if (
            self.state is DeviceState.AWAIT_206
            and exchange is not None
            and msg.epoch == exchange.epoch
        ):
            # S10/S11: the new key, its seed and the policy, durably, then acknowledge.
            self._age_ref = now
            self._unpersisted = 0
            self._persist(
                now,
                key=exchange.key,
                epoch=exchange.epoch,
                seed=seed,
                policy=policy,
                pending=None,
                candidates=(),
                k_code=None,
                key_age=0.0,
                messages=0,
                rekey_requested=False,
                pool=pool_absorb(ks.pool, msg.r0),
                **profile,
            )
            self._use_suite(self._ks)
            ks = self._ks
            self._exchange = None
            self._epoch = exchange.epoch
            self._authenticated = True
            self._events.append(
                KeyEstablished(
                    device_id=ks.device_id,
                    epoch=ks.epoch,
                    key_id=exchange.key.key_id,
                    sas=exchange.key.sas(),
                    enrolment=self._exchange_enrol,
                )
            )
            self._timers.pop("response", None)
            self._set_state(DeviceState.OPEN, targets)
        elif msg.epoch == ks.epoch and ks.key is not None:
            # Rule 4: a redelivery for the epoch we use. Store the seed, acknowledge again.
            if ks.seed != seed or ks.policy != policy or profile:
                self._ks = ks.with_(
                    seed=seed, policy=policy, pool=pool_absorb(ks.pool, msg.r0), **profile
                )
                self._persist(now)
                self._use_suite(self._ks)
        else:
            raise UnexpectedMessage("206 for an epoch we are not at")
        self._send_sealed(Ack206(epoch=msg.epoch, seed_id=msg.seed_id))
        self._events.append(
            SeedStored(device_id=ks.device_id, epoch=msg.epoch, seed_id=msg.seed_id)
        )
        self._arm_rekey_timer(now)
        self._step_s03(now)

    def _step_s10_profile(self, msg: Msg206) -> dict[str, Any]:
        """The keystore changes a 206's profile asks for (empty: none).

        A new suite comes with the server's long-term key of that suite; both arrive sealed
        under the key the device shares with the server alone, so they carry the server's
        word, like the one-time key beside them. The key pinned at install is remembered by
        its fingerprint.

        Raises:
            MalformedMessage: this device's backend lacks the suite, or the server key is
                not a key of it.
        """
        ks = self._ks
        out: dict[str, Any] = {}
        if (msg.tls_reduced is True) != ks.tls_reduced:
            out["tls_reduced"] = msg.tls_reduced is True
        if msg.suite is None or msg.suite == ks.suite:
            return out
        assert msg.server_key is not None
        try:
            get_suite(msg.suite).load_public(msg.server_key)
        except UnsupportedSuite:
            raise MalformedMessage("206 names a suite this device lacks") from None
        except ValueError:
            raise MalformedMessage("206 server key is not a key of its suite") from None
        out.update(suite=msg.suite, server_key=msg.server_key)
        if ks.pinned_fp is None:
            out["pinned_fp"] = fingerprint(ks.suite, ks.server_key)
        return out

    def _use_suite(self, ks: Keystore) -> None:
        """Encrypt the next 203 in the keystore's suite (a 206 may just have changed it)."""
        if ks.suite != self._suite.name or ks.server_key != self._server_key.raw:
            self._suite = get_suite(ks.suite)
            self._server_key = self._suite.load_public(ks.server_key)
            self._server_fp = fingerprint(ks.suite, ks.server_key)

    def _handle_403(self, msg: Msg403, now: float, targets: tuple[State, ...]) -> None:
        """Fig. 4: a rekey order by proxy. Ignored if it supersedes an epoch we are past."""
        if msg.epoch < self._ks.epoch:
            return
        self._send_sealed(Msg404(epoch=msg.epoch))
        self._events.append(RekeyOrdered(device_id=self._ks.device_id, epoch=msg.epoch))
        if not self._ks.rekey_requested:
            self._ks = self._ks.with_(rekey_requested=True)
            self._persist(now)
        self._step_s03(now)

    # -- timers ---------------------------------------------------------------------------

    def _on_timer(self, name: str, now: float) -> None:
        if name in ("handshake", "response"):
            # The pending key stays (rule 1); the next connection's HELLO_ACK settles it.
            raise HandshakeTimeout(f"no answer ({name})")
        if name == "rekey":
            self._step_s03(now)
            self._arm_rekey_timer(now)
        if name == "age":
            # Key age is persisted uptime (DESIGN.md section 4, "Time"): write it now and then.
            self._persist(now)
            self._timers["age"] = now + self.config.age_persist_interval

    def _before_close(self) -> None:
        if self._ks.key is not None and (self._now > self._age_ref or self._unpersisted):
            self._persist(self._now)

    def _arm_rekey_timer(self, now: float) -> None:
        if self._ks.key is not None and "age" not in self._timers:
            self._timers["age"] = now + self.config.age_persist_interval
        if self.state is DeviceState.OPEN and self._ks.key is not None:
            self._timers["rekey"] = now + max(
                self._ks.policy.seconds_until_soft(self.key_age(now)), 1.0
            )

    # -- application data ---------------------------------------------------------------

    def _check_app_allowed(self, now: float, *, outgoing: bool) -> None:
        ks = self._ks
        if outgoing and ks.policy.hard_exceeded(ks.messages + self._unpersisted, self.key_age(now)):
            raise KeyExpired("key past its hard limit; rekey first")

    def _count_app(self, now: float) -> None:
        self._unpersisted += 1
        if self._unpersisted >= self.config.persist_every:
            self._persist(now)
        self._step_s03(now)

    def send_app(self, data: bytes, now: float) -> None:
        super().send_app(data, now)
        self._count_app(now)

    # -- helpers --------------------------------------------------------------------------

    def _persist(self, now: float, **changes: Any) -> None:
        """Write the keystore with ``changes`` (one copy, one PersistState) and the key age
        and message count as of ``now``."""
        fields: dict[str, Any] = {
            "key_age": self.key_age(now),
            "messages": self._ks.messages + self._unpersisted,
        }
        fields.update(changes)
        ks = self._ks.with_(**fields)
        self._ks = ks
        self._age_ref = now
        self._unpersisted = 0
        self._persists += 1
        self._events.append(PersistState(keystore=ks))

    def _draw(self, n: int) -> bytes:
        """Every value the device draws mixes OS entropy with its pool (DESIGN.md section 3)."""
        out, pool = self._draw_from(self._ks.pool, n)
        self._ks = self._ks.with_(pool=pool)
        return out

    def _draw_from(self, pool: bytes, n: int) -> tuple[bytes, bytes]:
        """:meth:`_draw` from ``pool``, returning the next pool instead of storing it."""
        return pool_draw(pool, self._entropy(32), n)

    def _proof(self, key: SharedKey) -> bytes:
        ks = self._ks
        return key.mac(L_HELLO_PROOF, ks.device_id, ks.suite, self._nd, key.key_id)

    def _new_channel(self) -> Channel:
        return Channel(
            device_id=self._ks.device_id,
            nd=self._nd,
            ns=self._ns,
            is_device=True,
            cipher=self.config.cipher,
            max_records=self.config.max_records,
        )


def _ct_eq(a: bytes, b: bytes) -> bool:
    return ct_equal(a, b)


__all__ = ["DeviceConfig", "DeviceProtocol", "new_keystore"]


def new_keystore(
    *,
    device_id: str,
    suite: str,
    server_key: bytes,
    install_secret: bytes,
    setup_code: str | None,
) -> Keystore:
    """A keystore as created at install: the pinned server key, the per-device install secret
    (seeds the randomness pool) and k_code from the setup code (None: enrolled without one).

    Raises:
        UnsupportedSuite: the suite is unknown or this backend lacks it.
        ValueError: the server key is not a key of the suite, or the install secret is short.
    """
    get_suite(suite).load_public(server_key)
    if len(install_secret) < 32:
        raise ValueError("the install secret is at least 32 bytes")
    return Keystore(
        device_id=device_id,
        suite=suite,
        server_key=server_key,
        pool=pool_init(install_secret),
        k_code=setup_code_key(device_id, setup_code or ""),
    )
