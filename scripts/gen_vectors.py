"""Regenerate the test vectors under tests/vectors/ from fixed inputs.

Every input is fixed below (R0, R1, S, setup codes, Nd, Ns, device IDs, seed IDs, private keys),
so running this script twice writes the same files byte for byte. The one exception is public-key
encryption: HPKE and RSA-OAEP encryption is randomised, so ``pke.json`` holds decryption vectors
made once. Without ``--pke`` the script reuses the stored RSA key and ciphertexts (and checks that
they still decrypt to the recomputed plaintexts); with ``--pke`` it draws a fresh RSA key and
fresh ciphertexts, and every vector that depends on them (the fingerprints bound into K, the 203
vector) follows.

The tests only read these files; they never regenerate them.

Usage: ``python scripts/gen_vectors.py [--pke]`` (``make vectors``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from keyseed.crypto import DecryptError, expand, fingerprint, get_suite, lp, sha256
from keyseed.crypto import schedule as ks
from keyseed.protocol import errors as perr
from keyseed.protocol.channel import L_AAD, Channel, aad
from keyseed.protocol.constants import MAX_FRAME, VERSION
from keyseed.protocol.messages import (
    MESSAGES,
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
    PairAck,
    PairData,
    PairKey,
    PairRefused,
    PairRequest,
    PairSync,
    Policy,
    SeedRequest,
    decode_frame,
    decode_plain,
    encode_body,
)

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors"

SUITE_NAMES = ("hpke-x25519", "hpke-mlkem768-x25519", "rsa-oaep")

#: Every label of the key schedule, by constant name, so a reader of the docs can recompute.
LABELS = {
    name: getattr(ks, name)
    for name in (
        "L_K",
        "L_KEY_ID",
        "L_P_INFO",
        "L_AUTH",
        "L_CONTINUITY",
        "L_SETUP_CODE",
        "L_HS_KEY",
        "L_HELLO_PROOF",
        "L_HELLO_ACK",
        "L_FIN",
        "L_204_OK",
        "L_TRAFFIC_KEY",
        "L_TRAFFIC_IV",
        "L_SAS",
        "L_REJECT",
        "L_POOL_INIT",
        "L_POOL_DRAW",
        "L_POOL_ABSORB",
    )
}


def fixed(tag: str, n: int) -> bytes:
    """``n`` fixed bytes named by ``tag``: SHA-256 in counter mode, so the inputs are
    reproducible from their names and look like the random values they stand for."""
    out = b""
    counter = 0
    while len(out) < n:
        out += sha256(f"keyseed test vector {tag} {counter}".encode())
        counter += 1
    return out[:n]


# -- JSON helpers -------------------------------------------------------------------------

Field = bytes | str | int


def typed(field: Field) -> dict[str, Any]:
    """An ``lp`` field with its type, so a reader knows how it is encoded."""
    if isinstance(field, bytes):
        return {"hex": field.hex()}
    if isinstance(field, str):
        return {"str": field}
    return {"int": field}


def value_json(value: object) -> object:
    """A message field value: bytes as ``{"hex": ...}``, lists as lists, Policy nested."""
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, tuple):
        return [value_json(v) for v in value]
    if isinstance(value, Policy):
        return {"Policy": fields_json(value)}
    return value


def fields_json(msg: Message) -> dict[str, object]:
    return {name: value_json(getattr(msg, name)) for name in msg.SPEC}


def write(name: str, data: object) -> None:
    path = OUT / name
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(OUT.parent.parent)} ({path.stat().st_size} bytes)")


# -- fixed inputs ---------------------------------------------------------------------------

DEVICE_ID = "oven-0001"
ND = fixed("Nd", 32)
NS = fixed("Ns", 32)
SETUP_CODE = "12345678"
K_REJECT = fixed("k_reject", 32)
#: Private keys derived from fixed bytes (the RSA key cannot be: it lives in pke.json).
X25519_PRIVATE = fixed("x25519 server key", 32)
XWING_PRIVATE = fixed("x-wing server key", 96)


# -- pke.json ----------------------------------------------------------------------------


def pke_vectors(regenerate: bool) -> dict[str, Any]:
    """Decryption vectors: fixed private keys, a plaintext, a ciphertext made once."""
    path = OUT / "pke.json"
    old: dict[str, Any] | None = None
    if path.exists() and not regenerate:
        old = json.loads(path.read_text(encoding="utf-8"))
    old_by_suite = {v["suite"]: v for v in old["suites"]} if old else {}

    vectors = []
    for name in SUITE_NAMES:
        suite = get_suite(name)
        if name == "hpke-x25519":
            priv = suite.load_private(X25519_PRIVATE)
        elif name == "hpke-mlkem768-x25519":
            priv = suite.load_private(XWING_PRIVATE)
        elif name in old_by_suite:
            priv = suite.load_private(bytes.fromhex(old_by_suite[name]["private_key"]))
        else:
            priv = suite.generate()
        seed_id = fixed(f"pke seed_id {name}", 16)
        epoch = 3
        info = ks.p_info(
            suite=name, device_id=DEVICE_ID, epoch=epoch, seed_id=seed_id, nd=ND, ns=NS
        )
        other_info = ks.p_info(
            suite=name, device_id=DEVICE_ID, epoch=epoch + 1, seed_id=seed_id, nd=ND, ns=NS
        )
        # X of a rekey: R1 || S || A (80 bytes).
        plaintext = fixed(f"pke X {name}", 80)
        ct = reuse_or_encrypt(old_by_suite.get(name), suite, priv, plaintext, info)
        vectors.append(
            {
                "id": name,
                "suite": name,
                "private_key": suite.private_bytes(priv).hex(),
                "public_key": priv.public_key.raw.hex(),
                "fingerprint": priv.public_key.fingerprint.hex(),
                "context": {
                    "device_id": DEVICE_ID,
                    "epoch": epoch,
                    "seed_id": seed_id.hex(),
                    "nd": ND.hex(),
                    "ns": NS.hex(),
                },
                "info": info.hex(),
                "other_info": other_info.hex(),
                "plaintext": plaintext.hex(),
                "ciphertext": ct.hex(),
            }
        )
    m203 = vector_203(old["m203"] if old else None)
    return {
        "description": (
            "Decryption vectors for the PKE suites (encryption is randomised, so the "
            "ciphertexts were made once). info = p_info(suite, device_id, epoch, seed_id, "
            "Nd, Ns); other_info differs only in the epoch and must not open the ciphertext. "
            "fingerprint = SHA-256(lp(fingerprint_label, suite, public_key)). "
            "m203 is a complete hpke-x25519 enrolment 203 with the K the server derives."
        ),
        "fingerprint_label": "keyseed/1 fingerprint",
        "suites": vectors,
        "m203": m203,
    }


def reuse_or_encrypt(
    old: dict[str, Any] | None, suite: Any, priv: Any, plaintext: bytes, info: bytes
) -> bytes:
    """The stored ciphertext if it still opens to ``plaintext``; a fresh one otherwise only
    when regenerating (``--pke`` or no file yet)."""
    if old is not None:
        ct = bytes.fromhex(old["ciphertext"])
        try:
            if suite.decrypt(priv, ct, info) == plaintext:
                return ct
        except DecryptError:
            pass
        sys.exit(f"stored {suite.name} ciphertext no longer opens: run with --pke")
    return bytes(suite.encrypt(priv.public_key, plaintext, info))


def vector_203(old: dict[str, Any] | None) -> dict[str, Any]:
    """An hpke-x25519 enrolment 203, end to end: what the device sends, what the server
    derives. The server's long-term key is the fixed X25519 key above."""
    name = "hpke-x25519"
    suite = get_suite(name)
    priv = suite.load_private(X25519_PRIVATE)
    server_fp = fingerprint(name, priv.public_key.raw)
    device_id, epoch = "oven-0203", 1
    nd, ns = fixed("203 Nd", 32), fixed("203 Ns", 32)
    r0, seed_id = fixed("203 R0", 32), fixed("203 seed_id", 16)
    r1, s = fixed("203 R1", 32), fixed("203 S", 16)
    k_code = ks.setup_code_key(device_id, SETUP_CODE)
    a = ks.authenticator(
        k_code,
        suite=name,
        device_id=device_id,
        epoch=epoch,
        seed_id=seed_id,
        nd=nd,
        ns=ns,
        r1=r1,
        s=s,
        r0=r0,
    )
    x = r1 + s + a + r0
    info = ks.p_info(suite=name, device_id=device_id, epoch=epoch, seed_id=seed_id, nd=nd, ns=ns)
    p = reuse_or_encrypt(None if old is None else {"ciphertext": old["p"]}, suite, priv, x, info)
    hello = Hello(device_id=device_id, suite=name, nd=nd)
    msg = Msg203(device_id=device_id, epoch=epoch, suite=name, seed_id=seed_id, s=s, p=p)
    raw = msg.encode()
    h203 = sha256(raw)
    key = ks.derive_k(
        r0,
        r1,
        suite=name,
        device_id=device_id,
        epoch=epoch,
        seed_id=seed_id,
        server_fp=server_fp,
        prev_key_id=b"",
        h203=h203,
    )
    return {
        "suite": name,
        "device_id": device_id,
        "setup_code": SETUP_CODE,
        "k_code": k_code.hex(),
        "epoch": epoch,
        "nd": nd.hex(),
        "ns": ns.hex(),
        "k_reject": K_REJECT.hex(),
        "hello": hello.encode().hex(),
        "hello_ack": HelloAck(ns=ns, epoch=0).encode().hex(),
        "server_private_key": X25519_PRIVATE.hex(),
        "server_fp": server_fp.hex(),
        "r0": r0.hex(),
        "seed_id": seed_id.hex(),
        "r1": r1.hex(),
        "s": s.hex(),
        "a": a.hex(),
        "x": x.hex(),
        "info": info.hex(),
        "p": p.hex(),
        "m203": raw.hex(),
        "h203": h203.hex(),
        "k": key.raw.hex(),
        "key_id": key.key_id.hex(),
        "m204_ok": Msg204(ok=True, mac=key.mac(ks.L_204_OK, h203, nd, ns)).encode().hex(),
    }


