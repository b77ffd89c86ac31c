"""keyseed.cli
~~~~~~~~~~~

The ``keyseed`` command. Each subcommand lives in its own ``_add_<name>`` function, which
builds its parser and binds a handler ``(args, parser) -> exit code`` with ``set_defaults``;
:func:`main` only parses and dispatches. Exit codes: 0 ok, 1 the work failed (a bench
exchange did not complete), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from typing import TextIO

from . import __version__
from .bench.core import (
    DEFAULT_EXCHANGES,
    DEFAULT_ROUNDS,
    BenchFailure,
    run_core,
    split_available,
)
from .bench.system import add_bench_system, add_bench_tls
from .console.admin_cli import add_admin_parser
from .crypto.suites import SUITES
from .demo import add_demo_parser
from .device.cli import add_device_parser
from .server.config import APP_NAMES, ConfigError, ServerConfig, load_config
from .server.datadir import DataDirError
from .server.run import run_on, serve
from .simulate import add_simulate_parser

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


class _Formatter(argparse.HelpFormatter):
    """Wraps help text without breaking suite names at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _bind(parser: argparse.ArgumentParser, handler: Handler | None) -> None:
    """Attach the handler and the parser whose help a bare invocation prints."""
    parser.set_defaults(handler=handler, parser=parser)


# -- keyseed bench ------------------------------------------------------------------------


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the server against TLS 1.3 (or, with `core`, the protocol cores)",
        formatter_class=_Formatter,
        description="Benchmarks. Each prints figures measured in one run, next to a reference "
        "measured in the same run, as medians over several rounds.",
    )
    _bind(bench, None)
    benchmarks = bench.add_subparsers(metavar="BENCHMARK", title="benchmarks")
    _add_bench_core(benchmarks)
    # Plain `keyseed bench [--quick] [--json]` runs the system benchmark.
    add_bench_system(bench, benchmarks)
    add_bench_tls(benchmarks)


def _add_bench_core(benchmarks: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_EXCHANGES.items())
    core = benchmarks.add_parser(
        "core",
        help="complete exchanges vs. the crypto floor",
        formatter_class=_Formatter,
        description="Run complete exchanges (203 -> 206 -> ACK_206) between a device core and a "
        "server core in one process, and print exchanges/s next to the crypto floor measured in "
        "the same run: the rate of the exchange's public-key operations alone (encrypt P, "
        "decrypt P, generate the one-time key; rsa-oaep: encrypt and decrypt with the long-term "
        "key), and their ratio. Figures are medians over the rounds; each round runs the "
        "exchanges, then the floor. Every round checks that device and server agree on key and "
        "epoch; if not, the bench fails with exit code 1.",
    )
    core.add_argument(
        "--suite",
        action="append",
        choices=list(SUITES),
        metavar="SUITE",
        help=f"measure only this suite; repeat for several (default: every suite this backend "
        f"runs). One of: {', '.join(SUITES)}",
    )
    core.add_argument(
        "--rounds",
        type=_positive_int,
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"rounds per suite; figures are their medians (default: {DEFAULT_ROUNDS})",
    )
    core.add_argument(
        "--exchanges",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"exchanges per round, for every suite (default by suite: {defaults}); "
        "the floor runs as many sets of operations",
    )
    core.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with every figure and the environment instead of a table",
    )
    _bind(core, _run_bench_core)


def _progress_to(stream: TextIO) -> Callable[[str], None] | None:
    if not stream.isatty():
        return None

    def show(message: str) -> None:
        stream.write(f"\r\033[K{message}")
        stream.flush()

    return show


