"""Every flow of the scheme end to end between the two cores, in memory.

TestRegistration       201/202, the enrolment window, S01/S02
TestFirstEnrolment     203-206 with and without a setup code (SAS), ACK_206
TestConfirmation       207 (either side starts it), what 208/209 report
TestRekeyAtDevice      fig. 3: 301/302 then 203-206
TestRekeyByProxy       fig. 4: 401/402, 403/404 then 203-206
TestAutomaticRekey     S03 by message count and by key age; policy carried in 206
"""

from __future__ import annotations

import pytest
from helpers import ALL_SUITES, Net

from keyseed.crypto.schedule import setup_code_key
from keyseed.loopback import provision
from keyseed.protocol import admin
from keyseed.protocol.errors import ErrorCode, KeyExpired, NgCause
from keyseed.protocol.events import (
    AppDataReceived,
    ConnectionClosed,
    ExchangeFailed,
    KeyEstablished,
    PeerConfirmed,
    RekeyOrderAccepted,
    RekeyOrdered,
)
from keyseed.protocol.messages import Msg207
from keyseed.protocol.policy import RekeyPolicy
from keyseed.protocol.server import NG_204
from keyseed.protocol.states import DeviceState, ServerState


def closed(events: list[object]) -> ConnectionClosed:
    found = [e for e in events if isinstance(e, ConnectionClosed)]
    assert found, "connection did not close"
    return found[-1]


class TestRegistration:
    """201/202: registration opens a single-use window; S01/S02 only inside it."""

    def test_enrolment_inside_window(self) -> None:
        net = Net(enrol=False)
        c = net.connect()
        c.run()
        assert net.ks.key is not None and net.ks.key == net.rec.key
        assert net.rec.window is None, "the window is single use"
        assert c.device.state is DeviceState.OPEN and c.server.state is ServerState.OPEN

    def test_window_expired(self) -> None:
        net = Net(enrol=False)
        net.clock.advance(601)
        before = net.rec
        c = net.connect()
        c.run()
        assert NG_204 in c.sent_by_server
        assert [e.cause for e in c.server_events if isinstance(e, ExchangeFailed)] == [
            NgCause.WINDOW_CLOSED
        ]
        assert net.ks.key is None and net.rec == before

    def test_window_single_use(self) -> None:
        net = Net()  # enrolled: the window is consumed
        stranger = Net(enrol=False, ctx=net.ctx)
        stranger.store = net.store  # a second keyless device claiming the same ID
        c = stranger.connect()
        c.run()
        assert [e.cause for e in c.server_events if isinstance(e, ExchangeFailed)] == [
            NgCause.WINDOW_CLOSED
        ]
        assert net.rec.epoch == 1 and net.rec.key == net.ks.key

    def test_window_closes_after_ten_failures(self) -> None:
        net = Net(enrol=False)
        # The device holds the wrong code: every attempt fails its authenticator A.
        net.disk.keystore = net.ks.with_(k_code=setup_code_key(net.device_id, "87654321"))
        for attempt in range(10):
            c = net.connect()
            c.run()
            assert c.sent_by_server[-1] == NG_204
            assert net.rec.window is None or net.rec.window.failures == attempt + 1
        assert net.rec.window is None, "closed after 10 failures"
        audit = [a.kind for a in net.store.audit]
        assert audit.count("204_ng") == 10 and "window_closed" in audit
        # Even the right code is refused now: the admin must open a fresh window.
        net.disk.keystore = net.ks.with_(k_code=setup_code_key(net.device_id, "12345678"))
        c = net.connect()
        c.run()
        assert [e.cause for e in c.server_events if isinstance(e, ExchangeFailed)] == [
            NgCause.WINDOW_CLOSED
        ]
        assert net.rec.key is None

    def test_unregistered_id_gets_no_key_and_causes_no_write(self) -> None:
        net = Net(enrol=False, device_id="oven-9")
        net.store.records.clear()
        c = net.connect()
        c.run()
        assert net.store.records == {} and net.store.audit == []
        assert c.sent_by_server[-1] == NG_204
        assert [e.cause for e in c.server_events if isinstance(e, ExchangeFailed)] == [
            NgCause.UNREGISTERED
        ]
        assert net.ks.key is None

    def test_reregistration_after_revocation_keeps_epoch_growing(self) -> None:
        net = Net()
        net.put(admin.revoke(net.rec), net.rec)
        rec = admin.register(net.rec, device_id=net.device_id, suite="hpke-x25519",
                             setup_code="99887766", window_s=600, db_now=net.clock.now,
                             entropy=bytes)  # fmt: skip
        net.put(rec, net.rec)
        # The device is reset through its local setup endpoint with the fresh code.
        net.disk = provision(net.ctx, net.store, net.clock, net.device_id, setup_code="99887766")
        c = net.connect()
        c.run()
        assert net.rec.epoch == net.ks.epoch == 2, "epochs only grow"
        assert net.ks.key == net.rec.key


