"""keyseed.crypto.aead: nonce construction and the AEAD boundary."""

from __future__ import annotations

import pytest

from keyseed.crypto.aead import AEAD_KEY_LEN, AEAD_NONCE_LEN, AEAD_TAG_LEN, Aead, make_nonce
from keyseed.crypto.errors import DecryptError, UnsupportedSuite

CIPHERS = ("chacha20-poly1305", "aes-256-gcm")
KEY = bytes(range(32))
IV = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaab")
NONCE = bytes(12)


# -- make_nonce ------------------------------------------------------------------------


def test_make_nonce_seq_zero_is_the_iv() -> None:
    assert make_nonce(IV, 0) == IV


def test_make_nonce_xors_seq_into_the_low_bytes() -> None:
    assert make_nonce(IV, 1) == bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaaa")


def test_make_nonce_seq_is_big_endian_right_aligned() -> None:
    assert make_nonce(bytes(12), 0x0102) == bytes(10) + b"\x01\x02"


def test_make_nonce_largest_seq_touches_only_the_last_8_bytes() -> None:
    assert make_nonce(bytes(12), 2**64 - 1) == bytes(4) + b"\xff" * 8


def test_make_nonce_distinct_for_distinct_seq() -> None:
    assert len({make_nonce(IV, s) for s in range(1000)}) == 1000


@pytest.mark.parametrize("seq", [-1, 2**64])
def test_make_nonce_rejects_seq_out_of_range(seq: int) -> None:
    with pytest.raises(ValueError, match="sequence"):
        make_nonce(IV, seq)


@pytest.mark.parametrize("length", [0, 11, 13])
def test_make_nonce_rejects_iv_of_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        make_nonce(bytes(length), 0)


# -- Aead --------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_seal_open_round_trip(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    ct = aead.seal(NONCE, b"hello", b"aad")
    assert aead.open(NONCE, ct, b"aad") == b"hello"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_ciphertext_is_plaintext_plus_tag(cipher: str) -> None:
    ct = Aead(KEY, cipher).seal(NONCE, b"hello", b"")
    assert len(ct) == 5 + AEAD_TAG_LEN
    assert b"hello" not in ct


@pytest.mark.parametrize("cipher", CIPHERS)
def test_empty_plaintext_round_trip(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    assert aead.open(NONCE, aead.seal(NONCE, b"", b""), b"") == b""


def test_ciphers_produce_different_ciphertexts() -> None:
    a = Aead(KEY, "chacha20-poly1305").seal(NONCE, b"hello", b"")
    b = Aead(KEY, "aes-256-gcm").seal(NONCE, b"hello", b"")
    assert a != b


def test_default_cipher_is_chacha20_poly1305() -> None:
    assert Aead(KEY).cipher == "chacha20-poly1305"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampered_ciphertext_fails(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    ct = bytearray(aead.seal(NONCE, b"hello", b"aad"))
    ct[0] ^= 1
    with pytest.raises(DecryptError):
        aead.open(NONCE, bytes(ct), b"aad")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampered_tag_fails(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    ct = bytearray(aead.seal(NONCE, b"hello", b"aad"))
    ct[-1] ^= 0x80
    with pytest.raises(DecryptError):
        aead.open(NONCE, bytes(ct), b"aad")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncated_ciphertext_fails(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    ct = aead.seal(NONCE, b"hello", b"aad")
    with pytest.raises(DecryptError):
        aead.open(NONCE, ct[:-1], b"aad")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_aad_fails(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    ct = aead.seal(NONCE, b"hello", b"aad")
    with pytest.raises(DecryptError):
        aead.open(NONCE, ct, b"aae")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_nonce_fails(cipher: str) -> None:
    aead = Aead(KEY, cipher)
    ct = aead.seal(NONCE, b"hello", b"aad")
    with pytest.raises(DecryptError):
        aead.open(make_nonce(NONCE, 1), ct, b"aad")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_key_fails(cipher: str) -> None:
    ct = Aead(KEY, cipher).seal(NONCE, b"hello", b"")
    with pytest.raises(DecryptError):
        Aead(bytes(32), cipher).open(NONCE, ct, b"")


def test_decrypt_error_carries_no_detail() -> None:
    aead = Aead(KEY)
    with pytest.raises(DecryptError) as info:
        aead.open(NONCE, b"\x00" * 20, b"")
    assert str(info.value) == "decryption failed"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("cipher", CIPHERS)
def test_repr_shows_no_key_bytes(cipher: str) -> None:
    text = repr(Aead(KEY, cipher))
    assert KEY.hex() not in text
    assert repr(KEY) not in text
    assert "redacted" in text
    assert cipher in text


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_rejects_key_of_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Aead(bytes(length))


def test_rejects_unknown_cipher() -> None:
    with pytest.raises(UnsupportedSuite):
        Aead(KEY, "aes-128-gcm")


def test_constants() -> None:
    assert (AEAD_KEY_LEN, AEAD_NONCE_LEN, AEAD_TAG_LEN) == (32, 12, 16)
