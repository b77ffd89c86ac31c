"""keyseed.crypto.schedule
~~~~~~~~~~~~~~~~~~~~~~~

The key schedule: every derivation the protocol makes, each under its own label and with every
context field length-prefixed (:func:`~keyseed.crypto.kdf.lp`). The labels are part of the
wire specification (docs/protocol.md, "Key schedule") and of the test vectors.

The scheme's "one-way hash of R0 || R1" (step S05) is :func:`derive_k`: HKDF-SHA256 with R0 as
salt, R1 as input keying material, and every piece of context bound into ``info``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .aead import AEAD_KEY_LEN, AEAD_NONCE_LEN
from .kdf import HmacKey, ct_equal, expand, extract, hkdf, hmac_sha256, lp

#: Protocol version bound into every derivation.
VERSION = 1

KEY_LEN = 32
KEY_ID_LEN = 16
MAC_LEN = 32
SEED_LEN = 32  # R0
R1_LEN = 32
S_LEN = 16
SEED_ID_LEN = 16
NONCE_LEN = 32  # Nd, Ns

# One label per purpose. Never reuse a label for a second purpose.
L_K = "keyseed/1 K"
L_KEY_ID = "keyseed/1 key id"
L_P_INFO = "keyseed/1 P"
L_AUTH = "keyseed/1 A"
L_CONTINUITY = "keyseed/1 continuity key"
L_SETUP_CODE = "keyseed/1 setup code"
L_HS_KEY = "keyseed/1 handshake key"
L_HELLO_PROOF = "keyseed/1 hello proof"
L_HELLO_ACK = "keyseed/1 hello ack"
L_FIN = "keyseed/1 fin"
L_204_OK = "keyseed/1 204 ok"
L_TRAFFIC_KEY = "keyseed/1 traffic key"
L_TRAFFIC_IV = "keyseed/1 traffic iv"
L_SAS = "keyseed/1 sas"
L_REJECT = "keyseed/1 implicit rejection"
L_POOL_INIT = "keyseed/1 pool init"
L_POOL_DRAW = "keyseed/1 pool draw"
L_POOL_ABSORB = "keyseed/1 pool absorb"

#: Directions, as bound into traffic keys and AAD.
D2S = "d2s"
S2D = "s2d"

# scrypt cost for the setup-code key: computed once per registration on the server and once
# per setup on the device, never per attempt, so it can afford to be slow (RFC 7914).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


# The fixed ``info`` of the derivations that bind no context.
_LP_KEY_ID = lp(L_KEY_ID)
_LP_CONTINUITY = lp(L_CONTINUITY)
_LP_HS_KEY = lp(L_HS_KEY)
_LP_SAS = lp(L_SAS)
_LP_REJECT = lp(L_REJECT)
_LP_POOL_INIT = lp(L_POOL_INIT)
_LP_POOL_ABSORB = lp(L_POOL_ABSORB)
_LP_TRAFFIC_KEY = lp(L_TRAFFIC_KEY)
# lp(label, VERSION, ...) is lp(label, VERSION) followed by lp(...): the fixed head once.
_LP_K = lp(L_K, VERSION)
_LP_P_INFO = lp(L_P_INFO, VERSION)
_LP_AUTH = lp(L_AUTH, VERSION)
_LP_TRAFFIC_IV = lp(L_TRAFFIC_IV)


class SharedKey:
    """A key shared by a device and the server (the scheme's K), with its subkeys.

    The subkeys are derived once, so that a handshake costs HMACs, not HKDFs. The repr shows
    only the public key id.
    """

    __slots__ = ("_hs", "_prk", "_raw", "continuity", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise ValueError("a shared key is 32 bytes")
        self._raw = bytes(raw)
        # The key as HKDF-Expand's PRK, keyed once for all its subkeys.
        self._prk = HmacKey(self._raw)
        #: Public name of the key: the id HELLO and HELLO_ACK carry.
        self.key_id = self._prk.expand(_LP_KEY_ID, KEY_ID_LEN)
        #: Key of the continuity authenticator A for the exchange that replaces this key.
        self.continuity = self._prk.expand(_LP_CONTINUITY, KEY_LEN)
        # The handshake subkey, keyed for mac().
        self._hs = HmacKey(self._prk.expand(_LP_HS_KEY, KEY_LEN))

    @property
    def raw(self) -> bytes:
        """The key bytes, for storage and for traffic-key derivation only."""
        return self._raw

    def mac(self, label: str, *fields: bytes | str | int) -> bytes:
        """HMAC-SHA256 under the handshake subkey over ``lp(label, *fields)``."""
        return self._hs.mac(lp(label, *fields))

    def sas(self) -> str:
        """Six-digit short authentication string, for a device enrolled without a code."""
        value = int.from_bytes(self._prk.expand(_LP_SAS, 8), "big") % 1_000_000
        return f"{value:06d}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedKey) and ct_equal(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"SharedKey(key_id={self.key_id.hex()})"


def derive_k(
    r0: bytes,
    r1: bytes,
    *,
    suite: str,
    device_id: str,
    epoch: int,
    seed_id: bytes,
    server_fp: bytes,
    prev_key_id: bytes,
    h203: bytes,
) -> SharedKey:
    """S05: K = HKDF-SHA256(salt = R0, ikm = R1, info = lp(label, context...)), 32 bytes."""
    info = _LP_K + lp(suite, device_id, epoch, seed_id, server_fp, prev_key_id, h203)
    return SharedKey(hkdf(ikm=r1, salt=r0, info=info, length=KEY_LEN))


def p_info(
    *, suite: str, device_id: str, epoch: int, seed_id: bytes, nd: bytes, ns: bytes
) -> bytes:
    """S06: the HPKE ``info`` (or OAEP label) that binds P to its context and connection."""
    return _LP_P_INFO + lp(suite, device_id, epoch, seed_id, nd, ns)


def setup_code_key(device_id: str, code: str) -> bytes:
    """k_code: scrypt of the setup code, salted with the device ID. An empty code is allowed
    for devices registered without one (they stay unconfirmed until the SAS is compared)."""
    kdf = Scrypt(
        salt=lp(L_SETUP_CODE, device_id), length=KEY_LEN, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P
    )
    return kdf.derive(code.encode("utf-8"))


def authenticator(
    key: bytes,
    *,
    suite: str,
    device_id: str,
    epoch: int,
    seed_id: bytes,
    nd: bytes,
    ns: bytes,
    r1: bytes,
    s: bytes,
    r0: bytes = b"",
) -> bytes:
    """A, the continuity authenticator carried inside P.

    ``key`` is k_code for an enrolment and the current key's continuity subkey for a rekey:
    either way only the legitimate device can produce it, and only for this connection.
    """
    return hmac_sha256(key, _LP_AUTH + lp(suite, device_id, epoch, seed_id, nd, ns, r1, s, r0))


def traffic_keys(
    k: SharedKey,
    *,
    nd: bytes,
    ns: bytes,
    device_id: str,
    direction: str,
    prk: HmacKey | None = None,
) -> tuple[bytes, bytes]:
    """Per connection and per direction: (key, IV) from HKDF over (K, Nd, Ns) (REVIEW F11).

    ``prk``: :func:`traffic_prk` of the same key and nonces, when the caller keeps it for
    both directions.
    """
    if prk is None:
        prk = traffic_prk(k, nd=nd, ns=ns)
    context = lp(direction, device_id, k.key_id)
    key = prk.expand(_LP_TRAFFIC_KEY + context, AEAD_KEY_LEN)
    iv = prk.expand(_LP_TRAFFIC_IV + context, AEAD_NONCE_LEN)
    return key, iv


def traffic_prk(k: SharedKey, *, nd: bytes, ns: bytes) -> HmacKey:
    """HKDF-Extract(salt = Nd || Ns, K): the same for both directions of a connection."""
    return HmacKey(extract(salt=nd + ns, ikm=k.raw))


def reject_value(k_reject: bytes, p: bytes, length: int) -> bytes:
    """Implicit rejection: the X a failed decryption continues with (REVIEW F10)."""
    return expand(hmac_sha256(k_reject, p), _LP_REJECT, length)


# Device randomness pool (DESIGN.md section 3): every value the device draws mixes fresh OS
# entropy with a pool that starts from the per-device install secret and absorbs every R0.


def pool_init(install_secret: bytes) -> bytes:
    return hkdf(ikm=install_secret, salt=b"", info=_LP_POOL_INIT, length=KEY_LEN)


def pool_draw(pool: bytes, entropy: bytes, n: int) -> tuple[bytes, bytes]:
    """Return (n random bytes, next pool). The old pool cannot be recovered from either."""
    okm = hkdf(ikm=entropy, salt=pool, info=lp(L_POOL_DRAW, n), length=n + KEY_LEN)
    return okm[:n], okm[n:]


def pool_absorb(pool: bytes, data: bytes) -> bytes:
    return hkdf(ikm=data, salt=pool, info=_LP_POOL_ABSORB, length=KEY_LEN)
