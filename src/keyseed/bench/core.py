"""keyseed.bench.core
~~~~~~~~~~~~~~~~~~

``keyseed bench core``: complete exchanges (203 → 204 → 205 → 206 → ACK_206) between a real
device core and a real server core in one process, against the *crypto floor* measured in
the same run.

The floor is the rate at which the public-key operations of one exchange run alone with the
same suite: the device's encryption of P, the server's decryption of P and the generation of
the next one-time key. ``rsa-oaep`` has no one-time keys, so its floor is one encryption and
one decryption with the long-term key. The ratio exchanges/s ÷ floor/s says how much of an
exchange is public-key work (1.0) and how much is everything else: key schedule, CBOR,
sealing, state and record handling, the driver loop.

Each round interleaves slices of exchanges and of floor sets, so that a burst of load on a
shared machine hits both; the figures quoted are medians over the rounds. Every round is
checked: the device and the server must end it on the same key and epoch, that epoch must
have advanced by exactly the number of exchanges run, and no connection may have closed. A
bench whose exchanges did not complete raises :class:`BenchFailure` instead of printing a
rate.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cryptography

from .. import __version__
from ..crypto import UnsupportedSuite, get_suite
from ..crypto.schedule import SEED_ID_LEN, p_info
from ..crypto.suites import SUITES
from ..loopback import Clock, Loopback, MemoryStore, make_context, provision
from ..protocol.device import DeviceProtocol
from ..protocol.events import ConnectionClosed, Event, ExchangeFailed, KeyEstablished
from ..protocol.server import X_LEN_REKEY
from ..protocol.states import DeviceState, ServerState

#: Rounds per suite; the figures quoted are their medians.
DEFAULT_ROUNDS = 7

#: Exchanges per round by suite, so that a default run of every suite takes a few seconds.
#: rsa-oaep spends about 0.7 ms in each RSA-3072 decryption, so it runs fewer.
DEFAULT_EXCHANGES: Mapping[str, int] = {
    "hpke-x25519": 300,
    "hpke-mlkem768-x25519": 200,
    "rsa-oaep": 100,
}

#: Exchanges (and floor sets) run before the first timed round: caches, allocator, and the
#: first calls into each pyca object.
WARMUP_EXCHANGES = 3

#: Each round alternates exchanges and floor in this many slices, so that another process
#: taking the CPU for a while slows both alike instead of only one of them.
SLICES = 10

_DEVICE_ID = "bench-oven-1"


class BenchFailure(Exception):
    """An exchange did not complete, or the two sides disagree after a round."""


@dataclass(frozen=True, slots=True)
class RoundTimes:
    """One round of one measurement: wall and CPU seconds for ``count`` operations."""

    count: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.count / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.count * 1e6


@dataclass(frozen=True, slots=True)
class SuiteResult:
    """Every round of one suite, and the medians quoted from them."""

    suite: str
    exchanges_per_round: int
    floor_ops: tuple[str, ...]
    exchange_rounds: tuple[RoundTimes, ...]
    floor_rounds: tuple[RoundTimes, ...]

    @property
    def rounds(self) -> int:
        return len(self.exchange_rounds)

    @property
    def exchanges_per_s(self) -> float:
        return statistics.median(r.per_s for r in self.exchange_rounds)

    @property
    def floor_per_s(self) -> float:
        return statistics.median(r.per_s for r in self.floor_rounds)

    @property
    def ratio(self) -> float:
        """Median exchanges/s ÷ median floor/s: 1.0 would mean the core costs nothing."""
        return self.exchanges_per_s / self.floor_per_s

    @property
    def cpu_ratio(self) -> float:
        """The same ratio from CPU time (floor CPU ÷ exchange CPU): steadier when other
        processes take the CPU away, since waiting for it is not counted."""
        return self.floor_cpu_us / self.cpu_us_per_exchange

    @property
    def cpu_us_per_exchange(self) -> float:
        return statistics.median(r.cpu_us for r in self.exchange_rounds)

    @property
    def floor_cpu_us(self) -> float:
        return statistics.median(r.cpu_us for r in self.floor_rounds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exchanges_per_s": self.exchanges_per_s,
            "floor_per_s": self.floor_per_s,
            "ratio": self.ratio,
            "cpu_ratio": self.cpu_ratio,
            "rounds": self.rounds,
            "exchanges_per_round": self.exchanges_per_round,
            "wall_us_per_exchange": 1e6 / self.exchanges_per_s,
            "cpu_us_per_exchange": self.cpu_us_per_exchange,
            "floor_wall_us": 1e6 / self.floor_per_s,
            "floor_cpu_us": self.floor_cpu_us,
            "floor_ops": list(self.floor_ops),
            "per_round": {
                "exchanges_per_s": [r.per_s for r in self.exchange_rounds],
                "floor_per_s": [r.per_s for r in self.floor_rounds],
            },
        }


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = None
    return {
        "keyseed": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cryptography": cryptography.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "machine": platform.machine(),
        "system": platform.system(),
    }


@dataclass(frozen=True, slots=True)
class CoreReport:
    """One run of ``keyseed bench core``."""

    results: tuple[SuiteResult, ...]
    unavailable: tuple[str, ...] = ()
    env: dict[str, Any] = field(default_factory=environment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "core",
            "statistic": "median",
            "environment": self.env,
            "suites": {r.suite: r.to_dict() for r in self.results},
            "unavailable": list(self.unavailable),
        }

    def format_table(self) -> str:
        env = self.env
        rounds = sorted({r.rounds for r in self.results})
        lines = [
            "keyseed bench core: complete exchanges (203->206->ACK_206) vs. the crypto floor",
            f"medians of {'/'.join(map(str, rounds)) or 0} "
            f"round{'' if rounds == [1] else 's'} per suite; "
            f"Python {env['python']}, cryptography {env['cryptography']}, "
            f"{env['cpu_count']} CPUs",
            "",
            f"{'suite':<22} {'exch/round':>10} {'exchanges/s':>11} {'floor/s':>9} "
            f"{'ratio':>6} {'wall us/exch':>12} {'CPU us/exch':>11} {'floor CPU us':>12} "
            f"{'CPU ratio':>9}",
        ]
        for r in self.results:
            lines.append(
                f"{r.suite:<22} {r.exchanges_per_round:>10} {r.exchanges_per_s:>11.0f} "
                f"{r.floor_per_s:>9.0f} {r.ratio:>6.2f} {1e6 / r.exchanges_per_s:>12.0f} "
                f"{r.cpu_us_per_exchange:>11.0f} {r.floor_cpu_us:>12.0f} {r.cpu_ratio:>9.2f}"
            )
        for name in self.unavailable:
            lines.append(f"{name:<22} unavailable in this backend")
        lines.append("")
        lines.append(
            "ratio = exchanges/s / floor/s; CPU ratio = floor CPU us / CPU us per exchange"
        )
        lines.append(
            "floor: encrypt P + decrypt P + generate the one-time key "
            "(rsa-oaep: encrypt + decrypt, long-term key)"
        )
        return "\n".join(lines)


# -- exchanges ----------------------------------------------------------------------------


def _request_rekey(device: DeviceProtocol, now: float) -> None:
    device.request_rekey(now)


def _enrolled_pair(suite: str) -> Loopback:
    """A device enrolled with a fresh server context, connection open, seed in hand."""
    ctx = make_context((suite,))
    store, clock = MemoryStore(), Clock()
    disk = provision(ctx, store, clock, _DEVICE_ID, suite=suite)
    lb = Loopback(ctx, store, disk, clock)
    lb.connect()
    lb.run()
    _check_agree(lb, expected_epoch=1, events_from=(0, 0), exchanges=1)
    return lb


def _check_agree(
    lb: Loopback, *, expected_epoch: int, events_from: tuple[int, int], exchanges: int
) -> None:
    """Fail loudly unless both sides ended on the same key at ``expected_epoch``."""
    dev_events = lb.device_events[events_from[0] :]
    srv_events = lb.server_events[events_from[1] :]
    bad: list[Event] = [
        e for e in (*dev_events, *srv_events) if isinstance(e, ConnectionClosed | ExchangeFailed)
    ]
    if bad:
        raise BenchFailure(f"exchange did not complete: {bad[0]!r}")
    rec = lb.store.load(_DEVICE_ID)
    ks = lb.disk.keystore
    if rec is None or rec.key is None or ks.key is None:
        raise BenchFailure("no key after the exchanges")
    if not (ks.epoch == rec.epoch == expected_epoch):
        raise BenchFailure(
            f"epochs disagree: device {ks.epoch}, server {rec.epoch}, expected {expected_epoch}"
        )
    if ks.key != rec.key:
        raise BenchFailure(f"device and server hold different keys at epoch {rec.epoch}")
    if rec.owed_206 or rec.pending is not None or ks.pending is not None:
        raise BenchFailure("an exchange was left half-way (pending exchange or 206 unacknowledged)")
    if ks.seed is None or rec.seed is None or ks.seed.seed_id != rec.seed.seed_id:
        raise BenchFailure("the device does not hold the seed the server issued")
    established = sum(isinstance(e, KeyEstablished) for e in dev_events)
    if established != exchanges:
        raise BenchFailure(f"{established} keys established for {exchanges} exchanges")
    assert lb.device is not None and lb.server is not None
    if lb.device.state is not DeviceState.OPEN or lb.server.state is not ServerState.OPEN:
        raise BenchFailure(f"connection not open: {lb.device.state}, {lb.server.state}")


def _time_exchanges(lb: Loopback, n: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``n`` rekeys on the open connection."""
    do, run = lb.device_do, lb.run
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        do(_request_rekey)
        run()
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0


