"""keyseed.protocol.admin: registration, revocation, confirmation and rekey orders."""

from __future__ import annotations

from typing import Any

import pytest

from keyseed.crypto.schedule import SharedKey, setup_code_key
from keyseed.protocol.admin import (
    AdminError,
    check_device_id,
    confirm,
    order_rekey,
    register,
    revoke,
    set_policy,
)
from keyseed.protocol.errors import KeyseedError
from keyseed.protocol.policy import RekeyPolicy
from keyseed.protocol.records import DeviceRecord, IssuedSeed, PendingExchange

CODE = "12345678"
WEEK = 7 * 24 * 3600
K1 = SharedKey(b"\x01" * 32)
K2 = SharedKey(b"\x02" * 32)
POLICY = RekeyPolicy(soft_messages=5, hard_messages=9, soft_age_s=60, hard_age_s=600)


def entropy(n: int) -> bytes:
    return b"\xee" * n


def reg(existing: DeviceRecord | None = None, **over: Any) -> DeviceRecord:
    args: dict[str, Any] = {
        "device_id": "oven-1",
        "suite": "hpke-x25519",
        "setup_code": CODE,
        "window_s": 600,
        "db_now": 1000.0,
        "entropy": entropy,
    }
    args.update(over)
    return register(existing, **args)


def enrolled(*, confirmed: bool = True, epoch: int = 4) -> DeviceRecord:
    """A device that completed exchanges up to ``epoch`` and holds every kind of key material."""
    return DeviceRecord(
        device_id="oven-1",
        suite="hpke-x25519",
        version=10,
        conn_gen=3,
        confirmed=confirmed,
        epoch=epoch,
        key=K1,
        key_created_at=900.0,
        prev_key=K2,
        seed=IssuedSeed(
            r0=b"\x03" * 32,
            seed_id=b"\x04" * 16,
            otk_private=b"\x05" * 32,
            otk_public=b"\x06" * 32,
            policy=POLICY,
        ),
        owed_206=True,
        pending=PendingExchange(
            key=SharedKey(b"\x07" * 32),
            epoch=epoch + 1,
            seed_id=b"\x04" * 16,
            ns=b"\x08" * 32,
            created_at=990.0,
            enrol=False,
        ),
    )


def test_admin_error_is_a_keyseed_error() -> None:
    assert issubclass(AdminError, KeyseedError)


# -- register: validation -------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["", "x" * 65, "oven 1", "oven/1", "ovén", "a\nb"])
def test_register_rejects_bad_device_id(device_id: str) -> None:
    with pytest.raises(AdminError) as info:
        reg(device_id=device_id)
    if device_id:
        assert device_id not in str(info.value)


def test_check_device_id_rejects_non_text() -> None:
    with pytest.raises(AdminError):
        check_device_id(b"oven-1")  # type: ignore[arg-type]


def test_check_device_id_returns_a_good_id() -> None:
    assert check_device_id("oven-1") == "oven-1"


@pytest.mark.parametrize("suite", ["", "hpke", "x25519", "RSA-OAEP"])
def test_register_rejects_unknown_suite(suite: str) -> None:
    with pytest.raises(AdminError, match="suite"):
        reg(suite=suite)


@pytest.mark.parametrize("code", ["1234567", "", "1234abcd", "12345678 ", "1" * 33])
def test_register_rejects_bad_setup_code(code: str) -> None:
    with pytest.raises(AdminError, match="code"):
        reg(setup_code=code)


def test_register_without_code_needs_opt_in() -> None:
    with pytest.raises(AdminError, match="opt-in"):
        reg(setup_code=None)


def test_register_without_code_with_opt_in_does_not_require_a_code() -> None:
    rec = reg(setup_code=None, allow_no_code=True)
    assert rec.window is not None
    assert rec.window.code_required is False
    assert not rec.confirmed


@pytest.mark.parametrize("window_s", [0, -1, WEEK + 1])
def test_register_rejects_window_out_of_bounds(window_s: float) -> None:
    with pytest.raises(AdminError, match="window"):
        reg(window_s=window_s)


@pytest.mark.parametrize("window_s", [1, WEEK])
def test_register_accepts_window_bounds(window_s: float) -> None:
    rec = reg(window_s=window_s)
    assert rec.window is not None
    assert rec.window.expires_at == 1000.0 + window_s


# -- register: result -----------------------------------------------------------------------


