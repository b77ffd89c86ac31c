"""Replay and tamper (DESIGN.md section 5, invariants 3 and 4): every frame of a real session
is replayed and has each of its bytes flipped; every one is rejected with a typed close and
no stored state changes.

The session runs the two real cores (tests/protocol/helpers.py style, in memory) through
every flow, for each suite: enrolment (HELLO, unauthenticated HELLO_ACK, plain 203, 204 OK,
205, 206, ACK_206), a keyed handshake (HELLO with proofs, HELLO_ACK, FIN), APP both ways,
207 both ways, a rekey (sealed 203-206), a rekey ordered by proxy (403/404), and a rekey
whose 206 is lost (HELLO with the previous and the pending key, SEED_REQUEST, the owed 206).
Each delivery is a *point*. Every test re-runs the session's connection up to a point from
the stored state at that connection's start, then disturbs that point:

* ``flip``: the frame due at the point with one byte XORed with 0xff, every byte of every
  frame (the frame is the one this re-run produces there: the same message, the same size,
  fresh nonces);
* ``duplicate``: the honest frame delivered, then delivered again at once;
* ``late``: the frame delivered again at the end of its own connection;
* ``foreign``: the frame of the original run delivered at the same point of a new
  connection (other nonces), instead of the honest one.

Frames in flight the other way are delivered first; after the disturbance the honest frames
still in flight are delivered until the link is quiet. Then: no core raised or closed with
INTERNAL; the connection was refused (a CLOSE with a typed code, or the 204 NG); the device
record is the one stored before the point (except the enrolment window's failure count,
which a refused enrolment 203 must raise, REVIEW F20) and the keystore holds the same key,
epoch, seed, pending exchange and policy.

Replays on fresh connections at *every* point, with frames of other connections, are in
tests/protocol/test_fuzz.py (``test_cores_survive_every_replayed_frame``); the same over the
real server's WebSocket is in tests/security/test_replay_tamper_server.py.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from helpers import shared_context

from keyseed.loopback import Clock, DeviceDisk, MemoryStore, provision, pump_server
from keyseed.protocol import admin
from keyseed.protocol.device import DeviceProtocol
from keyseed.protocol.errors import ErrorCode
from keyseed.protocol.events import ConnectionClosed, Event, KeyEstablished
from keyseed.protocol.messages import MsgType, decode_frame
from keyseed.protocol.records import DeviceRecord, Keystore
from keyseed.protocol.server import NG_204, ServerContext, ServerProtocol

SUITES = ("hpke-x25519", "hpke-mlkem768-x25519", "rsa-oaep")
DEVICE_ID = "oven-1"

#: The session: connections ("connect"), deliveries until quiet ("run"), and local actions.
#: "drop206" delivers until the next 206 is due at the device and drops it.
SESSION: tuple[str, ...] = (
    *("connect", "run"),  # enrolment 203-206
    *("connect", "run", "app", "run", "ping", "run", "rekey", "run"),  # handshake, APP, 207, rekey
    *("order", "connect", "run"),  # 401 stored: 403 after FIN, 404, 203-206
    *("connect", "run", "rekey", "drop206"),  # a rekey whose 206 is lost
    *("connect", "run"),  # HELLO(prev, pending), SEED_REQUEST, the owed 206
)


# -- a world and a link, as the real drivers run them ------------------------------------


@dataclass
class World:
    """What outlives a connection: the server's store and the device's disk."""

    ctx: ServerContext
    store: MemoryStore
    disk: DeviceDisk
    clock: Clock

    def fork(self) -> World:
        """A copy whose store and disk change independently (records are frozen)."""
        return World(
            self.ctx,
            MemoryStore(records=dict(self.store.records)),
            DeviceDisk(self.disk.keystore),
            Clock(self.clock.now),
        )

    @property
    def record(self) -> DeviceRecord:
        return self.store.records[DEVICE_ID]


@dataclass
class Link:
    """One connection: both cores and the frames in flight, driven like the real drivers
    (durable events first, then messages)."""

    world: World
    device: DeviceProtocol
    server: ServerProtocol
    to_server: deque[bytes] = field(default_factory=deque)
    to_device: deque[bytes] = field(default_factory=deque)
    events: list[Event] = field(default_factory=list)
    #: Every frame delivered, in order, with the side it was delivered to.
    delivered: list[tuple[str, bytes]] = field(default_factory=list)

    @classmethod
    def open(cls, world: World) -> Link:
        now = world.clock.now
        link = cls(
            world, DeviceProtocol(world.disk.keystore, now=now), ServerProtocol(world.ctx, now=now)
        )
        link.device.connect(now)
        link.flush("d")
        return link

    def flush(self, side: str) -> None:
        if side == "d":
            events = self.device.events_received()
            self.world.disk.commit(events)
            self.to_server.extend(self.device.messages_to_send())
        else:
            events = pump_server(self.server, self.world.store, self.world.clock)
            self.to_device.extend(self.server.messages_to_send())
        self.events.extend(events)

    def deliver(self, side: str, data: bytes) -> None:
        core: DeviceProtocol | ServerProtocol = self.device if side == "d" else self.server
        core.receive_message(data, self.world.clock.now)  # never raises
        self.flush(side)
        self.delivered.append((side, data))

    def next_side(self) -> str | None:
        """The side the next delivery goes to (the schedule helpers.Conn.run follows)."""
        if self.to_server:
            return "s"
        if self.to_device:
            return "d"
        return None

    def act(self, action: str) -> None:
        now = self.world.clock.now
        if action == "app":
            self.device.send_app(b"device data", now)
            self.flush("d")
            self.server.send_app(b"server data", now)
            self.flush("s")
        elif action == "ping":
            self.device.ping(now)
            self.flush("d")
            self.server.ping(now)
            self.flush("s")
        elif action == "rekey":
            self.device.request_rekey(now)
            self.flush("d")
        else:  # pragma: no cover - a typo in the session
            raise AssertionError(action)


# -- the session, re-run to any point ----------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One delivery of the original run."""

    conn: int  # index of its connection in the session
    index: int  # deliveries before it on its connection
    side: str  # "s": to the server, "d": to the device
    frame: bytes  # the frame of the original run
    mtype: MsgType


