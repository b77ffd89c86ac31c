"""Hypothesis fuzzing of the decoders tests/protocol/test_fuzz.py does not reach: the keystore
*file* format, the device's and the server's configuration (flags, environment, TOML), and
the device's local setup endpoint (any method, path, headers and body). Plus the rows of
docs/security.md that had no test yet: the setup endpoint's token, Host, Origin and 301 rate
limit in-process, and the keystore file's mode and version.

Each accepts well-formed input or refuses it with its typed error (``KeystoreError``,
``ConfigError``, an HTTP 4xx with a JSON ``error``), never anything else, and a refusal
writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyseed.device.agent import DeviceAgent
from keyseed.device.config import DeviceAgentConfig, load_device_config
from keyseed.device.keystore import (
    FILE_FORMAT,
    MAGIC,
    KeystoreCorrupted,
    KeystoreError,
    KeystoreFile,
    KeystoreForeign,
    KeystoreInsecure,
    decode_file,
    encode_file,
)
from keyseed.device.setup_endpoint import setup_app
from keyseed.protocol.device import new_keystore
from keyseed.protocol.records import Keystore
from keyseed.server.config import load_config
from keyseed.settings import ConfigError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DEVICE_ID = "oven-1"
TOKEN = "device-local-token-0123456789abcdef"


def keystore() -> Keystore:
    return new_keystore(
        device_id=DEVICE_ID,
        suite="hpke-x25519",
        server_key=bytes(32),
        install_secret=bytes(range(32)),
        setup_code="12345678",
    )


# -- the keystore file -------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """Flips, truncation, extension and overwrites of a real file."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("flip", "truncate", "extend", "set")))
        pos = draw(st.integers(0, len(out) - 1)) if out else 0
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del out[pos:]
        elif op == "extend":
            out += draw(st.binary(min_size=1, max_size=8))
        elif out:
            out[pos] = draw(st.integers(0, 255))
    return bytes(out)


FILE = encode_file(keystore())


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), damaged(FILE)))
def test_keystore_file_decoder_raises_only_keystore_errors(data: bytes) -> None:
    try:
        ks = decode_file(data)
    except KeystoreError:
        return
    assert encode_file(ks) == data, "accepted a file that is not its own encoding"


def test_keystore_file_of_another_format_version_is_foreign() -> None:
    body = MAGIC + bytes([FILE_FORMAT + 1]) + FILE[len(MAGIC) + 1 :]
    with pytest.raises(KeystoreForeign, match="format 2"):
        decode_file(body)


def test_keystore_file_with_a_valid_checksum_over_a_tampered_record_is_refused() -> None:
    """Whoever can write the file can recompute the SHA-256; the record decoder still
    refuses what is not a keystore (here: one byte of the CBOR payload changed)."""
    payload = bytearray(FILE[len(MAGIC) + 5 : -32])
    payload[0] ^= 0x01  # the map header: a map of another size
    head = FILE[: len(MAGIC) + 5]
    body = head + bytes(payload)
    with pytest.raises(KeystoreCorrupted):
        decode_file(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_keystore_file_readable_by_others_is_refused_and_kept(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ks"
    store = KeystoreFile(path)
    store.create(keystore())
    os.chmod(path, mode)
    before = path.read_bytes()
    with pytest.raises(KeystoreInsecure):
        store.load(DEVICE_ID)
    assert path.read_bytes() == before and (path.stat().st_mode & 0o777) == mode


# -- configuration -----------------------------------------------------------------------

DEVICE_KEYS = ("id", "server", "keystore", "listen", "pin", "suite", "setup_code",
               "rekey_on_start", "backoff_initial", "backoff_max", "connect_timeout",
               "rekey_min_interval", "app", "status_interval", "cook_speed")  # fmt: skip
SERVER_KEYS = ("port", "admin_port", "host", "admin_host", "suites", "s27_timeout",
               "handshake_timeout", "idle_timeout", "log_level", "db", "app")  # fmt: skip

values = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(("", "0", "-1", "65536", "nan", "inf", "true", "ws://h:1", "1e309")),
)


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(DEVICE_KEYS), values, max_size=6))
def test_device_config_raises_only_config_error(flags: dict[str, str]) -> None:
    base = {"id": DEVICE_ID, "server": "ws://127.0.0.1:8700", "keystore": "/tmp/ks"}
    with contextlib.suppress(ConfigError):
        cfg = load_device_config({**base, **flags}, {})
        assert isinstance(cfg, DeviceAgentConfig)


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(SERVER_KEYS), values, max_size=6))
def test_server_config_raises_only_config_error(flags: dict[str, str]) -> None:
    with contextlib.suppress(ConfigError):
        load_config(flags, {})


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1"))))  # fmt: skip
def test_toml_files_raise_only_config_error(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("toml") / "keyseed.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    with contextlib.suppress(ConfigError):
        load_config({"config": str(path)}, {})
    with contextlib.suppress(ConfigError):
        load_device_config(
            {"id": DEVICE_ID, "server": "ws://h:1", "keystore": "/tmp/ks"},
            {"KEYSEED_DEVICE_CONFIG": str(path)},
        )


@pytest.mark.parametrize("port", ["0x10", "-1", "65536", "99999999999", "1.5", ""])
def test_bad_ports_are_config_errors(port: str) -> None:
    with pytest.raises(ConfigError):
        load_config({"port": port}, {})
    with pytest.raises(ConfigError):
        load_config({"admin_port": port}, {})
    with pytest.raises(ConfigError):
        load_device_config(
            {"id": DEVICE_ID, "server": "ws://h:1", "keystore": "/tmp/ks",
             "listen": f"127.0.0.1:{port}"}, {})  # fmt: skip


# -- the device's local setup endpoint ---------------------------------------------------

PORT = 8702
HOST = f"127.0.0.1:{PORT}"


def agent(tmp: Path) -> DeviceAgent:
    """A real agent on a real keystore file, never connected (301 is then made durable
    in the keystore at once)."""
    path = tmp / "ks"
    store = KeystoreFile(path)
    if not path.exists():
        store.create(keystore())
    cfg = DeviceAgentConfig(id=DEVICE_ID, server="ws://127.0.0.1:1", keystore=path)
    return DeviceAgent(cfg, store, store.load(DEVICE_ID))


def client(tmp: Path, *, min_interval: float = 3600.0) -> tuple[httpx.AsyncClient, DeviceAgent]:
    dev = agent(tmp)
    app = setup_app(dev, TOKEN, "127.0.0.1", PORT, rekey_min_interval=min_interval)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}"), dev


