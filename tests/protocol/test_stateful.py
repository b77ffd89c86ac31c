"""No bricking, by random fault schedules (DESIGN.md section 4, rules 1-6; section 5).

A Hypothesis :class:`RuleBasedStateMachine` runs one device and the server, both cores real,
over an in-memory link that drops, duplicates and reorders frames, delivers frames of dead
connections late (the model's OVERLAP), replays old frames, crashes either side, lets timers
fire (handshake, response, S27) and starts rekeys (at the device, by proxy, by policy). After
every step it checks the model's safety properties (``model/README.md``):

* keys (INV_STRONG): the device's key is the server's, or the device holds the server's
  previous key together with a pending key equal to the server's current one (rule 2), or a
  keyless device holds the server's key among its enrolment candidates;
* AGREE: the device promotes only keys the server committed, and the server never commits a
  key the device dropped as "not committed";
* no seed is consumed twice, every rekey consumes the seed the server issued, and every
  issued seed is fresh;
* epochs never decrease on either side; no connection ever closes with INTERNAL.

When the faults stop, a bounded number of reconnects brings the pair to FULLCONV: one key,
nothing pending, nothing owed, no previous key left, and the device holds the seed the server
issued; and the pair can still rekey.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyseed.loopback import Clock, DeviceDisk, MemoryStore, make_context, provision, pump_server
from keyseed.protocol import admin
from keyseed.protocol.constants import (
    HANDSHAKE_TIMEOUT,
    MAX_CANDIDATES,
    RESPONSE_TIMEOUT,
    S27_TIMEOUT,
)
from keyseed.protocol.device import DeviceProtocol
from keyseed.protocol.errors import ErrorCode, KeyseedError
from keyseed.protocol.events import ConnectionClosed, Event, PersistState, StoreRecord
from keyseed.protocol.messages import Close, MsgType, decode_frame
from keyseed.protocol.policy import RekeyPolicy
from keyseed.protocol.records import DeviceRecord, Keystore
from keyseed.protocol.server import ServerContext, ServerProtocol

DEVICE_ID = "oven-1"
#: Small limits, so that application data and time start rekeys by themselves.
POLICY = RekeyPolicy(soft_messages=5, hard_messages=8, soft_age_s=400, hard_age_s=10**6)
#: Steps of the clock: below and past every deadline (handshake 5 s, response 15 s, S27 30 s).
TIME_STEPS = (1.0, HANDSHAKE_TIMEOUT + 1, RESPONSE_TIMEOUT + 1, S27_TIMEOUT + 1, 45.0)

STATEFUL = settings(
    max_examples=int(os.environ.get("KEYSEED_STATEFUL_EXAMPLES", "100")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Drbg:
    """Deterministic entropy, so that a failing schedule replays (and shrinks) exactly."""

    def __init__(self, seed: bytes) -> None:
        self._state = hashlib.sha256(seed).digest()

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self._state = hashlib.sha256(self._state).digest()
            out += self._state
        return out[:n]


# -- the durable state, watched --------------------------------------------------------


class Ghost:
    """What the model calls ghost state: every key the server committed, every key the device
    dropped as not committed, every seed issued and consumed. The store and the disk report
    each durable change here, and each report is checked at once."""

    def __init__(self) -> None:
        self.committed: set[bytes] = set()
        self.dropped: set[bytes] = set()
        self.promoted: set[bytes] = set()
        self.issued: set[bytes] = set()
        self.consumed: set[bytes] = set()

    def server_wrote(self, old: DeviceRecord | None, new: DeviceRecord) -> None:
        if old is None:
            return
        assert new.epoch >= old.epoch, "the server's epoch went down"
        if new.seed is not None and (old.seed is None or new.seed.seed_id != old.seed.seed_id):
            assert new.seed.seed_id not in self.issued, "a seed id was issued twice"
            self.issued.add(new.seed.seed_id)
        if new.key is not None and new.key != old.key:
            # A commit (S28): it consumes the pending exchange's seed.
            assert new.epoch > old.epoch, "a commit that does not advance the epoch"
            p = old.pending
            assert p is not None and p.key == new.key, "a commit of no pending exchange"
            assert p.seed_id not in self.consumed, "a seed consumed twice"
            if not p.enrol:
                assert old.seed is not None and old.seed.seed_id == p.seed_id, (
                    "a rekey that did not consume the seed the server issued"
                )
            self.consumed.add(p.seed_id)
            assert new.key.raw not in self.dropped, (
                "AGREE: the server committed a key the device had dropped"
            )
            self.committed.add(new.key.raw)

    def device_wrote(self, old: Keystore, new: Keystore) -> None:
        assert new.epoch >= old.epoch, "the device's epoch went down"
        if new.key is not None and new.key != old.key:
            assert new.key.raw in self.committed, (
                "AGREE: the device promoted a key the server never committed"
            )
            self.promoted.add(new.key.raw)
        kept = {k.key.raw for k in (new.pending, *new.candidates) if k is not None}
        for gone in (old.pending, *old.candidates):
            if gone is None or gone.key.raw in kept or gone.key == new.key:
                continue
            assert gone.key.raw not in self.committed, (
                "AGREE: the device dropped a key the server had committed"
            )
            self.dropped.add(gone.key.raw)


class WatchedStore(MemoryStore):
    """The server's database, reporting every committed write to the ghost state."""

    def __init__(self, records: dict[str, DeviceRecord], ghost: Ghost) -> None:
        super().__init__(records=dict(records))
        self.ghost = ghost

    def cas(self, event: StoreRecord) -> bool:
        old = self.records.get(event.record.device_id)
        ok = super().cas(event)
        if ok:
            self.ghost.server_wrote(old, event.record)
        return ok

    def put(self, record: DeviceRecord, expected_version: int | None) -> bool:
        old = self.records.get(record.device_id)
        ok = super().put(record, expected_version)
        if ok:
            self.ghost.server_wrote(old, record)
        return ok


