"""keyseed.device.cli
~~~~~~~~~~~~~~~~~~~~

``keyseed device``: the parser (:func:`add_device_parser`) and the command
(:func:`run_device`). The first start creates the keystore: the install secret from the OS,
the server key obtained over an authenticated path (``--server-key`` given at install, or
fetched and accepted only when it matches ``--pin``), and k_code from ``--setup-code``. Later
starts load it and refuse, with a clear message and the file untouched, a keystore that is
damaged, foreign, of another device, or pinned to another server key.

Exit codes: 0 stopped by a signal, 2 usage or configuration error, 3 the keystore cannot be
used, 4 the server key cannot be obtained or does not match the pin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import signal
import sys
import textwrap
from typing import Any, TextIO

import httpx

from ..apps.base import DeviceApp
from ..apps.microwave import MicrowaveApp
from ..crypto import fingerprint, get_suite
from ..crypto.suites import SUITES
from ..protocol.device import new_keystore
from ..protocol.records import Keystore
from .agent import DeviceAgent
from .config import ConfigError, DeviceAgentConfig, keys_url, load_device_config
from .keystore import KeystoreError, KeystoreFile
from .setup_endpoint import SetupEndpoint

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_KEYSTORE = 3
EXIT_SERVER_KEY = 4

log = logging.getLogger("keyseed.device")


class ServerKeyError(Exception):
    """The server key cannot be obtained over an authenticated path, or does not match."""


class _Formatter(argparse.HelpFormatter):
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


_DESCRIPTION = """Run a device (appliance 101): keep a keystore file, hold a WebSocket to the
server's /v1/device, rekey by itself (at first start, on a 301 or 403 order, on power-on with
--rekey-on-start, when the policy's message count or key age is reached), and run the device
app (the microwave demo). Runs until SIGINT or SIGTERM. The first start needs the server key:
--server-key HEX, or --pin FINGERPRINT to fetch it and accept it only if it matches. Every
setting can also come from the environment (KEYSEED_DEVICE_<NAME>, e.g.
KEYSEED_DEVICE_SETUP_CODE) or a TOML file (--config or KEYSEED_DEVICE_CONFIG; keys as the long
option names, top level or under [device]); flags win over the environment, which wins over
the file. See docs/device.md."""


def add_device_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``device`` to a subcommand parser; its handler is ``args.run`` (a coroutine
    function taking the namespace)."""
    p = subparsers.add_parser(
        "device",
        help="run a device agent",
        description=_DESCRIPTION,
        formatter_class=_Formatter,
    )
    env = "KEYSEED_DEVICE_"
    p.add_argument("--config", metavar="FILE", help=f"TOML configuration file (env {env}CONFIG)")
    p.add_argument("--id", metavar="ID", help=f"device ID, [A-Za-z0-9._-]{{1,64}} (env {env}ID)")
    p.add_argument(
        "--server",
        metavar="URL",
        help=f"server URL, ws:// or wss://; /v1/device is added when no path is given "
        f"(env {env}SERVER)",
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        help=f"PEM file of the CA that issued the server's TLS certificate (wss:// only; "
        f"default: the system's trust store) (env {env}CA)",
    )
    p.add_argument(
        "--tls-reduced",
        action="store_true",
        default=None,
        help="over wss://, agree to the TLS reduction when the device's profile allows it "
        f"(application data authenticated by keyseed, encrypted by TLS) (env {env}TLS_REDUCED)",
    )
    p.add_argument(
        "--keystore",
        metavar="PATH",
        help=f"keystore file, created 0600 on the first start; the local token is "
        f"PATH.token (env {env}KEYSTORE)",
    )
    p.add_argument(
        "--pin",
        metavar="FINGERPRINT",
        help=f"hex SHA-256 fingerprint of the server's long-term key, given out of band; "
        f"without --server-key the key is fetched and accepted only if it matches "
        f"(env {env}PIN)",
    )
    p.add_argument(
        "--server-key",
        metavar="HEX",
        help=f"the server's long-term public key (hex), given at install (env {env}SERVER_KEY)",
    )
    p.add_argument(
        "--suite",
        metavar="SUITE",
        help=f"PKE suite as registered at the server: {', '.join(SUITES)} "
        f"(env {env}SUITE; default: hpke-x25519; fixed at the first start)",
    )
    p.add_argument(
        "--setup-code",
        metavar="CODE",
        help=f"setup code printed on the device, 8 to 32 digits; used at the first start "
        f"only (env {env}SETUP_CODE; prefer the environment or the file: flags show in ps)",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"serve the local setup endpoint (301/302, status) there; off unless given "
        f"(env {env}LISTEN)",
    )
    p.add_argument(
        "--rekey-on-start",
        action="store_const",
        const=True,
        default=None,
        help=f"start a key exchange at every power-on (env {env}REKEY_ON_START)",
    )
    p.add_argument(
        "--backoff-initial",
        metavar="S",
        help=f"first reconnect delay, doubling with jitter (env {env}BACKOFF_INITIAL; "
        "default: 0.5)",
    )
    p.add_argument(
        "--backoff-max",
        metavar="S",
        help=f"longest reconnect delay (env {env}BACKOFF_MAX; default: 60)",
    )
    p.add_argument(
        "--connect-timeout",
        metavar="S",
        help=f"deadline to open the WebSocket (env {env}CONNECT_TIMEOUT; default: 10)",
    )
    p.add_argument(
        "--rekey-min-interval",
        metavar="S",
        help=f"301 rate limit: seconds between two rekeys ordered at the setup endpoint "
        f"(env {env}REKEY_MIN_INTERVAL; default: 10)",
    )
    p.add_argument(
        "--app",
        choices=("microwave", "none"),
        default=None,
        help=f"device app (env {env}APP; default: microwave)",
    )
    p.add_argument(
        "--status-interval",
        metavar="S",
        help=f"seconds between the app's status reports (env {env}STATUS_INTERVAL; default: 30)",
    )
    p.add_argument(
        "--cook-speed",
        metavar="X",
        help=f"microwave demo: cooking seconds per real second (env {env}COOK_SPEED; default: 1)",
    )
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"debug, info, warning or error (env {env}LOG_LEVEL; default: info)",
    )
    p.set_defaults(run=run_device)
    return p


