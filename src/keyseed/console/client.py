"""keyseed.console.client
~~~~~~~~~~~~~~~~~~~~~~~~

The setup PC (103) over HTTP: :class:`AdminClient` speaks to the server's admin API
(``/v1/admin``: 201/202, 208/209, 401/402, approval, revocation, the audit log, the server
keys, cooking orders), :class:`DeviceClient` to a device's local setup endpoint (301/302). Both
are synchronous (httpx): a command does one thing and waits for its answer.

Where the server and the token come from (:func:`load_admin_settings`), first match wins:
flags, then the environment (``KEYSEED_ADMIN_URL``, ``KEYSEED_ADMIN_TOKEN``,
``KEYSEED_ADMIN_TOKEN_FILE``), then a TOML file (``--config``, ``KEYSEED_ADMIN_CONFIG``, or
``~/.config/keyseed/admin.toml`` if it exists; keys ``url``, ``token``, ``token_file``,
``device_url``, ``device_token_file``, top level or under ``[admin]``).

Tokens are secrets: they travel only in the ``Authorization`` header, never in a URL, and no
message, exception or repr shows one. A token file, and a config file holding a token, must not
be readable by other users (mode 0600); anything else is refused with a message saying how to
fix it.

Every failure is a :class:`ConsoleError` whose ``exit_code`` is what the command exits with:
1 the operation failed, 2 usage or configuration, 3 the server (or device) is unreachable,
4 the token was refused (401), 5 unknown device or route (404), 6 conflict (409).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ..protocol.policy import DEFAULT_POLICY
from ..settings import ConfigError, read_toml_section

ENV_URL = "KEYSEED_ADMIN_URL"
ENV_TOKEN = "KEYSEED_ADMIN_TOKEN"  # noqa: S105 - a variable name
ENV_TOKEN_FILE = "KEYSEED_ADMIN_TOKEN_FILE"  # noqa: S105
ENV_CONFIG = "KEYSEED_ADMIN_CONFIG"
ENV_DEVICE_URL = "KEYSEED_ADMIN_DEVICE_URL"
ENV_DEVICE_TOKEN = "KEYSEED_ADMIN_DEVICE_TOKEN"  # noqa: S105
ENV_DEVICE_TOKEN_FILE = "KEYSEED_ADMIN_DEVICE_TOKEN_FILE"  # noqa: S105
#: The admin listener's default address (``keyseed server``'s ``admin_host``/``admin_port``).
DEFAULT_URL = "http://127.0.0.1:8701"
#: Read when present and no other config file is named.
DEFAULT_CONFIG = Path("~/.config/keyseed/admin.toml")
#: Seconds one request may take (a confirmation waits up to the server's confirm timeout).
DEFAULT_TIMEOUT = 30.0

_CONFIG_KEYS = ("url", "token", "token_file", "device_url", "device_token", "device_token_file")
_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# An HTTP header value without whitespace: what an admin or device token is made of.
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")
_MAX_SECRET_FILE = 4096


class ExitCode(enum.IntEnum):
    """What ``keyseed admin`` exits with."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    AUTH = 4
    NOT_FOUND = 5
    CONFLICT = 6


class ConsoleError(Exception):
    """A command failed; ``str()`` is one line for people, ``exit_code`` is for scripts."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        #: The server's error code name (``unknown_device``, ``sas_mismatch``, ...), if any.
        self.error = error


class RequestFailed(ConsoleError):
    """The server or device answered, and the operation did not succeed."""


class UsageError(ConsoleError):
    """Bad arguments, configuration or input (also a 422 from the server)."""

    exit_code = ExitCode.USAGE


class Unreachable(ConsoleError):
    """No answer: connection refused, DNS, timeout."""

    exit_code = ExitCode.UNREACHABLE


class AuthFailed(ConsoleError):
    """The token was refused (401)."""

    exit_code = ExitCode.AUTH


class NotFound(ConsoleError):
    """Unknown device, or a route this server does not have (404)."""

    exit_code = ExitCode.NOT_FOUND


class Conflict(ConsoleError):
    """The device's state forbids the operation (409)."""

    exit_code = ExitCode.CONFLICT


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Where to send requests and the bearer token to send (never shown)."""

    url: str
    token: str = field(repr=False)


def read_secret_file(path: Path, what: str) -> str:
    """The token in ``path``, refusing a file other users could read or write.

    Raises:
        UsageError: missing, not a regular file, mode not 0600 (or stricter), empty, or not
            a token.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise UsageError(
                f"{what} {path} has mode {mode:04o}: other users could read it; "
                f"refusing it (chmod 600 {path})"
            )
        data = fh.read(_MAX_SECRET_FILE + 1)
    if len(data) > _MAX_SECRET_FILE:
        raise UsageError(f"{what} {path} is too large to hold a token")
    return check_token(data.decode("ascii", errors="replace").strip(), f"{what} {path}")


