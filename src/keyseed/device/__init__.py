"""keyseed.device
~~~~~~~~~~~~~~

The device (appliance 101): ``keyseed device``. An asyncio driver around the sans-I/O device
core: a crash-safe keystore file, a reconnecting WebSocket to the server's ``/v1/device``,
automatic rekeys, the local setup endpoint (301/302), and a pluggable device app.
"""

from __future__ import annotations

from .agent import DeviceAgent
from .config import ConfigError, DeviceAgentConfig, load_device_config
from .keystore import (
    KeystoreCorrupted,
    KeystoreError,
    KeystoreFile,
    KeystoreForeign,
    KeystoreInsecure,
    KeystoreLocked,
    KeystoreMismatch,
)
from .setup_endpoint import SetupEndpoint

__all__ = [
    "ConfigError",
    "DeviceAgent",
    "DeviceAgentConfig",
    "KeystoreCorrupted",
    "KeystoreError",
    "KeystoreFile",
    "KeystoreForeign",
    "KeystoreInsecure",
    "KeystoreLocked",
    "KeystoreMismatch",
    "SetupEndpoint",
    "load_device_config",
]
