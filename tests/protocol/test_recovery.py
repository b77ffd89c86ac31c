"""No bricking (DESIGN.md section 4, rules 1-6): the model's counterexample traces
(shared model/traces/*.txt) replayed against the real cores as regression tests.

Each test names its trace. The cores must end converged: one key on both sides, nothing
pending, nothing owed, and a usable seed (the model's FULLCONV), with no operator action.
"""

from __future__ import annotations

from helpers import Net

from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import ConnectionClosed, KeyEstablished
from keyseed.protocol.messages import Msg204
from keyseed.protocol.policy import RekeyPolicy
from keyseed.protocol.server import NG_204
from keyseed.protocol.states import DeviceState


def start_rekey(net: Net):  # type: ignore[no-untyped-def]
    c = net.connect()
    c.run()
    c.device_do(lambda d, now: d.request_rekey(now))
    return c


def server_closes(c) -> list[ErrorCode]:  # type: ignore[no-untyped-def]
    return [e.code for e in c.server_events if isinstance(e, ConnectionClosed)]


def test_design_full_att1_206_lost_twice() -> None:
    """Rule 3: proving the new key is not an acknowledgement; the 206 is owed until ACK_206."""
    net = Net()
    c = start_rekey(net)
    c.to_s()  # 203 -> 204
    c.to_d()  # 204 -> 205
    c.to_s()  # 205 -> COMMIT, 206 sent ...
    assert net.rec.epoch == 2 and net.rec.owed_206
    c.drop_all()  # ... and lost (fault 1)
    c = net.connect()
    c.to_s()  # HELLO(cur=k1, pend=k2)
    c.to_d()  # HELLO_ACK(k2) -> the device promotes k2, FIN, SEED_REQUEST
    assert net.ks.epoch == 2 and net.ks.seed is None
    c.to_s()  # FIN -> owed 206 re-sent
    c.drop_all()  # lost again (fault 2)
    assert net.rec.owed_206, "proving the new key did not clear the owed 206"
    net.settle()
    assert net.converged()


def test_lit206_redelivered_206_for_current_epoch_is_stored() -> None:
    """Rule 4: a 206 for the epoch the device already uses is stored and acknowledged."""
    net = Net()
    c = start_rekey(net)
    c.to_s(), c.to_d(), c.to_s()
    c.drop_all()
    c = net.connect()
    c.run()
    assert net.converged()
    assert [e.epoch for e in c.device_events if isinstance(e, KeyEstablished)] == [2]


def test_ign205_late_205_is_refused_then_the_retry_works() -> None:
    """Rule 5: S27 fired first; the late 205 gets a refusal, and the device retries."""
    net = Net()
    c = start_rekey(net)
    c.to_s()  # 203 -> 204 OK
    net.clock.advance(31)
    c.server.handle_timer(net.clock.now)  # S27
    c.flush_server()
    c.run()
    assert ErrorCode.EXCHANGE_EXPIRED in server_closes(c)
    assert net.ks.pending is not None, "a refusal is a hint, never an outcome"
    c = net.connect()
    c.run()  # HELLO_ACK proves k1: pending dropped; the order is still there: retry
    assert net.ks.epoch == net.rec.epoch == 2 and net.converged()


def test_overlap_late_203_of_a_dead_connection_is_fenced() -> None:
    """Rule 6: once a newer connection completed its handshake, older ones are discarded."""
    net = Net()
    old = start_rekey(net)  # its 203 is in flight, and the connection dies
    late_203 = old.to_server.popleft()
    new = net.connect()
    new.run()  # HELLO (pend) -> HELLO_ACK(cur): pending dropped; rekey retried and done
    assert net.ks.epoch == net.rec.epoch == 2
    old.to_server.append(late_203)
    before = net.rec
    old.to_s()
    assert ErrorCode.CONFLICT in server_closes(old)
    assert net.rec == before and net.converged()


def test_rev2_overlap_late_205_after_hello_ack_finds_no_pending() -> None:
    """Rule 1 (CANCEL): HELLO_ACK that tells the device "not committed" also discards the
    pending exchange, so a late 205 of the dead connection cannot commit it."""
    net = Net()
    old = start_rekey(net)
    old.to_s()  # 203 -> 204 OK (pending k2 bound to the old connection)
    old.to_d()  # 204 -> 205 queued ... and the connection dies with the 205 in a buffer
    new = net.connect()
    new.to_s()  # HELLO(k1, pend=k2): server still holds k1 -> CANCEL pending, HELLO_ACK(k1)
    k2 = net.ks.pending.key if net.ks.pending else None
    new.to_d()  # the device drops k2 (rule 1) and retries with a fresh attempt
    assert net.rec.pending is None
    assert net.ks.pending is None or net.ks.pending.key != k2
    old.to_s()  # the late 205 reaches the server before the new FIN
    assert ErrorCode.EXCHANGE_EXPIRED in server_closes(old)
    assert net.rec.epoch == 1, "a key the device dropped was never committed"
    new.run()
    net.settle()
    assert net.converged()


