"""Per-device profiles (docs/protocol.md, "Profiles"): suite, rekey policy and the TLS
setting, set on the server's record, delivered in the next 206, used from the 203 after it.

Both real cores over the in-memory link of helpers.py, with the three suites' long-term keys.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from helpers import ALL_SUITES, Conn, Net, shared_context

from keyseed.crypto import fingerprint, get_suite
from keyseed.protocol import DeviceProtocol, ServerProtocol
from keyseed.protocol.device import DeviceConfig
from keyseed.protocol.errors import ErrorCode, MalformedMessage, NgCause
from keyseed.protocol.events import (
    AppDataReceived,
    ConnectionClosed,
    ExchangeFailed,
    KeyEstablished,
)
from keyseed.protocol.messages import (
    Hello,
    HelloAck,
    Msg206,
    MsgType,
    Policy,
    SealedFrame,
    decode_frame,
    encode_sealed,
)
from keyseed.protocol.policy import RekeyPolicy
from keyseed.protocol.records import DeviceRecord
from keyseed.protocol.server import ServerContext

SHORT = RekeyPolicy(soft_messages=3, hard_messages=10, soft_age_s=60, hard_age_s=600)


def set_profile(net: Net, **profile: object) -> DeviceRecord:
    rec = net.rec
    new = rec.with_profile(**profile)  # type: ignore[arg-type]
    assert new is not rec
    net.put(new, rec)
    return new


def rekey(net: Net) -> list[bytes]:
    """A rekey on a fresh connection, run to the end; the frames the device sent."""
    c = net.connect()
    c.run()
    c.device_do(lambda d, now: d.request_rekey(now))
    c.run()
    assert net.converged()
    return c.sent_by_device


class TestPolicyChange:
    """A new rekey policy waits for the next 206 (S29), then the device follows it (S03)."""

    def test_policy_reaches_the_device_with_the_next_206(self) -> None:
        net = Net()
        assert net.ks.policy != SHORT
        set_profile(net, policy=SHORT)
        # Not in force yet: the seed the device holds was issued with the old one.
        assert net.rec.policy_in_force != SHORT
        c = net.connect()
        c.run()
        assert net.ks.policy != SHORT
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        assert net.ks.policy == SHORT and net.rec.policy_in_force == SHORT
        # The device now rekeys by itself after 3 messages.
        epoch = net.ks.epoch
        for i in range(3):
            c.device_do(lambda d, now, i=i: d.send_app(b"m%d" % i, now))
            c.run()
        assert net.ks.epoch == epoch + 1


class TestSuiteChange:
    """A suite change: the 206 of the next exchange carries the new suite, the server's
    long-term key of it and a one-time key of it; the 203 after that uses it."""

    @pytest.mark.parametrize(
        ("old", "new"),
        list(itertools.permutations(ALL_SUITES, 2)),
        ids=lambda s: s,
    )
    def test_suite_moves_at_the_next_exchange(self, old: str, new: str) -> None:
        net = Net(suite=old)
        ctx = net.ctx
        pinned = fingerprint(old, net.ks.server_key)
        set_profile(net, suite=new)
        assert net.rec.suite == old and net.rec.next_suite == new
        assert net.rec.suite_in_force == old
        # Exchange 1 (epoch 2) still in the old suite; its 206 moves the device.
        rekey(net)
        ks, rec = net.ks, net.rec
        assert rec.suite == old and rec.suite_in_force == new
        assert ks.suite == new
        assert ks.server_key == ctx.keys[new].public_key.raw
        assert ks.pinned_fp == pinned
        assert (ks.seed is not None) and ((ks.seed.otk is None) == (new == "rsa-oaep"))
        if ks.seed.otk is not None:
            get_suite(new).load_public(ks.seed.otk)
        # Exchange 2 (epoch 3): the 203 is in the new suite; the record follows.
        before = net.ks.epoch
        rekey(net)
        assert net.ks.epoch == before + 1
        assert net.rec.suite == new and net.rec.next_suite is None
        assert net.rec.suite_in_force == new
        # Application data under the new key, and one more exchange in the new suite.
        c = net.connect()
        c.run()
        c.device_do(lambda d, now: d.send_app(b"after the move", now))
        c.run()
        assert any(type(e).__name__ == "AppDataReceived" for e in c.server_events)
        rekey(net)
        assert net.rec.suite == new and net.ks.suite == new

    def test_lost_206_is_redelivered_and_moves_the_device(self) -> None:
        """Rule 3 with a profile: the 206 carrying the new suite is lost; the device promotes
        its key on the next HELLO_ACK (old suite in HELLO), gets the owed 206, moves."""
        net = Net()
        set_profile(net, suite="hpke-mlkem768-x25519")
        c = net.connect()
        c.run()
        c.device_do(lambda d, now: d.request_rekey(now))
        # 203 -> 204 -> 205, then drop the 206.
        c.to_s()
        c.to_d()
        c.to_s()
        assert c.to_device
        c.drop_all()
        assert net.ks.suite == "hpke-x25519"
        net.settle()
        assert net.converged()
        assert net.ks.suite == "hpke-mlkem768-x25519"
        rekey(net)
        assert net.rec.suite == "hpke-mlkem768-x25519"

    def test_hello_in_the_new_suite_before_the_ack(self) -> None:
        """The device stored the 206 (new suite) but its ACK_206 was lost: its next HELLO
        names the new suite while the record's key is still the old suite's."""
        net = Net()
        set_profile(net, suite="rsa-oaep")
        c = net.connect()
        c.run()
        c.device_do(lambda d, now: d.request_rekey(now))
        for _ in range(2):  # 203, 204, 205, 206
            c.to_s()
            c.to_d()
        assert net.ks.suite == "rsa-oaep"
        assert [decode_frame(f).type for f in c.to_server] == [MsgType.ACK_206]
        c.drop_all()  # the ACK_206
        assert net.rec.owed_206 and net.rec.suite == "hpke-x25519"
        net.settle()
        assert net.converged() and not net.rec.owed_206
        rekey(net)
        assert net.rec.suite == "rsa-oaep"

    def test_203_in_the_old_suite_after_the_move_gets_ng(self) -> None:
        """The server accepts the 203 only in the suite in force (the seed's)."""
        net = Net()
        set_profile(net, suite="rsa-oaep")
        rekey(net)
        assert net.ks.seed is not None and net.ks.seed.otk is None
        # A device that ignored the move: its keystore back on the old suite and key.
        ks = net.ks
        old_key = net.ctx.keys["hpke-x25519"].public_key.raw
        net.disk.keystore = ks.with_(suite="hpke-x25519", server_key=old_key)
        c = net.connect()
        c.run()
        epoch = net.rec.epoch
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        failed = [e for e in c.server_events if isinstance(e, ExchangeFailed)]
        assert failed and failed[0].cause is NgCause.WRONG_SUITE
        assert net.rec.epoch == epoch
        assert not any(isinstance(e, KeyEstablished) for e in c.server_events)

    def test_changing_back_before_the_next_exchange(self) -> None:
        net = Net()
        rec = set_profile(net, suite="rsa-oaep")
        back = rec.with_profile(suite="hpke-x25519")
        net.put(back, rec)
        assert net.rec.next_suite is None
        rekey(net)
        assert net.ks.suite == "hpke-x25519" and net.ks.pinned_fp is None

    def test_a_server_key_of_the_wrong_suite_is_refused_and_stores_nothing(self) -> None:
        """A 206 whose server key is not a key of the named suite closes the connection
        with MALFORMED; the keystore keeps the old suite, the device never acknowledges."""
        good = shared_context()
        bad = ServerContext(
            keys={
                "hpke-x25519": good.keys["hpke-x25519"],
                # An X25519 key posing as the hybrid suite's long-term key.
                "hpke-mlkem768-x25519": get_suite("hpke-x25519").generate(),
            },
            k_reject=good.k_reject,
        )
        net = Net(ctx=bad)
        set_profile(net, suite="hpke-mlkem768-x25519")
        c = net.connect()
        c.run()
        before = net.ks
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        closed = [e for e in c.device_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[-1].code is ErrorCode.MALFORMED
        ks = net.ks
        assert ks.suite == "hpke-x25519" and ks.server_key == before.server_key
        assert ks.pinned_fp is None
        assert net.rec.owed_206  # never acknowledged


class TestTlsReducedSetting:
    def test_flag_reaches_the_device_with_the_next_206(self) -> None:
        net = Net()
        set_profile(net, tls_reduced=True)
        assert not net.rec.tls_reduced_in_force and not net.ks.tls_reduced
        rekey(net)
        assert net.rec.tls_reduced_in_force and net.ks.tls_reduced
        set_profile(net, tls_reduced=False)
        rekey(net)
        assert not net.rec.tls_reduced_in_force and not net.ks.tls_reduced


class TestProfileRecord:
    def test_unchanged_profile_is_the_same_record(self) -> None:
        rec = DeviceRecord(device_id="d", suite="hpke-x25519")
        assert rec.with_profile() is rec
        assert rec.with_profile(suite="hpke-x25519", tls_reduced=False) is rec
        assert rec.with_profile(policy=rec.policy) is rec

    def test_profile_round_trips_through_the_encoding(self) -> None:
        rec = DeviceRecord(device_id="d", suite="hpke-x25519").with_profile(
            suite="rsa-oaep", policy=SHORT, tls_reduced=True
        )
        assert rec.profile_suite == "rsa-oaep" and rec.suite_in_force == "hpke-x25519"
        assert DeviceRecord.decode(rec.encode()) == rec

    def test_soft_above_hard_is_refused(self) -> None:
        with pytest.raises(ValueError, match="soft"):
            RekeyPolicy(soft_messages=10, hard_messages=5)
        with pytest.raises(ValueError, match="soft"):
            RekeyPolicy(soft_age_s=0)


class TestMsg206Profile:
    def _base(self) -> dict[str, object]:
        return {
            "epoch": 2,
            "r0": bytes(32),
            "seed_id": bytes(16),
            "otk": None,
            "policy": Policy(soft_messages=1, hard_messages=2, soft_age_s=3, hard_age_s=4),
        }

    def test_suite_needs_its_server_key(self) -> None:
        with pytest.raises(MalformedMessage, match="server key"):
            Msg206(**self._base(), suite="rsa-oaep")  # type: ignore[arg-type]
        with pytest.raises(MalformedMessage, match="server key"):
            Msg206(**self._base(), server_key=b"k")  # type: ignore[arg-type]

    def test_tls_reduced_is_absent_or_true(self) -> None:
        with pytest.raises(MalformedMessage, match="only when true"):
            Msg206(**self._base(), tls_reduced=False)  # type: ignore[arg-type]
        msg = Msg206(**self._base(), tls_reduced=True)  # type: ignore[arg-type]
        assert Msg206.decode(msg.encode()) == msg


class TestTlsReduction:
    """The TLS reduction on one connection: asked for in HELLO (device over verified TLS,
    agreeing, profile in force), granted in HELLO_ACK (server sees TLS, profile in force),
    both covered by the handshake MACs. Then APP frames travel authenticated-only; every
    other message stays encrypted."""

    SECRET = b"secret recipe: 180C for 25 min"

    def _net(self) -> Net:
        net = Net()
        set_profile(net, tls_reduced=True)
        rekey(net)
        assert net.ks.tls_reduced
        return net

    def _connect(self, net: Net, *, device_ok: bool = True, server_tls: bool = True) -> Conn:
        now = net.clock.now
        dev = DeviceProtocol(
            net.disk.keystore, now=now, config=DeviceConfig(tls_reduced_ok=device_ok)
        )
        srv = ServerProtocol(net.ctx, now=now, tls=server_tls)
        c = Conn(net, dev, srv)
        net.conns.append(c)
        dev.connect(now)
        c.flush_device()
        return c

    def _app_frames(self, c: Conn, data: bytes) -> tuple[bytes, bytes]:
        """An APP frame each way (the server's is its reply); both delivered."""
        c.device_do(lambda d, now: d.send_app(data, now))
        up = c.to_server[-1]
        c.run()
        assert any(getattr(e, "data", None) == data for e in c.server_events)
        c.server_do(lambda s, now: s.send_app(data, now))
        down = c.to_device[-1]
        c.run()
        assert any(getattr(e, "data", None) == data for e in c.device_events)
        return up, down

    def test_granted_app_data_is_authenticated_only(self) -> None:
        net = self._net()
        c = self._connect(net)
        c.run()
        assert c.device.tls_reduced and c.server.tls_reduced
        up, down = self._app_frames(c, self.SECRET)
        # The body is in clear inside the keyseed frame (TLS encrypts the connection).
        assert self.SECRET in up and self.SECRET in down
        # A rekey on the reduced connection: the 206 (R0, one-time key) stays encrypted.
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        assert net.converged() and c.device.tls_reduced
        assert net.ks.seed is not None
        assert not any(net.ks.seed.r0 in f for f in c.sent_by_server)
        up, _ = self._app_frames(c, self.SECRET + b" (epoch 3)")
        assert self.SECRET in up

    def test_tampered_authenticated_only_frame_closes(self) -> None:
        net = self._net()
        c = self._connect(net)
        c.run()
        c.device_do(lambda d, now: d.send_app(self.SECRET, now))
        frame = bytearray(c.to_server.pop())
        i = bytes(frame).index(self.SECRET)
        frame[i] ^= 0x01  # the clear body is authenticated all the same
        c.to_server.append(bytes(frame))
        c.run()
        closed = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[-1].code is ErrorCode.AUTH_FAILED
        assert not any(isinstance(e, AppDataReceived) for e in c.server_events)

    @pytest.mark.parametrize(
        ("device_ok", "server_tls", "profile"),
        [(False, True, True), (True, False, True), (True, True, False)],
        ids=["device-declines", "server-sees-no-tls", "profile-off"],
    )
    def test_no_reduction_without_all_three(
        self, device_ok: bool, server_tls: bool, profile: bool
    ) -> None:
        net = self._net()
        if not profile:
            set_profile(net, tls_reduced=False)
            rekey(net)
        c = self._connect(net, device_ok=device_ok, server_tls=server_tls)
        c.run()
        assert not c.device.tls_reduced and not c.server.tls_reduced
        up, down = self._app_frames(c, self.SECRET)
        assert self.SECRET not in up and self.SECRET not in down

    def test_a_request_added_in_flight_fails_the_handshake(self) -> None:
        """HELLO_ACK's MAC covers the HELLO the device sent: a request someone added is
        caught by the device."""
        net = self._net()
        c = self._connect(net, device_ok=False)
        hello = Hello.decode(c.to_server.popleft())
        forged = Hello(**{**_fields(hello), "tls_reduced": True})
        c.to_server.appendleft(forged.encode())
        c.run()
        closed = [e for e in c.device_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[-1].code in (ErrorCode.AUTH_FAILED, ErrorCode.UNEXPECTED_MESSAGE)
        assert not c.server.tls_reduced or c.server.state.name == "CLOSED"

    def test_a_grant_stripped_in_flight_fails_the_handshake(self) -> None:
        """FIN's MAC covers the HELLO_ACK the device received: a grant someone removed
        makes the server refuse the FIN."""
        net = self._net()
        c = self._connect(net)
        c.to_s()
        ack = HelloAck.decode(c.to_device.popleft())
        assert ack.tls_reduced is True
        c.to_device.appendleft(HelloAck(**{**_fields(ack), "tls_reduced": None}).encode())
        c.run()
        closed = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[-1].code is ErrorCode.AUTH_FAILED
        assert not any(isinstance(e, AppDataReceived) for e in c.server_events)

    def test_truncated_authenticated_only_frame_closes(self) -> None:
        net = self._net()
        c = self._connect(net)
        c.run()
        c.device_do(lambda d, now: d.send_app(self.SECRET, now))
        frame = decode_frame(c.to_server.pop())
        assert isinstance(frame, SealedFrame)
        c.to_server.append(encode_sealed(frame.type, frame.epoch, frame.seq, b"short"))
        c.run()
        closed = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[-1].code is ErrorCode.AUTH_FAILED

    def test_flags_are_absent_or_true(self) -> None:
        with pytest.raises(MalformedMessage, match="only when true"):
            Hello(device_id="d", suite="hpke-x25519", nd=bytes(32), tls_reduced=False)
        with pytest.raises(MalformedMessage, match="only keyed"):
            HelloAck(ns=bytes(32), epoch=0, tls_reduced=True)
        with pytest.raises(MalformedMessage, match="only when true"):
            HelloAck(ns=bytes(32), epoch=1, key_id=bytes(16), mac=bytes(32), tls_reduced=False)

    def test_enrolment_is_never_reduced(self) -> None:
        net = Net(enrol=False)
        set_profile(net, tls_reduced=True)
        c = self._connect(net)
        c.run()
        assert net.ks.epoch == 1 and not c.device.tls_reduced and not c.server.tls_reduced


def _fields(msg: object) -> dict[str, object]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}  # type: ignore[arg-type]
