"""Waiting on real processes: poll an observable state (an HTTP answer, a log line, a process
exit) up to a generous bound. Only a hang reaches the bound, and running out of it fails the
test; nothing asserts on time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

#: Generous bound on any wait; only a hang reaches it.
WAIT = 60.0
T = TypeVar("T")


def wait_until(fn: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """The first truthy result of ``fn``, polled every 50 ms; an HTTP or OS error counts as
    not yet.

    Raises:
        AssertionError: ``timeout`` ran out; the message names ``what`` and the last result.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
