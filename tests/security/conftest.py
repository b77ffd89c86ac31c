"""The security tests drive the same helpers as the protocol and server tests: the in-memory
pair of cores (tests/protocol/helpers.py) and the real server (tests/server/servkit.py).
Their folders go on ``sys.path`` here, and the server fixtures are re-exported."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for _folder in ("protocol", "server", "device"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from servkit import pg_schema, server  # noqa: E402

__all__ = ["pg_schema", "server"]
