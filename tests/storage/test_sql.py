"""SqlStore on SQLite and PostgreSQL: migrations, sealed records, compare-and-set (also between
two engines racing), the audit log, persistence, and the real cores driven through the store.

Every test taking ``store`` or ``backend`` runs once per backend (see conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from storekit import MASTER_KEY, Backend, pg_execute

from keyseed.crypto.schedule import SharedKey
from keyseed.loopback import DeviceDisk, make_context
from keyseed.protocol.admin import register
from keyseed.protocol.device import DeviceProtocol, new_keystore
from keyseed.protocol.errors import NgCause
from keyseed.protocol.events import AuditEntry, Event, KeyEstablished, StoreRecord
from keyseed.protocol.records import DeviceRecord, IssuedSeed
from keyseed.protocol.server import ServerContext, ServerProtocol
from keyseed.storage.repository import AuditRow, StorageError, Store
from keyseed.storage.schema import metadata
from keyseed.storage.sql import SqlStore, head_revision, open_store

_CTX: dict[str, ServerContext] = {}


def server_context() -> ServerContext:
    if "ctx" not in _CTX:
        _CTX["ctx"] = make_context(("hpke-x25519",))
    return _CTX["ctx"]


def registered(device_id: str, db_now: float = 1_000_000.0) -> DeviceRecord:
    return register(
        None,
        device_id=device_id,
        suite="hpke-x25519",
        setup_code="12345678",
        window_s=600,
        db_now=db_now,
        entropy=os.urandom,
    )


def canonical(rec: DeviceRecord) -> DeviceRecord:
    """What a store returns: times are kept to the millisecond."""
    return DeviceRecord.decode(rec.encode())


def with_secrets(rec: DeviceRecord) -> DeviceRecord:
    """A record holding every kind of secret the server keeps."""
    assert rec.seed is None
    return rec.with_(
        epoch=1,
        key=SharedKey(os.urandom(32)),
        prev_key=SharedKey(os.urandom(32)),
        seed=IssuedSeed(
            r0=os.urandom(32),
            seed_id=os.urandom(16),
            otk_private=os.urandom(32),
            otk_public=os.urandom(32),
            policy=rec.policy,
        ),
    )


async def raw_row(store: SqlStore, device_id: str) -> Any:
    async with store.engine.connect() as conn:
        return (
            await conn.execute(
                sa.text("SELECT * FROM devices WHERE device_id = :d"), {"d": device_id}
            )
        ).one()


async def raw_exec(store: SqlStore, sql: str, **params: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def audit_count(store: SqlStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.text("SELECT count(*) FROM audit"))).scalar_one())


# -- opening and migrations ----------------------------------------------------------------


async def test_store_satisfies_the_protocol(store: SqlStore) -> None:
    s: Store = store  # mypy checks the structure; this checks the object
    assert s is store and repr(store) in ("SqlStore(sqlite)", "SqlStore(postgresql)")


async def test_migrations_are_idempotent_and_match_the_tables(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing depends on the working directory
    first = await backend.open()
    await first.insert(registered("oven-1"))
    await first.close()
    second = await backend.open()  # upgrade head again: a no-op that keeps the data
    try:
        assert (await second.load("oven-1"))[0] is not None
        async with second.engine.connect() as conn:
            revs = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
            assert [r[0] for r in revs] == [head_revision()]

            def diff(sync_conn: sa.Connection) -> list[Any]:
                return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))

            assert await conn.run_sync(diff) == []

            def index_columns(sync_conn: sa.Connection) -> dict[str, list[str | None]]:
                return {
                    str(ix["name"]): list(ix["column_names"])
                    for ix in sa.inspect(sync_conn).get_indexes("audit")
                }

            assert (await conn.run_sync(index_columns))["ix_audit_device_id_id"] == [
                "device_id",
                "id",
            ]
    finally:
        await second.close()


async def test_concurrent_opens_migrate_once(backend: Backend) -> None:
    stores = await asyncio.gather(*(backend.open() for _ in range(3)))
    try:
        assert await stores[0].insert(registered("oven-1"))
        for s in stores:
            assert (await s.load("oven-1"))[0] is not None
    finally:
        for s in stores:
            await s.close()


_OPEN_IN_PROCESS = """
import asyncio, sys
from keyseed.storage.sql import open_store
async def main():
    store = await open_store(sys.argv[1], bytes(range(32)), schema=sys.argv[2] or None)
    await store.close()
