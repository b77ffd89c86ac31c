"""A 203 built with the server's public key alone never yields a key (DESIGN.md section 4,
"Authenticated rekeys"; issue 7 item 3).

tests/protocol/test_ng.py::test_public_key_alone_never_yields_a_key covers one case (an
enrolled device, hpke-x25519, a no-code guess). Here: every suite; the device enrolled, its
window expired before enrolment, revoked, or never registered; the attacker's 203 under any
epoch, seed_id and setup code (even the right one, once the window is gone); and the same
203 injected plain into the device's own authenticated connection. Every attempt ends in
the one 204 NG or a typed close, no key is established at the server, and the device record
does not change.
"""

from __future__ import annotations

import pytest
from helpers import ALL_SUITES, Conn, Net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ng import NG_WIRE, make_203

from keyseed.crypto.schedule import setup_code_key
from keyseed.protocol import admin
from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import ConnectionClosed, KeyEstablished

STATES = ("enrolled", "window-expired", "revoked", "unregistered")


def victim(suite: str, state: str) -> Net:
    if state == "enrolled":
        return Net(suite=suite)
    net = Net(suite=suite, enrol=False)
    if state == "window-expired":
        net.clock.advance(601)
    elif state == "revoked":
        net.put(admin.revoke(net.rec), net.rec)
    else:
        net.store.records.clear()
    return net


def attacker_conn(net: Net, code: str) -> Conn:
    """A keyless attacker claiming the victim's ID, holding only the pinned public key
    (and a guessed setup code), talking to the victim's server."""
    att = Net(suite=net.ks.suite, enrol=False, ctx=net.ctx)
    att.store, att.clock = net.store, net.clock
    att.disk.keystore = att.ks.with_(k_code=setup_code_key("oven-1", code))
    c = att.connect()
    c.to_s()  # HELLO (keyless)
    c.to_d()  # HELLO_ACK: the attacker's own 203 is queued; replace it
    c.to_server.clear()
    return c


def assert_nothing(net: Net, c: Conn, before: object) -> None:
    assert not [e for e in c.server_events if isinstance(e, KeyEstablished)]
    closes = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
    assert c.sent_by_server[-1] == NG_WIRE or (closes and closes[-1].code is not ErrorCode.INTERNAL)
    rec = net.store.load("oven-1")
    assert rec == before


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("suite", ALL_SUITES)
def test_public_key_alone_in_every_suite_and_state(suite: str, state: str) -> None:
    net = victim(suite, state)
    before = net.store.load("oven-1")
    for code in ("", "12345678"):  # no code (an opt-out window), the victim's real code
        c = attacker_conn(net, code)
        c.to_server.append(make_203(c, enrol=True, epoch=net.ks.epoch + 1).encode())
        c.to_s()
        assert_nothing(net, c, before)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    epoch=st.integers(0, 2**32 - 1),
    seed_id=st.binary(min_size=16, max_size=16),
    code=st.from_regex(r"[0-9]{8,12}", fullmatch=True),
    state=st.sampled_from(("enrolled", "window-expired", "revoked")),
)
def test_public_key_alone_with_any_epoch_seed_and_code(
    epoch: int, seed_id: bytes, code: str, state: str
) -> None:
    net = victim("hpke-x25519", state)
    before = net.store.load("oven-1")
    c = attacker_conn(net, code)
    c.to_server.append(make_203(c, enrol=True, epoch=epoch, seed_id=seed_id).encode())
    c.to_s()
    assert_nothing(net, c, before)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_plain_203_injected_into_the_devices_authenticated_connection(suite: str) -> None:
    """A network attacker who injects its 203 into the device's live connection: a plain
    203 on an authenticated connection is UNEXPECTED_MESSAGE, and nothing is stored."""
    net = Net(suite=suite)
    c = net.connect()
    c.run()
    before = net.rec
    att = attacker_conn(net, "12345678")
    forged = make_203(att, enrol=True, epoch=net.rec.epoch + 1)
    c.to_server.append(forged.encode())
    c.to_s()
    closes = [e for e in c.server_events if isinstance(e, ConnectionClosed)]
    assert closes and closes[-1].code is ErrorCode.UNEXPECTED_MESSAGE
    assert not [e for e in c.server_events if isinstance(e, KeyEstablished)]
    assert net.rec == before
