"""keyseed.protocol.messages: every message round-trips, and the decoder is strict."""

from __future__ import annotations

import datetime
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyseed.protocol.constants import MAX_APP_DATA, MAX_FRAME, MAX_FRAME_PREAUTH, VERSION
from keyseed.protocol.errors import FrameTooLarge, MalformedMessage, UnsupportedVersion
from keyseed.protocol.messages import (
    MESSAGES,
    PLAIN_ONLY,
    SEALED_ONLY,
    SETUP_ONLY,
    Ack206,
    App,
    Close,
    Fin,
    Hello,
    HelloAck,
    Message,
    Msg201,
    Msg202,
    Msg203,
    Msg204,
    Msg205,
    Msg206,
    Msg207,
    Msg208,
    Msg209,
    Msg301,
    Msg302,
    Msg401,
    Msg402,
    Msg403,
    Msg404,
    MsgType,
    PairAck,
    PairData,
    PairKey,
    PairRefused,
    PairRequest,
    PairSync,
    PlainFrame,
    Policy,
    SealedFrame,
    SeedRequest,
    decode_app_fast,
    decode_body,
    decode_frame,
    decode_plain,
    encode_app_body,
    encode_body,
    encode_sealed,
    loads_strict,
)

KEY_ID = b"\x11" * 16
MAC = b"\x22" * 32
ND = b"\x33" * 32
SEED_ID = b"\x44" * 16
POLICY = Policy(soft_messages=10, hard_messages=20, soft_age_s=60, hard_age_s=120)

SAMPLES: list[Message] = [
    Hello(device_id="oven-1", suite="hpke-x25519", nd=ND),
    Hello(device_id="oven-1", suite="hpke-x25519", nd=ND, candidates=(KEY_ID, b"\x12" * 16)),
    Hello(device_id="oven-1", suite="hpke-x25519", nd=ND, cur_id=KEY_ID, cur_proof=MAC),
    Hello(
        device_id="oven-1",
        suite="hpke-x25519",
        nd=ND,
        cur_id=KEY_ID,
        cur_proof=MAC,
        pend_id=b"\x12" * 16,
        pend_proof=b"\x23" * 32,
    ),
    HelloAck(ns=ND, epoch=0),
    HelloAck(ns=ND, epoch=7, key_id=KEY_ID, mac=MAC),
    Fin(mac=MAC),
    Close(code=5),
    Ack206(epoch=2, seed_id=SEED_ID),
    SeedRequest(epoch=2),
    App(data=b"recipe"),
    App(data=b""),
    Msg201(device_id="oven-1", suite="rsa-oaep", setup_code="12345678", window_s=600),
    Msg201(device_id="oven-1", suite="rsa-oaep", setup_code=None, window_s=600),
    Msg202(device_id="oven-1", window_s=600),
    Msg203(
        device_id="oven-1",
        epoch=1,
        suite="hpke-x25519",
        seed_id=SEED_ID,
        s=b"\x55" * 16,
        p=b"\x66" * 112,
    ),
    Msg204(ok=True, mac=MAC),
    Msg204(ok=False),
    Msg205(epoch=1),
    Msg206(epoch=1, r0=b"\x77" * 32, seed_id=SEED_ID, otk=b"\x88" * 32, policy=POLICY),
    Msg206(epoch=1, r0=b"\x77" * 32, seed_id=SEED_ID, otk=None, policy=POLICY),
    Msg207(pong=False, token=b"\x99" * 8),
    Msg208(device_id="oven-1"),
    Msg209(device_id="oven-1", ok=True, rtt_us=1500, epoch=3),
    Msg209(device_id="oven-1", ok=False, rtt_us=None, epoch=3),
    Msg301(device_id="oven-1"),
    Msg302(device_id="oven-1", epoch=3),
    Msg401(device_id="oven-1"),
    Msg402(device_id="oven-1", order_epoch=3),
    Msg403(epoch=3),
    Msg404(epoch=3),
    PairRequest(peer="oven-2", mode="relay"),
    PairRequest(peer="oven-2", mode="e2e", e=b"\xe1" * 32, pair_id=b"\xa1" * 16),
    PairKey(
        pair_id=b"\xa1" * 16,
        epoch=2,
        mode="relay",
        initiator="oven-1",
        responder="oven-2",
        chained=True,
        material=b"\xb1" * 32,
        seed=b"\xc1" * 32,
    ),
    PairKey(
        pair_id=b"\xa1" * 16,
        epoch=1,
        mode="e2e",
        initiator="oven-1",
        responder="oven-2",
        chained=False,
        e_i=b"\xe1" * 32,
        e_r=b"\xe2" * 32,
    ),
    PairAck(pair_id=b"\xa1" * 16, epoch=1, e=b"\xe2" * 32),
    PairData(pair_id=b"\xa1" * 16, epoch=1, seq=3, ct=b"\xd1" * 20),
    PairRefused(peer="oven-2", cause=1),
    PairRefused(pair_id=b"\xa1" * 16, cause=2),
    PairSync(held=(b"\xa1" * 16,)),
]


