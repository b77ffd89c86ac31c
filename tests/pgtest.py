"""PostgreSQL for the tests that run on it: ``KEYSEED_TEST_PG`` (default: the local ``test``
database), and a fresh schema per test module, dropped afterwards. An unreachable PostgreSQL
skips its cases locally and fails them when ``CI`` is set (CI must run PostgreSQL).

A folder's conftest.py imports :func:`pg_schema` to offer it to its tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

PG_URL = os.environ.get("KEYSEED_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

T = TypeVar("T")


def run_in_thread(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on its own loop in another thread, so module-scoped
    set-up does not touch the event loop of the test being set up."""

    async def main() -> T:
        return await fn()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def pg_execute(sql: str) -> None:
    """Run one statement on ``PG_URL`` in a transaction of its own."""
    engine = create_async_engine(PG_URL, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


async def pg_admin(sql: str) -> None:
    """Run one statement on ``PG_URL`` outside any transaction (CREATE/DROP DATABASE)."""
    engine = create_async_engine(
        PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def pg_fresh_database() -> Iterator[str]:
    """A fresh database ``ks_db_<hex>`` next to ``PG_URL``'s, dropped afterwards; its URL.
    Unreachable: skip, or fail under CI."""
    name = f"ks_db_{secrets.token_hex(5)}"
    try:
        run_in_thread(lambda: pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, sa.exc.DBAPIError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL unreachable ({type(exc).__name__}); set KEYSEED_TEST_PG")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        run_in_thread(lambda: pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A fresh schema ``ks_<hex>`` for the module, dropped with everything in it afterwards."""
    name = f"ks_{secrets.token_hex(6)}"
    try:
        run_in_thread(lambda: pg_execute(f'CREATE SCHEMA "{name}"'))
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {type(exc).__name__}")
        pytest.skip(f"PostgreSQL unreachable ({type(exc).__name__}); set KEYSEED_TEST_PG")
    yield name
    run_in_thread(lambda: pg_execute(f'DROP SCHEMA "{name}" CASCADE'))