@dataclass(frozen=True)
class Session:
    suite: str
    #: The world at the start of each connection (before "order" for the third).
    starts: tuple[World, ...]
    #: The steps of each connection.
    scripts: tuple[tuple[str, ...], ...]
    points: tuple[Point, ...]


def _split() -> list[tuple[str, ...]]:
    """The session's steps per connection ("order" belongs to the connection it precedes)."""
    scripts: list[list[str]] = []
    pending: list[str] = []
    for step in SESSION:
        if step == "order":
            pending.append(step)
        elif step == "connect":
            scripts.append([*pending, step])
            pending = []
        else:
            scripts[-1].append(step)
    return [tuple(s) for s in scripts]


Hook = Callable[[Link, str], bool]


def run_script(world: World, script: tuple[str, ...], hook: Hook | None = None) -> Link:
    """Run one connection's steps. ``hook(link, side)`` is called before each delivery; if
    it returns True it has taken over, and the run stops there."""
    link: Link | None = None
    for step in script:
        if step == "order":
            rec = world.record
            assert world.store.put(admin.order_rekey(rec), rec.version)
        elif step == "connect":
            link = Link.open(world)
        elif step in ("run", "drop206"):
            assert link is not None
            for _ in range(200):
                side = link.next_side()
                if side is None:
                    break
                queue = link.to_server if side == "s" else link.to_device
                if step == "drop206" and side == "d" and _type(queue[0]) is MsgType.M206:
                    queue.popleft()
                    break
                if hook is not None and hook(link, side):
                    return link
                link.deliver(side, queue.popleft())
            else:  # pragma: no cover - a livelock would be a bug
                raise AssertionError("the link did not settle")
        else:
            assert link is not None
            link.act(step)
    assert link is not None
    return link