# -- key_schedule.json -----------------------------------------------------------------


def mac_cases(key: ks.SharedKey, device_id: str, suite: str, epoch: int) -> list[dict[str, Any]]:
    """The handshake MACs with the fields the protocol gives them."""
    h_hello, h_ack, h203 = fixed("hash HELLO", 32), fixed("hash HELLO_ACK", 32), fixed("h203", 32)
    cases: list[tuple[str, tuple[Field, ...]]] = [
        ("L_HELLO_PROOF", (device_id, suite, ND, key.key_id)),
        ("L_HELLO_ACK", (h_hello, NS, epoch, key.key_id)),
        ("L_FIN", (h_hello, h_ack)),
        ("L_204_OK", (h203, ND, NS)),
    ]
    return [
        {
            "label_name": label_name,
            "label": LABELS[label_name],
            "fields": [typed(f) for f in flds],
            "mac": key.mac(LABELS[label_name], *flds).hex(),
        }
        for label_name, flds in cases
    ]


def derive_k_case(
    case_id: str, suite: str, epoch: int, prev_key_id: bytes, server_fp: bytes
) -> tuple[dict[str, Any], ks.SharedKey]:
    r0, r1 = fixed(f"{case_id} R0", 32), fixed(f"{case_id} R1", 32)
    seed_id, h203 = fixed(f"{case_id} seed_id", 16), fixed(f"{case_id} h203", 32)
    inputs: dict[str, Any] = {
        "r0": r0,
        "r1": r1,
        "suite": suite,
        "device_id": DEVICE_ID,
        "epoch": epoch,
        "seed_id": seed_id,
        "server_fp": server_fp,
        "prev_key_id": prev_key_id,
        "h203": h203,
    }
    key = ks.derive_k(
        r0,
        r1,
        suite=suite,
        device_id=DEVICE_ID,
        epoch=epoch,
        seed_id=seed_id,
        server_fp=server_fp,
        prev_key_id=prev_key_id,
        h203=h203,
    )
    info = lp(ks.L_K, ks.VERSION, suite, DEVICE_ID, epoch, seed_id, server_fp, prev_key_id, h203)
    traffic = {}
    for direction in (ks.D2S, ks.S2D):
        tk, iv = ks.traffic_keys(key, nd=ND, ns=NS, device_id=DEVICE_ID, direction=direction)
        traffic[direction] = {"key": tk.hex(), "iv": iv.hex()}
    hs = expand(key.raw, lp(ks.L_HS_KEY), 32)
    case = {
        "id": case_id,
        "inputs": {k: v.hex() if isinstance(v, bytes) else v for k, v in inputs.items()},
        "version": ks.VERSION,
        "label": ks.L_K,
        "info": info.hex(),
        "k": key.raw.hex(),
        "key_id": key.key_id.hex(),
        "continuity": key.continuity.hex(),
        "handshake_key": hs.hex(),
        "sas": key.sas(),
        "macs": mac_cases(key, DEVICE_ID, suite, epoch),
        "traffic": {"nd": ND.hex(), "ns": NS.hex(), "device_id": DEVICE_ID, **traffic},
    }
    return case, key


