"""The keystore file: round trip, mode 0600, atomic replacement, and refusal (typed error,
file untouched) of damaged, foreign, other-device and world-readable files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keyseed.crypto import get_suite
from keyseed.device.keystore import (
    MAGIC,
    KeystoreCorrupted,
    KeystoreFile,
    KeystoreForeign,
    KeystoreInsecure,
    KeystoreLocked,
    KeystoreMismatch,
    decode_file,
    encode_file,
)
from keyseed.protocol.device import new_keystore
from keyseed.protocol.records import Keystore


def make(device_id: str = "oven-1") -> Keystore:
    return new_keystore(
        device_id=device_id,
        suite="hpke-x25519",
        server_key=get_suite("hpke-x25519").generate().public_key.raw,
        install_secret=os.urandom(32),
        setup_code="12345678",
    )


def test_round_trip_mode_and_replace(tmp_path: Path) -> None:
    store = KeystoreFile(tmp_path / "sub" / "ks")
    ks = make()
    store.create(ks)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    assert store.load("oven-1") == ks
    ks2 = ks.with_(conn_counter=7)
    store.save(ks2)
    assert KeystoreFile(store.path).load("oven-1") == ks2
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    # No temporary file is left behind.
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["ks"]


def test_create_never_overwrites(tmp_path: Path) -> None:
    store = KeystoreFile(tmp_path / "ks")
    store.path.write_bytes(b"something else")
    with pytest.raises(FileExistsError):
        store.create(make())
    assert store.path.read_bytes() == b"something else"


@pytest.mark.parametrize("offset", [0, 8, 9, 12, 40, -1, -33])
def test_every_damaged_byte_is_refused(tmp_path: Path, offset: int) -> None:
    store = KeystoreFile(tmp_path / "ks")
    store.create(make())
    data = bytearray(store.path.read_bytes())
    data[offset] ^= 0x40
    store.path.write_bytes(bytes(data))
    with pytest.raises((KeystoreCorrupted, KeystoreForeign)):
        KeystoreFile(store.path).load("oven-1")
    assert store.path.read_bytes() == bytes(data)


def test_truncated_and_foreign(tmp_path: Path) -> None:
    data = encode_file(make())
    for n in (len(MAGIC) + 3, len(data) - 1):
        with pytest.raises(KeystoreCorrupted):
            decode_file(data[:n])
    with pytest.raises(KeystoreForeign, match="not a keyseed device keystore"):
        decode_file(b'{"device_id": "oven-1"}')
    with pytest.raises(KeystoreForeign, match="format 9"):
        decode_file(MAGIC + b"\x09" + data[len(MAGIC) + 1 :])


def test_another_device(tmp_path: Path) -> None:
    store = KeystoreFile(tmp_path / "ks")
    store.create(make("oven-2"))
    with pytest.raises(KeystoreMismatch, match="belongs to device 'oven-2'"):
        store.load("oven-1")


def test_world_readable_is_refused(tmp_path: Path) -> None:
    store = KeystoreFile(tmp_path / "ks")
    store.create(make())
    os.chmod(store.path, 0o644)
    with pytest.raises(KeystoreInsecure, match="chmod 600"):
        store.load("oven-1")


def test_one_process_per_keystore(tmp_path: Path) -> None:
    a, b = KeystoreFile(tmp_path / "ks"), KeystoreFile(tmp_path / "ks")
    a.lock()
    try:
        with pytest.raises(KeystoreLocked):
            b.lock()
    finally:
        a.unlock()
    b.lock()
    b.unlock()


def test_token_created_once_0600(tmp_path: Path) -> None:
    store = KeystoreFile(tmp_path / "ks")
    token = store.load_or_create_token()
    assert len(token) > 40
    assert stat.S_IMODE(os.stat(store.token_path).st_mode) == 0o600
    assert KeystoreFile(tmp_path / "ks").load_or_create_token() == token


def test_repr_shows_no_secret(tmp_path: Path) -> None:
    ks = make()
    assert ks.pool.hex() not in repr(ks)
    assert "ks" in repr(KeystoreFile(tmp_path / "ks"))