# -- crypto floor -------------------------------------------------------------------------


def floor_ops(suite: str) -> tuple[str, ...]:
    """The public-key operations of one exchange that the floor times."""
    if get_suite(suite).one_time_keys:
        return ("generate", "encrypt", "decrypt")
    return ("encrypt", "decrypt")


class _Floor:
    """The exchange's public-key operations alone, with what they need prepared beforehand.

    With one-time keys each set generates a key, encrypts X to it and decrypts with it, as the
    server's 206 and the next 203 do; rsa-oaep uses its long-term key throughout.
    """

    def __init__(self, suite_name: str) -> None:
        self.suite_name = suite_name
        self.suite = get_suite(suite_name)
        self.x = os.urandom(X_LEN_REKEY)
        self.info = p_info(
            suite=suite_name,
            device_id=_DEVICE_ID,
            epoch=2,
            seed_id=os.urandom(SEED_ID_LEN),
            nd=os.urandom(32),
            ns=os.urandom(32),
        )
        self.long_term = None if self.suite.one_time_keys else self.suite.generate()

    def time(self, n: int) -> tuple[float, float]:
        """Wall and CPU seconds for ``n`` sets."""
        x, info = self.x, self.info
        encrypt, decrypt, generate = self.suite.encrypt, self.suite.decrypt, self.suite.generate
        ok = True
        if self.long_term is None:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                key = generate()
                ok &= decrypt(key, encrypt(key.public_key, x, info), info) == x
            t1, c1 = time.perf_counter(), time.process_time()
        else:
            key = self.long_term
            pub = key.public_key
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                ok &= decrypt(key, encrypt(pub, x, info), info) == x
            t1, c1 = time.perf_counter(), time.process_time()
        if not ok:
            raise BenchFailure(f"{self.suite_name}: a floor decryption did not return X")
        return t1 - t0, c1 - c0


