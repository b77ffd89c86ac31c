"""keyseed.protocol
~~~~~~~~~~~~~~~~

The sans-I/O core: no sockets, no clock, no database. Bytes and ``now`` in; events and bytes
out. The server, the device agent, the tests and the benchmark all drive these same cores.
"""

from __future__ import annotations

from .admin import AdminError, confirm, order_rekey, register, revoke
from .device import DeviceConfig, DeviceProtocol, new_keystore
from .errors import ErrorCode, KeyseedError, NgCause
from .events import (
    AppDataReceived,
    AuditEntry,
    ConnectionClosed,
    Event,
    ExchangeExpiredEvent,
    ExchangeFailed,
    ExchangeStarted,
    HandshakeComplete,
    KeyEstablished,
    PeerConfirmed,
    PersistState,
    RekeyOrderAccepted,
    RekeyOrdered,
    SeedStored,
    StoreRecord,
)
from .messages import MsgType
from .policy import DEFAULT_POLICY, RekeyPolicy
from .records import DeviceRecord, Keystore
from .server import NG_204, ServerContext, ServerProtocol
from .states import DeviceState, ServerState

__all__ = [
    "DEFAULT_POLICY",
    "NG_204",
    "AdminError",
    "AppDataReceived",
    "AuditEntry",
    "ConnectionClosed",
    "DeviceConfig",
    "DeviceProtocol",
    "DeviceRecord",
    "DeviceState",
    "ErrorCode",
    "Event",
    "ExchangeExpiredEvent",
    "ExchangeFailed",
    "ExchangeStarted",
    "HandshakeComplete",
    "KeyEstablished",
    "KeyseedError",
    "Keystore",
    "MsgType",
    "NgCause",
    "PeerConfirmed",
    "PersistState",
    "RekeyOrderAccepted",
    "RekeyOrdered",
    "RekeyPolicy",
    "SeedStored",
    "ServerContext",
    "ServerProtocol",
    "ServerState",
    "StoreRecord",
    "confirm",
    "new_keystore",
    "order_rekey",
    "register",
    "revoke",
]
