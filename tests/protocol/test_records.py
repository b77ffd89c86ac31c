"""keyseed.protocol.records: the persisted state of both sides survives a round trip, refuses
damage, and never shows key material in a repr."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

import keyseed.protocol.records as records_module
from keyseed.crypto.schedule import SharedKey
from keyseed.protocol.errors import MalformedMessage
from keyseed.protocol.policy import RekeyPolicy
from keyseed.protocol.records import (
    RECORD_FORMAT,
    DeviceRecord,
    IssuedSeed,
    Keystore,
    PendingExchange,
    PendingKey,
    Seed,
    Window,
)

K1 = SharedKey(bytes(range(32)))
K2 = SharedKey(bytes(range(32, 64)))
K3 = SharedKey(bytes(range(64, 96)))
POLICY = RekeyPolicy(soft_messages=5, hard_messages=9, soft_age_s=60, hard_age_s=600)
SERVER_KEY = b"\xa1" * 32
POOL = b"\xb2" * 32
K_CODE = b"\xc3" * 32
R0 = b"\xd4" * 32
SEED_ID = b"\xe5" * 16
OTK = b"\xf6" * 32
OTK_PRIV = b"\x97" * 32
NS = b"\x88" * 32


def bare_keystore() -> Keystore:
    return Keystore(device_id="oven-1", suite="hpke-x25519", server_key=SERVER_KEY, pool=POOL)


def full_keystore(otk: bytes | None = OTK) -> Keystore:
    return Keystore(
        device_id="oven-1",
        suite="hpke-x25519",
        server_key=SERVER_KEY,
        pool=POOL,
        conn_counter=12,
        k_code=K_CODE,
        epoch=4,
        key=K1,
        key_age=12.5,
        messages=77,
        seed=Seed(r0=R0, seed_id=SEED_ID, otk=otk),
        policy=POLICY,
        pending=PendingKey(key=K2, epoch=5, seed_id=SEED_ID),
        candidates=(
            PendingKey(key=K2, epoch=1, seed_id=SEED_ID),
            PendingKey(key=K3, epoch=1, seed_id=b"\x01" * 16),
        ),
        rekey_requested=True,
    )


def bare_record() -> DeviceRecord:
    return DeviceRecord(device_id="oven-1", suite="hpke-x25519")


def full_record(otk: bool = True) -> DeviceRecord:
    return DeviceRecord(
        device_id="oven-1",
        suite="hpke-x25519",
        policy=POLICY,
        version=9,
        conn_gen=3,
        revoked=False,
        confirmed=True,
        epoch=4,
        key=K1,
        key_created_at=1000.25,
        prev_key=K2,
        window=Window(
            window_id=b"\x01" * 16, expires_at=1600.5, k_code=K_CODE, code_required=True, failures=2
        ),
        seed=IssuedSeed(
            r0=R0,
            seed_id=SEED_ID,
            otk_private=OTK_PRIV if otk else None,
            otk_public=OTK if otk else None,
            policy=POLICY,
        ),
        owed_206=True,
        pending=PendingExchange(
            key=K3, epoch=5, seed_id=SEED_ID, ns=NS, created_at=1001.5, enrol=False
        ),
        order_epoch=4,
    )


KEYSTORES = {
    "bare": bare_keystore,
    "full": full_keystore,
    "no-otk": lambda: full_keystore(otk=None),
    "no-seed": lambda: full_keystore().with_(seed=None),
    "no-pending": lambda: full_keystore().with_(pending=None, candidates=()),
}
RECORDS = {
    "bare": bare_record,
    "full": full_record,
    "no-otk": lambda: full_record(otk=False),
    "revoked": lambda: full_record().with_(
        revoked=True, key=None, prev_key=None, window=None, seed=None, pending=None
    ),
    "no-order": lambda: full_record().with_(order_epoch=None),
}


def secrets_of(obj: Any) -> list[bytes]:
    """Every secret byte string an object holds, however deeply."""
    out: list[bytes] = []
    for name in getattr(obj, "__dataclass_fields__", {}):
        v = getattr(obj, name)
        if isinstance(v, SharedKey):
            out.append(v.raw)
        elif isinstance(v, bytes) and v:
            out.append(v)
        elif isinstance(v, tuple):
            for item in v:
                out.extend(secrets_of(item))
        else:
            out.extend(secrets_of(v))
    return out


# -- Keystore -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", KEYSTORES.values(), ids=KEYSTORES.keys())
def test_keystore_encode_decode_round_trip(make: Any) -> None:
    ks = make()
    assert Keystore.decode(ks.encode()) == ks


@pytest.mark.parametrize("make", KEYSTORES.values(), ids=KEYSTORES.keys())
def test_keystore_dict_round_trip(make: Any) -> None:
    ks = make()
    assert Keystore.from_dict(ks.to_dict()) == ks


@pytest.mark.parametrize("make", KEYSTORES.values(), ids=KEYSTORES.keys())
def test_keystore_encoding_is_canonical_and_null_free(make: Any) -> None:
    data = make().encode()
    assert Keystore.decode(data).encode() == data
    assert _has_no_null(cbor2.loads(data))


@pytest.mark.parametrize(
    "make", [*KEYSTORES.values(), *RECORDS.values()], ids=[*KEYSTORES, *RECORDS]
)
def test_encoding_is_what_a_canonical_encoder_gives(make: Any) -> None:
    """Records are encoded with their keys put in canonical order first, without the
    encoder's sort: the bytes are those of cbor2's canonical mode all the same."""
    obj = make()
    canonical = _encode(obj.to_dict())  # nulls dropped, cbor2's canonical mode
    assert obj.encode() == canonical
    assert obj.encode() == canonical  # the second time from the remembered key order


def _has_no_null(obj: Any) -> bool:
    if obj is None:
        return False
    if isinstance(obj, dict):
        return all(_has_no_null(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_has_no_null(v) for v in obj)
    return True


def test_keystore_key_survives_as_an_equal_shared_key() -> None:
    ks = Keystore.decode(full_keystore().encode())
    assert ks.key == K1
    assert ks.key is not None and ks.key.key_id == K1.key_id


def test_keystore_with_does_not_touch_anything_else() -> None:
    ks = full_keystore()
    changed = ks.with_(epoch=5)
    assert changed.epoch == 5
    assert changed.with_(epoch=4) == ks


@pytest.mark.parametrize("make", KEYSTORES.values(), ids=KEYSTORES.keys())
def test_keystore_repr_shows_no_secret_bytes(make: Any) -> None:
    ks = make()
    text = repr(ks)
    for secret in secrets_of(ks):
        assert secret.hex() not in text
        assert repr(secret) not in text


def test_keystore_repr_names_the_device() -> None:
    assert "oven-1" in repr(full_keystore())


# -- DeviceRecord ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_record_encode_decode_round_trip(make: Any) -> None:
    rec = make()
    assert DeviceRecord.decode(rec.encode()) == rec


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_record_dict_round_trip(make: Any) -> None:
    rec = make()
    assert DeviceRecord.from_dict(rec.to_dict()) == rec


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_record_encoding_is_canonical_and_null_free(make: Any) -> None:
    data = make().encode()
    assert DeviceRecord.decode(data).encode() == data
    assert _has_no_null(cbor2.loads(data))


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_record_repr_shows_no_secret_bytes(make: Any) -> None:
    rec = make()
    text = repr(rec)
    for secret in secrets_of(rec):
        assert secret.hex() not in text
        assert repr(secret) not in text


def test_record_repr_shows_key_ids_only() -> None:
    text = repr(full_record())
    assert K1.key_id.hex() in text


def test_record_with_bumps_version() -> None:
    rec = full_record()
    changed = rec.with_(owed_206=False)
    assert changed.version == rec.version + 1
    assert changed.owed_206 is False
    assert rec.owed_206 is True  # the original is untouched


def test_record_with_bumps_version_even_without_changes() -> None:
    rec = bare_record()
    assert rec.with_().version == 1


def test_new_record_defaults() -> None:
    rec = bare_record()
    assert (rec.version, rec.epoch, rec.conn_gen) == (0, 0, 0)
    assert rec.key is None and rec.seed is None and rec.window is None
    assert not rec.revoked and not rec.confirmed and not rec.owed_206


# -- damage ---------------------------------------------------------------------------------

BOTH = [(Keystore, full_keystore), (DeviceRecord, full_record)]
BOTH_IDS = ["keystore", "record"]


@pytest.mark.parametrize(("cls", "make"), BOTH, ids=BOTH_IDS)
def test_truncated_input_is_malformed(cls: Any, make: Any) -> None:
    with pytest.raises(MalformedMessage):
        cls.decode(make().encode()[:-1])


@pytest.mark.parametrize(("cls", "make"), BOTH, ids=BOTH_IDS)
def test_garbage_input_is_malformed(cls: Any, make: Any) -> None:
    with pytest.raises(MalformedMessage):
        cls.decode(b"\x00garbage")


@pytest.mark.parametrize(("cls", "make"), BOTH, ids=BOTH_IDS)
def test_non_map_input_is_malformed(cls: Any, make: Any) -> None:
    with pytest.raises(MalformedMessage):
        cls.decode(cbor2.dumps([1, 2, 3]))


@pytest.mark.parametrize(("cls", "make"), BOTH, ids=BOTH_IDS)
@pytest.mark.parametrize("fmt", [0, 2, RECORD_FORMAT + 100])
def test_unknown_format_is_malformed(cls: Any, make: Any, fmt: int) -> None:
    d = make().to_dict()
    d["format"] = fmt
    with pytest.raises(MalformedMessage, match="format"):
        cls.from_dict(d)


@pytest.mark.parametrize(("cls", "make"), BOTH, ids=BOTH_IDS)
def test_missing_format_is_malformed(cls: Any, make: Any) -> None:
    d = make().to_dict()
    del d["format"]
    with pytest.raises(MalformedMessage):
        cls.from_dict(d)


def _encode(d: dict[str, Any]) -> bytes:
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return bytes(cbor2.dumps(strip(d), canonical=True))


@pytest.mark.parametrize("field", ["device_id", "suite", "server_key", "pool", "epoch", "policy"])
def test_keystore_missing_required_field_is_malformed(field: str) -> None:
    d = full_keystore().to_dict()
    del d[field]
    with pytest.raises(MalformedMessage):
        Keystore.decode(_encode(d))


@pytest.mark.parametrize("field", ["device_id", "suite", "version", "conn_gen", "epoch", "policy"])
def test_record_missing_required_field_is_malformed(field: str) -> None:
    d = full_record().to_dict()
    del d[field]
    with pytest.raises(MalformedMessage):
        DeviceRecord.decode(_encode(d))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("key",), b"\x00" * 31),
        (("key",), "not bytes"),
        (("pending", "key"), b"\x00" * 33),
        (("candidates",), [{"epoch": 1}]),
        (("seed",), {"r0": R0}),
        (("seed",), {"r0": R0, "seed_id": SEED_ID, "extra": 1}),
        (("policy", "soft_messages"), 0),
        (("key_age_ms",), "x"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_damaged_keystore_is_malformed(path: tuple[str, ...], value: Any) -> None:
    d = full_keystore().to_dict()
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(MalformedMessage):
        Keystore.decode(_encode(d))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("key",), b"\x00" * 31),
        (("prev_key",), 7),
        (("pending", "key"), b""),
        (("pending",), {"key": K1.raw}),
        (("window",), {"window_id": b"\x01" * 16}),
        (("seed", "policy"), {"soft_messages": 2, "hard_messages": 1}),
        (("policy", "hard_age_s"), 1),
        (("key_created_at_ms",), b"x"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_damaged_record_is_malformed(path: tuple[str, ...], value: Any) -> None:
    d = full_record().to_dict()
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(MalformedMessage):
        DeviceRecord.decode(_encode(d))


@pytest.mark.parametrize(
    ("cls", "make", "field", "value"),
    [
        (Keystore, full_keystore, "epoch", b"\x04"),
        (Keystore, full_keystore, "device_id", 7),
        (Keystore, full_keystore, "pool", "pool"),
        (DeviceRecord, full_record, "epoch", "4"),
        (DeviceRecord, full_record, "revoked", 0),
        (DeviceRecord, full_record, "version", b"\x09"),
    ],
    ids=[
        "keystore-epoch",
        "keystore-device-id",
        "keystore-pool",
        "record-epoch",
        "record-revoked",
        "record-version",
    ],
)
def test_field_of_wrong_type_is_malformed(cls: Any, make: Any, field: str, value: Any) -> None:
    """A damaged file whose CBOR still parses must not load with a field of the wrong type."""
    d = make().to_dict()
    d[field] = value
    with pytest.raises(MalformedMessage):
        cls.decode(_encode(d))


@pytest.mark.parametrize(("cls", "make"), BOTH, ids=BOTH_IDS)
def test_partial_policy_is_malformed(cls: Any, make: Any) -> None:
    """A policy map that lost fields must not load with defaults silently filled in."""
    d = make().to_dict()
    d["policy"] = {"soft_messages": 1}
    with pytest.raises(MalformedMessage):
        cls.decode(_encode(d))


def test_policy_limit_of_wrong_type_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        records_module._policy_from(
            {"soft_messages": True, "hard_messages": 5, "soft_age_s": 1, "hard_age_s": 2}
        )