def key_schedule_vectors(server_fps: dict[str, bytes]) -> dict[str, Any]:
    derive = []
    keys: dict[str, ks.SharedKey] = {}
    for suite in SUITE_NAMES:
        fp = server_fps[suite]
        enrol, k1 = derive_k_case(f"enrol-{suite}", suite, 1, b"", fp)
        rekey, k2 = derive_k_case(f"rekey-{suite}", suite, 2, k1.key_id, fp)
        big, _ = derive_k_case(f"max-epoch-{suite}", suite, 2**32 - 1, k2.key_id, fp)
        derive += [enrol, rekey, big]
        keys[suite] = k1

    lp_cases: list[tuple[str, tuple[Field, ...]]] = [
        ("empty", ()),
        ("one-empty-bytes", (b"",)),
        ("ints", (0, 1, 2**32 - 1, 2**64 - 1)),
        ("str-utf8", ("keyseed/1 K", "", "fünf")),
        ("bytes", (bytes(range(5)), b"\xff" * 3)),
        ("mixed", ("label", 7, b"\x00\x01", "")),
    ]

    p_info_cases = []
    for suite, epoch in (("hpke-x25519", 1), ("rsa-oaep", 42)):
        seed_id = fixed(f"p_info seed_id {suite}", 16)
        p_info_cases.append(
            {
                "id": f"{suite}-epoch-{epoch}",
                "label": ks.L_P_INFO,
                "version": ks.VERSION,
                "inputs": {
                    "suite": suite,
                    "device_id": DEVICE_ID,
                    "epoch": epoch,
                    "seed_id": seed_id.hex(),
                    "nd": ND.hex(),
                    "ns": NS.hex(),
                },
                "info": ks.p_info(
                    suite=suite, device_id=DEVICE_ID, epoch=epoch, seed_id=seed_id, nd=ND, ns=NS
                ).hex(),
            }
        )

    code_cases = []
    for device_id, code in (
        (DEVICE_ID, SETUP_CODE),
        (DEVICE_ID, ""),
        ("sensor.7_b-2", "00000000000000000000000000000001"),
    ):
        code_cases.append(
            {
                "id": f"{device_id}-{code or 'empty'}",
                "label": ks.L_SETUP_CODE,
                "scrypt": {"n": ks.SCRYPT_N, "r": ks.SCRYPT_R, "p": ks.SCRYPT_P},
                "device_id": device_id,
                "code": code,
                "salt": lp(ks.L_SETUP_CODE, device_id).hex(),
                "k_code": ks.setup_code_key(device_id, code).hex(),
            }
        )

    k_code = ks.setup_code_key(DEVICE_ID, SETUP_CODE)
    auth_cases = []
    for case_id, key, epoch, r0 in (
        ("enrol-with-r0", k_code, 1, fixed("auth R0", 32)),
        ("rekey-without-r0", keys["hpke-x25519"].continuity, 2, b""),
    ):
        seed_id, r1, s = fixed(f"auth {case_id} seed_id", 16), fixed("auth R1", 32), fixed("S", 16)
        auth_cases.append(
            {
                "id": case_id,
                "label": ks.L_AUTH,
                "version": ks.VERSION,
                "key": key.hex(),
                "inputs": {
                    "suite": "hpke-x25519",
                    "device_id": DEVICE_ID,
                    "epoch": epoch,
                    "seed_id": seed_id.hex(),
                    "nd": ND.hex(),
                    "ns": NS.hex(),
                    "r1": r1.hex(),
                    "s": s.hex(),
                    "r0": r0.hex(),
                },
                "a": ks.authenticator(
                    key,
                    suite="hpke-x25519",
                    device_id=DEVICE_ID,
                    epoch=epoch,
                    seed_id=seed_id,
                    nd=ND,
                    ns=NS,
                    r1=r1,
                    s=s,
                    r0=r0,
                ).hex(),
            }
        )

    reject_cases = []
    for length in (80, 112):
        p = fixed(f"reject P {length}", 48 + length)
        reject_cases.append(
            {
                "id": f"length-{length}",
                "label": ks.L_REJECT,
                "k_reject": K_REJECT.hex(),
                "p": p.hex(),
                "length": length,
                "x": ks.reject_value(K_REJECT, p, length).hex(),
            }
        )

    install_secret = fixed("install secret", 32)
    pool0 = ks.pool_init(install_secret)
    draws = []
    pool = pool0
    for i, n in enumerate((32, 16, 48)):
        entropy = fixed(f"os entropy {i}", 32)
        out, nxt = ks.pool_draw(pool, entropy, n)
        draws.append(
            {
                "pool": pool.hex(),
                "entropy": entropy.hex(),
                "n": n,
                "out": out.hex(),
                "next": nxt.hex(),
            }
        )
        pool = nxt
    absorbed = fixed("absorbed R0", 32)
    pool_vec = {
        "labels": {
            "init": ks.L_POOL_INIT,
            "draw": ks.L_POOL_DRAW,
            "absorb": ks.L_POOL_ABSORB,
        },
        "install_secret": install_secret.hex(),
        "init": pool0.hex(),
        "draws": draws,
        "absorb": {
            "pool": pool.hex(),
            "data": absorbed.hex(),
            "next": ks.pool_absorb(pool, absorbed).hex(),
        },
    }

    return {
        "description": (
            "Key schedule vectors (keyseed.crypto.schedule). Every derivation is HKDF-SHA256 "
            "or HMAC-SHA256 over lp(label, fields...): each field as a big-endian u16 length "
            "then its bytes; str is UTF-8, int is a big-endian u64. server_fp in derive_k is "
            "the fingerprint of the suite's key in pke.json."
        ),
        "version": ks.VERSION,
        "labels": LABELS,
        "lp": [
            {"id": i, "fields": [typed(f) for f in flds], "encoded": lp(*flds).hex()}
            for i, flds in lp_cases
        ],
        "derive_k": derive,
        "p_info": p_info_cases,
        "setup_code_key": code_cases,
        "authenticator": auth_cases,
        "reject_value": reject_cases,
        "pool": pool_vec,
    }


