"""keyseed.crypto
~~~~~~~~~~~~~~

The only package that imports ``cryptography.hazmat``: thin wrappers over pyca/cryptography
for the PKE suites, HKDF, HMAC and the AEAD, plus the key schedule built from them.
Nothing here is hand-rolled; nothing here keeps state.
"""

from __future__ import annotations

from .aead import AEAD_KEY_LEN, AEAD_NONCE_LEN, Aead, make_nonce
from .errors import CryptoError, DecryptError, UnsupportedSuite
from .kdf import ct_equal, expand, extract, hkdf, hmac_sha256, lp, sha256
from .suites import (
    SUITES,
    PKESuite,
    PrivateKey,
    PublicKey,
    fingerprint,
    get_suite,
)

__all__ = [
    "AEAD_KEY_LEN",
    "AEAD_NONCE_LEN",
    "SUITES",
    "Aead",
    "CryptoError",
    "DecryptError",
    "PKESuite",
    "PrivateKey",
    "PublicKey",
    "UnsupportedSuite",
    "ct_equal",
    "expand",
    "extract",
    "fingerprint",
    "get_suite",
    "hkdf",
    "hmac_sha256",
    "lp",
    "make_nonce",
    "sha256",
]