def test_register_new_device_opens_a_window() -> None:
    rec = reg(policy=POLICY)
    assert (rec.device_id, rec.suite, rec.policy) == ("oven-1", "hpke-x25519", POLICY)
    assert rec.window is not None
    assert rec.window.window_id == entropy(16)
    assert rec.window.code_required is True
    assert rec.window.failures == 0
    assert rec.key is None and rec.seed is None and rec.epoch == 0


def test_register_stores_k_code_not_the_code() -> None:
    rec = reg()
    assert rec.window is not None
    assert rec.window.k_code == setup_code_key("oven-1", CODE)
    assert CODE.encode() not in rec.encode()


def test_reregistration_keeps_the_epoch() -> None:
    """Epochs only grow, across revocation and re-registration."""
    rec = reg(enrolled(epoch=7), setup_code="87654321")
    assert rec.epoch == 7


def test_reregistration_clears_key_material() -> None:
    old = enrolled()
    rec = reg(order_rekey(old), setup_code="87654321")
    assert rec.key is None
    assert rec.prev_key is None
    assert rec.seed is None
    assert rec.pending is None
    assert rec.owed_206 is False
    assert rec.order_epoch is None


def test_reregistration_resets_confirmation_and_revocation() -> None:
    rec = reg(revoke(enrolled()), setup_code="87654321")
    assert rec.revoked is False
    assert rec.confirmed is False


def test_reregistration_fences_old_connections_and_bumps_version() -> None:
    old = enrolled()
    rec = reg(old, setup_code="87654321")
    assert rec.conn_gen == old.conn_gen + 1
    assert rec.version == old.version + 1


def test_reregistration_opens_a_window_for_the_new_code() -> None:
    rec = reg(enrolled(), setup_code="87654321", suite="rsa-oaep")
    assert rec.window is not None
    assert rec.window.k_code == setup_code_key("oven-1", "87654321")
    assert rec.suite == "rsa-oaep"


# -- revoke ---------------------------------------------------------------------------------


def test_revoke_clears_every_key() -> None:
    rec = revoke(order_rekey(enrolled()))
    assert rec.revoked is True
    assert rec.key is None
    assert rec.prev_key is None
    assert rec.seed is None
    assert rec.pending is None
    assert rec.window is None
    assert rec.owed_206 is False
    assert rec.order_epoch is None


def test_revoke_bumps_conn_gen_and_version() -> None:
    old = enrolled()
    rec = revoke(old)
    assert rec.conn_gen == old.conn_gen + 1
    assert rec.version == old.version + 1


def test_revoke_keeps_the_epoch() -> None:
    assert revoke(enrolled(epoch=9)).epoch == 9


def test_revoke_closes_an_open_window() -> None:
    assert revoke(reg()).window is None


# -- confirm --------------------------------------------------------------------------------


def test_confirm_requires_a_key() -> None:
    with pytest.raises(AdminError):
        confirm(reg(setup_code=None, allow_no_code=True))


def test_confirm_refuses_a_revoked_device() -> None:
    with pytest.raises(AdminError):
        confirm(revoke(enrolled(confirmed=False)))


def test_confirm_marks_the_device_confirmed() -> None:
    old = enrolled(confirmed=False)
    rec = confirm(old)
    assert rec.confirmed is True
    assert rec.version == old.version + 1


def test_confirm_twice_changes_nothing() -> None:
    rec = enrolled(confirmed=True)
    assert confirm(rec) is rec


# -- order_rekey ----------------------------------------------------------------------------


def test_order_rekey_sets_the_order_to_the_current_epoch() -> None:
    rec = order_rekey(enrolled(epoch=4))
    assert rec.order_epoch == 4


def test_order_rekey_is_idempotent_while_outstanding() -> None:
    once = order_rekey(enrolled())
    assert order_rekey(once) is once


def test_order_rekey_after_a_commit_past_the_order_is_a_new_order() -> None:
    once = order_rekey(enrolled(epoch=4))
    committed = once.with_(epoch=5)
    again = order_rekey(committed)
    assert again.order_epoch == 5


def test_order_rekey_refused_for_unconfirmed_device() -> None:
    with pytest.raises(AdminError, match="unconfirmed"):
        order_rekey(enrolled(confirmed=False))


def test_order_rekey_refused_without_a_key() -> None:
    with pytest.raises(AdminError):
        order_rekey(reg())


def test_order_rekey_refused_for_revoked_device() -> None:
    with pytest.raises(AdminError):
        order_rekey(revoke(enrolled()))


# -- set_policy -----------------------------------------------------------------------------


def test_set_policy_replaces_the_policy_and_bumps_version() -> None:
    old = enrolled()
    rec = set_policy(old, POLICY)
    assert rec.policy == POLICY
    assert rec.version == old.version + 1
