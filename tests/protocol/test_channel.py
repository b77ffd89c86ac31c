"""keyseed.protocol.channel: sealed records, sequence numbers, epochs and usage limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from keyseed.crypto.aead import Aead
from keyseed.crypto.schedule import SharedKey
from keyseed.protocol.channel import Channel
from keyseed.protocol.errors import (
    AuthenticationFailed,
    BadSequence,
    LocalProtocolError,
    MalformedMessage,
    Rehandshake,
)
from keyseed.protocol.messages import (
    App,
    Msg206,
    Msg207,
    MsgType,
    Policy,
    SealedFrame,
    decode_frame,
)

K1 = SharedKey(b"\x01" * 32)
K2 = SharedKey(b"\x02" * 32)
ND = b"\xd0" * 32
NS = b"\x5e" * 32
CIPHERS = ("chacha20-poly1305", "aes-256-gcm")


def make_pair(
    *,
    cipher: str = "chacha20-poly1305",
    device_max: int = 1000,
    server_max: int = 1000,
    nd: bytes = ND,
    ns: bytes = NS,
    key: SharedKey = K1,
    epoch: int = 1,
) -> tuple[Channel, Channel]:
    """A device channel and a server channel of one connection, both keyed at ``epoch``."""
    device = Channel(
        device_id="oven-1", nd=nd, ns=ns, is_device=True, cipher=cipher, max_records=device_max
    )
    server = Channel(
        device_id="oven-1", nd=nd, ns=ns, is_device=False, cipher=cipher, max_records=server_max
    )
    for ch in (device, server):
        ch.install_send(key, epoch)
        ch.install_recv(key, epoch)
    return device, server


def sealed(data: bytes) -> SealedFrame:
    frame = decode_frame(data)
    assert isinstance(frame, SealedFrame)
    return frame


def app(i: int = 0) -> App:
    return App(data=b"msg %d" % i)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_device_to_server_round_trip(cipher: str) -> None:
    device, server = make_pair(cipher=cipher)
    assert server.open(sealed(device.seal(app()))) == app()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_server_to_device_round_trip(cipher: str) -> None:
    device, server = make_pair(cipher=cipher)
    assert device.open(sealed(server.seal(app()))) == app()


def test_nested_message_round_trip() -> None:
    device, server = make_pair()
    msg = Msg206(
        epoch=1,
        r0=b"\x07" * 32,
        seed_id=b"\x08" * 16,
        otk=None,
        policy=Policy(soft_messages=1, hard_messages=2, soft_age_s=3, hard_age_s=4),
    )
    assert device.open(sealed(server.seal(msg))) == msg


def test_many_frames_in_order_both_ways() -> None:
    device, server = make_pair()
    for i in range(20):
        assert server.open(sealed(device.seal(app(i)))) == app(i)
        assert device.open(sealed(server.seal(app(i)))) == app(i)


def test_header_carries_type_epoch_and_counting_seq() -> None:
    device, _ = make_pair(epoch=4)
    frames = [sealed(device.seal(Msg207(pong=False, token=bytes(8)))) for _ in range(3)]
    assert [(f.type, f.epoch, f.seq) for f in frames] == [(MsgType.M207, 4, s) for s in range(3)]


def test_plaintext_does_not_appear_in_the_frame() -> None:
    device, _ = make_pair()
    data = device.seal(App(data=b"secret recipe"))
    assert b"secret recipe" not in data


def test_same_message_seals_differently_each_time() -> None:
    device, _ = make_pair()
    a, b = sealed(device.seal(app())), sealed(device.seal(app()))
    assert a.ciphertext != b.ciphertext


def test_directions_seal_differently() -> None:
    device, server = make_pair()
    assert sealed(device.seal(app())).ciphertext != sealed(server.seal(app())).ciphertext


# -- sequence -------------------------------------------------------------------------------


def test_replayed_frame_is_bad_sequence() -> None:
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    server.open(frame)
    with pytest.raises(BadSequence):
        server.open(frame)


def test_reordered_frame_is_bad_sequence() -> None:
    device, server = make_pair()
    first, second = sealed(device.seal(app(0))), sealed(device.seal(app(1)))
    with pytest.raises(BadSequence):
        server.open(second)
    assert server.open(first) == app(0)


def test_dropped_frame_is_bad_sequence() -> None:
    device, server = make_pair()
    device.seal(app(0))
    with pytest.raises(BadSequence):
        server.open(sealed(device.seal(app(1))))


def test_reflected_frame_fails_authentication() -> None:
    """A frame the device sealed, fed back to a device-side channel, does not open."""
    device, _ = make_pair()
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        device.open(frame)


def test_reflected_frame_fails_on_a_fresh_device_channel() -> None:
    device, _ = make_pair()
    other_device, _ = make_pair()
    with pytest.raises(AuthenticationFailed):
        other_device.open(sealed(device.seal(app())))


def test_frame_of_another_connection_fails() -> None:
    """Traffic keys are per connection: the same K with other nonces opens nothing."""
    device, _ = make_pair()
    _, other_server = make_pair(ns=b"\x5f" * 32)
    with pytest.raises(AuthenticationFailed):
        other_server.open(sealed(device.seal(app())))


def test_frame_of_another_device_fails() -> None:
    device, _ = make_pair()
    server = Channel(device_id="oven-2", nd=ND, ns=NS, is_device=False)
    server.install_recv(K1, 1)
    with pytest.raises(AuthenticationFailed):
        server.open(sealed(device.seal(app())))


# -- tampering ------------------------------------------------------------------------------


def test_tampered_ciphertext_fails_authentication() -> None:
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    ct = bytearray(frame.ciphertext)
    ct[0] ^= 1
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, ciphertext=bytes(ct)))


def test_truncated_ciphertext_fails_authentication() -> None:
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, ciphertext=frame.ciphertext[:-1]))


def test_tampered_type_fails_authentication() -> None:
    """The type is in the AAD: relabelling an APP as a 207 does not open."""
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, type=MsgType.M207))


def test_tampered_epoch_fails_authentication() -> None:
    """The epoch is in the AAD, even when the receiver holds a key for the forged epoch."""
    device, server = make_pair()
    server.install_recv(K1, 2)
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, epoch=2))


def test_tampered_seq_is_bad_sequence() -> None:
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    with pytest.raises(BadSequence):
        server.open(replace(frame, seq=1))


def test_seq_is_authenticated_not_just_checked() -> None:
    """The second frame relabelled as seq 0 passes the sequence check but not the tag."""
    device, server = make_pair()
    device.seal(app(0))
    second = sealed(device.seal(app(1)))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(second, seq=0))


def test_failed_frame_does_not_advance_the_sequence() -> None:
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, ciphertext=bytes(len(frame.ciphertext))))
    assert server.open(frame) == app()


# -- epochs ---------------------------------------------------------------------------------


def test_unknown_epoch_fails_authentication() -> None:
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, epoch=5))


def test_frame_without_any_receive_key_fails_authentication() -> None:
    device, _ = make_pair()
    server = Channel(device_id="oven-1", nd=ND, ns=NS, is_device=False)
    with pytest.raises(AuthenticationFailed):
        server.open(sealed(device.seal(app())))


def test_new_send_key_restarts_the_sequence() -> None:
    device, server = make_pair()
    device.seal(app())
    device.install_send(K2, 2)
    server.install_recv(K2, 2)
    frame = sealed(device.seal(app()))
    assert (frame.epoch, frame.seq) == (2, 0)
    assert server.open(frame) == app()


def test_old_epoch_still_opens_before_the_peer_flips() -> None:
    device, server = make_pair()
    server.install_recv(K2, 2)
    assert server.open(sealed(device.seal(app()))) == app()


def test_epoch_flip_retires_the_older_receive_key() -> None:
    device, server = make_pair()
    server.install_recv(K2, 2)
    server.open(sealed(device.seal(app(0))))
    late = sealed(device.seal(app(1)))  # epoch 1, seq 1: would open right now
    device.install_send(K2, 2)
    server.open(sealed(device.seal(app(2))))
    with pytest.raises(AuthenticationFailed):
        server.open(late)


def test_forged_frame_under_a_new_epoch_retires_nothing() -> None:
    """Only an authenticated frame moves the receiver to a newer epoch."""
    device, server = make_pair()
    server.install_recv(K2, 2)
    frame = sealed(device.seal(app()))
    with pytest.raises(AuthenticationFailed):
        server.open(replace(frame, epoch=2))
    assert server.open(frame) == app()


def test_invalid_plaintext_is_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame that authenticates but holds no valid body is still refused."""
    device, server = make_pair()
    monkeypatch.setattr("keyseed.protocol.channel.encode_body", lambda msg: b"\xa0")
    frame = sealed(device.seal(app()))
    with pytest.raises(MalformedMessage, match="missing"):
        server.open(frame)