class TestFirstEnrolment:
    """S01-S11 / S21-S30 for a keyless device."""

    @pytest.mark.parametrize("suite", ALL_SUITES)
    def test_with_setup_code(self, suite: str) -> None:
        net = Net(suite=suite)
        assert net.rec.confirmed, "a code-authenticated enrolment is confirmed"
        assert net.ks.seed is not None and net.rec.seed is not None
        assert net.ks.seed.seed_id == net.rec.seed.seed_id
        assert not net.rec.owed_206, "ACK_206 cleared the owed 206"
        assert net.ks.k_code is None, "the code key is dropped once enrolled"
        assert (net.ks.seed.otk is not None) == (suite != "rsa-oaep")

    def test_without_code_stays_unconfirmed_until_sas_compared(self) -> None:
        net = Net(setup_code=None)
        c = net.conns[0]
        dev_sas = [e.sas for e in c.device_events if isinstance(e, KeyEstablished)]
        srv_sas = [e.sas for e in c.server_events if isinstance(e, KeyEstablished)]
        assert dev_sas == srv_sas and len(dev_sas[0]) == 6
        assert not net.rec.confirmed
        c.device_do(lambda d, now: d.send_app(b"hello", now))
        c.run()
        assert closed(c.server_events).code is ErrorCode.NOT_CONFIRMED
        net.put(admin.confirm(net.rec), net.rec)
        c = net.connect()
        c.run()
        c.device_do(lambda d, now: d.send_app(b"hello", now))
        c.run()
        assert [e.data for e in c.server_events if isinstance(e, AppDataReceived)] == [b"hello"]


class TestConfirmation:
    """207 arrival confirmation, from either side."""

    @pytest.mark.parametrize("side", ["server", "device"])
    def test_ping_pong(self, side: str) -> None:
        net = Net()
        c = net.connect()
        c.run()
        if side == "server":
            c.server_do(lambda s, now: s.ping(now))
        else:
            c.device_do(lambda d, now: d.ping(now))
        c.to_s() if side == "device" else c.to_d()
        net.clock.advance(0.25)
        c.run()
        events = c.server_events if side == "server" else c.device_events
        confirmed = [e for e in events if isinstance(e, PeerConfirmed)]
        assert len(confirmed) == 1
        assert confirmed[0].rtt == pytest.approx(0.25) and confirmed[0].epoch == 1

    def test_unsolicited_pong_is_ignored(self) -> None:
        net = Net()
        c = net.connect()
        c.run()
        c.device._send_sealed(Msg207(pong=True, token=b"12345678"))
        c.flush_device()
        c.run()
        assert not [e for e in c.server_events if isinstance(e, PeerConfirmed)]
        assert c.server.state is ServerState.OPEN


class TestRekeyAtDevice:
    """Fig. 3: the setup PC orders the device (301), which answers 302 and runs 203-206."""

    @pytest.mark.parametrize("suite", ALL_SUITES)
    def test_rekey(self, suite: str) -> None:
        net = Net(suite=suite)
        c = net.connect()
        c.run()
        old_key, old_seed = net.ks.key, net.ks.seed
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        assert net.ks.epoch == net.rec.epoch == 2
        assert net.ks.key == net.rec.key and net.ks.key != old_key
        assert net.ks.seed != old_seed and not net.ks.rekey_requested
        assert net.converged()

    def test_order_survives_a_restart(self) -> None:
        net = Net()
        c = net.connect()
        c.run()
        net.disk.keystore = net.ks.with_(seed=None)  # cannot rekey right now ...
        c = net.connect()
        c.device_do(lambda d, now: d.request_rekey(now))
        c.drop_all()  # ... and the device restarts before anything goes out
        assert net.ks.rekey_requested
        c = net.connect()
        c.run()
        assert net.ks.epoch == 2 and net.converged()


