"""keyseed.protocol.channel
~~~~~~~~~~~~~~~~~~~~~~~~~~

The sealed record layer of one connection (DESIGN.md section 3, "channel"; REVIEW F11).

* Per key, per connection and per direction, its own AEAD key and IV:
  ``PRK = HKDF-Extract(salt = Nd || Ns, K)``, key and IV = HKDF-Expand(PRK, label, direction,
  device_id, key_id(K)) (:func:`keyseed.crypto.schedule.traffic_keys`).
* ``nonce = IV xor seq`` with a 64-bit sequence number per direction and key, starting at 0.
* ``AAD = lp("keyseed/1 aad", version, device_id, direction, type, epoch, seq)``.
* A frame is accepted only with exactly the next sequence number of its key: a replayed,
  reordered or dropped frame fails. A frame under another direction's key fails (no
  reflection). A frame that fails authentication closes the connection.
* A key update is applied on send when installed; on receive the peer's first frame under a
  newer epoch retires every older receive key, like QUIC's key phase.
* A traffic key seals at most ``max_records`` frames; then the connection must re-handshake.
* On a connection the handshake reduced for TLS (docs/protocol.md, "Profiles"), APP frames
  travel authenticated-only: ``body || tag``, the tag the same AEAD over an empty plaintext
  with ``AAD = lp("keyseed/1 aad-tls", ...) || body``. Same keys, nonces, sequence numbers and
  replay rules; every other message stays encrypted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..crypto import Aead, DecryptError, lp, make_nonce
from ..crypto.kdf import HmacKey, lp_u64x3
from ..crypto.schedule import D2S, S2D, SharedKey, traffic_keys, traffic_prk
from .constants import MAX_RECORDS_PER_KEY, VERSION
from .errors import (
    AuthenticationFailed,
    BadSequence,
    LocalProtocolError,
    MalformedMessage,
    Rehandshake,
)
from .messages import (
    Message,
    MsgType,
    SealedFrame,
    decode_app_fast,
    decode_body,
    encode_body,
    encode_sealed,
    loads_strict,
)

L_AAD = "keyseed/1 aad"
#: AAD label of authenticated-only APP frames (a frame sealed one way never opens the other).
L_AAD_TLS = "keyseed/1 aad-tls"
#: AEAD tag length (both ciphers).
TAG_LEN = 16


def aad_prefix(device_id: str, direction: str, label: str = L_AAD) -> bytes:
    """The part of the AAD that is constant for one direction of one connection."""
    return lp(label, VERSION, device_id, direction)


def aad(device_id: str, direction: str, mtype: MsgType, epoch: int, seq: int) -> bytes:
    # lp() of a field list is the concatenation of each field's lp(), so the prefix can be
    # encoded once per connection.
    return aad_prefix(device_id, direction) + lp_u64x3(int(mtype), epoch, seq)


@dataclass(slots=True)
class _Direction:
    aead: Aead
    iv: bytes
    epoch: int
    seq: int = 0


class Channel:
    """Seals and opens the frames of one connection."""

    def __init__(
        self,
        *,
        device_id: str,
        nd: bytes,
        ns: bytes,
        is_device: bool,
        cipher: str = "chacha20-poly1305",
        max_records: int = MAX_RECORDS_PER_KEY,
    ) -> None:
        # Bound into every traffic key and AAD.
        self.device_id = device_id
        self._nd, self._ns = nd, ns
        # Our sending direction and the peer's.
        self._out_dir, self._in_dir = (D2S, S2D) if is_device else (S2D, D2S)
        self._cipher = cipher
        # The constant part of every AAD, encoded once (see aad()).
        self._aad_out = aad_prefix(device_id, self._out_dir)
        self._aad_in = aad_prefix(device_id, self._in_dir)
        self._max = max_records
        # The key we seal with (one at a time) and the keys we open with, by epoch.
        self._send: _Direction | None = None
        self._recv: dict[int, _Direction] = {}
        # The traffic PRK of the key installed last, shared by its two directions.
        self._prk: tuple[SharedKey, HmacKey] | None = None
        #: APP frames travel authenticated-only (the handshake reduced this connection for
        #: TLS); set by the protocol once the handshake that agreed on it has completed.
        self.auth_only_app = False
        self._aad_tls_out = aad_prefix(device_id, self._out_dir, L_AAD_TLS)
        self._aad_tls_in = aad_prefix(device_id, self._in_dir, L_AAD_TLS)

    def _make(self, key: SharedKey, epoch: int, direction: str) -> _Direction:
        if self._prk is None or self._prk[0] is not key:
            self._prk = (key, traffic_prk(key, nd=self._nd, ns=self._ns))
        k, iv = traffic_keys(
            key,
            nd=self._nd,
            ns=self._ns,
            device_id=self.device_id,
            direction=direction,
            prk=self._prk[1],
        )
        return _Direction(Aead(k, self._cipher), iv, epoch)

    def install_send(self, key: SharedKey, epoch: int) -> None:
        """Seal every later frame under ``key`` (sequence numbers restart at 0)."""
        self._send = self._make(key, epoch, self._out_dir)

    def install_recv(self, key: SharedKey, epoch: int) -> None:
        """Also open frames under ``key``; older keys stay until a frame arrives under it."""
        if epoch not in self._recv:
            self._recv[epoch] = self._make(key, epoch, self._in_dir)

    @property
    def send_epoch(self) -> int | None:
        return None if self._send is None else self._send.epoch

    @property
    def can_send(self) -> bool:
        return self._send is not None

    def seal(self, msg: Message, body: bytes | None = None) -> bytes:
        """Seal ``msg`` as the next frame. ``body``: its canonical body, if the caller has
        already encoded it (:func:`~keyseed.protocol.messages.encode_body`).

        Raises:
            LocalProtocolError: no send key installed.
            Rehandshake: the traffic key reached its usage limit.
        """
        d = self._send
        if d is None:
            raise LocalProtocolError("no traffic key yet")
        if d.seq >= self._max:
            raise Rehandshake("traffic key usage limit reached")
        seq = d.seq
        plain = encode_body(msg) if body is None else body
        if self.auth_only_app and msg.TYPE is MsgType.APP:
            # Reduced for TLS: the body in clear (TLS encrypts it), authenticated here.
            header = lp_u64x3(int(msg.TYPE), d.epoch, seq)
            tag = d.aead.seal(make_nonce(d.iv, seq), b"", self._aad_tls_out + header + plain)
            ct = plain + tag
        else:
            ct = d.aead.seal(
                make_nonce(d.iv, seq), plain, self._aad_out + lp_u64x3(int(msg.TYPE), d.epoch, seq)
            )
        d.seq += 1
        return encode_sealed(msg.TYPE, d.epoch, seq, ct)

    def open(self, frame: SealedFrame) -> Message:
        """Open a sealed frame (see :meth:`open_body`)."""
        return self.open_body(frame)[0]

    def open_body(self, frame: SealedFrame) -> tuple[Message, bytes]:
        """Open a sealed frame: its message and the canonical body it was decoded from.

        Raises:
            AuthenticationFailed: no key for its epoch, or the tag does not verify.
            BadSequence: not exactly the next sequence number.
            Rehandshake: the peer's key reached its usage limit.
            MalformedMessage: the plaintext is not a valid body of its type.
        """
        d = self._recv.get(frame.epoch)
        if d is None:
            raise AuthenticationFailed("no key for this epoch")
        if frame.seq != d.seq:
            raise BadSequence("replayed, reordered or missing frame")
        if frame.seq >= self._max:
            raise Rehandshake("traffic key usage limit reached")
        header = lp_u64x3(int(frame.type), frame.epoch, frame.seq)
        try:
            if self.auth_only_app and frame.type is MsgType.APP:
                plaintext = frame.ciphertext[:-TAG_LEN]
                tag = frame.ciphertext[-TAG_LEN:]
                if len(frame.ciphertext) < TAG_LEN or d.aead.open(
                    make_nonce(d.iv, frame.seq), tag, self._aad_tls_in + header + plaintext
                ):
                    raise DecryptError()
            else:
                plaintext = d.aead.open(
                    make_nonce(d.iv, frame.seq), frame.ciphertext, self._aad_in + header
                )
        except DecryptError:
            raise AuthenticationFailed("sealed frame does not authenticate") from None
        d.seq += 1
        # The peer moved to this epoch: older keys open nothing more (invariant 3).
        if len(self._recv) > 1:
            for old in [e for e in self._recv if e < frame.epoch]:
                del self._recv[old]
        if frame.type is MsgType.APP:
            app = decode_app_fast(plaintext)
            if app is not None:
                return app, plaintext
        body = loads_strict(plaintext)
        try:
            return decode_body(frame.type, body), plaintext
        except KeyError:  # pragma: no cover - decode_frame already checked the type
            raise MalformedMessage("unknown message type") from None

    def __repr__(self) -> str:
        return f"Channel(device_id={self.device_id!r}, send_epoch={self.send_epoch})"
