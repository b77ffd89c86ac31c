"""The SQLite runner: one transaction per hop, group commit, a failing writer alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from keyseed.storage.sql import SQLITE_PRAGMAS
from keyseed.storage.sqlite_runner import SqliteRunner


@pytest.fixture
async def runner(tmp_path: Path) -> SqliteRunner:
    path = tmp_path / "r.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    db.commit()
    db.close()
    r = SqliteRunner(str(path), SQLITE_PRAGMAS)
    yield r  # type: ignore[misc]
    await r.close()


def _insert(k: str, v: int):  # type: ignore[no-untyped-def]
    def fn(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO t VALUES (?, ?)", (k, v))
        return k

    return fn


async def _rows(r: SqliteRunner) -> dict[str, int]:
    return await r.read(lambda db: dict(db.execute("SELECT k, v FROM t").fetchall()))


async def _blocked_first(r: SqliteRunner) -> tuple[asyncio.Future[None], threading.Event]:
    """A writer that holds the runner's thread until released, so that the writers queued
    meanwhile form one group."""
    release = threading.Event()
    entered = threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)

    fut = asyncio.ensure_future(r.write(hold))
    await asyncio.to_thread(entered.wait, 10)
    return fut, release


async def test_waiting_writers_commit_together(runner: SqliteRunner) -> None:
    first, release = await _blocked_first(runner)
    writes = [asyncio.ensure_future(runner.write(_insert(f"k{i}", i))) for i in range(10)]
    await asyncio.sleep(0.05)  # every write is queued behind the held one
    release.set()
    await first
    assert await asyncio.gather(*writes) == [f"k{i}" for i in range(10)]
    assert runner.commits == 2  # the held writer alone, then the ten as one group
    assert runner.writes == 11
    assert await _rows(runner) == {f"k{i}": i for i in range(10)}


async def test_a_failing_writer_rolls_back_alone(runner: SqliteRunner) -> None:
    await runner.write(_insert("dup", 1))
    first, release = await _blocked_first(runner)
    ok1 = asyncio.ensure_future(runner.write(_insert("a", 1)))
    bad = asyncio.ensure_future(runner.write(_insert("dup", 2)))  # primary key taken
    ok2 = asyncio.ensure_future(runner.write(_insert("b", 2)))
    await asyncio.sleep(0.05)
    release.set()
    await first
    assert await ok1 == "a"
    assert await ok2 == "b"
    with pytest.raises(sqlite3.IntegrityError):
        await bad
    assert await _rows(runner) == {"dup": 1, "a": 1, "b": 2}


async def test_a_lone_failing_writer_leaves_nothing(runner: SqliteRunner) -> None:
    def half(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES ('x', 1)")
        raise RuntimeError("after the first statement")

    with pytest.raises(RuntimeError, match="after the first statement"):
        await runner.write(half)
    assert await _rows(runner) == {}
    assert runner.commits == 0


async def test_reads_see_committed_writes_and_errors_propagate(runner: SqliteRunner) -> None:
    await runner.write(_insert("k", 7))
    assert await runner.read(lambda db: db.execute("SELECT v FROM t").fetchone()[0]) == 7
    with pytest.raises(sqlite3.OperationalError):
        await runner.read(lambda db: db.execute("SELECT nope FROM t").fetchone())
    # The failed read left no transaction open: writes go on.
    await runner.write(_insert("k2", 8))
    assert await _rows(runner) == {"k": 7, "k2": 8}


async def test_closed_runner_refuses(tmp_path: Path) -> None:
    r = SqliteRunner(str(tmp_path / "c.db"), SQLITE_PRAGMAS)
    await r.close()
    with pytest.raises(RuntimeError, match="closed"):
        await r.read(lambda db: 1)