def _id(msg: Message) -> str:
    return f"{type(msg).__name__}"


def frame(body: Any, mtype: int = MsgType.CLOSE, version: Any = VERSION) -> bytes:
    """A canonical plain frame with an arbitrary body."""
    return bytes(cbor2.dumps([version, mtype, body], canonical=True))


def dumps(obj: Any) -> bytes:
    return bytes(cbor2.dumps(obj, canonical=True))


# -- round trips ----------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {m.TYPE for m in SAMPLES} == set(MESSAGES)


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_plain_frame_round_trip(msg: Message) -> None:
    data = msg.encode()
    assert type(msg).decode(data) == msg
    assert decode_plain(data) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_accepted_frame_re_encodes_byte_for_byte(msg: Message) -> None:
    data = msg.encode()
    assert decode_plain(data).encode() == data


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_body_round_trip(msg: Message) -> None:
    assert decode_body(msg.TYPE, loads_strict(encode_body(msg))) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_frame_is_version_type_body(msg: Message) -> None:
    obj = cbor2.loads(msg.encode())
    assert obj[:2] == [VERSION, int(msg.TYPE)]
    assert type(obj[2]) is dict


def test_optional_fields_are_absent_not_null() -> None:
    body = cbor2.loads(HelloAck(ns=ND, epoch=0).encode())[2]
    assert body == {"ns": ND, "epoch": 0}


def test_candidates_decode_as_a_tuple() -> None:
    msg = decode_plain(SAMPLES[1].encode())
    assert isinstance(msg, Hello)
    assert msg.candidates == (KEY_ID, b"\x12" * 16)


def test_policy_travels_nested_in_206() -> None:
    msg = Msg206(epoch=1, r0=b"\x77" * 32, seed_id=SEED_ID, otk=None, policy=POLICY)
    body = cbor2.loads(msg.encode())[2]
    assert body["policy"] == {
        "soft_messages": 10,
        "hard_messages": 20,
        "soft_age_s": 60,
        "hard_age_s": 120,
    }


def test_msg207_response_is_a_pong_with_the_same_token() -> None:
    ping = Msg207(pong=False, token=b"\x01" * 8)
    assert ping.response() == Msg207(pong=True, token=b"\x01" * 8)


def test_sealed_frame_round_trip() -> None:
    sf = SealedFrame(MsgType.APP, 3, 9, b"ciphertext")
    assert decode_frame(sf.encode()) == sf


def test_plain_frame_decodes_to_plain_frame() -> None:
    assert decode_frame(Close(code=1).encode()) == PlainFrame(MsgType.CLOSE, {"code": 1})


def test_type_sets_are_disjoint() -> None:
    sets = (SEALED_ONLY, PLAIN_ONLY, SETUP_ONLY)
    for mtype in MESSAGES:
        assert sum(mtype in s for s in sets) <= 1, mtype


def test_only_203_travels_both_plain_and_sealed() -> None:
    """An enrolment 203 is plain; a rekey 203 rides inside the authenticated channel."""
    assert set(MESSAGES) - SEALED_ONLY - PLAIN_ONLY - SETUP_ONLY == {MsgType.M203}


# -- strictness: fields ---------------------------------------------------------------------


def test_unknown_field_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="unknown field"):
        decode_plain(frame({"code": 1, "extra": 1}))