# -- rounds -------------------------------------------------------------------------------


def _slices(n: int, parts: int) -> list[int]:
    """``n`` split into at most ``parts`` near-equal positive counts."""
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _round(lb: Loopback, floor: _Floor, n: int) -> tuple[RoundTimes, RoundTimes]:
    """``n`` exchanges and ``n`` floor sets, interleaved in :data:`SLICES` slices, then the
    checks that every exchange completed."""
    rec = lb.store.load(_DEVICE_ID)
    assert rec is not None
    start_epoch = rec.epoch
    marks = (len(lb.device_events), len(lb.server_events))
    ex_wall = ex_cpu = fl_wall = fl_cpu = 0.0
    for k in _slices(n, SLICES):
        wall, cpu = _time_exchanges(lb, k)
        ex_wall, ex_cpu = ex_wall + wall, ex_cpu + cpu
        wall, cpu = floor.time(k)
        fl_wall, fl_cpu = fl_wall + wall, fl_cpu + cpu
    _check_agree(lb, expected_epoch=start_epoch + n, events_from=marks, exchanges=n)
    return RoundTimes(n, ex_wall, ex_cpu), RoundTimes(n, fl_wall, fl_cpu)


# -- driver -------------------------------------------------------------------------------


def split_available(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(suites this backend runs, suites it lacks), each in the order given.

    Raises:
        KeyError: a name is not a suite at all.
    """
    ok: list[str] = []
    missing: list[str] = []
    for name in names:
        if name not in SUITES:
            raise KeyError(name)
        try:
            get_suite(name)  # runs the suite once with a throwaway key, and caches the answer
        except UnsupportedSuite:
            missing.append(name)
        else:
            ok.append(name)
    return ok, missing


def measure_suite(
    suite: str,
    *,
    rounds: int,
    exchanges: int,
    progress: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Enrol once, warm up, then ``rounds`` rounds of ``exchanges`` rekeys and as many floor
    sets.

    Raises:
        BenchFailure: an exchange did not complete or the sides disagree afterwards.
    """
    if rounds < 1 or exchanges < 1:
        raise ValueError("rounds and exchanges must be positive")
    lb = _enrolled_pair(suite)
    floor = _Floor(suite)
    _round(lb, floor, WARMUP_EXCHANGES)
    ex: list[RoundTimes] = []
    fl: list[RoundTimes] = []
    for i in range(rounds):
        if progress is not None:
            progress(f"{suite}: round {i + 1}/{rounds}")
        ex_times, fl_times = _round(lb, floor, exchanges)
        ex.append(ex_times)
        fl.append(fl_times)
    return SuiteResult(
        suite=suite,
        exchanges_per_round=exchanges,
        floor_ops=floor_ops(suite),
        exchange_rounds=tuple(ex),
        floor_rounds=tuple(fl),
    )


def run_core(
    suites: Iterable[str],
    *,
    rounds: int = DEFAULT_ROUNDS,
    exchanges: int | None = None,
    unavailable: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
) -> CoreReport:
    """Measure every suite in turn. ``exchanges`` None: :data:`DEFAULT_EXCHANGES` by suite.

    Raises:
        BenchFailure: an exchange did not complete or the sides disagree afterwards.
    """
    results = tuple(
        measure_suite(
            s,
            rounds=rounds,
            exchanges=exchanges if exchanges is not None else DEFAULT_EXCHANGES.get(s, 100),
            progress=progress,
        )
        for s in suites
    )
    return CoreReport(results=results, unavailable=tuple(unavailable))


__all__ = [
    "DEFAULT_EXCHANGES",
    "DEFAULT_ROUNDS",
    "SLICES",
    "WARMUP_EXCHANGES",
    "BenchFailure",
    "CoreReport",
    "RoundTimes",
    "SuiteResult",
    "environment",
    "floor_ops",
    "measure_suite",
    "run_core",
    "split_available",
]