_FLAG_FIELDS = (
    "config",
    "id",
    "server",
    "keystore",
    "ca",
    "tls_reduced",
    "pin",
    "server_key",
    "suite",
    "setup_code",
    "listen",
    "rekey_on_start",
    "backoff_initial",
    "backoff_max",
    "connect_timeout",
    "rekey_min_interval",
    "app",
    "status_interval",
    "cook_speed",
    "log_level",
)


def config_from_args(args: argparse.Namespace) -> DeviceAgentConfig:
    """Raises ConfigError."""
    return load_device_config({name: getattr(args, name, None) for name in _FLAG_FIELDS})


# -- the server key -------------------------------------------------------------------


def _check_pin(suite: str, raw: bytes, pin: str | None) -> None:
    if pin is None:
        return
    got = fingerprint(suite, raw)
    if not hmac.compare_digest(got, bytes.fromhex(pin)):
        raise ServerKeyError(
            f"the server key's fingerprint is {got.hex()}, not the pinned {pin}; "
            "refusing it (check --pin, or whether this is the right server)"
        )


async def resolve_server_key(cfg: DeviceAgentConfig) -> bytes:
    """The server's long-term key for a first start, over an authenticated path only.

    Raises:
        ServerKeyError: neither --server-key nor --pin, a key of the wrong form, a fetch that
            failed, or a key whose fingerprint is not the pin.
    """
    suite = get_suite(cfg.suite)
    if cfg.server_key is not None:
        raw = bytes.fromhex(cfg.server_key)
        try:
            suite.load_public(raw)
        except ValueError:
            raise ServerKeyError(f"--server-key is not a {cfg.suite} public key") from None
        _check_pin(cfg.suite, raw, cfg.pin)
        return raw
    if cfg.pin is None:
        raise ServerKeyError(
            "first start: give the server key (--server-key HEX) or its fingerprint "
            "(--pin FINGERPRINT, from the server's start-up banner) to fetch it"
        )
    url = keys_url(cfg.server)
    try:
        async with httpx.AsyncClient(
            timeout=cfg.connect_timeout, verify=cfg.tls_context() or True
        ) as client:
            resp = await client.get(url)
    except httpx.HTTPError as exc:
        raise ServerKeyError(
            f"cannot fetch the server key from {url}: {type(exc).__name__}"
        ) from None
    if resp.status_code != 200:
        raise ServerKeyError(f"cannot fetch the server key from {url}: HTTP {resp.status_code}")
    try:
        entries = resp.json()
        match = [e for e in entries if isinstance(e, dict) and e.get("suite") == cfg.suite]
        raw = bytes.fromhex(str(match[0]["public_key"])) if match else b""
        if raw:
            suite.load_public(raw)
    except (ValueError, KeyError, TypeError):
        raise ServerKeyError(f"{url} did not answer with a key list") from None
    if not raw:
        raise ServerKeyError(f"the server offers no {cfg.suite} key")
    _check_pin(cfg.suite, raw, cfg.pin)
    return raw


def check_pinned(cfg: DeviceAgentConfig, ks: Keystore) -> None:
    """A later start: the configured key or pin must be the keystore's.

    Raises:
        ServerKeyError: they differ (the keystore is left as it is).
    """
    if ks.pinned_fp is not None:
        # A 206 (the profile) moved the device to another suite and its long-term key; the
        # install-time settings still name the key pinned at install, kept by fingerprint.
        _check_moved(cfg, ks, ks.pinned_fp)
        return
    if (
        cfg.suite != ks.suite
        and cfg.suite != DeviceAgentConfig.__dataclass_fields__["suite"].default
    ):
        raise ServerKeyError(f"the keystore's suite is {ks.suite}, not {cfg.suite}")
    if cfg.server_key is not None and not hmac.compare_digest(
        bytes.fromhex(cfg.server_key), ks.server_key
    ):
        raise ServerKeyError(
            "--server-key differs from the key pinned in the keystore; a device moves to "
            "another server only with a new keystore"
        )
    _check_pin(ks.suite, ks.server_key, cfg.pin)