def test_var_a_device_keeps_pending_across_reconnect() -> None:
    """Rule 1: the device never discards its pending key on a guess."""
    net = Net()
    c = start_rekey(net)
    c.to_s(), c.to_d(), c.to_s()  # committed on the server; 206 lost
    c.drop_all()
    assert net.ks.pending is not None
    net.settle()
    assert net.ks.epoch == 2 and net.converged()


def test_var_b_server_keeps_prev_until_the_new_key_is_proven() -> None:
    """Rule 2: after a commit, HELLO(prev, pend=cur) is accepted and promotes at once."""
    net = Net()
    c = start_rekey(net)
    c.to_s(), c.to_d(), c.to_s()
    c.drop_all()
    assert net.rec.prev_key == net.ks.key
    c = net.connect()
    c.run()
    assert net.rec.prev_key is None, "FIN under the new key retires the previous one"


def test_prev_key_alone_opens_nothing() -> None:
    """Rule 2: the previous key on its own (a stolen, retired key) is refused."""
    net = Net()
    c = start_rekey(net)
    c.to_s(), c.to_d(), c.to_s()
    c.drop_all()
    stale = net.ks.with_(pending=None)  # a thief's copy: the old key without the new one
    real = net.disk.keystore
    net.disk.keystore = stale
    before = net.rec
    c = net.connect()
    c.run()
    assert ErrorCode.HANDSHAKE_REFUSED in server_closes(c)
    assert net.rec == before
    net.disk.keystore = real
    net.settle()
    assert net.converged()


def test_rev2_att_oldhint_forged_ng_after_commit_does_not_brick() -> None:
    """A forged 204 NG (or CLOSE) is a hint: the pending key survives it."""
    net = Net()
    c = start_rekey(net)
    c.to_s()  # 203 -> 204 OK ...
    c.to_device.clear()
    c.to_device.append(NG_204)  # ... replaced by a forged NG
    c.to_d()
    assert c.device.state is DeviceState.CLOSED and net.ks.pending is not None
    net.settle()
    assert net.converged()


def test_rev2_att_nobind_replayed_203_and_205_do_not_commit() -> None:
    """F5: a 203 and 205 replayed into a newer connection fail (sealed under other keys)."""
    net = Net()
    c1 = start_rekey(net)
    c1.to_s()  # 203 -> 204 OK
    c1.to_d()  # 205 queued
    captured = list(c1.sent_by_device[-2:])  # the sealed 203 and 205
    c1.drop_all()
    c2 = net.connect()
    c2.run()
    epoch_before = net.rec.epoch
    for frame in captured:
        c2.to_server.append(frame)
    c2.to_s()
    assert server_closes(c2)[-1] in (ErrorCode.AUTH_FAILED, ErrorCode.BAD_SEQUENCE)
    assert net.rec.epoch == epoch_before
    net.settle()
    assert net.converged()


def test_rev2_att_hard1_expired_key_still_rekeys_after_s27() -> None:
    """A key past its hard limit authenticates rekey attempts until one commits."""
    policy = RekeyPolicy(soft_messages=1, hard_messages=1, soft_age_s=10, hard_age_s=20)
    net = Net(policy=policy)
    net.clock.advance(100)  # the key is past its hard age (server: database clock) ...
    net.disk.keystore = net.ks.with_(key_age=100.0)  # ... and device: persisted uptime
    c = net.connect()
    c.to_s(), c.to_d()  # handshake; the device starts a rekey (S03)
    c.to_s()  # FIN
    c.to_s()  # 203 -> 204
    net.clock.advance(31)
    c.server.handle_timer(net.clock.now)  # S27 before the 205
    c.flush_server()
    c.drop_all()
    net.settle()
    assert net.rec.epoch == 2 and net.converged()


def test_replayed_hello_does_not_fence_the_live_connection() -> None:
    """Fencing happens on FIN only: a replayed HELLO gets an answer it cannot use."""
    net = Net()
    live = net.connect()
    live.run()
    hello = live.sent_by_device[0]
    attacker = net.connect()
    attacker.to_server.clear()
    attacker.to_server.append(hello)
    attacker.to_s()
    live.device_do(lambda d, now: d.send_app(b"still here", now))
    live.run()
    assert live.server.state.name == "OPEN"
    assert live.server_events[-1].data == b"still here"  # type: ignore[attr-defined]


def test_first_enrolment_candidate_is_promoted_after_206_loss() -> None:
    """Rule 1 for a keyless device: it keeps every candidate until the server proves one."""
    net = Net(enrol=False)
    c = net.connect()
    c.to_s(), c.to_d()  # HELLO / HELLO_ACK (no key) -> 203
    c.to_s(), c.to_d()  # 204 OK -> 205
    c.to_s()  # commit; 206 lost
    c.drop_all()
    assert net.rec.epoch == 1 and net.ks.key is None and len(net.ks.candidates) == 1
    net.settle()
    assert net.converged() and net.ks.candidates == ()


def test_204_ok_with_a_bad_mac_is_not_an_outcome() -> None:
    net = Net()
    c = start_rekey(net)
    c.to_s()
    c.to_device.clear()
    c.to_device.append(Msg204(ok=True, mac=b"\x00" * 32).encode())
    c.to_d()
    assert c.device.state is DeviceState.CLOSED
    assert net.ks.epoch == 1 and net.ks.pending is not None
    net.settle()
    assert net.converged()