def check_token(token: str, source: str) -> str:
    """``token`` if it can travel in a header; the error never repeats it."""
    if not _TOKEN.fullmatch(token):
        raise UsageError(f"{source} does not hold a token (empty, or spaces or control bytes)")
    return token


def normalize_url(url: str, *, strip: str, what: str) -> str:
    """``url`` as ``scheme://host[:port][/prefix]`` without ``strip`` (``/v1/admin``) or a
    trailing slash.

    Raises:
        UsageError: not http(s), no host, or it carries credentials, a query or a fragment
            (a token belongs in a header, never in a URL).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what} must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(
            f"{what} must not carry credentials, a query or a fragment "
            "(tokens go in a file or the environment, never in a URL)"
        )
    path = parts.path.rstrip("/")
    if path.endswith(strip):
        path = path[: -len(strip)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def plain_http_warning(url: str) -> str | None:
    """A warning when a token would cross the network unencrypted."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return None
    host = parts.hostname or ""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"{url} is plain http to another host: the token crosses the network unencrypted"


def _load_config_file(path: Path, *, explicit: bool) -> tuple[dict[str, Any], Path | None]:
    """The table of a config file, and the path (None when the default file is absent)."""
    path = path.expanduser()
    if not explicit and not path.exists():
        return {}, None
    try:
        out = read_toml_section(path, "admin", _CONFIG_KEYS)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    for key, value in out.items():
        if not isinstance(value, str):
            raise UsageError(f"config file {path}: {key} must be a string")
    if "token" in out or "device_token" in out:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise UsageError(
                f"config file {path} holds a token and has mode {mode:04o}: other users could "
                f"read it; refusing it (chmod 600 {path})"
            )
    return out, path


@dataclass(frozen=True, slots=True)
class _TokenSource:
    """Where one kind of token may come from: its config keys (also its flags, as
    ``--token``/``--token-file``), its environment variables, and what its file is called in
    messages."""

    keys: tuple[str, str]
    env: tuple[str, str]
    file_what: str


_ADMIN_TOKEN = _TokenSource(("token", "token_file"), (ENV_TOKEN, ENV_TOKEN_FILE), "token file")
_DEVICE_TOKEN = _TokenSource(
    ("device_token", "device_token_file"),
    (ENV_DEVICE_TOKEN, ENV_DEVICE_TOKEN_FILE),
    "device token file",
)


def _find_token(
    source: _TokenSource,
    flags: tuple[str | None, str | None],
    environ: Mapping[str, str],
    conf: Mapping[str, Any],
    conf_path: Path | None,
) -> str | None:
    """The token of the first level (flags, environment, file) that gives a token or a token
    file (one of the two, never both); None when no level does. A relative token file named
    in the config file is found beside it."""
    key, file_key = source.keys
    env, file_env = source.env
    levels = (
        (flags, f"--{key.replace('_', '-')}/--{file_key.replace('_', '-')}", None),
        ((environ.get(env) or None, environ.get(file_env) or None), f"{env}/{file_env}", None),
        ((conf.get(key), conf.get(file_key)), f"config {key}/{file_key}", conf_path),
    )
    for (token, token_file), where, base in levels:
        if token is not None and token_file is not None:
            raise UsageError(f"both a token and a token file are given ({where}): keep one")
        if token is not None:
            return check_token(token, where)
        if token_file is not None:
            return read_secret_file(_resolve_file(token_file, base), source.file_what)
    return None


