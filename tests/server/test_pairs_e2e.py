"""Pair keys through a real server (docs/protocol.md, "Pair keys"): two test devices over real
WebSockets, the real SQL store, the admin API. Relay mode and end-to-end mode; what the
server's stored state and relayed messages reveal in each; the admin policy (allow-pair,
deny-pair); replayed and tampered pair frames; revocation and re-registration kill the pair;
chained renewal; a peer that was offline gets its owed 502 at its next connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from devclient import TestDevice
from servkit import PG_URL, Server, pg_execute, start_at

from keyseed.crypto import Aead, DecryptError, make_nonce
from keyseed.device.agent import DeviceAgent
from keyseed.device.config import DeviceAgentConfig
from keyseed.device.keystore import KeystoreFile
from keyseed.device.pairs import PairEndpoint
from keyseed.protocol.device import new_keystore
from keyseed.protocol.errors import ErrorCode, LocalProtocolError
from keyseed.protocol.events import Event, HandshakeComplete, KeyEstablished, SeedStored
from keyseed.protocol.messages import Message, PairData, PairKey
from keyseed.protocol.pair import (
    E2E,
    I2R,
    R2I,
    RELAY,
    PairCause,
    PairClosed,
    PairDataReceived,
    PairEstablished,
    PairMessageReceived,
    PairRejected,
    PairStatus,
    derive_epoch_keys,
    pair_aad,
)
from keyseed.protocol.server import ServerProtocol
from keyseed.server import EchoApp, ServerConfig, start_server
from keyseed.server.datadir import open_data_dir
from keyseed.server.pairs import PairService
from keyseed.storage.sql import open_store


class PairDevice(TestDevice):
    """A test device with pair keys: the driver loop also feeds its PairEndpoint."""

    __test__ = False

    def __init__(self, base: TestDevice) -> None:
        super().__init__(base.url, base.disk, base.config)
        self.pairs = PairEndpoint(base.disk.keystore.device_id, self.events.append)

    async def flush(self) -> None:
        assert self.proto is not None
        for _ in range(16):
            events = self.proto.events_received()
            self.disk.commit(events)  # durable first
            self.events.extend(events)
            for ev in events:
                self.pairs.on_event(ev)
                if (isinstance(ev, HandshakeComplete) and ev.authenticated) or (
                    isinstance(ev, KeyEstablished) and ev.enrolment
                ):
                    self.pairs.on_open()
            sent = self.pairs.flush(self.proto, time.monotonic())
            await super().flush()
            if not sent and not events:
                return

    async def request(self, peer: str, mode: str) -> None:
        self.pairs.request(peer, mode)
        await self.flush()

    async def send_pair(self, peer: str, data: bytes) -> None:
        self.pairs.send(peer, data)
        await self.flush()

    async def send_raw_pair(self, msg: Message) -> None:
        """A pair message straight into the core (a replay or a forgery)."""
        assert self.proto is not None
        self.proto.send_pair(msg, time.monotonic())
        await self.flush()


class Wiretap:
    """Every pair message the server received or sent, as the server saw it (in clear: the
    server is the endpoint of every device channel)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[Message] = []
        tap = self
        on_message = PairService.on_message
        send_pair = ServerProtocol.send_pair

        async def recv(self: PairService, conn: Any, ev: PairMessageReceived) -> bool:
            tap.seen.append(ev.message)
            return await on_message(self, conn, ev)

        def send(self: ServerProtocol, msg: Message, now: float) -> None:
            tap.seen.append(msg)
            send_pair(self, msg, now)

        monkeypatch.setattr(PairService, "on_message", recv)
        monkeypatch.setattr(ServerProtocol, "send_pair", send)


async def enrolled(srv: Server, device_id: str) -> PairDevice:
    dev = PairDevice(await srv.provision(device_id))
    await dev.connect()
    await dev.until(lambda ev: isinstance(ev, SeedStored) and ev.epoch == 1)
    await srv.wait_for(device_id, lambda v: v["online"] and not v["owed_206"])
    return dev


