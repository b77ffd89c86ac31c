"""keyseed.storage.pairstore
~~~~~~~~~~~~~~~~~~~~~~~~~~

Pair policies and pair state in SQL (docs/protocol.md, "Pair keys"), mixed into
:class:`~keyseed.storage.sql.SqlStore`.

* ``pair_policies``: one row per unordered pair the admin ever named; ``allowed`` is what
  allow-pair and deny-pair set. No row means not allowed.
* ``pairs``: one row per unordered pair that ever asked for a key: the
  :class:`~keyseed.protocol.pair.PairRecord`, sealed under the master key with the pair's
  names as associated data, and a few of its fields in clear for listing. Writes are a
  compare-and-set on ``version``, as device records are (rule 6): two server processes
  racing on one pair leave exactly one winner.
* Every method is one transaction; its audit rows commit with it or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..crypto import DecryptError
from ..crypto.atrest import AtRestKey
from ..protocol.errors import MalformedMessage
from ..protocol.events import AuditEntry
from ..protocol.pair import PairRecord, close_record, pair_key_of
from .repository import PairRow, StorageError
from .schema import audit as audit_table
from .schema import pair_policies, pairs


def _seal_name(lo: str, hi: str) -> str:
    return f"pair {lo} {hi}"


class SqlPairStore:
    """The pair methods of :class:`~keyseed.storage.sql.SqlStore` (a mixin: it uses the
    store's engine, writer, at-rest key and database clock)."""

    _engine: AsyncEngine
    _writer: AsyncEngine
    _seal: AtRestKey
    _now: Any

    # -- policies ---------------------------------------------------------------------------

    async def pair_allowed(self, a: str, b: str) -> bool:
        """Whether allow-pair holds for {a, b}."""
        lo, hi = pair_key_of(a, b)
        query = sa.select(pair_policies.c.allowed).where(
            pair_policies.c.lo == lo, pair_policies.c.hi == hi
        )
        async with self._engine.begin() as conn:
            allowed = (await conn.execute(query)).scalar_one_or_none()
        return bool(allowed)

    async def set_pair_policy(
        self, a: str, b: str, *, allowed: bool, audit: Sequence[AuditEntry] = ()
    ) -> PairRecord | None:
        """allow-pair (``allowed``) or deny-pair for {a, b}. Denying also closes the live pair
        in the same transaction.

        Returns:
            The pair's record as closed by a deny-pair (None: nothing was live).
        """
        lo, hi = pair_key_of(a, b)
        async with self._writer.begin() as conn:
            where = (pair_policies.c.lo == lo, pair_policies.c.hi == hi)
            updated = await conn.execute(
                sa.update(pair_policies).where(*where).values(allowed=allowed, updated_at=self._now)
            )
            if updated.rowcount != 1:
                await conn.execute(
                    sa.insert(pair_policies).values(
                        lo=lo, hi=hi, allowed=allowed, updated_at=self._now
                    )
                )
            closed = None
            if not allowed:
                rec = await self._load_pair(conn, lo, hi)
                if rec is not None and rec.live:
                    closed = close_record(rec)
                    await self._update_pair(conn, closed, rec.version)
            await _insert_audit(conn, self._now, audit)
        return closed

    # -- pair state -------------------------------------------------------------------------

    async def load_pair(self, a: str, b: str) -> PairRecord | None:
        """The state of {a, b} (None: never asked for).

        Raises:
            StorageError: the stored row cannot be trusted.
        """
        lo, hi = pair_key_of(a, b)
        async with self._engine.begin() as conn:
            return await self._load_pair(conn, lo, hi)

    async def load_pair_by_id(self, pair_id: bytes) -> PairRecord | None:
        """The pair whose current chain is ``pair_id`` (None: no such pair)."""
        async with self._engine.begin() as conn:
            row = (
                (await conn.execute(sa.select(pairs).where(pairs.c.pair_id == pair_id)))
                .mappings()
                .one_or_none()
            )
        return None if row is None else self._open_pair(row)

    async def pairs_of(self, device_id: str) -> list[PairRecord]:
        """Every pair ``device_id`` is part of."""
        query = sa.select(pairs).where(sa.or_(pairs.c.lo == device_id, pairs.c.hi == device_id))
        async with self._engine.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._open_pair(r) for r in rows]

    async def put_pair(
        self, record: PairRecord, expected_version: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """Compare-and-set ``record`` where the stored version is ``expected_version`` (0: the
        row must not exist yet). Returns False, writing nothing, if that lost.

        Raises:
            ValueError: the record does not bump the version past ``expected_version``.
        """
        if record.version <= expected_version:
            raise ValueError("a stored change must bump the pair's version")
        try:
            async with self._writer.connect() as conn, conn.begin() as tx:
                if expected_version == 0:
                    await conn.execute(
                        sa.insert(pairs).values(
                            lo=record.lo, hi=record.hi, **self._pair_columns(record)
                        )
                    )
                elif not await self._update_pair(conn, record, expected_version):
                    await tx.rollback()
                    return False
                await _insert_audit(conn, self._now, audit)
        except IntegrityError:
            return False
        return True

    async def close_pairs_of(
        self, device_id: str, audit: Sequence[AuditEntry] = ()
    ) -> list[PairRecord]:
        """Close every live pair of ``device_id`` (a revocation or a re-registration), in one
        transaction with ``audit``. Returns the records as closed."""
        query = sa.select(pairs).where(
            sa.or_(pairs.c.lo == device_id, pairs.c.hi == device_id),
            pairs.c.status != "closed",
        )
        closed: list[PairRecord] = []
        for _ in range(8):
            closed = []
            async with self._writer.connect() as conn, conn.begin() as tx:
                rows = (await conn.execute(query)).mappings().all()
                lost = False
                for row in rows:
                    rec = self._open_pair(row)
                    new = close_record(rec)
                    if not await self._update_pair(conn, new, rec.version):
                        lost = True
                        break
                    closed.append(new)
                if lost:
                    await tx.rollback()
                    continue
                if closed:
                    await _insert_audit(conn, self._now, audit)
                return closed
        raise StorageError("the pairs kept changing while closing them")

    async def list_pairs(self) -> list[PairRow]:
        """Every pair with a policy or a state, by names."""
        async with self._engine.begin() as conn:
            policies = (await conn.execute(sa.select(pair_policies))).mappings().all()
            states = (await conn.execute(sa.select(pairs))).mappings().all()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for p in policies:
            rows[(p["lo"], p["hi"])] = {
                "allowed": bool(p["allowed"]),
                "record": None,
                "updated_at": float(p["updated_at"]),
            }
        for s in states:
            entry = rows.setdefault(
                (s["lo"], s["hi"]), {"allowed": None, "record": None, "updated_at": 0.0}
            )
            entry["record"] = self._open_pair(s)
            entry["updated_at"] = max(entry["updated_at"], float(s["updated_at"]))
        return [PairRow(lo=lo, hi=hi, **v) for (lo, hi), v in sorted(rows.items())]

    # -- rows -------------------------------------------------------------------------------

    async def _load_pair(self, conn: AsyncConnection, lo: str, hi: str) -> PairRecord | None:
        query = sa.select(pairs).where(pairs.c.lo == lo, pairs.c.hi == hi)
        row = (await conn.execute(query)).mappings().one_or_none()
        return None if row is None else self._open_pair(row)

    async def _update_pair(
        self, conn: AsyncConnection, record: PairRecord, expected_version: int
    ) -> bool:
        stmt = (
            sa.update(pairs)
            .where(pairs.c.lo == record.lo, pairs.c.hi == record.hi)
            .where(pairs.c.version == expected_version)
            .values(**self._pair_columns(record))
        )
        return bool((await conn.execute(stmt)).rowcount == 1)

    def _pair_columns(self, record: PairRecord) -> dict[str, Any]:
        return {
            "pair_id": record.pair_id,
            "mode": record.mode,
            "epoch": record.epoch,
            "status": record.status.value,
            "initiator": record.initiator,
            "version": record.version,
            "updated_at": self._now,
            "state": self._seal.seal(_seal_name(record.lo, record.hi), record.encode()),
        }

    def _open_pair(self, row: Any) -> PairRecord:
        lo, hi = row["lo"], row["hi"]
        try:
            rec = PairRecord.decode(self._seal.open(_seal_name(lo, hi), bytes(row["state"])))
        except (DecryptError, MalformedMessage, ValueError) as exc:
            raise StorageError(f"stored pair {lo}/{hi} does not open") from exc
        plain = (
            lo,
            hi,
            bytes(row["pair_id"]),
            row["mode"],
            row["epoch"],
            row["status"],
            row["initiator"],
            row["version"],
        )
        sealed = (
            rec.lo,
            rec.hi,
            rec.pair_id,
            rec.mode,
            rec.epoch,
            rec.status.value,
            rec.initiator,
            rec.version,
        )
        if plain != sealed:
            raise StorageError(f"stored columns of pair {lo}/{hi} disagree with its record")
        return rec


async def _insert_audit(conn: AsyncConnection, now: Any, entries: Sequence[AuditEntry]) -> None:
    if not entries:
        return
    await conn.execute(
        sa.insert(audit_table).values(at=now),
        [
            {
                "kind": e.kind,
                "device_id": e.device_id,
                "epoch": e.epoch,
                "cause": None if e.cause is None else int(e.cause),
                "detail": e.detail,
            }
            for e in entries
        ],
    )


__all__ = ["SqlPairStore"]