def _config(config: str | None, environ: Mapping[str, str]) -> tuple[dict[str, Any], Path | None]:
    if config is not None:
        return _load_config_file(Path(config), explicit=True)
    if environ.get(ENV_CONFIG):
        return _load_config_file(Path(environ[ENV_CONFIG]), explicit=True)
    return _load_config_file(DEFAULT_CONFIG, explicit=False)


def _resolve_file(name: str, base: Path | None) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or base is None else base.parent / path


def load_admin_settings(
    *,
    url: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    config: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The admin API's URL and token: flags, then environment, then the config file.

    Raises:
        UsageError: no token anywhere, two at one level, a bad URL, an unsafe file.
    """
    environ = os.environ if environ is None else environ
    conf, conf_path = _config(config, environ)
    raw_url = url or environ.get(ENV_URL) or conf.get("url") or DEFAULT_URL
    base = normalize_url(raw_url, strip="/v1/admin", what="the server URL")
    found = _find_token(_ADMIN_TOKEN, (token, token_file), environ, conf, conf_path)
    if found is not None:
        return Settings(base, found)
    raise UsageError(
        f"no admin token: give --token-file FILE (mode 0600), or set {ENV_TOKEN_FILE} or "
        f"{ENV_TOKEN}, or put token_file in {DEFAULT_CONFIG}"
    )


def load_device_settings(
    *,
    url: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    config: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """A device's setup endpoint and its device-local token (``KEYSTORE.token`` on the
    device): flags, then ``KEYSEED_ADMIN_DEVICE_*``, then the config file.

    Raises:
        UsageError: no URL or token, a bad URL, an unsafe file.
    """
    environ = os.environ if environ is None else environ
    conf, conf_path = _config(config, environ)
    raw_url = url or environ.get(ENV_DEVICE_URL) or conf.get("device_url")
    if not raw_url:
        raise UsageError(
            "no device URL: give --device-url http://HOST:PORT (the device's --listen address)"
        )
    base = normalize_url(raw_url, strip="/v1", what="the device URL")
    found = _find_token(_DEVICE_TOKEN, (token, token_file), environ, conf, conf_path)
    if found is not None:
        return Settings(base, found)
    raise UsageError(
        "no device token: give --device-token-file KEYSTORE.token (the file beside the "
        "device's keystore)"
    )


def policy_body(
    *,
    soft_messages: int | None = None,
    hard_messages: int | None = None,
    soft_age_s: int | None = None,
    hard_age_s: int | None = None,
) -> dict[str, int] | None:
    """A registration's rekey policy: None when no limit is given (the server's default
    applies); otherwise the given limits, and keyseed's defaults for the others."""
    given = {
        "soft_messages": soft_messages,
        "hard_messages": hard_messages,
        "soft_age_s": soft_age_s,
        "hard_age_s": hard_age_s,
    }
    if all(v is None for v in given.values()):
        return None
    return {k: getattr(DEFAULT_POLICY, k) if v is None else v for k, v in given.items()}


# -- HTTP -----------------------------------------------------------------------------


def _path_id(device_id: str) -> str:
    """A device ID as a path segment (the server's pattern; ``.``/``..`` would be resolved
    away by URL normalisation and address another route)."""
    if not _DEVICE_ID.fullmatch(device_id) or device_id in (".", ".."):
        raise UsageError(f"not a device ID: {device_id!r} (expected [A-Za-z0-9._-]{{1,64}})")
    return quote(device_id, safe="")


def _describe(detail: Any) -> str:
    """The server's ``detail``, one line (a validation error is a list of places)."""
    if isinstance(detail, list):
        parts = []
        for item in detail[:3]:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", ()) if x != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or "invalid request"
    return str(detail) if detail is not None else ""


