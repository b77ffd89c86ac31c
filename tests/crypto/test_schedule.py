"""keyseed.crypto.schedule: every derivation binds its whole context, under its own label."""

from __future__ import annotations

import re
from typing import Any

import pytest

from keyseed.crypto import schedule
from keyseed.crypto.kdf import expand, lp
from keyseed.crypto.schedule import (
    D2S,
    KEY_ID_LEN,
    KEY_LEN,
    S2D,
    SharedKey,
    authenticator,
    derive_k,
    p_info,
    pool_absorb,
    pool_draw,
    pool_init,
    reject_value,
    setup_code_key,
    traffic_keys,
)

RAW = bytes(range(32))
ND = b"\x01" * 32
NS = b"\x02" * 32

K_CONTEXT: dict[str, Any] = {
    "suite": "hpke-x25519",
    "device_id": "oven-1",
    "epoch": 3,
    "seed_id": b"\x03" * 16,
    "server_fp": b"\x04" * 32,
    "prev_key_id": b"\x05" * 16,
    "h203": b"\x06" * 32,
}
R0 = b"\x07" * 32
R1 = b"\x08" * 32

AUTH_CONTEXT: dict[str, Any] = {
    "suite": "hpke-x25519",
    "device_id": "oven-1",
    "epoch": 3,
    "seed_id": b"\x03" * 16,
    "nd": ND,
    "ns": NS,
    "r1": R1,
    "s": b"\x09" * 16,
    "r0": R0,
}


def _flip(value: bytes) -> bytes:
    """The same bytes with one bit of the first byte flipped."""
    return bytes([value[0] ^ 1]) + value[1:]


def _changed(value: object) -> object:
    """A different value of the same type."""
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    assert isinstance(value, bytes)
    return _flip(value)


# -- SharedKey ------------------------------------------------------------------------------


def test_shared_key_repr_shows_only_key_id() -> None:
    key = SharedKey(RAW)
    assert repr(key) == f"SharedKey(key_id={key.key_id.hex()})"
    assert RAW.hex() not in repr(key)


def test_shared_key_key_id_is_16_bytes_and_not_the_key() -> None:
    key = SharedKey(RAW)
    assert len(key.key_id) == KEY_ID_LEN
    assert key.key_id not in RAW


def test_shared_key_subkeys_differ_from_each_other_and_the_key() -> None:
    key = SharedKey(RAW)
    assert len({key.raw, key.continuity, key.key_id, key.mac("x")}) == 4


def test_shared_keys_with_equal_bytes_are_equal() -> None:
    assert SharedKey(RAW) == SharedKey(bytes(RAW))
    assert hash(SharedKey(RAW)) == hash(SharedKey(bytes(RAW)))


def test_shared_keys_with_different_bytes_differ() -> None:
    assert SharedKey(RAW) != SharedKey(bytes(32))


def test_shared_key_never_equals_its_bytes() -> None:
    assert SharedKey(RAW) != RAW


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_shared_key_rejects_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SharedKey(bytes(length))


def test_shared_key_copies_its_input() -> None:
    buf = bytearray(RAW)
    key = SharedKey(bytes(buf))
    buf[0] ^= 1
    assert key.raw == RAW


def test_mac_binds_label_and_fields() -> None:
    key = SharedKey(RAW)
    base = key.mac(schedule.L_FIN, b"a", 1)
    assert base == key.mac(schedule.L_FIN, b"a", 1)
    assert base != key.mac(schedule.L_HELLO_ACK, b"a", 1)
    assert base != key.mac(schedule.L_FIN, b"b", 1)
    assert base != key.mac(schedule.L_FIN, b"a", 2)
    assert base != SharedKey(bytes(32)).mac(schedule.L_FIN, b"a", 1)


def test_sas_is_six_digits_with_leading_zeros_kept() -> None:
    """Over 200 keys about 20 have a value below 100000; each must still show 6 digits."""
    codes = [SharedKey(bytes([i]) * 32).sas() for i in range(200)]
    assert all(re.fullmatch(r"[0-9]{6}", c) for c in codes)
    assert any(c.startswith("0") for c in codes)


def test_sas_is_stable_per_key_and_differs_between_keys() -> None:
    assert SharedKey(RAW).sas() == SharedKey(RAW).sas()
    assert len({SharedKey(bytes([i]) * 32).sas() for i in range(50)}) > 45


# -- labels ---------------------------------------------------------------------------------


