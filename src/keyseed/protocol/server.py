"""keyseed.protocol.server
~~~~~~~~~~~~~~~~~~~~~~~~~

:class:`ServerProtocol`: the application server (102) side of one connection, steps S21-S30.

The server's durable state is one :class:`~keyseed.protocol.records.DeviceRecord` per device,
held by the driver's storage. The core asks for it (:meth:`ServerProtocol.wants_record`)
before every step that reads or changes it, and hands every change back as a
:class:`~keyseed.protocol.events.StoreRecord`, a compare-and-set on the record's version that
the driver commits before it sends the reply that depends on it. A lost compare-and-set
aborts the connection (:meth:`ServerProtocol.store_failed`): with several server processes,
each state change succeeds on exactly one row or aborts (rule 6).

Driver loop, after every input::

    while (device_id := proto.wants_record()) is not None:
        proto.provide_record(await store.load(device_id), db_now, now)
    for event in proto.events_received():
        if isinstance(event, StoreRecord) and not await store.cas(event):
            proto.store_failed()
    send(proto.messages_to_send()); rearm(proto.get_timer())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ..crypto import DecryptError, PrivateKey, ct_equal, get_suite, sha256
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
    reject_value,
)
from .base import Entropy, Protocol
from .channel import Channel
from .constants import (
    HANDSHAKE_TIMEOUT,
    MAC_LEN,
    MAX_RECORDS_PER_KEY,
    NONCE_LEN,
    S27_TIMEOUT,
    WINDOW_MAX_FAILURES,
)
from .errors import (
    AuthenticationFailed,
    ConflictError,
    ErrorCode,
    ExchangeExpired,
    HandshakeRefused,
    HandshakeTimeout,
    KeyExpired,
    KeyseedError,
    LocalProtocolError,
    MalformedMessage,
    NgCause,
    NotConfirmed,
    UnexpectedMessage,
)
from .events import (
    AuditEntry,
    ExchangeExpiredEvent,
    ExchangeFailed,
    HandshakeComplete,
    KeyEstablished,
    RekeyOrderAccepted,
    SeedStored,
    StoreRecord,
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
    plain_frame_of_body,
)
from .records import DeviceRecord, IssuedSeed, PendingExchange, Window
from .states import Role, ServerState, State

#: Every 204 NG is these bytes, whatever the cause (REVIEW F10).
NG_204 = Msg204(ok=False).encode()

#: Length of X = R1 || S || A, and with R0 when the device drew it (enrolment).
X_LEN_REKEY = R1_LEN + S_LEN + MAC_LEN
X_LEN_ENROL = X_LEN_REKEY + SEED_LEN


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerContext:
    """What every connection of a server shares. Defaults follow DESIGN.md."""

    #: Long-term private key per enabled suite (they open P only inside an enrolment window).
    keys: Mapping[str, PrivateKey]
    #: Secret for implicit rejection: a failed decryption continues with HMAC(k_reject, P).
    k_reject: bytes = field(repr=False)
    #: S27: seconds the server holds a pending exchange waiting for 205.
    s27_timeout: float = S27_TIMEOUT
    #: Seconds for HELLO and FIN (and, on an enrolment connection, for the 203).
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    #: Frames one traffic key seals before the connection re-handshakes.
    max_records: int = MAX_RECORDS_PER_KEY
    #: Failed attempts after which an enrolment window closes.
    window_max_failures: int = WINDOW_MAX_FAILURES
    #: Channel cipher.
    cipher: str = "chacha20-poly1305"

    def server_fp(self, suite: str) -> bytes:
        """Fingerprint of the long-term key of ``suite``, bound into every K."""
        return self.keys[suite].public_key.fingerprint


_Action = Callable[[DeviceRecord | None, float], None]


class ServerProtocol(Protocol):
    """One device connection on the server."""

    role = Role.SERVER

    def __init__(
        self,
        ctx: ServerContext,
        *,
        now: float,
        entropy: Entropy | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(state=ServerState.AWAIT_HELLO, entropy=entropy)
        self.ctx = ctx
        # The driver's word that this connection runs over TLS it terminates (wss://): the
        # only case in which the handshake may reduce the connection for TLS.
        self._tls = tls
        # Whether HELLO asked for the reduction, and whether HELLO_ACK granted it (applied
        # once FIN proves the device).
        self._asked_reduced = False
        self._grant_reduced = False
        # Our nonce: fresh per connection; binds P, traffic keys and the pending exchange.
        self._ns = self._entropy(NONCE_LEN)
        self._nd = b""
        self._suite_name = ""
        # Handshake transcript.
        self._hello = b""
        self._hello_ack = b""
        # The key named in HELLO_ACK.
        self._named: SharedKey | None = None
        # Last record seen, the database time read with it, and the monotonic time then.
        self._record: DeviceRecord | None = None
        self._db_now = 0.0
        self._db_ref = now
        # A step waiting for the device record.
        self._want: str | None = None
        self._parked: _Action | None = None
        # Connection generation this connection owns (rule 6), once it proved a key.
        self._my_gen: int | None = None
        # The exchange this connection answered with 204 OK.
        self._exchange: PendingExchange | None = None
        self._timers["handshake"] = now + ctx.handshake_timeout

    # -- the record -----------------------------------------------------------------------

    def wants_record(self) -> str | None:
        """The device ID whose record the core needs before it can go on, if any."""
        return self._want

    def provide_record(self, record: DeviceRecord | None, db_now: float, now: float) -> None:
        """Hand over the device's record (None: not registered), read with ``db_now``, the
        database clock in seconds."""
        if self._want is None or self._parked is None:
            raise LocalProtocolError("no record was asked for")
        if record is not None and record.device_id != self._want:
            raise LocalProtocolError("record of another device")
        action, self._want, self._parked = self._parked, None, None
        self._record, self._db_now, self._db_ref = record, db_now, now
        try:
            action(record, now)
        except KeyseedError as exc:
            self.fail(exc.code, str(exc))
        except Exception:
            self.fail(ErrorCode.INTERNAL, "internal error")

    def store_failed(self) -> None:
        """The last StoreRecord lost its compare-and-set: nothing that depended on it is
        sent, and the connection closes (the device reconnects and the handshake settles)."""
        self._out.clear()
        self.fail(ErrorCode.CONFLICT, "compare-and-set lost")

    def update_record(self, record: DeviceRecord, db_now: float, now: float) -> None:
        """A newer record from storage (the admin confirmed or revoked the device)."""
        if self._my_gen is not None and record.conn_gen != self._my_gen:
            self.fail(ErrorCode.CONFLICT, "fenced by a newer connection")
            return
        if record.revoked:
            self.fail(ErrorCode.HANDSHAKE_REFUSED, "revoked")
            return
        self._record, self._db_now, self._db_ref = record, db_now, now

    def receive_message(self, data: bytes, now: float) -> None:
        if self._want is not None:
            raise LocalProtocolError("provide_record() before the next input")
        super().receive_message(data, now)

    # -- orders -------------------------------------------------------------------------

    def order_rekey(self, order_epoch: int, now: float) -> None:
        """403: ask the device to rekey, superseding ``order_epoch`` (fig. 4).

        Raises:
            LocalProtocolError: the connection is not open, or the device is unconfirmed.
        """
        self._require_sealed()
        if self._record is None or not self._record.confirmed:
            raise LocalProtocolError("no orders to an unconfirmed device")
        self._send_sealed(Msg403(epoch=order_epoch))

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(
        self,
        msg: Message,
        sealed_epoch: int | None,
        raw: bytes,
        now: float,
        targets: tuple[State, ...],
    ) -> None:
        if isinstance(msg, Hello):
            self.device_id, self._nd, self._hello = msg.device_id, msg.nd, raw
            self._asked_reduced = msg.tls_reduced is True
            self._suite_name = msg.suite
            self._park(lambda rec, n: self._handle_hello(msg, rec, n, targets))
        elif isinstance(msg, Fin):
            self._park(lambda rec, n: self._handle_fin(msg, rec, n, targets))
        elif isinstance(msg, Msg203):
            if (self.state is ServerState.ENROL) != (sealed_epoch is None):
                raise UnexpectedMessage("203 is plain only to enrol, sealed otherwise")
            # H(203) over its plain frame, msg.encode(): the frame itself when it came plain,
            # else rebuilt from the body it was decoded from (both canonical, so the same).
            h203 = sha256(raw if sealed_epoch is None else plain_frame_of_body(MsgType.M203, raw))
            self._park(lambda rec, n: self._handle_203(msg, rec, n, targets, h203))
        elif isinstance(msg, Msg205):
            assert sealed_epoch is not None
            self._park(lambda rec, n: self._handle_205(msg, sealed_epoch, rec, n, targets))
        elif isinstance(msg, Ack206):
            self._park(lambda rec, n: self._handle_ack_206(msg, rec, n))
        elif isinstance(msg, SeedRequest):
            self._park(lambda rec, n: self._handle_seed_request(msg, rec, n))
        elif isinstance(msg, Msg404):
            assert self.device_id is not None
            self._events.append(RekeyOrderAccepted(device_id=self.device_id, epoch=msg.epoch))
        else:  # pragma: no cover - the table admits nothing else
            raise UnexpectedMessage(f"{msg.TYPE.value}")

    def _park(self, action: _Action) -> None:
        assert self.device_id is not None
        self._want, self._parked = self.device_id, action

    # -- handshake ----------------------------------------------------------------------

    def _handle_hello(
        self, msg: Hello, rec: DeviceRecord | None, now: float, targets: tuple[State, ...]
    ) -> None:
        if msg.cur_id is None:
            # A keyless device. If it names a candidate the server committed, prove it (rule 1,
            # first enrolment); otherwise answer unauthenticated: it may only enrol. An unknown
            # ID gets the same answer as a registered one whose window is closed.
            named: SharedKey | None = None
            if rec is not None and rec.key is not None and not rec.revoked:
                for cand in msg.candidates or ():
                    if ct_equal(cand, rec.key.key_id):
                        named = rec.key
            if named is None or rec is None:
                if rec is not None and rec.pending is not None and rec.pending.enrol:
                    # Rule 1, first enrolment: this HELLO_ACK says no candidate committed, and
                    # the device may start a new attempt and forget its oldest candidate, so
                    # the older connection's exchange is discarded in the same step (a late
                    # 205 then finds none).
                    self._store(
                        rec.with_(pending=None),
                        AuditEntry(
                            kind="exchange_cancelled",
                            device_id=rec.device_id,
                            epoch=rec.pending.epoch,
                        ),
                    )
                    rec = self._record
                    assert rec is not None
                self._send_hello_ack(HelloAck(ns=self._ns, epoch=0 if rec is None else rec.epoch))
                self._channel = self._new_channel()
                self._set_state(ServerState.ENROL, targets)
                assert self.device_id is not None
                self._events.append(
                    HandshakeComplete(device_id=self.device_id, epoch=0, authenticated=False)
                )
                return
            self._answer_hello(named, rec, targets)
            return
        if rec is None or rec.revoked or rec.key is None or not _hello_suite_ok(rec, msg.suite):
            raise HandshakeRefused("no key to prove")
        assert msg.cur_proof is not None
        cur = rec.key
        if ct_equal(msg.cur_id, cur.key_id) and self._proof_ok(cur, msg.cur_proof):
            pend = rec.pending
            if (
                msg.pend_id is not None
                and msg.pend_proof is not None
                and pend is not None
                and ct_equal(msg.pend_id, pend.key.key_id)
                and self._proof_ok(pend.key, msg.pend_proof)
            ):
                # Rule 1 (CANCEL): HELLO_ACK is about to tell the device its pending key was
                # not committed, so discard that exchange in the same step; a late 205 from
                # an older connection then finds none (rule 5).
                self._store(
                    rec.with_(pending=None),
                    AuditEntry(
                        kind="exchange_cancelled", device_id=rec.device_id, epoch=pend.epoch
                    ),
                )
                rec = self._record
                assert rec is not None
            self._answer_hello(cur, rec, targets)
            return
        # Rule 2: the previous key counts only together with a proof of the current one.
        prev = rec.prev_key
        if (
            prev is not None
            and ct_equal(msg.cur_id, prev.key_id)
            and self._proof_ok(prev, msg.cur_proof)
            and msg.pend_id is not None
            and msg.pend_proof is not None
            and ct_equal(msg.pend_id, cur.key_id)
            and self._proof_ok(cur, msg.pend_proof)
        ):
            self._answer_hello(cur, rec, targets)
            return
        raise HandshakeRefused("HELLO proves no key the server accepts")

    def _proof_ok(self, key: SharedKey, proof: bytes) -> bool:
        assert self.device_id is not None
        expected = key.mac(L_HELLO_PROOF, self.device_id, self._suite_name, self._nd, key.key_id)
        return ct_equal(expected, proof)

    def _answer_hello(self, key: SharedKey, rec: DeviceRecord, targets: tuple[State, ...]) -> None:
        self._named = key
        mac = key.mac(L_HELLO_ACK, sha256(self._hello), self._ns, rec.epoch, key.key_id)
        # Profiles: reduce for TLS only if the device asked, this connection is TLS as the
        # server sees it, and the profile the device was sent allows it.
        self._grant_reduced = self._asked_reduced and self._tls and rec.tls_reduced_in_force
        self._send_hello_ack(
            HelloAck(
                ns=self._ns,
                epoch=rec.epoch,
                key_id=key.key_id,
                mac=mac,
                tls_reduced=True if self._grant_reduced else None,
            )
        )
        self._set_state(ServerState.AWAIT_FIN, targets)

    def _send_hello_ack(self, ack: HelloAck) -> None:
        self._hello_ack = self._send_plain(ack)

    def _handle_fin(
        self, msg: Fin, rec: DeviceRecord | None, now: float, targets: tuple[State, ...]
    ) -> None:
        key = self._named
        assert key is not None
        if rec is None or rec.revoked:
            raise HandshakeRefused("revoked")
        if rec.key is None or not ct_equal(rec.key.key_id, key.key_id):
            raise ConflictError("the device's key changed during the handshake")
        expected = key.mac(L_FIN, sha256(self._hello), sha256(self._hello_ack))
        if not ct_equal(expected, msg.mac):
            raise AuthenticationFailed("FIN MAC")
        # Rule 6: the device proved its key over our fresh nonce, so this connection fences
        # every older one. Rule 2: the previous key opens nothing from now on. A pending
        # exchange can only belong to an older connection now, and dies with it.
        new = rec.with_(conn_gen=rec.conn_gen + 1, prev_key=None, pending=None)
        self._store(new, AuditEntry(kind="handshake", device_id=rec.device_id, epoch=rec.epoch))
        self._my_gen = new.conn_gen
        self._channel = self._new_channel()
        # FIN covered HELLO and HELLO_ACK, so both sides agree on the reduction.
        self._channel.auth_only_app = self._grant_reduced
        self._channel.install_send(key, rec.epoch)
        self._channel.install_recv(key, rec.epoch)
        self._epoch = rec.epoch
        self._authenticated = True
        self._timers.pop("handshake", None)
        self._set_state(ServerState.OPEN, targets)
        self._events.append(
            HandshakeComplete(device_id=rec.device_id, epoch=rec.epoch, authenticated=True)
        )
        # Rule 3: the owed 206 goes out again on every connection until it is acknowledged.
        if new.owed_206:
            self._send_206(new)
        aged = self._db_time(now) - new.key_created_at >= new.policy_in_force.soft_age_s
        if new.order_epoch is not None and new.order_epoch >= new.epoch and new.confirmed:
            self._send_sealed(Msg403(epoch=new.order_epoch))
        elif aged:
            # The server enforces key age too, on its own clock: a device that was off for
            # long counts less uptime than the key has lived (DESIGN.md section 4, "Time").
            self._send_sealed(Msg403(epoch=new.epoch))

    # -- key exchange -------------------------------------------------------------------

    def _handle_203(
        self,
        msg: Msg203,
        rec: DeviceRecord | None,
        now: float,
        targets: tuple[State, ...],
        h203: bytes,
    ) -> None:
        enrol = self.state is ServerState.ENROL
        if msg.device_id != self.device_id:
            raise MalformedMessage("203 for another device than HELLO's")
        if not enrol:
            self._check_live(rec)
        db_now = self._db_time(now)
        # S21: cheap checks first, before any public-key work.
        cause = self._step_s21_cheap_checks(msg, rec, enrol, db_now)
        if cause is not None:
            self._ng(msg, cause, None)
            return
        assert rec is not None
        # The suite in force (S21 checked the 203 names it): the record's for an enrolment,
        # the seed's for a rekey (a profile change moves it with the 206 that issued the seed).
        suite_name = msg.suite
        suite = get_suite(suite_name)
        if enrol:
            # The long-term key opens P only inside an enrolment window.
            assert rec.window is not None
            priv, akey, prev_key_id, x_len = (
                self.ctx.keys[suite_name],
                rec.window.k_code,
                b"",
                X_LEN_ENROL,
            )
        else:
            # Once a device holds a key, only the one-time key named by seed_id opens P.
            assert rec.seed is not None and rec.key is not None
            seed = rec.seed
            priv = (
                self.ctx.keys[suite_name]
                if seed.otk_private is None
                else suite.load_private(seed.otk_private)
            )
            akey, prev_key_id, x_len = rec.key.continuity, rec.key.key_id, X_LEN_REKEY
        info = p_info(
            suite=suite_name,
            device_id=rec.device_id,
            epoch=msg.epoch,
            seed_id=msg.seed_id,
            nd=self._nd,
            ns=self._ns,
        )
        # S22/S23: open P into X; a failure continues with an implicit-rejection value
        # through the same steps, so every NG costs the same (REVIEW F10).
        opened = len(msg.p) == suite.ciphertext_len(x_len)
        x = b""
        if opened:
            try:
                x = suite.decrypt(priv, msg.p, info)
            except DecryptError:
                opened = False
        if not opened or len(x) != x_len:
            opened = False
            x = reject_value(self.ctx.k_reject, msg.p, x_len)
        # S24: split X into R1', S', A' (and R0' when the device drew it).
        r1, s2, a2 = x[:R1_LEN], x[R1_LEN : R1_LEN + S_LEN], x[R1_LEN + S_LEN : X_LEN_REKEY]
        if enrol:
            r0 = x[X_LEN_REKEY:]
        else:
            assert rec.seed is not None
            r0 = rec.seed.r0
        # S25: compare S with S' (constant time) and check A'.
        s_ok = ct_equal(s2, msg.s)
        a_expected = authenticator(
            akey,
            suite=suite_name,
            device_id=rec.device_id,
            epoch=msg.epoch,
            seed_id=msg.seed_id,
            nd=self._nd,
            ns=self._ns,
            r1=r1,
            s=msg.s,
            r0=r0 if enrol else b"",
        )
        a_ok = ct_equal(a2, a_expected)
        # S26: derive K from the seed this server issued (or the window's R0) and R1.
        key = derive_k(
            r0,
            r1,
            suite=suite_name,
            device_id=rec.device_id,
            epoch=msg.epoch,
            seed_id=msg.seed_id,
            server_fp=self.ctx.server_fp(suite_name),
            prev_key_id=prev_key_id,
            h203=h203,
        )
        if not (opened and s_ok and a_ok):
            cause = (
                NgCause.DECRYPT_FAILED
                if not opened
                else NgCause.S_MISMATCH
                if not s_ok
                else NgCause.BAD_AUTHENTICATOR
            )
            self._ng(msg, cause, rec if enrol else None)
            return
        # At most one pending exchange per device: a new one replaces any other.
        pending = PendingExchange(
            key=key,
            epoch=msg.epoch,
            seed_id=msg.seed_id,
            ns=self._ns,
            created_at=db_now,
            enrol=enrol,
        )
        self._store(
            rec.with_(pending=pending),
            AuditEntry(kind="204_ok", device_id=rec.device_id, epoch=msg.epoch),
        )
        if enrol:
            # The commit must find the record's connection generation unchanged.
            self._my_gen = rec.conn_gen
        self._exchange = pending
        self._send_plain(Msg204(ok=True, mac=key.mac(L_204_OK, h203, self._nd, self._ns)))
        assert self._channel is not None
        self._channel.install_recv(key, msg.epoch)
        self._timers.pop("handshake", None)
        self._timers["s27"] = now + self.ctx.s27_timeout
        self._set_state(ServerState.PENDING_205, targets)

    def _step_s21_cheap_checks(
        self, msg: Msg203, rec: DeviceRecord | None, enrol: bool, db_now: float
    ) -> NgCause | None:
        if rec is None:
            return NgCause.UNREGISTERED
        if rec.revoked:
            return NgCause.REVOKED
        # The suite in force: the record's for an enrolment, the seed's for a rekey.
        expected = rec.suite if enrol else rec.suite_in_force
        if msg.suite != expected or expected not in self.ctx.keys:
            return NgCause.WRONG_SUITE
        try:
            get_suite(expected)
        except UnsupportedSuite:
            return NgCause.WRONG_SUITE
        if enrol:
            w = rec.window
            if w is None or w.expires_at <= db_now or w.failures >= self.ctx.window_max_failures:
                return NgCause.WINDOW_CLOSED
        if msg.epoch != rec.epoch + 1:
            return NgCause.BAD_EPOCH
        if not enrol and (rec.seed is None or not ct_equal(msg.seed_id, rec.seed.seed_id)):
            return NgCause.STALE_SEED
        return None

    def _ng(self, msg: Msg203, cause: NgCause, rec: DeviceRecord | None) -> None:
        """204 NG: the same bytes whatever the cause; the cause goes to the audit log."""
        if rec is not None and rec.window is not None:
            # Every failure after decryption counts against the window (REVIEW F10, F20).
            failures = rec.window.failures + 1
            closed = failures >= self.ctx.window_max_failures
            window = None if closed else _replace_window(rec, failures)
            audit = [
                AuditEntry(
                    kind="204_ng", device_id=rec.device_id, epoch=msg.epoch, cause=int(cause)
                )
            ]
            if closed:
                audit.append(
                    AuditEntry(
                        kind="window_closed",
                        device_id=rec.device_id,
                        epoch=rec.epoch,
                        detail="too many failures",
                    )
                )
            self._store(rec.with_(window=window), *audit)
        assert self.device_id is not None
        self._events.append(ExchangeFailed(device_id=self.device_id, epoch=msg.epoch, cause=cause))
        self._out.append(NG_204)
        self._closed(ErrorCode.NORMAL, by_peer=False, reason=f"204 NG {cause.name}")

    def _handle_205(
        self,
        msg: Msg205,
        sealed_epoch: int,
        rec: DeviceRecord | None,
        now: float,
        targets: tuple[State, ...],
    ) -> None:
        ex = self._exchange
        if self.state is not ServerState.PENDING_205 or ex is None:
            # Rule 5: S27 fired first. Refuse; the device reconnects and rule 1 settles it.
            raise ExchangeExpired("no pending exchange")
        if msg.epoch != ex.epoch or sealed_epoch != ex.epoch:
            raise AuthenticationFailed("205 not under the new key")
        if rec is None or rec.revoked:
            raise HandshakeRefused("revoked")
        if rec.conn_gen != self._my_gen:
            raise ConflictError("fenced by a newer connection")
        p = rec.pending
        if p is None or not ct_equal(p.ns, self._ns) or not ct_equal(p.key.key_id, ex.key.key_id):
            raise ExchangeExpired("the pending exchange is gone")
        db_now = self._db_time(now)
        if db_now - p.created_at > self.ctx.s27_timeout:
            # S27 from stored time: enforced whichever process reads the 205.
            self._store(
                rec.with_(pending=None),
                AuditEntry(kind="exchange_expired", device_id=rec.device_id, epoch=p.epoch),
            )
            raise ExchangeExpired("205 after S27")
        if p.enrol and rec.window is None:
            raise ExchangeExpired("enrolment window closed")
        if not p.enrol and (rec.seed is None or not ct_equal(rec.seed.seed_id, p.seed_id)):
            raise ExchangeExpired("seed already consumed")
        # S28: commit. The consumed seed and its one-time private key are replaced in the
        # same compare-and-set. S29: a fresh R0 and one-time key for the next exchange.
        # The new key's suite is the one its 203 used; the profile's (maybe another) goes out
        # with the new seed in 206 and is used from the next 203 on.
        key_suite = rec.suite if p.enrol else rec.suite_in_force
        seed = self._step_s29_issue_seed(rec)
        order = rec.order_epoch
        if order is not None and p.epoch > order:
            order = None  # any commit past the superseded epoch clears the order
        new = rec.with_(
            suite=key_suite,
            next_suite=None if seed.suite == key_suite else seed.suite,
            epoch=p.epoch,
            key=p.key,
            key_created_at=db_now,
            prev_key=None if p.enrol else rec.key,
            window=None if p.enrol else rec.window,
            confirmed=rec.window.code_required if p.enrol and rec.window else rec.confirmed,
            seed=seed,
            owed_206=True,
            pending=None,
            order_epoch=order,
            conn_gen=rec.conn_gen + 1,
        )
        self._store(
            new,
            AuditEntry(
                kind="enrolled" if p.enrol else "rekeyed", device_id=rec.device_id, epoch=p.epoch
            ),
        )
        self._my_gen = new.conn_gen
        self._exchange = None
        assert self._channel is not None
        self._channel.install_send(p.key, p.epoch)
        self._epoch = p.epoch
        self._authenticated = True
        self._timers.pop("s27", None)
        self._set_state(ServerState.OPEN, targets)
        self._events.append(
            KeyEstablished(
                device_id=rec.device_id,
                epoch=p.epoch,
                key_id=p.key.key_id,
                sas=p.key.sas(),
                enrolment=p.enrol,
            )
        )
        self._send_206(new)

    def _step_s29_issue_seed(self, rec: DeviceRecord) -> IssuedSeed:
        """S29: a fresh R0, its seed_id and (HPKE suites) the one-time key named by it, in
        the profile's suite, with the profile's policy and TLS setting."""
        suite_name = rec.profile_suite
        if suite_name not in self.ctx.keys:
            # The admin API accepts only enabled suites; one disabled since then (a restart
            # with fewer --suites) must not strand the device: it stays on its key's suite.
            suite_name = rec.suite
        suite = get_suite(suite_name)
        otk_priv = otk_pub = None
        if suite.one_time_keys:
            otk = suite.generate()
            otk_priv, otk_pub = suite.private_bytes(otk), otk.public_key.raw
        return IssuedSeed(
            r0=self._entropy(SEED_LEN),
            seed_id=self._entropy(SEED_ID_LEN),
            otk_private=otk_priv,
            otk_public=otk_pub,
            policy=rec.policy,
            suite=suite_name,
            tls_reduced=rec.tls_reduced,
        )

    def _send_206(self, rec: DeviceRecord) -> None:
        """S29/S30: 206, sealed under the key of ``rec.epoch``; its content is fixed at commit."""
        seed = rec.seed
        assert seed is not None
        # The profile: a suite other than the key's comes with its long-term server key.
        moved = seed.suite not in ("", rec.suite)
        self._send_sealed(
            Msg206(
                epoch=rec.epoch,
                r0=seed.r0,
                seed_id=seed.seed_id,
                otk=seed.otk_public,
                policy=seed.policy.to_msg(),
                suite=seed.suite if moved else None,
                server_key=self.ctx.keys[seed.suite].public_key.raw if moved else None,
                tls_reduced=True if seed.tls_reduced else None,
            )
        )

    def _handle_ack_206(self, msg: Ack206, rec: DeviceRecord | None, now: float) -> None:
        rec = self._check_live(rec)
        seed = rec.seed
        if rec.owed_206 and msg.epoch == rec.epoch and seed and ct_equal(msg.seed_id, seed.seed_id):
            # Rule 3: only this acknowledgement clears the owed 206.
            self._store(
                rec.with_(owed_206=False),
                AuditEntry(kind="206_acked", device_id=rec.device_id, epoch=rec.epoch),
            )
            self._events.append(
                SeedStored(device_id=rec.device_id, epoch=rec.epoch, seed_id=msg.seed_id)
            )
        # A duplicate or stale acknowledgement changes nothing.

    def _handle_seed_request(self, msg: SeedRequest, rec: DeviceRecord | None, now: float) -> None:
        """There is no seedless rekey: a keyed device without a usable seed asks for one."""
        rec = self._check_live(rec)
        if msg.epoch != rec.epoch:
            return
        if not rec.owed_206:
            rec = rec.with_(seed=self._step_s29_issue_seed(rec), owed_206=True)
            self._store(
                rec, AuditEntry(kind="seed_reissued", device_id=rec.device_id, epoch=rec.epoch)
            )
        self._send_206(rec)

    # -- timers -------------------------------------------------------------------------

    def _on_timer(self, name: str, now: float) -> None:
        if name == "handshake":
            raise HandshakeTimeout("handshake deadline")
        if name == "s27":
            self._park(self._step_s27_expire)

    def _step_s27_expire(self, rec: DeviceRecord | None, now: float) -> None:
        """S27: no 205 in time: drop the pending exchange and spend nothing more on it."""
        ex = self._exchange
        self._exchange = None
        if ex is None:  # pragma: no cover - the timer is armed only with an exchange
            return
        if rec is not None and rec.pending is not None and ct_equal(rec.pending.ns, self._ns):
            self._store(
                rec.with_(pending=None),
                AuditEntry(kind="exchange_expired", device_id=rec.device_id, epoch=ex.epoch),
            )
        assert self.device_id is not None
        self._events.append(ExchangeExpiredEvent(device_id=self.device_id, epoch=ex.epoch))
        if ex.enrol:
            raise HandshakeTimeout("enrolment 205 deadline")
        self.state = ServerState.OPEN

    def _check_sealed(self, mtype: MsgType, epoch: int) -> None:
        ex = self._exchange
        if ex is not None and epoch == ex.epoch and mtype is not MsgType.M205:
            # Nothing travels under a pending key before its 205 confirms it.
            raise UnexpectedMessage("only 205 may open a pending key")

    # -- application data ---------------------------------------------------------------

    def _check_app_allowed(self, now: float, *, outgoing: bool) -> None:
        rec = self._record
        if rec is None or not rec.confirmed:
            raise NotConfirmed("device enrolled without a code is not confirmed yet")
        if rec.key_created_at + rec.policy_in_force.hard_age_s <= self._db_time(now):
            raise KeyExpired("key past its hard age limit; rekey first")

    # -- helpers ------------------------------------------------------------------------

    def _check_live(self, rec: DeviceRecord | None) -> DeviceRecord:
        if rec is None or rec.revoked:
            raise HandshakeRefused("revoked")
        if rec.conn_gen != self._my_gen:
            raise ConflictError("fenced by a newer connection")
        return rec

    def _store(self, new: DeviceRecord, *audit: AuditEntry) -> None:
        old = self._record
        assert old is not None and new.version == old.version + 1
        self._events.append(StoreRecord(expected_version=old.version, record=new, audit=audit))
        self._record = new

    def _db_time(self, now: float) -> float:
        return self._db_now + (now - self._db_ref)

    def _new_channel(self) -> Channel:
        assert self.device_id is not None
        return Channel(
            device_id=self.device_id,
            nd=self._nd,
            ns=self._ns,
            is_device=False,
            cipher=self.ctx.cipher,
            max_records=self.ctx.max_records,
        )


def _hello_suite_ok(rec: DeviceRecord, suite: str) -> bool:
    """HELLO names the device's keystore suite: its key's, or the one a 206 moved it to."""
    return suite in (rec.suite, rec.suite_in_force)


def _replace_window(rec: DeviceRecord, failures: int) -> Window:
    assert rec.window is not None
    return replace(rec.window, failures=failures)


__all__ = ["NG_204", "ServerContext", "ServerProtocol"]