class WatchedDisk(DeviceDisk):
    """The device's keystore file, reporting every write to the ghost state."""

    def __init__(self, keystore: Keystore, ghost: Ghost) -> None:
        super().__init__(keystore)
        self.ghost = ghost

    def commit(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, PersistState):
                self.ghost.device_wrote(self.keystore, ev.keystore)
        super().commit(events)


# -- the network -----------------------------------------------------------------------


class Conn:
    """One connection: the device's core, the server's core, a queue each way."""

    def __init__(self, device: DeviceProtocol, server: ServerProtocol) -> None:
        self.device = device
        self.server = server
        self.to_server: list[bytes] = []
        self.to_device: list[bytes] = []


class Net:
    """The device, the server, the link between them, and connections that died but whose
    frames may still reach a server process (OVERLAP)."""

    def __init__(self, start: str, seed: bytes) -> None:
        t = templates()
        self.ghost = Ghost()
        rec = t.enrolled_record if start == "enrolled" else t.registered_record
        ks = t.enrolled_keystore if start == "enrolled" else t.keyless_keystore
        if start == "enrolled":
            assert rec.key is not None
            self.ghost.committed.add(rec.key.raw)
            self.ghost.promoted.add(rec.key.raw)
            if rec.seed is not None:
                self.ghost.issued.add(rec.seed.seed_id)
        self.ctx = t.ctx
        self.store = WatchedStore({DEVICE_ID: rec}, self.ghost)
        self.disk = WatchedDisk(ks, self.ghost)
        self.clock = Clock(t.now)
        self.entropy = Drbg(seed)
        self.live: Conn | None = None
        #: Server cores of dead connections, with the frames still on their way to them.
        self.stale: list[tuple[ServerProtocol, list[bytes]]] = []
        #: Every frame the device ever sent (for replays).
        self.device_frames: list[bytes] = []
        #: Every frame the server ever sent.
        self.server_frames: list[bytes] = []

    # -- drivers: durable events first, then messages ---------------------------------

    def flush_device(self, conn: Conn) -> None:
        events = conn.device.events_received()
        self.disk.commit(events)
        _no_internal(events)
        out = conn.device.messages_to_send()
        self.device_frames += out
        conn.to_server += out

    def flush_server(self, server: ServerProtocol, queue: list[bytes] | None) -> None:
        events = pump_server(server, self.store, self.clock)
        _no_internal(events)
        out = server.messages_to_send()
        self.server_frames += out
        if queue is not None:
            queue += out

    # -- connections ------------------------------------------------------------------

    def connect(self, keystore: Keystore | None = None) -> Conn:
        now = self.clock.now
        device = DeviceProtocol(keystore or self.disk.keystore, now=now, entropy=self.entropy)
        conn = Conn(device, ServerProtocol(self.ctx, now=now, entropy=self.entropy))
        self.live = conn
        device.connect(now)
        self.flush_device(conn)
        return conn

    def lose(self, *, late: bool) -> None:
        """The live connection dies. Its frames to the device are lost; its frames to the
        server are lost too, or (``late``) still reach that server process afterwards."""
        conn = self.live
        if conn is None:
            return
        self.live = None
        conn.device.receive_eof()
        self.flush_device(conn)
        if late and conn.to_server:
            self.stale.append((conn.server, list(conn.to_server)))
        else:
            conn.server.receive_eof()
            self.flush_server(conn.server, None)

    def end_stale(self) -> None:
        for server, _ in self.stale:
            server.receive_eof()
            self.flush_server(server, None)
        self.stale.clear()

    def to_server(self, conn: Conn) -> None:
        conn.server.receive_message(conn.to_server.pop(0), self.clock.now)
        self.flush_server(conn.server, conn.to_device)

    def to_device(self, conn: Conn) -> None:
        conn.device.receive_message(conn.to_device.pop(0), self.clock.now)
        self.flush_device(conn)

    def run(self, max_steps: int = 200) -> None:
        """Deliver in order, both ways, until nothing is in flight."""
        conn = self.live
        assert conn is not None
        for _ in range(max_steps):
            if not (conn.to_server or conn.to_device):
                return
            if conn.to_server:
                self.to_server(conn)
            if conn.to_device:
                self.to_device(conn)
        raise AssertionError("the link did not settle")

    def fire_timers(self) -> None:
        now = self.clock.now
        if self.live is not None:
            self.live.device.handle_timer(now)
            self.flush_device(self.live)
            self.live.server.handle_timer(now)
            self.flush_server(self.live.server, self.live.to_device)
        for server, _ in self.stale:
            server.handle_timer(now)
            self.flush_server(server, None)

    def connect_after_faults(self) -> Conn:
        """A clean connection: everything in flight, late frames included, is gone."""
        self.lose(late=False)
        self.end_stale()
        return self.connect()

    @property
    def record(self) -> DeviceRecord:
        return self.store.records[DEVICE_ID]


