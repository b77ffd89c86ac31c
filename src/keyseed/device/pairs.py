"""keyseed.device.pairs
~~~~~~~~~~~~~~~~~~~~~~

:class:`PairEndpoint`: a device's pair keys (docs/protocol.md, "Pair keys") for any driver of
:class:`~keyseed.protocol.device.DeviceProtocol` (the agent, the simulator, tests).

The pairs outlive connections: :class:`~keyseed.protocol.pair.DevicePairs` keeps the keys
of each pair in memory, and what it wants sent waits here until a connection is open. The
driver calls, on its usual loop:

* :meth:`PairEndpoint.on_open` once a connection is authenticated (a 506 names the pairs
  held, so that owed 502s arrive and pairs closed meanwhile are dropped);
* :meth:`PairEndpoint.on_event` with every event of the core (pair messages are taken,
  the rest ignored);
* :meth:`PairEndpoint.flush` after that, to hand the pair messages to the core.

Pair keys are not written to the keystore: a device that restarts starts a new chain (its
next 501 names no pair ID), which costs one exchange and loses nothing a pair needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from ..protocol.device import DeviceProtocol
from ..protocol.errors import KeyseedError
from ..protocol.events import Event
from ..protocol.messages import Message
from ..protocol.pair import (
    E2E,
    PAIR_MAX_RECORDS,
    PAIR_RENEW_AT,
    DevicePairs,
    PairClosed,
    PairDataReceived,
    PairEstablished,
    PairMessageReceived,
    PairRejected,
)
from ..protocol.states import DeviceState

log = logging.getLogger("keyseed.device.pairs")

#: Pair messages kept while no connection is open (the oldest go first).
OUTBOX = 256


class PairEndpoint:
    """A device's pairs across its connections.

    Args:
        device_id: this device.
        on_event: called with every pair event (established, data, closed, rejected).
        renew_at: frames after which a pair asks for its next epoch by itself.
        max_records: frames per pair key and direction.
    """

    def __init__(
        self,
        device_id: str,
        on_event: Callable[[Event], None] | None = None,
        *,
        renew_at: int = PAIR_RENEW_AT,
        max_records: int = PAIR_MAX_RECORDS,
    ) -> None:
        #: The sans-I/O pair logic.
        self.core = DevicePairs(device_id, renew_at=renew_at, max_records=max_records)
        # Where pair events go, besides ``events``.
        self._on_event = on_event
        #: Every pair event so far (tests and status read it).
        self.events: list[Event] = []
        # Pair messages waiting for an open connection.
        self._pending: deque[Message] = deque(maxlen=OUTBOX)
        #: Set whenever a pair event arrives.
        self.changed = asyncio.Event()
        #: Called when messages wait for the connection (the agent wakes its loop).
        self.wake: Callable[[], None] | None = None

    # -- the application's side -------------------------------------------------------------

    def request(self, peer: str, mode: str = E2E) -> None:
        """Ask the server for a pair key with ``peer`` (501); see :meth:`DevicePairs.request`."""
        self.core.request(peer, mode)
        self._take()

    def send(self, peer: str, data: bytes) -> None:
        """Send ``data`` to ``peer`` under the pair key (504), through the server."""
        self.core.send(peer, data)
        self._take()

    def established(self, peer: str) -> bool:
        return self.core.pair_of(peer) is not None

    # -- the driver's side ----------------------------------------------------------------

    def on_open(self) -> None:
        """A connection is authenticated: name the pairs held (506)."""
        self.core.sync()
        self._take()

    def on_event(self, ev: Event) -> bool:
        """An event of the core; returns whether it was a pair message."""
        if not isinstance(ev, PairMessageReceived):
            return False
        self.core.receive(ev.message)
        self._take()
        for pev in self.core.events_received():
            self._log(pev)
            self.events.append(pev)
            if self._on_event is not None:
                try:
                    self._on_event(pev)
                except Exception:
                    log.exception("pair event handler failed")
        self.changed.set()
        return True

    def flush(self, proto: DeviceProtocol | None, now: float) -> bool:
        """Hand waiting pair messages to ``proto`` if its connection is open. Returns whether
        it did (the core then has output)."""
        if proto is None or proto.state is not DeviceState.OPEN:
            return False
        did = False
        while self._pending:
            try:
                proto.send_pair(self._pending[0], now)
            except KeyseedError as exc:
                log.info("pair message held: %s", type(exc).__name__)
                break
            self._pending.popleft()
            did = True
        return did

    @property
    def waiting(self) -> int:
        """Pair messages waiting for a connection."""
        return len(self._pending)

    def _take(self) -> None:
        out = self.core.messages_to_send()
        self._pending.extend(out)
        if out and self.wake is not None:
            self.wake()

    @staticmethod
    def _log(ev: Event) -> None:
        if isinstance(ev, PairEstablished):
            log.info(
                "pair established peer=%s epoch=%d mode=%s role=%s",
                ev.peer,
                ev.epoch,
                ev.mode,
                ev.role.value,
            )
        elif isinstance(ev, PairDataReceived):
            log.info("< 504 peer=%s epoch=%d seq=%d", ev.peer, ev.epoch, ev.seq)
        elif isinstance(ev, PairClosed):
            log.info("< 505 peer=%s %s", ev.peer or "-", ev.cause.name)
        elif isinstance(ev, PairRejected):
            log.info("pair message rejected peer=%s %s", ev.peer or "-", ev.code.name)


__all__ = ["OUTBOX", "PairEndpoint"]
