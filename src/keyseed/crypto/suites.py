"""keyseed.crypto.suites
~~~~~~~~~~~~~~~~~~~~~

The public-key suites that carry P (DESIGN.md section 3), behind one ABC and a registry keyed
by the suite's wire name, the way noiseprotocol keeps ``functions/`` apart from its backends.

=========================  ==============================================================
``hpke-x25519``            HPKE base mode, RFC 9180: DHKEM(X25519), HKDF-SHA256,
                           ChaCha20-Poly1305. The default.
``hpke-mlkem768-x25519``   The same with the hybrid KEM ML-KEM-768 + X25519 (X-Wing,
                           ``hpke.KEM.MLKEM768_X25519``), for long-term and one-time keys.
``rsa-oaep``               RSA-3072, OAEP with SHA-256 and MGF1-SHA-256, the OAEP label
                           carrying the binding. The scheme's own; opt-in, never a default
                           or a fallback, and without one-time keys: no forward secrecy.
=========================  ==============================================================

A backend that lacks a suite reports it through :meth:`PKESuite.available`, and
:func:`get_suite` refuses it: a side never silently degrades to another suite.
"""

from __future__ import annotations

import abc
import threading
from typing import ClassVar

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, padding, rsa, x25519

from .errors import DecryptError, UnsupportedSuite
from .kdf import lp, sha256

_HpkePub = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
_HpkePriv = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


class PublicKey:
    """A suite's public key: its wire bytes and the pyca object behind them."""

    __slots__ = ("_fp", "_obj", "raw", "suite")

    def __init__(self, suite: str, raw: bytes, obj: object) -> None:
        #: Wire name of the suite this key belongs to.
        self.suite = suite
        #: The key's wire encoding (what 206 carries and what a fingerprint hashes).
        self.raw = raw
        self._obj = obj
        self._fp: bytes | None = None

    @property
    def fingerprint(self) -> bytes:
        if self._fp is None:
            self._fp = fingerprint(self.suite, self.raw)
        return self._fp

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.suite, self.raw) == (other.suite, other.raw)

    def __hash__(self) -> int:
        return hash((self.suite, self.raw))

    def __repr__(self) -> str:
        return f"PublicKey({self.suite}, fp={self.fingerprint[:8].hex()})"


class PrivateKey:
    """A suite's private key. Its repr never shows key material."""

    __slots__ = ("_obj", "public_key", "suite")

    def __init__(self, suite: str, obj: object, public_key: PublicKey) -> None:
        #: Wire name of the suite this key belongs to.
        self.suite = suite
        #: The matching public key.
        self.public_key = public_key
        self._obj = obj

    def __repr__(self) -> str:
        return f"PrivateKey({self.suite}, fp={self.public_key.fingerprint[:8].hex()}, <redacted>)"


def fingerprint(suite: str, public_raw: bytes) -> bytes:
    """SHA-256 over the suite name and the public key's wire bytes (32 bytes)."""
    return sha256(lp("keyseed/1 fingerprint", suite, public_raw))


