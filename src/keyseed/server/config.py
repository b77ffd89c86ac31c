"""keyseed.server.config
~~~~~~~~~~~~~~~~~~~~~~~~

:class:`ServerConfig`, documented field by field, and :func:`load_config`, which merges its
three sources in this order of precedence: command-line flags, then environment variables
(``KEYSEED_<FIELD>``, for example ``KEYSEED_ADMIN_PORT``), then a TOML file (``--config`` or
``KEYSEED_CONFIG``), then the defaults below. A field, its flag, its variable and its TOML key
share one name: ``admin_port``, ``--admin-port``, ``KEYSEED_ADMIN_PORT``, ``admin_port``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crypto.suites import SUITES
from ..protocol.constants import HANDSHAKE_TIMEOUT, S27_TIMEOUT
from ..protocol.policy import DEFAULT_POLICY, RekeyPolicy
from ..settings import ConfigError, load_settings

ENV_PREFIX = "KEYSEED_"
#: Server apps ``app`` may name (see :func:`keyseed.server.apps.make_app`).
APP_NAMES = ("microwave", "echo", "none")
#: Event loops ``keyseed server --loop`` runs on (``auto``: uvloop where it is installed).
LOOP_NAMES = ("auto", "asyncio", "uvloop")
#: Largest rekey-policy limit (the wire carries unsigned 63-bit integers).
POLICY_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything ``keyseed server`` can be told. Durations are seconds."""

    data: Path = Path("keyseed-data")
    """Data folder: long-term key per suite, master key, admin token hash, SQLite database.
    Created (mode 0700) on the first start."""

    db: str | None = None
    """SQLAlchemy URL of the database. Default: ``sqlite+aiosqlite:///<data>/keyseed.db``.
    PostgreSQL: ``postgresql+asyncpg://user@host:5432/dbname``."""

    host: str = "0.0.0.0"  # noqa: S104 - devices connect from the network
    """Address of the device listener (``/v1/device`` and ``/healthz`` only)."""

    port: int = 8700
    """Port of the device listener (0: any free port)."""

    admin_host: str = "127.0.0.1"
    """Address of the admin listener (admin API, dashboard, ``/metrics``, ``/healthz``).
    Loopback by default: expose it only behind something that authenticates."""

    admin_port: int = 8701
    """Port of the admin listener (0: any free port)."""

    tls_cert: Path | None = None
    """PEM certificate chain of the device listener. With ``tls_key`` the device listener
    serves ``wss://`` (and ``https://`` for ``/v1/keys`` and ``/healthz``) instead of
    ``ws://``; devices verify it against their ``--ca`` file."""

    tls_key: Path | None = None
    """PEM private key of ``tls_cert`` (keep it 0600)."""

    admin_tls: bool = False
    """Serve the admin listener over ``https://`` with the same certificate too. Off by
    default: the admin listener is on loopback, where TLS adds nothing; turn it on when the
    admin listener is exposed."""

    suites: tuple[str, ...] = ("hpke-x25519",)
    """PKE suites the server enables; it holds one long-term key per suite."""

    s27_timeout: float = S27_TIMEOUT
    """S27: how long a pending exchange waits for its 205."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    """Deadline for HELLO and FIN (and for the 203 of an enrolment connection)."""

    idle_timeout: float = 600.0
    """A device connection that sends no frame for this long is closed (TIMEOUT)."""

    confirm_timeout: float = 10.0
    """How long an arrival confirmation (208) waits for the device's 207 pong."""

    max_connections: int = 10_000
    """Device connections this process holds at once; more are refused at once."""

    max_pending_per_ip: int = 1000
    """Device connections from one address that have not proven a key yet (handshake or
    enrolment unfinished), held at once; more are closed at once (4014, ``RATE_LIMITED``). 0: no
    limit. Behind a reverse proxy every device shares the proxy's address."""

    connect_rate_per_ip: float = 0.0
    """New device connections per second from one address (bursts of twice as many); more
    are closed at once (4014, ``RATE_LIMITED``). 0: no limit."""

    app: str = "microwave"
    """The server app that application data reaches: ``microwave`` (the recipe service of
    the microwave demo, which ``keyseed device`` runs by default), ``echo`` (answers every
    message with itself, for tests) or ``none`` (no answers)."""

    policy_soft_messages: int = DEFAULT_POLICY.soft_messages
    """Default rekey policy of newly registered devices (a registration may give its own):
    messages under one key after which the device rekeys by itself."""

    policy_hard_messages: int = DEFAULT_POLICY.hard_messages
    """Messages under one key after which it carries no more application data."""

    policy_soft_age_s: int = DEFAULT_POLICY.soft_age_s
    """Key age (seconds) after which the device rekeys by itself."""

    policy_hard_age_s: int = DEFAULT_POLICY.hard_age_s
    """Key age (seconds) after which the key carries no more application data."""

    log_level: str = "info"
    """Log level of the server and of uvicorn: debug, info, warning, error."""

    loop: str = "auto"
    """The event loop: ``uvloop`` (libuv; about 6% less server CPU per exchange and per
    round trip than the standard loop), ``asyncio`` (the standard library's), or ``auto``:
    uvloop where it is installed (a dependency on CPython off Windows), else asyncio."""

    config: Path | None = field(default=None, compare=False)
    """The TOML file the configuration was read from, if any."""

    @property
    def db_url(self) -> str:
        """The database URL in force."""
        if self.db:
            return self.db
        return f"sqlite+aiosqlite:///{self.data.resolve() / 'keyseed.db'}"

    @property
    def policy(self) -> RekeyPolicy:
        """The default rekey policy (checked by :func:`load_config` and at construction)."""
        return RekeyPolicy(
            soft_messages=self.policy_soft_messages,
            hard_messages=self.policy_hard_messages,
            soft_age_s=self.policy_soft_age_s,
            hard_age_s=self.policy_hard_age_s,
        )

    @property
    def tls(self) -> bool:
        """Whether the device listener serves TLS."""
        return self.tls_cert is not None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls-cert and tls-key go together")
        if self.admin_tls and self.tls_cert is None:
            raise ConfigError("admin-tls needs tls-cert and tls-key")
        if self.app not in APP_NAMES:
            raise ConfigError(f"bad value for app: one of {', '.join(APP_NAMES)}")
        if self.loop not in LOOP_NAMES:
            raise ConfigError(f"bad value for loop: one of {', '.join(LOOP_NAMES)}")
        try:
            _ = self.policy  # the four limits are checked together
        except ValueError as exc:
            raise ConfigError(f"bad default policy: {exc}") from None


