"""keyseed.protocol.pair: pair keys between two devices, through the real device and server
cores in memory (tests/protocol/helpers.py), with the server's pair steps applied by a small
in-memory relay; plus the pair channel, the key schedule, the server's pure steps and the
pair records on their own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cbor2
import pytest
from helpers import Conn, Net

from keyseed.crypto.pairkdf import BadPublicKey, EphemeralKey, pair_keys, pair_transcript
from keyseed.protocol.errors import (
    AuthenticationFailed,
    BadSequence,
    ErrorCode,
    LocalProtocolError,
    MalformedMessage,
    Rehandshake,
)
from keyseed.protocol.events import ConnectionClosed, Event
from keyseed.protocol.messages import (
    Message,
    PairAck,
    PairData,
    PairKey,
    PairRefused,
    PairRequest,
    PairSync,
)
from keyseed.protocol.pair import (
    E2E,
    RELAY,
    DevicePairs,
    PairCause,
    PairChannel,
    PairClosed,
    PairDataReceived,
    PairError,
    PairEstablished,
    PairMessageReceived,
    PairRecord,
    PairRejected,
    PairRole,
    PairStatus,
    check_data,
    close_record,
    owed_key,
    step_ack,
    step_request,
)

PID = b"\x5a" * 16


# -- two devices, two connections, one relay --------------------------------------------------


class Relay:
    """The server's pair layer in memory: what keyseed.server.pairs does with the database,
    on a dict; the connections are real cores (tests/protocol/helpers.py)."""

    def __init__(self, *device_ids: str, allowed: bool = True) -> None:
        self.nets = {d: Net(device_id=d) for d in device_ids}
        self.conns: dict[str, Conn] = {}
        self.pairs = {d: DevicePairs(d) for d in device_ids}
        self.allowed = allowed
        self.rec: PairRecord | None = None
        # Pair messages the server received or sent, in clear (its view).
        self.seen: list[Message] = []
        # A hook that may rewrite a 502 on its way to a device (a lying server).
        self.tamper: Callable[[str, PairKey], PairKey] | None = None
        self._done = dict.fromkeys(device_ids, (0, 0))
        for d in device_ids:
            self.connect(d)

    def connect(self, device_id: str) -> Conn:
        c = self.nets[device_id].connect()
        c.run()
        self.conns[device_id] = c
        self._done[device_id] = (len(c.device_events), len(c.server_events))
        return c

    def events(self, device_id: str) -> list[Event]:
        return self.pairs[device_id].events_received()

    def run(self) -> None:
        """Deliver until nothing moves."""
        for _ in range(100):
            moved = False
            for d, c in self.conns.items():
                dev_done, srv_done = self._done[d]
                for ev in c.device_events[dev_done:]:
                    if isinstance(ev, PairMessageReceived):
                        self.pairs[d].receive(ev.message)
                out = self.pairs[d].messages_to_send()
                for msg in out:
                    c.device.send_pair(msg, c.net.clock.now)
                c.flush_device()
                c.run()
                new_server = c.server_events[srv_done:]
                self._done[d] = (len(c.device_events), len(c.server_events))
                for ev in new_server:
                    if isinstance(ev, PairMessageReceived):
                        self.seen.append(ev.message)
                        self._server(d, ev.message)
                        moved = True
                moved |= bool(out) or len(c.device_events) > dev_done
            if not moved:
                return
        raise AssertionError("pair traffic did not settle")

    def _send(self, device_id: str, msg: Message) -> None:
        if isinstance(msg, PairKey) and self.tamper is not None:
            msg = self.tamper(device_id, msg)
        self.seen.append(msg)
        c = self.conns[device_id]
        c.server.send_pair(msg, c.net.clock.now)
        c.flush_server()
        c.run()

    def _server(self, device_id: str, msg: Message) -> None:
        if isinstance(msg, PairRequest):
            if not self.allowed:
                self._send(device_id, PairRefused(peer=msg.peer, cause=int(PairCause.REFUSED)))
                return
            self.rec = step_request(msg, device_id, self.rec)
            for member in (device_id, msg.peer):
                if (key := owed_key(self.rec, member)) is not None:
                    self._send(member, key)
        elif isinstance(msg, PairAck):
            assert self.rec is not None
            new = step_ack(self.rec, device_id, msg)
            if new is None:
                return
            self.rec = new
            if device_id == new.responder and (key := owed_key(new, new.initiator)) is not None:
                self._send(new.initiator, key)
        elif isinstance(msg, PairData):
            try:
                peer = check_data(self.rec, device_id, msg)
            except PairError as exc:
                self._send(device_id, PairRefused(pair_id=msg.pair_id, cause=int(exc.cause)))
                return
            self._send(peer, msg)
        elif isinstance(msg, PairSync):
            for held in msg.held:
                if self.rec is None or not self.rec.live or held != self.rec.pair_id:
                    self._send(device_id, PairRefused(pair_id=held, cause=int(PairCause.CLOSED)))

    def close(self) -> None:
        assert self.rec is not None
        self.rec = close_record(self.rec)
        for member in (self.rec.lo, self.rec.hi):
            peer = self.rec.peer_of(member)
            self._send(
                member,
                PairRefused(peer=peer, pair_id=self.rec.pair_id, cause=int(PairCause.CLOSED)),
            )


def of_type(events: list[Event], cls: type) -> list[Event]:
    return [e for e in events if isinstance(e, cls)]


def pair_up(mode: str) -> Relay:
    r = Relay("oven-a", "oven-b")
    r.pairs["oven-a"].request("oven-b", mode)
    r.run()
    return r


# -- flows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [RELAY, E2E])
class TestPairFlows:
    """501 -> 502 -> 503 (-> 502 -> 503 in e2e mode) -> 504 both ways, on two real cores."""

    def test_both_devices_hold_the_pair_and_exchange_data(self, mode: str) -> None:
        r = pair_up(mode)
        ea, eb = r.events("oven-a"), r.events("oven-b")
        (est_a,), (est_b,) = of_type(ea, PairEstablished), of_type(eb, PairEstablished)
        assert isinstance(est_a, PairEstablished) and isinstance(est_b, PairEstablished)
        assert est_a.role is PairRole.INITIATOR and est_b.role is PairRole.RESPONDER
        assert est_a.pair_id == est_b.pair_id and est_a.epoch == est_b.epoch == 1
        assert r.rec is not None and r.rec.status is PairStatus.ESTABLISHED
        r.pairs["oven-a"].send("oven-b", b"ping")
        r.pairs["oven-b"].send("oven-a", b"pong")
        r.run()
        got_b = of_type(r.events("oven-b"), PairDataReceived)
        got_a = of_type(r.events("oven-a"), PairDataReceived)
        assert [e.data for e in got_b] == [b"ping"]  # type: ignore[attr-defined]
        assert [e.data for e in got_a] == [b"pong"]  # type: ignore[attr-defined]

    def test_chained_renewal_retires_the_old_epoch_after_its_first_new_frame(
        self, mode: str
    ) -> None:
        r = pair_up(mode)
        a, b = r.pairs["oven-a"], r.pairs["oven-b"]
        a.send("oven-b", b"old")
        old_frame = a.messages_to_send()[0]
        b.request("oven-a", mode)  # the responder renews: roles swap
        r.run()
        assert r.rec is not None and r.rec.epoch == 2 and r.rec.chained
        assert r.rec.initiator == "oven-b"
        r.events("oven-a")
        r.events("oven-b")
        # A frame of the old epoch still in flight opens ...
        b.receive(old_frame)
        assert [e.data for e in of_type(b.events_received(), PairDataReceived)] == [b"old"]  # type: ignore[attr-defined]
        a.send("oven-b", b"new")
        r.run()
        assert [e.data for e in of_type(r.events("oven-b"), PairDataReceived)] == [b"new"]  # type: ignore[attr-defined]
        # ... until the peer's first frame of the new epoch retires it.
        stale = replace(old_frame, seq=old_frame.seq + 1)  # type: ignore[type-var]
        b.receive(stale)
        (rej,) = of_type(b.events_received(), PairRejected)
        assert rej.code is ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]

    def test_a_refused_request_reaches_only_the_requester(self, mode: str) -> None:
        r = Relay("oven-a", "oven-b", allowed=False)
        r.pairs["oven-a"].request("oven-b", mode)
        r.run()
        (closed,) = of_type(r.events("oven-a"), PairClosed)
        assert closed.cause is PairCause.REFUSED  # type: ignore[attr-defined]
        assert r.events("oven-b") == []
        with pytest.raises(LocalProtocolError):
            r.pairs["oven-a"].send("oven-b", b"x")

    def test_closing_the_pair_drops_its_keys_on_both_sides(self, mode: str) -> None:
        r = pair_up(mode)
        r.close()
        r.run()
        for d, peer in (("oven-a", "oven-b"), ("oven-b", "oven-a")):
            assert any(
                isinstance(e, PairClosed) and e.cause is PairCause.CLOSED for e in r.events(d)
            )
            assert r.pairs[d].pair_of(peer) is None

    def test_sync_names_held_pairs_and_dead_ones_are_dropped(self, mode: str) -> None:
        r = pair_up(mode)
        assert r.rec is not None
        r.rec = close_record(r.rec)  # closed while oven-b was away
        r.connect("oven-b")
        r.pairs["oven-b"].sync()
        r.run()
        assert r.pairs["oven-b"].pair_of("oven-a") is None
        assert any(isinstance(e, PairClosed) for e in r.events("oven-b"))


class TestRenewalAndEdges:
    """The sender renews by itself; odd but harmless inputs."""

    def test_the_sender_asks_for_the_next_epoch_at_its_threshold(self) -> None:
        r = Relay("oven-a", "oven-b")
        r.pairs["oven-a"] = DevicePairs("oven-a", renew_at=2)
        r.pairs["oven-a"].request("oven-b", RELAY)
        r.run()
        assert r.rec is not None and r.rec.epoch == 1
        for n in range(3):
            r.pairs["oven-a"].send("oven-b", b"%d" % n)
        r.run()
        assert r.rec.epoch == 2 and r.rec.chained and r.rec.status is PairStatus.ESTABLISHED
        got = of_type(r.events("oven-b"), PairDataReceived)
        assert [e.data for e in got] == [b"0", b"1", b"2"]  # type: ignore[attr-defined]
        assert r.pairs["oven-a"].peers == ["oven-b"]
        assert "3 bytes" not in repr(got[0]) and "bytes>" in repr(got[0])

    def test_a_closed_notice_by_peer_drops_the_pair(self) -> None:
        r = pair_up(RELAY)
        r.events("oven-a")
        r.pairs["oven-a"].receive(PairRefused(peer="oven-b", cause=int(PairCause.CLOSED)))
        assert r.pairs["oven-a"].pair_of("oven-b") is None
        (closed,) = of_type(r.events("oven-a"), PairClosed)
        assert closed.peer == "oven-b"  # type: ignore[attr-defined]

    def test_e2e_502s_with_the_wrong_halves_are_refused(self) -> None:
        p = DevicePairs("oven-b")
        base = {"pair_id": PID, "epoch": 1, "mode": E2E, "chained": False, "e_i": b"e" * 32}
        p.receive(PairKey(initiator="oven-a", responder="oven-b", e_r=b"r" * 32, **base))  # type: ignore[arg-type]
        p.receive(PairKey(initiator="oven-b", responder="oven-a", **base))  # type: ignore[arg-type]
        codes = [e.code for e in of_type(p.events_received(), PairRejected)]  # type: ignore[attr-defined]
        assert codes == [ErrorCode.MALFORMED, ErrorCode.MALFORMED]
        assert p.messages_to_send() == []


class TestEndToEnd:
    """What the server sees in e2e mode, and what a server that lies about a half does."""

    def test_the_server_sees_only_public_halves(self) -> None:
        r = pair_up(E2E)
        r.pairs["oven-a"].send("oven-b", b"secret")
        r.run()
        assert r.rec is not None and r.rec.material is None and r.rec.seed is None
        assert r.rec.e_i is not None and r.rec.e_r is not None
        stmt = next(m for m in r.seen if isinstance(m, PairKey) and m.e_r is not None)
        data = next(m for m in r.seen if isinstance(m, PairData))
        th = pair_transcript(
            mode=E2E,
            pair_id=stmt.pair_id,
            epoch=1,
            initiator="oven-a",
            responder="oven-b",
            e_i=stmt.e_i or b"",
            e_r=stmt.e_r or b"",
        )
        # Every public value as the secret, with or without a salt: nothing opens the frame.
        public = [stmt.e_i, stmt.e_r, stmt.pair_id, th]
        for ikm in public:
            for salt in (b"", *public):
                assert ikm is not None and salt is not None
                keys = pair_keys(ikm, salt, th)
                ch = PairChannel(keys, pair_id=stmt.pair_id, epoch=1, role=PairRole.RESPONDER)
                with pytest.raises(AuthenticationFailed):
                    ch.open(data)

    def test_initiator_refuses_a_502_that_names_another_initiator_half(self) -> None:
        r = Relay("oven-a", "oven-b")
        forged = EphemeralKey().public

        def lie(device_id: str, msg: PairKey) -> PairKey:
            return replace(msg, e_i=forged) if device_id == "oven-a" else msg

        r.tamper = lie
        r.pairs["oven-a"].request("oven-b", E2E)
        r.run()
        (rej,) = of_type(r.events("oven-a"), PairRejected)
        assert rej.code is ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]
        assert r.pairs["oven-a"].pair_of("oven-b") is None

    def test_a_small_order_half_is_refused(self) -> None:
        p = DevicePairs("oven-b")
        p.receive(
            PairKey(
                pair_id=PID,
                epoch=1,
                mode=E2E,
                initiator="oven-a",
                responder="oven-b",
                chained=False,
                e_i=bytes(32),
            )
        )
        (rej,) = of_type(p.events_received(), PairRejected)
        assert rej.code is ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]
        assert p.messages_to_send() == []

    def test_a_chained_502_without_the_seed_starts_a_new_chain(self) -> None:
        p = DevicePairs("oven-b")
        p.receive(
            PairKey(
                pair_id=PID,
                epoch=4,
                mode=RELAY,
                initiator="oven-a",
                responder="oven-b",
                chained=True,
                material=b"m" * 32,
                seed=b"s" * 32,
            )
        )
        assert of_type(p.events_received(), PairRejected)
        (req,) = p.messages_to_send()
        assert isinstance(req, PairRequest) and req.pair_id is None and req.mode == RELAY


class TestOnTheCores:
    """The pair messages ride the device channel under the rules of application data."""

    def test_an_unconfirmed_device_cannot_pair(self) -> None:
        net = Net(device_id="oven-x", setup_code=None)
        c = net.connect()
        c.run()
        c.device.send_pair(PairRequest(peer="oven-b", mode=RELAY), net.clock.now)
        c.flush_device()
        c.run()
        closed = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[0].code is ErrorCode.NOT_CONFIRMED

    def test_each_side_sends_only_its_own_pair_messages(self) -> None:
        net = Net(device_id="oven-x")
        c = net.connect()
        c.run()
        with pytest.raises(LocalProtocolError):
            c.device.send_pair(PairRefused(peer="oven-b", cause=1), net.clock.now)
        with pytest.raises(LocalProtocolError):
            c.server.send_pair(PairSync(held=()), net.clock.now)

    def test_a_pair_message_in_the_wrong_direction_closes_the_connection(self) -> None:
        net = Net(device_id="oven-x")
        c = net.connect()
        c.run()
        # A device-bound type forged into the device's channel towards the server.
        frame = c.device._channel.seal(PairRefused(peer="oven-b", cause=1))  # type: ignore[union-attr]
        c.server.receive_message(frame, net.clock.now)
        c.flush_server()
        closed = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
        assert closed and closed[0].code is ErrorCode.UNEXPECTED_MESSAGE


# -- the pair channel and key schedule --------------------------------------------------------


def channels(max_records: int = 2**23) -> tuple[PairChannel, PairChannel]:
    keys = pair_keys(b"k" * 32, b"", b"t" * 32)
    return (
        PairChannel(keys, pair_id=PID, epoch=1, role=PairRole.INITIATOR, max_records=max_records),
        PairChannel(keys, pair_id=PID, epoch=1, role=PairRole.RESPONDER, max_records=max_records),
    )


class TestPairChannel:
    def test_round_trip_both_ways(self) -> None:
        i, r = channels()
        assert r.open(i.seal(b"to responder")) == b"to responder"
        assert i.open(r.seal(b"to initiator")) == b"to initiator"

    def test_duplicate_and_older_sequence_numbers_are_refused(self) -> None:
        i, r = channels()
        first, second = i.seal(b"1"), i.seal(b"2")
        r.open(second)
        for msg in (second, first):
            with pytest.raises(BadSequence):
                r.open(msg)

    def test_a_gap_is_accepted(self) -> None:
        i, r = channels()
        i.seal(b"lost on the way")
        assert r.open(i.seal(b"next")) == b"next"

    def test_tampering_and_reflection_fail_without_moving_the_sequence(self) -> None:
        i, r = channels()
        msg = i.seal(b"data")
        for bad in (
            replace(msg, ct=msg.ct[:-1] + bytes([msg.ct[-1] ^ 1])),
            replace(msg, epoch=2),
            replace(msg, pair_id=b"\x00" * 16),
        ):
            with pytest.raises(AuthenticationFailed):
                r.open(bad)
        with pytest.raises(AuthenticationFailed):
            i.open(msg)  # reflected to its sender: the other direction's key
        assert r.open(msg) == b"data"

    def test_usage_limit_and_size(self) -> None:
        i, _ = channels(max_records=1)
        i.seal(b"")
        with pytest.raises(Rehandshake):
            i.seal(b"")
        i2, _ = channels()
        with pytest.raises(LocalProtocolError):
            i2.seal(b"x" * (16384 + 1))

    def test_repr_shows_no_key(self) -> None:
        i, _ = channels()
        assert "k" * 8 not in repr(i) and "redacted" in repr(pair_keys(b"k" * 32, b"", b""))


class TestKeySchedule:
    def th(self, **kw: object) -> bytes:
        base: dict[str, object] = {
            "mode": RELAY,
            "pair_id": PID,
            "epoch": 1,
            "initiator": "oven-a",
            "responder": "oven-b",
        }
        base.update(kw)
        return pair_transcript(**base)  # type: ignore[arg-type]

    def test_one_key_per_direction(self) -> None:
        k = pair_keys(b"m" * 32, b"", self.th())
        assert k.i2r_key != k.r2i_key and k.i2r_iv != k.r2i_iv

    @pytest.mark.parametrize(
        "change",
        [
            {"initiator": "oven-b", "responder": "oven-a"},
            {"epoch": 2},
            {"pair_id": b"\x00" * 16},
            {"mode": E2E},
            {"e_i": b"e" * 32},
        ],
    )
    def test_the_transcript_binds_identities_roles_pair_and_epoch(
        self, change: dict[str, object]
    ) -> None:
        assert pair_keys(b"m" * 32, b"", self.th(**change)) != pair_keys(b"m" * 32, b"", self.th())

    def test_the_chain_seed_changes_the_key(self) -> None:
        assert pair_keys(b"m" * 32, b"s" * 32, self.th()) != pair_keys(b"m" * 32, b"", self.th())

    def test_x25519_agrees_and_refuses_bad_halves(self) -> None:
        a, b = EphemeralKey(), EphemeralKey()
        assert a.exchange(b.public) == b.exchange(a.public)
        for bad in (bytes(32), b"short"):
            with pytest.raises(BadPublicKey):
                a.exchange(bad)
        assert "redacted" in repr(a)


# -- the server's steps and records -----------------------------------------------------------


def request(mode: str = E2E, **kw: object) -> PairRequest:
    fields: dict[str, object] = {"peer": "oven-b", "mode": mode}
    if mode == E2E:
        fields["e"] = b"\xe1" * 32
    fields.update(kw)
    return PairRequest(**fields)  # type: ignore[arg-type]


def entropy(n: int) -> bytes:
    return b"\x42" * n


class TestServerSteps:
    def test_a_new_pair_and_a_chained_renewal(self) -> None:
        rec = step_request(request(RELAY, peer="oven-a"), "oven-b", None, entropy=entropy)
        assert (rec.lo, rec.hi, rec.initiator, rec.epoch, rec.chained) == (
            "oven-a",
            "oven-b",
            "oven-b",
            1,
            False,
        )
        rec = replace(rec, status=PairStatus.ESTABLISHED)
        nxt = step_request(request(RELAY, peer="oven-a", pair_id=rec.pair_id), "oven-b", rec)
        assert nxt.chained and nxt.pair_id == rec.pair_id and nxt.prev_seed == rec.seed
        assert nxt.epoch == 2 and nxt.version == rec.version + 1
        # Naming another pair, or another mode, starts a new chain (epochs still grow).
        other = step_request(request(E2E, peer="oven-a", pair_id=rec.pair_id), "oven-b", rec)
        assert not other.chained and other.pair_id != rec.pair_id and other.epoch == 2

    def test_e2e_ack_records_the_responder_half_once(self) -> None:
        rec = step_request(request(), "oven-a", None)
        assert owed_key(rec, "oven-a") is None and owed_key(rec, "oven-b") is not None
        with pytest.raises(PairError):
            step_ack(rec, "oven-b", PairAck(pair_id=rec.pair_id, epoch=1))  # no half
        with pytest.raises(PairError):
            step_ack(rec, "oven-a", PairAck(pair_id=rec.pair_id, epoch=1))  # too early
        rec2 = step_ack(rec, "oven-b", PairAck(pair_id=rec.pair_id, epoch=1, e=b"\xe2" * 32))
        assert rec2 is not None and rec2.e_r == b"\xe2" * 32
        assert (
            step_ack(rec2, "oven-b", PairAck(pair_id=rec.pair_id, epoch=1, e=b"\xe2" * 32)) is None
        )
        with pytest.raises(PairError):
            step_ack(rec2, "oven-b", PairAck(pair_id=rec.pair_id, epoch=1, e=b"\xe3" * 32))
        with pytest.raises(PairError):
            step_ack(rec2, "oven-c", PairAck(pair_id=rec.pair_id, epoch=1))
        with pytest.raises(PairError):
            step_ack(rec2, "oven-a", PairAck(pair_id=rec.pair_id, epoch=2))
        key = owed_key(rec2, "oven-a")
        assert key is not None and key.e_r == b"\xe2" * 32
        rec3 = step_ack(rec2, "oven-a", PairAck(pair_id=rec.pair_id, epoch=1))
        assert rec3 is not None and rec3.status is PairStatus.ESTABLISHED
        assert owed_key(rec3, "oven-a") is None and owed_key(rec3, "oven-b") is None

    def test_a_device_does_not_pair_with_itself(self) -> None:
        with pytest.raises(PairError):
            step_request(request(RELAY), "oven-b", None)

    def test_data_checks(self) -> None:
        rec = step_request(request(RELAY), "oven-a", None)
        msg = PairData(pair_id=rec.pair_id, epoch=1, seq=0, ct=b"")
        assert check_data(rec, "oven-a", msg) == "oven-b"
        for bad_rec, dev, bad_msg in (
            (None, "oven-a", msg),
            (close_record(rec), "oven-a", msg),
            (rec, "oven-c", msg),
            (rec, "oven-a", replace(msg, epoch=3)),
            (rec, "oven-a", replace(msg, pair_id=PID)),
        ):
            with pytest.raises(PairError) as info:
                check_data(bad_rec, dev, bad_msg)
            assert info.value.cause is PairCause.STALE

    def test_acks_with_a_half_where_none_belongs_are_stale(self) -> None:
        rec = step_request(request(RELAY), "oven-a", None)
        for dev in ("oven-a", "oven-b"):
            with pytest.raises(PairError):
                step_ack(rec, dev, PairAck(pair_id=rec.pair_id, epoch=1, e=b"e" * 32))
        acked = step_ack(rec, "oven-b", PairAck(pair_id=rec.pair_id, epoch=1))
        assert acked is not None
        assert step_ack(acked, "oven-b", PairAck(pair_id=rec.pair_id, epoch=1)) is None

    def test_closed_record_keeps_nothing_secret(self) -> None:
        rec = close_record(step_request(request(RELAY), "oven-a", None))
        assert rec.material is None and rec.seed is None and not rec.live
        assert owed_key(rec, "oven-a") is None


class TestPairRecord:
    def test_round_trip_and_repr(self) -> None:
        rec = step_request(request(RELAY), "oven-a", None)
        assert PairRecord.decode(rec.encode()) == rec
        e2e = step_request(request(), "oven-a", None)
        assert PairRecord.decode(e2e.encode()) == e2e
        assert "material" not in repr(rec) and rec.material is not None
        assert rec.material.hex() not in repr(rec)

    @pytest.mark.parametrize(
        "damage",
        [
            lambda b: b[:-1],
            lambda b: b.replace(b"relay", b"relaz"),
            lambda b: b"\xa0",
            lambda b: b"\x80",
            lambda b: PairRecord.encode(replace(PairRecord.decode(b), epoch=0)),
            lambda b: cbor2.dumps({**cbor2.loads(b), "extra": 1}, canonical=True),
            lambda b: b.replace(b"\x67chained\xf5", b"\x67chained\x01").replace(
                b"\x67chained\xf4", b"\x67chained\x01"
            ),
        ],
    )
    def test_damaged_records_do_not_load(self, damage: Callable[[bytes], bytes]) -> None:
        rec = step_request(request(RELAY), "oven-a", None)
        with pytest.raises(MalformedMessage):
            PairRecord.decode(damage(rec.encode()))


class TestMessages:
    def test_field_rules(self) -> None:
        with pytest.raises(MalformedMessage):
            PairRequest(peer="oven-b", mode=E2E)
        with pytest.raises(MalformedMessage):
            PairRequest(peer="oven-b", mode=RELAY, e=b"e" * 32)
        base = {"pair_id": PID, "epoch": 1, "initiator": "oven-a", "responder": "oven-b"}
        for bad in (
            {"mode": RELAY, "chained": False},
            {
                "mode": RELAY,
                "chained": False,
                "material": b"m" * 32,
                "seed": b"s" * 32,
                "e_i": b"e" * 32,
            },
            {"mode": E2E, "chained": False},
            {
                "mode": E2E,
                "chained": False,
                "e_i": b"e" * 32,
                "material": b"m" * 32,
                "seed": b"s" * 32,
            },
            {"mode": E2E, "chained": False, "e_i": b"e" * 32, "epoch": 0},
            {"mode": E2E, "chained": False, "e_i": b"e" * 32, "responder": "oven-a"},
        ):
            with pytest.raises(MalformedMessage):
                PairKey(**{**base, **bad})  # type: ignore[arg-type]
        with pytest.raises(MalformedMessage):
            PairRefused(cause=1)
        with pytest.raises(MalformedMessage):
            PairRequest(peer="oven b", mode=RELAY)

    def test_device_refuses_what_is_not_for_it(self) -> None:
        p = DevicePairs("oven-c")
        p.receive(PairAck(pair_id=PID, epoch=1))
        p.receive(
            PairKey(
                pair_id=PID,
                epoch=1,
                mode=E2E,
                initiator="oven-a",
                responder="oven-b",
                chained=False,
                e_i=b"e" * 32,
            )
        )
        p.receive(PairData(pair_id=PID, epoch=1, seq=0, ct=b""))
        p.receive(PairRefused(peer="oven-a", cause=99))
        codes = [e.code for e in of_type(p.events_received(), PairRejected)]  # type: ignore[attr-defined]
        assert codes == [
            ErrorCode.MALFORMED,
            ErrorCode.MALFORMED,
            ErrorCode.AUTH_FAILED,
            ErrorCode.MALFORMED,
        ]
        with pytest.raises(LocalProtocolError):
            p.request("oven-c")
        with pytest.raises(LocalProtocolError):
            p.request("oven-a", "carrier-pigeon")
