"""keyseed.storage.sqlite_runner
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

:class:`SqliteRunner`: the SQLite transactions of the hot path (a device's record loaded,
compared-and-set, inserted, audited) run on one thread that owns one connection of the
synchronous driver (the statements are still SQLAlchemy Core: :mod:`keyseed.storage.tx`).

Why not aiosqlite for these: it hops to its thread and back for every cursor call, and
SQLAlchemy's async layer adds a greenlet switch to each hop, so one small transaction cost
the event loop about 2 ms of CPU (``keyseed bench`` put the server at 10 ms per exchange,
nearly all of it there). Here a whole transaction is one hop, and the driver runs it.

Group commit: writers that queue up while a transaction runs are taken together, each in its
own savepoint (a failing one rolls back alone), and made durable by one ``COMMIT`` (one
fsync under ``synchronous=FULL``). No writer learns its outcome before that ``COMMIT``
returns, so nothing that depends on a write is sent before the write is durable.

The aiosqlite engine stays for everything else (migrations, listings, tests); both open the
same file in WAL mode, and SQLite's lock serialises their writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["MAX_BATCH", "SqliteRunner"]

T = TypeVar("T")

#: Most writers committed together.
MAX_BATCH = 64


@dataclass(eq=False)
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T] = field(repr=False)


def _settle(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the event loop: hand every job of a batch its outcome."""
    for fut, value, exc in results:
        if fut.done():  # the caller was cancelled; the transaction happened all the same
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class SqliteRunner:
    """One thread and one connection to a SQLite file; see the module docstring."""

    def __init__(self, path: str, pragmas: tuple[str, ...]) -> None:
        self._path = path
        self._pragmas = pragmas
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="keyseed-sqlite", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        #: Write transactions committed, and the writers they carried (their ratio is the
        #: mean group size).
        self.commits = 0
        self.writes = 0
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a read transaction; its result, or what it raised."""
        return await self._submit(fn, write=False)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction, in a savepoint of its own; its result once the
        transaction has committed, or what it (or the commit) raised."""
        return await self._submit(fn, write=True)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, write, loop, future))
        return await future

    async def close(self) -> None:
        """Finish the queued jobs, then close the connection and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    # -- the thread --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            # Autocommit at the driver: the BEGINs below are the only transaction control.
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            for pragma in self._pragmas:
                db.execute(f"PRAGMA {pragma}")
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        with contextlib.closing(db):
            job = self._jobs.get()
            while job is not None:
                if not job.write:
                    self._run_read(db, job)
                    job = self._jobs.get()
                    continue
                # Group commit: the writers already waiting join this transaction; the first
                # job that is not a writer (a read, or the stop) runs after it.
                batch: list[_Job[Any]] = [job]
                after: _Job[Any] | None = None
                have_after = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None or not more.write:
                        after, have_after = more, True
                        break
                    batch.append(more)
                self._run_writes(db, batch)
                job = after if have_after else self._jobs.get()

    @staticmethod
    def _run_read(db: sqlite3.Connection, job: _Job[Any]) -> None:
        value: Any = None
        exc: BaseException | None = None
        try:
            db.execute("BEGIN")
            try:
                value = job.fn(db)
            finally:
                db.execute("COMMIT")
        except Exception as e:
            exc = e
        _post(job.loop, [(job.future, value, exc)])

    def _run_writes(self, db: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            # A writer takes the write lock at BEGIN (waiting up to the busy timeout), so it
            # never fails to upgrade a stale snapshot.
            db.execute("BEGIN IMMEDIATE")
            try:
                if len(batch) == 1:
                    # Alone in its transaction: a failure rolls all of it back.
                    job = batch[0]
                    try:
                        results.append((job.future, job.fn(db), None))
                    except Exception as exc:
                        results.append((job.future, None, exc))
                        raise
                else:
                    for job in batch:
                        db.execute("SAVEPOINT job")
                        try:
                            value = job.fn(db)
                        except Exception as exc:
                            db.execute("ROLLBACK TO job")
                            results.append((job.future, None, exc))
                        else:
                            results.append((job.future, value, None))
                        db.execute("RELEASE job")
                db.execute("COMMIT")
                self.commits += 1
                self.writes += len(batch)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except Exception as exc:
            # The COMMIT (or BEGIN) failed, or a lone job did: nothing of it is durable.
            if not (len(results) == 1 and results[0][2] is exc):
                results = [(job.future, None, exc) for job in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, result in zip(batch, results, strict=True):
            by_loop.setdefault(job.loop, []).append(result)
        for loop, items in by_loop.items():
            _post(loop, items)


def _post(
    loop: asyncio.AbstractEventLoop,
    results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_settle, results)