def _no_internal(events: list[Event]) -> None:
    for ev in events:
        if isinstance(ev, ConnectionClosed):
            assert ev.code is not ErrorCode.INTERNAL, ev


# -- starting points, made once ----------------------------------------------------------


class Templates:
    """A registered device (keyless) and the same device enrolled: provisioning runs scrypt
    twice, so it is done once and every example starts from copies (records are frozen)."""

    def __init__(self) -> None:
        self.ctx: ServerContext = make_context(("hpke-x25519",))
        store, clock = MemoryStore(), Clock()
        disk = provision(self.ctx, store, clock, DEVICE_ID, window_s=7 * 24 * 3600, policy=POLICY)
        self.now = clock.now
        self.registered_record = store.records[DEVICE_ID]
        self.keyless_keystore = disk.keystore
        device = DeviceProtocol(disk.keystore, now=clock.now)
        server = ServerProtocol(self.ctx, now=clock.now)
        device.connect(clock.now)
        to_server, to_device = device.messages_to_send(), []
        while to_server or to_device:
            for data in to_server:
                server.receive_message(data, clock.now)
                pump_server(server, store, clock)
            to_server, to_device = [], to_device + server.messages_to_send()
            for data in to_device:
                device.receive_message(data, clock.now)
                disk.commit(device.events_received())
            to_device, to_server = [], device.messages_to_send()
        self.enrolled_record = store.records[DEVICE_ID]
        self.enrolled_keystore = disk.keystore
        assert self.enrolled_keystore.key == self.enrolled_record.key is not None
        assert self.enrolled_keystore.policy == POLICY and not self.enrolled_record.owed_206


@functools.cache
def templates() -> Templates:
    return Templates()


# -- the machine -------------------------------------------------------------------------

DIRECTIONS = st.sampled_from(("to_server", "to_device"))
INDEX = st.integers(0, 7)


