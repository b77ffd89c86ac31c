"""Fuzzing behind the AEAD: a malicious but authenticated peer (a device that holds its own
key, or a server) seals arbitrary bodies under the real traffic keys. Fuzzers that mutate
frames on the wire (tests/protocol/test_fuzz.py, the atheris harness) never get past the
tag; these inputs reach the body decoders of every sealed message type and the state
machines behind them.

Each body is arbitrary bytes, or a canonical CBOR map with the type's real field names and
arbitrary values, sealed as the next frame of an open connection (or of one waiting for its
205 or its 206). The receiving core never raises and never closes with INTERNAL; when it
refuses the frame it closes with a typed code and nothing stored changes.
"""

from __future__ import annotations

from types import SimpleNamespace

import cbor2
from helpers import Conn, Net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import ConnectionClosed
from keyseed.protocol.messages import MESSAGES, PLAIN_ONLY, SETUP_ONLY, MsgType

SEALABLE = sorted(t for t in MESSAGES if t not in PLAIN_ONLY and t not in SETUP_ONLY)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def cbor_values() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.integers(-(2**64), 2**64 - 1),
        st.binary(max_size=70),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=8,
    )


@st.composite
def bodies(draw: st.DrawFn, mtype: MsgType) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=120))
    names = draw(st.lists(st.sampled_from(sorted(MESSAGES[mtype].SPEC) or ["x"]), unique=True))
    body = {name: draw(cbor_values()) for name in names}
    if draw(st.booleans()):
        body[draw(st.text(max_size=6))] = draw(cbor_values())
    try:
        return bytes(cbor2.dumps(body, canonical=True))
    except (ValueError, TypeError, OverflowError):
        return b"\xa0"


_NET: dict[str, Net] = {}


def open_conn(point: str) -> tuple[Net, Conn]:
    """An enrolled device's connection: open, or its rekey waiting for 205 (at the server)
    or for 206 (at the device)."""
    if "net" not in _NET:
        _NET["net"] = Net()
    base = _NET["net"]
    net = Net.__new__(Net)
    net.__dict__.update(base.__dict__)
    net.store = type(base.store)(records=dict(base.store.records))
    net.disk = type(base.disk)(base.disk.keystore)
    net.conns = []
    c = net.connect()
    c.run()
    if point == "pending":
        c.device_do(lambda d, now: d.request_rekey(now))
        c.to_s()  # 203 -> 204 OK; the server waits for 205
        c.to_d()  # 204 -> the device sends 205 (held in the queue)
        c.to_server.clear()
    return net, c


def durable(net: Net) -> tuple[object, ...]:
    ks = net.ks
    return (net.rec, ks.key, ks.epoch, ks.seed, ks.pending, ks.policy)


def deliver_sealed(c: Conn, side: str, mtype: MsgType, body: bytes) -> None:
    sender = c.device if side == "s" else c.server
    channel = sender._channel
    assert channel is not None and channel.can_send
    frame = channel.seal(SimpleNamespace(TYPE=mtype), body)  # type: ignore[arg-type]
    if side == "s":
        c.to_server.append(frame)
        c.to_s()
    else:
        c.to_device.append(frame)
        c.to_d()


@FUZZ
@given(
    data=st.data(),
    side=st.sampled_from("sd"),
    point=st.sampled_from(("open", "pending")),
    mtype=st.sampled_from(SEALABLE),
)
def test_authenticated_garbage_is_refused_with_a_typed_close(
    data: st.DataObject, side: str, point: str, mtype: MsgType
) -> None:
    net, c = open_conn(point)
    body = data.draw(bodies(mtype), label="body")
    before = durable(net)
    events = c.server_events if side == "s" else c.device_events
    mark = len(events)
    deliver_sealed(c, side, mtype, body)
    closes = [e for e in events[mark:] if isinstance(e, ConnectionClosed)]
    assert all(e.code is not ErrorCode.INTERNAL for e in closes), closes
    if closes and not closes[0].by_peer:
        assert durable(net) == before, "a refused frame changed stored state"


def test_the_fuzzed_connection_is_a_real_one() -> None:
    """The connections fuzzed above carry honest traffic both ways and reach 205."""
    net, c = open_conn("open")
    c.device_do(lambda d, now: d.send_app(b"x", now))
    c.run()
    assert not [e for e in c.server_events if isinstance(e, ConnectionClosed)]
    net, c = open_conn("pending")
    assert net.rec.pending is not None and c.server.state.name == "PENDING_205"
