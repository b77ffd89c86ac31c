"""S21-S26: every 204 NG path.

Each case asserts that the 204 NG on the wire is the same bytes whatever the cause, that the
true cause reaches the server's events (audit and metrics only), and that stored state is
untouched (except the window's failure count, which every failure after decryption raises).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import Conn, Net

from keyseed.crypto import get_suite
from keyseed.crypto.schedule import SharedKey, authenticator, p_info, setup_code_key
from keyseed.protocol import admin
from keyseed.protocol.errors import ErrorCode, NgCause
from keyseed.protocol.events import ConnectionClosed, ExchangeFailed, KeyEstablished
from keyseed.protocol.messages import Msg203
from keyseed.protocol.server import NG_204

NG_WIRE = bytes.fromhex("830118cca1626f6bf4")


def test_ng_bytes_are_the_documented_constant() -> None:
    assert NG_204 == NG_WIRE


def make_203(
    c: Conn,
    *,
    enrol: bool,
    epoch: int | None = None,
    suite: str | None = None,
    seed_id: bytes | None = None,
    s_inside: bytes | None = None,
    akey: bytes | None = None,
    tamper_p: bool = False,
) -> Msg203:
    """Build a 203 the way S04-S07 do, with one thing changed."""
    net, dev = c.net, c.device
    ks = net.ks
    st = get_suite(ks.suite)
    r1, s = b"\x11" * 32, b"\x22" * 16
    if enrol:
        r0, sid = b"\x33" * 32, seed_id or b"\x44" * 16
        ep = epoch if epoch is not None else net.rec.epoch + 1
        pub = st.load_public(ks.server_key)
        key = akey or ks.k_code or setup_code_key(ks.device_id, "12345678")
    else:
        assert ks.seed is not None and ks.key is not None
        r0, sid = ks.seed.r0, seed_id or ks.seed.seed_id
        ep = epoch if epoch is not None else ks.epoch + 1
        pub = st.load_public(ks.seed.otk) if ks.seed.otk else st.load_public(ks.server_key)
        key = akey or ks.key.continuity
    nd, ns = dev._nd, dev._ns
    a = authenticator(key, suite=ks.suite, device_id=ks.device_id, epoch=ep, seed_id=sid,
                      nd=nd, ns=ns, r1=r1, s=s, r0=r0 if enrol else b"")  # fmt: skip
    x = r1 + (s_inside or s) + a + (r0 if enrol else b"")
    info = p_info(suite=ks.suite, device_id=ks.device_id, epoch=ep, seed_id=sid, nd=nd, ns=ns)
    p = st.encrypt(pub, x, info)
    if tamper_p:
        p = p[:-1] + bytes([p[-1] ^ 1])
    return Msg203(device_id=ks.device_id, epoch=ep, suite=suite or ks.suite, seed_id=sid, s=s, p=p)


def enrol_conn(net: Net) -> Conn:
    """A keyless device's connection, handshake done, its own 203 held back."""
    c = net.connect()
    c.to_s()  # HELLO
    c.to_d()  # HELLO_ACK -> ENROL, and the device's own 203 is queued
    c.to_server.clear()
    return c


def rekey_conn(net: Net) -> Conn:
    c = net.connect()
    c.run()
    return c


def send_203(c: Conn, msg: Msg203, *, sealed: bool) -> None:
    data = c.device._channel.seal(msg) if sealed else msg.encode()  # type: ignore[union-attr]
    c.to_server.append(data)
    c.to_s()


def ng_cause(c: Conn) -> NgCause | None:
    causes = [e.cause for e in c.server_events if isinstance(e, ExchangeFailed)]
    assert len(causes) == 1, c.server_events
    return causes[0]


def assert_ng(c: Conn, cause: NgCause) -> None:
    assert c.sent_by_server[-1] == NG_WIRE, "NG must be the same bytes for every cause"
    assert ng_cause(c) is cause
    assert c.server.close_expected()
    assert not [e for e in c.server_events if isinstance(e, KeyEstablished)]


