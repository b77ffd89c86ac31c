"""keyseed.cli
~~~~~~~~~~~

The ``keyseed`` command. Each subcommand lives in its own ``_add_<name>`` function, which
builds its parser and binds a handler ``(args, parser) -> exit code`` with ``set_defaults``;
:func:`main` only parses and dispatches. Exit codes: 0 ok, 1 the work failed (a bench
exchange did not complete), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
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
from .crypto.suites import SUITES

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
        help="measure the protocol cores",
        formatter_class=_Formatter,
        description="Benchmarks. Each prints figures measured in one run, next to a reference "
        "measured in the same run, as medians over several rounds.",
    )
    _bind(bench, None)
    benchmarks = bench.add_subparsers(metavar="BENCHMARK", title="benchmarks")
    _add_bench_core(benchmarks)


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
