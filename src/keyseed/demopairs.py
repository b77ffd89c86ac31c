"""keyseed.demopairs
~~~~~~~~~~~~~~~~~~

The pair-keys flow of ``keyseed demo`` (docs/protocol.md section 12): two more microwave
ovens, ``oven-4`` and ``oven-5``, enrol with the demo's server and then talk to each other
end-to-end through it. They run as two real device agents
(:class:`~keyseed.device.agent.DeviceAgent`, real WebSockets to the server process, keystores
on disk) on an event loop in a background thread of the demo process, each with a
:class:`~keyseed.device.pairs.PairEndpoint`; the narration drives them from the setup PC's
side and checks every step through the admin API and the ovens' own pair events.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from .demo import Demo, FlowFailed
from .device.agent import DeviceAgent
from .device.config import DeviceAgentConfig
from .device.keystore import KeystoreFile
from .device.pairs import PairEndpoint
from .protocol.device import new_keystore
from .protocol.events import Event
from .protocol.pair import E2E, PairCause, PairClosed, PairDataReceived, PairEstablished

T = TypeVar("T")

#: The pair of ovens.
PAIR = ("oven-4", "oven-5")
#: Bound on every wait: only a hang reaches it.
WAIT = 30.0


class PairOvens:
    """Two device agents with pair keys, on their own event loop in a background thread."""

    def __init__(self, root: Path, device_url: str) -> None:
        self.root = root
        self.device_url = device_url
        self.pairs: dict[str, PairEndpoint] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        # Guards the event lists, which the loop thread appends to.
        self._lock = threading.Lock()
        self._events: dict[str, list[Event]] = {}

    def start(self, server_key: bytes, codes: dict[str, str]) -> None:
        """Install each oven's keystore (the server key pinned, its setup code) and run it."""
        self._thread.start()
        for name, code in codes.items():
            folder = self.root / name
            folder.mkdir(mode=0o700)
            cfg = DeviceAgentConfig(
                id=name,
                server=self.device_url,
                keystore=folder / "keystore",
                backoff_initial=0.1,
                backoff_max=2.0,
            )
            store = KeystoreFile(cfg.keystore)
            ks = new_keystore(
                device_id=name,
                suite="hpke-x25519",
                server_key=server_key,
                install_secret=os.urandom(32),
                setup_code=code,
            )
            store.create(ks)
            self._events[name] = []
            pairs = PairEndpoint(name, self._recorder(name))
            self.pairs[name] = pairs

            async def run(cfg: DeviceAgentConfig = cfg, store: KeystoreFile = store) -> None:
                agent = DeviceAgent(cfg, store, store.load(cfg.id))
                agent.attach_pairs(self.pairs[cfg.id])
                await agent.run()

            self._tasks.append(self._call(self._spawn(run())))

    def _recorder(self, name: str) -> Callable[[Event], None]:
        def record(ev: Event) -> None:
            with self._lock:
                self._events[name].append(ev)

        return record

    async def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    def request(self, name: str, peer: str) -> None:
        """``name`` asks the server for an end-to-end pair key with ``peer`` (501)."""
        self._loop.call_soon_threadsafe(self.pairs[name].request, peer, E2E)

    def send(self, name: str, peer: str, data: bytes) -> None:
        """``name`` sends ``data`` to ``peer`` under the pair key (504)."""
        self._loop.call_soon_threadsafe(self.pairs[name].send, peer, data)

    def wait(self, name: str, what: str, pred: Callable[[Event], bool], start: int = 0) -> Event:
        """The first pair event of ``name`` from index ``start`` satisfying ``pred``."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._lock:
                found = [ev for ev in self._events[name][start:] if pred(ev)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise TimeoutError(f"{what} did not happen within {WAIT:g} s")

    def mark(self, name: str) -> int:
        with self._lock:
            return len(self._events[name])

    def stop(self) -> None:
        """Cancel the agents (each closes its connection), then the loop."""
        if not self._thread.is_alive():
            return

        async def cancel() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        try:
            self._call(cancel())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)


def flow_pair_keys(demo: Demo) -> str:
    """The narration: enrol two ovens, a refused request, allow-pair, the end-to-end exchange
    (501-503), and pair data both ways (504)."""
    a, b = PAIR
    codes = {name: f"{int.from_bytes(os.urandom(4), 'big') % 10**8:08d}" for name in PAIR}
    for name in PAIR:
        demo.step("201", "setup PC → server", f"register {name}: hpke-x25519, setup code ········")
        demo.api().register(name, setup_code=codes[name], window_s=600)
    server_keys = demo.api().keys()
    key = next(k for k in server_keys if k["suite"] == "hpke-x25519")
    ovens = PairOvens(demo.root, demo.device_url)
    demo.pair_ovens = ovens
    ovens.start(bytes.fromhex(key["public_key"]), codes)
    demo.note(f"{a} and {b} run as two device agents in this process, keystores in {demo.root}")
    for name in PAIR:
        demo.wait_for(f"{name}'s enrolment", _settled(demo, name))
        demo.step("203-206", f"{name} ↔ server", "enrolled: epoch 1, seed stored")
        demo.step("506", f"{name} → server", "pairs held: none (on every new connection)")

    def waited(name: str, what: str, pred: Callable[[Event], bool], start: int = 0) -> Event:
        try:
            return ovens.wait(name, what, pred, start)
        except TimeoutError as exc:
            raise FlowFailed(str(exc)) from None

    # Without the admin's permission the server refuses.
    mark = ovens.mark(a)
    ovens.request(a, b)
    demo.step("501", f"{a} → server", f"pair key with {b}, end-to-end (X25519 half e_i)")
    waited(
        a,
        "the refusal",
        lambda ev: isinstance(ev, PairClosed) and ev.cause is PairCause.REFUSED,
        mark,
    )
    demo.step("505", f"server → {a}", "refused: no allow-pair (the cause goes to the audit)")
    if "pair_refused" not in demo.audit_kinds(a):
        raise_failed("the audit log lacks the refusal")
    demo.check("audit: pair_refused")

    demo.step("allow", "setup PC → server", f"allow-pair {a} {b} (admin API)")
    view = demo.api().allow_pair(a, b)
    if not view["allowed"]:
        raise_failed(f"allow-pair did not take: {view}")

    mark_a, mark_b = ovens.mark(a), ovens.mark(b)
    ovens.request(a, b)
    demo.step("501", f"{a} → server", f"pair key with {b}, end-to-end: e_i")
    demo.step("502", f"server → {b}", f"pair ID, epoch 1, {a} initiator, {b} responder, e_i")
    demo.note(f"sealed under {b}'s channel: the server vouches for whose half it is")
    est_b = waited(b, f"{b}'s pair key", lambda ev: isinstance(ev, PairEstablished), mark_b)
    demo.step("503", f"{b} → server", "its half e_r (its pair key: X25519 with e_i)")
    demo.step("502", f"server → {a}", "e_i (as sent) and e_r, under its own channel")
    est_a = waited(a, f"{a}'s pair key", lambda ev: isinstance(ev, PairEstablished), mark_a)
    demo.step("503", f"{a} → server", "taken: both ovens hold the key, the server does not")
    assert isinstance(est_a, PairEstablished) and isinstance(est_b, PairEstablished)
    if est_a.pair_id != est_b.pair_id or est_a.epoch != est_b.epoch:
        raise_failed("the ovens disagree on the pair")
    view = demo.wait_for(
        "the server to record the pair established",
        lambda: next(
            (
                p
                for p in demo.api().pairs()
                if {p["a"], p["b"]} == {a, b} and p["status"] == "established"
            ),
            None,
        ),
    )
    for name in PAIR:
        demo.wait_for(f"the audit row of {name}'s pair", _audited(demo, name))
    demo.check(
        f"admin API: {a} <-> {b} established, mode {view['mode']}, pair epoch {view['epoch']}; "
        "audit: pair_established on both ovens"
    )

    order, reply = b"defrost 300 g of peas", b"defrosting: 240 s left"
    mark_b = ovens.mark(b)
    ovens.send(a, b, order)
    demo.step("504", f"{a} → {b}", f"'{order.decode()}' (pair key; relayed by the server)")
    got = waited(
        b, "the order", lambda ev: isinstance(ev, PairDataReceived) and ev.data == order, mark_b
    )
    mark_a = ovens.mark(a)
    ovens.send(b, a, reply)
    demo.step("504", f"{b} → {a}", f"'{reply.decode()}'")
    waited(a, "the reply", lambda ev: isinstance(ev, PairDataReceived) and ev.data == reply, mark_a)
    assert isinstance(got, PairDataReceived)
    demo.check(
        f"{b} opened the order and {a} the reply under the pair key; the server relayed "
        "both and holds only the public halves"
    )
    return f"{a} and {b} paired end-to-end (epoch {est_a.epoch}), messages both ways"


def _settled(demo: Demo, name: str) -> Callable[[], dict[str, Any] | None]:
    return lambda: demo.settled(name, 1)


def _audited(demo: Demo, name: str) -> Callable[[], bool]:
    return lambda: "pair_established" in demo.audit_kinds(name)


def raise_failed(text: str) -> None:
    raise FlowFailed(text)


__all__ = ["PAIR", "PairOvens", "flow_pair_keys"]
