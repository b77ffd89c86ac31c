"""keyseed.crypto.errors
~~~~~~~~~~~~~~~~~~~~~

Exceptions raised at the pyca boundary. ``InvalidTag`` and every decryption failure become
:class:`DecryptError`, which carries no detail: the cause of a failed decryption is never
something a caller should branch on or log (REVIEW F10, no oracle).
"""

from __future__ import annotations


class CryptoError(Exception):
    """Root of the crypto layer's exceptions."""


class DecryptError(CryptoError):
    """A ciphertext did not open (wrong key, tampered, truncated). Deliberately detail-free."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


class UnsupportedSuite(CryptoError):
    """The suite is unknown, or this backend lacks it. A side never falls back to another."""