def _convert(name: str, value: Any) -> Any:
    """Turn a value from any source (a string from the environment, a TOML value, a flag)
    into the field's type, or raise ConfigError."""
    try:
        if name in ("data", "config"):
            return Path(value)
        if name in ("tls_cert", "tls_key"):
            return None if value in (None, "") else Path(value)
        if name == "admin_tls":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if name in ("port", "admin_port", "max_connections"):
            if isinstance(value, bool):
                raise ValueError
            number = int(value)
            low = 1 if name == "max_connections" else 0
            if not low <= number <= (65535 if name != "max_connections" else 10**7):
                raise ValueError
            return number
        if name in ("max_pending_per_ip", "connect_rate_per_ip"):
            if isinstance(value, bool):
                raise ValueError
            limit = int(value) if name == "max_pending_per_ip" else float(value)
            if not 0 <= limit <= 10**7:  # also refuses NaN
                raise ValueError
            return limit
        if name in ("s27_timeout", "handshake_timeout", "idle_timeout", "confirm_timeout"):
            if isinstance(value, bool):
                raise ValueError
            seconds = float(value)
            if not 0 < seconds <= 86_400:
                raise ValueError
            return seconds
        if name == "suites":
            names = value.split(",") if isinstance(value, str) else list(value)
            names = [str(n).strip() for n in names if str(n).strip()]
            if not names or any(n not in SUITES for n in names):
                raise ValueError
            return tuple(dict.fromkeys(names))
        if name.startswith("policy_"):
            if isinstance(value, bool | float):
                raise ValueError
            number = int(value)
            if not 0 < number <= POLICY_MAX:
                raise ValueError
            return number
        if name == "app":
            app = str(value).lower()
            if app not in APP_NAMES:
                raise ValueError
            return app
        if name == "loop":
            loop = str(value).lower()
            if loop not in LOOP_NAMES:
                raise ValueError
            return loop
        if name == "log_level":
            level = str(value).lower()
            if level not in ("debug", "info", "warning", "error"):
                raise ValueError
            return level
        if name == "db":
            return None if value in (None, "") else str(value)
        if name in ("host", "admin_host"):
            if not isinstance(value, str) or not value:
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"bad value for {name}") from None
    raise ConfigError(f"unknown setting {name}")  # pragma: no cover


def load_config(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Merge flags > environment > TOML file (top level or ``[server]``) > defaults.

    Args:
        flags: values given on the command line (None: not given), keyed by field name.
        env: the environment (default ``os.environ``).

    Raises:
        ConfigError: a value is invalid, or the TOML file cannot be read.
    """
    return load_settings(
        ServerConfig, flags, env, env_prefix=ENV_PREFIX, section="server", convert=_convert
    )


__all__ = [
    "APP_NAMES",
    "ENV_PREFIX",
    "LOOP_NAMES",
    "POLICY_MAX",
    "ConfigError",
    "ServerConfig",
    "load_config",
]