# -- messages.json ---------------------------------------------------------------------

POLICY = Policy(soft_messages=1000, hard_messages=5000, soft_age_s=86400, hard_age_s=604800)


def message_instances() -> list[tuple[str, Message]]:
    """At least one instance of every message, optional fields present and absent."""
    kid, kid2 = fixed("msg key_id", 16), fixed("msg key_id 2", 16)
    mac, mac2 = fixed("msg mac", 32), fixed("msg mac 2", 32)
    seed_id = fixed("msg seed_id", 16)
    return [
        ("hello-keyless", Hello(device_id=DEVICE_ID, suite="hpke-x25519", nd=ND)),
        (
            "hello-candidates",
            Hello(device_id=DEVICE_ID, suite="hpke-x25519", nd=ND, candidates=(kid, kid2)),
        ),
        (
            "hello-current",
            Hello(device_id=DEVICE_ID, suite="rsa-oaep", nd=ND, cur_id=kid, cur_proof=mac),
        ),
        (
            "hello-current-pending",
            Hello(
                device_id=DEVICE_ID,
                suite="hpke-mlkem768-x25519",
                nd=ND,
                cur_id=kid,
                cur_proof=mac,
                pend_id=kid2,
                pend_proof=mac2,
            ),
        ),
        (
            "hello-tls-reduced",
            Hello(
                device_id=DEVICE_ID,
                suite="hpke-x25519",
                nd=ND,
                cur_id=kid,
                cur_proof=mac,
                tls_reduced=True,
            ),
        ),
        ("hello-ack-unauthenticated", HelloAck(ns=NS, epoch=0)),
        ("hello-ack-key", HelloAck(ns=NS, epoch=7, key_id=kid, mac=mac)),
        (
            "hello-ack-tls-reduced",
            HelloAck(ns=NS, epoch=7, key_id=kid, mac=mac, tls_reduced=True),
        ),
        ("fin", Fin(mac=mac)),
        ("close", Close(code=int(perr.ErrorCode.AUTH_FAILED))),
        ("close-max", Close(code=255)),
        ("ack-206", Ack206(epoch=2, seed_id=seed_id)),
        ("seed-request", SeedRequest(epoch=2)),
        ("app", App(data=b"bake 180C 25min")),
        ("app-empty", App(data=b"")),
        (
            "m201-code",
            Msg201(device_id=DEVICE_ID, suite="hpke-x25519", setup_code=SETUP_CODE, window_s=600),
        ),
        (
            "m201-no-code",
            Msg201(device_id=DEVICE_ID, suite="rsa-oaep", setup_code=None, window_s=604800),
        ),
        ("m202", Msg202(device_id=DEVICE_ID, window_s=600)),
        (
            "m203",
            Msg203(
                device_id=DEVICE_ID,
                epoch=1,
                suite="hpke-x25519",
                seed_id=seed_id,
                s=fixed("msg S", 16),
                p=fixed("msg P", 160),
            ),
        ),
        ("m204-ok", Msg204(ok=True, mac=mac)),
        ("m204-ng", Msg204(ok=False)),
        ("m205", Msg205(epoch=2)),
        (
            "m206-otk",
            Msg206(
                epoch=2,
                r0=fixed("msg R0", 32),
                seed_id=seed_id,
                otk=fixed("msg otk", 32),
                policy=POLICY,
            ),
        ),
        (
            "m206-no-otk",
            Msg206(
                epoch=2**32 - 1, r0=fixed("msg R0", 32), seed_id=seed_id, otk=None, policy=POLICY
            ),
        ),
        (
            "m206-profile",
            Msg206(
                epoch=3,
                r0=fixed("msg R0", 32),
                seed_id=seed_id,
                otk=fixed("msg otk", 32),
                policy=POLICY,
                suite="hpke-mlkem768-x25519",
                server_key=fixed("msg server key", 1216),
                tls_reduced=True,
            ),
        ),
        ("m207-ping", Msg207(pong=False, token=fixed("token", 8))),
        ("m207-pong", Msg207(pong=True, token=fixed("token", 8))),
        ("m208", Msg208(device_id=DEVICE_ID)),
        ("m209-rtt", Msg209(device_id=DEVICE_ID, ok=True, rtt_us=12345, epoch=3)),
        ("m209-no-rtt", Msg209(device_id=DEVICE_ID, ok=False, rtt_us=None, epoch=3)),
        ("m301", Msg301(device_id=DEVICE_ID)),
        ("m302", Msg302(device_id=DEVICE_ID, epoch=4)),
        ("m401", Msg401(device_id=DEVICE_ID)),
        ("m402", Msg402(device_id=DEVICE_ID, order_epoch=4)),
        ("m403", Msg403(epoch=4)),
        ("m404", Msg404(epoch=4)),
        *pair_instances(),
    ]


