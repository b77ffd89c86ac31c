"""keyseed.protocol.errors
~~~~~~~~~~~~~~~~~~~~~~~~~

Typed errors. Each class binds one :class:`ErrorCode`, and that code is what the CLOSE frame,
the audit log, the logs and the metrics all use. The tree::

    KeyseedError
    ├── LocalProtocolError          we misused the API (sent in the wrong state)
    ├── ConflictError               a compare-and-set lost a race, or the connection is fenced
    └── RemoteProtocolError         the peer (or the network) misbehaved
        ├── MalformedMessage        not a frame of this protocol, or a field has the wrong shape
        ├── FrameTooLarge           over the size cap for the connection's phase
        ├── UnsupportedVersion
        ├── UnexpectedMessage       a message that the current state does not allow
        ├── AuthenticationFailed    a MAC, a proof or an AEAD tag did not verify
        ├── BadSequence             a replayed, reordered or reflected sealed frame
        ├── HandshakeRefused        HELLO proves no key the server accepts
        ├── ExchangeExpired         205 with no pending exchange (S27 fired first; rule 5)
        ├── KeyExpired              application data under a key past its hard limit
        ├── NotConfirmed            application data from a device whose SAS is not compared
        ├── HandshakeTimeout        a deadline passed
        ├── PeerClosed              the peer sent CLOSE
        └── ExchangeRefused         a 204 NG; its cause stays in the audit log

``NgCause`` lists the causes of a 204 NG. They never reach the wire: every NG is the same
bytes whatever the cause (REVIEW F10).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.IntEnum):
    """Codes shared by the wire (CLOSE), the audit log, the logs and the metrics."""

    #: Not a frame of this protocol, or a field has the wrong type or size.
    MALFORMED = 1
    #: The frame is over the size cap.
    FRAME_TOO_LARGE = 2
    #: Unknown protocol version.
    UNSUPPORTED_VERSION = 3
    #: A message that the receiver's state does not allow.
    UNEXPECTED_MESSAGE = 4
    #: A MAC, proof or AEAD tag did not verify.
    AUTH_FAILED = 5
    #: A sealed frame out of sequence: replayed, reordered or reflected.
    BAD_SEQUENCE = 6
    #: HELLO proves no key the server accepts (also: unknown or revoked device).
    HANDSHAKE_REFUSED = 7
    #: A handshake or response deadline passed.
    TIMEOUT = 8
    #: 205 found no pending exchange (rule 5): reconnect, and the handshake settles the key.
    EXCHANGE_EXPIRED = 9
    #: Fenced by a newer connection, or a compare-and-set lost a race.
    CONFLICT = 10
    #: The traffic key reached its usage limit: reconnect for fresh traffic keys.
    REHANDSHAKE = 11
    #: Application data under a key past its hard limit: rekey first.
    KEY_EXPIRED = 12
    #: Enrolled without a setup code and not yet confirmed by the admin (SAS).
    NOT_CONFIRMED = 13
    #: The sender is over a rate limit.
    RATE_LIMITED = 14
    #: Normal close.
    NORMAL = 15
    #: Something failed inside the implementation; no detail leaves the process.
    INTERNAL = 16


class NgCause(enum.IntEnum):
    """Why a 203 got a 204 NG. Audit log and metrics only, never the wire."""

    UNREGISTERED = 100
    REVOKED = 101
    WINDOW_CLOSED = 102
    WRONG_SUITE = 103
    BAD_EPOCH = 104
    STALE_SEED = 105
    DECRYPT_FAILED = 106
    S_MISMATCH = 107
    BAD_AUTHENTICATOR = 108
    BUSY = 109


class KeyseedError(Exception):
    """Root of keyseed's protocol errors. Never instantiate directly."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, msg: str = "") -> None:
        if type(self) in (KeyseedError, RemoteProtocolError):
            raise TypeError(f"instantiate a subclass of {type(self).__name__}")
        super().__init__(msg or self.code.name.lower().replace("_", " "))


class LocalProtocolError(KeyseedError):
    """The caller misused the API, for example sent a message in the wrong state."""

    code = ErrorCode.UNEXPECTED_MESSAGE


class ConflictError(KeyseedError):
    """A compare-and-set lost a race, or the connection was fenced by a newer one."""

    code = ErrorCode.CONFLICT


class RemoteProtocolError(KeyseedError):
    """The peer or the network misbehaved. The receive path turns it into CLOSE(code)."""


class MalformedMessage(RemoteProtocolError):
    code = ErrorCode.MALFORMED


class FrameTooLarge(RemoteProtocolError):
    code = ErrorCode.FRAME_TOO_LARGE


class UnsupportedVersion(RemoteProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION


class UnexpectedMessage(RemoteProtocolError):
    code = ErrorCode.UNEXPECTED_MESSAGE


class AuthenticationFailed(RemoteProtocolError):
    code = ErrorCode.AUTH_FAILED


class BadSequence(RemoteProtocolError):
    code = ErrorCode.BAD_SEQUENCE


class HandshakeRefused(RemoteProtocolError):
    code = ErrorCode.HANDSHAKE_REFUSED


class ExchangeExpired(RemoteProtocolError):
    code = ErrorCode.EXCHANGE_EXPIRED


class KeyExpired(RemoteProtocolError):
    code = ErrorCode.KEY_EXPIRED


class NotConfirmed(RemoteProtocolError):
    code = ErrorCode.NOT_CONFIRMED


class HandshakeTimeout(RemoteProtocolError):
    code = ErrorCode.TIMEOUT


class Rehandshake(RemoteProtocolError):
    code = ErrorCode.REHANDSHAKE


class PeerClosed(RemoteProtocolError):
    """The peer sent CLOSE. ``peer_code`` is what it said; it is only a hint."""

    code = ErrorCode.NORMAL

    def __init__(self, peer_code: int) -> None:
        self.peer_code = peer_code
        super().__init__(f"peer closed ({peer_code})")


class ExchangeRefused(RemoteProtocolError):
    """A 204 NG. On the server side ``cause`` holds the true cause; the device never learns it."""

    code = ErrorCode.UNEXPECTED_MESSAGE

    def __init__(self, cause: NgCause | None = None) -> None:
        self.cause = cause
        super().__init__("204 NG" if cause is None else f"204 NG ({cause.name})")


def error_for_code(code: int) -> type[KeyseedError]:
    """The error class a CLOSE code maps to (for logs on the receiving side)."""
    for cls in _ALL:
        if cls.code == code:
            return cls
    return RemoteProtocolError


_ALL: tuple[type[KeyseedError], ...] = (
    MalformedMessage,
    FrameTooLarge,
    UnsupportedVersion,
    UnexpectedMessage,
    AuthenticationFailed,
    BadSequence,
    HandshakeRefused,
    ExchangeExpired,
    KeyExpired,
    NotConfirmed,
    HandshakeTimeout,
    Rehandshake,
    ConflictError,
)