def test_missing_field_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="missing"):
        decode_plain(frame({}, MsgType.FIN))


def test_bool_is_not_an_int() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": True}))


def test_int_is_not_a_bool() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"ok": 0}, MsgType.M204))


def test_text_is_not_bytes() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"mac": "x" * 32}, MsgType.FIN))


def test_bytes_is_not_text() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"device_id": b"oven-1"}, MsgType.M208))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_fixed_length_bytes_must_match(length: int) -> None:
    with pytest.raises(MalformedMessage, match="32 bytes"):
        decode_plain(frame({"mac": b"\x00" * length}, MsgType.FIN))


def test_bounded_bytes_over_the_bound_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="longer"):
        decode_plain(frame({"data": b"\x00" * 16385}, MsgType.APP))


def test_uint_over_its_maximum_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": 256}))


def test_epoch_over_u32_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"epoch": 2**32}, MsgType.M205))


def test_negative_integer_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": -1}))


def test_float_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": 1.0}))


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(1, 0),
        cbor2.CBORTag(2, b"\x01"),
        cbor2.CBORTag(9999, 1),
        datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
    ],
    ids=["epoch-time", "bignum", "unknown-tag", "datetime"],
)
def test_tag_is_malformed(value: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": value}))


def test_null_optional_field_is_malformed() -> None:
    """Absent is the only encoding of "no value"."""
    with pytest.raises(MalformedMessage, match="null"):
        decode_plain(frame({"ns": ND, "epoch": 0, "key_id": None, "mac": None}, 101))


def test_null_required_field_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": None}))


def test_too_many_candidates_is_malformed() -> None:
    body = {"device_id": "d", "suite": "s", "nd": ND, "candidates": [KEY_ID] * 9}
    with pytest.raises(MalformedMessage):
        decode_plain(frame(body, MsgType.HELLO))


def test_candidate_of_wrong_length_is_malformed() -> None:
    body = {"device_id": "d", "suite": "s", "nd": ND, "candidates": [b"\x00" * 15]}
    with pytest.raises(MalformedMessage):
        decode_plain(frame(body, MsgType.HELLO))


def test_body_that_is_not_a_map_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="map"):
        decode_plain(frame([1]))


def test_map_with_non_text_key_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({1: 1}))


def test_policy_body_is_strict_too() -> None:
    body = {
        "epoch": 1,
        "r0": b"\x77" * 32,
        "seed_id": SEED_ID,
        "policy": {"soft_messages": 1, "hard_messages": 2, "soft_age_s": 1},
    }
    with pytest.raises(MalformedMessage, match="missing"):
        decode_body(MsgType.M206, body)


# -- strictness: encoding -------------------------------------------------------------------


def test_indefinite_length_array_is_malformed() -> None:
    definite = Close(code=1).encode()
    assert definite[0] == 0x83
    with pytest.raises(MalformedMessage):
        decode_plain(b"\x9f" + definite[1:] + b"\xff")


def test_indefinite_length_byte_string_is_malformed() -> None:
    # [1, 102, {"mac": (_ h'00'*16, h'00'*16)}]
    data = b"\x83\x01\x18\x66\xa1\x63mac\x5f\x50" + bytes(16) + b"\x50" + bytes(16) + b"\xff"
    with pytest.raises(MalformedMessage):
        decode_plain(data)


def test_duplicate_keys_are_malformed() -> None:
    # [1, 103, {"code": 1, "code": 2}]
    data = b"\x83\x01\x18\x67\xa2\x64code\x01\x64code\x02"
    with pytest.raises(MalformedMessage):
        decode_plain(data)


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(Close(code=1).encode() + b"\x00")


def test_non_shortest_integer_is_malformed() -> None:
    # 1 encoded as 0x18 0x01 instead of 0x01.
    with pytest.raises(MalformedMessage, match="canonical"):
        decode_plain(b"\x83\x01\x18\x67\xa1\x64code\x18\x01")