class _Http:
    """One httpx client with the bearer token, mapping every failure to a ConsoleError."""

    #: Who answers, for messages ("the server", "the device").
    peer = "the server"

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = settings.url
        self._client = httpx.Client(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {settings.token}"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        device_id: str | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer, or a ConsoleError."""
        try:
            resp = self._client.request(
                method,
                path,
                json=json,
                params={k: v for k, v in (params or {}).items() if v is not None} or None,
            )
        except httpx.TimeoutException:
            raise Unreachable(f"{self.peer} at {self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach {self.peer} at {self.url}: {reason}") from None
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = None
            if resp.status_code in ok:
                raise RequestFailed(
                    f"{self.peer} at {self.url} answered {path} with something other than JSON"
                ) from None
        if resp.status_code in ok:
            return body
        raise self._error(resp, body, path, device_id)

    def _error(
        self, resp: httpx.Response, body: Any, path: str, device_id: str | None
    ) -> Exception:
        status = resp.status_code
        error = body.get("error") if isinstance(body, dict) else None
        detail = _describe(body.get("detail")) if isinstance(body, dict) else ""
        error = error if isinstance(error, str) else None
        if status == 401:
            return AuthFailed(self._auth_message(), error=error)
        if status == 404:
            if error == "unknown_device":
                return NotFound(f"unknown device {device_id}", error=error)
            return NotFound(
                f"{self.peer} at {self.url} has no {path} (HTTP 404): is the URL right, "
                "and the server recent enough?",
                error=error,
            )
        if status == 409:
            return Conflict(f"{error or 'conflict'}: {detail}", error=error)
        if status == 422:
            return UsageError(f"{self.peer} refused the request: {detail}", error=error)
        if status == 429:
            wait = resp.headers.get("Retry-After")
            later = f" (retry in {wait} s)" if wait and wait.isdigit() else ""
            return RequestFailed(f"{self.peer} is rate-limiting: {detail}{later}", error=error)
        what = f": {error}: {detail}" if error else ""
        return RequestFailed(f"{self.peer} answered HTTP {status}{what}", error=error)

    def _auth_message(self) -> str:
        return (
            f"{self.peer} at {self.url} refused the admin token (401): check --token-file, "
            f"{ENV_TOKEN_FILE} or {ENV_TOKEN}"
        )


class AdminClient(_Http):
    """The admin API of one server (``/v1/admin``)."""

    def register(
        self,
        device_id: str,
        *,
        setup_code: str | None = None,
        allow_no_code: bool = False,
        suite: str | None = None,
        window_s: float | None = None,
        policy: Mapping[str, int] | None = None,
        tls_reduced: bool = False,
    ) -> dict[str, Any]:
        """201/202: register ``device_id`` and open its enrolment window."""
        body: dict[str, Any] = {"device_id": device_id}
        if setup_code is not None:
            body["setup_code"] = setup_code
        if allow_no_code:
            body["allow_no_code"] = True
        if suite is not None:
            body["suite"] = suite
        if window_s is not None:
            body["window_s"] = window_s
        if policy is not None:
            body["policy"] = dict(policy)
        if tls_reduced:
            body["tls_reduced"] = True
        _path_id(device_id)
        out: dict[str, Any] = self.request(
            "POST", "/v1/admin/devices", ok=(201,), json=body, device_id=device_id
        )
        return out

    def devices(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/v1/admin/devices")
        return out

    def device(self, device_id: str) -> dict[str, Any]:
        return self._device_call("GET", device_id, "")

    def profile(
        self,
        device_id: str,
        *,
        suite: str | None = None,
        policy: Mapping[str, int] | None = None,
        tls_reduced: bool | None = None,
    ) -> dict[str, Any]:
        """Change the device's profile (what is None stays); sent with its next 206."""
        body: dict[str, Any] = {}
        if suite is not None:
            body["suite"] = suite
        if policy is not None:
            body["policy"] = dict(policy)
        if tls_reduced is not None:
            body["tls_reduced"] = tls_reduced
        return self._device_call("PATCH", device_id, "/profile", json=body)

    def rekey(self, device_id: str) -> dict[str, Any]:
        """401/402: order a rekey by proxy (403 goes to the device)."""
        return self._device_call("POST", device_id, "/rekey", ok=(202,))

    def confirm(self, device_id: str) -> dict[str, Any]:
        """208/209: the server runs 207 with the device."""
        return self._device_call("POST", device_id, "/confirm")

    def approve(self, device_id: str, sas: str) -> dict[str, Any]:
        """Confirm a device enrolled without a code, by the SAS it shows."""
        return self._device_call("POST", device_id, "/approve", json={"sas": sas})

    def revoke(self, device_id: str) -> dict[str, Any]:
        return self._device_call("POST", device_id, "/revoke")

    def cook(self, device_id: str, recipe: str) -> dict[str, Any]:
        """Microwave demo: order the oven to cook ``recipe``."""
        return self._device_call("POST", device_id, "/cook", ok=(202,), json={"recipe": recipe})

    def app_state(self, device_id: str) -> dict[str, Any]:
        """The server app's state of the device (the oven's last status report)."""
        return self._device_call("GET", device_id, "/app")

    def audit(
        self, *, device_id: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Audit rows, newest first."""
        if device_id is not None:
            _path_id(device_id)
        out: list[dict[str, Any]] = self.request(
            "GET",
            "/v1/admin/audit",
            params={"device_id": device_id, "limit": limit, "before_id": before_id},
        )
        return out

    def keys(self) -> list[dict[str, Any]]:
        """The server's long-term public keys and the fingerprints devices pin."""
        out: list[dict[str, Any]] = self.request("GET", "/v1/admin/keys")
        return out

    def pairs(self) -> list[dict[str, Any]]:
        """Every pair the admin named or that asked for a key (docs/protocol.md §12)."""
        out: list[dict[str, Any]] = self.request("GET", "/v1/admin/pairs")
        return out

    def allow_pair(self, a: str, b: str) -> dict[str, Any]:
        """allow-pair: ``a`` and ``b`` may obtain a pair key."""
        out: dict[str, Any] = self.request(
            "POST", "/v1/admin/pairs/allow", json={"a": _path_id(a), "b": _path_id(b)}
        )
        return out

    def deny_pair(self, a: str, b: str) -> dict[str, Any]:
        """deny-pair: revoke the permission and close the live pair."""
        out: dict[str, Any] = self.request(
            "POST", "/v1/admin/pairs/deny", json={"a": _path_id(a), "b": _path_id(b)}
        )
        return out

    def _device_call(
        self,
        method: str,
        device_id: str,
        suffix: str,
        *,
        ok: tuple[int, ...] = (200,),
        json: Any = None,
    ) -> dict[str, Any]:
        path = f"/v1/admin/devices/{_path_id(device_id)}{suffix}"
        out: dict[str, Any] = self.request(method, path, ok=ok, json=json, device_id=device_id)
        return out


class DeviceClient(_Http):
    """A device's local setup endpoint (``--listen`` of ``keyseed device``)."""

    peer = "the device"

    def rekey(self) -> dict[str, Any]:
        """301: rekey as soon as possible; the answer is the 302 body."""
        out: dict[str, Any] = self.request("POST", "/v1/rekey", ok=(202,))
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/status")
        return out

    def _error(
        self, resp: httpx.Response, body: Any, path: str, device_id: str | None
    ) -> Exception:
        if resp.status_code == 421:
            return UsageError(
                "the device refused the Host of the URL (421): use the address it listens on, "
                "an IP address or localhost with its port"
            )
        if resp.status_code == 403:
            return RequestFailed("the device refused the request (403): cross-origin")
        return super()._error(resp, body, path, device_id)

    def _auth_message(self) -> str:
        return (
            f"the device at {self.url} refused the device token (401): use the KEYSTORE.token "
            "file beside the device's keystore"
        )


__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "ENV_CONFIG",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ENV_URL",
    "AdminClient",
    "AuthFailed",
    "Conflict",
    "ConsoleError",
    "DeviceClient",
    "ExitCode",
    "NotFound",
    "RequestFailed",
    "Settings",
    "Unreachable",
    "UsageError",
    "check_token",
    "load_admin_settings",
    "load_device_settings",
    "normalize_url",
    "plain_http_warning",
    "policy_body",
    "read_secret_file",
]
