"""keyseed.protocol.admin
~~~~~~~~~~~~~~~~~~~~~~~~

The setup PC's operations on a device record, as pure functions: registration (201/202),
revocation, confirmation of a device enrolled without a code, and the rekey order by proxy
(401/402). The server's admin API applies them with the same compare-and-set as the core.
"""

from __future__ import annotations

from ..crypto.schedule import setup_code_key
from ..crypto.suites import SUITES
from .base import Entropy
from .constants import DEVICE_ID_RE
from .errors import ErrorCode, KeyseedError
from .messages import SETUP_CODE
from .policy import DEFAULT_POLICY, RekeyPolicy
from .records import DeviceRecord, Window


class AdminError(KeyseedError):
    """An admin operation that cannot be applied (bad ID, unknown suite, wrong state)."""

    code = ErrorCode.UNEXPECTED_MESSAGE


def check_device_id(device_id: str) -> str:
    """Device IDs are checked before anything logs them (REVIEW F15)."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise AdminError("device ID must match [A-Za-z0-9._-]{1,64}")
    return device_id


def register(
    existing: DeviceRecord | None,
    *,
    device_id: str,
    suite: str,
    setup_code: str | None,
    window_s: float,
    db_now: float,
    entropy: Entropy,
    policy: RekeyPolicy = DEFAULT_POLICY,
    allow_no_code: bool = False,
    tls_reduced: bool = False,
) -> DeviceRecord:
    """201: register a device (or re-register it) and open its enrolment window.

    A re-registration (after revocation or lost state) needs a fresh code, keeps the epoch
    (epochs only grow), and retires the old key material at once.

    Raises:
        AdminError: bad device ID, unknown suite, a code shorter than 8 digits, no code
            without ``allow_no_code``, or a non-positive window.
    """
    check_device_id(device_id)
    if suite not in SUITES:
        raise AdminError("unknown suite")
    if setup_code is None:
        if not allow_no_code:
            raise AdminError("registering without a setup code needs an explicit opt-in")
    elif not (isinstance(setup_code, str) and SETUP_CODE.pattern.fullmatch(setup_code)):
        raise AdminError("a setup code is 8 to 32 digits")
    if not 0 < window_s <= 7 * 24 * 3600:
        raise AdminError("window must be between 1 s and 7 days")
    window = Window(
        window_id=entropy(16),
        expires_at=db_now + window_s,
        k_code=setup_code_key(device_id, setup_code or ""),
        code_required=setup_code is not None,
    )
    if existing is None:
        return DeviceRecord(
            device_id=device_id, suite=suite, policy=policy, window=window, tls_reduced=tls_reduced
        )
    return existing.with_(
        suite=suite,
        next_suite=None,
        tls_reduced=tls_reduced,
        policy=policy,
        revoked=False,
        confirmed=False,
        key=None,
        prev_key=None,
        seed=None,
        owed_206=False,
        pending=None,
        order_epoch=None,
        window=window,
        conn_gen=existing.conn_gen + 1,
    )


def revoke(rec: DeviceRecord) -> DeviceRecord:
    """Retire every key, seed and one-time key of the device and fence its connections."""
    return rec.with_(
        revoked=True,
        key=None,
        prev_key=None,
        seed=None,
        owed_206=False,
        pending=None,
        window=None,
        order_epoch=None,
        conn_gen=rec.conn_gen + 1,
    )


def confirm(rec: DeviceRecord) -> DeviceRecord:
    """The admin compared the SAS of a device enrolled without a code."""
    if rec.revoked or rec.key is None:
        raise AdminError("only an enrolled device can be confirmed")
    return rec if rec.confirmed else rec.with_(confirmed=True)


def order_rekey(rec: DeviceRecord) -> DeviceRecord:
    """401: a rekey order by proxy, a flag tagged with the epoch it supersedes. At most one is
    outstanding; ordering again while one is pending changes nothing (REVIEW F17)."""
    if rec.revoked or rec.key is None:
        raise AdminError("only an enrolled device can be ordered to rekey")
    if not rec.confirmed:
        raise AdminError("no orders to an unconfirmed device")
    if rec.order_epoch is not None and rec.order_epoch >= rec.epoch:
        return rec
    return rec.with_(order_epoch=rec.epoch)


def set_policy(rec: DeviceRecord, policy: RekeyPolicy) -> DeviceRecord:
    """A new policy takes effect with the next 206."""
    return rec.with_(policy=policy)
