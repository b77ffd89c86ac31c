"""keyseed.crypto.kdf
~~~~~~~~~~~~~~~~~~

HKDF-SHA256, HMAC-SHA256, SHA-256, constant-time comparison, and the length-prefixed
encoding ``lp`` that every derivation uses for its context, so that no two different field
lists can encode to the same bytes.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import constant_time, hashes, hmac

_SHA256 = hashes.SHA256()
_HASH_LEN = 32

#: Largest field ``lp`` accepts: the length is a big-endian u16.
LP_MAX = 0xFFFF

_U16 = struct.Struct(">H").pack
# An integer field: its length (8) and the value, in one call.
_U64_FIELD = struct.Struct(">HQ").pack


def lp(*fields: bytes | str | int) -> bytes:
    """Encode fields as ``u16-be length || bytes`` each.

    ``str`` is UTF-8, ``int`` is an unsigned 64-bit big-endian integer (8 bytes).

    Raises:
        ValueError: a field is longer than 65535 bytes or an integer is out of range.
    """
    out: list[bytes] = []
    append = out.append
    for field in fields:
        t = type(field)
        raw: bytes
        if t is bytes:
            raw = field  # type: ignore[assignment]
        elif t is str:
            # Text fields are labels, suite names, device IDs, directions: few and recurring.
            encoded = _LP_TEXT.get(field)  # type: ignore[arg-type]
            if encoded is None:
                encoded = _lp_text(field)  # type: ignore[arg-type]
            append(encoded)
            continue
        elif t is int:
            if not 0 <= field < 0x1_0000_0000_0000_0000:  # type: ignore[operator]
                raise ValueError("lp() integer out of range")
            append(_U64_FIELD(8, field))
            continue
        elif t is bool:
            raise TypeError("lp() does not encode bool")
        elif isinstance(field, int):
            if not 0 <= field < 2**64:
                raise ValueError("lp() integer out of range")
            append(_U64_FIELD(8, int(field)))
            continue
        elif isinstance(field, str):
            raw = str(field).encode("utf-8")
        else:
            raw = bytes(field)
        n = len(raw)
        if n > LP_MAX:
            raise ValueError("lp() field longer than 65535 bytes")
        append(_U16(n))
        append(raw)
    return b"".join(out)


# lp() of short text fields, remembered (at most _LP_TEXT_MAX of them, then started afresh).
_LP_TEXT: dict[str, bytes] = {}
_LP_TEXT_MAX = 4096
_LP_TEXT_LEN = 64


def _lp_text(field: str) -> bytes:
    raw = field.encode("utf-8")
    if len(raw) > LP_MAX:
        raise ValueError("lp() field longer than 65535 bytes")
    encoded = _U16(len(raw)) + raw
    if len(raw) <= _LP_TEXT_LEN:
        if len(_LP_TEXT) >= _LP_TEXT_MAX:
            _LP_TEXT.clear()
        _LP_TEXT[field] = encoded
    return encoded


_U64_TRIPLE = struct.Struct(">HQHQHQ").pack


def lp_u64x3(a: int, b: int, c: int) -> bytes:
    """``lp(a, b, c)`` for three unsigned 64-bit integers, in one call (the channel's AAD
    ends with three: type, epoch, sequence number).

    Raises:
        ValueError: a value is out of range.
    """
    if not (0 <= a < 2**64 and 0 <= b < 2**64 and 0 <= c < 2**64):
        raise ValueError("lp() integer out of range")
    return _U64_TRIPLE(8, a, 8, b, 8, c)


def sha256(data: bytes) -> bytes:
    digest = hashes.Hash(_SHA256)
    digest.update(data)
    return digest.finalize()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, _SHA256)
    mac.update(data)
    return mac.finalize()


class HmacKey:
    """HMAC-SHA256 under one key, for a key that MACs several messages: the keyed state is
    set up once and copied per message, which costs less than keying a new HMAC each time.
    Its repr shows no key."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.HMAC(key, _SHA256)

    def mac(self, data: bytes) -> bytes:
        m = self._base.copy()
        m.update(data)
        return m.finalize()

    def expand(self, info: bytes, length: int) -> bytes:
        """HKDF-Expand with this key as the PRK, for ``length`` of at most 32 bytes."""
        if not 0 <= length <= _HASH_LEN:
            raise ValueError("HmacKey.expand gives at most 32 bytes")
        return self.mac(info + b"\x01")[:length]

    def __repr__(self) -> str:
        return "HmacKey(<redacted>)"


# HKDF (RFC 5869) written out over pyca's HMAC-SHA256: a derivation is then one or two HMACs
# instead of a KDF object per call, which the key schedule makes dozens of per exchange.


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): Extract then Expand."""
    return expand(extract(salt, ikm), info, length)


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2). An empty salt is HashLen zeros."""
    return hmac_sha256(salt or b"\x00" * _HASH_LEN, ikm)


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3). ``prk`` must be a uniformly random key.

    Raises:
        ValueError: ``length`` is over 255 * 32 bytes.
    """
    if not 0 <= length <= 255 * _HASH_LEN:
        raise ValueError("Cannot derive keys larger than 8160 octets.")
    if length <= _HASH_LEN:
        return hmac_sha256(prk, info + b"\x01")[:length]
    key = HmacKey(prk)
    okm = t = b""
    i = 0
    while len(okm) < length:
        i += 1
        t = key.mac(t + info + bytes((i,)))
        okm += t
    return okm[:length]


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison for anything secret (MACs, S, authenticators)."""
    return constant_time.bytes_eq(a, b)
