"""keyseed.crypto.pairkdf
~~~~~~~~~~~~~~~~~~~~~~~

The key schedule of device-to-device pair keys (docs/protocol.md, "Pair keys") and the
ephemeral X25519 of the end-to-end mode, as thin wrappers over pyca.

For pair epoch ``e`` of pair ``pair_id`` between ``initiator`` and ``responder``::

    th      = SHA-256(lp("keyseed/1 pair transcript", version, mode, pair_id, e,
                         initiator, responder, e_i, e_r))      (e_i, e_r empty in relay mode)
    prk     = HKDF-Extract(salt = chain seed of epoch e - 1 (empty on a new chain), ikm)
    i2r     = HKDF-Expand(prk, lp("keyseed/1 pair i2r", th), 44)  -> key 32 || iv 12
    r2i     = HKDF-Expand(prk, lp("keyseed/1 pair r2i", th), 44)
    chain   = HKDF-Expand(prk, lp("keyseed/1 pair chain", th), 32)  (end-to-end mode only)

``ikm`` is the server-drawn material in relay mode and the X25519 shared secret in the
end-to-end mode. The chain seed of the next epoch is the server's fresh seed delivered with
this key (relay: the scheme's seed mechanism) or ``chain`` (end-to-end: only the devices
know it). One key and IV per direction, so no nonce is ever used twice under one key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .aead import AEAD_KEY_LEN, AEAD_NONCE_LEN
from .errors import CryptoError
from .kdf import expand, extract, lp, sha256
from .schedule import VERSION

L_PAIR_TRANSCRIPT = "keyseed/1 pair transcript"
L_PAIR_I2R = "keyseed/1 pair i2r"
L_PAIR_R2I = "keyseed/1 pair r2i"
L_PAIR_CHAIN = "keyseed/1 pair chain"

#: Sizes of the pair's public values (bytes).
PAIR_ID_LEN = 16
PAIR_MATERIAL_LEN = 32
PAIR_SEED_LEN = 32
X25519_LEN = 32


class BadPublicKey(CryptoError):
    """An X25519 public value that is malformed or of small order (all-zero shared secret)."""


@dataclass(frozen=True, slots=True, repr=False)
class PairKeys:
    """The traffic keys of one pair epoch: one AEAD key and IV per direction."""

    i2r_key: bytes = field(repr=False)
    i2r_iv: bytes = field(repr=False)
    r2i_key: bytes = field(repr=False)
    r2i_iv: bytes = field(repr=False)
    #: The end-to-end mode's chain seed for the next epoch (unused in relay mode).
    chain: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "PairKeys(<redacted>)"


def pair_transcript(
    *,
    mode: str,
    pair_id: bytes,
    epoch: int,
    initiator: str,
    responder: str,
    e_i: bytes = b"",
    e_r: bytes = b"",
) -> bytes:
    """``th``: binds both identities, their roles, the pair, its epoch and both halves."""
    return sha256(
        lp(L_PAIR_TRANSCRIPT, VERSION, mode, pair_id, epoch, initiator, responder, e_i, e_r)
    )


def pair_keys(ikm: bytes, salt: bytes, th: bytes) -> PairKeys:
    """Derive one epoch's keys from ``ikm`` (material or X25519 secret) and the chain seed."""
    prk = extract(salt, ikm)
    n = AEAD_KEY_LEN + AEAD_NONCE_LEN
    i2r = expand(prk, lp(L_PAIR_I2R, th), n)
    r2i = expand(prk, lp(L_PAIR_R2I, th), n)
    return PairKeys(
        i2r_key=i2r[:AEAD_KEY_LEN],
        i2r_iv=i2r[AEAD_KEY_LEN:],
        r2i_key=r2i[:AEAD_KEY_LEN],
        r2i_iv=r2i[AEAD_KEY_LEN:],
        chain=expand(prk, lp(L_PAIR_CHAIN, th), PAIR_SEED_LEN),
    )


class EphemeralKey:
    """An ephemeral X25519 key of the end-to-end mode. Lives in memory only; no repr bytes."""

    __slots__ = ("_priv", "public")

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._priv = private or X25519PrivateKey.generate()
        #: The public half, 32 bytes (RFC 7748).
        self.public = self._priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def exchange(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with ``peer_public``.

        Raises:
            BadPublicKey: not 32 bytes, or a small-order point (all-zero secret).
        """
        if len(peer_public) != X25519_LEN:
            raise BadPublicKey("X25519 public value is 32 bytes")
        try:
            secret = self._priv.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise BadPublicKey("small-order X25519 public value") from None
        if secret == bytes(X25519_LEN):  # pragma: no cover - pyca already refuses it
            raise BadPublicKey("small-order X25519 public value")
        return secret

    def __repr__(self) -> str:
        return "EphemeralKey(<redacted>)"


__all__ = [
    "L_PAIR_CHAIN",
    "L_PAIR_I2R",
    "L_PAIR_R2I",
    "L_PAIR_TRANSCRIPT",
    "PAIR_ID_LEN",
    "PAIR_MATERIAL_LEN",
    "PAIR_SEED_LEN",
    "X25519_LEN",
    "BadPublicKey",
    "EphemeralKey",
    "PairKeys",
    "pair_keys",
    "pair_transcript",
]