def test_keys_out_of_canonical_order_are_malformed() -> None:
    body = {"seed_id": SEED_ID, "epoch": 1}  # canonical order puts "epoch" first
    data = bytes(cbor2.dumps([VERSION, int(MsgType.ACK_206), body]))
    assert decode_plain(dumps(cbor2.loads(data))) == Ack206(epoch=1, seed_id=SEED_ID)
    with pytest.raises(MalformedMessage, match="canonical"):
        decode_plain(data)


def test_empty_input_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(b"")


def test_truncated_frame_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(Fin(mac=MAC).encode()[:-1])


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_frame("not bytes")  # type: ignore[arg-type]


def test_deep_nesting_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": [[[[[1]]]]]}))


# -- strictness: frame header ---------------------------------------------------------------


@pytest.mark.parametrize("mtype", [0, 99, 104, 200, 210, 999])
def test_unknown_type_is_malformed(mtype: int) -> None:
    with pytest.raises(MalformedMessage, match="unknown message type"):
        decode_plain(frame({}, mtype))


def test_type_as_bool_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_frame(dumps([VERSION, True, {}]))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_version_is_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedVersion):
        decode_plain(frame({"code": 1}, version=version))


def test_version_as_bool_is_malformed() -> None:
    """``True == 1`` in Python: a bool must not pass for version 1."""
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"code": 1}, version=True))


@pytest.mark.parametrize("items", [0, 1, 2, 4, 6])
def test_frame_of_wrong_arity_is_malformed(items: int) -> None:
    obj = [VERSION, int(MsgType.APP), 0, 0, b"", 0][:items]
    with pytest.raises(MalformedMessage):
        decode_frame(dumps(obj))


def test_frame_that_is_not_an_array_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_frame(dumps({"v": 1}))


def test_oversize_frame_fails_before_parsing() -> None:
    """Not CBOR at all, but too large: the size check comes first."""
    with pytest.raises(FrameTooLarge):
        decode_frame(b"\xff" * (MAX_FRAME + 1))


def test_frame_at_the_cap_is_parsed() -> None:
    with pytest.raises(MalformedMessage):
        decode_frame(b"\xff" * MAX_FRAME)


def test_preauth_cap_applies_to_a_valid_frame() -> None:
    data = App(data=b"\x00" * MAX_FRAME_PREAUTH).encode()
    with pytest.raises(FrameTooLarge):
        decode_plain(data, max_size=MAX_FRAME_PREAUTH)
    assert decode_plain(data) == App(data=b"\x00" * MAX_FRAME_PREAUTH)


def test_decode_with_the_wrong_class_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        Fin.decode(Close(code=1).encode())


def test_decode_plain_refuses_a_sealed_frame() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(SealedFrame(MsgType.APP, 1, 0, b"x").encode())


@pytest.mark.parametrize("mtype", sorted(PLAIN_ONLY | SETUP_ONLY))
def test_plain_or_setup_type_is_never_sealed(mtype: MsgType) -> None:
    with pytest.raises(MalformedMessage, match="never sealed"):
        decode_frame(dumps([VERSION, int(mtype), 1, 0, b"x"]))


@pytest.mark.parametrize(
    ("epoch", "seq", "ct"),
    [(-1, 0, b""), (2**32, 0, b""), (1, -1, b""), (1, 2**64, b""), (1, 0, "x"), (True, 0, b"")],
    ids=["neg-epoch", "big-epoch", "neg-seq", "big-seq", "text-ct", "bool-epoch"],
)
def test_sealed_header_fields_are_checked(epoch: object, seq: object, ct: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_frame(dumps([VERSION, int(MsgType.APP), epoch, seq, ct]))


def test_sealed_seq_accepts_full_u64() -> None:
    sf = decode_frame(dumps([VERSION, int(MsgType.APP), 1, 2**64 - 1, b""]))
    assert isinstance(sf, SealedFrame)
    assert sf.seq == 2**64 - 1


# -- invariants -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"cur_id": KEY_ID},
        {"cur_proof": MAC},
        {"cur_id": KEY_ID, "cur_proof": MAC, "pend_id": KEY_ID},
        {"cur_id": KEY_ID, "cur_proof": MAC, "pend_proof": MAC},
    ],
    ids=["id-without-proof", "proof-without-id", "pend-id-alone", "pend-proof-alone"],
)
def test_hello_key_id_needs_its_proof(fields: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage, match="proof"):
        Hello(device_id="d", suite="s", nd=ND, **fields)


