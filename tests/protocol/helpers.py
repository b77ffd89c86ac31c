"""Test helpers: one device and a server whose connections share one store.

:class:`Net` owns the server context, the store (the database), the clock and the device's
disk. :meth:`Net.connect` opens a connection: a fresh :class:`DeviceProtocol` from the
keystore as last persisted and a fresh :class:`ServerProtocol`, joined by two queues. Old
connections stay around, so a test can deliver their late frames after a newer connection
exists (the model's OVERLAP), drop frames, or replay them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from keyseed.loopback import Clock, DeviceDisk, MemoryStore, make_context, provision, pump_server
from keyseed.protocol import DeviceProtocol, ServerProtocol
from keyseed.protocol.device import DeviceConfig
from keyseed.protocol.events import Event
from keyseed.protocol.policy import DEFAULT_POLICY, RekeyPolicy
from keyseed.protocol.records import DeviceRecord, Keystore
from keyseed.protocol.server import ServerContext

ALL_SUITES = ("hpke-x25519", "hpke-mlkem768-x25519", "rsa-oaep")
_CTX: dict[tuple[str, ...], ServerContext] = {}


def shared_context(suites: tuple[str, ...] = ALL_SUITES) -> ServerContext:
    """Long-term keys are slow to make (RSA-3072): share one context per suite set."""
    if suites not in _CTX:
        _CTX[suites] = make_context(suites)
    return _CTX[suites]


@dataclass
class Conn:
    net: Net
    device: DeviceProtocol
    server: ServerProtocol
    to_server: deque[bytes] = field(default_factory=deque)
    to_device: deque[bytes] = field(default_factory=deque)
    device_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    #: Every frame each side ever sent on this connection (for replay tests).
    sent_by_device: list[bytes] = field(default_factory=list)
    sent_by_server: list[bytes] = field(default_factory=list)

    def flush_device(self) -> None:
        events = self.device.events_received()
        self.net.disk.commit(events)  # durable first
        self.device_events.extend(events)
        out = self.device.messages_to_send()
        self.sent_by_device.extend(out)
        self.to_server.extend(out)

    def flush_server(self) -> None:
        self.server_events.extend(pump_server(self.server, self.net.store, self.net.clock))
        out = self.server.messages_to_send()
        self.sent_by_server.extend(out)
        self.to_device.extend(out)

    def to_s(self, n: int = 1) -> None:
        """Deliver the next ``n`` frames to the server."""
        for _ in range(n):
            self.server.receive_message(self.to_server.popleft(), self.net.clock.now)
            self.flush_server()

    def to_d(self, n: int = 1) -> None:
        """Deliver the next ``n`` frames to the device."""
        for _ in range(n):
            self.device.receive_message(self.to_device.popleft(), self.net.clock.now)
            self.flush_device()

    def run(self, max_steps: int = 1000) -> None:
        for _ in range(max_steps):
            if not self.to_server and not self.to_device:
                return
            if self.to_server:
                self.to_s()
            if self.to_device:
                self.to_d()
        raise AssertionError("connection did not settle")

    def drop_all(self) -> None:
        self.to_server.clear()
        self.to_device.clear()

    def device_do(self, fn: object) -> None:
        fn(self.device, self.net.clock.now)  # type: ignore[operator]
        self.flush_device()

    def server_do(self, fn: object) -> None:
        fn(self.server, self.net.clock.now)  # type: ignore[operator]
        self.flush_server()

    def tick(self, seconds: float) -> None:
        self.net.clock.advance(seconds)
        self.device.handle_timer(self.net.clock.now)
        self.flush_device()
        self.server.handle_timer(self.net.clock.now)
        self.flush_server()

    def event_types(self, side: str) -> list[str]:
        evs = self.device_events if side == "device" else self.server_events
        return [type(e).__name__ for e in evs]


class Net:
    def __init__(
        self,
        *,
        suite: str = "hpke-x25519",
        device_id: str = "oven-1",
        setup_code: str | None = "12345678",
        enrol: bool = True,
        policy: RekeyPolicy = DEFAULT_POLICY,
        config: DeviceConfig | None = None,
        ctx: ServerContext | None = None,
    ) -> None:
        self.ctx = ctx or shared_context()
        self.store = MemoryStore()
        self.clock = Clock()
        self.device_id = device_id
        self.config = config
        self.disk: DeviceDisk = provision(
            self.ctx,
            self.store,
            self.clock,
            device_id,
            suite=suite,
            setup_code=setup_code,
            policy=policy,
        )
        self.conns: list[Conn] = []
        if enrol:
            c = self.connect()
            c.run()
            assert self.ks.epoch == 1 and self.rec.epoch == 1, "enrolment failed"

    def connect(self) -> Conn:
        now = self.clock.now
        dev = DeviceProtocol(self.disk.keystore, now=now, config=self.config)
        srv = ServerProtocol(self.ctx, now=now)
        c = Conn(self, dev, srv)
        self.conns.append(c)
        dev.connect(now)
        c.flush_device()
        return c

    @property
    def ks(self) -> Keystore:
        return self.disk.keystore

    @property
    def rec(self) -> DeviceRecord:
        rec = self.store.load(self.device_id)
        assert rec is not None
        return rec

    def put(self, new: DeviceRecord, expected: DeviceRecord) -> None:
        assert self.store.put(new, expected.version)

    def converged(self) -> bool:
        """The model's FULLCONV: one key, nothing pending, nothing owed, a usable seed."""
        ks, rec = self.ks, self.rec
        return (
            ks.key is not None
            and ks.key == rec.key
            and ks.epoch == rec.epoch
            and ks.pending is None
            and rec.pending is None
            and not rec.owed_206
            and ks.seed is not None
            and rec.seed is not None
            and ks.seed.seed_id == rec.seed.seed_id
        )

    def settle(self, rounds: int = 3) -> Conn:
        """Reconnect and run until converged (the no-operator recovery of DESIGN.md §4)."""
        c = self.connect()
        for _ in range(rounds):
            c.run()
            if self.converged():
                return c
            c = self.connect()
        c.run()
        return c
