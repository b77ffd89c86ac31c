"""keyseed.storage.sql
~~~~~~~~~~~~~~~~~~~~

:class:`SqlStore`: the :class:`~keyseed.storage.repository.Store` on SQLAlchemy Core, SQLite
(the default, one file in the data folder) or PostgreSQL (several server processes sharing
one database). The transactions of the exchange path are written once as steps
(:mod:`keyseed.storage.tx`) and run by the database's own driver: on SQLite in the
:class:`~keyseed.storage.sqlite_runner.SqliteRunner` thread with group commit, on PostgreSQL
on an asyncpg pool. The rest (migrations, listings) uses SQLAlchemy's async engine.

Invariants:

* Every method is one transaction. Times are the database clock read inside it.
* A compare-and-set is ``UPDATE devices ... WHERE device_id = :id AND version = :expected``
  and it wins only if exactly one row changed; its audit rows commit with it or not at all.
  Under PostgreSQL READ COMMITTED the second of two racing updates re-checks the WHERE
  against the committed row, so exactly one process wins (rule 6). Under SQLite writers are
  serialised by the database lock.
* Records are stored sealed (:class:`~keyseed.crypto.atrest.AtRestKey`, the device ID as
  associated data). A row whose seal does not open, or whose plain columns disagree with the
  sealed record, raises :class:`~keyseed.storage.repository.StorageError`.
* SQLite runs every connection with WAL, ``secure_delete`` (freed pages are zeroed, so old
  sealed keys do not linger), foreign keys, ``synchronous=FULL`` (a commit survives power
  loss before the reply that depends on it leaves) and a busy timeout; the file is 0600.
* The schema is upgraded to the newest revision by :func:`open_store`, through Alembic, with
  no ``alembic.ini``: the configuration is built here and points into the installed package.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ..crypto import DecryptError
from ..crypto.atrest import AtRestKey
from ..protocol.errors import MalformedMessage
from ..protocol.events import AuditEntry, StoreRecord
from ..protocol.records import DeviceRecord
from .pairstore import SqlPairStore
from .repository import AuditRow, StorageError
from .schema import audit as audit_table
from .schema import devices
from .sqlite_runner import SqliteRunner
from .tx import DriverTx, PgTx, SaTx, StatementCache, Steps, arun, run

T = TypeVar("T")

__all__ = ["MIGRATIONS", "SqlStore", "alembic_config", "head_revision", "migrate", "open_store"]

#: Where the Alembic environment and revisions live inside the installed package.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Milliseconds a SQLite connection waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000

#: Every SQLite connection's settings (see the module docstring).
SQLITE_PRAGMAS = (
    "journal_mode=WAL",
    "secure_delete=ON",
    "foreign_keys=ON",
    "synchronous=FULL",
    f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
)

#: Records opened from their sealed bytes, kept by those bytes (a fresh nonce per write makes
#: them unique): a connection reloading the row it just wrote skips the unseal and the
#: strict decode. Bounded, so it costs at most a few MB whatever the fleet.
RECORD_CACHE = 256

#: The plain columns of ``devices`` that repeat a field of the record of the same name (the
#: row also holds its key, ``updated_at`` and ``state``, the sealed record).
_RECORD_COLUMNS = ("version", "conn_gen", "epoch", "suite", "revoked", "confirmed", "order_epoch")
#: Those of them SQLite hands back as 0/1.
_BOOL_COLUMNS = frozenset({"revoked", "confirmed"})

#: asyncpg connections per process for the hot path (PostgreSQL).
PG_POOL = 8

#: Key of the PostgreSQL advisory lock held while migrating ("keyseed" in ASCII).
_MIGRATION_LOCK = 0x6B6579736565_64

#: Execution option: begin the transaction as a writer (SQLite ``BEGIN IMMEDIATE``).
_IMMEDIATE = "keyseed_begin_immediate"

#: Held while this process runs an Alembic upgrade (see _upgrade).
_MIGRATING = threading.Lock()

_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# The database clock in seconds since the epoch. SQLite 3.40 has no unixepoch('subsec'), so
# the Julian day is converted (millisecond resolution); PostgreSQL's clock_timestamp() is the
# real time even inside a long transaction, unlike now().
_NOW_SQL = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "CAST(extract(epoch from clock_timestamp()) AS DOUBLE PRECISION)",
}


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration, built in code (no ``alembic.ini``, any working directory).

    Args:
        connection: the connection ``env.py`` migrates, inside the caller's transaction.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest schema revision this package knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def migrate(connection: Connection) -> None:
    """Upgrade the schema to the newest revision (``alembic upgrade head``), idempotently.

    Runs inside the caller's transaction; on PostgreSQL it first takes a transaction-scoped
    advisory lock, so processes starting together migrate one after the other.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), "head")


