"""The device agent and the server as real processes on loopback.

Flows: enrolment (203-206), application traffic (the microwave cooks a recipe ordered by the
setup PC through the server), rekeys by 301 (setup endpoint), by 403 (proxy, 401/402), by the
policy's message count and key age, and a reconnect after the server restarts.

No bricking (DESIGN.md section 4): each side is killed with SIGKILL at each step of an
exchange, through the crash hook (``KEYSEED_CRASH_AT``), then restarted with no operator
action; the pair must converge on one key, with a usable seed, and carry traffic again.
"""

from __future__ import annotations

from typing import Any

import devprocs
import pytest
from devprocs import DeviceProc, ServerProc, converged, cooks, enrolled, wait_until

# The fixtures (pytest finds them by these module attributes).
devices_fixture = devprocs.devices_fixture
policy_server_fixture = devprocs.policy_server_fixture
server_fixture = devprocs.server_fixture


class TestFlows:
    """201/202, 203-206, APP, 301/302, 401-404, restart."""

    def test_enrol_traffic_301_403_and_server_restart(
        self, tmp_path: Any, server: ServerProc, devices: list[DeviceProc]
    ) -> None:
        dev = DeviceProc(tmp_path, "oven-1", server)
        devices.append(dev)
        st = enrolled(dev, server)
        assert st["enrolled"] and st["server_key_fingerprint"] == server.fingerprint
        converged(dev, server, 1)
        cooks(dev, server)
        # 301 at the device's setup endpoint -> 302, then 203-206.
        r = dev.rekey()
        assert r.status_code == 202 and r.json()["message"] == 302
        converged(dev, server, 2)
        # 401 at the server -> 403 over the channel -> 404, then 203-206.
        with server.admin() as c:
            r = c.post("/v1/admin/devices/oven-1/rekey")
        assert r.status_code == 202, r.text
        converged(dev, server, 3)
        # The server restarts: the device reconnects under its current key.
        server.stop()
        wait_until(lambda: (s := dev.status()) and not s["connected"], "the device to notice")
        server.start()
        st = converged(dev, server, 3)
        assert st["epoch"] == 3
        cooks(dev, server, "defrost-bread")

    def test_rekey_on_start(
        self, tmp_path: Any, server: ServerProc, devices: list[DeviceProc]
    ) -> None:
        dev = DeviceProc(tmp_path, "oven-2", server)
        devices.append(dev)
        enrolled(dev, server)
        converged(dev, server, 1)
        dev.stop()
        dev.start("--rekey-on-start")
        converged(dev, server, 2)


class TestAutomaticRekey:
    """S03: the policy from 206 (soft limits) makes the device rekey by itself."""

    @pytest.mark.parametrize("policy_server", ["6,86400"], indirect=True)
    def test_by_message_count(
        self, tmp_path: Any, policy_server: ServerProc, devices: list[DeviceProc]
    ) -> None:
        dev = DeviceProc(tmp_path, "oven-c", policy_server)
        devices.append(dev)
        # Status reports every 0.5 s are application messages: the count grows by itself.
        enrolled(dev, policy_server)
        st = converged(dev, policy_server, 3)
        assert st["messages"] < 6

    @pytest.mark.parametrize("policy_server", ["1000000,1"], indirect=True)
    def test_by_key_age(
        self, tmp_path: Any, policy_server: ServerProc, devices: list[DeviceProc]
    ) -> None:
        dev = DeviceProc(tmp_path, "oven-a", policy_server)
        devices.append(dev)
        enrolled(dev, policy_server, "--app", "none")
        converged(dev, policy_server, 3)


DEVICE_POINTS = [
    "device.sent.203",  # the pending exchange is on disk, the 203 left
    "device.recv.204",  # 204 OK arrived, no 205 yet
    "device.sent.205",  # key confirmation left; the server commits without us
    "device.recv.206",  # 206 arrived, the keystore not yet written
    "device.sent.ack_206",  # new key and seed on disk, the ACK left
]
SERVER_POINTS = [
    "server.recv.203",  # 203 arrived, nothing stored
    "server.sent.204",  # 204 OK left, the exchange pending in memory only
    "server.recv.205",  # 205 arrived, not committed
    "server.send.206",  # committed, the 206 not sent
    "server.sent.206",  # 206 left, not acknowledged
]


class TestNoBricking:
    """Kill -9 either side at each step of an exchange; restart; the pair converges."""

    @pytest.mark.parametrize("point", DEVICE_POINTS)
    @pytest.mark.parametrize("phase", ["enrolment", "rekey"])
    def test_device_killed(
        self, tmp_path: Any, server: ServerProc, devices: list[DeviceProc], point: str, phase: str
    ) -> None:
        dev = DeviceProc(tmp_path, "oven-k", server)
        devices.append(dev)
        server.register(dev.device_id)
        first = ("--server-key", server.server_key(), "--setup-code", "12345678")
        if phase == "rekey":
            dev.start(*first)
            converged(dev, server, 1)
            dev.stop()
            dev.start("--rekey-on-start", crash_at=point)
        else:
            dev.start(*first, crash_at=point)
        assert dev.wait_dead() == -9, dev.logs()
        dev.start()
        converged(dev, server, 1 if phase == "enrolment" else 2)
        cooks(dev, server)

    @pytest.mark.parametrize("point", SERVER_POINTS)
    @pytest.mark.parametrize("phase", ["enrolment", "rekey"])
    def test_server_killed(
        self, tmp_path: Any, devices: list[DeviceProc], point: str, phase: str
    ) -> None:
        srv = ServerProc(tmp_path)
        srv.start()
        try:
            dev = DeviceProc(tmp_path, "oven-s", srv)
            devices.append(dev)
            srv.register(dev.device_id)
            first = ("--server-key", srv.server_key(), "--setup-code", "12345678")
            if phase == "rekey":
                dev.start(*first)
                converged(dev, srv, 1)
                srv.stop()
                srv.start(crash_at=point)
                converged(dev, srv, 1)
                assert dev.rekey().status_code == 202
            else:
                srv.stop()
                srv.start(crash_at=point)
                dev.start(*first)
            assert srv.wait_dead() == -9, srv.log.read_text()[-3000:]
            srv.start()
            converged(dev, srv, 1 if phase == "enrolment" else 2)
            cooks(dev, srv)
        finally:
            srv.stop()
