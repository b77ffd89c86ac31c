"""The stored vectors under tests/vectors/, checked byte for byte.

Each vector is checked twice: against keyseed's own API, and (where the construction is
documented) against a second computation from the label strings in the file, built on the
standard library alone (``hmac``, ``hashlib``, ``struct``) and on pyca's bare AEADs. The second
computation is what a reader of the docs would write, so the vectors pin the documented
construction, not just whatever the code happens to output.

These tests only read the files; ``scripts/gen_vectors.py`` (``make vectors``) writes them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from keyseed.crypto import DecryptError, fingerprint, get_suite, lp
from keyseed.crypto import schedule as ks
from keyseed.protocol import errors as perr
from keyseed.protocol.admin import register
from keyseed.protocol.channel import L_AAD, Channel, aad
from keyseed.protocol.constants import MAX_FRAME, VERSION
from keyseed.protocol.events import StoreRecord
from keyseed.protocol.messages import (
    MESSAGES,
    Hello,
    Message,
    Msg203,
    Msg204,
    Policy,
    SealedFrame,
    decode_frame,
    decode_plain,
    encode_body,
    loads_strict,
)
from keyseed.protocol.server import ServerContext, ServerProtocol

VECTORS = Path(__file__).parent / "vectors"
CLASSES: dict[str, type[Message]] = {cls.__name__: cls for cls in MESSAGES.values()}
CLASSES["Policy"] = Policy


@cache
def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def params(name: str, *path: str) -> list[Any]:
    """pytest params for a list of vectors, with their ids."""
    node = load(name)
    for key in path:
        node = node[key]
    return [pytest.param(v, id=v["id"]) for v in node]


def x(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


# -- a second computation, from the documented construction --------------------------------


def ref_lp(*fields: bytes | str | int) -> bytes:
    """u16-be length then bytes; str as UTF-8, int as u64-be."""
    out = b""
    for f in fields:
        if isinstance(f, int):
            raw = struct.pack(">Q", f)
        elif isinstance(f, str):
            raw = f.encode("utf-8")
        else:
            raw = f
        out += struct.pack(">H", len(raw)) + raw
    return out


def ref_hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def ref_extract(salt: bytes, ikm: bytes) -> bytes:
    return ref_hmac(salt or bytes(32), ikm)


def ref_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = ref_hmac(prk, t + info + bytes([i]))
        out, i = out + t, i + 1
    return out[:length]


def ref_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return ref_expand(ref_extract(salt, ikm), info, length)


def fields_of(items: list[dict[str, Any]]) -> tuple[bytes | str | int, ...]:
    """Typed ``lp`` fields from a vector: {"hex": ...}, {"str": ...} or {"int": ...}."""
    out: list[bytes | str | int] = []
    for item in items:
        ((kind, value),) = item.items()
        out.append(x(value) if kind == "hex" else value)
    return tuple(out)


def test_reference_hkdf_matches_rfc5869() -> None:
    """RFC 5869 appendix A.1, so the second computation is itself right."""
    okm = ref_hkdf(
        ikm=b"\x0b" * 22, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


# -- key_schedule.json ---------------------------------------------------------------------


def test_labels_match_the_schedule() -> None:
    """The labels a reader recomputes from are the ones the code uses."""
    data = load("key_schedule.json")
    assert data["version"] == ks.VERSION == VERSION
    for name, label in data["labels"].items():
        assert getattr(ks, name) == label, name
    assert len(set(data["labels"].values())) == len(data["labels"]), "a label is reused"


@pytest.mark.parametrize("vec", params("key_schedule.json", "lp"))
def test_lp(vec: dict[str, Any]) -> None:
    flds = fields_of(vec["fields"])
    assert lp(*flds).hex() == vec["encoded"]
    assert ref_lp(*flds).hex() == vec["encoded"]


@pytest.mark.parametrize("vec", params("key_schedule.json", "derive_k"))
def test_derive_k(vec: dict[str, Any]) -> None:
    i = vec["inputs"]
    r0, r1, seed_id = x(i["r0"]), x(i["r1"]), x(i["seed_id"])
    server_fp, prev, h203 = x(i["server_fp"]), x(i["prev_key_id"]), x(i["h203"])
    ctx = (i["suite"], i["device_id"], i["epoch"], seed_id, server_fp, prev, h203)
    # The documented info and K.
    info = ref_lp(vec["label"], vec["version"], *ctx)
    assert info.hex() == vec["info"]
    raw = ref_hkdf(ikm=r1, salt=r0, info=info, length=32)
    assert raw.hex() == vec["k"]
    assert ref_expand(raw, ref_lp(ks.L_KEY_ID), 16).hex() == vec["key_id"]
    assert ref_expand(raw, ref_lp(ks.L_CONTINUITY), 32).hex() == vec["continuity"]
    hs = ref_expand(raw, ref_lp(ks.L_HS_KEY), 32)
    assert hs.hex() == vec["handshake_key"]
    sas = int.from_bytes(ref_expand(raw, ref_lp(ks.L_SAS), 8), "big") % 1_000_000
    assert f"{sas:06d}" == vec["sas"]
    # The API.
    key = ks.derive_k(
        r0,
        r1,
        suite=i["suite"],
        device_id=i["device_id"],
        epoch=i["epoch"],
        seed_id=seed_id,
        server_fp=server_fp,
        prev_key_id=prev,
        h203=h203,
    )
    assert key.raw.hex() == vec["k"]
    assert key.key_id.hex() == vec["key_id"]
    assert key.continuity.hex() == vec["continuity"]
    assert key.sas() == vec["sas"]
    assert key == ks.SharedKey(raw)
    for m in vec["macs"]:
        flds = fields_of(m["fields"])
        assert m["label"] == getattr(ks, m["label_name"])
        assert key.mac(m["label"], *flds).hex() == m["mac"], m["label_name"]
        assert ref_hmac(hs, ref_lp(m["label"], *flds)).hex() == m["mac"], m["label_name"]
    t = vec["traffic"]
    nd, ns = x(t["nd"]), x(t["ns"])
    prk = ref_extract(nd + ns, raw)
    for direction in (ks.D2S, ks.S2D):
        tk, iv = ks.traffic_keys(key, nd=nd, ns=ns, device_id=t["device_id"], direction=direction)
        assert (tk.hex(), iv.hex()) == (t[direction]["key"], t[direction]["iv"])
        ctx_t = (direction, t["device_id"], key.key_id)
        assert ref_expand(prk, ref_lp(ks.L_TRAFFIC_KEY, *ctx_t), 32) == tk
        assert ref_expand(prk, ref_lp(ks.L_TRAFFIC_IV, *ctx_t), 12) == iv
    assert t[ks.D2S] != t[ks.S2D]


@pytest.mark.parametrize("vec", params("key_schedule.json", "p_info"))
def test_p_info(vec: dict[str, Any]) -> None:
    i = vec["inputs"]
    seed_id, nd, ns = x(i["seed_id"]), x(i["nd"]), x(i["ns"])
    got = ks.p_info(
        suite=i["suite"], device_id=i["device_id"], epoch=i["epoch"], seed_id=seed_id, nd=nd, ns=ns
    )
    assert got.hex() == vec["info"]
    ref = ref_lp(
        vec["label"], vec["version"], i["suite"], i["device_id"], i["epoch"], seed_id, nd, ns
    )
    assert ref.hex() == vec["info"]


@pytest.mark.parametrize("vec", params("key_schedule.json", "setup_code_key"))
def test_setup_code_key(vec: dict[str, Any]) -> None:
    salt = ref_lp(vec["label"], vec["device_id"])
    assert salt.hex() == vec["salt"]
    assert ks.setup_code_key(vec["device_id"], vec["code"]).hex() == vec["k_code"]
    s = vec["scrypt"]
    ref = hashlib.scrypt(
        vec["code"].encode(), salt=salt, n=s["n"], r=s["r"], p=s["p"], maxmem=2**26, dklen=32
    )
    assert ref.hex() == vec["k_code"]


@pytest.mark.parametrize("vec", params("key_schedule.json", "authenticator"))
def test_authenticator(vec: dict[str, Any]) -> None:
    i = vec["inputs"]
    key = x(vec["key"])
    b = {k: x(i[k]) for k in ("seed_id", "nd", "ns", "r1", "s", "r0")}
    got = ks.authenticator(key, suite=i["suite"], device_id=i["device_id"], epoch=i["epoch"], **b)
    assert got.hex() == vec["a"]
    ctx = (
        i["suite"],
        i["device_id"],
        i["epoch"],
        *(b[k] for k in ("seed_id", "nd", "ns", "r1", "s", "r0")),
    )
    ref = ref_hmac(key, ref_lp(vec["label"], vec["version"], *ctx))
    assert ref.hex() == vec["a"]


def test_authenticator_vectors_cover_both_forms() -> None:
    """Enrolment binds R0 and is keyed by k_code; a rekey binds no R0."""
    by_id = {v["id"]: v for v in load("key_schedule.json")["authenticator"]}
    assert by_id["enrol-with-r0"]["inputs"]["r0"] != ""
    assert by_id["rekey-without-r0"]["inputs"]["r0"] == ""
    codes = {v["k_code"] for v in load("key_schedule.json")["setup_code_key"]}
    assert by_id["enrol-with-r0"]["key"] in codes
    conts = {v["continuity"] for v in load("key_schedule.json")["derive_k"]}
    assert by_id["rekey-without-r0"]["key"] in conts


@pytest.mark.parametrize("vec", params("key_schedule.json", "reject_value"))
def test_reject_value(vec: dict[str, Any]) -> None:
    k, p, n = x(vec["k_reject"]), x(vec["p"]), vec["length"]
    assert ks.reject_value(k, p, n).hex() == vec["x"]
    assert ref_expand(ref_hmac(k, p), ref_lp(vec["label"]), n).hex() == vec["x"]


def test_pool() -> None:
    v = load("key_schedule.json")["pool"]
    labels = v["labels"]
    secret = x(v["install_secret"])
    assert ks.pool_init(secret).hex() == v["init"]
    assert ref_hkdf(secret, b"", ref_lp(labels["init"]), 32).hex() == v["init"]
    pool = v["init"]
    for d in v["draws"]:
        assert d["pool"] == pool, "each draw starts from the previous draw's next pool"
        out, nxt = ks.pool_draw(x(d["pool"]), x(d["entropy"]), d["n"])
        assert (out.hex(), nxt.hex()) == (d["out"], d["next"])
        okm = ref_hkdf(x(d["entropy"]), x(d["pool"]), ref_lp(labels["draw"], d["n"]), d["n"] + 32)
        assert okm.hex() == d["out"] + d["next"]
        pool = d["next"]
    a = v["absorb"]
    assert a["pool"] == pool
    assert ks.pool_absorb(x(a["pool"]), x(a["data"])).hex() == a["next"]
    ref = ref_hkdf(x(a["data"]), x(a["pool"]), ref_lp(labels["absorb"]), 32)
    assert ref.hex() == a["next"]


# -- messages.json -----------------------------------------------------------------------


def py_value(value: Any) -> Any:
    """A field value from its JSON form, as the dataclass holds it."""
    if isinstance(value, dict) and set(value) == {"hex"}:
        return x(value["hex"])
    if isinstance(value, dict) and set(value) == {"Policy"}:
        return Policy(**{k: py_value(v) for k, v in value["Policy"].items()})
    if isinstance(value, list):
        return tuple(py_value(v) for v in value)
    return value


def wire_value(value: Any) -> Any:
    """A field value from its JSON form, as the CBOR body carries it."""
    if isinstance(value, dict) and set(value) == {"hex"}:
        return x(value["hex"])
    if isinstance(value, dict) and set(value) == {"Policy"}:
        return wire_body(value["Policy"])
    if isinstance(value, list):
        return [wire_value(v) for v in value]
    return value


def wire_body(flds: dict[str, Any]) -> dict[str, Any]:
    """The body map: an absent optional field is absent, never null."""
    return {k: wire_value(v) for k, v in flds.items() if v is not None}


def build(vec: dict[str, Any]) -> Message:
    cls = CLASSES[vec["class"]]
    return cls(**{k: py_value(v) for k, v in vec["fields"].items()})


def test_every_message_has_a_vector() -> None:
    data = load("messages.json")
    assert data["version"] == VERSION
    covered = {v["class"] for v in data["messages"]}
    assert covered == {cls.__name__ for cls in MESSAGES.values()}
    assert [v["class"] for v in data["policy"]] == ["Policy"]
    # Every optional field is seen both present and absent.
    for cls in MESSAGES.values():
        for name, spec in cls.SPEC.items():
            if spec.optional:
                seen = {
                    v["fields"][name] is None
                    for v in data["messages"]
                    if v["class"] == cls.__name__
                }
                assert seen == {True, False}, f"{cls.__name__}.{name}"


@pytest.mark.parametrize("vec", params("messages.json", "messages"))
def test_message(vec: dict[str, Any]) -> None:
    raw = x(vec["encoded"])
    msg = build(vec)
    assert vec["type"] == msg.TYPE
    assert set(vec["fields"]) == set(msg.SPEC)
    # Encode reproduces the bytes; decode gives the message back.
    assert msg.encode() == raw
    assert decode_plain(raw) == msg
    assert type(msg).decode(raw) == msg
    # Independently: the bytes are the canonical CBOR of [version, type, body].
    assert cbor2.loads(raw) == [VERSION, vec["type"], wire_body(vec["fields"])]
    assert cbor2.dumps(cbor2.loads(raw), canonical=True) == raw


@pytest.mark.parametrize("vec", params("messages.json", "policy"))
def test_policy(vec: dict[str, Any]) -> None:
    raw = x(vec["encoded"])
    policy = build(vec)
    assert encode_body(policy) == raw
    assert Policy.from_body(loads_strict(raw)) == policy
    assert cbor2.loads(raw) == wire_body(vec["fields"])


@pytest.mark.parametrize("vec", params("messages.json", "rejects"))
def test_reject(vec: dict[str, Any]) -> None:
    expected = getattr(perr, vec["error"])
    decoder = {"decode_plain": decode_plain, "decode_frame": decode_frame}[vec["decoder"]]
    with pytest.raises(perr.KeyseedError) as info:
        decoder(x(vec["frame"]), vec.get("max_size", MAX_FRAME))
    assert type(info.value) is expected
    assert info.value.code == expected.code


# -- channel.json ------------------------------------------------------------------------


def channel_for(vec: dict[str, Any], *, sender: bool) -> Channel:
    """The sending side (sender=True) or the receiving side of the case's direction."""
    device_sends = vec["direction"] == ks.D2S
    ch = Channel(
        device_id=vec["device_id"],
        nd=x(vec["nd"]),
        ns=x(vec["ns"]),
        is_device=device_sends if sender else not device_sends,
        cipher=vec["cipher"],
    )
    key = ks.SharedKey(x(vec["k"]))
    if sender:
        ch.install_send(key, vec["epoch"])
    else:
        ch.install_recv(key, vec["epoch"])
    return ch


