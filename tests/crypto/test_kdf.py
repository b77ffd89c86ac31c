"""keyseed.crypto.kdf: the ``lp`` context encoding, HKDF against RFC 5869, ``ct_equal``."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from keyseed.crypto.kdf import LP_MAX, ct_equal, expand, extract, hkdf, hmac_sha256, lp, sha256

# RFC 5869, Appendix A.1 (Test Case 1: basic test case with SHA-256).
RFC5869_IKM = bytes.fromhex("0b" * 22)
RFC5869_SALT = bytes.fromhex("000102030405060708090a0b0c")
RFC5869_INFO = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
RFC5869_L = 42
RFC5869_PRK = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
RFC5869_OKM = bytes.fromhex(
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)


# -- lp ----------------------------------------------------------------------------------


def test_lp_no_fields_is_empty() -> None:
    assert lp() == b""


def test_lp_bytes_are_prefixed_with_u16_be_length() -> None:
    assert lp(b"abc") == b"\x00\x03abc"


def test_lp_empty_bytes_is_a_zero_length() -> None:
    assert lp(b"") == b"\x00\x00"


def test_lp_str_is_utf8() -> None:
    assert lp("é") == b"\x00\x02\xc3\xa9"


def test_lp_int_is_8_bytes_big_endian() -> None:
    assert lp(1) == b"\x00\x08" + b"\x00" * 7 + b"\x01"
    assert lp(0x0102030405060708) == b"\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08"


def test_lp_int_largest_u64() -> None:
    assert lp(2**64 - 1) == b"\x00\x08" + b"\xff" * 8


def test_lp_concatenates_fields_in_order() -> None:
    assert lp(b"a", "b", 0) == b"\x00\x01a" + b"\x00\x01b" + b"\x00\x08" + b"\x00" * 8


def test_lp_separates_fields_that_plain_concatenation_would_merge() -> None:
    assert lp(b"ab", b"c") != lp(b"a", b"bc")
    assert lp(b"abc") != lp(b"abc", b"")


def test_lp_int_and_its_bytes_differ_from_str() -> None:
    """An int and the text of its digits must not collide."""
    assert lp(1) != lp("1")


def test_lp_accepts_field_of_65535_bytes() -> None:
    assert lp(b"x" * LP_MAX)[:2] == b"\xff\xff"


def test_lp_rejects_field_over_65535_bytes() -> None:
    with pytest.raises(ValueError, match="65535"):
        lp(b"x" * (LP_MAX + 1))


def test_lp_rejects_long_str() -> None:
    with pytest.raises(ValueError, match="65535"):
        lp("x" * (LP_MAX + 1))


@pytest.mark.parametrize("flag", [True, False])
def test_lp_rejects_bool(flag: bool) -> None:
    """``True`` is an int in Python; encoding it as 1 would hide a caller's mistake."""
    with pytest.raises(TypeError):
        lp(flag)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_lp_rejects_int_out_of_u64_range(value: int) -> None:
    """The docstring promises ValueError for an out-of-range integer."""
    with pytest.raises(ValueError, match="range"):
        lp(value)


# -- HKDF (RFC 5869 test case 1) -----------------------------------------------------------


def test_extract_matches_rfc5869_case_1() -> None:
    assert extract(RFC5869_SALT, RFC5869_IKM) == RFC5869_PRK


def test_expand_matches_rfc5869_case_1() -> None:
    assert expand(RFC5869_PRK, RFC5869_INFO, RFC5869_L) == RFC5869_OKM


def test_hkdf_matches_rfc5869_case_1() -> None:
    assert hkdf(RFC5869_IKM, RFC5869_SALT, RFC5869_INFO, RFC5869_L) == RFC5869_OKM


def test_hkdf_output_length_is_respected() -> None:
    assert len(hkdf(RFC5869_IKM, RFC5869_SALT, RFC5869_INFO, 7)) == 7


def test_expand_shorter_output_is_a_prefix() -> None:
    assert expand(RFC5869_PRK, RFC5869_INFO, 10) == RFC5869_OKM[:10]


# -- hashes ---------------------------------------------------------------------------------


def test_sha256_matches_hashlib() -> None:
    assert sha256(b"abc") == hashlib.sha256(b"abc").digest()


def test_hmac_sha256_matches_stdlib() -> None:
    assert hmac_sha256(b"key", b"data") == hmac.new(b"key", b"data", hashlib.sha256).digest()


# -- ct_equal -------------------------------------------------------------------------------


def test_ct_equal_true_for_equal_bytes() -> None:
    assert ct_equal(b"\x01\x02", b"\x01\x02")


def test_ct_equal_false_for_one_bit_difference() -> None:
    assert not ct_equal(b"\x01\x02", b"\x01\x03")


def test_ct_equal_false_for_different_lengths() -> None:
    assert not ct_equal(b"\x01\x02", b"\x01\x02\x00")


def test_ct_equal_empty() -> None:
    assert ct_equal(b"", b"")