def test_hello_pending_key_needs_a_current_key() -> None:
    with pytest.raises(MalformedMessage, match="pending"):
        Hello(device_id="d", suite="s", nd=ND, pend_id=KEY_ID, pend_proof=MAC)


def test_hello_candidates_with_a_current_key_are_malformed() -> None:
    with pytest.raises(MalformedMessage, match="candidates"):
        Hello(device_id="d", suite="s", nd=ND, cur_id=KEY_ID, cur_proof=MAC, candidates=(KEY_ID,))


def test_hello_invariants_hold_on_decode_too() -> None:
    body = {"device_id": "d", "suite": "s", "nd": ND, "cur_id": KEY_ID}
    with pytest.raises(MalformedMessage):
        decode_plain(frame(body, MsgType.HELLO))


def test_hello_ack_key_id_needs_its_mac() -> None:
    with pytest.raises(MalformedMessage):
        HelloAck(ns=ND, epoch=1, key_id=KEY_ID)
    with pytest.raises(MalformedMessage):
        HelloAck(ns=ND, epoch=1, mac=MAC)


def test_msg204_ok_needs_a_mac() -> None:
    with pytest.raises(MalformedMessage):
        Msg204(ok=True)


def test_msg204_ng_carries_no_mac() -> None:
    with pytest.raises(MalformedMessage):
        Msg204(ok=False, mac=MAC)


def test_msg204_invariant_holds_on_decode() -> None:
    with pytest.raises(MalformedMessage):
        decode_plain(frame({"ok": True}, MsgType.M204))


def test_msg204_ng_is_always_the_same_bytes() -> None:
    assert Msg204(ok=False).encode() == Msg204(ok=False).encode() == frame({"ok": False}, 204)


@pytest.mark.parametrize(
    "limits",
    [(2, 1, 1, 1), (1, 1, 2, 1)],
    ids=["messages", "age"],
)
def test_policy_soft_above_hard_is_malformed(limits: tuple[int, int, int, int]) -> None:
    sm, hm, sa, ha = limits
    with pytest.raises(MalformedMessage, match="soft"):
        Policy(soft_messages=sm, hard_messages=hm, soft_age_s=sa, hard_age_s=ha)


def test_policy_soft_equal_to_hard_is_allowed() -> None:
    Policy(soft_messages=1, hard_messages=1, soft_age_s=1, hard_age_s=1)


def test_constructor_validates_like_the_decoder() -> None:
    """A message that could not be decoded cannot be built."""
    with pytest.raises(MalformedMessage):
        Fin(mac=b"short")
    with pytest.raises(MalformedMessage):
        Close(code=True)
    with pytest.raises(MalformedMessage):
        Msg205(epoch=-1)


@pytest.mark.parametrize("code", ["1234567", "1234abcd", "1" * 33, ""])
def test_setup_code_must_be_8_to_32_digits(code: str) -> None:
    with pytest.raises(MalformedMessage):
        Msg201(device_id="d", suite="rsa-oaep", setup_code=code, window_s=1)


# -- reprs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_repr_shows_no_byte_values(msg: Message) -> None:
    text = repr(msg)
    assert text.startswith(type(msg).__name__ + "(")
    for value in vars_of(msg):
        if isinstance(value, bytes) and value:
            assert value.hex() not in text
            assert repr(value) not in text


def vars_of(msg: Message) -> list[object]:
    out: list[object] = []
    for name in msg.SPEC:
        v = getattr(msg, name)
        out.extend(v if isinstance(v, tuple) else [v])
    return out


def test_repr_shows_byte_lengths_and_plain_fields() -> None:
    text = repr(Hello(device_id="oven-1", suite="hpke-x25519", nd=ND))
    assert "nd=<32 bytes>" in text
    assert "device_id='oven-1'" in text


# -- device IDs -----------------------------------------------------------------------------

HOSTILE = [
    "",
    "x" * 65,
    "oven 1",
    "oven/1",
    "oven\n1",
    "oven\x001",
    "ovén",
    "<script>",
    "${jndi:ldap://x}",
    "oven-1\n",
]


