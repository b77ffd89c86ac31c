"""Well-formed frames in the wrong place (docs/protocol.md §3.3-3.4): a message its receiver's
state does not allow, a sealed-only type sent plain, a plain-only or setup-only type sealed,
a setup message on the device channel, a sealed frame before the handshake set up the
channel, a plain 203 on an authenticated connection. Each is refused with the CLOSE code the
receive path documents, sent to the peer, and nothing stored changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import Conn, Net

from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import ConnectionClosed
from keyseed.protocol.messages import (
    Ack206,
    App,
    Close,
    Fin,
    Hello,
    Msg201,
    Msg203,
    Msg204,
    Msg205,
    Msg301,
    MsgType,
    encode_sealed,
)

NONCE = bytes(32)
PLAIN_203 = Msg203(
    device_id="oven-1", epoch=2, suite="hpke-x25519", seed_id=bytes(16), s=bytes(16), p=bytes(64)
).encode()


def fresh(net: Net) -> Conn:
    """A new connection; nothing delivered yet (server: AWAIT_HELLO, device: AWAIT_HELLO_ACK)."""
    c = net.connect()
    c.to_server.clear()
    return c


def opened(net: Net) -> Conn:
    c = net.connect()
    c.run()
    return c


def sealed_app(net: Net) -> bytes:
    """A real sealed APP frame (of another connection)."""
    c = opened(net)
    c.device_do(lambda d, now: d.send_app(b"x", now))
    return c.to_server.popleft()


CASES: list[tuple[str, str, Callable[[Net], Conn], Callable[[Net], bytes], ErrorCode]] = [
    ("sealed-only APP sent plain", "s", opened, lambda n: App(data=b"x").encode(),
     ErrorCode.UNEXPECTED_MESSAGE),
    ("sealed-only ACK_206 sent plain", "s", opened,
     lambda n: Ack206(epoch=1, seed_id=bytes(16)).encode(), ErrorCode.UNEXPECTED_MESSAGE),
    ("setup-only 201 on the channel", "s", fresh,
     lambda n: Msg201(device_id="oven-1", suite="hpke-x25519", setup_code="12345678",
                      window_s=600).encode(), ErrorCode.UNEXPECTED_MESSAGE),
    ("setup-only 301 on the channel", "d", opened,
     lambda n: Msg301(device_id="oven-1").encode(), ErrorCode.UNEXPECTED_MESSAGE),
    ("plain-only HELLO sealed", "s", fresh,
     lambda n: encode_sealed(MsgType.HELLO, 1, 0, bytes(17)), ErrorCode.MALFORMED),
    ("setup-only 201 sealed", "s", opened,
     lambda n: encode_sealed(MsgType.M201, 1, 0, bytes(17)), ErrorCode.MALFORMED),
    ("sealed frame before HELLO", "s", fresh, sealed_app, ErrorCode.UNEXPECTED_MESSAGE),
    ("sealed frame before HELLO_ACK", "d", fresh,
     lambda n: encode_sealed(MsgType.APP, 1, 0, bytes(17)), ErrorCode.UNEXPECTED_MESSAGE),
    ("sealed frame under an unknown epoch", "s", opened,
     lambda n: encode_sealed(MsgType.APP, 9, 0, bytes(17)), ErrorCode.AUTH_FAILED),
    ("FIN before HELLO", "s", fresh, lambda n: Fin(mac=bytes(32)).encode(),
     ErrorCode.UNEXPECTED_MESSAGE),
    ("HELLO on an open connection", "s", opened,
     lambda n: Hello(device_id="oven-1", suite="hpke-x25519", nd=NONCE).encode(),
     ErrorCode.UNEXPECTED_MESSAGE),
    ("plain 203 on an authenticated connection", "s", opened,
     lambda n: PLAIN_203, ErrorCode.UNEXPECTED_MESSAGE),
    ("204 to a device that sent no 203", "d", opened,
     lambda n: Msg204(ok=True, mac=bytes(32)).encode(), ErrorCode.UNEXPECTED_MESSAGE),
    ("205 sent plain", "s", opened, lambda n: Msg205(epoch=2).encode(),
     ErrorCode.UNEXPECTED_MESSAGE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("side", "setup", "make", "code"),
    [c[1:] for c in CASES],
    ids=[c[0].replace(" ", "-") for c in CASES],
)
def test_refused_with_its_code(
    side: str, setup: Callable[[Net], Conn], make: Callable[[Net], bytes], code: ErrorCode
) -> None:
    net = Net()
    frame = make(net)
    c = setup(net)
    rec, ks = net.rec, net.ks
    core = c.server if side == "s" else c.device
    events = c.server_events if side == "s" else c.device_events
    out = c.sent_by_server if side == "s" else c.sent_by_device
    mark = len(events)
    if side == "s":
        c.to_server.appendleft(frame)
        c.to_s()
    else:
        c.to_device.appendleft(frame)
        c.to_d()
    closes = [e for e in events[mark:] if isinstance(e, ConnectionClosed)]
    assert closes and closes[0].code is code and not closes[0].by_peer, closes
    assert Close.decode(out[-1]).code == int(code), "the peer is told the code"
    assert core.close_expected()
    assert net.rec == rec
    assert (net.ks.key, net.ks.epoch, net.ks.seed, net.ks.pending) == (
        ks.key,
        ks.epoch,
        ks.seed,
        ks.pending,
    )