asyncio.run(main())
"""


async def test_processes_starting_together_migrate_once(backend: Backend, tmp_path: Path) -> None:
    """Three server processes upgrading an empty database at once: one creates the tables,
    the others find them (the advisory lock on PostgreSQL, the write lock on SQLite)."""
    if backend.name == "postgresql":
        schema = f"{backend.schema}_p"
        await pg_execute(f'CREATE SCHEMA "{schema}"')
        fresh = Backend("postgresql", backend.url, schema=schema)
    else:
        path = tmp_path / "fresh.db"
        schema = ""
        fresh = Backend("sqlite", f"sqlite+aiosqlite:///{path}", path=path)
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _OPEN_IN_PROCESS,
                fresh.url,
                schema,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(3)
        ]
        results = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
        store = await fresh.open()
        try:
            async with store.engine.connect() as conn:
                revs = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                assert [r[0] for r in revs] == [head_revision()]
        finally:
            await store.close()
    finally:
        if backend.name == "postgresql":
            await pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.parametrize(
    ("url", "kw", "key", "why"),
    [
        ("sqlite+aiosqlite:///{tmp}/a.db", {}, b"short", "32 bytes"),
        ("mysql+aiomysql://u@h/db", {}, MASTER_KEY, "SQLite or PostgreSQL"),
        ("sqlite:///{tmp}/a.db", {}, MASTER_KEY, "aiosqlite"),
        ("postgresql+psycopg://u@h/db", {}, MASTER_KEY, "asyncpg"),
        ("sqlite+aiosqlite:///{tmp}/a.db", {"schema": "ks"}, MASTER_KEY, "PostgreSQL only"),
        ("postgresql+asyncpg://u@h/db", {"schema": "bad; DROP"}, MASTER_KEY, "identifier"),
    ],
)
async def test_open_store_refuses_bad_arguments(
    tmp_path: Path, url: str, kw: dict[str, str], key: bytes, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as exc:
        await open_store(url.format(tmp=tmp_path), key, **kw)
    assert MASTER_KEY.hex() not in str(exc.value)
    assert not (tmp_path / "a.db").exists()  # refused before anything was created


async def test_sqlite_in_memory() -> None:
    store = await open_store("sqlite+aiosqlite://", MASTER_KEY)
    try:
        rec = registered("oven-1")
        assert await store.insert(rec)
        assert (await store.load("oven-1"))[0] == canonical(rec)
    finally:
        await store.close()


# -- records -------------------------------------------------------------------------------


async def test_insert_load_round_trip(store: SqlStore) -> None:
    rec = with_secrets(registered("oven-1", await store.db_now()))
    entry = AuditEntry(kind="registered", device_id="oven-1", epoch=0, detail="by admin")
    assert await store.insert(rec, [entry])
    before = time.time()
    got, db_now = await store.load("oven-1")
    assert got == canonical(rec) and got is not None and got.key == rec.key
    assert abs(db_now - before) < 60  # the same clock (sanity, not a timing bound)
    assert await store.list_devices() == [canonical(rec)]
    [row] = await store.audit()
    assert (row.kind, row.device_id, row.epoch, row.cause, row.detail) == (
        "registered",
        "oven-1",
        0,
        None,
        "by admin",
    )
    missing, db_now2 = await store.load("oven-2")
    assert missing is None and db_now2 >= db_now - 1


async def test_insert_duplicate_writes_nothing(store: SqlStore) -> None:
    first = registered("oven-1")
    assert await store.insert(first)
    other = registered("oven-1")
    assert not await store.insert(
        other, [AuditEntry(kind="registered", device_id="oven-1", epoch=0)]
    )
    assert (await store.load("oven-1"))[0] == canonical(first)
    assert await audit_count(store) == 0


async def test_list_devices_in_id_order(store: SqlStore) -> None:
    for name in ("b-dev", "a-dev", "c-dev"):
        assert await store.insert(registered(name))
    assert [r.device_id for r in await store.list_devices()] == ["a-dev", "b-dev", "c-dev"]


async def test_cas_success_then_conflict(store: SqlStore) -> None:
    v0 = registered("oven-1")
    assert await store.insert(v0)
    v1 = v0.with_(confirmed=True, order_epoch=0)
    ok = StoreRecord(
        expected_version=v0.version,
        record=v1,
        audit=(
            AuditEntry(kind="204_ng", device_id="oven-1", epoch=0, cause=NgCause.BAD_EPOCH),
            AuditEntry(kind="confirmed", device_id="oven-1", epoch=0),
        ),
    )
    assert await store.cas(ok)
    assert (await store.load("oven-1"))[0] == canonical(v1)
    assert [(r.kind, r.cause) for r in await store.audit()] == [
        ("confirmed", None),
        ("204_ng", int(NgCause.BAD_EPOCH)),
    ]
    row = await raw_row(store, "oven-1")
    assert (row.version, bool(row.confirmed), row.order_epoch) == (v1.version, True, 0)

    # Stale: the same expected version again, with a different record and audit rows.
    stale = StoreRecord(
        expected_version=v0.version,
        record=v0.with_(revoked=True),
        audit=(AuditEntry(kind="revoked", device_id="oven-1", epoch=0),),
    )
    assert not await store.cas(stale)
    assert (await store.load("oven-1"))[0] == canonical(v1)
    assert await audit_count(store) == 2
    assert (await raw_row(store, "oven-1")).state == row.state  # not even rewritten

    # Not registered: nothing to compare with.
    ghost = registered("ghost")
    assert not await store.cas(StoreRecord(expected_version=0, record=ghost.with_()))
    assert (await store.load("ghost"))[0] is None


async def test_put_follows_the_same_rule(store: SqlStore) -> None:
    v0 = registered("oven-1")
    assert await store.insert(v0)
    v1 = v0.with_(revoked=True)
    entry = AuditEntry(kind="revoked", device_id="oven-1", epoch=0)
    assert await store.put(v1, v0.version, [entry])
    assert not await store.put(v0.with_(confirmed=True), v0.version, [entry])
    assert (await store.load("oven-1"))[0] == canonical(v1)
    assert [r.kind for r in await store.audit()] == ["revoked"]
    assert (await raw_row(store, "oven-1")).revoked


async def test_write_that_keeps_the_version_is_refused(store: SqlStore) -> None:
    v0 = registered("oven-1")
    assert await store.insert(v0)
    same_version = DeviceRecord.decode(v0.encode())
    with pytest.raises(ValueError, match="bump"):
        await store.cas(StoreRecord(expected_version=v0.version, record=same_version))
    with pytest.raises(ValueError, match="bump"):
        await store.put(v0.with_(), v0.version + 1)
    assert (await store.load("oven-1"))[0] == canonical(v0)


# -- sealing -------------------------------------------------------------------------------


async def test_state_is_sealed(store: SqlStore) -> None:
    rec = with_secrets(registered("oven-1"))
    assert await store.insert(rec)
    row = await raw_row(store, "oven-1")
    state = bytes(row.state)
    assert rec.key is not None and rec.prev_key is not None
    assert rec.seed is not None and rec.seed.otk_private is not None and rec.window is not None
    for secret in (
        rec.key.raw,
        rec.prev_key.raw,
        rec.seed.r0,
        rec.seed.otk_private,
        rec.window.k_code,
    ):
        assert secret not in state
    assert rec.encode() not in state and b"hpke-x25519" not in state
    # The plain columns say what the record says.
    assert (row.device_id, row.version, row.conn_gen, row.epoch, row.suite) == (
        "oven-1",
        rec.version,
        rec.conn_gen,
        1,
        "hpke-x25519",
    )
    assert (bool(row.revoked), bool(row.confirmed), row.order_epoch) == (False, False, None)


async def test_tampered_state_raises(store: SqlStore) -> None:
    assert await store.insert(registered("oven-1"))
    assert await store.insert(registered("oven-2"))
    state = bytearray((await raw_row(store, "oven-1")).state)
    state[len(state) // 2] ^= 1
    await raw_exec(
        store, "UPDATE devices SET state = :s WHERE device_id = 'oven-1'", s=bytes(state)
    )
    with pytest.raises(StorageError, match="does not open"):
        await store.load("oven-1")
    with pytest.raises(StorageError):
        await store.list_devices()
    assert (await store.load("oven-2"))[0] is not None  # only that row is refused


@pytest.mark.parametrize("blob", [b"", b"\x00" * 5, b"\x00" * 40])
async def test_truncated_state_raises(store: SqlStore, blob: bytes) -> None:
    assert await store.insert(registered("oven-1"))
    await raw_exec(store, "UPDATE devices SET state = :s WHERE device_id = 'oven-1'", s=blob)
    with pytest.raises(StorageError):
        await store.load("oven-1")


async def test_row_moved_to_another_device_raises(store: SqlStore) -> None:
    a, b = registered("oven-a"), registered("oven-b")
    assert await store.insert(a) and await store.insert(b)
    state_a = (await raw_row(store, "oven-a")).state
    await raw_exec(store, "UPDATE devices SET state = :s WHERE device_id = 'oven-b'", s=state_a)
    with pytest.raises(StorageError):
        await store.load("oven-b")
    assert (await store.load("oven-a"))[0] == canonical(a)


async def test_columns_that_disagree_with_the_record_raise(store: SqlStore) -> None:
    rec = registered("oven-1")
    assert await store.insert(rec)
    # A version column moved behind the record's back would let a stale writer win.
    await raw_exec(store, "UPDATE devices SET version = version + 5 WHERE device_id = 'oven-1'")
    with pytest.raises(StorageError, match="disagree"):
        await store.load("oven-1")
    await raw_exec(store, "UPDATE devices SET version = version - 5, revoked = :t", t=True)
    with pytest.raises(StorageError, match="disagree"):
        await store.load("oven-1")


async def test_other_master_key_cannot_open(backend: Backend) -> None:
    store = await backend.open()
    try:
        assert await store.insert(registered("oven-1"))
    finally:
        await store.close()
    other = await backend.open(bytes(32))
    try:
        with pytest.raises(StorageError):
            await other.load("oven-1")
    finally:
        await other.close()


# -- clock and audit -------------------------------------------------------------------------


async def test_db_now(store: SqlStore) -> None:
    readings = [await store.db_now() for _ in range(5)]
    # Wall clock: close to ours, and not going back (a millisecond of rounding allowed).
    assert all(abs(t - time.time()) < 60 for t in readings)
    assert all(b >= a - 0.002 for a, b in itertools.pairwise(readings))
    assert readings[-1] > 1.7e9  # seconds since the epoch, not days or milliseconds


async def test_audit_order_paging_and_filter(store: SqlStore) -> None:
    entries = [
        AuditEntry(
            kind=f"k{i}",
            device_id="oven-1" if i % 3 else "oven-2",
            epoch=i,
            cause=None if i % 2 else int(NgCause.STALE_SEED),
            detail=f"d{i}",
        )
        for i in range(20)
    ]
    await store.add_audit(entries[:10])
    await store.add_audit(entries[10:])
    await store.add_audit([])
    rows = await store.audit(limit=1000)
    assert [r.kind for r in rows] == [f"k{i}" for i in reversed(range(20))]
    assert [r.id for r in rows] == sorted((r.id for r in rows), reverse=True)
    assert all(a.at >= b.at for a, b in itertools.pairwise(rows))
    assert rows[-1] == AuditRow(
        id=rows[-1].id,
        at=rows[-1].at,
        kind="k0",
        device_id="oven-2",
        epoch=0,
        cause=int(NgCause.STALE_SEED),
        detail="d0",
    )
    # Pages of 6, each before the last id of the previous one: every row once, in order.
    pages: list[list[AuditRow]] = []
    before: int | None = None
    while page := await store.audit(limit=6, before_id=before):
        pages.append(page)
        before = page[-1].id
    assert [len(p) for p in pages] == [6, 6, 6, 2]
    assert [r for p in pages for r in p] == rows
    # By device, newest first, paged the same way.
    mine = await store.audit(device_id="oven-2", limit=1000)
    assert [r.epoch for r in mine] == [18, 15, 12, 9, 6, 3, 0]
    assert await store.audit(device_id="oven-2", limit=2, before_id=mine[1].id) == mine[2:4]
    assert await store.audit(device_id="nobody") == []
    assert len(await store.audit()) == 20  # default limit 100
    with pytest.raises(ValueError, match="limit"):
        await store.audit(limit=0)


# -- persistence -----------------------------------------------------------------------------


async def test_restart_keeps_everything(backend: Backend) -> None:
    store = await backend.open()
    try:
        v0 = with_secrets(registered("oven-1"))
        assert await store.insert(v0, [AuditEntry(kind="registered", device_id="oven-1", epoch=0)])
        v1 = v0.with_(order_epoch=1)
        entry = AuditEntry(kind="order", device_id="oven-1", epoch=1)
        assert await store.cas(StoreRecord(expected_version=v0.version, record=v1, audit=(entry,)))
        await store.add_audit([AuditEntry(kind="refused", device_id="nobody", epoch=0, cause=7)])
        before_audit = await store.audit()
    finally:
        await store.close()
    again = await backend.open()
    try:
        assert (await again.load("oven-1"))[0] == canonical(v1)
        assert await again.audit() == before_audit
        assert [r.kind for r in before_audit] == ["refused", "order", "registered"]
        # The version survives too: the stale writer still loses after the restart.
        assert not await again.cas(StoreRecord(expected_version=v0.version, record=v0.with_()))
    finally:
        await again.close()


# -- SQLite specifics ----------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new-folder" / "keyseed.db"
    store = await open_store(f"sqlite+aiosqlite:///{path}", MASTER_KEY)
    try:
        assert await store.insert(with_secrets(registered("oven-1")))
        files = [p for p in path.parent.iterdir() if p.name.startswith("keyseed.db")]
        assert path in files and len(files) >= 2  # the database and its WAL
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert _mode(path.parent) == 0o700
    finally:
        await store.close()
    # A database file left readable by others is tightened at open.
    path.chmod(0o644)
    store = await open_store(f"sqlite+aiosqlite:///{path}", MASTER_KEY)
    try:
        assert _mode(path) == 0o600
        assert (await store.load("oven-1"))[0] is not None
    finally:
        await store.close()


async def test_sqlite_pragmas_on_every_connection(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", MASTER_KEY)
    try:

        async def pragmas() -> list[Any]:
            async with store.engine.connect() as conn:
                names = ("journal_mode", "secure_delete", "foreign_keys", "synchronous")
                got = [(await conn.exec_driver_sql(f"PRAGMA {p}")).scalar_one() for p in names]
                got.append((await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one())
                return got

        # Two connections held at once: both configured, not just the first.
        first, second = await asyncio.gather(pragmas(), pragmas())
        for got in (first, second):
            assert got[:4] == ["wal", 1, 1, 2] and got[4] > 0
    finally:
        await store.close()


# -- two processes racing ------------------------------------------------------------------


async def test_cas_race_between_two_engines(backend: Backend) -> None:
    """Rule 6: of two processes writing the same version, exactly one wins, every time."""
    a, b = await backend.open(), await backend.open()
    try:
        cur = registered("oven-1")
        assert await a.insert(cur)
        for i in range(40):
            mine = cur.with_(epoch=cur.epoch + 1)
            theirs = cur.with_(conn_gen=cur.conn_gen + 1)
            events = [
                StoreRecord(
                    expected_version=cur.version,
                    record=rec,
                    audit=(AuditEntry(kind="race", device_id="oven-1", epoch=i, detail=who),),
                )
                for rec, who in ((mine, "a"), (theirs, "b"))
            ]
            results = await asyncio.gather(a.cas(events[0]), b.cas(events[1]))
            assert sorted(results) == [False, True], f"round {i}: {results}"
            winner = mine if results[0] else theirs
            stored, _ = await (b if i % 2 else a).load("oven-1")
            assert stored == canonical(winner)
            [row] = await a.audit(limit=1)
            assert (row.epoch, row.detail) == (i, "a" if results[0] else "b")
            cur = winner
        assert await audit_count(a) == 40  # exactly one audit row per round: the winner's
    finally:
        await a.close()
        await b.close()


# -- the real cores through the store --------------------------------------------------------


async def pump_server(proto: ServerProtocol, store: Store) -> list[Event]:
    """The server driver loop of keyseed.protocol.server, awaiting the store."""
    events: list[Event] = []
    while True:
        while (device_id := proto.wants_record()) is not None:
            record, db_now = await store.load(device_id)
            proto.provide_record(record, db_now, time.monotonic())
        batch = proto.events_received()
        if not batch:
            return events
        for ev in batch:
            if isinstance(ev, StoreRecord) and not await store.cas(ev):
                proto.store_failed()
            events.append(ev)


class Connection:
    """One connection: a device core (its keystore on a DeviceDisk) and a server core on the
    store, joined by two queues; durable events are committed before messages move."""

    def __init__(self, ctx: ServerContext, store: Store, disk: DeviceDisk) -> None:
        now = time.monotonic()
        self.store, self.disk = store, disk
        self.device = DeviceProtocol(disk.keystore, now=now)
        self.server = ServerProtocol(ctx, now=now)
        self.to_server: deque[bytes] = deque()
        self.to_device: deque[bytes] = deque()
        self.server_events: list[Event] = []
        self.device.connect(now)
        self.flush_device()

    def flush_device(self) -> None:
        self.disk.commit(self.device.events_received())  # durable first
        self.to_server.extend(self.device.messages_to_send())

    async def run(self) -> None:
        for _ in range(100):
            if not (self.to_server or self.to_device):
                return
            if self.to_server:
                self.server.receive_message(self.to_server.popleft(), time.monotonic())
                self.server_events += await pump_server(self.server, self.store)
                self.to_device.extend(self.server.messages_to_send())
            if self.to_device:
                self.device.receive_message(self.to_device.popleft(), time.monotonic())
                self.flush_device()
        raise AssertionError("the connection did not settle")


async def test_enrol_and_rekey_through_the_cores(store: SqlStore) -> None:
    ctx = server_context()
    rec = registered("oven-1", await store.db_now())
    assert await store.insert(rec, [AuditEntry(kind="registered", device_id="oven-1", epoch=0)])
    disk = DeviceDisk(
        new_keystore(
            device_id="oven-1",
            suite="hpke-x25519",
            server_key=ctx.keys["hpke-x25519"].public_key.raw,
            install_secret=os.urandom(32),
            setup_code="12345678",
        )
    )
    conn = Connection(ctx, store, disk)
    await conn.run()  # HELLO ... 203-206, ACK_206: epoch 1
    stored, _ = await store.load("oven-1")
    assert stored is not None and stored.key is not None and stored.window is None
    assert disk.keystore.epoch == stored.epoch == 1 and disk.keystore.key == stored.key
    assert stored.seed is not None and disk.keystore.seed is not None
    assert disk.keystore.seed.seed_id == stored.seed.seed_id and not stored.owed_206

    conn.device.request_rekey(time.monotonic())  # 301: epoch 2 on the same connection
    conn.flush_device()
    await conn.run()
    stored, _ = await store.load("oven-1")
    assert stored is not None and stored.key is not None
    assert disk.keystore.epoch == stored.epoch == 2 and disk.keystore.key == stored.key
    assert not stored.owed_206

    established = [e.epoch for e in conn.server_events if isinstance(e, KeyEstablished)]
    assert established == [1, 2]
    kinds = [r.kind for r in reversed(await store.audit(device_id="oven-1"))]
    assert kinds[0] == "registered" and kinds.count("204_ok") == 2

    # A new connection authenticates under epoch 2, read back from the database.
    conn2 = Connection(ctx, store, disk)
    await conn2.run()
    assert conn2.device.state.name == "OPEN" and conn2.server.state.name == "OPEN"
