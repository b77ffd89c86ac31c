"""Device configuration: flags > KEYSEED_DEVICE_* > TOML > defaults; bad values are typed
errors that never echo the value (it may be the setup code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyseed.device.config import ConfigError, device_url, keys_url, load_device_config

BASE = {"id": "oven-1", "server": "ws://127.0.0.1:8700", "keystore": "/tmp/ks"}


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "device.toml"
    toml.write_text('[device]\nlisten = "127.0.0.1:9000"\nbackoff-max = 5\napp = "none"\n')
    env = {"KEYSEED_DEVICE_CONFIG": str(toml), "KEYSEED_DEVICE_BACKOFF_MAX": "7"}
    cfg = load_device_config({**BASE, "app": "microwave"}, env)
    assert cfg.listen == "127.0.0.1:9000"  # file
    assert cfg.backoff_max == 7.0  # env over file
    assert cfg.app == "microwave"  # flag over file
    assert cfg.url == "ws://127.0.0.1:8700/v1/device"
    # The server's variables are not the device's.
    cfg = load_device_config(BASE, {"KEYSEED_PORT": "1", "KEYSEED_CONFIG": "/nonexistent"})
    assert cfg.listen is None


def test_missing_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="--keystore"):
        load_device_config({"id": "x", "server": "ws://h"}, {})
    with pytest.raises(ConfigError) as exc:
        load_device_config({**BASE, "setup_code": "1234"}, {})
    assert "1234" not in str(exc.value)
    for bad in (
        {"id": "bad id"},
        {"server": "http://h"},
        {"server": "ws://user:pw@h"},
        {"pin": "abcd"},
        {"listen": "example.com:80"},
        {"rekey_on_start": "maybe"},
        {"suite": "nope"},
    ):
        with pytest.raises(ConfigError):
            load_device_config({**BASE, **bad}, {})


def test_urls() -> None:
    assert device_url("wss://srv.example/") == "wss://srv.example/v1/device"
    assert device_url("ws://h:1/custom") == "ws://h:1/custom"
    assert keys_url("wss://srv.example") == "https://srv.example/v1/keys"