@pytest.mark.parametrize("device_id", HOSTILE)
def test_hostile_device_id_is_rejected_on_construction(device_id: str) -> None:
    with pytest.raises(MalformedMessage):
        Msg208(device_id=device_id)


@pytest.mark.parametrize("device_id", [d for d in HOSTILE if d])
def test_hostile_device_id_is_never_echoed(device_id: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_plain(frame({"device_id": device_id}, MsgType.M208))
    assert device_id not in str(info.value)
    assert repr(device_id) not in str(info.value)


@pytest.mark.parametrize("device_id", ["a", "x" * 64, "Oven_1.kitchen-2"])
def test_plain_device_ids_are_accepted(device_id: str) -> None:
    assert Msg208(device_id=device_id).device_id == device_id


# -- the APP body's fast path -----------------------------------------------------------------


def _general_app(body: bytes) -> App | MalformedMessage:
    """What the general path makes of an APP body: the message, or the error it raises."""
    try:
        return decode_body(MsgType.APP, loads_strict(body))  # type: ignore[return-value]
    except MalformedMessage as exc:
        return exc


# Lengths at every head width's edges, and the largest APP data allowed.
APP_LENGTHS = [0, 1, 23, 24, 255, 256, 1000, MAX_APP_DATA - 1, MAX_APP_DATA]


@pytest.mark.parametrize("length", APP_LENGTHS)
def test_app_body_fast_encoding_is_the_canonical_one(length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    body = encode_app_body(data)
    assert body == bytes(cbor2.dumps({"data": data}, canonical=True))
    assert encode_body(App(data=data)) == body
    assert decode_app_fast(body) == App(data=data) == _general_app(body)


def test_app_body_fast_encoding_of_long_lengths_is_shortest() -> None:
    # Beyond what an APP may carry, the head is still the canonical one (no shortcut).
    for length in (0x1_0000, 0x10_0000):
        data = b"\x00" * length
        assert encode_app_body(data) == bytes(cbor2.dumps({"data": data}, canonical=True))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xa1\x64data",  # no value
        b"\xa1\x64data\x43ab",  # shorter than its head says
        b"\xa1\x64data\x42abc",  # trailing byte
        b"\xa1\x64data\x58\x01a",  # a longer head than needed
        b"\xa1\x64data\x5f\x41a\xff",  # indefinite length
        b"\xa1\x64data\x61a",  # text, not bytes
        b"\xa1\x64data\xf6",  # null
        b"\xa1\x64datb\x41a",  # another key
        b"\xa2\x64data\x41a\x64date\x41b",  # two pairs
        b"\xbf\x64data\x41a\xff",  # indefinite map
        b"\xa1\x64data\x59" + (MAX_APP_DATA + 1).to_bytes(2, "big") + b"\x00" * (MAX_APP_DATA + 1),
    ],
)
def test_app_body_fast_path_leaves_the_rest_to_the_strict_path(body: bytes) -> None:
    assert decode_app_fast(body) is None
    assert isinstance(_general_app(body), MalformedMessage)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_app_body_fast_path_never_accepts_what_the_strict_path_refuses(tail: bytes) -> None:
    body = b"\xa1\x64data" + tail
    fast = decode_app_fast(body)
    if fast is not None:
        assert _general_app(body) == fast


EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SEALED_ONLY | {MsgType.M203}, key=int)),
    st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1)),
    st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1)),
    st.one_of(st.sampled_from([0, 23, 24, 255, 256, 70000]), st.integers(0, 600)),
)
def test_sealed_frame_encoding_is_the_canonical_one(
    mtype: MsgType, epoch: int, seq: int, length: int
) -> None:
    ct = bytes(length)
    frame = encode_sealed(mtype, epoch, seq, ct)
    assert frame == bytes(cbor2.dumps([VERSION, int(mtype), epoch, seq, ct], canonical=True))


@pytest.mark.parametrize(("epoch", "seq"), [(-1, 0), (0, -1), (2**64, 0), (0, 2**64)])
def test_sealed_frame_fields_out_of_range_are_refused(epoch: int, seq: int) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        encode_sealed(MsgType.APP, epoch, seq, b"")
