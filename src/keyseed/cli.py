"""keyseed.cli
~~~~~~~~~~~

The ``keyseed`` command.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyseed",
        description="Self-renewing device keys: every exchange seeds the next key.",
    )
    parser.add_argument("--version", action="version", version=f"keyseed {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
