"""keyseed.faults
~~~~~~~~~~~~~~

Test-only crash hook. ``crash_point(name)`` kills the process with SIGKILL when the
environment variable ``KEYSEED_CRASH_AT`` names that point, so a test can stop a device or a
server at an exact step of an exchange (after its 203 left, after the commit and before the
206, ...) instead of guessing with sleeps. ``KEYSEED_CRASH_AT=name:N`` kills at the N-th time
the point is reached (default 1).

The variable is read once at import; without it every hook is one global lookup and a return.
SIGKILL is the point: no ``finally``, no flush, no atexit, exactly what a power cut leaves.
"""

from __future__ import annotations

import os
import signal

from .protocol.messages import decode_frame

#: Environment variable naming the point to crash at.
ENV = "KEYSEED_CRASH_AT"


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        n = 1
    return name.strip(), max(n, 1)


_TARGET = _parse(os.environ.get(ENV))
#: Whether a crash point is armed in this process (callers may skip work to name the point).
ACTIVE = _TARGET is not None
_hits = [0]


def crash_point(name: str) -> None:
    """Die here (SIGKILL) if ``KEYSEED_CRASH_AT`` names this point; otherwise do nothing."""
    if _TARGET is None or name != _TARGET[0]:
        return
    _hits[0] += 1
    if _hits[0] >= _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def crash_frame(prefix: str, data: bytes) -> None:
    """``crash_point(f"{prefix}.{type}")`` for a protocol frame (``device.sent.203``,
    ``server.recv.205``, ...). Free when no point is armed: the frame is not even parsed."""
    if _TARGET is None:
        return
    try:
        mtype = decode_frame(data, max_size=1 << 20).type
    except Exception:
        return
    name = mtype.name[1:] if mtype.name.startswith("M") else mtype.name.lower()
    crash_point(f"{prefix}.{name}")


__all__ = ["ACTIVE", "ENV", "crash_frame", "crash_point"]
