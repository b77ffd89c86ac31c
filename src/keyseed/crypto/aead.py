"""keyseed.crypto.aead
~~~~~~~~~~~~~~~~~~~

The channel's AEAD. One function builds the nonce (IV xor sequence number, as TLS 1.3 and
QUIC do), and :class:`Aead` turns ``InvalidTag`` into :class:`DecryptError` at the boundary.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import DecryptError, UnsupportedSuite

AEAD_KEY_LEN = 32
AEAD_NONCE_LEN = 12
AEAD_TAG_LEN = 16

#: Channel ciphers by wire name.
CHANNEL_CIPHERS = ("chacha20-poly1305", "aes-256-gcm")


def make_nonce(iv: bytes, seq: int) -> bytes:
    """Nonce = IV xor the 64-bit sequence number, right-aligned (RFC 8446 section 5.3)."""
    if len(iv) != AEAD_NONCE_LEN:
        raise ValueError("IV must be 12 bytes")
    if not 0 <= seq < 2**64:
        raise ValueError("sequence number out of range")
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(AEAD_NONCE_LEN, "big")


class Aead:
    """A keyed AEAD. Holds the key inside pyca's object; its repr shows no key bytes."""

    __slots__ = ("_impl", "cipher")

    def __init__(self, key: bytes, cipher: str = "chacha20-poly1305") -> None:
        if len(key) != AEAD_KEY_LEN:
            raise ValueError("AEAD key must be 32 bytes")
        if cipher == "chacha20-poly1305":
            self._impl: ChaCha20Poly1305 | AESGCM = ChaCha20Poly1305(key)
        elif cipher == "aes-256-gcm":
            self._impl = AESGCM(key)
        else:
            raise UnsupportedSuite(f"unknown channel cipher {cipher!r}")
        #: Wire name of the cipher.
        self.cipher = cipher

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._impl.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._impl.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptError() from None

    def __repr__(self) -> str:
        return f"Aead({self.cipher}, key=<redacted>)"
