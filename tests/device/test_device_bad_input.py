"""Bad input to a device process: each start is refused with a clear message and an exit
code, and the keystore on disk is left byte for byte as it was."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import devprocs
import httpx
from devprocs import DeviceProc, ServerProc, converged, enrolled, wait_until

from keyseed.crypto import get_suite
from keyseed.device.cli import EXIT_KEYSTORE, EXIT_SERVER_KEY

# The fixtures (pytest finds them by these module attributes).
devices_fixture = devprocs.devices_fixture
server_fixture = devprocs.server_fixture


def test_corrupted_keystore_is_refused_and_kept(
    tmp_path: Path, server: ServerProc, devices: list[DeviceProc]
) -> None:
    dev = DeviceProc(tmp_path, "oven-x", server)
    devices.append(dev)
    enrolled(dev, server)
    dev.stop()
    data = bytearray(dev.keystore.read_bytes())
    data[len(data) // 2] ^= 0x01
    dev.keystore.write_bytes(bytes(data))
    r = dev.run()
    assert r.returncode == EXIT_KEYSTORE
    assert "damaged" in r.stderr
    assert dev.keystore.read_bytes() == bytes(data)


def test_foreign_file_is_refused_and_kept(tmp_path: Path, server: ServerProc) -> None:
    dev = DeviceProc(tmp_path, "oven-f", server)
    dev.keystore.write_text("not a keystore\n")
    os.chmod(dev.keystore, 0o600)
    r = dev.run("--server-key", server.server_key())
    assert r.returncode == EXIT_KEYSTORE
    assert "not a keyseed device keystore" in r.stderr
    assert dev.keystore.read_text() == "not a keystore\n"


def test_keystore_of_another_device(
    tmp_path: Path, server: ServerProc, devices: list[DeviceProc]
) -> None:
    dev = DeviceProc(tmp_path, "oven-y", server)
    devices.append(dev)
    enrolled(dev, server)
    dev.stop()
    before = dev.keystore.read_bytes()
    other = DeviceProc(tmp_path, "oven-z", server)
    other.keystore = dev.keystore
    r = other.run()
    assert r.returncode == EXIT_KEYSTORE
    assert "belongs to device 'oven-y'" in r.stderr
    assert dev.keystore.read_bytes() == before


def test_wrong_pin(tmp_path: Path, server: ServerProc) -> None:
    dev = DeviceProc(tmp_path, "oven-p", server)
    # The key given at install does not match the pin.
    r = dev.run("--server-key", server.server_key(), "--pin", "00" * 32)
    assert r.returncode == EXIT_SERVER_KEY
    assert "not the pinned" in r.stderr
    # Fetched from the server: accepted only if it matches the pin.
    r = dev.run("--pin", "11" * 32)
    assert r.returncode == EXIT_SERVER_KEY
    assert "not the pinned" in r.stderr
    assert not dev.keystore.exists()


def test_pin_fetches_the_key(tmp_path: Path, server: ServerProc, devices: list[DeviceProc]) -> None:
    dev = DeviceProc(tmp_path, "oven-q", server)
    devices.append(dev)
    server.register(dev.device_id)
    dev.start("--pin", server.fingerprint, "--setup-code", "12345678")
    converged(dev, server, 1)
    # A later start with another pin is refused; the keystore stays.
    dev.stop()
    before = dev.keystore.read_bytes()
    r = dev.run("--pin", "22" * 32)
    assert r.returncode == EXIT_SERVER_KEY
    assert dev.keystore.read_bytes() == before


def test_server_presenting_another_key(
    tmp_path: Path, server: ServerProc, devices: list[DeviceProc]
) -> None:
    """Pinned to a key the server does not hold: its enrolment P cannot be opened (204 NG
    every time); the device gets no key and keeps trying, and nothing is stored at the
    server. An enrolled device sent to a server that does not know it stays out too."""
    server.register("oven-w")
    dev = DeviceProc(tmp_path, "oven-w", server)
    devices.append(dev)
    imposter = get_suite("hpke-x25519").generate().public_key.raw.hex()
    dev.start("--server-key", imposter, "--setup-code", "12345678")
    wait_until(lambda: (s := dev.status()) and s["exchange_in_flight"] and s, "a 203 attempt")

    def ng() -> bool:
        with server.admin() as c:
            audit = c.get("/v1/admin/audit", params={"device_id": "oven-w"}).json()
        return any(a["kind"] == "204_ng" for a in audit)

    wait_until(ng, "a 204 NG")
    st = dev.status()
    assert st is not None and not st["enrolled"] and st["epoch"] == 0
    assert server.view("oven-w")["epoch"] == 0

    other_srv = ServerProc(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other_srv.start()
    try:
        good = DeviceProc(tmp_path, "oven-v", server)
        devices.append(good)
        enrolled(good, server)
        st = converged(good, server, 1)
        good.stop()
        good.server = other_srv
        good.start()
        wait_until(lambda: (s := good.status()) and s, "the device to start")
        # The other server names no key of ours: HELLO_ACK is a hint, never an outcome.
        wait_until(lambda: _attempts(good) >= 2 or None, "retries")
        st2 = good.status()
        assert st2 is not None
        assert (st2["epoch"], st2["enrolled"], st2["connected"]) == (1, True, False)
    finally:
        other_srv.stop()


def _attempts(dev: DeviceProc) -> int:
    return dev.log.read_text().count("connection closed: HANDSHAKE_REFUSED")


def test_wrong_local_token(tmp_path: Path, server: ServerProc, devices: list[DeviceProc]) -> None:
    dev = DeviceProc(tmp_path, "oven-t", server)
    devices.append(dev)
    st = enrolled(dev, server)
    base = f"http://127.0.0.1:{dev.listen_port}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": f"Basic {dev.token}"},
    ):
        r = httpx.post(base + "/v1/rekey", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {dev.token}"}
    # A browser page (any Origin) and a foreign Host are refused even with the token.
    assert httpx.post(base + "/v1/rekey", headers={**good, "Origin": base}).status_code == 403
    assert (
        httpx.get(base + "/v1/status", headers={**good, "Host": "evil.example:80"}).status_code
        == 421
    )
    after: Any = dev.status()
    assert after["epoch"] == st["epoch"]
    assert dev.token not in str(after)
