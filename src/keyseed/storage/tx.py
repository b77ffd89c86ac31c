"""keyseed.storage.tx
~~~~~~~~~~~~~~~~~~~

A transaction of :class:`~keyseed.storage.sql.SqlStore` is written once, sans I/O, as a
generator of *steps* (``("first", statement, params)``, ``("changed", ...)`` ...) that
receives each step's result; a carrier runs it:

* :class:`DriverTx`: the SQLite driver's connection on the
  :class:`~keyseed.storage.sqlite_runner.SqliteRunner` thread;
* :class:`PgTx`: an asyncpg connection (PostgreSQL);
* :class:`SaTx`: a SQLAlchemy :class:`~sqlalchemy.engine.Connection` (SQLite in memory).

The statements are SQLAlchemy Core everywhere. The drivers get them compiled once by
SQLAlchemy's dialect and run them without its per-call machinery, which cost more than the
databases themselves (about 2 ms of event-loop CPU per SQLite transaction through aiosqlite,
about 1.5 ms per PostgreSQL one through SQLAlchemy's asyncio layer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

import asyncpg
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable

__all__ = ["DriverTx", "PgTx", "SaTx", "StatementCache", "Steps", "Tx", "arun", "run"]

T = TypeVar("T")

#: A transaction body: yields steps, receives their results, returns its own.
Steps = Generator[tuple[Any, ...], Any, T]


def run(steps: Steps[T], tx: Tx) -> T:
    """Run a transaction body on a synchronous carrier."""
    try:
        step = next(steps)
        while True:
            method, *args = step
            step = steps.send(getattr(tx, method)(*args))
    except StopIteration as done:
        return cast(T, done.value)


async def arun(steps: Steps[T], tx: PgTx) -> T:
    """Run a transaction body on an asynchronous carrier."""
    try:
        step = next(steps)
        while True:
            method, *args = step
            step = steps.send(await getattr(tx, method)(*args))
    except StopIteration as done:
        return cast(T, done.value)


class Tx(Protocol):
    """One open transaction."""

    def first(self, stmt: Executable, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The first row of a query, by column name (None: no row)."""
        ...

    def scalar(self, stmt: Executable) -> Any:
        """The single value of a query."""
        ...

    def changed(self, stmt: Executable, params: Mapping[str, Any]) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    def many(self, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement once per row of parameters."""
        ...

    def insert_new(self, stmt: Executable) -> bool:
        """Run an INSERT; False, with nothing written, if it breaks a uniqueness constraint."""
        ...


class SaTx:
    """:class:`Tx` over a SQLAlchemy connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def first(self, stmt: Executable, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        row = self._conn.execute(stmt, dict(params)).first()
        return None if row is None else cast(Mapping[str, Any], row._mapping)

    def scalar(self, stmt: Executable) -> Any:
        return self._conn.execute(stmt).scalar_one()

    def changed(self, stmt: Executable, params: Mapping[str, Any]) -> int:
        return int(self._conn.execute(stmt, dict(params)).rowcount)

    def many(self, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        self._conn.execute(stmt, [dict(r) for r in rows])

    def insert_new(self, stmt: Executable) -> bool:
        try:
            # A failed statement aborts a PostgreSQL transaction: fence it in a savepoint.
            with self._conn.begin_nested():
                self._conn.execute(stmt)
        except IntegrityError:
            return False
        return True


class StatementCache:
    """Core statements compiled for the SQLite driver, kept by statement and parameter
    names (the statements are built once per store, so this stays small)."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, SQLCompiler]] = {}

    def get(self, stmt: Executable, names: tuple[str, ...]) -> SQLCompiler:
        key = (id(stmt), names)
        hit = self._compiled.get(key)
        if hit is not None and hit[0] is stmt:
            return hit[1]
        compiled = cast(
            SQLCompiler,
            cast(ClauseElement, stmt).compile(dialect=self._dialect, column_keys=list(names)),
        )
        if len(self._compiled) < 256:
            self._compiled[key] = (stmt, compiled)  # the statement is kept: ids stay unique
        return compiled

    def fresh(self, stmt: Executable) -> SQLCompiler:
        """Compile a statement used once (its values are part of it), without keeping it."""
        return cast(SQLCompiler, cast(ClauseElement, stmt).compile(dialect=self._dialect))


def _args(compiled: SQLCompiler, params: Mapping[str, Any]) -> list[Any]:
    values = compiled.construct_params(dict(params)) or {}
    return [values[name] for name in compiled.positiontup or ()]


class DriverTx:
    """:class:`Tx` over the SQLite driver's connection (inside the runner's transaction)."""

    def __init__(self, db: sqlite3.Connection, cache: StatementCache) -> None:
        self._db = db
        self._cache = cache

    def _run(self, stmt: Executable, params: Mapping[str, Any]) -> sqlite3.Cursor:
        compiled = self._cache.get(stmt, tuple(params))
        return self._db.execute(compiled.string, _args(compiled, params))

    def first(self, stmt: Executable, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        cur = self._run(stmt, params)
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip((d[0] for d in cur.description), row, strict=True))

    def scalar(self, stmt: Executable) -> Any:
        row = self._run(stmt, {}).fetchone()
        if row is None:
            raise LookupError("the query returned no row")
        return row[0]

    def changed(self, stmt: Executable, params: Mapping[str, Any]) -> int:
        return self._run(stmt, params).rowcount

    def many(self, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        compiled = self._cache.get(stmt, tuple(rows[0]))
        self._db.executemany(compiled.string, [_args(compiled, r) for r in rows])

    def insert_new(self, stmt: Executable) -> bool:
        compiled = self._cache.fresh(stmt)
        try:
            # SQLite undoes just the failed statement; the transaction goes on.
            self._db.execute(compiled.string, _args(compiled, {}))
        except sqlite3.IntegrityError:
            return False
        return True


class PgTx:
    """The steps over an asyncpg connection (inside its transaction)."""

    def __init__(self, conn: asyncpg.Connection, cache: StatementCache) -> None:
        self._conn = conn
        self._cache = cache

    def _sql(self, stmt: Executable, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        compiled = self._cache.get(stmt, tuple(params))
        return compiled.string, _args(compiled, params)

    async def first(self, stmt: Executable, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        sql, args = self._sql(stmt, params)
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else dict(row.items())

    async def scalar(self, stmt: Executable) -> Any:
        sql, args = self._sql(stmt, {})
        return await self._conn.fetchval(sql, *args)

    async def changed(self, stmt: Executable, params: Mapping[str, Any]) -> int:
        sql, args = self._sql(stmt, params)
        status = await self._conn.execute(sql, *args)  # "UPDATE 1"
        return int(status.rsplit(" ", 1)[-1])

    async def many(self, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        compiled = self._cache.get(stmt, tuple(rows[0]))
        await self._conn.executemany(compiled.string, [_args(compiled, r) for r in rows])

    async def insert_new(self, stmt: Executable) -> bool:
        compiled = self._cache.fresh(stmt)
        try:
            # A failed statement aborts a PostgreSQL transaction: fence it in a savepoint.
            async with self._conn.transaction():
                await self._conn.execute(compiled.string, *_args(compiled, {}))
        except asyncpg.UniqueViolationError:
            return False
        return True