class TestRekeyByProxy:
    """Fig. 4: 401/402 at the server, 403/404 over the channel, then 203-206."""

    def test_order_queued_while_offline(self) -> None:
        net = Net()
        net.put(admin.order_rekey(net.rec), net.rec)
        # Ordering again while one is outstanding changes nothing (orders never pile up).
        assert admin.order_rekey(net.rec) == net.rec
        c = net.connect()
        c.run()
        assert [e.epoch for e in c.device_events if isinstance(e, RekeyOrdered)] == [1]
        assert [e.epoch for e in c.server_events if isinstance(e, RekeyOrderAccepted)] == [1]
        assert net.ks.epoch == net.rec.epoch == 2
        assert net.rec.order_epoch is None, "the commit past the order clears it"
        c = net.connect()
        c.run()
        assert not [e for e in c.device_events if isinstance(e, RekeyOrdered)]

    def test_order_to_a_connected_device(self) -> None:
        net = Net()
        c = net.connect()
        c.run()
        c.server_do(lambda s, now: s.order_rekey(net.rec.epoch, now))
        c.run()
        assert net.ks.epoch == net.rec.epoch == 2 and net.converged()

    def test_stale_order_is_ignored(self) -> None:
        net = Net()
        c = net.connect()
        c.run()
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        assert net.ks.epoch == 2
        c.server_do(lambda s, now: s.order_rekey(1, now))  # supersedes epoch 1: done already
        c.run()
        assert net.ks.epoch == 2
        assert not [e for e in c.device_events if isinstance(e, RekeyOrdered)]

    def test_unconfirmed_device_gets_no_orders(self) -> None:
        net = Net(setup_code=None)
        with pytest.raises(admin.AdminError):
            admin.order_rekey(net.rec)


class TestAutomaticRekey:
    """S03: the policy from 206 (message count or key age) triggers a rekey by itself."""

    def test_by_message_count(self) -> None:
        policy = RekeyPolicy(soft_messages=5, hard_messages=50, soft_age_s=3600, hard_age_s=7200)
        net = Net(policy=policy)
        assert net.ks.policy == policy, "the policy travels in 206"
        c = net.connect()
        c.run()
        for i in range(4):
            c.device_do(lambda d, now, i=i: d.send_app(b"m%d" % i, now))
            c.run()
        assert net.ks.epoch == 1
        c.device_do(lambda d, now: d.send_app(b"m4", now))
        c.run()
        assert net.ks.epoch == net.rec.epoch == 2 and net.ks.messages == 0
        received = [e.data for e in c.server_events if isinstance(e, AppDataReceived)]
        assert received == [b"m0", b"m1", b"m2", b"m3", b"m4"]

    def test_by_key_age(self) -> None:
        policy = RekeyPolicy(soft_messages=100, hard_messages=200, soft_age_s=60, hard_age_s=120)
        net = Net(policy=policy)
        c = net.connect()
        c.run()
        c.tick(59)
        assert net.ks.epoch == 1
        c.tick(2)
        c.run()
        assert net.ks.epoch == net.rec.epoch == 2

    def test_key_age_counts_persisted_uptime_across_restarts(self) -> None:
        policy = RekeyPolicy(soft_messages=100, hard_messages=200, soft_age_s=60, hard_age_s=120)
        net = Net(policy=policy)
        for _ in range(3):  # three sessions of 25 s each, with reboots in between
            c = net.connect()
            c.run()
            c.tick(25)
            c.run()
            c.device_do(lambda d, now: d.close())
        assert net.ks.epoch == 2, "75 s of uptime passed the 60 s soft limit"

    def test_hard_limit_stops_data_but_not_the_rekey(self) -> None:
        policy = RekeyPolicy(soft_messages=2, hard_messages=3, soft_age_s=3600, hard_age_s=7200)
        net = Net(policy=policy)
        net.disk.keystore = net.ks.with_(messages=3, seed=None)  # past hard, and no seed yet
        c = net.connect()
        c.to_s()  # HELLO
        c.to_d()  # HELLO_ACK: open, and a SEED_REQUEST goes out
        with pytest.raises(KeyExpired):
            c.device.send_app(b"x", net.clock.now)
        c.run()  # SEED_REQUEST -> 206 -> the key still authenticates its own rekey
        assert net.ks.epoch == net.rec.epoch == 2
        c.device_do(lambda d, now: d.send_app(b"after", now))
        c.run()
        assert [e.data for e in c.server_events if isinstance(e, AppDataReceived)] == [b"after"]