def test_labels_are_unique() -> None:
    """Never reuse a label for a second purpose."""
    labels = [v for k, v in vars(schedule).items() if k.startswith("L_")]
    assert len(labels) >= 15
    assert len(labels) == len(set(labels))


def test_labels_carry_the_version() -> None:
    labels = [v for k, v in vars(schedule).items() if k.startswith("L_")]
    assert all(v.startswith("keyseed/1 ") for v in labels)


# -- derive_k (S05) -------------------------------------------------------------------------


def test_derive_k_is_deterministic() -> None:
    assert derive_k(R0, R1, **K_CONTEXT) == derive_k(R0, R1, **K_CONTEXT)


def test_derive_k_returns_a_32_byte_shared_key() -> None:
    k = derive_k(R0, R1, **K_CONTEXT)
    assert isinstance(k, SharedKey)
    assert len(k.raw) == KEY_LEN


def test_derive_k_is_not_r0_or_r1() -> None:
    k = derive_k(R0, R1, **K_CONTEXT)
    assert k.raw not in (R0, R1)


@pytest.mark.parametrize("field", sorted(K_CONTEXT))
def test_derive_k_binds_context_field(field: str) -> None:
    changed = dict(K_CONTEXT, **{field: _changed(K_CONTEXT[field])})
    assert derive_k(R0, R1, **changed) != derive_k(R0, R1, **K_CONTEXT)


def test_derive_k_binds_r0() -> None:
    assert derive_k(_flip(R0), R1, **K_CONTEXT) != derive_k(R0, R1, **K_CONTEXT)


def test_derive_k_binds_r1() -> None:
    assert derive_k(R0, _flip(R1), **K_CONTEXT) != derive_k(R0, R1, **K_CONTEXT)


def test_derive_k_does_not_commute_r0_and_r1() -> None:
    assert derive_k(R1, R0, **K_CONTEXT) != derive_k(R0, R1, **K_CONTEXT)


def test_derive_k_fields_do_not_run_together() -> None:
    """Moving a byte from one context field into its neighbour changes K (length prefixes)."""
    a = dict(K_CONTEXT, device_id="oven-1", suite="hpke-x25519")
    b = dict(K_CONTEXT, device_id="1", suite="hpke-x25519oven-")
    assert derive_k(R0, R1, **a) != derive_k(R0, R1, **b)


# -- p_info (S06) ---------------------------------------------------------------------------

P_CONTEXT: dict[str, Any] = {
    "suite": "hpke-x25519",
    "device_id": "oven-1",
    "epoch": 3,
    "seed_id": b"\x03" * 16,
    "nd": ND,
    "ns": NS,
}


@pytest.mark.parametrize("field", sorted(P_CONTEXT))
def test_p_info_binds_context_field(field: str) -> None:
    changed = dict(P_CONTEXT, **{field: _changed(P_CONTEXT[field])})
    assert p_info(**changed) != p_info(**P_CONTEXT)


# -- authenticator (A) ----------------------------------------------------------------------


def test_authenticator_is_a_32_byte_mac() -> None:
    assert len(authenticator(RAW, **AUTH_CONTEXT)) == 32


@pytest.mark.parametrize("field", sorted(AUTH_CONTEXT))
def test_authenticator_binds_field(field: str) -> None:
    changed = dict(AUTH_CONTEXT, **{field: _changed(AUTH_CONTEXT[field])})
    assert authenticator(RAW, **changed) != authenticator(RAW, **AUTH_CONTEXT)


def test_authenticator_binds_key() -> None:
    assert authenticator(bytes(32), **AUTH_CONTEXT) != authenticator(RAW, **AUTH_CONTEXT)


def test_authenticator_does_not_commute_nd_and_ns() -> None:
    swapped = dict(AUTH_CONTEXT, nd=NS, ns=ND)
    assert authenticator(RAW, **swapped) != authenticator(RAW, **AUTH_CONTEXT)


# -- traffic keys ---------------------------------------------------------------------------


def _tk(**over: Any) -> tuple[bytes, bytes]:
    args: dict[str, Any] = {"nd": ND, "ns": NS, "device_id": "oven-1", "direction": D2S}
    args.update(over)
    key = args.pop("k", SharedKey(RAW))
    return traffic_keys(key, **args)


def test_traffic_keys_shapes() -> None:
    key, iv = _tk()
    assert (len(key), len(iv)) == (32, 12)


