"""Configuration precedence (flags > environment > TOML > defaults) and the data folder: keys
and token files 0600 and written once, the admin token stored only as a hash."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from keyseed.cli import main
from keyseed.fsutil import atomic_write
from keyseed.server import run as run_module
from keyseed.server.config import ConfigError, ServerConfig, load_config
from keyseed.server.datadir import DataDirError, open_data_dir
from keyseed.server.run import loop_name, resolve_loop, run_on


def test_precedence_flags_env_toml(tmp_path: Path) -> None:
    toml = tmp_path / "ks.toml"
    toml.write_text('[server]\nport = 1111\nadmin_port = 2222\nidle-timeout = 9\nhost = "h"\n')
    env = {"KEYSEED_PORT": "3333", "KEYSEED_ADMIN_PORT": "4444", "KEYSEED_CONFIG": str(toml)}
    cfg = load_config({"port": "5555"}, env)
    assert cfg.port == 5555  # flag
    assert cfg.admin_port == 4444  # environment over the file
    assert cfg.idle_timeout == 9.0 and cfg.host == "h"  # file over defaults
    assert cfg.admin_host == "127.0.0.1"  # default
    assert load_config({}, {}).db_url.startswith("sqlite+aiosqlite:///")
    assert load_config({"suites": "hpke-x25519,rsa-oaep"}, {}).suites == (
        "hpke-x25519",
        "rsa-oaep",
    )


@pytest.mark.parametrize(
    "flags",
    [
        {"port": "x"},
        {"port": "70000"},
        {"suites": "nope"},
        {"s27_timeout": "0"},
        {"log_level": "loud"},
        {"loop": "libev"},
    ],
)
def test_bad_values(flags: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(flags, {})


def test_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config({}, {}).loop == "auto"
    assert load_config({}, {"KEYSEED_LOOP": "AsyncIO"}).loop == "asyncio"
    assert load_config({"loop": "uvloop"}, {"KEYSEED_LOOP": "asyncio"}).loop == "uvloop"

    async def which() -> str:
        return loop_name(asyncio.get_running_loop())

    # uvloop is a dependency here: auto takes it.
    assert resolve_loop("auto") == "uvloop" and run_on("auto", which()) == "uvloop"
    assert run_on("uvloop", which()) == "uvloop"
    assert resolve_loop("asyncio") == "asyncio" and run_on("asyncio", which()) == "asyncio"
    # Where uvloop is not installed, auto falls back and an explicit uvloop is an error.
    monkeypatch.setattr(run_module, "uvloop", None)
    assert resolve_loop("auto") == "asyncio" and run_on("auto", which()) == "asyncio"
    coro = which()
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        run_on("uvloop", coro)
    assert coro.cr_frame is None  # closed, never left un-awaited


def test_server_refuses_a_loop_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run_module, "uvloop", None)
    monkeypatch.delenv("KEYSEED_CONFIG", raising=False)
    code = main(["server", "--data", str(tmp_path / "data"), "--loop", "uvloop"])
    assert code != 0
    assert "uvloop is not installed" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ConfigError):
        load_config({"config": str(bad)}, {})
    bad.write_text("unknown_thing = 1")
    with pytest.raises(ConfigError):
        load_config({"config": str(bad)}, {})


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ServerConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in out, name
        if name != "config":
            assert f"KEYSEED_{name.upper()}" in out, name


def test_data_dir_first_start_and_reuse(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = open_data_dir(data, ("hpke-x25519",))
    assert first.new_token is not None and first.created == ("hpke-x25519",)
    for path in (
        data / "master.key",
        data / "keys" / "hpke-x25519.key",
        data / "admin_token.sha256",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    stored = (data / "admin_token.sha256").read_text().strip()
    assert stored == hashlib.sha256(first.new_token.encode()).hexdigest()
    assert first.new_token not in "".join(
        p.read_bytes().hex() + p.read_text(errors="ignore") for p in data.rglob("*") if p.is_file()
    )
    assert first.check_token(first.new_token) and not first.check_token(first.new_token + "x")
    assert first.new_token not in repr(first) and first.master_key.hex() not in repr(first)
    again = open_data_dir(data, ("hpke-x25519",))
    assert again.new_token is None and again.created == ()
    assert again.fingerprints() == first.fingerprints()
    assert again.k_reject == first.k_reject and again.check_token(first.new_token)
    reset = open_data_dir(data, ("hpke-x25519",), reset_token=True)
    assert reset.new_token and not reset.check_token(first.new_token)


def test_damaged_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "d"
    open_data_dir(data, ("hpke-x25519",))
    atomic_write(data / "master.key", b"short")
    with pytest.raises(DataDirError):
        open_data_dir(data, ("hpke-x25519",))


def test_atomic_write_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    old = os.umask(0)
    try:
        atomic_write(target, b"one")
        atomic_write(target, b"two")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
