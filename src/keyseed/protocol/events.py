"""keyseed.protocol.events
~~~~~~~~~~~~~~~~~~~~~~~~~

What the cores hand to their drivers, one small frozen dataclass per thing to act on.

Two of them are *durable*: :class:`PersistState` (device) and :class:`StoreRecord` (server).
The driver commits every durable event before it sends anything from ``messages_to_send()``;
that ordering is how rule 1 ("the device writes its pending exchange durably before sending
203") and rule 6 (one compare-and-set per state change) are enforced. Don't subclass these.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ErrorCode, NgCause
from .records import DeviceRecord, Keystore


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events."""


# -- durable -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistState(Event):
    """Device: write this keystore durably before sending anything else."""

    keystore: Keystore


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One audit-log row. ``cause`` is an ErrorCode or NgCause value, or None for success."""

    kind: str
    device_id: str
    epoch: int
    cause: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreRecord(Event):
    """Server: compare-and-set ``record`` where the stored version is ``expected_version``
    (None: insert is not the core's business; the record must exist). Audit rows go in the
    same transaction. If the write fails, call ``store_failed()`` and send nothing."""

    expected_version: int
    record: DeviceRecord
    audit: tuple[AuditEntry, ...] = ()


# -- informational -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete(Event):
    device_id: str
    epoch: int
    #: Whether the connection is authenticated under a key (False: enrolment only).
    authenticated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyEstablished(Event):
    """A new key is in use: on the server at commit (S28), on the device when stored."""

    device_id: str
    epoch: int
    key_id: bytes
    #: Six-digit SAS of the key, for a device enrolled without a code.
    sas: str
    #: True when this key came from an enrolment (a window), False for a rekey.
    enrolment: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedStored(Event):
    """Device: a 206 was stored (also a redelivery). Server: the device acknowledged it."""

    device_id: str
    epoch: int
    seed_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeStarted(Event):
    """Device: a 203 left (after its pending key was persisted)."""

    device_id: str
    epoch: int
    enrolment: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeFailed(Event):
    """A 203 got 204 NG. The server knows the cause; the device only sees ``cause=None``."""

    device_id: str
    epoch: int
    cause: NgCause | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeExpiredEvent(Event):
    """Server: S27 fired; the pending exchange was dropped."""

    device_id: str
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyOrdered(Event):
    """Device: a 403 (or a local 301) asked for a rekey superseding ``epoch``."""

    device_id: str
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyOrderAccepted(Event):
    """Server: the device answered 404."""

    device_id: str
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfirmed(Event):
    """207: our ping came back. ``rtt`` in seconds of the driver's monotonic clock."""

    device_id: str
    epoch: int
    rtt: float
    token: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AppDataReceived(Event):
    device_id: str
    epoch: int
    data: bytes

    def __repr__(self) -> str:
        return (
            f"AppDataReceived(device_id={self.device_id!r}, epoch={self.epoch}, "
            f"<{len(self.data)} bytes>)"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The connection is over. ``code`` is ours if we failed it, the peer's hint otherwise."""

    code: ErrorCode
    by_peer: bool
    reason: str = ""