def pair_instances() -> list[tuple[str, Message]]:
    """The pair messages (5xx), optional fields present and absent."""
    pid = fixed("msg pair_id", 16)
    e_i, e_r = fixed("msg e_i", 32), fixed("msg e_r", 32)
    common = {"pair_id": pid, "initiator": "oven-1", "responder": "oven-2"}
    return [
        ("pair-request-relay", PairRequest(peer="oven-2", mode="relay")),
        ("pair-request-e2e-renew", PairRequest(peer="oven-2", mode="e2e", e=e_i, pair_id=pid)),
        (
            "pair-key-relay",
            PairKey(
                epoch=2,
                mode="relay",
                chained=True,
                material=fixed("msg pair material", 32),
                seed=fixed("msg pair seed", 32),
                **common,
            ),
        ),
        ("pair-key-e2e-responder", PairKey(epoch=1, mode="e2e", chained=False, e_i=e_i, **common)),
        (
            "pair-key-e2e-initiator",
            PairKey(epoch=1, mode="e2e", chained=False, e_i=e_i, e_r=e_r, **common),
        ),
        ("pair-ack", PairAck(pair_id=pid, epoch=1)),
        ("pair-ack-half", PairAck(pair_id=pid, epoch=1, e=e_r)),
        ("pair-data", PairData(pair_id=pid, epoch=1, seq=7, ct=fixed("msg pair ct", 21))),
        ("pair-refused-peer", PairRefused(peer="oven-2", cause=1)),
        ("pair-refused-pair", PairRefused(pair_id=pid, cause=2)),
        ("pair-sync", PairSync(held=(pid,))),
        ("pair-sync-empty", PairSync(held=())),
    ]


