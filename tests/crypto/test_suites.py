"""keyseed.crypto.suites: the PKE suites that carry P, their key codecs and the registry."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from keyseed.crypto.errors import DecryptError, UnsupportedSuite
from keyseed.crypto.suites import (
    DEFAULT_SUITE,
    SUITES,
    PKESuite,
    PrivateKey,
    PublicKey,
    fingerprint,
    get_suite,
)

NAMES = ("hpke-x25519", "hpke-mlkem768-x25519", "rsa-oaep")
INFO = b"context"


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    """One long-lived key per suite; RSA-3072 generation is slow enough to share."""
    return {name: get_suite(name).generate() for name in NAMES}


@pytest.fixture(scope="module")
def other_rsa_key() -> PrivateKey:
    return get_suite("rsa-oaep").generate()


@pytest.fixture(scope="module")
def rsa_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _other_key(name: str, other_rsa: PrivateKey) -> PrivateKey:
    return other_rsa if name == "rsa-oaep" else get_suite(name).generate()


# -- registry -------------------------------------------------------------------------------


def test_registry_holds_exactly_the_three_suites() -> None:
    assert set(SUITES) == set(NAMES)


def test_registry_keys_match_suite_names() -> None:
    for name, suite in SUITES.items():
        assert suite.name == name


def test_default_suite_is_hpke_x25519() -> None:
    assert DEFAULT_SUITE == "hpke-x25519"
    assert next(iter(SUITES)) == DEFAULT_SUITE


@pytest.mark.parametrize("name", NAMES)
def test_get_suite_returns_the_registered_suite(name: str) -> None:
    assert get_suite(name) is SUITES[name]


@pytest.mark.parametrize("name", ["", "hpke", "HPKE-X25519", "rsa-pkcs1"])
def test_get_suite_unknown_name_is_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedSuite):
        get_suite(name)


@pytest.mark.parametrize(
    ("name", "flag"),
    [("hpke-x25519", True), ("hpke-mlkem768-x25519", True), ("rsa-oaep", False)],
)
def test_one_time_keys_flag(name: str, flag: bool) -> None:
    """rsa-oaep has no one-time keys, hence no forward secrecy."""
    assert SUITES[name].one_time_keys is flag


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encrypt_decrypt_round_trip(name: str, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    ct = suite.encrypt(key.public_key, b"R1 || S || A", INFO)
    assert suite.decrypt(key, ct, INFO) == b"R1 || S || A"


@pytest.mark.parametrize("name", NAMES)
def test_encryption_is_randomised(name: str, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    assert suite.encrypt(key.public_key, b"x", INFO) != suite.encrypt(key.public_key, b"x", INFO)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length", [0, 1, 80, 112])
def test_ciphertext_len_is_exact(name: str, length: int, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    ct = suite.encrypt(key.public_key, b"\x07" * length, INFO)
    assert len(ct) == suite.ciphertext_len(length)


def test_rsa_ciphertext_is_one_modulus() -> None:
    assert get_suite("rsa-oaep").ciphertext_len(1) == 384


@pytest.mark.parametrize("name", NAMES)
def test_public_key_reloads_from_wire_bytes(name: str, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    loaded = suite.load_public(key.public_key.raw)
    assert loaded == key.public_key
    assert suite.decrypt(key, suite.encrypt(loaded, b"x", INFO), INFO) == b"x"


@pytest.mark.parametrize("name", NAMES)
def test_private_key_reloads_from_storage_bytes(name: str, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    loaded = suite.load_private(suite.private_bytes(key))
    assert loaded.public_key == key.public_key
    assert suite.decrypt(loaded, suite.encrypt(key.public_key, b"x", INFO), INFO) == b"x"


@pytest.mark.parametrize(("name", "length"), [("hpke-x25519", 32), ("hpke-mlkem768-x25519", 1216)])
def test_hpke_public_key_wire_length(name: str, length: int, keys: dict[str, PrivateKey]) -> None:
    assert len(keys[name].public_key.raw) == length


# -- decryption failures --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_decrypt_with_wrong_info_fails(name: str, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    ct = suite.encrypt(key.public_key, b"x", INFO)
    with pytest.raises(DecryptError):
        suite.decrypt(key, ct, INFO + b"!")


@pytest.mark.parametrize("name", NAMES)
def test_decrypt_with_other_key_fails(
    name: str, keys: dict[str, PrivateKey], other_rsa_key: PrivateKey
) -> None:
    suite, key = get_suite(name), keys[name]
    ct = suite.encrypt(key.public_key, b"x", INFO)
    with pytest.raises(DecryptError):
        suite.decrypt(_other_key(name, other_rsa_key), ct, INFO)


@pytest.mark.parametrize("name", NAMES)
def test_decrypt_tampered_ciphertext_fails(name: str, keys: dict[str, PrivateKey]) -> None:
    suite, key = get_suite(name), keys[name]
    ct = bytearray(suite.encrypt(key.public_key, b"x", INFO))
    ct[-1] ^= 1
    with pytest.raises(DecryptError):
        suite.decrypt(key, bytes(ct), INFO)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ct", [b"", b"\x00", b"\x00" * 2000])
def test_decrypt_garbage_fails(name: str, ct: bytes, keys: dict[str, PrivateKey]) -> None:
    with pytest.raises(DecryptError):
        get_suite(name).decrypt(keys[name], ct, INFO)


def test_key_of_another_suite_is_refused(keys: dict[str, PrivateKey]) -> None:
    hpke = get_suite("hpke-x25519")
    with pytest.raises(UnsupportedSuite):
        hpke.encrypt(keys["hpke-mlkem768-x25519"].public_key, b"x", INFO)
    with pytest.raises(UnsupportedSuite):
        hpke.decrypt(keys["rsa-oaep"], b"x", INFO)
    with pytest.raises(UnsupportedSuite):
        hpke.private_bytes(keys["rsa-oaep"])


# -- key codecs: rejection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "match"),
    [
        ("hpke-x25519", b"", "32 bytes"),
        ("hpke-x25519", bytes(31), "32 bytes"),
        ("hpke-x25519", bytes(33), "32 bytes"),
        ("hpke-mlkem768-x25519", bytes(32), "1216 bytes"),
        ("hpke-mlkem768-x25519", bytes(1215), "1216 bytes"),
        ("hpke-mlkem768-x25519", bytes(1217), "1216 bytes"),
        ("rsa-oaep", b"", "DER"),
        ("rsa-oaep", b"garbage", "DER"),
        ("rsa-oaep", bytes(422), "DER"),
    ],
)
def test_load_public_rejects_wrong_length_or_garbage(name: str, raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_suite(name).load_public(raw)


def test_load_public_mlkem_rejects_out_of_range_coefficients() -> None:
    """1184 bytes of 0xff decode to coefficients >= q: not a valid ML-KEM-768 key."""
    with pytest.raises(ValueError, match="ML-KEM"):  # pyca's message
        get_suite("hpke-mlkem768-x25519").load_public(b"\xff" * 1184 + bytes(32))


def test_load_public_rsa_rejects_2048_bit_key(rsa_2048: rsa.RSAPrivateKey) -> None:
    der = rsa_2048.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="3072"):
        get_suite("rsa-oaep").load_public(der)


def test_load_public_rsa_rejects_exponent_3(keys: dict[str, PrivateKey]) -> None:
    loaded = serialization.load_der_public_key(keys["rsa-oaep"].public_key.raw)
    assert isinstance(loaded, rsa.RSAPublicKey)
    weak = rsa.RSAPublicNumbers(3, loaded.public_numbers().n).public_key()
    der = weak.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="65537"):
        get_suite("rsa-oaep").load_public(der)


def test_load_public_rsa_rejects_non_rsa_key() -> None:
    der = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="RSA-3072"):
        get_suite("rsa-oaep").load_public(der)


@pytest.mark.parametrize(
    ("name", "raw", "match"),
    [
        ("hpke-x25519", bytes(31), "32 bytes"),
        ("hpke-x25519", bytes(33), "32 bytes"),
        ("hpke-mlkem768-x25519", bytes(95), "96 bytes"),
        ("hpke-mlkem768-x25519", bytes(97), "96 bytes"),
        ("rsa-oaep", b"", "key"),  # pyca's message: "Could not deserialize key data ..."
        ("rsa-oaep", b"garbage", "key"),
    ],
)
def test_load_private_rejects_wrong_length_or_garbage(name: str, raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_suite(name).load_private(raw)


def test_load_private_rsa_rejects_2048_bit_key(rsa_2048: rsa.RSAPrivateKey) -> None:
    der = rsa_2048.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="3072"):
        get_suite("rsa-oaep").load_private(der)


def test_load_private_rsa_rejects_non_rsa_key() -> None:
    der = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="RSA-3072"):
        get_suite("rsa-oaep").load_private(der)


# -- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_length_prefixed_suite_and_key() -> None:
    """Recomputed by hand, as an interoperable implementation would."""
    label = b"keyseed/1 fingerprint"
    suite = b"hpke-x25519"
    raw = bytes(range(32))
    data = b"".join(len(f).to_bytes(2, "big") + f for f in (label, suite, raw))
    assert fingerprint("hpke-x25519", raw) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint_is_stable(name: str, keys: dict[str, PrivateKey]) -> None:
    pub = keys[name].public_key
    reloaded = get_suite(name).load_public(pub.raw)
    assert pub.fingerprint == reloaded.fingerprint == fingerprint(name, pub.raw)
    assert len(pub.fingerprint) == 32


def test_fingerprint_is_bound_to_the_suite() -> None:
    raw = bytes(range(32))
    assert fingerprint("hpke-x25519", raw) != fingerprint("hpke-mlkem768-x25519", raw)


def test_fingerprint_differs_per_key(keys: dict[str, PrivateKey]) -> None:
    other = get_suite("hpke-x25519").generate()
    assert other.public_key.fingerprint != keys["hpke-x25519"].public_key.fingerprint


# -- reprs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_private_key_repr_is_redacted(name: str, keys: dict[str, PrivateKey]) -> None:
    key = keys[name]
    text = repr(key)
    assert get_suite(name).private_bytes(key).hex() not in text
    assert "redacted" in text
    assert name in text


@pytest.mark.parametrize("name", NAMES)
def test_public_key_repr_shows_only_a_fingerprint_prefix(
    name: str, keys: dict[str, PrivateKey]
) -> None:
    pub = keys[name].public_key
    text = repr(pub)
    assert pub.raw.hex() not in text
    assert pub.fingerprint[:8].hex() in text


# -- availability ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_suite_is_available_in_this_backend(name: str) -> None:
    assert SUITES[name].available()


def test_unavailable_suite_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A side never falls back: a suite the backend cannot run is refused by name."""

    class Broken(PKESuite):
        name = "broken"
        one_time_keys = False

        def generate(self) -> PrivateKey:
            raise ValueError("no backend")

        def private_bytes(self, key: PrivateKey) -> bytes:
            raise NotImplementedError

        def load_private(self, raw: bytes) -> PrivateKey:
            raise NotImplementedError

        def load_public(self, raw: bytes) -> PublicKey:
            raise NotImplementedError

        def encrypt(self, public_key: PublicKey, plaintext: bytes, info: bytes) -> bytes:
            raise NotImplementedError

        def decrypt(self, private_key: PrivateKey, ciphertext: bytes, info: bytes) -> bytes:
            raise NotImplementedError

        def ciphertext_len(self, plaintext_len: int) -> int:
            return 0

    monkeypatch.setattr("keyseed.crypto.suites._available", {})
    monkeypatch.setitem(SUITES, "broken", Broken())
    with pytest.raises(UnsupportedSuite, match="not available"):
        get_suite("broken")
