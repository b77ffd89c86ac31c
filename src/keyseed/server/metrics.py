"""keyseed.server.metrics
~~~~~~~~~~~~~~~~~~~~~~~~~

Prometheus metrics of one server, in its own :class:`CollectorRegistry` (several servers in
one process, as in the tests, never share counters). No metric carries a device label
(DESIGN.md section 7): NG causes are counted by cause only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..protocol.errors import ErrorCode, NgCause

#: Cause label of an exchange that S27 dropped (not a 204 NG cause, but a failed exchange).
CAUSE_EXPIRED = "S27_EXPIRED"


class _GroupCommits(Collector):
    """The SQLite store's group commit, read when scraped: write transactions committed and
    the writers they carried (their ratio is the mean group size). Absent on PostgreSQL,
    whose own statistics count its commits."""

    def __init__(self, read: Callable[[], tuple[int, int] | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._read()
        if counts is None:
            return
        yield CounterMetricFamily(
            "keyseed_db_commits",
            "Durable write transactions (COMMITs) of the SQLite store.",
            value=counts[0],
        )
        yield CounterMetricFamily(
            "keyseed_db_committed_writes",
            "Writes those COMMITs made durable (group commit: several per COMMIT).",
            value=counts[1],
        )


class Metrics:
    """The server's counters and gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        pending: Callable[[], int],
        connected: Callable[[], int],
        commits: Callable[[], tuple[int, int] | None] = lambda: None,
    ) -> None:
        #: The registry /metrics exposes.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exchanges = Counter(
            "keyseed_exchanges",
            "Key exchanges by result (ok, ng) and NG cause (audit names; none for ok).",
            ["result", "cause"],
            registry=r,
        )
        self.confirmations = Counter(
            "keyseed_confirmations",
            "Arrival confirmations (208/209) by result: ok, failed, offline.",
            ["result"],
            registry=r,
        )
        self.frame_errors = Counter(
            "keyseed_frame_errors",
            "Device connections the server failed, by error code.",
            ["code"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "keyseed_audit_dropped",
            "Audit rows for unknown or refused devices dropped by the rate limit.",
            registry=r,
        )
        pending_gauge = Gauge(
            "keyseed_pending_exchanges",
            "Exchanges answered with 204 OK and waiting for 205 (this process).",
            registry=r,
        )
        pending_gauge.set_function(lambda: float(pending()))
        connected_gauge = Gauge(
            "keyseed_connected_devices",
            "Devices with an authenticated connection to this process.",
            registry=r,
        )
        connected_gauge.set_function(lambda: float(connected()))
        r.register(_GroupCommits(commits))
        # Every label value exists from the start, so a dashboard sees zeros, not gaps.
        self.exchanges.labels(result="ok", cause="none")
        for cause in NgCause:
            self.exchanges.labels(result="ng", cause=cause.name)
        self.exchanges.labels(result="ng", cause=CAUSE_EXPIRED)
        for result in ("ok", "failed", "offline"):
            self.confirmations.labels(result=result)

    def exchange_ok(self) -> None:
        self.exchanges.labels(result="ok", cause="none").inc()

    def exchange_ng(self, cause: NgCause | str) -> None:
        name = cause if isinstance(cause, str) else cause.name
        self.exchanges.labels(result="ng", cause=name).inc()

    def frame_error(self, code: ErrorCode) -> None:
        self.frame_errors.labels(code=code.name).inc()

    def confirmation(self, result: str) -> None:
        self.confirmations.labels(result=result).inc()

    def render(self) -> bytes:
        """The Prometheus text format."""
        return bytes(generate_latest(self.registry))


__all__ = ["CAUSE_EXPIRED", "Metrics"]
