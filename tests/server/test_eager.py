"""keyseed.server.eager.start_eagerly: a coroutine runs in the caller until it first waits;
None if it finished there, else a task that continues it from where it stopped (sends,
throws and cancellation all reach the coroutine)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from keyseed.server.eager import start_eagerly


def tasks_now() -> set[asyncio.Task[Any]]:
    return set(asyncio.all_tasks())


async def test_no_wait_finishes_inside_the_call_and_makes_no_task() -> None:
    log: list[str] = []

    lock = asyncio.Lock()

    async def work() -> None:
        log.append("ran")
        async with lock:  # uncontended: acquiring it does not wait
            log.append("locked")
        log.append("done")

    before = tasks_now()
    assert start_eagerly(work()) is None
    assert log == ["ran", "locked", "done"]  # before any turn of the event loop
    assert tasks_now() == before


async def test_no_wait_through_nested_awaits_of_finished_coroutines() -> None:
    """Awaiting a coroutine that itself never waits is not a wait."""
    log: list[int] = []

    async def inner(n: int) -> int:
        log.append(n)
        return n * 2

    async def work() -> None:
        log.append(await inner(1) + await inner(2))

    assert start_eagerly(work()) is None
    assert log == [1, 2, 6]


async def test_wait_returns_a_task_that_finishes_the_rest() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    log: list[str] = []

    async def work() -> None:
        log.append("before")
        await fut
        log.append("after")

    before = tasks_now()
    task = start_eagerly(work())
    assert isinstance(task, asyncio.Task)
    assert task in tasks_now() - before
    assert log == ["before"]  # the part before the wait ran inside the call
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert log == ["before"] and not task.done()  # still waiting on the future
    fut.set_result(None)
    await asyncio.wait_for(task, 10)
    assert log == ["before", "after"]
    assert task.done() and not task.cancelled() and task.exception() is None


async def test_future_result_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()
    second: asyncio.Future[bytes] = loop.create_future()
    got: list[object] = []

    async def work() -> None:
        got.append(await first)
        got.append(await second)

    task = start_eagerly(work())
    assert task is not None
    first.set_result(42)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert got == [42]
    second.set_result(b"seed")
    await asyncio.wait_for(task, 10)
    assert got == [42, b"seed"]


async def test_exception_before_the_first_wait_propagates_to_the_caller() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        raise ValueError("early")
        await fut  # never reached

    before = tasks_now()
    with pytest.raises(ValueError, match="early"):
        start_eagerly(work())
    assert tasks_now() == before


async def test_exception_after_the_wait_surfaces_from_the_task() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        await fut
        raise KeyError("late")

    task = start_eagerly(work())  # nothing raised here
    assert task is not None
    fut.set_result(None)
    with pytest.raises(KeyError, match="late"):
        await asyncio.wait_for(task, 10)
    assert isinstance(task.exception(), KeyError)


async def test_exception_set_on_the_awaited_future_is_raised_in_the_coroutine() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    log: list[str] = []

    async def work() -> None:
        try:
            await fut
        except OSError as exc:
            log.append(f"caught {exc}")
        log.append("continued")

    task = start_eagerly(work())
    assert task is not None
    fut.set_exception(OSError("db down"))
    await asyncio.wait_for(task, 10)
    assert log == ["caught db down", "continued"]
    assert task.exception() is None


def cancellable(fut: asyncio.Future[None], log: list[str]) -> Coroutine[Any, Any, None]:
    async def work() -> None:
        try:
            log.append("start")
            await fut
            log.append("resumed")  # must not happen
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    return work()


async def test_cancel_of_a_waiting_task_reaches_the_coroutine() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    task = start_eagerly(cancellable(fut, log))
    assert task is not None
    await asyncio.sleep(0)  # the task has taken over the wait
    assert log == ["start"] and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    assert log == ["start", "cancelled", "finally"]
    assert fut.cancelled()  # the wait itself was cancelled, as in any task


async def test_cancel_right_after_the_call_reaches_the_coroutine() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    coro = cancellable(fut, log)  # kept referenced: garbage collection would close it
    task = start_eagerly(coro)
    assert task is not None
    task.cancel()  # before the loop ever ran the task
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    assert log == ["start", "cancelled", "finally"]
    assert fut.cancelled()


async def test_coroutine_that_swallows_cancel_finishes_normally() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    log: list[str] = []

    async def work() -> None:
        try:
            await fut
        except asyncio.CancelledError:
            log.append("cancel swallowed")
        log.append("cleanup")

    task = start_eagerly(work())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(task, 10)
    assert log == ["cancel swallowed", "cleanup"]
    assert not task.cancelled()


async def test_bare_yields_complete_through_the_task() -> None:
    log: list[int] = []

    async def work() -> None:
        for i in range(5):
            log.append(i)
            await asyncio.sleep(0)
        log.append(99)

    task = start_eagerly(work())
    assert task is not None
    assert log == [0]  # ran to its first bare yield in the call
    await asyncio.wait_for(task, 10)
    assert log == [0, 1, 2, 3, 4, 99]


async def test_real_sleeps_and_nested_tasks_complete_through_the_task() -> None:
    log: list[str] = []

    async def child() -> str:
        await asyncio.sleep(0.01)
        return "child"

    async def work() -> None:
        await asyncio.sleep(0.01)
        log.append(await asyncio.create_task(child()))
        log.append(await asyncio.wait_for(child(), 10))

    task = start_eagerly(work())
    assert task is not None
    await asyncio.wait_for(task, 10)
    assert log == ["child", "child"]


async def test_exception_thrown_into_the_waiting_coroutine_can_be_caught() -> None:
    """The task forwards what is thrown into it (here by the awaited future failing from
    another task) to the coroutine, which catches it and goes on waiting."""
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()
    log: list[str] = []

    async def work() -> None:
        try:
            await first
        except RuntimeError as exc:
            log.append(f"caught {exc}")
        log.append(await second)

    task = start_eagerly(work())
    assert task is not None
    first.set_exception(RuntimeError("boom"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert log == ["caught boom"] and not task.done()
    second.set_result("went on")
    await asyncio.wait_for(task, 10)
    assert log == ["caught boom", "went on"]


async def test_many_eager_starts_in_one_callback_keep_order() -> None:
    """What the wire does: several starts from one synchronous callback; those that finish
    eagerly run in call order, those that wait finish later."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    log: list[str] = []

    async def quick(n: int) -> None:
        log.append(f"q{n}")

    async def slow(n: int) -> None:
        log.append(f"s{n}-start")
        await gate
        log.append(f"s{n}-end")

    results: list[asyncio.Task[None] | None] = []

    def callback() -> None:
        results.extend([start_eagerly(quick(1)), start_eagerly(slow(2)), start_eagerly(quick(3))])

    done = asyncio.Event()
    loop.call_soon(lambda: (callback(), done.set()))
    await asyncio.wait_for(done.wait(), 10)
    assert log == ["q1", "s2-start", "q3"]
    assert results[0] is None and results[2] is None
    task = results[1]
    assert isinstance(task, asyncio.Task)
    gate.set_result(None)
    await asyncio.wait_for(task, 10)
    assert log == ["q1", "s2-start", "q3", "s2-end"]