@pytest.mark.parametrize("vec", params("channel.json", "cases"))
def test_channel_seal(vec: dict[str, Any]) -> None:
    key = ks.SharedKey(x(vec["k"]))
    assert key.key_id.hex() == vec["key_id"]
    tk, iv = ks.traffic_keys(
        key,
        nd=x(vec["nd"]),
        ns=x(vec["ns"]),
        device_id=vec["device_id"],
        direction=vec["direction"],
    )
    assert (tk.hex(), iv.hex()) == (vec["traffic_key"], vec["iv"])
    ch = channel_for(vec, sender=True)
    for f in vec["frames"]:
        assert ch.seal(build(f)).hex() == f["frame"], f"seq {f['seq']}"


@pytest.mark.parametrize("vec", params("channel.json", "cases"))
def test_channel_frame_layout(vec: dict[str, Any]) -> None:
    """Each frame recomputed from the documented layout with pyca's bare AEAD."""
    data = load("channel.json")
    assert data["aad_label"] == L_AAD
    tk, iv = x(vec["traffic_key"]), x(vec["iv"])
    cipher = ChaCha20Poly1305(tk) if vec["cipher"] == "chacha20-poly1305" else AESGCM(tk)
    for seq, f in enumerate(vec["frames"]):
        assert f["seq"] == seq
        msg = build(f)
        assert encode_body(msg).hex() == f["body"]
        assert cbor2.loads(x(f["body"])) == wire_body(f["fields"])
        ctx = (VERSION, vec["device_id"], vec["direction"], f["type"], vec["epoch"], seq)
        assert ref_lp(data["aad_label"], *ctx).hex() == f["aad"]
        assert (
            aad(vec["device_id"], vec["direction"], msg.TYPE, vec["epoch"], seq).hex() == f["aad"]
        )
        nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
        assert nonce.hex() == f["nonce"]
        ct = cipher.encrypt(nonce, x(f["body"]), x(f["aad"]))
        assert cbor2.loads(x(f["frame"])) == [VERSION, f["type"], vec["epoch"], seq, ct]
        assert cipher.decrypt(nonce, ct, x(f["aad"])).hex() == f["body"]


