"""keyseed.console
~~~~~~~~~~~~~~~~~

The setup PC (103) in a terminal: ``keyseed admin`` (:mod:`.admin_cli`) over the HTTP clients
of :mod:`.client`, which speak to the server's admin API and to a device's local setup
endpoint.
"""

from __future__ import annotations

from .admin_cli import add_admin_parser
from .client import (
    AdminClient,
    ConsoleError,
    DeviceClient,
    ExitCode,
    Settings,
    load_admin_settings,
    load_device_settings,
)

__all__ = [
    "AdminClient",
    "ConsoleError",
    "DeviceClient",
    "ExitCode",
    "Settings",
    "add_admin_parser",
    "load_admin_settings",
    "load_device_settings",
]