def tstr(s: str) -> bytes:
    raw = s.encode()
    assert len(raw) < 24
    return bytes([0x60 + len(raw)]) + raw


def app_frame(value: bytes) -> bytes:
    """``[1, 120, {"data": value}]`` with ``value`` given as raw CBOR."""
    return b"\x83\x01\x18\x78\xa1" + tstr("data") + value


def close_frame(value: bytes, key: str = "code", version: bytes = b"\x01") -> bytes:
    """``[version, 103, {key: value}]`` with ``value`` given as raw CBOR."""
    return b"\x83" + version + b"\x18\x67" + b"\xa1" + tstr(key) + value


#: (id, frame, expected error class name, max_size or None). Each is a single defect.
def reject_cases() -> list[tuple[str, bytes, str, int | None]]:
    good = close_frame(b"\x05")
    assert decode_plain(good) == Close(code=5)
    mac31 = b"\x58\x1f" + fixed("msg mac", 31)
    # A 206 whose otk is one byte over its 1600-byte bound.
    body = {"epoch": 2, "r0": bytes(32), "seed_id": bytes(16), "otk": bytes(1601)}
    too_long_otk = bytes(
        cbor2.dumps([VERSION, 206, {**body, "policy": POLICY.body()}], canonical=True)
    )
    return [
        ("not-cbor-empty", b"", "MalformedMessage", None),
        ("not-cbor-break", b"\xff", "MalformedMessage", None),
        ("truncated", good[:-1], "MalformedMessage", None),
        ("trailing-byte", good + b"\x00", "MalformedMessage", None),
        ("non-canonical-int", close_frame(b"\x18\x05"), "MalformedMessage", None),
        (
            "non-canonical-int-type",
            b"\x83\x01\x19\x00\x67\xa1" + tstr("code") + b"\x05",
            "MalformedMessage",
            None,
        ),
        ("non-canonical-length", b"\x83\x01\x18\x67\xa1\x78\x04code\x05", "MalformedMessage", None),
        (
            "non-canonical-key-order",
            b"\x83\x01\x18\x6e\xa2"
            + tstr("seed_id")
            + b"\x50"
            + bytes(16)
            + tstr("epoch")
            + b"\x02",
            "MalformedMessage",
            None,
        ),
        (
            "duplicate-key",
            b"\x83\x01\x18\x67\xa2" + tstr("code") + b"\x05" + tstr("code") + b"\x06",
            "MalformedMessage",
            None,
        ),
        (
            "unknown-field",
            # Canonical key order (shorter key first), so only the unknown key is wrong.
            b"\x83\x01\x18\x67\xa2" + tstr("why") + b"\x01" + tstr("code") + b"\x05",
            "MalformedMessage",
            None,
        ),
        ("missing-field", b"\x83\x01\x18\x67\xa0", "MalformedMessage", None),
        ("wrong-type-text-for-int", close_frame(tstr("5")), "MalformedMessage", None),
        ("wrong-type-bool-for-int", close_frame(b"\xf5"), "MalformedMessage", None),
        (
            "wrong-type-int-for-bool",
            b"\x83\x01\x18\xcc\xa1" + tstr("ok") + b"\x00",
            "MalformedMessage",
            None,
        ),
        ("negative-int", close_frame(b"\x20"), "MalformedMessage", None),
        ("int-over-range", close_frame(b"\x19\x01\x00"), "MalformedMessage", None),
        (
            "wrong-length-mac",
            b"\x83\x01\x18\x66\xa1" + tstr("mac") + mac31,
            "MalformedMessage",
            None,
        ),
        ("too-long-otk", too_long_otk, "MalformedMessage", None),
        ("unknown-type", b"\x83\x01\x19\x03\xe7\xa0", "MalformedMessage", None),
        ("bad-version", close_frame(b"\x05", version=b"\x02"), "UnsupportedVersion", None),
        ("version-zero", close_frame(b"\x05", version=b"\x00"), "UnsupportedVersion", None),
        ("version-not-int", close_frame(b"\x05", version=tstr("1")), "MalformedMessage", None),
        (
            "indefinite-array",
            b"\x9f\x01\x18\x67\xa1" + tstr("code") + b"\x05\xff",
            "MalformedMessage",
            None,
        ),
        (
            "indefinite-map",
            b"\x83\x01\x18\x67\xbf" + tstr("code") + b"\x05\xff",
            "MalformedMessage",
            None,
        ),
        ("tag-epoch-datetime", close_frame(b"\xc1\x05"), "MalformedMessage", None),
        ("tag-bignum-small", close_frame(b"\xc2\x41\x05"), "MalformedMessage", None),
        # 2^64 as a bignum is canonical CBOR, and still over the field's range.
        ("tag-bignum-2^64", close_frame(b"\xc2\x49\x01" + bytes(8)), "MalformedMessage", None),
        ("tag-unknown", close_frame(b"\xd9\x03\xe8\x05"), "MalformedMessage", None),
        ("tag-self-describe", b"\xd9\xd9\xf7" + good, "MalformedMessage", None),
        ("tag-embedded-cbor", app_frame(b"\xd8\x18\x41\x05"), "MalformedMessage", None),
        ("undefined", app_frame(b"\xf7"), "MalformedMessage", None),
        ("simple-value", app_frame(b"\xe0"), "MalformedMessage", None),
        ("indefinite-bytes", app_frame(b"\x5f\x41\x05\xff"), "MalformedMessage", None),
        ("float", close_frame(b"\xf9\x45\x00"), "MalformedMessage", None),
        (
            "null-optional",
            b"\x83\x01\x18\xcc\xa2" + tstr("ok") + b"\xf4" + tstr("mac") + b"\xf6",
            "MalformedMessage",
            None,
        ),
        ("null-required", close_frame(b"\xf6"), "MalformedMessage", None),
        ("body-not-map", b"\x83\x01\x18\x67\x80", "MalformedMessage", None),
        ("frame-not-array", b"\xa1" + tstr("code") + b"\x05", "MalformedMessage", None),
        ("frame-four-items", b"\x84\x01\x18\x67\xa0\x00", "MalformedMessage", None),
        ("map-key-not-text", b"\x83\x01\x18\x67\xa1\x01\x05", "MalformedMessage", None),
        (
            "device-id-bad-char",
            b"\x83\x01\x18\xd0\xa1" + tstr("device_id") + tstr("oven 1"),
            "MalformedMessage",
            None,
        ),
        (
            "device-id-empty",
            b"\x83\x01\x18\xd0\xa1" + tstr("device_id") + b"\x60",
            "MalformedMessage",
            None,
        ),
        ("sealed-plain-only-type", b"\x85\x01\x18\x64\x01\x00\x40", "MalformedMessage", None),
        ("sealed-setup-only-type", b"\x85\x01\x18\xc9\x01\x00\x40", "MalformedMessage", None),
        (
            "sealed-epoch-over-range",
            b"\x85\x01\x18\x78\x1b" + (2**32).to_bytes(8, "big") + b"\x00\x40",
            "MalformedMessage",
            None,
        ),
        ("sealed-ciphertext-not-bytes", b"\x85\x01\x18\x78\x01\x00\x60", "MalformedMessage", None),
        (
            "ok-without-mac",
            b"\x83\x01\x18\xcc\xa1" + tstr("ok") + b"\xf5",
            "MalformedMessage",
            None,
        ),
        ("frame-too-large", good, "FrameTooLarge", len(good) - 1),
    ]