@pytest.mark.parametrize("vec", params("channel.json", "cases"))
def test_channel_open(vec: dict[str, Any]) -> None:
    ch = channel_for(vec, sender=False)
    for f in vec["frames"]:
        frame = decode_frame(x(f["frame"]))
        assert isinstance(frame, SealedFrame)
        assert (frame.type, frame.epoch, frame.seq) == (f["type"], vec["epoch"], f["seq"])
        assert ch.open(frame) == build(f)


@pytest.mark.parametrize("vec", params("channel.json", "cases"))
def test_channel_rejects_reflection_and_replay(vec: dict[str, Any]) -> None:
    """The sender's own side cannot open its frames (no reflection); a frame opens once."""
    first = decode_frame(x(vec["frames"][0]["frame"]))
    assert isinstance(first, SealedFrame)
    mirror = channel_for(vec, sender=True)
    mirror.install_recv(ks.SharedKey(x(vec["k"])), vec["epoch"])
    with pytest.raises(perr.AuthenticationFailed):
        mirror.open(first)
    ch = channel_for(vec, sender=False)
    ch.open(first)
    with pytest.raises(perr.BadSequence):
        ch.open(first)


# -- pke.json ----------------------------------------------------------------------------


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("vec", params("pke.json", "suites"))
def test_pke_decrypt(vec: dict[str, Any]) -> None:
    suite = get_suite(vec["suite"])
    priv = suite.load_private(x(vec["private_key"]))
    assert suite.private_bytes(priv).hex() == vec["private_key"]
    pub = priv.public_key
    assert pub.raw.hex() == vec["public_key"]
    assert suite.load_public(pub.raw) == pub
    ref_fp = hashlib.sha256(
        ref_lp(load("pke.json")["fingerprint_label"], vec["suite"], pub.raw)
    ).digest()
    assert pub.fingerprint.hex() == fingerprint(vec["suite"], pub.raw).hex() == vec["fingerprint"]
    assert ref_fp.hex() == vec["fingerprint"]
    c = vec["context"]
    info = ks.p_info(
        suite=vec["suite"],
        device_id=c["device_id"],
        epoch=c["epoch"],
        seed_id=x(c["seed_id"]),
        nd=x(c["nd"]),
        ns=x(c["ns"]),
    )
    assert info.hex() == vec["info"]
    ct, pt = x(vec["ciphertext"]), x(vec["plaintext"])
    assert suite.ciphertext_len(len(pt)) == len(ct)
    assert suite.decrypt(priv, ct, info) == pt
    for index in (0, len(ct) // 2, len(ct) - 1):
        with pytest.raises(DecryptError):
            suite.decrypt(priv, flip(ct, index), info)
    with pytest.raises(DecryptError):
        suite.decrypt(priv, ct, x(vec["other_info"]))
    with pytest.raises(DecryptError):
        suite.decrypt(priv, ct[:-1], info)


def test_fingerprints_bound_into_k() -> None:
    """derive_k's server_fp inputs are the fingerprints of the keys in pke.json."""
    fps = {v["suite"]: v["fingerprint"] for v in load("pke.json")["suites"]}
    for vec in load("key_schedule.json")["derive_k"]:
        assert vec["inputs"]["server_fp"] == fps[vec["inputs"]["suite"]], vec["id"]


def test_203_server_derivation() -> None:
    """The server's steps S22-S26 on a stored enrolment 203, computed from the vector."""
    v = load("pke.json")["m203"]
    raw = x(v["m203"])
    msg = Msg203.decode(raw)
    assert msg.encode() == raw
    assert (msg.device_id, msg.epoch, msg.suite) == (v["device_id"], v["epoch"], v["suite"])
    assert (msg.seed_id.hex(), msg.s.hex(), msg.p.hex()) == (v["seed_id"], v["s"], v["p"])
    h203 = hashlib.sha256(raw).digest()
    assert h203.hex() == v["h203"]
    suite = get_suite(msg.suite)
    priv = suite.load_private(x(v["server_private_key"]))
    server_fp = fingerprint(msg.suite, priv.public_key.raw)
    assert server_fp.hex() == v["server_fp"]
    nd, ns = x(v["nd"]), x(v["ns"])
    info = ks.p_info(
        suite=msg.suite, device_id=msg.device_id, epoch=msg.epoch, seed_id=msg.seed_id, nd=nd, ns=ns
    )
    assert info.hex() == v["info"]
    # S22/S23: open P; S24: split X = R1 || S || A || R0.
    xx = suite.decrypt(priv, msg.p, info)
    assert xx.hex() == v["x"] and len(xx) == 32 + 16 + 32 + 32
    r1, s, a, r0 = xx[:32], xx[32:48], xx[48:80], xx[80:]
    assert (r1.hex(), s.hex(), a.hex(), r0.hex()) == (v["r1"], v["s"], v["a"], v["r0"])
    # S25: S matches, and A verifies under k_code.
    assert s == msg.s
    k_code = ks.setup_code_key(msg.device_id, v["setup_code"])
    assert k_code.hex() == v["k_code"]
    expected_a = ks.authenticator(
        k_code,
        suite=msg.suite,
        device_id=msg.device_id,
        epoch=msg.epoch,
        seed_id=msg.seed_id,
        nd=nd,
        ns=ns,
        r1=r1,
        s=s,
        r0=r0,
    )
    assert expected_a == a
    # S26: K.
    key = ks.derive_k(
        r0,
        r1,
        suite=msg.suite,
        device_id=msg.device_id,
        epoch=msg.epoch,
        seed_id=msg.seed_id,
        server_fp=server_fp,
        prev_key_id=b"",
        h203=h203,
    )
    assert (key.raw.hex(), key.key_id.hex()) == (v["k"], v["key_id"])
    ok = Msg204(ok=True, mac=key.mac(ks.L_204_OK, h203, nd, ns))
    assert ok.encode().hex() == v["m204_ok"]


def test_203_server_protocol() -> None:
    """The same 203 through ServerProtocol: with the vector's Ns it answers 204 OK under
    the vector's K, and records that K as the pending exchange."""
    v = load("pke.json")["m203"]
    suite = get_suite(v["suite"])
    ctx = ServerContext(
        keys={v["suite"]: suite.load_private(x(v["server_private_key"]))}, k_reject=x(v["k_reject"])
    )
    rec = register(
        None,
        device_id=v["device_id"],
        suite=v["suite"],
        setup_code=v["setup_code"],
        window_s=600,
        db_now=0.0,
        entropy=bytes,
    )
    assert rec.window is not None and rec.window.k_code.hex() == v["k_code"]
    draws = iter([x(v["ns"])])

    def entropy(n: int) -> bytes:
        out = next(draws)
        assert len(out) == n
        return out

    server = ServerProtocol(ctx, now=0.0, entropy=entropy)
    hello = x(v["hello"])
    assert Hello.decode(hello).nd.hex() == v["nd"]
    server.receive_message(hello, 0.0)
    server.provide_record(rec, 0.0, 0.0)
    assert server.messages_to_send() == [x(v["hello_ack"])]
    server.receive_message(x(v["m203"]), 0.0)
    server.provide_record(rec, 0.0, 0.0)
    stores = [e for e in server.events_received() if isinstance(e, StoreRecord)]
    assert stores and stores[-1].record.pending is not None
    pending = stores[-1].record.pending
    assert pending.key.raw.hex() == v["k"] and pending.epoch == v["epoch"]
    assert server.messages_to_send() == [x(v["m204_ok"])]