def _run_bench_core(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    requested: list[str] = list(dict.fromkeys(args.suite or SUITES))
    runnable, missing = split_available(requested)
    if args.suite and missing:
        parser.error(f"suite {', '.join(missing)} is not available in this backend")
    progress = None if args.json else _progress_to(sys.stderr)
    try:
        report = run_core(
            runnable,
            rounds=args.rounds,
            exchanges=args.exchanges,
            unavailable=missing,
            progress=progress,
        )
    except BenchFailure as exc:
        if progress is not None:
            progress("")
        print(f"keyseed bench core: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if progress is not None:
        progress("")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    return EXIT_OK


# -- keyseed server -----------------------------------------------------------------------


def _add_server(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = ServerConfig()
    server = commands.add_parser(
        "server",
        help="run the application server (device channel + admin API)",
        formatter_class=_Formatter,
        description="Run the application server: the device channel (/v1/device, WebSocket) "
        "on one listener and the admin API (/v1/admin), /metrics and /healthz on another, "
        "loopback by default. The first start initialises the data folder: a long-term key "
        "per enabled suite, a master key that seals device records at rest, and an admin "
        "token, printed once and stored only as a hash. Every start prints the fingerprints "
        "a device pins. Every setting can also come from the environment (KEYSEED_<NAME>, "
        "e.g. KEYSEED_ADMIN_PORT) or a TOML file (--config or KEYSEED_CONFIG; keys as the "
        "long option names, top level or under [server]); flags win over the environment, "
        "which wins over the file. See docs/server.md.",
    )
    opt = server.add_argument
    opt("--config", metavar="FILE", help="TOML configuration file (env KEYSEED_CONFIG)")
    opt("--data", metavar="DIR", help=f"data folder (env KEYSEED_DATA; default: {d.data})")
    opt(
        "--db",
        metavar="URL",
        help="SQLAlchemy database URL (env KEYSEED_DB; default: SQLite in the data folder, "
        "sqlite+aiosqlite:///DIR/keyseed.db; PostgreSQL: postgresql+asyncpg://user@host/db)",
    )
    opt(
        "--host", metavar="H", help=f"device listener address (env KEYSEED_HOST; default: {d.host})"
    )
    opt(
        "--port",
        metavar="P",
        help=f"device listener port, 0 for any (env KEYSEED_PORT; default: {d.port})",
    )
    opt(
        "--admin-host",
        metavar="H",
        help=f"admin listener address (env KEYSEED_ADMIN_HOST; default: {d.admin_host})",
    )
    opt(
        "--admin-port",
        metavar="P",
        help=f"admin listener port, 0 for any (env KEYSEED_ADMIN_PORT; default: {d.admin_port})",
    )
    opt(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate (chain) of the device listener; with --tls-key it serves wss:// "
        "(env KEYSEED_TLS_CERT)",
    )
    opt("--tls-key", metavar="FILE", help="PEM private key of --tls-cert (env KEYSEED_TLS_KEY)")
    opt(
        "--admin-tls",
        action="store_true",
        default=None,
        help="serve the admin listener over https:// with the same certificate "
        "(env KEYSEED_ADMIN_TLS; default: plain http on loopback)",
    )
    opt(
        "--suites",
        metavar="LIST",
        help=f"comma-separated PKE suites to enable (env KEYSEED_SUITES; default: "
        f"{','.join(d.suites)}; known: {', '.join(SUITES)})",
    )
    opt(
        "--s27-timeout",
        metavar="S",
        help="seconds a pending exchange waits for 205 "
        f"(env KEYSEED_S27_TIMEOUT; default: {d.s27_timeout:g})",
    )
    opt(
        "--handshake-timeout",
        metavar="S",
        help="seconds for HELLO and FIN "
        f"(env KEYSEED_HANDSHAKE_TIMEOUT; default: {d.handshake_timeout:g})",
    )
    opt(
        "--idle-timeout",
        metavar="S",
        help="seconds a silent device connection stays open "
        f"(env KEYSEED_IDLE_TIMEOUT; default: {d.idle_timeout:g})",
    )
    opt(
        "--confirm-timeout",
        metavar="S",
        help="seconds an arrival confirmation waits for "
        f"the device (env KEYSEED_CONFIRM_TIMEOUT; default: {d.confirm_timeout:g})",
    )
    opt(
        "--max-connections",
        metavar="N",
        help="device connections held at once "
        f"(env KEYSEED_MAX_CONNECTIONS; default: {d.max_connections})",
    )
    opt(
        "--max-pending-per-ip",
        metavar="N",
        help="device connections from one address that have not proven a key yet, held at "
        f"once; 0: no limit (env KEYSEED_MAX_PENDING_PER_IP; default: {d.max_pending_per_ip})",
    )
    opt(
        "--connect-rate-per-ip",
        metavar="R",
        help="new device connections per second from one address; 0: no limit "
        f"(env KEYSEED_CONNECT_RATE_PER_IP; default: {d.connect_rate_per_ip:g})",
    )
    opt(
        "--app",
        choices=APP_NAMES,
        help="server app that application data reaches: microwave (the recipe service of "
        "the microwave demo), echo (tests) or none (env KEYSEED_APP; default: "
        f"{d.app})",
    )
    for name, what in (
        ("soft-messages", "messages under one key before the device rekeys by itself"),
        ("hard-messages", "messages under one key after which it carries no application data"),
        ("soft-age-s", "key age in seconds before the device rekeys by itself"),
        ("hard-age-s", "key age in seconds after which it carries no application data"),
    ):
        field = "policy_" + name.replace("-", "_")
        opt(
            f"--policy-{name}",
            metavar="N",
            help=f"default rekey policy of new registrations: {what} "
            f"(env KEYSEED_{field.upper()}; default: {getattr(d, field)})",
        )
    opt(
        "--log-level",
        metavar="LEVEL",
        help=f"debug, info, warning or error (env KEYSEED_LOG_LEVEL; default: {d.log_level})",
    )
    opt(
        "--loop",
        metavar="LOOP",
        help="event loop: uvloop, asyncio, or auto (uvloop where installed) "
        f"(env KEYSEED_LOOP; default: {d.loop})",
    )
    opt(
        "--reset-admin-token",
        action="store_true",
        help="replace the admin token with a new one, printed once (the old one stops working)",
    )
    _bind(server, _run_server)


def _run_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    names = (
        "config",
        "data",
        "db",
        "host",
        "port",
        "admin_host",
        "admin_port",
        "tls_cert",
        "tls_key",
        "admin_tls",
        "suites",
        "s27_timeout",
        "handshake_timeout",
        "idle_timeout",
        "confirm_timeout",
        "max_connections",
        "max_pending_per_ip",
        "connect_rate_per_ip",
        "app",
        "policy_soft_messages",
        "policy_hard_messages",
        "policy_soft_age_s",
        "policy_hard_age_s",
        "log_level",
        "loop",
    )
    try:
        config = load_config({name: getattr(args, name) for name in names})
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        run_on(config.loop, serve(config, reset_token=args.reset_admin_token))
    except (DataDirError, OSError, ConfigError) as exc:
        print(f"keyseed server: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return EXIT_OK


# -- keyseed device -----------------------------------------------------------------------


def _add_device(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = add_device_parser(commands)
    _bind(device, _run_device)


def _run_device(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        code: int = asyncio.run(args.run(args))
    except KeyboardInterrupt:
        return EXIT_OK
    return code


# -- keyseed ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyseed",
        formatter_class=_Formatter,
        description="Self-renewing device keys: every exchange seeds the next key.",
    )
    parser.add_argument("--version", action="version", version=f"keyseed {__version__}")
    _bind(parser, None)
    commands = parser.add_subparsers(metavar="COMMAND", title="commands")
    _add_bench(commands)
    _add_server(commands)
    _add_device(commands)
    add_admin_parser(commands)
    add_demo_parser(commands)
    add_simulate_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (also for --help and usage errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Handler | None = args.handler
        if handler is None:
            # A command group named without one of its commands: show what it offers.
            args.parser.print_help(sys.stderr)
            return EXIT_USAGE
        return handler(args, args.parser)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
