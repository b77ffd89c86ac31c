"""keyseed.storage.repository
~~~~~~~~~~~~~~~~~~~~~~~~~~~~

The interface the server's drivers depend on. :class:`keyseed.storage.sql.SqlStore` implements
it on SQLite and PostgreSQL; tests may implement it in memory.

Every method is one transaction. Times are seconds of the *database* clock, read in that same
transaction, so durations that outlive a process (windows, S27, key age) mean the same thing in
every server process (DESIGN.md section 4, "Time").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..protocol.errors import ErrorCode, KeyseedError
from ..protocol.events import AuditEntry, StoreRecord
from ..protocol.pair import PairRecord
from ..protocol.records import DeviceRecord


class StorageError(KeyseedError):
    """A stored row cannot be trusted: its seal does not open (damaged, sealed under another
    master key, or moved from another device ID), or its plain columns disagree with the
    sealed record. The row is reported, never returned; the caller fails the step with
    ``INTERNAL`` and nothing is written. Database outages raise SQLAlchemy's own errors."""

    code = ErrorCode.INTERNAL


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRow:
    """One row of the audit log as stored."""

    id: int
    at: float
    kind: str
    device_id: str
    epoch: int
    cause: int | None
    detail: str


class Store(Protocol):
    """Durable device records with compare-and-set on ``version``, and the audit log.

    A record that cannot be read back exactly as written raises :class:`StorageError`;
    a compare-and-set that loses returns False and writes nothing (not even its audit rows);
    one whose record does not bump ``version`` past the expected one raises ValueError.
    """

    async def db_now(self) -> float:
        """The database clock, in seconds since the epoch."""
        ...

    def group_commits(self) -> tuple[int, int] | None:
        """Durable COMMITs of the exchange path so far and the writes they carried, where
        the store groups writes into shared commits (SQLite); None elsewhere."""
        ...

    async def load(self, device_id: str) -> tuple[DeviceRecord | None, float]:
        """The device's record (None: not registered) and the database time it was read at."""
        ...

    async def cas(self, event: StoreRecord) -> bool:
        """Compare-and-set: write ``event.record`` where the stored version is
        ``event.expected_version``, with ``event.audit`` in the same transaction. Returns False
        (and writes nothing) if the row changed or does not exist."""
        ...

    async def insert(self, record: DeviceRecord, audit: Sequence[AuditEntry] = ()) -> bool:
        """Insert a new device's record; False if the device ID exists."""
        ...

    async def put(
        self, record: DeviceRecord, expected_version: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """An admin change as a compare-and-set (same rule as :meth:`cas`)."""
        ...

    async def list_devices(self) -> list[DeviceRecord]: ...

    async def audit(
        self, *, device_id: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditRow]:
        """Audit rows, newest first."""
        ...

    async def add_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Audit rows that change no record (a refused 203 from an unknown ID, a refused
        handshake). Callers rate-limit these so a flood cannot grow the table without bound."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PairRow:
    """One unordered pair as the admin sees it: its policy and its state, if any."""

    lo: str
    hi: str
    #: None: the admin never named this pair (so it is not allowed).
    allowed: bool | None
    record: PairRecord | None
    #: Database clock of the latest change to the policy or the state.
    updated_at: float


class PairStore(Protocol):
    """Pair policies and pair state (docs/protocol.md, "Pair keys"); implemented by
    :class:`keyseed.storage.pairstore.SqlPairStore`, part of the SQL store. Same rules as
    :class:`Store`: one transaction per method, compare-and-set on ``version``."""

    async def pair_allowed(self, a: str, b: str) -> bool: ...

    async def set_pair_policy(
        self, a: str, b: str, *, allowed: bool, audit: Sequence[AuditEntry] = ()
    ) -> PairRecord | None: ...

    async def load_pair(self, a: str, b: str) -> PairRecord | None: ...

    async def load_pair_by_id(self, pair_id: bytes) -> PairRecord | None: ...

    async def pairs_of(self, device_id: str) -> list[PairRecord]: ...

    async def put_pair(
        self, record: PairRecord, expected_version: int, audit: Sequence[AuditEntry] = ()
    ) -> bool: ...

    async def close_pairs_of(
        self, device_id: str, audit: Sequence[AuditEntry] = ()
    ) -> list[PairRecord]: ...

    async def list_pairs(self) -> list[PairRow]: ...