async def allow(srv: Server, a: str, b: str, *, allowed: bool = True) -> dict[str, Any]:
    r = await srv.admin.post(
        f"/v1/admin/pairs/{'allow' if allowed else 'deny'}", json={"a": a, "b": b}
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def established(peer: str, epoch: int | None = None) -> Callable[[Event], bool]:
    return lambda ev: (
        isinstance(ev, PairEstablished) and ev.peer == peer and epoch in (None, ev.epoch)
    )


def data_from(peer: str, data: bytes) -> Callable[[Event], bool]:
    return lambda ev: isinstance(ev, PairDataReceived) and ev.peer == peer and ev.data == data


def closed_with(cause: PairCause) -> Callable[[Event], bool]:
    return lambda ev: isinstance(ev, PairClosed) and ev.cause is cause


async def paired(srv: Server, mode: str) -> tuple[PairDevice, PairDevice]:
    a, b = await enrolled(srv, "oven-a"), await enrolled(srv, "oven-b")
    await allow(srv, "oven-a", "oven-b")
    await a.request("oven-b", mode)
    await a.until(established("oven-b", 1))
    await b.until(established("oven-a", 1))
    view = await pair_view(srv, "oven-a", "oven-b", lambda v: v["status"] == "established")
    assert view["mode"] == mode and view["epoch"] == 1 and view["initiator"] == "oven-a"
    return a, b


async def pair_view(
    srv: Server, a: str, b: str, pred: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the admin list until the pair's view satisfies ``pred``."""
    view: dict[str, Any] = {}
    for _ in range(300):
        rows = (await srv.admin.get("/v1/admin/pairs")).json()
        view = next((r for r in rows if {r["a"], r["b"]} == {a, b}), {})
        if view and pred(view):
            return view
        await _sleep()
    raise AssertionError(f"pair never reached the state; last {view}")


async def _sleep() -> None:
    await asyncio.sleep(0.02)


async def audit_kinds(srv: Server, device_id: str) -> list[str]:
    rows = (await srv.admin.get("/v1/admin/audit", params={"device_id": device_id})).json()
    return [r["kind"] for r in rows]


# -- the two modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [RELAY, E2E])
class TestPairModes:
    """501 -> 502 (both, or responder then initiator) -> 503 -> 504 both ways, relayed."""

    async def test_pair_messages_flow_both_ways(self, server: Server, mode: str) -> None:
        a, b = await paired(server, mode)
        await a.send_pair("oven-b", b"defrost 300 g")
        await b.until(data_from("oven-a", b"defrost 300 g"))
        await b.send_pair("oven-a", b"done")
        await a.until(data_from("oven-b", b"done"))
        for dev in (a, b):
            assert "pair_established" in await audit_kinds(server, dev.pairs.core.device_id)
        assert "pair_requested" in await audit_kinds(server, "oven-a")

    async def test_renewal_is_chained_and_keeps_working(self, server: Server, mode: str) -> None:
        a, b = await paired(server, mode)
        first = a.pairs.core.pair_of("oven-b")
        # The responder asks for the next epoch: the roles swap, the pair ID stays.
        await b.request("oven-a", mode)
        await b.until(established("oven-a", 2))
        await a.until(established("oven-b", 2))
        view = await pair_view(server, "oven-a", "oven-b", lambda v: v["epoch"] == 2)
        assert view["chained"] and view["initiator"] == "oven-b"
        second = a.pairs.core.pair_of("oven-b")
        assert first is not None and second is not None and second[0] == first[0]
        await a.send_pair("oven-b", b"epoch two")
        await b.until(data_from("oven-a", b"epoch two"))


# -- what the server can read ----------------------------------------------------------------


def _bytes_in(obj: Any) -> Iterator[bytes]:
    if isinstance(obj, bytes):
        yield obj
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from _bytes_in(item)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _bytes_in(getattr(obj, name))


def opens(stmt: PairKey, data: PairData, candidates: set[bytes]) -> bool:
    """Whether any obvious derivation from ``candidates`` opens ``data``: each candidate as
    the HKDF input with every candidate (or none) as the salt, through the documented key
    schedule, in both directions; and each 32-byte candidate as the AEAD key itself."""
    salts = [b"", *candidates]
    for ikm in candidates:
        for salt in salts:
            keys = derive_epoch_keys(stmt, salt, ikm)
            for key, iv, direction in (
                (keys.i2r_key, keys.i2r_iv, I2R),
                (keys.r2i_key, keys.r2i_iv, R2I),
            ):
                aad = pair_aad(data.pair_id, data.epoch, direction, data.seq)
                try:
                    Aead(key).open(make_nonce(iv, data.seq), data.ct, aad)
                except DecryptError:
                    continue
                return True
        if len(ikm) == 32:
            for direction in (I2R, R2I):
                aad = pair_aad(data.pair_id, data.epoch, direction, data.seq)
                try:
                    Aead(ikm).open(make_nonce(bytes(12), data.seq), data.ct, aad)
                except DecryptError:
                    continue
                return True
    return False


@pytest.mark.parametrize(("mode", "readable"), [(RELAY, True), (E2E, False)])
async def test_server_state_and_relayed_messages_read_pair_traffic_only_in_relay_mode(
    server: Server, monkeypatch: pytest.MonkeyPatch, mode: str, readable: bool
) -> None:
    tap = Wiretap(monkeypatch)
    a, b = await paired(server, mode)
    await a.send_pair("oven-b", b"secret recipe")
    await b.until(data_from("oven-a", b"secret recipe"))

    # Everything the server holds: the pair row and both device records, opened with the
    # master key by the store itself, and every pair message it received or sent.
    store: Any = server.rt.store
    row = await store.load_pair("oven-a", "oven-b")
    assert row is not None and row.status is PairStatus.ESTABLISHED
    held: set[bytes] = set(_bytes_in(row)) | set(_bytes_in(tap.seen))
    for device_id in ("oven-a", "oven-b"):
        rec, _ = await store.load(device_id)
        held |= {rec.key.raw, rec.seed.r0, rec.seed.seed_id, rec.key.key_id}
    assert (row.material is not None) == readable  # relay: the server drew the material

    data = next(m for m in tap.seen if isinstance(m, PairData))
    # The statement of the epoch, with both halves in e2e mode: the transcript is public.
    stmt = next(
        m for m in tap.seen if isinstance(m, PairKey) and (m.mode == RELAY or m.e_r is not None)
    )
    assert opens(stmt, data, held) is readable
    # The devices' own view opens it, of course (the search itself works).
    assert a.pairs.core.pair_of("oven-b") is not None


# -- policy -----------------------------------------------------------------------------------


async def test_request_refused_without_allow_pair_and_after_deny_pair(server: Server) -> None:
    a, b = await enrolled(server, "oven-a"), await enrolled(server, "oven-b")
    await a.request("oven-b", E2E)
    await a.until(closed_with(PairCause.REFUSED))
    assert "pair_refused" in await audit_kinds(server, "oven-a")
    assert not any(isinstance(ev, PairEstablished) for ev in b.events)

    view = await allow(server, "oven-a", "oven-b")
    assert view["allowed"] and view["status"] == "none"
    await a.request("oven-b", E2E)
    await a.until(established("oven-b"))
    await b.until(established("oven-a"))

    mark_a, mark_b = len(a.events), len(b.events)
    view = await allow(server, "oven-b", "oven-a", allowed=False)
    assert not view["allowed"] and view["status"] == "closed"
    await a.until(closed_with(PairCause.CLOSED), mark_a)
    await b.until(closed_with(PairCause.CLOSED), mark_b)
    with pytest.raises(LocalProtocolError):
        a.pairs.send("oven-b", b"still there?")
    for kind in ("pair_allowed", "pair_denied", "pair_closed"):
        assert kind in await audit_kinds(server, "oven-a")

    mark = len(a.events)
    await a.request("oven-b", E2E)
    await a.until(closed_with(PairCause.REFUSED), mark)


async def test_admin_cannot_pair_a_device_with_itself(server: Server) -> None:
    r = await server.admin.post("/v1/admin/pairs/allow", json={"a": "oven-a", "b": "oven-a"})
    assert r.status_code == 422
    r = await server.admin.post("/v1/admin/pairs/allow", json={"a": "oven a", "b": "oven-b"})
    assert r.status_code == 422
    assert (await server.admin.get("/v1/admin/pairs")).json() == []


# -- bad pair frames -------------------------------------------------------------------------


async def test_replayed_tampered_and_stale_pair_frames_are_rejected(server: Server) -> None:
    a, b = await paired(server, E2E)
    await a.send_pair("oven-b", b"one")
    await b.until(data_from("oven-a", b"one"))

    # The next frame, taken from the pair core before the endpoint sends it.
    a.pairs.core.send("oven-b", b"two")
    msg = a.pairs.core.messages_to_send()[0]
    assert isinstance(msg, PairData)
    await a.send_raw_pair(msg)
    await b.until(data_from("oven-a", b"two"))

    # The same frame again (a replay through the server): refused by the receiver.
    mark = len(b.events)
    await a.send_raw_pair(msg)
    rejected = await b.until(lambda ev: isinstance(ev, PairRejected), mark)
    assert rejected.code is ErrorCode.BAD_SEQUENCE
    # A later sequence number with a flipped ciphertext byte: does not authenticate.
    forged = replace(msg, seq=msg.seq + 5, ct=bytes([msg.ct[0] ^ 1]) + msg.ct[1:])
    mark = len(b.events)
    await a.send_raw_pair(forged)
    rejected = await b.until(lambda ev: isinstance(ev, PairRejected), mark)
    assert rejected.code is ErrorCode.AUTH_FAILED
    # Reflected back at its sender (the server relays b's frames to a): wrong direction.
    mark = len(a.events)
    await b.send_raw_pair(replace(msg, seq=msg.seq + 7))
    rejected = await a.until(lambda ev: isinstance(ev, PairRejected), mark)
    assert rejected.code is ErrorCode.AUTH_FAILED
    # The traffic goes on: nothing above moved the receiver's sequence state forward.
    await a.send_pair("oven-b", b"three")
    await b.until(data_from("oven-a", b"three"))
    # A frame under an epoch the server does not have in use is stopped at the server.
    mark = len(a.events)
    await a.send_raw_pair(replace(msg, epoch=9, seq=100))
    await a.until(closed_with(PairCause.STALE), mark)


# -- revocation, re-registration, an offline peer ---------------------------------------------


async def test_revocation_and_re_registration_kill_the_pair(server: Server) -> None:
    a, b = await paired(server, RELAY)
    old = a.pairs.core.pair_of("oven-b")
    assert old is not None
    mark = len(a.events)
    r = await server.admin.post("/v1/admin/devices/oven-b/revoke")
    assert r.status_code == 200, r.text
    await a.until(closed_with(PairCause.CLOSED), mark)
    assert a.pairs.core.pair_of("oven-b") is None
    view = await pair_view(server, "oven-a", "oven-b", lambda v: v["status"] == "closed")
    assert view["allowed"]  # the policy stays; the keys do not
    store: Any = server.rt.store
    row = await store.load_pair("oven-a", "oven-b")
    assert row.material is None and row.seed is None  # nothing secret stays in the row
    assert "pair_closed" in await audit_kinds(server, "oven-b")

    # A revoked peer: refused.
    mark = len(a.events)
    await a.request("oven-b", RELAY)
    await a.until(closed_with(PairCause.REFUSED), mark)

    # Re-registered and enrolled again: a new chain, with a new pair ID, not the old keys.
    await b.close()
    b2 = PairDevice(await server.provision("oven-b"))
    await b2.connect()
    await b2.until(lambda ev: isinstance(ev, SeedStored) and ev.epoch > 1)
    await server.wait_for("oven-b", lambda v: v["online"] and not v["owed_206"])
    await a.request("oven-b", RELAY)
    await a.until(established("oven-b"), mark)
    await b2.until(established("oven-a"))
    new = a.pairs.core.pair_of("oven-b")
    assert new is not None and new[0] != old[0] and new[1] > old[1]
    await a.send_pair("oven-b", b"welcome back")
    await b2.until(data_from("oven-a", b"welcome back"))


async def test_offline_peer_gets_its_502_at_its_next_connection(server: Server) -> None:
    a, b = await enrolled(server, "oven-a"), await enrolled(server, "oven-b")
    await allow(server, "oven-a", "oven-b")
    await b.close()
    await server.wait_for("oven-b", lambda v: not v["online"])
    await a.request("oven-b", E2E)
    view = await pair_view(server, "oven-a", "oven-b", lambda v: v["status"] == "offered")
    assert view["epoch"] == 1
    # The peer is offline: pair data cannot be relayed yet (and a holds no key anyway).
    with pytest.raises(LocalProtocolError):
        a.pairs.send("oven-b", b"hello?")

    await b.connect()  # its 506 brings the owed 502; its 503 completes the exchange
    await b.until(established("oven-a", 1))
    await a.until(established("oven-b", 1))
    await a.send_pair("oven-b", b"hello")
    await b.until(data_from("oven-a", b"hello"))

    await b.close()
    await server.wait_for("oven-b", lambda v: not v["online"])
    mark = len(a.events)
    await a.send_pair("oven-b", b"anyone?")
    await a.until(closed_with(PairCause.UNDELIVERED), mark)


# -- the device agent -------------------------------------------------------------------------


async def test_two_device_agents_talk_end_to_end(server: Server, tmp_path: Path) -> None:
    """The real agent loop carries the pair messages (attach_pairs): 506 at each connection,
    501-504 through the server, data both ways."""
    keys = (await server.admin.get("/v1/admin/keys")).json()
    server_key = bytes.fromhex(next(k for k in keys if k["suite"] == "hpke-x25519")["public_key"])
    agents: dict[str, tuple[DeviceAgent, PairEndpoint]] = {}
    tasks = []
    for device_id in ("oven-a", "oven-b"):
        r = await server.register(device_id, setup_code="12345678")
        assert r.status_code == 201, r.text
        cfg = DeviceAgentConfig(
            id=device_id,
            server=server.device_url,
            keystore=tmp_path / f"{device_id}.ks",
            backoff_initial=0.05,
            backoff_max=0.2,
        )
        store = KeystoreFile(cfg.keystore)
        ks = new_keystore(
            device_id=device_id,
            suite="hpke-x25519",
            server_key=server_key,
            install_secret=os.urandom(32),
            setup_code="12345678",
        )
        store.create(ks)
        agent = DeviceAgent(cfg, store, ks)
        pairs = PairEndpoint(device_id)
        agent.attach_pairs(pairs)
        agents[device_id] = (agent, pairs)
        tasks.append(asyncio.create_task(agent.run()))
    try:
        for device_id in agents:
            await server.wait_for(device_id, lambda v: v["online"] and not v["owed_206"])
        await allow(server, "oven-a", "oven-b")
        (_, pa), (_, pb) = agents["oven-a"], agents["oven-b"]
        pa.request("oven-b", E2E)
        await until_event(pb, established("oven-a", 1))
        await until_event(pa, established("oven-b", 1))
        pa.send("oven-b", b"start defrosting")
        await until_event(pb, data_from("oven-a", b"start defrosting"))
        pb.send("oven-a", b"defrosting")
        await until_event(pa, data_from("oven-b", b"defrosting"))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_event(pairs: PairEndpoint, pred: Callable[[Event], bool]) -> Event:
    for _ in range(500):
        for ev in pairs.events:
            if pred(ev):
                return ev
        pairs.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pairs.changed.wait(), 0.05)
    raise AssertionError(f"no such pair event; got {pairs.events}")


# -- two server processes on one PostgreSQL ---------------------------------------------------


async def _start_again(data: Path, schema: str, token: str) -> Server:
    """A second server on the same data folder and schema (another process, in the model)."""
    config = ServerConfig(data=data, host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    found = open_data_dir(data, config.suites)
    store = await open_store(PG_URL, found.master_key, schema=schema)
    running = await start_server(config, app=EchoApp(), secrets=found, store=store)
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.admin_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return Server(running=running, token=token, admin=admin, data=data)


@pytest.fixture
async def two_servers(tmp_path: Path, pg_schema: str) -> AsyncIterator[tuple[Server, Server]]:
    await pg_execute(f'DROP SCHEMA "{pg_schema}" CASCADE')
    await pg_execute(f'CREATE SCHEMA "{pg_schema}"')
    first = await start_at(tmp_path / "data", schema=pg_schema)
    second = await _start_again(tmp_path / "data", pg_schema, first.token)
    yield first, second
    for srv in (second, first):
        await srv.admin.aclose()
        await srv.running.stop()


@pytest.mark.parametrize("mode", [RELAY, E2E])
async def test_pair_across_two_server_processes(
    two_servers: tuple[Server, Server], mode: str
) -> None:
    """oven-a on one server, oven-b on the other, one PostgreSQL: the 502s and the 504s cross
    over the notify bus; a 504 too large for a notification is UNDELIVERED."""
    one, two = two_servers
    a = await enrolled(one, "oven-a")
    b = PairDevice(await two.install("oven-b"))
    r = await one.register("oven-b", setup_code="12345678")
    assert r.status_code == 201, r.text
    await b.connect()
    await b.until(lambda ev: isinstance(ev, SeedStored) and ev.epoch == 1)
    assert "oven-b" in two.rt.hub and "oven-b" not in one.rt.hub
    await allow(two, "oven-a", "oven-b")

    await a.request("oven-b", mode)
    await b.until(established("oven-a", 1))
    await a.until(established("oven-b", 1))
    await a.send_pair("oven-b", b"across")
    await b.until(data_from("oven-a", b"across"))
    await b.send_pair("oven-a", b"and back")
    await a.until(data_from("oven-b", b"and back"))

    mark = len(a.events)
    await a.send_pair("oven-b", bytes(8000))
    await a.until(closed_with(PairCause.UNDELIVERED), mark)

    # deny-pair through one process closes the pair on the device the other one holds.
    mark = len(b.events)
    await allow(one, "oven-a", "oven-b", allowed=False)
    await b.until(closed_with(PairCause.CLOSED), mark)
