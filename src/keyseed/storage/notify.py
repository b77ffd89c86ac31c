"""keyseed.storage.notify
~~~~~~~~~~~~~~~~~~~~~~~

Wake-up calls between server processes that share one database. Nothing is *stored* here:
orders and every other admin change live in the device's record, written before anyone is
woken. A notification only tells the process holding a device's connection to look again.

* :class:`LocalBus` (SQLite, one process): publishing does nothing, because the publisher has
  already run the local path itself and no other process can hold a connection.
* :class:`PgBus` (PostgreSQL): ``pg_notify`` through the store's pool, delivered at commit,
  and one dedicated asyncpg connection per process that LISTENs on every channel, reconnecting
  with backoff. After every (re)LISTEN the process is told (``on_listen``) so that it reloads
  the records of the devices it holds: a notification sent while it was not listening is lost,
  the record is not.

Channels (:data:`CHANNELS`) are database-wide in PostgreSQL; a store in a named schema
suffixes them with a short hash of the schema, so deployments sharing a database do not wake
each other. Payloads carry device IDs, random request IDs and sealed pair data (504
bodies, ciphertext under a pair key), never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import asyncpg
import sqlalchemy as sa

from .sql import SqlStore

log = logging.getLogger("keyseed.storage.notify")

#: A device record changed (payload: the device ID).
DEVICE = "keyseed_device"
#: Run 207 with a device, on behalf of another process (JSON: request_id, device_id, timeout).
CONFIRM = "keyseed_confirm"
#: A holder's answer to :data:`CONFIRM` (JSON: request_id, state "claimed" or "done", ...).
CONFIRM_RESULT = "keyseed_confirm_result"
#: A holder delivered a stored order over its live connection (JSON: device_id, order_epoch).
ORDER_SENT = "keyseed_order_sent"
#: Pair traffic for a device another process holds (JSON: device_id, kind "sync" or "data",
#: and for data the 504's canonical body, base64; keyseed.server.pairs).
PAIR = "keyseed_pair"
CHANNELS = (DEVICE, CONFIRM, CONFIRM_RESULT, ORDER_SENT, PAIR)

#: PostgreSQL refuses payloads from 8000 bytes on.
MAX_PAYLOAD = 7999

#: Backoff between attempts to (re)open the LISTEN connection, in seconds.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
#: Seconds of silence after which the LISTEN connection is probed (a dead peer is not
#: always noticed by TCP), and how long the probe may take.
PROBE_INTERVAL = 15.0
PROBE_TIMEOUT = 5.0

#: application_name of the LISTEN connection (how it shows in pg_stat_activity).
LISTENER_NAME = "keyseed-listen"

#: Called with (channel, payload) for every notification; ``channel`` is the base name.
Handler = Callable[[str, str], Awaitable[None]]
#: Called after every successful (re)LISTEN.
OnListen = Callable[[], Awaitable[None]]


class Bus(Protocol):
    """What the hub needs to wake other processes."""

    @property
    def shared(self) -> bool:
        """Whether other processes may hold device connections (and answer requests)."""
        ...

    async def start(self, handler: Handler, on_listen: OnListen) -> None:
        """Begin listening; returns once the first LISTEN is in place (or has failed once:
        listening then goes on in the background)."""
        ...

    async def publish(self, channel: str, payload: str) -> bool:
        """Wake every listening process. Returns False if it could not be sent."""
        ...

    async def close(self) -> None: ...


class LocalBus:
    """One process: nobody else to wake."""

    @property
    def shared(self) -> bool:
        return False

    async def start(self, handler: Handler, on_listen: OnListen) -> None:
        return None

    async def publish(self, channel: str, payload: str) -> bool:
        return True

    async def close(self) -> None:
        return None


def channel_name(base: str, schema: str | None) -> str:
    """The PostgreSQL channel of ``base`` for a store in ``schema`` (at most 63 bytes)."""
    if schema is None:
        return base
    return f"{base}_{hashlib.blake2s(schema.encode(), digest_size=6).hexdigest()}"


class PgBus:
    """LISTEN/NOTIFY on the store's PostgreSQL database."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        # Real channel name -> base name, and back.
        self._names = {channel_name(c, store.schema): c for c in CHANNELS}
        self._real = {base: real for real, base in self._names.items()}
        self._handler: Handler | None = None
        self._on_listen: OnListen | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Set whenever the current LISTEN connection is lost.
        self._lost = asyncio.Event()
        # Set once the first attempt to listen finished (well or not).
        self._first = asyncio.Event()
        #: Whether a LISTEN connection is in place now.
        self.listening = False

    @property
    def shared(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"PgBus(listening={self.listening})"

    async def start(self, handler: Handler, on_listen: OnListen) -> None:
        self._handler, self._on_listen = handler, on_listen
        self._runner = asyncio.get_running_loop().create_task(self._run())
        await self._first.wait()

    async def publish(self, channel: str, payload: str) -> bool:
        if len(payload.encode()) > MAX_PAYLOAD:
            raise ValueError("notification payload too large")
        try:
            async with self._store.engine.begin() as conn:
                await conn.execute(
                    sa.text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": self._real[channel], "payload": payload},
                )
        except Exception as exc:
            log.warning("NOTIFY %s failed: %s", channel, type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the LISTEN connection --------------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        """asyncpg.connect() arguments for the store's database (host, user, password ...)."""
        engine = self._store.engine
        _, kwargs = engine.dialect.create_connect_args(engine.url)
        args: dict[str, Any] = dict(kwargs)
        for key in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            args.pop(key, None)
        settings = {"application_name": LISTENER_NAME}
        if self._store.schema is not None:
            settings["search_path"] = self._store.schema
        args["server_settings"] = settings
        return args

    async def _run(self) -> None:
        delay = BACKOFF_INITIAL
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(**self._connect_args(), timeout=PROBE_TIMEOUT)
                self._lost.clear()
                conn.add_termination_listener(lambda _c: self._lost.set())
                for real in self._names:
                    await conn.add_listener(real, self._on_notify)
                self.listening = True
                delay = BACKOFF_INITIAL
                log.info("listening for notifications")
                self._first.set()
                assert self._on_listen is not None
                self._spawn(self._on_listen())
                await self._watch(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection failed: %s; retrying", type(exc).__name__)
            finally:
                self.listening = False
                self._first.set()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), PROBE_TIMEOUT)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _watch(self, conn: Any) -> None:
        """Until the connection is lost (closed, or a probe fails)."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), PROBE_INTERVAL)
            except TimeoutError:
                await asyncio.wait_for(conn.execute("SELECT 1"), PROBE_TIMEOUT)
                continue
            raise ConnectionError("LISTEN connection lost")

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        base = self._names.get(channel)
        if base is not None and self._handler is not None:
            self._spawn(self._handler(base, payload))

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("notification handler failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def make_bus(store: object) -> Bus:
    """:class:`PgBus` for a store on PostgreSQL, :class:`LocalBus` otherwise."""
    if isinstance(store, SqlStore) and store.dialect == "postgresql":
        return PgBus(store)
    return LocalBus()


__all__ = [
    "CHANNELS",
    "CONFIRM",
    "CONFIRM_RESULT",
    "DEVICE",
    "LISTENER_NAME",
    "ORDER_SENT",
    "Bus",
    "LocalBus",
    "PgBus",
    "channel_name",
    "make_bus",
]
