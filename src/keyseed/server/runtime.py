"""keyseed.server.runtime
~~~~~~~~~~~~~~~~~~~~~~~~~

:class:`Runtime`: what both listeners of one server share (configuration, secrets, the core's
context, the store, the hub of live connections, metrics, the server app), and the
rate-limited audit rows written for attempts that change no record.

The hub listens on a bus (:func:`keyseed.storage.notify.make_bus`): PostgreSQL's LISTEN/NOTIFY
when the store is PostgreSQL (several processes may share it), an in-process no-op otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..apps.microwave import RecipeService
from ..protocol.events import AuditEntry
from ..protocol.server import ServerContext
from ..storage.notify import make_bus
from ..storage.repository import Store
from ..storage.sql import open_store
from .apps import ServerApp, make_app
from .config import ServerConfig
from .datadir import Secrets, open_data_dir
from .hub import Hub
from .metrics import Metrics
from .ratelimit import ConnectionLimits

if TYPE_CHECKING:
    from .device_channel import DeviceConnection

log = logging.getLogger("keyseed.server")

#: Audit rows per minute for attempts that change no record (unknown IDs, refusals).
AUDIT_BUDGET_PER_MIN = 120


class _Budget:
    """A token bucket: ``rate`` tokens per minute, at most ``rate`` saved up."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate / 60.0)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(eq=False, kw_only=True)
class Runtime:
    """One server: both listeners hold the same Runtime."""

    config: ServerConfig
    secrets: Secrets
    ctx: ServerContext
    store: Store
    app: ServerApp
    hub: Hub = field(default_factory=Hub)
    #: Every open device connection (authenticated or not).
    connections: set[DeviceConnection] = field(default_factory=set)
    metrics: Metrics = field(init=False)
    #: Per-address admission of device connections (:mod:`keyseed.server.ratelimit`).
    limits: ConnectionLimits = field(init=False)
    _budget: _Budget = field(default_factory=lambda: _Budget(AUDIT_BUDGET_PER_MIN))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.metrics = Metrics(
            pending=lambda: sum(1 for c in self.connections if c.pending),
            connected=lambda: len(self.hub),
            commits=self.store.group_commits,
        )
        self.limits = ConnectionLimits(
            max_pending_per_ip=self.config.max_pending_per_ip,
            connect_rate_per_ip=self.config.connect_rate_per_ip,
            authenticated=lambda conn: getattr(conn, "device_id", None) is not None,
            registry=self.metrics.registry,
        )

    async def limited_audit(self, *entries: AuditEntry) -> None:
        """Audit rows that change no record, within the rate limit (the rest are counted)."""
        keep = [e for e in entries if self._budget.take()]
        dropped = len(entries) - len(keep)
        if dropped:
            self.metrics.audit_dropped.inc(dropped)
        if keep:
            try:
                await self.store.add_audit(keep)
            except Exception:
                log.exception("audit write failed")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, held until it ends (the loop keeps only weak
        references to tasks)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn_audit(self, *entries: AuditEntry) -> None:
        """:meth:`limited_audit` in the background (from code that cannot await)."""
        self.spawn(self.limited_audit(*entries))

    async def close(self) -> None:
        """Close live connections, stop listening, finish audit writes, close the store."""
        await self.hub.close_all()
        await self.hub.stop()
        for conn in list(self.connections):
            await conn.close_now()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()


async def open_runtime(
    config: ServerConfig,
    *,
    store: Store | None = None,
    app: ServerApp | None = None,
    secrets: Secrets | None = None,
) -> Runtime:
    """Load (or initialise) the data folder, open the store, and build the runtime.

    Args:
        config: the configuration.
        store: a store to use instead of opening ``config.db_url`` (tests, PostgreSQL schemas).
        app: the server app (default: the one ``config.app`` names). A recipe service gets
            the hub's :meth:`~keyseed.server.hub.Hub.send_app` to push orders to live ovens.
        secrets: the data folder already loaded (``keyseed server`` loads it first to print
            the admin token before anything else can fail).
    """
    if secrets is None:
        secrets = open_data_dir(config.data, config.suites)
    if store is None:
        store = await open_store(config.db_url, secrets.master_key)
    ctx = ServerContext(
        keys=dict(secrets.keys),
        k_reject=secrets.k_reject,
        s27_timeout=config.s27_timeout,
        handshake_timeout=config.handshake_timeout,
    )
    rt = Runtime(
        config=config,
        secrets=secrets,
        ctx=ctx,
        store=store,
        app=app if app is not None else make_app(config.app),
    )
    if isinstance(rt.app, RecipeService):
        rt.app.attach_push(rt.hub.send_app)
    try:
        await rt.hub.start(store, make_bus(store))
    except BaseException:
        await store.close()
        raise
    return rt


__all__ = ["AUDIT_BUDGET_PER_MIN", "Runtime", "open_runtime"]