def reject_vectors() -> list[dict[str, Any]]:
    """Each reject with the decoder that must refuse it: a sealed frame must already fail in
    decode_frame (so the defect, not "expected a plain frame", is what refuses it)."""
    decoders: dict[str, Callable[[bytes, int], object]] = {
        "decode_plain": decode_plain,
        "decode_frame": decode_frame,
    }
    out = []
    for case_id, frame, err, max_size in reject_cases():
        decoder = "decode_frame" if frame[:1] == b"\x85" else "decode_plain"
        try:
            decoders[decoder](frame, max_size if max_size is not None else MAX_FRAME)
        except perr.KeyseedError as exc:
            got = type(exc).__name__
            if got != err:
                sys.exit(f"reject {case_id}: expected {err}, implementation raised {got}")
        else:
            sys.exit(f"reject {case_id}: expected {err}, implementation accepted it")
        entry: dict[str, Any] = {
            "id": case_id,
            "decoder": decoder,
            "frame": frame.hex(),
            "error": err,
        }
        if max_size is not None:
            entry["max_size"] = max_size
        out.append(entry)
    return out


def messages_vectors() -> dict[str, Any]:
    vectors = []
    for case_id, msg in message_instances():
        raw = msg.encode()
        assert decode_plain(raw) == msg and type(msg).decode(raw) == msg
        vectors.append(
            {
                "id": case_id,
                "class": type(msg).__name__,
                "type": int(msg.TYPE),
                "fields": fields_json(msg),
                "encoded": raw.hex(),
            }
        )
    covered = {v["class"] for v in vectors}
    missing = {cls.__name__ for cls in MESSAGES.values()} - covered
    assert not missing, missing
    return {
        "description": (
            "Plain frames [version, type, body] in canonical CBOR (RFC 8949 section 4.2.1). "
            'Bytes fields are {"hex": ...}; null marks an absent optional field (absent on '
            "the wire). policy holds Policy's body as 206 carries it. rejects must fail with "
            "exactly the named error class from the named decoder (with max_size when given)."
        ),
        "version": VERSION,
        "messages": vectors,
        "policy": [
            {
                "id": "policy",
                "class": "Policy",
                "fields": fields_json(POLICY),
                "encoded": encode_body(POLICY).hex(),
            }
        ],
        "rejects": reject_vectors(),
    }


