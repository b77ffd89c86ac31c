"""Fixtures: every storage test runs against SQLite (a file in tmp_path) and PostgreSQL.

PostgreSQL comes from ``KEYSEED_TEST_PG``; each test module gets a fresh schema, dropped
afterwards, and each test starts from empty tables. An unreachable PostgreSQL skips its cases
locally and fails them when ``CI`` is set (CI must run PostgreSQL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyseed.storage.sql import SqlStore, open_store
from pgtest import PG_URL, pg_execute, pg_schema  # noqa: F401 - for conftest.py, test_sql.py

MASTER_KEY = bytes(range(32))


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
