"""keyseed.crypto.kdf
~~~~~~~~~~~~~~~~~~

HKDF-SHA256, HMAC-SHA256, SHA-256, constant-time comparison, and the length-prefixed
encoding ``lp`` that every derivation uses for its context, so that no two different field
lists can encode to the same bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

_SHA256 = hashes.SHA256()

#: Largest field ``lp`` accepts: the length is a big-endian u16.
LP_MAX = 0xFFFF


def lp(*fields: bytes | str | int) -> bytes:
    """Encode fields as ``u16-be length || bytes`` each.

    ``str`` is UTF-8, ``int`` is an unsigned 64-bit big-endian integer (8 bytes).

    Raises:
        ValueError: a field is longer than 65535 bytes or an integer is out of range.
    """
    out = bytearray()
    for field in fields:
        raw: bytes
        if type(field) is bytes:
            raw = field
        elif type(field) is bool:
            raise TypeError("lp() does not encode bool")
        elif isinstance(field, int):
            if not 0 <= field < 2**64:
                raise ValueError("lp() integer out of range")
            raw = field.to_bytes(8, "big")
        elif isinstance(field, str):
            raw = field.encode("utf-8")
        else:
            raw = bytes(field)
        if len(raw) > LP_MAX:
            raise ValueError("lp() field longer than 65535 bytes")
        out += len(raw).to_bytes(2, "big")
        out += raw
    return bytes(out)


def sha256(data: bytes) -> bytes:
    digest = hashes.Hash(_SHA256)
    digest.update(data)
    return digest.finalize()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, _SHA256)
    mac.update(data)
    return mac.finalize()


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): Extract then Expand."""
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(ikm)


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2)."""
    return HKDF.extract(_SHA256, salt, ikm)


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3). ``prk`` must be a uniformly random key."""
    return HKDFExpand(algorithm=_SHA256, length=length, info=info).derive(prk)


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison for anything secret (MACs, S, authenticators)."""
    return constant_time.bytes_eq(a, b)
