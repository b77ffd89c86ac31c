"""keyseed.loopback
~~~~~~~~~~~~~~~~~~

In-memory drivers for the two cores: a dict of device records with compare-and-set
(:class:`MemoryStore`), a manual clock, and :class:`Loopback`, which joins a real
:class:`~keyseed.protocol.device.DeviceProtocol` and a real
:class:`~keyseed.protocol.server.ServerProtocol` through an in-memory link. The benchmark, the
tests and the simulator drive the cores through it exactly as the network drivers do: durable
events first, then messages, then timers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .crypto import get_suite
from .protocol.admin import register
from .protocol.base import Entropy
from .protocol.device import DeviceConfig, DeviceProtocol, new_keystore
from .protocol.events import AuditEntry, Event, PersistState, StoreRecord
from .protocol.policy import DEFAULT_POLICY, RekeyPolicy
from .protocol.records import DeviceRecord, Keystore
from .protocol.server import ServerContext, ServerProtocol


class Clock:
    """A manual monotonic clock; it also stands for the database clock."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class MemoryStore:
    """Device records with compare-and-set on the version, and the audit log."""

    records: dict[str, DeviceRecord] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)

    def load(self, device_id: str) -> DeviceRecord | None:
        return self.records.get(device_id)

    def cas(self, event: StoreRecord) -> bool:
        cur = self.records.get(event.record.device_id)
        if cur is None or cur.version != event.expected_version:
            return False
        self.records[event.record.device_id] = event.record
        self.audit.extend(event.audit)
        return True

    def put(self, record: DeviceRecord, expected_version: int | None) -> bool:
        """Insert (``expected_version`` None) or compare-and-set an admin change."""
        cur = self.records.get(record.device_id)
        if (cur is None) != (expected_version is None):
            return False
        if cur is not None and cur.version != expected_version:
            return False
        self.records[record.device_id] = record
        return True


def make_context(suites: tuple[str, ...] = ("hpke-x25519",), **kw: object) -> ServerContext:
    """A server context with fresh long-term keys for ``suites``."""
    keys = {name: get_suite(name).generate() for name in suites}
    return ServerContext(keys=keys, k_reject=os.urandom(32), **kw)  # type: ignore[arg-type]


def pump_server(proto: ServerProtocol, store: MemoryStore, clock: Clock) -> list[Event]:
    """One round of the server driver loop: records in, durable events committed."""
    events: list[Event] = []
    while True:
        while (device_id := proto.wants_record()) is not None:
            proto.provide_record(store.load(device_id), clock.now, clock.now)
        batch = proto.events_received()
        if not batch:
            return events
        for ev in batch:
            if isinstance(ev, StoreRecord) and not store.cas(ev):
                proto.store_failed()
            events.append(ev)


class DeviceDisk:
    """Where a device's keystore is persisted (a file, in the real agent)."""

    def __init__(self, keystore: Keystore) -> None:
        self.keystore = keystore
        self.writes = 0

    def commit(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, PersistState):
                self.keystore = ev.keystore
                self.writes += 1


Hook = Callable[[str, bytes], bool]


class Loopback:
    """One device and one server over an in-memory link, both cores real."""

    def __init__(
        self,
        ctx: ServerContext,
        store: MemoryStore,
        disk: DeviceDisk,
        clock: Clock | None = None,
        *,
        device_config: DeviceConfig | None = None,
        entropy: Entropy | None = None,
    ) -> None:
        self.ctx, self.store, self.disk = ctx, store, disk
        self.clock = clock or Clock()
        self.device_config = device_config
        self.entropy = entropy
        self.device: DeviceProtocol | None = None
        self.server: ServerProtocol | None = None
        self.device_events: list[Event] = []
        self.server_events: list[Event] = []
        self._to_server: deque[bytes] = deque()
        self._to_device: deque[bytes] = deque()

    def connect(self) -> None:
        """Open a new connection: fresh cores, the device's keystore as last persisted."""
        now = self.clock.now
        self.device = DeviceProtocol(
            self.disk.keystore, now=now, config=self.device_config, entropy=self.entropy
        )
        self.server = ServerProtocol(self.ctx, now=now, entropy=self.entropy)
        self._to_server.clear()
        self._to_device.clear()
        self.device.connect(now)
        self._flush_device()

    def _flush_device(self) -> None:
        assert self.device is not None
        events = self.device.events_received()
        self.disk.commit(events)  # durable first
        self.device_events.extend(events)
        self._to_server.extend(self.device.messages_to_send())

    def _flush_server(self) -> None:
        assert self.server is not None
        self.server_events.extend(pump_server(self.server, self.store, self.clock))
        self._to_device.extend(self.server.messages_to_send())

    def step(self) -> bool:
        """Deliver one message in each direction. Returns whether anything moved."""
        assert self.device is not None and self.server is not None
        moved = False
        if self._to_server:
            self.server.receive_message(self._to_server.popleft(), self.clock.now)
            self._flush_server()
            moved = True
        if self._to_device:
            self.device.receive_message(self._to_device.popleft(), self.clock.now)
            self._flush_device()
            moved = True
        return moved

    def run(self, max_steps: int = 10_000) -> None:
        """Deliver until both directions are empty."""
        for _ in range(max_steps):
            if not self.step():
                return
        raise RuntimeError("loopback did not settle")

    def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that is due, on both sides."""
        assert self.device is not None and self.server is not None
        self.clock.advance(seconds)
        self.device.handle_timer(self.clock.now)
        self._flush_device()
        self.server.handle_timer(self.clock.now)
        self._flush_server()

    def device_do(self, fn: Callable[[DeviceProtocol, float], object]) -> object:
        assert self.device is not None
        result = fn(self.device, self.clock.now)
        self._flush_device()
        return result

    def server_do(self, fn: Callable[[ServerProtocol, float], object]) -> object:
        assert self.server is not None
        result = fn(self.server, self.clock.now)
        self._flush_server()
        return result

    def take_to_server(self) -> list[bytes]:
        out = list(self._to_server)
        self._to_server.clear()
        return out

    def take_to_device(self) -> list[bytes]:
        out = list(self._to_device)
        self._to_device.clear()
        return out

    def inject_to_server(self, data: bytes) -> None:
        self._to_server.append(data)

    def inject_to_device(self, data: bytes) -> None:
        self._to_device.append(data)


def provision(
    ctx: ServerContext,
    store: MemoryStore,
    clock: Clock,
    device_id: str,
    *,
    suite: str = "hpke-x25519",
    setup_code: str | None = "12345678",
    window_s: float = 600.0,
    entropy: Entropy = os.urandom,
    policy: RekeyPolicy = DEFAULT_POLICY,
) -> DeviceDisk:
    """Register ``device_id`` (201) and install its keystore with the same setup code."""
    rec = register(
        store.load(device_id),
        device_id=device_id,
        suite=suite,
        setup_code=setup_code,
        window_s=window_s,
        db_now=clock.now,
        entropy=entropy,
        allow_no_code=setup_code is None,
        policy=policy,
    )
    existing = store.load(device_id)
    assert store.put(rec, None if existing is None else existing.version)
    ks = new_keystore(
        device_id=device_id,
        suite=suite,
        server_key=ctx.keys[suite].public_key.raw,
        install_secret=entropy(32),
        setup_code=setup_code,
    )
    return DeviceDisk(ks)