def _check_moved(cfg: DeviceAgentConfig, ks: Keystore, install_fp: bytes) -> None:
    if cfg.server_key is not None:
        got = fingerprint(cfg.suite, bytes.fromhex(cfg.server_key))
        if not hmac.compare_digest(got, install_fp):
            raise ServerKeyError(
                "--server-key differs from the key pinned at install; a device moves to "
                "another server only with a new keystore"
            )
    if cfg.pin is not None:
        pin = bytes.fromhex(cfg.pin)
        current = fingerprint(ks.suite, ks.server_key)
        if not (hmac.compare_digest(pin, install_fp) or hmac.compare_digest(pin, current)):
            raise ServerKeyError(
                f"--pin {cfg.pin} is neither the key pinned at install nor the {ks.suite} key "
                "the server moved this device to; refusing to start"
            )


async def open_keystore(cfg: DeviceAgentConfig, store: KeystoreFile) -> tuple[Keystore, bool]:
    """Load the keystore, or create it on the first start. Returns (keystore, created).

    Raises:
        KeystoreError: the file is unusable (left untouched).
        ServerKeyError: see :func:`resolve_server_key` and :func:`check_pinned`.
    """
    if store.exists():
        ks = store.load(cfg.id)
        check_pinned(cfg, ks)
        return ks, False
    raw = await resolve_server_key(cfg)
    ks = new_keystore(
        device_id=cfg.id,
        suite=cfg.suite,
        server_key=raw,
        install_secret=os.urandom(32),
        setup_code=cfg.setup_code,
    )
    store.create(ks)
    return ks, True


def make_app(cfg: DeviceAgentConfig) -> DeviceApp | None:
    if cfg.app == "microwave":
        return MicrowaveApp(status_interval=cfg.status_interval, speed=cfg.cook_speed)
    return None


# -- the command ----------------------------------------------------------------------


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def run_device(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``keyseed device``: run until SIGINT or SIGTERM. Returns the exit code."""
    out = out or sys.stdout
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"keyseed device: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(cfg.log_level)
    store = KeystoreFile(cfg.keystore)
    try:
        store.lock()
        try:
            ks, created = await open_keystore(cfg, store)
            token = store.load_or_create_token()
        except (KeystoreError, ServerKeyError):
            store.unlock()
            raise
    except KeystoreError as exc:
        print(f"keyseed device: keystore refused: {exc}", file=sys.stderr)
        return EXIT_KEYSTORE
    except ServerKeyError as exc:
        print(f"keyseed device: {exc}", file=sys.stderr)
        return EXIT_SERVER_KEY
    except OSError as exc:
        print(f"keyseed device: {cfg.keystore}: {exc.strerror}", file=sys.stderr)
        return EXIT_KEYSTORE
    try:
        return await _serve(cfg, store=store, ks=ks, created=created, token=token, out=out)
    finally:
        store.unlock()


async def _serve(
    cfg: DeviceAgentConfig,
    *,
    store: KeystoreFile,
    ks: Keystore,
    created: bool,
    token: str,
    out: TextIO,
) -> int:
    agent = DeviceAgent(cfg, store, ks, make_app(cfg))
    endpoint = None
    lines = [
        f"device {ks.device_id}: keystore {cfg.keystore}{' (new)' if created else ''}, "
        f"epoch {ks.epoch}",
        f"server key {ks.suite}: fingerprint {fingerprint(ks.suite, ks.server_key).hex()}",
        f"server: {cfg.url}",
    ]
    addr = cfg.listen_addr
    if addr is not None:
        endpoint = SetupEndpoint(
            agent, token, addr[0], addr[1], rekey_min_interval=cfg.rekey_min_interval
        )
        try:
            await endpoint.start()
        except (OSError, SystemExit) as exc:
            print(f"keyseed device: cannot listen on {cfg.listen}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        lines.append(
            f"setup endpoint: http://{host}:{endpoint.port}/v1/ (token in {store.token_path})"
        )
    print("\n".join(lines), file=out, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(agent.run())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if endpoint is not None:
            await endpoint.stop()
    print("keyseed device stopped", file=out, flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m keyseed.device [options]``: the same command without the main CLI."""
    parser = argparse.ArgumentParser(prog="keyseed")
    sub = parser.add_subparsers()
    add_device_parser(sub)
    args = parser.parse_args(["device", *(sys.argv[1:] if argv is None else argv)])
    code: Any = asyncio.run(run_device(args))
    return int(code)


__all__ = [
    "EXIT_KEYSTORE",
    "EXIT_OK",
    "EXIT_SERVER_KEY",
    "EXIT_USAGE",
    "ServerKeyError",
    "add_device_parser",
    "check_pinned",
    "config_from_args",
    "main",
    "open_keystore",
    "resolve_server_key",
    "run_device",
]