class KeyseedMachine(RuleBasedStateMachine):
    """One device and the server under faults; see the module docstring."""

    start = "enrolled"

    def __init__(self) -> None:
        super().__init__()
        self.net = Net(self.start, seed=b"stateful")
        self.net.connect()
        self.max_epoch_device = self.net.disk.keystore.epoch
        self.max_epoch_server = self.net.record.epoch
        self.initial_keys = len(self.net.ghost.committed)
        # False while a step runs; teardown checks convergence only after a clean run.
        self.healthy = True

    def _queue(self, direction: str) -> list[bytes]:
        conn = self.net.live
        assert conn is not None
        return conn.to_server if direction == "to_server" else conn.to_device

    def _has(self, direction: str) -> bool:
        return self.net.live is not None and bool(self._queue(direction))

    def _begin(self) -> None:
        self.healthy = False

    # -- delivery and link faults ---------------------------------------------------------

    @precondition(lambda self: self.net.live is not None)
    @rule(direction=DIRECTIONS)
    def deliver(self, direction: str) -> None:
        self._begin()
        conn = self.net.live
        assert conn is not None
        if direction == "to_server" and conn.to_server:
            self.net.to_server(conn)
        elif direction == "to_device" and conn.to_device:
            self.net.to_device(conn)

    @precondition(lambda self: self.net.live is not None)
    @rule(n=st.sampled_from((1, 1, 2, 3, 5, 8, 12)))
    def deliver_in_order(self, n: int) -> None:
        """A stretch of normal service: up to ``n`` frames delivered in order, both ways."""
        self._begin()
        conn = self.net.live
        assert conn is not None
        for _ in range(n):
            if conn.to_server:
                self.net.to_server(conn)
            if conn.to_device:
                self.net.to_device(conn)

    @precondition(lambda self: self.net.live is not None)
    @rule(
        fault=st.sampled_from(("drop", "duplicate", "reorder", "replay")),
        direction=DIRECTIONS,
        i=st.integers(0, 10_000),
    )
    def link_fault(self, fault: str, direction: str, i: int) -> None:
        """Drop, duplicate or swap a frame in flight, or replay a frame of any earlier
        connection into the live one (an attacker)."""
        self._begin()
        queue = self._queue(direction)
        if fault == "replay":
            frames = self.net.device_frames if direction == "to_server" else self.net.server_frames
            if frames:
                queue.append(frames[i % len(frames)])
        elif fault == "drop" and queue:
            del queue[i % len(queue)]
        elif fault == "duplicate" and queue:
            i %= len(queue)
            queue.insert(i + 1, queue[i])
        elif fault == "reorder" and len(queue) >= 2:
            i %= len(queue) - 1
            queue[i], queue[i + 1] = queue[i + 1], queue[i]

    @rule(i=st.integers(0, 10_000))
    def replayed_hello_on_own_connection(self, i: int) -> None:
        """An attacker replays one of the device's HELLOs on a connection of its own; it
        gets a HELLO_ACK it cannot use and never sends FIN."""
        self._begin()
        hellos = [f for f in self.net.device_frames if decode_frame(f).type is MsgType.HELLO]
        if not hellos:
            return
        server = ServerProtocol(self.net.ctx, now=self.net.clock.now, entropy=self.net.entropy)
        server.receive_message(hellos[i % len(hellos)], self.net.clock.now)
        self.net.flush_server(server, None)
        server.receive_eof()
        self.net.flush_server(server, None)

    @precondition(lambda self: bool(self.net.stale))
    @rule(i=INDEX)
    def deliver_late(self, i: int) -> None:
        """A frame of a dead connection reaches its server process after all (OVERLAP)."""
        self._begin()
        server, queue = self.net.stale[i % len(self.net.stale)]
        server.receive_message(queue.pop(0), self.net.clock.now)
        self.net.flush_server(server, None)
        if not queue:
            self.net.stale.remove((server, queue))

    # -- connection faults ---------------------------------------------------------------

    @rule(
        fault=st.sampled_from(("disconnect", "crash_device", "crash_server")),
        late=st.booleans(),
    )
    def connection_fault(self, fault: str, late: bool) -> None:
        """``disconnect``: both sides lose the connection and the device, still running,
        reconnects. ``crash_device``: the device restarts from its keystore file as last
        written. ``crash_server``: every server process restarts; the database keeps what it
        committed. With ``late``, the dead connection's frames to the server still reach that
        server process afterwards (not after a server crash)."""
        self._begin()
        conn = self.net.live
        keystore = conn.device.keystore if fault == "disconnect" and conn is not None else None
        self.net.lose(late=late and fault != "crash_server")
        if fault == "crash_server":
            self.net.end_stale()
        self.net.connect(keystore)

    @precondition(lambda self: self.net.live is None or self.net.live.device.state.name == "CLOSED")
    @rule()
    def reconnect(self) -> None:
        """The device's connection failed (refusal, timeout, NG): it connects again."""
        self._begin()
        self.net.lose(late=False)
        self.net.connect()

    @rule(seconds=st.sampled_from(TIME_STEPS))
    def advance_time(self, seconds: float) -> None:
        self._begin()
        self.net.clock.advance(seconds)
        self.net.fire_timers()

    # -- what starts an exchange, and traffic ------------------------------------------------

    @precondition(lambda self: self.net.live is not None)
    @rule()
    def request_rekey(self) -> None:
        """301 at the device's setup endpoint."""
        self._begin()
        conn = self.net.live
        assert conn is not None
        if conn.device.state.name != "CLOSED":
            conn.device.request_rekey(self.net.clock.now)
            self.net.flush_device(conn)

    @rule(notify=st.booleans())
    def order_rekey_by_proxy(self, notify: bool) -> None:
        """401 at the server: the order is a flag on the record, written with compare-and-set;
        with ``notify`` the live connection learns of it at once and sends 403."""
        self._begin()
        rec = self.net.record
        try:
            new = admin.order_rekey(rec)
        except admin.AdminError:
            return  # not enrolled yet
        if new is rec:
            return
        assert self.net.store.put(new, rec.version)
        conn = self.net.live
        if notify and conn is not None and conn.server.state.name in ("OPEN", "PENDING_205"):
            now = self.net.clock.now
            conn.server.update_record(new, now, now)
            assert new.order_epoch is not None
            # If the connection was fenced meanwhile, the next connection's FIN carries it.
            with contextlib.suppress(KeyseedError):
                conn.server.order_rekey(new.order_epoch, now)
            self.net.flush_server(conn.server, conn.to_device)

    @precondition(lambda self: self.net.live is not None)
    @rule(from_device=st.booleans(), ping=st.booleans())
    def send(self, from_device: bool, ping: bool) -> None:
        """Application data (which counts toward the policy) or a 207 ping."""
        self._begin()
        conn = self.net.live
        assert conn is not None
        now = self.net.clock.now
        core: DeviceProtocol | ServerProtocol = conn.device if from_device else conn.server
        try:
            if ping:
                core.ping(now)
            else:
                core.send_app(b"hello", now)
        except KeyseedError:
            return  # not open, or past a limit: the API refuses, nothing is sent
        if from_device:
            self.net.flush_device(conn)
        else:
            self.net.flush_server(conn.server, conn.to_device)

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def safety(self) -> None:
        ks, rec = self.net.disk.keystore, self.net.record
        # INV_STRONG, and for a keyless device: the server's key is one of its candidates.
        assert check_keys(ks, rec), f"keys diverged: {describe(ks, rec)}"
        # Epochs never decrease (also checked at every write, by the ghost state).
        assert ks.epoch >= self.max_epoch_device and rec.epoch >= self.max_epoch_server
        self.max_epoch_device, self.max_epoch_server = ks.epoch, rec.epoch
        # AGREE (also checked at every write).
        g = self.net.ghost
        assert g.promoted <= g.committed
        assert not (g.committed & g.dropped)
        self.healthy = True

    # -- when the faults stop -----------------------------------------------------------------

    def teardown(self) -> None:
        if not self.healthy:
            return  # a step already failed; that failure is the one to report
        g = self.net.ghost
        event(f"keys committed during the run: {min(len(g.committed) - self.initial_keys, 3)}+")
        event(f"keys dropped by the device: {min(len(g.dropped), 2)}+")
        rounds = converge(self.net)
        event(f"reconnects to converge: {rounds}")
        # ... and the pair can still rekey (the seed the device holds is usable).
        epoch = self.net.record.epoch
        conn = self.net.connect_after_faults()
        conn.device.request_rekey(self.net.clock.now)
        self.net.flush_device(conn)
        self.net.run()
        assert self.net.record.epoch == epoch + 1, "the pair cannot rekey any more"
        converge(self.net)


