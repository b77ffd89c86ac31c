"""``keyseed server`` for the device tests, exactly as shipped, with the microwave recipe
service as its app (``--app microwave``). The crash points (``KEYSEED_CRASH_AT``), ``GET
/v1/keys`` on the device listener and the cooking orders are all part of the real server.

``KEYSEED_TEST_POLICY=soft_messages,soft_age_s`` becomes the server's default rekey policy
(``--policy-*``; the hard limits are a thousand times the soft ones), so a test can make
devices rekey by message count or key age within seconds.

Usage: ``python tests/device/server_main.py [keyseed server options]``.
"""

from __future__ import annotations

import os
import sys

from keyseed.cli import main


def policy_flags(spec: str | None) -> list[str]:
    """``--policy-*`` flags for ``KEYSEED_TEST_POLICY`` (none when it is unset)."""
    if not spec:
        return []
    soft_messages, soft_age = (int(x) for x in spec.split(","))
    return [
        "--policy-soft-messages", str(soft_messages),
        "--policy-hard-messages", str(soft_messages * 1000),
        "--policy-soft-age-s", str(soft_age),
        "--policy-hard-age-s", str(soft_age * 1000),
    ]  # fmt: skip


if __name__ == "__main__":
    flags = policy_flags(os.environ.get("KEYSEED_TEST_POLICY"))
    sys.exit(main(["server", "--app", "microwave", *flags, *sys.argv[1:]]))
