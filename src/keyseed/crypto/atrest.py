"""keyseed.crypto.atrest
~~~~~~~~~~~~~~~~~~~~~~~

Sealing of secrets at rest under the server's master key (DESIGN.md section 3): every device
record is stored as ``nonce || ChaCha20-Poly1305(key, record, aad = lp(label, device_id))``,
so a row cannot be moved to another device ID, and a damaged row fails to open instead of
loading as something else.
"""

from __future__ import annotations

import os

from .aead import AEAD_NONCE_LEN, Aead
from .kdf import expand, lp

L_AT_REST = "keyseed/1 at rest"
MASTER_KEY_LEN = 32


class AtRestKey:
    """The key derived from the master key that seals stored records. Repr shows no bytes."""

    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_LEN:
            raise ValueError("the master key is 32 bytes")
        self._aead = Aead(expand(master_key, lp(L_AT_REST), 32))

    def seal(self, name: str, data: bytes) -> bytes:
        nonce = os.urandom(AEAD_NONCE_LEN)
        return nonce + self._aead.seal(nonce, data, lp(L_AT_REST, name))

    def open(self, name: str, blob: bytes) -> bytes:
        """Raises DecryptError if the blob is damaged, sealed for another name or key."""
        return self._aead.open(blob[:AEAD_NONCE_LEN], blob[AEAD_NONCE_LEN:], lp(L_AT_REST, name))

    def __repr__(self) -> str:
        return "AtRestKey(<redacted>)"
