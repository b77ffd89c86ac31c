"""The setup endpoint's Host check, and the crash hook's parsing."""

from __future__ import annotations

import pytest

from keyseed import faults
from keyseed.device.setup_endpoint import host_allowed


@pytest.mark.parametrize(
    ("host", "listen", "ok"),
    [
        ("127.0.0.1:8702", "127.0.0.1", True),
        ("localhost:8702", "127.0.0.1", True),
        ("127.0.0.1:8703", "127.0.0.1", False),
        ("evil.example:8702", "127.0.0.1", False),
        ("10.0.0.5:8702", "127.0.0.1", False),
        ("10.0.0.5:8702", "0.0.0.0", True),
        ("rebind.example:8702", "0.0.0.0", False),
        ("[::1]:8702", "::1", True),
        ("", "127.0.0.1", False),
    ],
)
def test_host_allowed(host: str, listen: str, ok: bool) -> None:
    assert host_allowed(host, listen, 8702) is ok


def test_crash_hook_is_inert_without_the_variable() -> None:
    assert faults._parse(None) is None
    assert faults._parse("device.sent.203") == ("device.sent.203", 1)
    assert faults._parse("server.send.206:3") == ("server.send.206", 3)
    faults.crash_point("device.sent.203")  # not armed in the test process: returns