def check_keys(ks: Keystore, rec: DeviceRecord) -> bool:
    if rec.key is None:
        return ks.key is None
    if ks.key is None:
        return any(c.key == rec.key for c in ks.candidates)
    if ks.key == rec.key:
        return True
    return ks.key == rec.prev_key and ks.pending is not None and ks.pending.key == rec.key


def describe(ks: Keystore, rec: DeviceRecord) -> str:
    def name(k: object) -> str:
        return "-" if k is None else k.key_id.hex()[:8]  # type: ignore[attr-defined]

    return (
        f"device epoch={ks.epoch} key={name(ks.key)} "
        f"pending={name(ks.pending and ks.pending.key)} "
        f"candidates={[name(c.key) for c in ks.candidates]} seed="
        f"{ks.seed and ks.seed.seed_id.hex()[:8]}; server epoch={rec.epoch} key={name(rec.key)} "
        f"prev={name(rec.prev_key)} pending={name(rec.pending and rec.pending.key)} "
        f"owed_206={rec.owed_206} seed={rec.seed and rec.seed.seed_id.hex()[:8]}"
    )


def converged(net: Net) -> bool:
    """FULLCONV: one key, nothing pending or owed, no previous key, and the device holds the
    seed the server issued (so its next 203 can be accepted)."""
    ks, rec = net.disk.keystore, net.record
    return (
        rec.key is not None
        and ks.key == rec.key
        and ks.epoch == rec.epoch
        and ks.pending is None
        and not ks.candidates
        and rec.pending is None
        and rec.prev_key is None
        and not rec.owed_206
        and ks.seed is not None
        and rec.seed is not None
        and ks.seed.seed_id == rec.seed.seed_id
        and ks.seed.r0 == rec.seed.r0
        and ks.seed.otk == rec.seed.otk_public
    )