def test_install_recv_again_keeps_the_sequence() -> None:
    """Re-installing a key for an epoch it already has must not reset replay protection."""
    device, server = make_pair()
    frame = sealed(device.seal(app()))
    server.open(frame)
    server.install_recv(K1, 1)
    with pytest.raises(BadSequence):
        server.open(frame)


def test_send_epoch_and_can_send() -> None:
    ch = Channel(device_id="oven-1", nd=ND, ns=NS, is_device=True)
    assert (ch.send_epoch, ch.can_send) == (None, False)
    ch.install_send(K1, 3)
    assert (ch.send_epoch, ch.can_send) == (3, True)


# -- limits ---------------------------------------------------------------------------------


def test_seal_without_key_is_a_local_error() -> None:
    ch = Channel(device_id="oven-1", nd=ND, ns=NS, is_device=True)
    with pytest.raises(LocalProtocolError):
        ch.seal(app())


def test_max_records_limits_sealing() -> None:
    device, _ = make_pair(device_max=3)
    for _ in range(3):
        device.seal(app())
    with pytest.raises(Rehandshake):
        device.seal(app())


def test_max_records_limits_opening() -> None:
    device, server = make_pair(device_max=10, server_max=2)
    server.open(sealed(device.seal(app(0))))
    server.open(sealed(device.seal(app(1))))
    with pytest.raises(Rehandshake):
        server.open(sealed(device.seal(app(2))))


