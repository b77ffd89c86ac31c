"""keyseed.protocol.base
~~~~~~~~~~~~~~~~~~~~~~~

:class:`Protocol`, the part of a connection that does not depend on the role: framing, the
sealed channel, CLOSE, 207 arrival confirmation, application data, timers, and the rule that
the receive path never raises.

The core is sans-I/O. Its inputs are :meth:`receive_message` (one WebSocket binary message),
:meth:`receive_eof`, :meth:`handle_timer` and the ``send_*`` methods, each given ``now``, a
monotonic time in seconds. Its outputs are :meth:`events_received`, :meth:`messages_to_send`,
:meth:`get_timer` and :meth:`close_expected`. After every input the driver: commits the durable
events, sends the messages, re-arms the timer, then dispatches the other events.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .channel import Channel
from .constants import MAX_FRAME, MAX_FRAME_PREAUTH
from .errors import (
    ErrorCode,
    KeyseedError,
    LocalProtocolError,
    PeerClosed,
    RemoteProtocolError,
    UnexpectedMessage,
)
from .events import (
    AppDataReceived,
    ConnectionClosed,
    Event,
    PeerConfirmed,
)
from .messages import (
    PAIR_TO_DEVICE,
    PAIR_TO_SERVER,
    PLAIN_ONLY,
    SEALED_ONLY,
    App,
    Close,
    Message,
    Msg207,
    MsgType,
    PlainFrame,
    decode_body,
    decode_frame,
)
from .pair import PairMessageReceived
from .states import Role, State, allowed

#: Most 207 pings a side keeps outstanding.
MAX_PINGS = 16

Entropy = Callable[[int], bytes]


class Protocol:
    """Base of :class:`~keyseed.protocol.device.DeviceProtocol` and
    :class:`~keyseed.protocol.server.ServerProtocol`."""

    role: Role

    def __init__(self, *, state: State, entropy: Entropy | None = None) -> None:
        #: Current connection state.
        self.state: State = state
        # Randomness source (os.urandom unless a test injects a deterministic one).
        self._entropy: Entropy = entropy or os.urandom
        # The device this connection belongs to (known after HELLO on the server).
        self.device_id: str | None = None
        # Sealed record layer, once a key is in use on this connection.
        self._channel: Channel | None = None
        # Whether a key has been proven on this connection (lifts the pre-auth frame cap).
        self._authenticated = False
        # Outputs waiting for the driver.
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._close_expected = False
        # Named deadlines (monotonic seconds); get_timer() returns the earliest.
        self._timers: dict[str, float] = {}
        # Outstanding 207 pings: token -> monotonic time sent.
        self._pings: dict[bytes, float] = {}
        # Epoch of the key this connection's traffic is under (for events and 207).
        self._epoch = 0
        # The latest ``now`` an input brought (for work done on close).
        self._now = 0.0

    # -- public methods for receiving data -------------------------------------------

    def receive_message(self, data: bytes, now: float) -> None:
        """Feed one received WebSocket binary message. Never raises for bad input: a bad
        input becomes CLOSE(code) plus a ConnectionClosed event."""
        if self.state.name == "CLOSED":
            return  # discard, like websockets after a close
        self._now = now
        try:
            self._receive(data, now)
        except PeerClosed as exc:
            self._closed(
                ErrorCode(exc.peer_code) if exc.peer_code in _CODES else ErrorCode.NORMAL,
                by_peer=True,
                reason=str(exc),
            )
        except KeyseedError as exc:
            self.fail(exc.code, str(exc))
        except Exception:
            self.fail(ErrorCode.INTERNAL, "internal error")

    def receive_eof(self) -> None:
        """The transport closed."""
        if self.state.name != "CLOSED":
            self._closed(ErrorCode.NORMAL, by_peer=True, reason="eof")

    def handle_timer(self, now: float) -> None:
        """Run every deadline that has passed."""
        self._now = now
        for name, deadline in sorted(self._timers.items(), key=lambda kv: kv[1]):
            if deadline <= now and name in self._timers and self.state.name != "CLOSED":
                del self._timers[name]
                try:
                    self._on_timer(name, now)
                except KeyseedError as exc:
                    self.fail(exc.code, str(exc))

    # -- public methods for sending --------------------------------------------------

    def ping(self, now: float) -> bytes:
        """207: send an encrypted ping; a PeerConfirmed event follows when it comes back.

        Returns:
            The ping's token.
        Raises:
            LocalProtocolError: the connection is not open, or too many pings are pending.
        """
        self._require_sealed()
        if len(self._pings) >= MAX_PINGS:
            raise LocalProtocolError("too many pings outstanding")
        token = self._entropy(8)
        self._pings[token] = now
        self._send_sealed(Msg207(pong=False, token=token))
        return token

    def send_app(self, data: bytes, now: float) -> None:
        """Send application data under the current key.

        Raises:
            LocalProtocolError: the connection is not open.
            KeyExpired: the key is past its hard limit (rekey first).
        """
        self._require_sealed()
        self._check_app_allowed(now, outgoing=True)
        self._send_sealed(App(data=data))

    def send_pair(self, msg: Message, now: float) -> None:
        """Send a pair message (5xx, :mod:`keyseed.protocol.pair`) sealed under the current
        key, under the rules of application data.

        Raises:
            LocalProtocolError: not a pair message this role sends, or the connection is not
                open.
            KeyExpired: the key is past its hard limit (rekey first).
        """
        ours = PAIR_TO_DEVICE if self.role is Role.SERVER else PAIR_TO_SERVER
        if msg.TYPE not in ours:
            raise LocalProtocolError(f"{msg.TYPE.value} is not a pair message this side sends")
        self._require_sealed()
        self._check_app_allowed(now, outgoing=True)
        self._send_sealed(msg)
        if msg.TYPE is MsgType.PAIR_DATA:
            self._count_app(now)

    def close(self, code: ErrorCode = ErrorCode.NORMAL) -> None:
        """Close the connection, telling the peer ``code``."""
        if self.state.name != "CLOSED":
            self._out.append(Close(code=int(code)).encode())
            self._closed(code, by_peer=False, reason="closed")

    def fail(self, code: ErrorCode, reason: str = "") -> None:
        """Fail the connection: CLOSE(code), then nothing more is sent or accepted."""
        self.close(code)
        # Replace the reason of the event close() just added.
        last = self._events[-1]
        if isinstance(last, ConnectionClosed):
            self._events[-1] = ConnectionClosed(code=code, by_peer=False, reason=reason)

    # -- public methods for fetching outputs -----------------------------------------

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def messages_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """The next deadline at which the driver must call :meth:`handle_timer`."""
        return min(self._timers.values(), default=None)

    def close_expected(self) -> bool:
        """Whether the driver should close the transport once the messages are sent."""
        return self._close_expected

    @property
    def tls_reduced(self) -> bool:
        """Whether this connection's handshake reduced it for TLS: application data travels
        authenticated-only, TLS encrypts it (docs/protocol.md, "Profiles")."""
        return self._channel is not None and self._channel.auth_only_app

    # -- private methods -------------------------------------------------------------

    def _receive(self, data: bytes, now: float) -> None:
        frame = decode_frame(data, MAX_FRAME if self._authenticated else MAX_FRAME_PREAUTH)
        sealed_epoch: int | None = None
        if isinstance(frame, PlainFrame):
            msg = decode_body(frame.type, frame.body)
            if frame.type in SEALED_ONLY:
                raise UnexpectedMessage(f"{frame.type.value} must be sealed")
        else:
            if self._channel is None or frame.type in PLAIN_ONLY:
                raise UnexpectedMessage(f"sealed {frame.type.value} before a key is in use")
            self._check_sealed(frame.type, frame.epoch)
            msg, data = self._channel.open_body(frame)
            sealed_epoch = frame.epoch
        if isinstance(msg, Close):
            raise PeerClosed(msg.code)
        targets = allowed(self.role, self.state, msg.TYPE)
        if targets is None:
            raise UnexpectedMessage(f"{msg.TYPE.value} in state {self.state.name}")
        if msg.TYPE is MsgType.M207:
            assert isinstance(msg, Msg207)
            self._handle_207(msg, now)
        elif msg.TYPE is MsgType.APP:
            assert isinstance(msg, App)
            self._check_app_allowed(now, outgoing=False)
            self._count_app(now)
            assert self.device_id is not None
            self._events.append(
                AppDataReceived(device_id=self.device_id, epoch=self._epoch, data=msg.data)
            )
        elif msg.TYPE in PAIR_TO_SERVER or msg.TYPE in PAIR_TO_DEVICE:
            # Pair messages (5xx) belong to the pair layer (keyseed.protocol.pair), under the
            # rules of application data; the table has already checked their direction.
            self._check_app_allowed(now, outgoing=False)
            if msg.TYPE is MsgType.PAIR_DATA:
                self._count_app(now)
            assert self.device_id is not None
            self._events.append(
                PairMessageReceived(device_id=self.device_id, epoch=self._epoch, message=msg)
            )
        else:
            self._dispatch(msg, sealed_epoch, data, now, targets)

    def _dispatch(
        self,
        msg: Message,
        sealed_epoch: int | None,
        raw: bytes,
        now: float,
        targets: tuple[State, ...],
    ) -> None:
        """Role hook: handle ``msg``. ``raw`` is the frame as received for a plain message,
        and the opened (canonical) body for a sealed one."""
        raise NotImplementedError  # pragma: no cover

    def _on_timer(self, name: str, now: float) -> None:
        raise NotImplementedError  # pragma: no cover

    def _check_app_allowed(self, now: float, *, outgoing: bool) -> None:
        """Role hook: refuse application data (hard limit, unconfirmed device)."""

    def _count_app(self, now: float) -> None:
        """Role hook: count an application message under the current key."""

    def _check_sealed(self, mtype: MsgType, epoch: int) -> None:
        """Role hook: refuse a sealed frame before it is opened (and retires older keys)."""

    def _before_close(self) -> None:
        """Role hook: last chance to persist before the connection ends."""

    def _handle_207(self, msg: Msg207, now: float) -> None:
        if not msg.pong:
            self._send_sealed(msg.response())
            return
        sent = self._pings.pop(msg.token, None)
        if sent is None:
            return  # an unsolicited or duplicate pong changes nothing
        assert self.device_id is not None
        self._events.append(
            PeerConfirmed(
                device_id=self.device_id, epoch=self._epoch, rtt=now - sent, token=msg.token
            )
        )

    def _set_state(self, new: State, targets: tuple[State, ...]) -> None:
        if new not in targets:  # pragma: no cover - a bug in a handler, not bad input
            raise AssertionError(f"{self.state.name} -> {new.name} is not in the table")
        self.state = new

    def _require_sealed(self) -> None:
        if self._channel is None or not self._channel.can_send or self.state.name == "CLOSED":
            raise LocalProtocolError(f"cannot send sealed data in state {self.state.name}")

    def _send_plain(self, msg: Message) -> bytes:
        data = msg.encode()
        self._out.append(data)
        return data

    def _send_sealed(self, msg: Message, body: bytes | None = None) -> None:
        assert self._channel is not None
        self._out.append(self._channel.seal(msg, body))
        if self._channel.send_epoch is not None:
            self._epoch = self._channel.send_epoch

    def _closed(self, code: ErrorCode, *, by_peer: bool, reason: str) -> None:
        self._before_close()
        self.state = type(self.state)["CLOSED"]
        self._timers.clear()
        self._close_expected = True
        self._events.append(ConnectionClosed(code=code, by_peer=by_peer, reason=reason))


_CODES = {int(c) for c in ErrorCode}

__all__ = ["Entropy", "Protocol", "RemoteProtocolError"]
