"""keyseed.server.eager
~~~~~~~~~~~~~~~~~~~~~~~

Start a coroutine in the caller and make a task of it only if it has to wait: what Python
3.12's ``asyncio.eager_task_factory`` does, for one call site. A device frame that needs no
database (an application message, most of the handshake) is then handled inside the
transport's ``data_received`` callback, without creating a task and without waiting for the
next turn of the event loop; a frame that does wait continues in a task from where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator
from typing import Any

log = logging.getLogger("keyseed.server")


class _Continue:
    """Awaiting this resumes ``coro``, which last yielded ``waited`` to its caller: the task
    that awaits it takes over exactly where the eager start stopped (sends, throws and
    cancellation all reach ``coro``)."""

    __slots__ = ("_coro", "_started", "_waited")

    def __init__(self, coro: Coroutine[Any, Any, None], waited: Any) -> None:
        self._coro = coro
        self._waited = waited
        self._started = False

    def __await__(self) -> Generator[Any, Any, None]:
        self._started = True
        coro, waited = self._coro, self._waited
        self._waited = None
        while True:
            try:
                sent = yield waited
            except BaseException as exc:  # forwarded, as ``yield from`` does
                try:
                    waited = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waited = coro.send(sent)
            except StopIteration:
                return

    def abandoned(self, task: asyncio.Task[None]) -> None:
        """The task ended before its first step (cancelled at once): ``coro`` is still
        suspended where the eager start left it. Cancel what it waits for and let it see the
        cancellation, as a task that had taken over would have."""
        if self._started:
            return
        self._started = True
        waited, self._waited = self._waited, None
        if isinstance(waited, asyncio.Future):
            waited.cancel()
        try:
            self._coro.throw(asyncio.CancelledError())
        except (StopIteration, asyncio.CancelledError):
            return
        except Exception:
            log.exception("eagerly started coroutine failed while cancelled")
            return
        self._coro.close()  # it swallowed the cancellation and waits again: nobody will resume it


async def _finish(cont: _Continue) -> None:
    await cont


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits; None if it finished, else the task that finishes
    it. What it raises before waiting propagates to the caller."""
    try:
        waited = coro.send(None)
    except StopIteration:
        return None
    cont = _Continue(coro, waited)
    task = asyncio.get_running_loop().create_task(_finish(cont))
    task.add_done_callback(cont.abandoned)
    return task


__all__ = ["start_eagerly"]