def test_new_key_lifts_the_record_limit() -> None:
    device, _ = make_pair(device_max=1)
    device.seal(app())
    device.install_send(K2, 2)
    device.seal(app())


# -- (key, nonce) uniqueness ----------------------------------------------------------------


def test_no_key_nonce_pair_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Across both directions, a key update and a second connection under the same K,
    every (AEAD key, nonce) pair the channel seals with is used once."""
    keys: dict[int, bytes] = {}
    live: list[Aead] = []  # keeps ids from being reused
    used: list[tuple[bytes, bytes]] = []
    real_init: Callable[..., None] = Aead.__init__
    real_seal = Aead.seal

    def spy_init(self: Aead, key: bytes, cipher: str = "chacha20-poly1305") -> None:
        real_init(self, key, cipher)
        keys[id(self)] = key
        live.append(self)

    def spy_seal(self: Aead, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        used.append((keys[id(self)], nonce))
        return real_seal(self, nonce, plaintext, aad)

    monkeypatch.setattr(Aead, "__init__", spy_init)
    monkeypatch.setattr(Aead, "seal", spy_seal)

    for ns in (NS, b"\x5f" * 32):  # two connections of the same device under K1
        device, server = make_pair(ns=ns)
        server.install_recv(K2, 2)
        device.install_recv(K2, 2)
        for i in range(150):
            if i == 75:  # key update in both directions
                device.install_send(K2, 2)
                server.install_send(K2, 2)
            server.open(sealed(device.seal(app(i))))
            device.open(sealed(server.seal(app(i))))

    assert len(used) == 600
    assert len(set(used)) == len(used)
    assert len({k for k, _ in used}) == 8  # 2 connections x 2 keys x 2 directions


def test_repr_shows_no_key_material() -> None:
    device, _ = make_pair()
    text = repr(device)
    assert K1.raw.hex() not in text
    assert "oven-1" in text