async def open_store(url: str, master_key: bytes, *, schema: str | None = None) -> SqlStore:
    """Connect, upgrade the schema to the newest revision, and return the store.

    Args:
        url: ``sqlite+aiosqlite:///path/to/keyseed.db`` (created 0600, its folder 0700 if
            missing) or ``postgresql+asyncpg://user@host/db``.
        master_key: 32 bytes; every record is sealed under a key derived from it.
        schema: PostgreSQL only: the schema to use (its ``search_path``); it must exist.

    Raises:
        ValueError: a master key of the wrong length, an unsupported URL, or a schema with
            SQLite. Database errors (unreachable, failed migration) propagate from SQLAlchemy.
    """
    seal = AtRestKey(master_key)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.get_driver_name() != "aiosqlite":
            raise ValueError("SQLite is used through aiosqlite: sqlite+aiosqlite:///path")
        if schema is not None:
            raise ValueError("a schema applies to PostgreSQL only")
        if parsed.database in (None, "", ":memory:"):
            # One shared in-memory database; the schema and data live as long as the store.
            options["poolclass"] = StaticPool
        else:
            _create_private_file(Path(parsed.database))
    elif backend == "postgresql":
        if parsed.get_driver_name() != "asyncpg":
            raise ValueError("PostgreSQL is used through asyncpg: postgresql+asyncpg://...")
        # A connection PostgreSQL dropped (restart, pg_terminate_backend) is replaced when
        # it is next checked out, instead of failing the admin request that drew it.
        options["pool_pre_ping"] = True
        if schema is not None:
            if not _SCHEMA_RE.fullmatch(schema):
                raise ValueError("schema must be a plain identifier")
            options["connect_args"] = {"server_settings": {"search_path": schema}}
    else:
        raise ValueError("keyseed stores its state in SQLite or PostgreSQL")

    engine = create_async_engine(parsed, **options)
    if backend == "sqlite":
        _configure_sqlite(engine)
    runner = pg = None
    try:
        await _upgrade(engine)
        if backend == "sqlite" and "poolclass" not in options:
            runner = await asyncio.to_thread(SqliteRunner, str(parsed.database), SQLITE_PRAGMAS)
        elif backend == "postgresql":
            pg = await asyncpg.create_pool(
                parsed.set(drivername="postgresql").render_as_string(hide_password=False),
                min_size=1,
                max_size=PG_POOL,
                server_settings={} if schema is None else {"search_path": schema},
            )
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine, seal, schema=schema, runner=runner, pg=pg)


async def _upgrade(engine: AsyncEngine) -> None:
    # Alembic keeps its running migration in module globals (alembic.context, alembic.op):
    # two upgrades interleaved on one event loop, or run by two threads, would corrupt each
    # other. Only one runs per process; the advisory lock orders processes (PostgreSQL) and
    # the database lock does on SQLite. Polling keeps the event loop free while waiting.
    while not _MIGRATING.acquire(blocking=False):
        await asyncio.sleep(0.01)
    try:
        async with _writer(engine).begin() as conn:
            await conn.run_sync(migrate)
    finally:
        _MIGRATING.release()