class PKESuite(abc.ABC):
    """Public-key encryption of P. Subclasses are stateless singletons."""

    #: Wire name of the suite.
    name: ClassVar[str]
    #: Whether the server issues one-time keys for it (forward secrecy).
    one_time_keys: ClassVar[bool]

    @abc.abstractmethod
    def generate(self) -> PrivateKey: ...

    @abc.abstractmethod
    def private_bytes(self, key: PrivateKey) -> bytes:
        """Serialise a private key for storage (the storage layer seals it)."""

    @abc.abstractmethod
    def load_private(self, raw: bytes) -> PrivateKey: ...

    @abc.abstractmethod
    def load_public(self, raw: bytes) -> PublicKey:
        """Parse a public key from its wire bytes.

        Raises:
            ValueError: the bytes are not a valid key of this suite.
        """

    @abc.abstractmethod
    def encrypt(self, public_key: PublicKey, plaintext: bytes, info: bytes) -> bytes: ...

    @abc.abstractmethod
    def decrypt(self, private_key: PrivateKey, ciphertext: bytes, info: bytes) -> bytes:
        """Open a ciphertext.

        Raises:
            DecryptError: for every failure, without detail.
        """

    @abc.abstractmethod
    def ciphertext_len(self, plaintext_len: int) -> int:
        """Exact length of P for a plaintext of this length (a cheap check before decryption)."""

    def available(self) -> bool:
        """Whether this backend can run the suite (a round trip with a throwaway key)."""
        try:
            key = self.generate()
            return self.decrypt(key, self.encrypt(key.public_key, b"probe", b""), b"") == b"probe"
        except (UnsupportedAlgorithm, DecryptError, ValueError, TypeError):
            return False

    def _check(self, key: PublicKey | PrivateKey) -> None:
        if key.suite != self.name:
            raise UnsupportedSuite(f"{key.suite} key used with suite {self.name}")


#: Entries of each parsed-key cache below.
KEY_CACHE_SIZE = 64


class _KeyCache:
    """A small bounded map from a key's serialised bytes to its parsed object.

    Parsing an X25519 private key costs a scalar multiplication (its public key), and an
    ML-KEM key far more; a server that issued a one-time key usually loads it back in the
    same process for the next 203, and a device parses the one-time public key of 206 again
    when it encrypts. Private keys are taken out when loaded (a one-time key is used once),
    so the cache holds only keys issued and not yet used, at most :data:`KEY_CACHE_SIZE`.
    """

    __slots__ = ("_items", "_lock")

    def __init__(self) -> None:
        self._items: dict[bytes, object] = {}
        self._lock = threading.Lock()

    def put(self, raw: bytes, obj: object) -> None:
        with self._lock:
            items = self._items
            items[raw] = obj
            if len(items) > KEY_CACHE_SIZE:
                del items[next(iter(items))]

    def get(self, raw: bytes) -> object | None:
        with self._lock:
            return self._items.get(raw)

    def take(self, raw: bytes) -> object | None:
        with self._lock:
            return self._items.pop(raw, None)