def _type(frame: bytes) -> MsgType:
    return decode_frame(frame, max_size=1 << 20).type


@functools.cache
def session(suite: str) -> Session:
    ctx = shared_context()
    store, clock = MemoryStore(), Clock()
    disk = provision(ctx, store, clock, DEVICE_ID, suite=suite)
    world = World(ctx, store, disk, clock)
    starts, points = [], []
    scripts = _split()
    for n, script in enumerate(scripts):
        starts.append(world.fork())
        link = run_script(world, script)
        for i, (side, frame) in enumerate(link.delivered):
            points.append(Point(n, i, side, frame, _type(frame)))
        assert not [e for e in link.events if isinstance(e, ConnectionClosed)], (
            "the honest session must not fail"
        )
    rec, ks = world.record, world.disk.keystore
    assert rec.key == ks.key and rec.epoch == ks.epoch == 4 and not rec.owed_206
    return Session(suite, tuple(starts), tuple(scripts), tuple(points))


ALL_TYPES = {
    MsgType.HELLO,
    MsgType.HELLO_ACK,
    MsgType.FIN,
    MsgType.M203,
    MsgType.M204,
    MsgType.M205,
    MsgType.M206,
    MsgType.ACK_206,
    MsgType.SEED_REQUEST,
    MsgType.M403,
    MsgType.M404,
    MsgType.M207,
    MsgType.APP,
}


# -- the checks -------------------------------------------------------------------------


def _durable(ks: Keystore) -> tuple[object, ...]:
    return (ks.key, ks.epoch, ks.seed, ks.pending, ks.policy, ks.k_code, ks.suite)


def only_window_failures(old: DeviceRecord, new: DeviceRecord) -> bool:
    """``new`` is ``old`` with more failures counted against its window (or it closed)."""
    if old.window is None:
        return False
    a, b = old.to_dict(), new.to_dict()
    wa, wb = a.pop("window"), b.pop("window")
    a.pop("version"), b.pop("version")
    if wb is None:
        return a == b
    return a == b and wb["failures"] > wa["failures"] and {**wb, "failures": wa["failures"]} == wa


@dataclass
class Before:
    record: DeviceRecord
    keystore: Keystore
    events: int
    delivered: int


def snapshot(link: Link) -> Before:
    return Before(
        link.world.record, link.world.disk.keystore, len(link.events), len(link.delivered)
    )


def inject(link: Link, side: str, data: bytes) -> Before:
    """Deliver ``data`` to ``side`` in place of the honest frame; the stored state just
    before it. The frames already in flight the other way are delivered first (the two
    directions are independent streams), so that every later change is one ``data`` caused
    and no frame is lost to the disturbance itself."""
    other = "d" if side == "s" else "s"
    queue = link.to_device if side == "s" else link.to_server
    while queue:
        link.deliver(other, queue.popleft())
    before = snapshot(link)
    link.deliver(side, data)
    return before


def settle(link: Link) -> None:
    """Deliver the honest frames still in flight until the link is quiet."""
    for _ in range(200):
        side = link.next_side()
        if side is None:
            return
        queue = link.to_server if side == "s" else link.to_device
        link.deliver(side, queue.popleft())
    raise AssertionError("the link did not settle")  # pragma: no cover


def assert_refused(link: Link, before: Before, what: str) -> ErrorCode:
    """The disturbance was refused with a typed code and nothing stored changed."""
    new_events = link.events[before.events :]
    closes = [e for e in new_events if isinstance(e, ConnectionClosed)]
    assert all(c.code is not ErrorCode.INTERNAL for c in closes), (what, closes)
    ng = NG_204 in [data for side, data in link.delivered[before.delivered :] if side == "d"]
    assert closes or ng, f"{what}: accepted without a close"
    assert not [e for e in new_events if isinstance(e, KeyEstablished)], what
    rec = link.world.record
    assert rec == before.record or only_window_failures(before.record, rec), (
        f"{what}: the device record changed"
    )
    assert _durable(link.world.disk.keystore) == _durable(before.keystore), (
        f"{what}: the keystore changed"
    )
    return closes[0].code if closes else ErrorCode.NORMAL