def converge(net: Net, rounds: int = 6) -> int:
    """Faults have stopped: reconnect and deliver everything, letting timers fire between
    rounds, until FULLCONV holds; fail if it does not within ``rounds``."""
    for n in range(1, rounds + 1):
        net.connect_after_faults()
        net.run()
        if converged(net) and net.live is not None and net.live.device.state.name == "OPEN":
            return n
        net.clock.advance(S27_TIMEOUT + 1)
        net.fire_timers()
        if net.live is not None and net.live.device.state.name != "CLOSED":
            net.run()
            if converged(net):
                return n
    raise AssertionError(
        f"no convergence after {rounds} reconnects: {describe(net.disk.keystore, net.record)}"
    )


class EnrolmentMachine(KeyseedMachine):
    """The same faults from the first enrolment on: a keyless device inside its window."""

    start = "keyless"


TestNoBrickingEnrolled = KeyseedMachine.TestCase
TestNoBrickingEnrolled.settings = STATEFUL
TestNoBrickingFromEnrolment = EnrolmentMachine.TestCase
TestNoBrickingFromEnrolment.settings = STATEFUL


# -- the model's counterexamples, as regression tests (model/traces/) ----------------------
#
# Random schedules rarely hit these exact interleavings, so each is also spelled out. Every
# write still goes through the ghost checks above, and each test ends with ``converge``.


def _open(start: str = "enrolled") -> tuple[Net, Conn]:
    net = Net(start, seed=b"regression")
    conn = net.connect()
    net.run()
    return net, conn


def _rekey_until_205(net: Net, conn: Conn) -> None:
    """203 -> 204 -> 205: the 205 is in flight to the server."""
    conn.device.request_rekey(net.clock.now)
    net.flush_device(conn)
    net.to_server(conn)  # 203
    net.to_device(conn)  # 204 OK
    assert decode_frame(conn.to_server[0]).type is MsgType.M205


def test_seed_survives_two_lost_206() -> None:
    """design_full_att1: the 206 is lost, the device promotes on HELLO_ACK, the re-sent 206
    is lost too; the device must still end with the seed the server issued (rule 3)."""
    net, conn = _open()
    _rekey_until_205(net, conn)
    net.to_server(conn)  # 205: commit, 206 owed
    net.lose(late=False)  # fault 1: the 206 is lost
    conn = net.connect()
    net.to_server(conn)  # HELLO(prev, pending): rule 2
    net.to_device(conn)  # HELLO_ACK proves the new key: promoted, no seed
    assert net.disk.keystore.key == net.record.key and net.disk.keystore.seed is None
    net.to_server(conn)  # FIN: the owed 206 goes out again
    net.lose(late=False)  # fault 2: the re-sent 206 (and the SEED_REQUEST) are lost
    assert net.record.owed_206
    converge(net)