class _HpkeSuite(PKESuite):
    one_time_keys = True
    _kem: ClassVar[hpke.KEM]

    def __init__(self) -> None:
        self._suite = hpke.Suite(self._kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
        # Keys issued (serialised by private_bytes) and not loaded back yet; public keys
        # parsed lately. Both keyed by the exact bytes, so a hit returns what parsing would.
        self._private_cache = _KeyCache()
        self._public_cache = _KeyCache()

    def private_bytes(self, key: PrivateKey) -> bytes:
        self._check(key)
        raw = self._private_raw(key)
        self._private_cache.put(raw, key)
        return raw

    def load_private(self, raw: bytes) -> PrivateKey:
        key = self._private_cache.take(bytes(raw))
        if isinstance(key, PrivateKey):
            return key
        return self._load_private(raw)

    def load_public(self, raw: bytes) -> PublicKey:
        key = self._public_cache.get(bytes(raw))
        if isinstance(key, PublicKey):
            return key
        pub = self._load_public(raw)
        self._public_cache.put(pub.raw, pub)
        return pub

    @abc.abstractmethod
    def _private_raw(self, key: PrivateKey) -> bytes: ...

    @abc.abstractmethod
    def _load_private(self, raw: bytes) -> PrivateKey: ...

    @abc.abstractmethod
    def _load_public(self, raw: bytes) -> PublicKey: ...

    def encrypt(self, public_key: PublicKey, plaintext: bytes, info: bytes) -> bytes:
        self._check(public_key)
        obj = public_key._obj
        assert isinstance(obj, _HpkePub)
        return self._suite.encrypt(plaintext, obj, info=info)

    def decrypt(self, private_key: PrivateKey, ciphertext: bytes, info: bytes) -> bytes:
        self._check(private_key)
        obj = private_key._obj
        assert isinstance(obj, _HpkePriv)
        try:
            return self._suite.decrypt(ciphertext, obj, info=info)
        except (InvalidTag, ValueError):
            raise DecryptError() from None

    def ciphertext_len(self, plaintext_len: int) -> int:
        return self._kem.enc_length() + plaintext_len + 16


class HpkeX25519(_HpkeSuite):
    """HPKE base mode with DHKEM(X25519), HKDF-SHA256, ChaCha20-Poly1305 (RFC 9180)."""

    name = "hpke-x25519"
    _kem = hpke.KEM.X25519

    def generate(self) -> PrivateKey:
        return self._wrap(x25519.X25519PrivateKey.generate())

    def _wrap(self, key: x25519.X25519PrivateKey) -> PrivateKey:
        pub = key.public_key()
        return PrivateKey(self.name, key, PublicKey(self.name, pub.public_bytes_raw(), pub))

    def _private_raw(self, key: PrivateKey) -> bytes:
        obj = key._obj
        assert isinstance(obj, x25519.X25519PrivateKey)
        return obj.private_bytes_raw()

    def _load_private(self, raw: bytes) -> PrivateKey:
        if len(raw) != 32:
            raise ValueError("hpke-x25519 private key must be 32 bytes")
        return self._wrap(x25519.X25519PrivateKey.from_private_bytes(raw))

    def _load_public(self, raw: bytes) -> PublicKey:
        if len(raw) != 32:
            raise ValueError("hpke-x25519 public key must be 32 bytes")
        return PublicKey(self.name, bytes(raw), x25519.X25519PublicKey.from_public_bytes(raw))


#: ML-KEM-768 key sizes (FIPS 203): the 64-byte seed form of the private key, the public key.
_MLKEM_SEED = 64
_MLKEM_PUB = 1184


class HpkeMlkem768X25519(_HpkeSuite):
    """HPKE with the X-Wing hybrid KEM (ML-KEM-768 + X25519), post-quantum and classical.

    Wire encodings: public key = ML-KEM-768 public key (1184) || X25519 public key (32), as
    in X-Wing; private key (storage only) = ML-KEM-768 seed (64) || X25519 private key (32).
    """

    name = "hpke-mlkem768-x25519"
    _kem = hpke.KEM.MLKEM768_X25519

    def generate(self) -> PrivateKey:
        return self._wrap(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    def _wrap(self, mk: mlkem.MLKEM768PrivateKey, xk: x25519.X25519PrivateKey) -> PrivateKey:
        obj = hpke.MLKEM768X25519PrivateKey(mk, xk)
        mpub, xpub = mk.public_key(), xk.public_key()
        raw = mpub.public_bytes_raw() + xpub.public_bytes_raw()
        pub = PublicKey(self.name, raw, hpke.MLKEM768X25519PublicKey(mpub, xpub))
        return PrivateKey(self.name, (obj, mk, xk), pub)

    def encrypt(self, public_key: PublicKey, plaintext: bytes, info: bytes) -> bytes:
        return super().encrypt(public_key, plaintext, info)

    def decrypt(self, private_key: PrivateKey, ciphertext: bytes, info: bytes) -> bytes:
        self._check(private_key)
        obj = private_key._obj
        assert isinstance(obj, tuple)
        try:
            return self._suite.decrypt(ciphertext, obj[0], info=info)
        except (InvalidTag, ValueError):
            raise DecryptError() from None

    def _private_raw(self, key: PrivateKey) -> bytes:
        obj = key._obj
        assert isinstance(obj, tuple)
        _, mk, xk = obj
        assert isinstance(mk, mlkem.MLKEM768PrivateKey)
        assert isinstance(xk, x25519.X25519PrivateKey)
        return mk.private_bytes_raw() + xk.private_bytes_raw()

    def _load_private(self, raw: bytes) -> PrivateKey:
        if len(raw) != _MLKEM_SEED + 32:
            raise ValueError("hpke-mlkem768-x25519 private key must be 96 bytes")
        mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED])
        return self._wrap(mk, x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED:]))

    def _load_public(self, raw: bytes) -> PublicKey:
        if len(raw) != _MLKEM_PUB + 32:
            raise ValueError("hpke-mlkem768-x25519 public key must be 1216 bytes")
        mpub = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB])
        xpub = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUB:])
        return PublicKey(self.name, bytes(raw), hpke.MLKEM768X25519PublicKey(mpub, xpub))