def test_traffic_keys_differ_per_direction() -> None:
    d2s, s2d = _tk(direction=D2S), _tk(direction=S2D)
    assert d2s[0] != s2d[0]
    assert d2s[1] != s2d[1]


@pytest.mark.parametrize(
    "over",
    [
        {"nd": b"\x0a" * 32},
        {"ns": b"\x0b" * 32},
        {"nd": NS, "ns": ND},
        {"device_id": "oven-2"},
        {"k": SharedKey(bytes(32))},
    ],
    ids=["nd", "ns", "swapped-nonces", "device-id", "key"],
)
def test_traffic_keys_differ_per_connection_and_key(over: dict[str, Any]) -> None:
    base_key, base_iv = _tk()
    key, iv = _tk(**over)
    assert key != base_key
    assert iv != base_iv


def test_traffic_key_is_not_the_shared_key() -> None:
    assert _tk()[0] != RAW


# -- setup code key -------------------------------------------------------------------------


def test_setup_code_key_is_deterministic_and_32_bytes() -> None:
    a = setup_code_key("oven-1", "12345678")
    assert a == setup_code_key("oven-1", "12345678")
    assert len(a) == 32


def test_setup_code_key_differs_per_device_id() -> None:
    assert setup_code_key("oven-1", "12345678") != setup_code_key("oven-2", "12345678")


def test_setup_code_key_differs_per_code() -> None:
    assert setup_code_key("oven-1", "12345678") != setup_code_key("oven-1", "12345679")


def test_setup_code_key_empty_code_is_allowed_and_distinct() -> None:
    assert setup_code_key("oven-1", "") != setup_code_key("oven-1", "12345678")


def test_setup_code_key_is_not_plain_hkdf_of_the_code() -> None:
    """The code is low entropy: it must go through a slow KDF, not a bare expand."""
    code = b"12345678".ljust(32, b"\x00")
    assert setup_code_key("oven-1", "12345678") != expand(code, lp(schedule.L_SETUP_CODE), 32)


# -- implicit rejection ---------------------------------------------------------------------


def test_reject_value_is_deterministic_per_p_and_of_the_requested_length() -> None:
    a = reject_value(RAW, b"P", 80)
    assert a == reject_value(RAW, b"P", 80)
    assert len(a) == 80


def test_reject_value_differs_per_p_and_per_key() -> None:
    a = reject_value(RAW, b"P", 48)
    assert a != reject_value(RAW, b"Q", 48)
    assert a != reject_value(bytes(32), b"P", 48)


# -- randomness pool ------------------------------------------------------------------------


def test_pool_init_is_32_bytes_and_not_the_secret() -> None:
    pool = pool_init(RAW)
    assert len(pool) == 32
    assert pool != RAW
    assert pool_init(bytes(32)) != pool


def test_pool_draw_returns_requested_length_and_a_new_pool() -> None:
    pool = pool_init(RAW)
    out, nxt = pool_draw(pool, b"entropy", 48)
    assert len(out) == 48
    assert len(nxt) == 32
    assert nxt != pool


def test_pool_draw_output_differs_from_the_next_pool() -> None:
    out, nxt = pool_draw(pool_init(RAW), b"e", 32)
    assert out != nxt


def test_pool_draw_never_repeats_for_the_same_entropy_as_the_pool_advances() -> None:
    """Even with a stuck entropy source, an advancing pool yields fresh values."""
    pool = pool_init(RAW)
    outputs, pools = [], [pool]
    for _ in range(100):
        out, pool = pool_draw(pool, b"stuck", 32)
        outputs.append(out)
        pools.append(pool)
    assert len(set(outputs)) == 100
    assert len(set(pools)) == 101


def test_pool_draw_mixes_in_entropy() -> None:
    pool = pool_init(RAW)
    assert pool_draw(pool, b"a", 32)[0] != pool_draw(pool, b"b", 32)[0]


def test_pool_draw_binds_the_length() -> None:
    """A short draw is not a prefix of a long one from the same state."""
    pool = pool_init(RAW)
    assert pool_draw(pool, b"e", 64)[0][:16] != pool_draw(pool, b"e", 16)[0]


def test_pool_absorb_changes_the_pool() -> None:
    pool = pool_init(RAW)
    absorbed = pool_absorb(pool, R0)
    assert absorbed != pool
    assert absorbed != pool_absorb(pool, R1)
    assert len(absorbed) == 32
