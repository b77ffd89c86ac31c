"""Forward secrecy (DESIGN.md section 4): what a thief learns from the server.

Three rekeys are recorded after an enrolment. Then the attacker gets the server's long-term
private keys and its whole stored state. It runs every decryption it can: open P with every
private key it holds, open sealed frames with every key it knows, learn seeds from any 206 it
can read, and derive K wherever it has R0 and R1, until nothing new comes out. With the HPKE
suites it recovers the stolen current key and the enrolment key (P of an enrolment travels
under the long-term key: a documented limit), and never the epochs in between, whose one-time
private keys were erased. With ``rsa-oaep`` (no one-time keys) it recovers every epoch.
"""

from __future__ import annotations

import pytest
from helpers import Net

from keyseed.crypto import Aead, DecryptError, get_suite, make_nonce, sha256
from keyseed.crypto.schedule import L_204_OK, SharedKey, derive_k, p_info, traffic_keys
from keyseed.protocol.channel import aad
from keyseed.protocol.errors import KeyseedError
from keyseed.protocol.messages import (
    Hello,
    HelloAck,
    Msg203,
    Msg204,
    Msg206,
    PlainFrame,
    SealedFrame,
    decode_body,
    decode_frame,
    loads_strict,
)
from keyseed.protocol.server import X_LEN_ENROL, X_LEN_REKEY


def attack(net: Net, suite: str) -> set[bytes]:
    """Every key the attacker can recover, as raw bytes."""
    st = get_suite(suite)
    rec = net.rec  # the stolen database row (with the master key, so unsealed)
    privs = [net.ctx.keys[suite]]  # the stolen long-term key
    if rec.seed is not None and rec.seed.otk_private is not None:
        privs.append(st.load_private(rec.seed.otk_private))
    server_fp = net.ctx.server_fp(suite)
    keys: dict[bytes, SharedKey] = {}
    for k in (rec.key, rec.prev_key):
        if k is not None:
            keys[k.raw] = k
    seeds: dict[bytes, bytes] = {}  # seed_id -> R0, learnt from readable 206s
    ok_macs: set[bytes] = set()  # 204 OK MACs seen on the wire
    conns = []
    for c in net.conns:
        hello = next(Hello.decode(f) for f in c.sent_by_device[:1])
        ack = next((f for f in c.sent_by_server if _type(f) == 101), None)
        if ack is None:
            continue
        conns.append((hello, HelloAck.decode(ack).ns, c.sent_by_device, c.sent_by_server))
        for f in c.sent_by_server:
            if _type(f) == 204:
                ok = Msg204.decode(f)
                if ok.mac is not None:
                    ok_macs.add(ok.mac)

    def try_203(msg: Msg203, nd: bytes, ns: bytes) -> None:
        info = p_info(suite=suite, device_id=msg.device_id, epoch=msg.epoch,
                      seed_id=msg.seed_id, nd=nd, ns=ns)  # fmt: skip
        for priv in privs:
            try:
                x = st.decrypt(priv, msg.p, info)
            except DecryptError:
                continue
            if len(x) == X_LEN_ENROL:
                r0, prev_ids = x[X_LEN_REKEY:], [b""]
            elif msg.seed_id in seeds:
                r0, prev_ids = seeds[msg.seed_id], [k.key_id for k in keys.values()]
            else:
                continue
            h203 = sha256(msg.encode())
            for prev in prev_ids:
                k = derive_k(
                    r0,
                    x[:32],
                    suite=suite,
                    device_id=msg.device_id,
                    epoch=msg.epoch,
                    seed_id=msg.seed_id,
                    server_fp=server_fp,
                    prev_key_id=prev,
                    h203=h203,
                )
                # Keep a candidate only if the server's 204 OK MAC confirms it.
                if k.mac(L_204_OK, h203, nd, ns) in ok_macs:
                    keys.setdefault(k.raw, k)

    for _ in range(8):  # until a fixpoint
        before = (len(keys), len(seeds))
        for hello, ns, d_frames, s_frames in conns:
            for frames, direction in ((d_frames, "d2s"), (s_frames, "s2d")):
                for f in frames:
                    try:
                        fr = decode_frame(f)
                    except KeyseedError:
                        continue
                    if isinstance(fr, PlainFrame):
                        if fr.type == 203:
                            try_203(Msg203.from_body(fr.body), hello.nd, ns)
                        continue
                    for k in list(keys.values()):
                        msg = _open(k, fr, hello, ns, direction)
                        if isinstance(msg, Msg203):
                            try_203(msg, hello.nd, ns)
                        elif isinstance(msg, Msg206):
                            seeds[msg.seed_id] = msg.r0
        if (len(keys), len(seeds)) == before:
            break
    return set(keys)


def _type(frame: bytes) -> int:
    return int(loads_strict(frame)[1])


def _open(k: SharedKey, fr: SealedFrame, hello: Hello, ns: bytes, direction: str) -> object:
    key, iv = traffic_keys(k, nd=hello.nd, ns=ns, device_id=hello.device_id, direction=direction)
    try:
        pt = Aead(key).open(make_nonce(iv, fr.seq), fr.ciphertext,
                            aad(hello.device_id, direction, fr.type, fr.epoch, fr.seq))  # fmt: skip
    except DecryptError:
        return None
    return decode_body(fr.type, loads_strict(pt))


def record_epochs(suite: str, *, reconnect: bool = True) -> tuple[Net, dict[int, bytes]]:
    net = Net(suite=suite)
    keys = {1: net.ks.key.raw}  # type: ignore[union-attr]
    for epoch in (2, 3, 4):
        c = net.connect()
        c.run()
        c.device_do(lambda d, now: d.request_rekey(now))
        c.run()
        assert net.ks.epoch == epoch and net.converged()
        keys[epoch] = net.ks.key.raw  # type: ignore[union-attr]
    if reconnect:
        net.connect().run()  # FIN under K4 retires K3 (rule 2 keeps it until then)
    return net, keys


@pytest.mark.parametrize("suite", ["hpke-x25519", "hpke-mlkem768-x25519"])
def test_erased_epochs_stay_secret(suite: str) -> None:
    net, keys = record_epochs(suite)
    recovered = attack(net, suite)
    assert keys[4] in recovered, "the current key is in the stolen state"
    assert keys[1] in recovered, "an enrolment is only as safe as the long-term key"
    assert keys[2] not in recovered
    assert keys[3] not in recovered
    stored = net.rec.encode()
    for epoch in (1, 2, 3):
        assert keys[epoch] not in stored, "no erased key lingers in the stored record"


def test_rsa_oaep_has_no_forward_secrecy() -> None:
    net, keys = record_epochs("rsa-oaep")
    recovered = attack(net, "rsa-oaep")
    assert set(keys.values()) <= recovered, "documented: rsa-oaep reveals every epoch"


def test_previous_key_is_held_until_the_next_handshake() -> None:
    """Documented: right after a commit the server still holds the previous key (rule 2),
    so a theft at that moment reveals it; the device's next FIN erases it."""
    net, keys = record_epochs("hpke-x25519", reconnect=False)
    assert keys[3] in attack(net, "hpke-x25519")
    net.connect().run()
    assert net.rec.prev_key is None