def _create_private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (its -wal and -shm files copy the
    database file's mode), and tighten an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
    else:
        os.close(fd)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below), so a read-only load is one transaction too;
        # the driver's own transaction control would leave SELECTs outside any transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(f"PRAGMA {pragma}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock at BEGIN, waiting up to the busy timeout; a deferred
        # transaction that read first could not upgrade its stale snapshot and would fail.
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _writer(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, for transactions that write (``BEGIN IMMEDIATE`` on SQLite)."""
    return engine.execution_options(**{_IMMEDIATE: True})


class SqlStore(SqlPairStore):
    """Device records and the audit log in SQL. Build it with :func:`open_store`."""

    def __init__(
        self,
        engine: AsyncEngine,
        seal: AtRestKey,
        *,
        schema: str | None = None,
        runner: SqliteRunner | None = None,
        pg: asyncpg.Pool | None = None,
    ) -> None:
        # The engine (pool) every transaction runs on; its URL never appears in errors here.
        self._engine = engine
        # The PostgreSQL schema in use (None: the connection's default search_path).
        self._schema = schema
        # The same pool for writing transactions (they take SQLite's write lock at BEGIN).
        self._writer = _writer(engine)
        # Seals and opens records under the master key.
        self._seal = seal
        # The database clock as a SQL expression of this dialect.
        self._now = sa.literal_column(_NOW_SQL[engine.dialect.name], sa.Double)
        # The statements of the hot path, built once (their compiled form is cached by
        # SQLAlchemy; building them anew on every call cost more than running them).
        self._q_load = sa.select(devices, self._now.label("db_now")).where(
            devices.c.device_id == sa.bindparam("k_device_id")
        )
        self._q_now = sa.select(self._now)
        self._q_update = (
            sa.update(devices)
            .where(devices.c.device_id == sa.bindparam("k_device_id"))
            .where(devices.c.version == sa.bindparam("k_expected"))
            .values({name: sa.bindparam(f"v_{name}") for name in (*_RECORD_COLUMNS, "state")})
            .values(updated_at=self._now)
        )
        # inline(): no RETURNING of the new ids (nothing reads them).
        self._q_audit = sa.insert(audit_table).values(at=self._now).inline()
        # SQLite file: the hot-path transactions run on this (one hop each, group commit).
        self._runner = runner
        # PostgreSQL: the hot-path transactions run on asyncpg connections of this pool.
        self._pg = pg
        # The hot statements compiled for the drivers.
        self._statements = StatementCache(engine.dialect)
        # Sealed row bytes -> the record they open to (see RECORD_CACHE).
        self._opened: OrderedDict[bytes, DeviceRecord] = OrderedDict()

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for code that needs the database beyond this interface."""
        return self._engine

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema this store lives in (None: the default search_path); server
        processes sharing it share its notification channels (:mod:`keyseed.storage.notify`)."""
        return self._schema

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def __repr__(self) -> str:
        return f"SqlStore({self.dialect})"

    # -- reads ------------------------------------------------------------------------------

    async def db_now(self) -> float:
        """The database clock, in seconds since the epoch."""
        async with self._engine.connect() as conn:
            return float((await conn.execute(sa.select(self._now))).scalar_one())

    async def load(self, device_id: str) -> tuple[DeviceRecord | None, float]:
        """The device's record (None: not registered) and the database time, read in one
        transaction.

        Raises:
            StorageError: the stored row cannot be trusted (see :class:`StorageError`).
        """
        params = {"k_device_id": device_id}

        def body() -> Steps[tuple[Any, float]]:
            row = yield ("first", self._q_load, params)
            if row is None:
                return None, float((yield ("scalar", self._q_now)))
            return row, float(row["db_now"])

        row, now = await self._read(body)
        return (None if row is None else self._open_row(row)), now

    async def list_devices(self) -> list[DeviceRecord]:
        """Every device's record, by device ID.

        Raises:
            StorageError: a stored row cannot be trusted.
        """
        async with self._engine.begin() as conn:
            rows = (await conn.execute(sa.select(devices).order_by(devices.c.device_id))).all()
        return [self._open_row(r._mapping) for r in rows]

    async def audit(
        self, *, device_id: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditRow]:
        """Audit rows, newest first: at most ``limit``, all of ``device_id`` if given, and
        only those older than ``before_id`` (the last id of the previous page) if given.

        Raises:
            ValueError: ``limit`` below 1.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = sa.select(audit_table).order_by(audit_table.c.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(audit_table.c.device_id == device_id)
        if before_id is not None:
            query = query.where(audit_table.c.id < before_id)
        async with self._engine.begin() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AuditRow(
                id=int(r.id),
                at=float(r.at),
                kind=r.kind,
                device_id=r.device_id,
                epoch=int(r.epoch),
                cause=None if r.cause is None else int(r.cause),
                detail=r.detail,
            )
            for r in rows
        ]

    # -- writes -----------------------------------------------------------------------------

    async def cas(self, event: StoreRecord) -> bool:
        """Compare-and-set ``event.record`` where the stored version is
        ``event.expected_version``, with ``event.audit`` in the same transaction.

        Returns:
            True if exactly this write happened; False (nothing written) if the row changed
            or does not exist.

        Raises:
            ValueError: the record does not bump the version past ``expected_version`` (a
                write that kept the version would let a second writer win too).
        """
        return await self.put(event.record, event.expected_version, event.audit)

    async def put(
        self, record: DeviceRecord, expected_version: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """An admin change as a compare-and-set (same rule as :meth:`cas`)."""
        if record.version <= expected_version:
            raise ValueError("a stored change must bump the record's version")
        sealed = self._seal.seal(record.device_id, record.encode())
        params = {f"v_{k}": v for k, v in self._columns(record, sealed).items()}
        params["k_device_id"] = record.device_id
        params["k_expected"] = expected_version

        def body() -> Steps[bool]:
            if (yield ("changed", self._q_update, params)) != 1:
                return False  # nothing was written
            yield from self._insert_audit(audit)
            return True

        if not await self._write(body):
            return False
        self._remember(sealed, record)
        return True

    async def insert(self, record: DeviceRecord, audit: Sequence[AuditEntry] = ()) -> bool:
        """Insert a new device's record; False (nothing written) if the device ID exists."""
        sealed = self._seal.seal(record.device_id, record.encode())
        stmt = sa.insert(devices).values(
            device_id=record.device_id, updated_at=self._now, **self._columns(record, sealed)
        )

        def body() -> Steps[bool]:
            if not (yield ("insert_new", stmt)):
                return False
            yield from self._insert_audit(audit)
            return True

        return await self._write(body)

    async def add_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Audit rows that change no record, in one transaction."""
        if entries:
            await self._write(lambda: self._insert_audit(entries))

    def group_commits(self) -> tuple[int, int] | None:
        """SQLite: the hot path's COMMITs so far and the writes they carried (see
        :class:`SqliteRunner`); None on other databases."""
        if self._runner is None:
            return None
        return self._runner.commits, self._runner.writes

    async def close(self) -> None:
        """Close every pooled connection. The store is unusable afterwards."""
        if self._runner is not None:
            await self._runner.close()
        if self._pg is not None:
            await self._pg.close()
        await self._engine.dispose()

    # -- transactions -----------------------------------------------------------------------

    async def _read(self, body: Callable[[], Steps[T]]) -> T:
        """``body`` in one read transaction."""
        return await self._run(body, write=False)

    async def _write(self, body: Callable[[], Steps[T]]) -> T:
        """``body`` in one write transaction, committed before this returns."""
        return await self._run(body, write=True)

    async def _run(self, body: Callable[[], Steps[T]], *, write: bool) -> T:
        cache = self._statements
        if self._runner is not None:
            job = self._runner.write if write else self._runner.read
            return await job(lambda db: run(body(), DriverTx(db, cache)))
        if self._pg is not None:
            async with self._pg.acquire() as conn, conn.transaction():
                return await arun(body(), PgTx(conn, cache))
        async with (self._writer if write else self._engine).begin() as conn:
            return await conn.run_sync(lambda c: run(body(), SaTx(c)))

    # -- rows -------------------------------------------------------------------------------

    def _columns(self, record: DeviceRecord, sealed: bytes) -> dict[str, Any]:
        """The columns of ``record``'s row, other than its key: all from the same record
        (``sealed`` is its sealed encoding)."""
        columns = {name: getattr(record, name) for name in _RECORD_COLUMNS}
        columns["state"] = sealed
        return columns

    def _open_row(self, row: Any) -> DeviceRecord:
        """Open a row's sealed record and check its plain columns agree with it."""
        device_id = row["device_id"]
        sealed = bytes(row["state"])
        record = self._opened.get(sealed)
        if record is None:
            try:
                record = DeviceRecord.decode(self._seal.open(device_id, sealed))
            except (DecryptError, MalformedMessage, ValueError) as exc:
                raise StorageError(f"stored record of {device_id} does not open") from exc
            self._remember(sealed, record)
        else:
            self._opened.move_to_end(sealed)
        plain = tuple(
            bool(row[name]) if name in _BOOL_COLUMNS else row[name] for name in _RECORD_COLUMNS
        )
        inside = tuple(getattr(record, name) for name in _RECORD_COLUMNS)
        if record.device_id != device_id or plain != inside:
            raise StorageError(f"stored columns of {device_id} disagree with its record")
        return record

    def _remember(self, sealed: bytes, record: DeviceRecord) -> None:
        self._opened[sealed] = record
        if len(self._opened) > RECORD_CACHE:
            self._opened.popitem(last=False)

    def _insert_audit(self, entries: Sequence[AuditEntry]) -> Steps[None]:
        if not entries:
            return
        yield (
            "many",
            self._q_audit,
            [
                {
                    "kind": e.kind,
                    "device_id": e.device_id,
                    "epoch": e.epoch,
                    "cause": None if e.cause is None else int(e.cause),
                    "detail": e.detail,
                }
                for e in entries
            ],
        )