def at_point(s: Session, point: Point, disturb: Callable[[Link, Before], None]) -> Link:
    """Re-run ``point``'s connection up to it and hand the link to ``disturb``."""
    world = s.starts[point.conn].fork()
    done: list[Link] = []

    def hook(link: Link, side: str) -> bool:
        if len(link.delivered) != point.index:
            return False
        assert side == point.side
        disturb(link, snapshot(link))
        done.append(link)
        return True

    run_script(world, s.scripts[point.conn], hook)
    assert done, f"point {point} not reached"
    return done[0]


def flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_session_covers_every_message_type(suite: str) -> None:
    s = session(suite)
    assert {p.mtype for p in s.points} == ALL_TYPES
    assert {p.side for p in s.points if p.mtype is MsgType.M203} == {"s"}
    # Both the plain enrolment 203 and the sealed rekey 203 are in the session.
    kinds = {type(decode_frame(p.frame)).__name__ for p in s.points if p.mtype is MsgType.M203}
    assert kinds == {"PlainFrame", "SealedFrame"}


@pytest.mark.parametrize("suite", SUITES)
def test_every_byte_of_every_frame_flipped(suite: str) -> None:
    """Each byte of each frame, XORed with 0xff at its own point of a re-run connection."""
    s = session(suite)
    flips = 0
    codes: set[ErrorCode] = set()
    for point in s.points:
        for i in range(len(point.frame)):

            def disturb(link: Link, _: Before, i: int = i, point: Point = point) -> None:
                queue = link.to_server if point.side == "s" else link.to_device
                honest = queue.popleft()
                assert len(honest) == len(point.frame)
                before = inject(link, point.side, flip(honest, i))
                settle(link)
                codes.add(assert_refused(link, before, f"{point.mtype.name} byte {i}"))

            at_point(s, point, disturb)
            flips += 1
    assert flips == sum(len(p.frame) for p in s.points)
    # The refusals are typed, and more than one kind shows up.
    assert {ErrorCode.MALFORMED, ErrorCode.AUTH_FAILED} <= codes


@pytest.mark.parametrize("suite", SUITES)
def test_every_frame_duplicated_in_its_connection(suite: str) -> None:
    s = session(suite)
    for point in s.points:

        def disturb(link: Link, _: Before, point: Point = point) -> None:
            queue = link.to_server if point.side == "s" else link.to_device
            honest = queue.popleft()
            link.deliver(point.side, honest)
            before = inject(link, point.side, honest)
            settle(link)
            assert_refused(link, before, f"{point.mtype.name} delivered twice")

        at_point(s, point, disturb)


@pytest.mark.parametrize("suite", SUITES)
def test_every_frame_replayed_at_the_end_of_its_connection(suite: str) -> None:
    s = session(suite)
    for n, script in enumerate(s.scripts):
        count = sum(1 for p in s.points if p.conn == n)
        for index in range(count):
            link = run_script(s.starts[n].fork(), script)
            side, frame = link.delivered[index]
            before = inject(link, side, frame)
            settle(link)
            assert_refused(link, before, f"{_type(frame).name} replayed late")


@pytest.mark.parametrize("suite", SUITES)
def test_every_frame_of_the_original_run_replayed_on_a_new_connection(suite: str) -> None:
    """The recorded frame in place of the honest one, at the same point of a new connection
    from the same stored state: what a recording attacker would try first."""
    s = session(suite)
    for point in s.points:

        def disturb(link: Link, _: Before, point: Point = point) -> None:
            queue = link.to_server if point.side == "s" else link.to_device
            honest = queue.popleft()
            assert honest != point.frame, "every frame carries its connection's nonces"
            before = inject(link, point.side, point.frame)
            settle(link)
            assert_refused(link, before, f"recorded {point.mtype.name}")

        at_point(s, point, disturb)
