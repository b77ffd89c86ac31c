"""Fixtures: every storage test runs against SQLite (a file in tmp_path) and PostgreSQL.

PostgreSQL comes from ``KEYSEED_TEST_PG``; each test module gets a fresh schema, dropped
afterwards, and each test starts from empty tables. An unreachable PostgreSQL skips its cases
locally and fails them when ``CI`` is set (CI must run PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from keyseed.storage.sql import SqlStore, open_store

PG_URL = os.environ.get("KEYSEED_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
MASTER_KEY = bytes(range(32))

T = TypeVar("T")


def run_in_thread(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on its own loop in another thread, so module-scoped
    set-up does not touch the event loop of the test being set up."""

    async def main() -> T:
        return await fn()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def pg_execute(sql: str) -> None:
    engine = create_async_engine(PG_URL, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    name = f"ks_{secrets.token_hex(6)}"
    try:
        run_in_thread(lambda: pg_execute(f'CREATE SCHEMA "{name}"'))
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL unreachable ({type(exc).__name__}); set KEYSEED_TEST_PG")
    yield name
    run_in_thread(lambda: pg_execute(f'DROP SCHEMA "{name}" CASCADE'))


@dataclass
class Backend:
    """How to open (and reopen) the store of one test."""

    name: str
    url: str
    schema: str | None = None
    path: Path | None = None

    async def open(self, master_key: bytes = MASTER_KEY) -> SqlStore:
        return await open_store(self.url, master_key, schema=self.schema)


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "data" / "keyseed.db"
        return Backend("sqlite", f"sqlite+aiosqlite:///{path}", path=path)
    schema = request.getfixturevalue("pg_schema")
    b = Backend("postgresql", PG_URL, schema=schema)
    # The schema lives for the module: every test starts from empty tables.
    s = await b.open()
    try:
        async with s.engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM devices"))
            await conn.execute(sa.text("DELETE FROM audit"))
    finally:
        await s.close()
    return b


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[SqlStore]:
    s = await backend.open()
    yield s
    await s.close()
