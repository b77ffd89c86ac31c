"""TLS in front of the device channel: ``keyseed server --tls-cert/--tls-key`` serves wss://,
and devices verify it against ``--ca``. A throwaway CA (ECDSA P-256) issues the server's
certificate for localhost and 127.0.0.1; a second, unrelated CA plays the wrong one.

The device side is the real agent (:class:`~keyseed.device.agent.DeviceAgent`, keystore file
on disk) and the real ``keyseed simulate``, against the real server on both listeners."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from servkit import Server, start_at

from keyseed.device.agent import DeviceAgent
from keyseed.device.cli import resolve_server_key
from keyseed.device.config import DeviceAgentConfig, load_device_config
from keyseed.device.keystore import KeystoreFile
from keyseed.protocol import new_keystore
from keyseed.server import ServerConfig
from keyseed.server.config import load_config
from keyseed.server.run import TLSFilesError, banner, check_tls_files
from keyseed.settings import ConfigError
from keyseed.simulate import main as simulate_main

WAIT = 20.0


# -- a throwaway PKI -----------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    wrong_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate it issued (localhost, 127.0.0.1), and an unrelated CA."""
    ca_key, ca_cert = _ca("keyseed test CA")
    _, wrong_cert = _ca("keyseed test CA")  # same name, other key: must not verify
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pki = Pki(
        ca=folder / "ca.pem",
        cert=folder / "server.pem",
        key=folder / "server.key",
        wrong_ca=folder / "wrong-ca.pem",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.wrong_ca.write_bytes(wrong_cert.public_bytes(pem))
    pki.cert.write_bytes(cert.public_bytes(pem))
    fd = os.open(pki.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return make_pki(folder)


@pytest.fixture
async def tls_server(tmp_path: Path, pki: Pki) -> AsyncIterator[Server]:
    srv = await start_at(tmp_path / "data", tls_cert=pki.cert, tls_key=pki.key)
    yield srv
    await srv.admin.aclose()
    await srv.running.stop()


def wss(srv: Server) -> str:
    return f"wss://127.0.0.1:{srv.running.device_port}/v1/device"


# -- a device app that keeps what it hears ---------------------------------------------------


class Recorder:
    """A device app: keeps every message from the server."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.link: Any = None
        self.heard = asyncio.Event()

    async def run(self, link: Any) -> None:
        self.link = link
        await asyncio.Event().wait()

    async def on_message(self, data: bytes) -> None:
        self.messages.append(data)
        self.heard.set()

    def on_connected(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"heard": len(self.messages)}


async def _until(pred: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _agent(
    srv: Server, tmp_path: Path, device_id: str, ca: Path, app: Recorder | None = None
) -> tuple[DeviceAgent, asyncio.Task[None]]:
    r = await srv.register(device_id, setup_code="12345678")
    assert r.status_code == 201, r.text
    keys = (await srv.admin.get("/v1/admin/keys")).json()
    server_key = bytes.fromhex(keys[0]["public_key"])
    cfg = DeviceAgentConfig(
        id=device_id,
        server=wss(srv),
        keystore=tmp_path / f"{device_id}.ks",
        ca=ca,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    store = KeystoreFile(cfg.keystore)
    ks = new_keystore(
        device_id=device_id,
        suite="hpke-x25519",
        server_key=server_key,
        install_secret=os.urandom(32),
        setup_code="12345678",
    )
    store.create(ks)
    agent = DeviceAgent(cfg, store, ks, app)
    return agent, asyncio.create_task(agent.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- the tests --------------------------------------------------------------------------------


async def test_device_enrols_rekeys_and_talks_over_wss(
    tls_server: Server, tmp_path: Path, pki: Pki
) -> None:
    """201, then 203-206 over wss://, application data both ways (the echo app), then a
    rekey by proxy (401-404) and more application data under the new key."""
    app = Recorder()
    agent, task = await _agent(tls_server, tmp_path, "oven-tls", pki.ca, app)
    try:
        await _until(lambda: agent.connected and agent.ks.seed is not None, "enrolment")
        assert agent.ks.epoch == 1
        assert agent.status()["tls"] is True and agent.status()["last_error"] is None
        await _until(lambda: app.link is not None, "the app")
        app.link.send(b"hello over wss")
        await asyncio.wait_for(app.heard.wait(), WAIT)
        assert app.messages == [b"echo:hello over wss"]
        r = await tls_server.admin.post("/v1/admin/devices/oven-tls/rekey")
        assert r.status_code == 202, r.text
        await _until(lambda: agent.ks.epoch == 2 and agent.ks.seed is not None, "the rekey")
        app.heard.clear()
        app.link.send(b"again, under epoch 2")
        await asyncio.wait_for(app.heard.wait(), WAIT)
        assert app.messages[-1] == b"echo:again, under epoch 2"
        view = await tls_server.wait_for("oven-tls", lambda v: not v["owed_206"])
        assert view["epoch"] == 2 and view["online"]
    finally:
        await _stop(task)


async def test_tls_reduction_end_to_end(tls_server: Server, tmp_path: Path, pki: Pki) -> None:
    """Profile tls_reduced (sent in the enrolment's 206) and a device that agrees: from its
    next connection on, both sides run it reduced; application data still flows."""
    r = await tls_server.register("oven-reduced", setup_code="12345678", tls_reduced=True)
    assert r.status_code == 201, r.text
    keys = (await tls_server.admin.get("/v1/admin/keys")).json()
    cfg = DeviceAgentConfig(
        id="oven-reduced",
        server=wss(tls_server),
        keystore=tmp_path / "reduced.ks",
        ca=pki.ca,
        tls_reduced=True,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    store = KeystoreFile(cfg.keystore)
    store.create(
        new_keystore(
            device_id="oven-reduced",
            suite="hpke-x25519",
            server_key=bytes.fromhex(keys[0]["public_key"]),
            install_secret=os.urandom(32),
            setup_code="12345678",
        )
    )
    agent = DeviceAgent(cfg, store, store.load("oven-reduced"))
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: agent.connected and agent.ks.tls_reduced, "enrolment")
        assert agent.status()["tls_reduced"] is False  # the enrolment connection is not
    finally:
        await _stop(task)
    app = Recorder()
    agent = DeviceAgent(cfg, store, store.load("oven-reduced"), app)
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: agent.connected and app.link is not None, "a new connection")
        assert agent.status()["tls_reduced"] is True
        conns = [c for c in tls_server.rt.connections if c.device_id == "oven-reduced"]
        assert conns and conns[-1].proto.tls_reduced
        app.link.send(b"reduced but authenticated")
        await asyncio.wait_for(app.heard.wait(), WAIT)
        assert app.messages == [b"echo:reduced but authenticated"]
    finally:
        await _stop(task)


async def test_wrong_ca_is_refused_with_a_clear_error(
    tls_server: Server, tmp_path: Path, pki: Pki
) -> None:
    agent, task = await _agent(tls_server, tmp_path, "oven-wrong-ca", pki.wrong_ca)
    try:
        await _until(lambda: agent.last_error is not None, "a refusal")
        assert agent.last_error.startswith("server certificate refused")
        assert "--ca" in agent.last_error
        assert not agent.connected and agent.ks.key is None
    finally:
        await _stop(task)
    view = await tls_server.device("oven-wrong-ca")
    assert not view["enrolled"] and view["epoch"] == 0


async def test_plain_ws_to_the_tls_port_fails(tls_server: Server) -> None:
    url = f"ws://127.0.0.1:{tls_server.running.device_port}/v1/device"
    with pytest.raises((websockets.InvalidHandshake, OSError, EOFError)):
        async with websockets.connect(url, open_timeout=5):
            pass  # pragma: no cover - must not open


async def test_keys_and_pin_over_https(tls_server: Server, pki: Pki, tmp_path: Path) -> None:
    """A first start with --pin fetches the server key over https://, verified by --ca."""
    keys = (await tls_server.admin.get("/v1/admin/keys")).json()
    cfg = load_device_config(
        {
            "id": "oven-pin",
            "server": f"wss://localhost:{tls_server.running.device_port}",
            "keystore": str(tmp_path / "pin.ks"),
            "ca": str(pki.ca),
            "pin": keys[0]["fingerprint"],
        },
        env={},
    )
    raw = await resolve_server_key(cfg)
    assert raw.hex() == keys[0]["public_key"]
    # The same fetch trusting the wrong CA fails.
    wrong = load_device_config(
        {
            "id": "oven-pin",
            "server": f"wss://localhost:{tls_server.running.device_port}",
            "keystore": str(tmp_path / "pin.ks"),
            "ca": str(pki.wrong_ca),
            "pin": keys[0]["fingerprint"],
        },
        env={},
    )
    with pytest.raises(Exception, match="cannot fetch the server key"):
        await resolve_server_key(wrong)


async def test_simulate_over_wss(
    tls_server: Server,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("KEYSEED_"):
            monkeypatch.delenv(name)
    token_file = tmp_path / "admin.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tls_server.token + "\n")
    argv = [
        "--server", f"https://127.0.0.1:{tls_server.running.device_port}",
        "--ca", str(pki.ca),
        "--devices", "3",
        "--duration", "1",
        "--rate", "2",
        "--rekey-messages", "2",
        "--prefix", "simtls-",
        "--admin-url", f"http://127.0.0.1:{tls_server.running.admin_port}",
        "--admin-token-file", str(token_file),
        "--json",
    ]  # fmt: skip
    code = await asyncio.to_thread(simulate_main, argv)
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["enrolled"] == 3 and out["errors"] == {"total": 0}
    assert out["messages"]["answered"] > 0


def test_banner_names_wss(tmp_path: Path, pki: Pki) -> None:
    config = ServerConfig(data=tmp_path, tls_cert=pki.cert, tls_key=pki.key)

    class _Running:
        device_port = 8700
        admin_port = 8701

    class _Secrets:
        new_token = None
        created: tuple[str, ...] = ()

        def fingerprints(self) -> dict[str, str]:
            return {}

    text = banner(_Secrets(), _Running(), config)  # type: ignore[arg-type]
    assert "device listener: wss://0.0.0.0:8700/v1/device" in text
    assert "admin listener: http://127.0.0.1:8701" in text


# -- configuration errors ---------------------------------------------------------------------


def test_cert_without_key_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="go together"):
        ServerConfig(data=tmp_path, tls_cert=pki.cert)
    with pytest.raises(ConfigError, match="admin-tls"):
        ServerConfig(data=tmp_path, admin_tls=True)


def test_bad_tls_files_are_refused_before_listening(tmp_path: Path, pki: Pki) -> None:
    missing = ServerConfig(data=tmp_path, tls_cert=tmp_path / "nope.pem", tls_key=pki.key)
    with pytest.raises(TLSFilesError, match="not found"):
        check_tls_files(missing)
    # A key that is not the certificate's.
    other = make_pki(_fresh(tmp_path / "other"))
    mismatched = ServerConfig(data=tmp_path, tls_cert=pki.cert, tls_key=other.key)
    with pytest.raises(TLSFilesError, match="cannot load"):
        check_tls_files(mismatched)
    check_tls_files(ServerConfig(data=tmp_path, tls_cert=pki.cert, tls_key=pki.key))


def _fresh(folder: Path) -> Path:
    folder.mkdir()
    return folder


def test_device_ca_settings(tmp_path: Path, pki: Pki) -> None:
    base = {"id": "d1", "keystore": str(tmp_path / "k")}
    # From the environment, like every other device setting.
    cfg = load_device_config(
        {**base, "server": "wss://localhost:1"}, env={"KEYSEED_DEVICE_CA": str(pki.ca)}
    )
    assert cfg.ca == pki.ca
    ctx = cfg.tls_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(ConfigError, match="wss://"):
        load_device_config({**base, "server": "ws://localhost:1", "ca": str(pki.ca)}, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_device_config(
            {**base, "server": "wss://localhost:1", "ca": str(tmp_path / "none.pem")}, env={}
        )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no usable PEM"):
        load_device_config({**base, "server": "wss://localhost:1", "ca": str(junk)}, env={})
    # ws:// needs no context at all.
    assert load_device_config({**base, "server": "ws://localhost:1"}, env={}).tls_context() is None


def test_server_tls_settings_from_environment(tmp_path: Path, pki: Pki) -> None:
    cfg = load_config(
        {"data": str(tmp_path)},
        env={
            "KEYSEED_TLS_CERT": str(pki.cert),
            "KEYSEED_TLS_KEY": str(pki.key),
            "KEYSEED_ADMIN_TLS": "yes",
        },
    )
    assert cfg.tls and cfg.admin_tls and cfg.tls_key == pki.key
