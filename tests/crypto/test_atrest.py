"""Records sealed at rest under the master key."""

from __future__ import annotations

import pytest

from keyseed.crypto import DecryptError
from keyseed.crypto.atrest import AtRestKey


def test_round_trip_and_fresh_nonces() -> None:
    k = AtRestKey(b"\x01" * 32)
    a, b = k.seal("oven-1", b"record"), k.seal("oven-1", b"record")
    assert a != b, "each seal draws a fresh nonce"
    assert k.open("oven-1", a) == k.open("oven-1", b) == b"record"
    assert b"record" not in a


def test_bound_to_the_device_id() -> None:
    k = AtRestKey(b"\x01" * 32)
    with pytest.raises(DecryptError):
        k.open("oven-2", k.seal("oven-1", b"record"))


def test_other_master_key_or_tampering_fails() -> None:
    blob = AtRestKey(b"\x01" * 32).seal("oven-1", b"record")
    with pytest.raises(DecryptError):
        AtRestKey(b"\x02" * 32).open("oven-1", blob)
    with pytest.raises(DecryptError):
        AtRestKey(b"\x01" * 32).open("oven-1", blob[:-1] + bytes([blob[-1] ^ 1]))


def test_master_key_length_and_repr() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        AtRestKey(b"short")
    assert "01" not in repr(AtRestKey(b"\x01" * 32))