class RsaOaep(PKESuite):
    """RSA-3072 with OAEP (SHA-256, MGF1-SHA-256); the binding travels as the OAEP label.

    The scheme's own suite. It has no one-time keys (a fresh RSA-3072 key per exchange costs
    far too much), so it has no forward secrecy: whoever steals the long-term private key
    reads every recorded exchange.
    """

    name = "rsa-oaep"
    one_time_keys = False
    BITS = 3072
    _MODULUS_BYTES = BITS // 8

    def generate(self) -> PrivateKey:
        return self._wrap(rsa.generate_private_key(public_exponent=65537, key_size=self.BITS))

    def _wrap(self, key: rsa.RSAPrivateKey) -> PrivateKey:
        pub = key.public_key()
        raw = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PrivateKey(self.name, key, PublicKey(self.name, raw, pub))

    def _padding(self, info: bytes) -> padding.OAEP:
        return padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=info
        )

    def encrypt(self, public_key: PublicKey, plaintext: bytes, info: bytes) -> bytes:
        self._check(public_key)
        obj = public_key._obj
        assert isinstance(obj, rsa.RSAPublicKey)
        return obj.encrypt(plaintext, self._padding(info))

    def decrypt(self, private_key: PrivateKey, ciphertext: bytes, info: bytes) -> bytes:
        self._check(private_key)
        obj = private_key._obj
        assert isinstance(obj, rsa.RSAPrivateKey)
        try:
            return obj.decrypt(ciphertext, self._padding(info))
        except ValueError:
            raise DecryptError() from None

    def ciphertext_len(self, plaintext_len: int) -> int:
        return self._MODULUS_BYTES

    def private_bytes(self, key: PrivateKey) -> bytes:
        self._check(key)
        obj = key._obj
        assert isinstance(obj, rsa.RSAPrivateKey)
        return obj.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def load_private(self, raw: bytes) -> PrivateKey:
        key = serialization.load_der_private_key(raw, password=None)
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != self.BITS:
            raise ValueError("rsa-oaep private key must be RSA-3072")
        return self._wrap(key)

    def load_public(self, raw: bytes) -> PublicKey:
        try:
            key = serialization.load_der_public_key(raw)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError("rsa-oaep public key is not a DER SubjectPublicKeyInfo") from exc
        if (
            not isinstance(key, rsa.RSAPublicKey)
            or key.key_size != self.BITS
            or key.public_numbers().e != 65537
        ):
            raise ValueError("rsa-oaep public key must be RSA-3072 with e = 65537")
        return PublicKey(self.name, bytes(raw), key)


#: Every suite by wire name, default first.
SUITES: dict[str, PKESuite] = {s.name: s for s in (HpkeX25519(), HpkeMlkem768X25519(), RsaOaep())}
DEFAULT_SUITE = HpkeX25519.name

_available: dict[str, bool] = {}


def get_suite(name: str) -> PKESuite:
    """Return a suite by wire name.

    Raises:
        UnsupportedSuite: the name is unknown or this backend cannot run it.
    """
    suite = SUITES.get(name)
    if suite is None:
        raise UnsupportedSuite(f"unknown suite {name!r}")
    if name not in _available:
        _available[name] = suite.available()
    if not _available[name]:
        raise UnsupportedSuite(f"suite {name!r} is not available in this backend")
    return suite