class TestEnrolmentNg:
    """NG for a keyless device's 203 (S21 cheap checks, then S22-S26)."""

    def test_unregistered(self) -> None:
        net = Net(enrol=False)
        net.store.records.clear()
        c = enrol_conn(net)
        send_203(c, make_203(c, enrol=True, epoch=1), sealed=False)
        assert_ng(c, NgCause.UNREGISTERED)
        assert net.store.records == {}

    def test_window_closed(self) -> None:
        net = Net(enrol=False)
        net.clock.advance(700)
        before = net.rec
        c = enrol_conn(net)
        send_203(c, make_203(c, enrol=True), sealed=False)
        assert_ng(c, NgCause.WINDOW_CLOSED)
        assert net.rec == before

    def test_revoked(self) -> None:
        net = Net(enrol=False)
        net.put(admin.revoke(net.rec), net.rec)
        before = net.rec
        c = enrol_conn(net)
        send_203(c, make_203(c, enrol=True), sealed=False)
        assert_ng(c, NgCause.REVOKED)
        assert net.rec == before

    def test_wrong_suite(self) -> None:
        net = Net(enrol=False)
        before = net.rec
        c = enrol_conn(net)
        send_203(c, make_203(c, enrol=True, suite="rsa-oaep"), sealed=False)
        assert_ng(c, NgCause.WRONG_SUITE)
        assert net.rec == before

    def test_bad_epoch(self) -> None:
        net = Net(enrol=False)
        before = net.rec
        c = enrol_conn(net)
        send_203(c, make_203(c, enrol=True, epoch=5), sealed=False)
        assert_ng(c, NgCause.BAD_EPOCH)
        assert net.rec == before

    @pytest.mark.parametrize(
        ("change", "cause"),
        [
            ({"tamper_p": True}, NgCause.DECRYPT_FAILED),
            ({"s_inside": b"\x99" * 16}, NgCause.S_MISMATCH),
            ({"akey": setup_code_key("oven-1", "00000000")}, NgCause.BAD_AUTHENTICATOR),
        ],
        ids=["tampered-P", "wrong-S", "wrong-setup-code"],
    )
    def test_after_decryption_counts_against_the_window(
        self, change: dict[str, object], cause: NgCause
    ) -> None:
        net = Net(enrol=False)
        before = net.rec
        c = enrol_conn(net)
        send_203(c, make_203(c, enrol=True, **change), sealed=False)  # type: ignore[arg-type]
        assert_ng(c, cause)
        assert net.rec.window is not None and before.window is not None
        assert net.rec.window.failures == 1
        assert replace(net.rec, version=before.version, window=before.window) == before
        assert net.rec.key is None and net.rec.pending is None


class TestRekeyNg:
    """NG for a keyed device's 203 on its authenticated connection."""

    def _check(self, net: Net, c: Conn, msg: Msg203, cause: NgCause) -> None:
        before = net.rec
        send_203(c, msg, sealed=True)
        assert_ng(c, cause)
        assert net.rec == before, "a refused rekey changes nothing stored"

    def test_wrong_suite(self) -> None:
        net = Net()
        c = rekey_conn(net)
        self._check(net, c, make_203(c, enrol=False, suite="rsa-oaep"), NgCause.WRONG_SUITE)

    def test_bad_epoch(self) -> None:
        net = Net()
        c = rekey_conn(net)
        self._check(net, c, make_203(c, enrol=False, epoch=3), NgCause.BAD_EPOCH)

    def test_unknown_seed(self) -> None:
        net = Net()
        c = rekey_conn(net)
        msg = make_203(c, enrol=False, seed_id=b"\x55" * 16)
        self._check(net, c, msg, NgCause.STALE_SEED)

    def test_reused_seed(self) -> None:
        net = Net()
        c = rekey_conn(net)
        old_seed = net.ks.seed
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        assert net.ks.epoch == 2
        c = rekey_conn(net)
        net.disk.keystore = net.ks.with_(seed=old_seed)  # replay the consumed seed
        msg = make_203(c, enrol=False)
        self._check(net, c, msg, NgCause.STALE_SEED)

    def test_tampered_p(self) -> None:
        net = Net()
        c = rekey_conn(net)
        self._check(net, c, make_203(c, enrol=False, tamper_p=True), NgCause.DECRYPT_FAILED)

    def test_wrong_s(self) -> None:
        net = Net()
        c = rekey_conn(net)
        msg = make_203(c, enrol=False, s_inside=b"\x98" * 16)
        self._check(net, c, msg, NgCause.S_MISMATCH)

    def test_wrong_authenticator(self) -> None:
        net = Net()
        c = rekey_conn(net)
        msg = make_203(c, enrol=False, akey=SharedKey(b"\x07" * 32).continuity)
        self._check(net, c, msg, NgCause.BAD_AUTHENTICATOR)

    def test_revoked_device_is_refused_at_the_handshake(self) -> None:
        net = Net()
        net.put(admin.revoke(net.rec), net.rec)
        before = net.rec
        c = net.connect()
        c.run()
        closes = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
        assert closes and closes[0].code is ErrorCode.HANDSHAKE_REFUSED
        assert net.rec == before and net.ks.epoch == 1


def test_public_key_alone_never_yields_a_key() -> None:
    """A 203 built with the server's public key alone (no current key, no open window)."""
    net = Net()
    attacker = Net(enrol=False, ctx=net.ctx)
    attacker.store = net.store  # the attacker talks to the same server as the device
    attacker.disk.keystore = attacker.ks.with_(k_code=setup_code_key("oven-1", ""))
    before = net.rec
    c = attacker.connect()
    c.run()
    assert c.sent_by_server[-1] == NG_WIRE
    assert ng_cause(c) is NgCause.WINDOW_CLOSED
    assert net.rec == before


def test_205_after_s27_is_refused_and_changes_nothing() -> None:
    net = Net()
    c = rekey_conn(net)
    c.device_do(lambda d, now: d.request_rekey(now))
    c.to_s()  # 203 -> 204 OK, pending stored
    assert net.rec.pending is not None
    net.clock.advance(31)  # S27 fires on the server (the device is just slow)
    c.server.handle_timer(net.clock.now)
    c.flush_server()
    assert net.rec.pending is None
    before = net.rec
    c.run()  # 204 reaches the device, its 205 arrives late
    closes = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
    assert closes[-1].code is ErrorCode.EXCHANGE_EXPIRED
    assert net.rec == before and net.rec.epoch == 1
