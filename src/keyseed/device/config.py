"""keyseed.device.config
~~~~~~~~~~~~~~~~~~~~~~~

:class:`DeviceAgentConfig`, documented field by field, and :func:`load_device_config`, which
merges its sources in this order of precedence: command-line flags, then environment variables
``KEYSEED_DEVICE_<FIELD>`` (``KEYSEED_DEVICE_SERVER``, ``KEYSEED_DEVICE_SETUP_CODE``, ...),
then a TOML file (``--config`` or ``KEYSEED_DEVICE_CONFIG``; keys as the long option names, at
top level or under ``[device]``), then the defaults below.

The device reads only ``KEYSEED_DEVICE_*`` variables, never the server's ``KEYSEED_*``, so a
device and a server on one host (a test bench, a laptop) never read each other's settings.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..crypto.suites import SUITES
from ..settings import ConfigError, load_settings

ENV_PREFIX = "KEYSEED_DEVICE_"
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_SUITE = "hpke-x25519"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAgentConfig:
    """Everything ``keyseed device`` can be told. Durations are seconds."""

    id: str
    """Device ID (``[A-Za-z0-9._-]{1,64}``), as registered at the server (201)."""

    server: str
    """Server URL: ``ws://host:port`` or ``wss://host`` (``/v1/device`` is added if no path
    is given)."""

    keystore: Path
    """Keystore file. Created on the first start (0600, its folder 0700); the local token
    (``<keystore>.token``) and lock (``<keystore>.lock``) live beside it."""

    ca: Path | None = None
    """PEM file of the certificate authorities that vouch for the server's TLS certificate
    (``wss://`` only). Without it a ``wss://`` server is verified against the system's trust
    store. Either way the host name is checked, and a certificate that does not verify
    refuses the connection."""

    tls_reduced: bool = False
    """Agree to the TLS reduction when the device's profile (sent by the server in 206) allows
    it and the connection is ``wss://``: application data then travels authenticated-only by
    keyseed, encrypted by TLS. The handshake, every rekey and every other message keep the
    full keyseed layer (docs/protocol.md, "Profiles")."""

    pin: str | None = None
    """Hex SHA-256 fingerprint of the server's long-term key, given out of band. At the first
    start without ``server_key``, the key is fetched from the server (``GET /v1/keys`` on the
    device listener) and accepted only if it matches."""

    server_key: str | None = field(default=None, repr=False)
    """The server's long-term public key itself (hex wire bytes), given at install."""

    suite: str = DEFAULT_SUITE
    """PKE suite of this device, as registered at the server; fixed at the first start."""

    setup_code: str | None = field(default=None, repr=False)
    """The setup code printed on the device (8 to 32 digits); used only at the first start
    (enrolment). Without it the device can enrol only into a window opened without a code."""

    listen: str | None = None
    """``HOST:PORT`` of the local setup endpoint (301/302, status). Off unless given."""

    rekey_on_start: bool = False
    """Start a key exchange at every power-on (once the device holds a key)."""

    backoff_initial: float = 0.5
    """First reconnect delay; it doubles after each failed attempt (with jitter)."""

    backoff_max: float = 60.0
    """Longest reconnect delay."""

    connect_timeout: float = 10.0
    """Deadline for the TCP/TLS/WebSocket opening handshake."""

    rekey_min_interval: float = 10.0
    """301 rate limit: at least this long between two rekeys ordered at the setup endpoint."""

    app: str = "microwave"
    """Device app: ``microwave`` (the demo oven) or ``none``."""

    status_interval: float = 30.0
    """How often the device app reports its status to the server (it also polls for orders)."""

    cook_speed: float = 1.0
    """Microwave demo: how many cooking seconds pass per real second."""

    log_level: str = "info"
    """debug, info, warning or error."""

    config: Path | None = field(default=None, compare=False)
    """The TOML file the configuration was read from, if any."""

    @property
    def url(self) -> str:
        """The device channel URL in force."""
        return device_url(self.server)

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context for a ``wss://`` server (None for ``ws://``).

        Raises:
            ConfigError: the CA file cannot be read or holds no certificate.
        """
        return tls_context(self.server, self.ca)

    @property
    def listen_addr(self) -> tuple[str, int] | None:
        return None if self.listen is None else split_hostport(self.listen)


_REQUIRED = ("id", "server", "keystore")


def device_url(server: str) -> str:
    """``server`` with ``/v1/device`` added when it has no path.

    Raises:
        ConfigError: not a ws:// or wss:// URL with a host, or it holds credentials.
    """
    parts = urlsplit(server)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError("server must be a ws:// or wss:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("server URL must not carry credentials, a query or a fragment")
    path = parts.path if parts.path not in ("", "/") else "/v1/device"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def tls_context(server: str, ca: Path | None) -> ssl.SSLContext | None:
    """A verifying client context (certificate and host name) for a ``wss://`` URL, trusting
    ``ca`` if given, else the system's trust store; None for ``ws://``.

    Raises:
        ConfigError: ``ca`` cannot be loaded.
    """
    if urlsplit(server).scheme != "wss":
        return None
    try:
        ctx = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except FileNotFoundError:
        raise ConfigError(f"CA file not found: {ca}") from None
    except (ssl.SSLError, OSError):
        raise ConfigError(f"CA file {ca} holds no usable PEM certificate") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def keys_url(server: str) -> str:
    """The HTTP URL of the server's public key list on the device listener."""
    parts = urlsplit(device_url(server))
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/v1/keys", "", ""))


def split_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``.

    Raises:
        ConfigError: malformed, or the port is out of range.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError("listen must be HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ConfigError("listen port is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError("listen port out of range")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("listen host must be an IP address or localhost") from None
    return host, number


def _convert(name: str, value: Any) -> Any:
    try:
        if name in ("keystore", "config", "ca"):
            return Path(value)
        if name == "id":
            if not isinstance(value, str) or not DEVICE_ID_RE.fullmatch(value):
                raise ValueError
            return value
        if name == "server":
            return device_url(str(value)) and str(value)
        if name in ("pin", "server_key"):
            text = str(value).strip().lower().replace(":", "")
            raw = bytes.fromhex(text)
            if name == "pin" and len(raw) != 32:
                raise ValueError
            if not raw:
                raise ValueError
            return text
        if name == "suite":
            if value not in SUITES:
                raise ValueError
            return str(value)
        if name == "setup_code":
            code = str(value).strip()
            if not (code.isdigit() and code.isascii() and 8 <= len(code) <= 32):
                raise ValueError
            return code
        if name == "listen":
            split_hostport(str(value))
            return str(value)
        if name in ("rekey_on_start", "tls_reduced"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if name in (
            "backoff_initial",
            "backoff_max",
            "connect_timeout",
            "rekey_min_interval",
            "status_interval",
            "cook_speed",
        ):
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            low = 0.0 if name == "rekey_min_interval" else 0.001
            if not low <= number <= 86_400:
                raise ValueError
            return number
        if name == "app":
            if value not in ("microwave", "none"):
                raise ValueError
            return str(value)
        if name == "log_level":
            level = str(value).lower()
            if level not in ("debug", "info", "warning", "error"):
                raise ValueError
            return level
    except ConfigError:
        raise
    except (TypeError, ValueError):
        # Never echo the value: it may be the setup code.
        raise ConfigError(f"bad value for {name.replace('_', '-')}") from None
    raise ConfigError(f"unknown setting {name}")  # pragma: no cover


def load_device_config(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> DeviceAgentConfig:
    """Merge flags > environment > TOML file (top level or ``[device]``) > defaults.

    Raises:
        ConfigError: a value is invalid or missing, or the TOML file cannot be read.
    """
    cfg = load_settings(
        DeviceAgentConfig,
        flags,
        env,
        env_prefix=ENV_PREFIX,
        section="device",
        convert=_convert,
        required=_REQUIRED,
    )
    if cfg.backoff_max < cfg.backoff_initial:
        raise ConfigError("backoff-max is shorter than backoff-initial")
    if cfg.ca is not None and urlsplit(cfg.server).scheme != "wss":
        raise ConfigError("ca is for a wss:// server; the server URL is ws://")
    cfg.tls_context()  # a CA file that does not load is a configuration error now
    return cfg


__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "DeviceAgentConfig",
    "device_url",
    "keys_url",
    "load_device_config",
    "split_hostport",
    "tls_context",
]