def test_late_205_after_hello_ack_commits_nothing() -> None:
    """rev2_overlap: a 205 of a dead connection reaches the server after the new
    connection's HELLO_ACK told the device its pending key was not committed (rule 1,
    CANCEL); committing it would strand the device on the server's previous key."""
    net, conn = _open()
    _rekey_until_205(net, conn)
    dropped = net.disk.keystore.pending
    net.lose(late=True)  # the 205 is still on its way to the old server process
    conn = net.connect()
    net.to_server(conn)  # HELLO(cur, pending) -> HELLO_ACK(cur); the exchange is cancelled
    net.to_device(conn)  # the device drops the pending key
    assert dropped is not None and dropped.key.raw in net.ghost.dropped
    server, late = net.stale.pop()
    server.receive_message(late.pop(0), net.clock.now)
    net.flush_server(server, None)
    assert server.state.name == "CLOSED" and net.record.key != dropped.key
    net.run()
    converge(net)


def test_205_after_s27_is_refused_and_settles() -> None:
    """IGN205: S27 fires before the 205 arrives; the 205 gets a refusal (rule 5), and the
    next HELLO_ACK settles the pending key."""
    net, conn = _open()
    _rekey_until_205(net, conn)
    net.clock.advance(S27_TIMEOUT + 1)
    conn.server.handle_timer(net.clock.now)
    net.flush_server(conn.server, conn.to_device)
    net.to_server(conn)  # the 205, too late
    assert conn.server.state.name == "CLOSED"
    net.run()
    assert conn.device.state.name == "CLOSED"
    assert net.disk.keystore.pending is not None  # a refusal is only a hint
    converge(net)


def test_forged_close_before_206_changes_nothing() -> None:
    """OLDHINT: after the commit, an attacker's CLOSE (unauthenticated) reaches the device
    ahead of the 206; the device must keep its pending key, which the server committed."""
    net, conn = _open()
    _rekey_until_205(net, conn)
    net.to_server(conn)  # 205: commit
    conn.to_device.insert(0, Close(code=int(ErrorCode.EXCHANGE_EXPIRED)).encode())
    net.to_device(conn)
    assert conn.device.state.name == "CLOSED"
    assert net.disk.keystore.pending is not None
    assert net.disk.keystore.pending.key == net.record.key
    converge(net)


def test_replayed_203_and_205_do_not_commit_a_dropped_key() -> None:
    """NOBIND: after the device dropped its pending key on HELLO_ACK, the old 203 and 205
    are replayed into its new connection; they fail there (sealed under another connection's
    keys) and commit nothing."""
    net, conn = _open()
    _rekey_until_205(net, conn)
    old_203, old_205 = [
        f for f in net.device_frames if decode_frame(f).type in (MsgType.M203, MsgType.M205)
    ][-2:]
    net.lose(late=False)
    conn = net.connect()
    net.to_server(conn)
    net.to_device(conn)  # pending dropped
    net.to_server(conn)  # FIN
    conn.to_server[:0] = [old_203, old_205]
    net.to_server(conn)
    assert conn.server.state.name == "CLOSED"
    assert not (net.ghost.committed & net.ghost.dropped)
    converge(net)


def test_late_enrolment_205_for_a_forgotten_candidate() -> None:
    """First enrolment with late frames (OVERLAP): the first attempt's 205 is still on its way
    when the device makes MAX_CANDIDATES more attempts whose 203s are lost. The device keeps
    only the newest MAX_CANDIDATES candidates; when the late 205 then commits the first one,
    the window closes on a key the device no longer holds, and the device can never enrol
    (DESIGN.md section 4, rule 1: keep every candidate until the server proves one)."""
    net = Net("keyless", seed=b"regression")
    conn = net.connect()
    net.to_server(conn)  # HELLO: unauthenticated HELLO_ACK
    net.to_device(conn)  # enrolment 203
    net.to_server(conn)  # 204 OK: the pending exchange
    net.to_device(conn)  # 205 in flight
    net.lose(late=True)
    for _ in range(MAX_CANDIDATES):
        conn = net.connect()
        net.to_server(conn)
        net.to_device(conn)  # a new candidate and its 203 ...
        conn.to_server.clear()  # ... which is lost
        net.lose(late=False)
    server, late = net.stale.pop()
    server.receive_message(late.pop(0), net.clock.now)
    net.flush_server(server, None)  # AGREE fails here today
    converge(net)
