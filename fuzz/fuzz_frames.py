#!/usr/bin/env python3
# ruff: noqa: E402, S603, PLC0415 - imports follow the instrumentation; runs its own script
"""Coverage-guided fuzzing of the frame decoder and of both cores fed arbitrary frames (atheris,
libFuzzer). Run by ``make fuzz`` (``FUZZ_SECONDS``, default 60).

Each input is one WebSocket binary message. :func:`check_one` hands it to:

* the decoders (``decode_frame``, ``decode_plain``, ``loads_strict``, every message class's
  ``decode``, the keystore and device-record decoders, the keystore file format): only the
  documented errors may come out, and what a decoder accepts re-encodes to the same bytes;
* a fresh :class:`ServerProtocol` (the frame is the connection's first), a
  :class:`DeviceProtocol` waiting for its HELLO_ACK, and both cores once their handshake is
  done (the frame arrives on an authenticated connection): they never raise, never close with
  INTERNAL, and any close they report is sent to the peer as a CLOSE or the one 204 NG.

``python fuzz/fuzz_frames.py`` runs libFuzzer from the corpus in ``tests/security/corpus/``,
writing what it finds to a scratch folder, then merges into the corpus only the inputs that
reach new coverage (``-merge=1``); crashing inputs are written there as ``crash-*``.
``tests/security/test_corpus.py`` runs :func:`check_one` on every file of the folder in
``make test``, so whatever the fuzzer found stays a regression test.
``python fuzz/fuzz_frames.py --seed`` writes the first corpus: every frame of an enrolment, a
keyed handshake, APP and 207 both ways, and a rekey.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "security" / "corpus"


def _instrumented() -> bool:
    return os.environ.get("KEYSEED_FUZZ_CHILD") == "1"


if _instrumented():  # pragma: no cover - only in the libFuzzer child process
    import atheris

    with atheris.instrument_imports(include=["keyseed"]):
        import keyseed.device.keystore
        import keyseed.protocol
        import keyseed.protocol.messages
        import keyseed.protocol.records
        import keyseed.protocol.server  # noqa: F401

import cbor2

from keyseed.device.keystore import KeystoreError, decode_file
from keyseed.loopback import Clock, DeviceDisk, MemoryStore, make_context, provision, pump_server
from keyseed.protocol.device import DeviceProtocol
from keyseed.protocol.errors import ErrorCode, FrameTooLarge, MalformedMessage, UnsupportedVersion
from keyseed.protocol.events import ConnectionClosed, Event
from keyseed.protocol.messages import (
    MESSAGES,
    Close,
    PlainFrame,
    decode_frame,
    decode_plain,
    loads_strict,
)
from keyseed.protocol.records import DeviceRecord, Keystore
from keyseed.protocol.server import NG_204, ServerProtocol

#: What a decoder may raise on bad input (everything else is a bug).
DOCUMENTED = (MalformedMessage, FrameTooLarge, UnsupportedVersion)
DEVICE_ID = "oven-1"


class Drbg:
    """Deterministic entropy, so that an input replays the same run."""

    def __init__(self, seed: bytes) -> None:
        self._state = hashlib.sha256(seed).digest()

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self._state = hashlib.sha256(self._state).digest()
            out += self._state
        return out[:n]


class World:
    """One server context and an enrolled device, made once per process."""

    def __init__(self) -> None:
        self.ctx = make_context(("hpke-x25519",))
        self.store = MemoryStore()
        self.clock = Clock()
        self.disk: DeviceDisk = provision(
            self.ctx, self.store, self.clock, DEVICE_ID, entropy=Drbg(b"install")
        )
        self.keyless = self.disk.keystore
        self.keyless_record = self.store.records[DEVICE_ID]
        frames = self.session(self.disk, Drbg(b"enrol"), rekey=False)
        frames += self.session(self.disk, Drbg(b"rekey"), rekey=True)
        #: Every frame of an enrolment, a keyed handshake, APP, 207 and a rekey.
        self.frames = frames
        self.keyed = self.disk.keystore
        self.keyed_record = self.store.records[DEVICE_ID]

    def session(self, disk: DeviceDisk, entropy: Drbg, *, rekey: bool) -> list[bytes]:
        """One honest connection; the frames both sides sent."""
        now = self.clock.now
        dev = DeviceProtocol(disk.keystore, now=now, entropy=entropy)
        srv = ServerProtocol(self.ctx, now=now, entropy=entropy)
        dev.connect(now)
        sent: list[bytes] = []
        to_srv, to_dev = list(self._out_device(dev, disk)), []
        sent += to_srv
        steps = 0
        actions = ["app", "ping", "rekey"] if rekey else []
        while to_srv or to_dev or actions:
            steps += 1
            assert steps < 200, "the session did not settle"
            if not (to_srv or to_dev):
                action = actions.pop(0)
                if action == "app":
                    dev.send_app(b"device data", now)
                    srv.send_app(b"server data", now)
                elif action == "ping":
                    dev.ping(now)
                    srv.ping(now)
                else:
                    dev.request_rekey(now)
            else:
                if to_srv:
                    srv.receive_message(to_srv.pop(0), now)
                if to_dev:
                    dev.receive_message(to_dev.pop(0), now)
            out_s = self._out_server(srv)
            out_d = self._out_device(dev, disk)
            sent += out_s + out_d
            to_dev += out_s
            to_srv += out_d
        return sent

    def _out_device(self, dev: DeviceProtocol, disk: DeviceDisk) -> list[bytes]:
        disk.commit(dev.events_received())
        return dev.messages_to_send()

    def _out_server(self, srv: ServerProtocol) -> list[bytes]:
        pump_server(srv, self.store, self.clock)
        return srv.messages_to_send()


_WORLD: World | None = None


def world() -> World:
    global _WORLD  # noqa: PLW0603 - one world per process, made on first use
    if _WORLD is None:
        _WORLD = World()
    return _WORLD


# -- the checks ------------------------------------------------------------------------------


def _reencode_frame(frame: object) -> bytes:
    if isinstance(frame, PlainFrame):
        return bytes(cbor2.dumps([1, int(frame.type), frame.body], canonical=True))
    return frame.encode()  # type: ignore[attr-defined, no-any-return]


def check_decoders(data: bytes) -> None:
    """Only documented errors; what is accepted re-encodes to exactly ``data``."""
    with contextlib.suppress(*DOCUMENTED):
        assert _reencode_frame(decode_frame(data)) == data
    with contextlib.suppress(*DOCUMENTED):
        assert decode_plain(data).encode() == data
    with contextlib.suppress(*DOCUMENTED):
        assert bytes(cbor2.dumps(loads_strict(data), canonical=True)) == data
    for cls in MESSAGES.values():
        with contextlib.suppress(*DOCUMENTED):
            assert cls.decode(data).encode() == data
    for rec in (Keystore, DeviceRecord):
        with contextlib.suppress(*DOCUMENTED):
            rec.decode(data)
    with contextlib.suppress(KeystoreError):
        decode_file(data)


def _check_closes(events: list[Event], out: list[bytes]) -> None:
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    for ev in closes:
        assert ev.code is not ErrorCode.INTERNAL, ev
    if closes and not closes[-1].by_peer:
        assert out, "a failure is reported to the peer"
        if out[-1] != NG_204:
            assert Close.decode(out[-1]).code == int(closes[-1].code)


def _feed_server(srv: ServerProtocol, w: World, data: bytes) -> None:
    srv.receive_message(data, w.clock.now)
    events = pump_server(srv, w.store, w.clock)
    _check_closes(events, srv.messages_to_send())


def _feed_device(dev: DeviceProtocol, w: World, data: bytes) -> None:
    dev.receive_message(data, w.clock.now)
    events = dev.events_received()
    _check_closes(events, dev.messages_to_send())


def check_cores(data: bytes) -> None:
    """The frame as the first one a server sees, as the answer to a HELLO, and on an
    authenticated connection at each side. Stored state is put back after each run."""
    w = world()
    w.store.audit.clear()
    entropy = Drbg(data)
    now = w.clock.now
    # A fresh connection at the server: the frame comes first.
    w.store.records[DEVICE_ID] = w.keyless_record
    srv = ServerProtocol(w.ctx, now=now, entropy=entropy)
    _feed_server(srv, w, data)
    # A keyless and a keyed device waiting for HELLO_ACK.
    for ks in (w.keyless, w.keyed):
        dev = DeviceProtocol(ks, now=now, entropy=entropy)
        dev.connect(now)
        dev.events_received(), dev.messages_to_send()
        _feed_device(dev, w, data)
    # Both sides of an authenticated connection.
    w.store.records[DEVICE_ID] = w.keyed_record
    dev = DeviceProtocol(w.keyed, now=now, entropy=entropy)
    srv = ServerProtocol(w.ctx, now=now, entropy=entropy)
    dev.connect(now)
    disk = DeviceDisk(w.keyed)
    to_srv = w._out_device(dev, disk)
    for _ in range(3):  # HELLO, HELLO_ACK, FIN
        for f in to_srv:
            srv.receive_message(f, now)
        to_dev = w._out_server(srv)
        for f in to_dev:
            dev.receive_message(f, now)
        to_srv = w._out_device(dev, disk)
    assert srv.state.name == "OPEN" and dev.state.name == "OPEN", (srv.state, dev.state)
    _feed_server(srv, w, data)
    _feed_device(dev, w, data)
    w.store.records[DEVICE_ID] = w.keyed_record


def check_one(data: bytes) -> None:
    """Everything one input must survive."""
    check_decoders(data)
    check_cores(data)


# -- running ---------------------------------------------------------------------------------


def write_seeds(folder: Path) -> int:
    """Real frames of every type the session sends, one file each (named by their hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for frame in world().frames:
        path = folder / f"seed-{hashlib.sha256(frame).hexdigest()[:16]}"
        if not path.exists():
            path.write_bytes(frame)
            n += 1
    return n


def _child(argv: list[str]) -> None:  # pragma: no cover - runs under libFuzzer
    import atheris

    def one_input(data: bytes) -> None:
        check_one(bytes(data))

    world()
    atheris.Setup([str(Path(__file__).resolve()), *argv], one_input)
    atheris.Fuzz()


def main() -> int:  # pragma: no cover - the make fuzz entry point
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument("--seed", action="store_true", help="write real frames into the corpus")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    if args.seed:
        print(f"{write_seeds(args.corpus)} seed frames written to {args.corpus}")
        return 0
    # libFuzzer re-runs this file itself for -merge: as an executable script, under this
    # Python (first on PATH), in child mode.
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "KEYSEED_FUZZ_CHILD": "1", "PATH": f"{bindir}:{os.environ['PATH']}"}
    me = [str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory(prefix="keyseed-fuzz-") as work:
        fuzz = subprocess.run(
            [
                *me,
                work,
                str(args.corpus),
                f"-max_total_time={args.seconds}",
                "-max_len=8192",
                "-print_final_stats=1",
                f"-artifact_prefix={args.corpus}/crash-",
            ],
            env=env,
            check=False,
        )
        # Keep only what adds coverage to the stored corpus.
        subprocess.run([*me, "-merge=1", str(args.corpus), work], env=env, check=False)
    return fuzz.returncode


if __name__ == "__main__":
    if _instrumented():
        _child(sys.argv[1:])
    sys.exit(main())