# -- channel.json ----------------------------------------------------------------------


def channel_case(
    case_id: str,
    *,
    cipher: str,
    direction: str,
    epoch: int,
    key: bytes,
    messages: list[Message],
) -> dict[str, Any]:
    nd, ns, device_id = fixed(f"{case_id} Nd", 32), fixed(f"{case_id} Ns", 32), DEVICE_ID
    shared = ks.SharedKey(key)
    sender = Channel(
        device_id=device_id, nd=nd, ns=ns, is_device=direction == ks.D2S, cipher=cipher
    )
    sender.install_send(shared, epoch)
    tk, iv = ks.traffic_keys(shared, nd=nd, ns=ns, device_id=device_id, direction=direction)
    frames = []
    for seq, msg in enumerate(messages):
        frame = sender.seal(msg)
        frames.append(
            {
                "seq": seq,
                "class": type(msg).__name__,
                "type": int(msg.TYPE),
                "fields": fields_json(msg),
                "body": encode_body(msg).hex(),
                "aad": aad(device_id, direction, msg.TYPE, epoch, seq).hex(),
                "nonce": bytes(
                    a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True)
                ).hex(),
                "frame": frame.hex(),
            }
        )
    return {
        "id": case_id,
        "cipher": cipher,
        "direction": direction,
        "device_id": device_id,
        "epoch": epoch,
        "k": key.hex(),
        "key_id": shared.key_id.hex(),
        "nd": nd.hex(),
        "ns": ns.hex(),
        "traffic_key": tk.hex(),
        "iv": iv.hex(),
        "frames": frames,
    }


def channel_vectors() -> dict[str, Any]:
    seed_id = fixed("channel seed_id", 16)
    token = fixed("channel token", 8)
    d2s_msgs: list[Message] = [
        Msg205(epoch=1),
        App(data=b"door open"),
        Msg207(pong=False, token=token),
        Ack206(epoch=1, seed_id=seed_id),
        SeedRequest(epoch=1),
        Msg404(epoch=1),
    ]
    s2d_msgs: list[Message] = [
        Msg206(
            epoch=2,
            r0=fixed("channel R0", 32),
            seed_id=seed_id,
            otk=fixed("otk", 32),
            policy=POLICY,
        ),
        Msg207(pong=True, token=token),
        Msg403(epoch=2),
        App(data=b""),
    ]
    cases = [
        channel_case(
            "d2s-chacha20-epoch-1",
            cipher="chacha20-poly1305",
            direction=ks.D2S,
            epoch=1,
            key=fixed("channel K 1", 32),
            messages=d2s_msgs,
        ),
        channel_case(
            "s2d-chacha20-epoch-2",
            cipher="chacha20-poly1305",
            direction=ks.S2D,
            epoch=2,
            key=fixed("channel K 2", 32),
            messages=s2d_msgs,
        ),
        channel_case(
            "d2s-aes256gcm-epoch-max",
            cipher="aes-256-gcm",
            direction=ks.D2S,
            epoch=2**32 - 1,
            key=fixed("channel K 3", 32),
            messages=[
                App(data=bytes(range(64))),
                Msg205(epoch=2**32 - 1),
                Msg207(pong=True, token=token),
            ],
        ),
        channel_case(
            "s2d-aes256gcm-epoch-3",
            cipher="aes-256-gcm",
            direction=ks.S2D,
            epoch=3,
            key=fixed("channel K 4", 32),
            messages=[
                Msg206(
                    epoch=3, r0=fixed("channel R0 3", 32), seed_id=seed_id, otk=None, policy=POLICY
                ),
                Msg207(pong=False, token=token),
            ],
        ),
    ]
    return {
        "description": (
            "Sealed frames [version, type, epoch, seq, ciphertext] from Channel.seal, seq "
            "0, 1, 2 ... per case. Traffic key and IV = traffic_keys(K, Nd, Ns, device_id, "
            "direction); nonce = IV xor seq (u64, right-aligned); aad = lp(aad_label, version, "
            "device_id, direction, type, epoch, seq); ciphertext = AEAD(key, nonce, body, aad)."
        ),
        "aad_label": L_AAD,
        "version": VERSION,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pke",
        action="store_true",
        help="draw a new RSA key and new PKE ciphertexts (pke.json changes)",
    )
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    pke = pke_vectors(args.pke)
    server_fps = {v["suite"]: bytes.fromhex(v["fingerprint"]) for v in pke["suites"]}
    steps: list[tuple[str, Callable[[], object]]] = [
        ("pke.json", lambda: pke),
        ("key_schedule.json", lambda: key_schedule_vectors(server_fps)),
        ("messages.json", messages_vectors),
        ("channel.json", channel_vectors),
    ]
    for name, build in steps:
        write(name, build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