GOOD = {"Authorization": f"Bearer {TOKEN}", "Host": HOST}


async def test_setup_endpoint_without_or_with_a_wrong_token_is_401(tmp_path: Path) -> None:
    c, _ = client(tmp_path)
    before = (tmp_path / "ks").read_bytes()
    async with c:
        for auth in (None, "Bearer", "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"):
            headers = {"Host": HOST} if auth is None else {"Host": HOST, "Authorization": auth}
            for method, path in (("POST", "/v1/rekey"), ("GET", "/v1/status")):
                r = await c.request(method, path, headers=headers)
                assert r.status_code == 401 and r.json()["error"] == "unauthorized", auth
                assert r.headers["www-authenticate"] == "Bearer"
    assert (tmp_path / "ks").read_bytes() == before


@pytest.mark.parametrize("host", ["evil.example:8702", "127.0.0.1:80", "localhost.evil:8702",
                                  "10.0.0.5:8702", ""])  # fmt: skip
async def test_setup_endpoint_foreign_host_is_421(tmp_path: Path, host: str) -> None:
    c, _ = client(tmp_path)
    before = (tmp_path / "ks").read_bytes()
    async with c:
        r = await c.post("/v1/rekey", headers={**GOOD, "Host": host})
    assert r.status_code == 421 and r.json()["error"] == "misdirected"
    assert (tmp_path / "ks").read_bytes() == before


@pytest.mark.parametrize("origin", ["http://evil.example", f"http://{HOST}", "null"])
async def test_setup_endpoint_cross_origin_is_403(tmp_path: Path, origin: str) -> None:
    c, _ = client(tmp_path)
    before = (tmp_path / "ks").read_bytes()
    async with c:
        r = await c.post("/v1/rekey", headers={**GOOD, "Origin": origin})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert (tmp_path / "ks").read_bytes() == before


async def test_setup_endpoint_301_is_rate_limited(tmp_path: Path) -> None:
    c, _ = client(tmp_path)
    async with c:
        r = await c.post("/v1/rekey", headers=GOOD)
        assert r.status_code == 202 and r.json()["message"] == 302
        assert KeystoreFile(tmp_path / "ks").load(DEVICE_ID).rekey_requested
        after_first = (tmp_path / "ks").read_bytes()
        for _ in range(5):
            r = await c.post("/v1/rekey", headers=GOOD)
            assert r.status_code == 429 and r.json()["error"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
    assert (tmp_path / "ks").read_bytes() == after_first


@st.composite
def requests_(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")))
    path = draw(st.one_of(st.sampled_from(("/v1/rekey", "/v1/status", "/", "/v1/")),
                          st.text("abc/.%?=&v1", max_size=20).map(lambda t: "/" + t)))  # fmt: skip
    headers = {"Host": draw(st.sampled_from((HOST, "localhost:8702", "evil:1", HOST)))}
    auth = draw(st.sampled_from((None, f"Bearer {TOKEN}", "Bearer x", f"bearer {TOKEN}")))
    if auth is not None:
        headers["Authorization"] = auth
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(("application/json", "text/plain")))
    return {
        "method": method,
        "url": path,
        "headers": headers,
        "content": draw(st.binary(max_size=300)),
    }


@settings(FUZZ, max_examples=75)
@given(reqs=st.lists(requests_(), min_size=1, max_size=4))
async def test_setup_endpoint_answers_every_request_with_a_typed_4xx_or_success(
    tmp_path_factory: Any, reqs: list[dict[str, Any]]
) -> None:
    tmp = tmp_path_factory.mktemp("setup")
    c, _ = client(tmp)
    before = (tmp / "ks").read_bytes()
    rekeyed = False
    async with c:
        for req in reqs:
            r = await c.request(**req)
            assert r.status_code < 500, (req, r.status_code)
            if r.status_code >= 400 and req["method"] != "HEAD":
                assert "error" in r.json()
            assert TOKEN not in r.text
            rekeyed |= r.status_code == 202
    ks = KeystoreFile(tmp / "ks").load(DEVICE_ID)
    assert ks.rekey_requested is rekeyed
    if not rekeyed:
        assert (tmp / "ks").read_bytes() == before
