"""keyseed.server.ratelimit
~~~~~~~~~~~~~~~~~~~~~~~~~~

Admission of device connections, per peer address, before anything else is spent on them.

The protocol already bounds what one connection costs (small frames and a short deadline
before the handshake, at most one pending exchange per device, no row for an unknown ID, a
budget on audit rows for refusals). What it cannot bound is how many such connections one
sender holds or opens: the floods in ``tests/security/test_floods.py`` show that a single
address can take every slot of ``max_connections`` with connections that never speak, and
can open connections as fast as the server accepts them. Two limits answer that:

* ``max_pending_per_ip``: connections from one address that have not yet proven a key (no
  FIN, no committed enrolment) held at once. Authenticated connections do not count, so a
  gateway with many enrolled devices behind one address is not throttled by it.
* ``connect_rate_per_ip``: new connections per second from one address (a token bucket that
  holds ``2 * rate`` tokens, at least 1).

A refused connection costs the WebSocket upgrade and nothing else (no frame read, no
database access, no audit row): it is closed at once with 4014 (``RATE_LIMITED``), and every
refusal is counted in ``keyseed_rate_limited_total{limit=...}``. The limits are per process
and in memory: they guard this process's resources, and a restart forgives everyone (nothing
durable depends on them). Behind a reverse proxy every device has the proxy's address: raise
them or set them to 0 (no limit) there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Limit names, the ``limit`` label of ``keyseed_rate_limited_total``.
MAX_CONNECTIONS = "max_connections"
PENDING_PER_IP = "pending_per_ip"
RATE_PER_IP = "rate_per_ip"
LIMITS = (MAX_CONNECTIONS, PENDING_PER_IP, RATE_PER_IP)
#: Addresses whose token bucket is remembered; past this, full buckets (which a fresh one
#: equals) are forgotten first, then the oldest, so the table never outgrows the bound.
MAX_TRACKED = 16_384
#: Seconds a TCP connection to the device listener has to send its request head.
HEAD_TIMEOUT = 10.0


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class ConnectionLimits:
    """The per-address limits of one server process, and their counters.

    Args:
        max_pending_per_ip: unauthenticated connections one address may hold (0: no limit).
        connect_rate_per_ip: new connections per second one address may open (0: no limit).
        authenticated: whether a connection has proven a key (it then stops counting).
        registry: where the counters and gauges go (the server's /metrics).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        max_pending_per_ip: int,
        connect_rate_per_ip: float,
        authenticated: Callable[[Hashable], bool],
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_pending = max_pending_per_ip
        self.rate = connect_rate_per_ip
        # Tokens a bucket holds when full.
        self.burst = max(1.0, 2.0 * connect_rate_per_ip)
        self._authenticated = authenticated
        self._clock = clock
        # Open connections by peer address.
        self._open: dict[str, set[Hashable]] = {}
        # Token buckets by peer address (insertion order: oldest first).
        self._buckets: dict[str, _Bucket] = {}
        self.refused = Counter(
            "keyseed_rate_limited",
            "Device connections refused before the WebSocket opened, by limit.",
            ["limit"],
            registry=registry,
        )
        for name in LIMITS:
            self.refused.labels(limit=name)
        opened = Gauge(
            "keyseed_device_connections",
            "Open device connections of this process (authenticated or not).",
            registry=registry,
        )
        opened.set_function(lambda: float(sum(len(s) for s in self._open.values())))
        unauth = Gauge(
            "keyseed_unauthenticated_connections",
            "Open device connections that have not proven a key yet (this process).",
            registry=registry,
        )
        unauth.set_function(lambda: float(self.unauthenticated()))

    def unauthenticated(self, ip: str | None = None) -> int:
        """Open connections (from ``ip``, or from anywhere) that have proven no key."""
        groups = self._open.values() if ip is None else [self._open.get(ip, set())]
        return sum(1 for g in groups for c in g if not self._authenticated(c))

    def admit(self, ip: str, *, open_now: int, cap: int) -> str | None:
        """Whether a new connection from ``ip`` may open, with ``open_now`` connections open
        and ``cap`` allowed: None, or the limit it is over (counted). An admitted connection
        must be :meth:`add`-ed."""
        if open_now >= cap:
            return self.refuse(MAX_CONNECTIONS)
        if (
            self.max_pending > 0
            # Fewer open connections than the limit cannot be over it: no scan on that path.
            and len(self._open.get(ip, ())) >= self.max_pending
            and self.unauthenticated(ip) >= self.max_pending
        ):
            return self.refuse(PENDING_PER_IP)
        if self.rate > 0 and not self._take(ip):
            return self.refuse(RATE_PER_IP)
        return None

    def refuse(self, limit: str) -> str:
        """Count a refusal under ``limit``; returns ``limit``."""
        self.refused.labels(limit=limit).inc()
        return limit

    def add(self, ip: str, conn: Hashable) -> None:
        self._open.setdefault(ip, set()).add(conn)

    def discard(self, ip: str, conn: Hashable) -> None:
        group = self._open.get(ip)
        if group is not None:
            group.discard(conn)
            if not group:
                del self._open[ip]

    def _take(self, ip: str) -> bool:
        now = self._clock()
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget(now)
            bucket = self._buckets[ip] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled; if none has, the oldest half."""
        full = [
            ip
            for ip, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate >= self.burst
        ]
        if not full:
            full = list(self._buckets)[: len(self._buckets) // 2 + 1]
        for ip in full:
            del self._buckets[ip]


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request head.

    uvicorn arms no timer before a connection's first request, so a TCP connection that never
    sends one (or sends it a byte at a time) is held until the peer goes away: the floods
    measured 1,000 such connections still open after three handshake deadlines. This class
    closes a connection whose first request head is not complete ``HEAD_TIMEOUT`` seconds
    after it opened. A WebSocket upgrade hands the transport to the WebSocket protocol (whose
    own handshake deadline then runs) and a request in progress has its cycle, so neither is
    touched. Use it as the device listener's ``http`` protocol class.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Cancelled by connection_lost; harmless if it fires after a request began.
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: Any) -> None:
        # The transport passes to the WebSocket protocol and this object's connection_lost
        # never runs: without this, the timer would keep it (and its buffers) alive for
        # HEAD_TIMEOUT after every upgrade.
        self._head_timer.cancel()
        super().handle_websocket_upgrade(event)

    def _head_expired(self) -> None:
        transport = self.transport
        if self.cycle is None and not transport.is_closing() and transport.get_protocol() is self:
            transport.close()


__all__ = [
    "HEAD_TIMEOUT",
    "LIMITS",
    "MAX_CONNECTIONS",
    "MAX_TRACKED",
    "PENDING_PER_IP",
    "RATE_PER_IP",
    "ConnectionLimits",
    "HeadDeadline",
]
