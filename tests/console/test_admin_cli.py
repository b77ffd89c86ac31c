"""``keyseed admin`` against a real server: a ``keyseed server`` process (SQLite in a tmp
folder, the microwave app) and real ``keyseed device`` processes on loopback. Every subcommand
runs in table and --json mode, and every error maps to its exit code: server down 3, bad
token 4, unknown device 5, conflict 6, unsafe token file 2.

The command runs in this process (capsys sees its output); the server and devices are
processes. Waiting is by polling the admin API up to a generous bound: only a hang reaches it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyseed import cli
from keyseed.console import add_admin_parser
from keyseed.console.client import (
    AdminClient,
    ExitCode,
    Settings,
    UsageError,
    load_admin_settings,
    load_device_settings,
)
from waiting import wait_until

CODE = "31415926"


def keyseed_main(argv: list[str]) -> int:
    """What ``keyseed`` does with argv: the real CLI once ``admin`` is wired into it, else
    the same dispatch around :func:`add_admin_parser`."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "admin" in commands.choices:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="keyseed")
    add_admin_parser(parser.add_subparsers())
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if getattr(args, "handler", None) is None:
        args.parser.print_help(sys.stderr)
        return 2
    code: int = args.handler(args, args.parser)
    return code


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
    env.update(extra or {})
    return env


def _start(argv: list[str], out: Path, err: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with out.open("wb") as fo, err.open("wb") as fe:
        return subprocess.Popen(
            [sys.executable, "-m", *argv], stdout=fo, stderr=fe, env=env, start_new_session=True
        )


def _line(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> re.Match[str]:
    def find() -> re.Match[str] | None:
        assert proc.poll() is None, path.with_suffix(".log").read_text()[-3000:]
        return re.search(pattern, path.read_text(), re.MULTILINE)

    found: re.Match[str] = wait_until(find, pattern)
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Device:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    token_file: Path
    log: Path


@dataclass
class Server:
    tmp: Path
    proc: subprocess.Popen[bytes]
    admin_url: str
    device_url: str
    fingerprint: str
    token: str = field(repr=False)
    token_file: Path
    devices: list[Device] = field(default_factory=list)

    def api(self) -> AdminClient:
        return AdminClient(Settings(self.admin_url, self.token))

    def view(self, device_id: str) -> dict[str, Any]:
        with self.api() as c:
            return c.device(device_id)

    def start_device(self, name: str, code: str | None) -> Device:
        folder = self.tmp / name
        folder.mkdir()
        out, log = folder / "out", folder / "log"
        argv = [
            "keyseed.device",
            "--id", name,
            "--server", self.device_url,
            "--keystore", str(folder / "ks"),
            "--pin", self.fingerprint,
            "--listen", "127.0.0.1:0",
            "--backoff-initial", "0.05",
            "--backoff-max", "0.5",
            "--status-interval", "0.5",
            "--rekey-min-interval", "0",
        ]  # fmt: skip
        env = _env({"KEYSEED_DEVICE_SETUP_CODE": code} if code else None)
        proc = _start(argv, out, log, env)
        m = _line(out, r"^setup endpoint: (http://\S+?)/v1/ \(token in (.+)\)$", proc)
        dev = Device(name, proc, m.group(1), Path(m.group(2)), log)
        self.devices.append(dev)
        return dev


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("admin-cli")
    out, log = tmp / "server.out", tmp / "server.log"
    argv = [
        "keyseed", "server",
        "--data", str(tmp / "data"),
        "--host", "127.0.0.1", "--port", "0",
        "--admin-host", "127.0.0.1", "--admin-port", "0",
        "--app", "microwave",
        "--confirm-timeout", "3",
    ]  # fmt: skip
    proc = _start(argv, out, log, _env())
    srv: Server | None = None
    try:
        admin = _line(out, r"^admin listener: (http://\S+)/v1/admin$", proc).group(1)
        text = out.read_text()
        token = re.search(r"^admin token \(shown once; store it now\): (\S+)$", text, re.M)
        device = re.search(r"^device listener: (ws://\S+)/v1/device$", text, re.M)
        fp = re.search(r"^server key hpke-x25519 \(new\): fingerprint (\w+)$", text, re.M)
        assert token and device and fp, text
        token_file = tmp / "admin.token"
        token_file.write_text(token.group(1) + "\n")
        token_file.chmod(0o600)
        srv = Server(tmp, proc, admin, device.group(1), fp.group(1), token.group(1), token_file)
        yield srv
    finally:
        for dev in srv.devices if srv is not None else []:
            _stop(dev.proc)
        _stop(proc)


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The server's URL and token file in the environment; no config file of the user's."""
    for name in list(os.environ):
        if name.startswith("KEYSEED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KEYSEED_ADMIN_URL", server.admin_url)
    monkeypatch.setenv("KEYSEED_ADMIN_TOKEN_FILE", str(server.token_file))
    monkeypatch.setenv("HOME", str(server.tmp / "home"))
    return server


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(env: Server, capsys: pytest.CaptureFixture[str]) -> Run:
    """``keyseed admin ARGS`` -> (exit code, stdout, stderr); the token never appears."""

    def go(*args: str) -> tuple[int, str, str]:
        code = keyseed_main(["admin", *args])
        out, err = capsys.readouterr()
        assert env.token not in out + err
        return code, out, err

    return go


def run_json(run: Run, *args: str) -> Any:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def enrolled(server: Server) -> Device:
    """oven-a: registered with its code and enrolled by a real device process."""
    with server.api() as c:
        c.register("oven-a", setup_code=CODE)
    dev = server.start_device("oven-a", CODE)
    wait_until(
        lambda: (v := server.view("oven-a"))["epoch"] == 1 and v["online"] and not v["owed_206"],
        "oven-a enrolled",
    )
    return dev


def settle(server: Server, device_id: str, epoch: int) -> dict[str, Any]:
    view: dict[str, Any] = wait_until(
        lambda: (
            v
            if (v := server.view(device_id))["epoch"] >= epoch
            and not v["pending_exchange"]
            and not v["owed_206"]
            and v["online"]
            else None
        ),
        f"{device_id} at epoch {epoch}",
    )
    return view


# -- register, list, show ------------------------------------------------------------------


def test_register_table_then_json(run: Run) -> None:
    code, out, err = run("register", "reg-1", "--setup-code", CODE, "--window", "120")
    assert code == 0, err
    assert "201 → 202" in out and "reg-1" in out and "awaiting enrolment" in out
    assert CODE not in out + err
    view = run_json(run, "register", "reg-2", "--setup-code", CODE, "--policy-soft-age-s", "77")
    assert view["device_id"] == "reg-2" and view["window_open"] and view["code_required"]
    assert view["epoch"] == 0 and not view["enrolled"]
    assert view["policy"]["soft_age_s"] == 77


def test_register_code_from_the_environment(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSEED_ADMIN_SETUP_CODE", CODE)
    view = run_json(run, "register", "reg-env")
    assert view["code_required"] is True


def test_register_needs_a_code_or_an_explicit_opt_out(run: Run, server: Server) -> None:
    code, out, err = run("register", "reg-none")
    assert code == ExitCode.USAGE and "--no-code" in err and out == ""
    code, _, err = run("register", "reg-both", "--setup-code", CODE, "--no-code")
    assert code == ExitCode.USAGE
    with server.api() as c:
        ids = {v["device_id"] for v in c.devices()}
    assert not {"reg-none", "reg-both"} & ids  # nothing was registered


def test_register_bad_code_is_refused_by_the_server_and_not_echoed(run: Run) -> None:
    code, out, err = run("register", "reg-bad", "--setup-code", "12ab")
    assert code == ExitCode.USAGE and "12ab" not in out + err
    assert "refused" in err and len(err.strip().splitlines()) == 1


def test_register_no_code_window(run: Run) -> None:
    code, out, err = run("register", "reg-nocode", "--no-code")
    assert code == 0, err
    assert "approve reg-nocode --sas" in " ".join(out.split())


def test_list_table_and_json(run: Run, server: Server) -> None:
    run_json(run, "register", "list-1", "--setup-code", CODE)
    code, out, _ = run("list")
    assert code == 0 and "list-1" in out and "awaiting enrolment" in out
    listed = run_json(run, "list")
    with httpx.Client() as c:
        direct = c.get(
            f"{server.admin_url}/v1/admin/devices",
            headers={"Authorization": f"Bearer {server.token}"},
        ).json()
    # Exactly what the API answers (the version and key age of live devices may move).
    assert [v["device_id"] for v in listed] == [v["device_id"] for v in direct]
    assert [set(v) for v in listed] == [set(v) for v in direct]


def test_show_table_and_json(run: Run) -> None:
    run_json(run, "register", "show-1", "--setup-code", CODE)
    code, out, _ = run("show", "show-1")
    assert code == 0 and "show-1" in out and "enrolment window" in out and "open until" in out
    view = run_json(run, "show", "show-1")
    assert view["device_id"] == "show-1" and view["epoch"] == 0


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("show", "ghost"),
        ("rekey", "ghost"),
        ("confirm", "ghost"),
        ("revoke", "ghost"),
        ("approve", "ghost", "--sas", "123456"),
        ("cook", "ghost", "popcorn"),
    ],
)
def test_unknown_device_exits_5(run: Run, args: tuple[str, ...]) -> None:
    code, out, err = run(*args)
    assert code == ExitCode.NOT_FOUND
    assert out == "" and err.strip() == f"keyseed admin {args[0]}: unknown device ghost"


def test_unknown_device_in_json_mode_also_exits_5(run: Run) -> None:
    code, out, err = run("show", "ghost", "--json")
    assert code == ExitCode.NOT_FOUND and out == "" and "unknown device" in err


def test_server_down_exits_3(run: Run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        code, out, err = run("list", "--url", f"http://127.0.0.1:{port}")
    assert code == ExitCode.UNREACHABLE and out == ""
    assert f"cannot reach the server at http://127.0.0.1:{port}" in err


def test_bad_token_exits_4(run: Run, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("kst_not-the-token\n")
    wrong.chmod(0o600)
    code, out, err = run("list", "--token-file", str(wrong))
    assert code == ExitCode.AUTH and out == "" and "refused the admin token (401)" in err
    assert "kst_not-the-token" not in err
    code, _, err = run("show", "ghost", "--token", "kst_other")
    assert code == ExitCode.AUTH and "kst_other" not in err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_readable_by_others_is_refused(run: Run, env: Server, mode: int) -> None:
    loose = env.tmp / f"loose-{mode:o}.token"
    loose.write_text(env.token + "\n")
    loose.chmod(mode)
    code, out, err = run("list", "--token-file", str(loose))
    assert code == ExitCode.USAGE and out == ""
    assert f"mode {mode:04o}" in err and f"chmod 600 {loose}" in err


def test_conflict_exits_6(run: Run, enrolled: Device) -> None:
    code, _, err = run("register", "oven-a", "--setup-code", CODE)
    assert code == ExitCode.CONFLICT and "device_exists" in err


def test_not_enrolled_exits_6(run: Run) -> None:
    run_json(run, "register", "fresh-1", "--setup-code", CODE)
    for cmd in ("rekey", "confirm"):
        code, _, err = run(cmd, "fresh-1")
        assert code == ExitCode.CONFLICT and err.count("\n") == 1


def test_bare_admin_prints_help_and_exits_2(run: Run) -> None:
    code, _, err = run()
    assert code == ExitCode.USAGE and "register" in err and "device-rekey" in err


# -- the flows on an enrolled device ---------------------------------------------------------


def test_fingerprint_table_and_json(run: Run, server: Server) -> None:
    code, out, _ = run("fingerprint")
    assert code == 0 and server.fingerprint in out
    keys = run_json(run, "fingerprint", "--public-key")
    assert [k["fingerprint"] for k in keys] == [server.fingerprint]
    assert len(keys[0]["public_key"]) == 64
    code, _, err = run("fingerprint", "--suite", "rsa-oaep")
    assert code == ExitCode.FAILED and "not enabled" in err


def test_confirm_table_and_json(run: Run, server: Server, enrolled: Device) -> None:
    code, out, err = run("confirm", "oven-a")
    assert code == 0, err
    assert "208 → 207 → 209" in out and "oven-a answered under epoch" in out
    result = run_json(run, "confirm", "oven-a")
    assert result["ok"] is True and result["rtt_ms"] > 0 and result["epoch"] >= 1


def test_rekey_by_proxy_advances_the_epoch(run: Run, server: Server, enrolled: Device) -> None:
    before = settle(server, "oven-a", 1)["epoch"]
    code, out, err = run("rekey", "oven-a")
    assert code == 0, err
    assert "401 → 402" in out and f"epoch {before} is to be replaced" in out
    settle(server, "oven-a", before + 1)
    result = run_json(run, "rekey", "oven-a")
    assert result["order_epoch"] == before + 1 and result["device_id"] == "oven-a"
    view = settle(server, "oven-a", before + 2)
    assert view["order_epoch"] is None


def test_device_rekey_at_the_local_endpoint(run: Run, server: Server, enrolled: Device) -> None:
    before = settle(server, "oven-a", 1)["epoch"]
    base = ("--device-url", enrolled.url + "/v1/", "--device-token-file", str(enrolled.token_file))
    code, out, err = run("device-rekey", *base)
    assert code == 0, err
    assert "301 → 302" in out and f"epoch {before}" in out
    settle(server, "oven-a", before + 1)
    answer = run_json(run, "device-rekey", *base)
    assert answer["message"] == 302 and answer["accepted"] is True
    settle(server, "oven-a", before + 2)


def test_device_rekey_errors(run: Run, env: Server, enrolled: Device, tmp_path: Path) -> None:
    wrong = tmp_path / "device.token"
    wrong.write_text("kd_wrong-token-of-enough-length\n")
    wrong.chmod(0o600)
    code, _, err = run(
        "device-rekey", "--device-url", enrolled.url, "--device-token-file", str(wrong)
    )
    assert code == ExitCode.AUTH and "refused the device token" in err
    assert "kd_wrong" not in err
    before = env.view("oven-a")["version"]
    enrolled.token_file.chmod(0o644)
    try:
        code, _, err = run(
            "device-rekey",
            "--device-url",
            enrolled.url,
            "--device-token-file",
            str(enrolled.token_file),
        )
    finally:
        enrolled.token_file.chmod(0o600)
    assert code == ExitCode.USAGE and "chmod 600" in err
    assert env.view("oven-a")["version"] == before  # nothing was ordered
    code, _, err = run("device-rekey", "--device-token-file", str(enrolled.token_file))
    assert code == ExitCode.USAGE and "--device-url" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code, _, err = run(
            "device-rekey", "--device-url", url, "--device-token-file", str(enrolled.token_file)
        )
    assert code == ExitCode.UNREACHABLE and "cannot reach the device" in err


def test_cook_table_and_json(run: Run, server: Server, enrolled: Device) -> None:
    settle(server, "oven-a", 1)
    code, out, err = run("cook", "oven-a", "warm-milk")
    assert code == 0, err
    assert "cooking order for oven-a: warm-milk" in out
    result = run_json(run, "cook", "oven-a", "popcorn")
    assert result == {"device_id": "oven-a", "recipe": "popcorn", "pushed": True}
    wait_until(
        lambda: (server.view("oven-a")["app"] or {}).get("recipe") == "popcorn",
        "the oven to report cooking popcorn",
    )
    code, out, _ = run("list")
    assert "cooking popcorn" in out
    code, _, err = run("cook", "oven-a", "no-such-dish")
    assert code == ExitCode.USAGE and "refused" in err


def test_audit_table_and_json(run: Run, server: Server, enrolled: Device) -> None:
    settle(server, "oven-a", 1)
    code, out, _ = run("audit", "--device", "oven-a", "--limit", "200")
    assert code == 0 and "enrolled" in out and "204_ok" in out and "registered" in out
    rows = run_json(run, "audit", "--device", "oven-a", "--limit", "200")
    assert {r["device_id"] for r in rows} == {"oven-a"}
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    page = run_json(run, "audit", "--limit", "2")
    older = run_json(run, "audit", "--limit", "2", "--before-id", str(page[-1]["id"]))
    assert len(page) == 2 and all(r["id"] < page[-1]["id"] for r in older)


def test_approve_by_sas_then_revoke(run: Run, server: Server) -> None:
    run_json(run, "register", "oven-b", "--no-code")
    dev = server.start_device("oven-b", None)
    wait_until(lambda: server.view("oven-b")["enrolled"], "oven-b enrolled")
    sas = wait_until(
        lambda: re.search(r"sas=(\d{6})", dev.log.read_text()), "the SAS in oven-b's log"
    ).group(1)
    assert not server.view("oven-b")["confirmed"]
    wrong = f"{(int(sas) + 1) % 10**6:06d}"
    code, _, err = run("approve", "oven-b", "--sas", wrong)
    assert code == ExitCode.CONFLICT and "sas_mismatch" in err and wrong not in err
    assert not server.view("oven-b")["confirmed"]
    code, out, err = run("approve", "oven-b", "--sas", sas)
    assert code == 0, err
    assert "approved oven-b" in out and server.view("oven-b")["confirmed"]
    view = run_json(run, "approve", "oven-b", "--sas", sas)
    assert view["confirmed"] is True
    # Offline: a confirmation that gets no answer exits 1.
    _stop(dev.proc)
    wait_until(lambda: not server.view("oven-b")["online"], "oven-b offline")
    code, out, err = run("confirm", "oven-b")
    assert code == ExitCode.FAILED and "did not answer 207 (offline)" in err
    code, out, err = run("confirm", "oven-b", "--json")
    assert code == ExitCode.FAILED and json.loads(out)["ok"] is False
    code, out, err = run("revoke", "oven-b")
    assert code == 0 and "revoked oven-b" in out
    assert run_json(run, "revoke", "oven-b")["revoked"] is True  # idempotent
    assert run_json(run, "show", "oven-b")["revoked"] is True
    code, _, err = run("rekey", "oven-b")
    assert code == ExitCode.CONFLICT


# -- settings ------------------------------------------------------------------------------


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_settings_precedence_flags_env_file(tmp_path: Path) -> None:
    t_flag = _secret(tmp_path / "flag.token", "kst_flag")
    t_env = _secret(tmp_path / "env.token", "kst_env")
    _secret(tmp_path / "file.token", "kst_file")
    conf = tmp_path / "admin.toml"
    conf.write_text('[admin]\nurl = "http://127.0.0.1:9001/v1/admin/"\ntoken_file = "file.token"\n')
    environ = {"KEYSEED_ADMIN_URL": "http://127.0.0.1:9002", "KEYSEED_ADMIN_TOKEN_FILE": str(t_env)}
    s = load_admin_settings(config=str(conf), environ={})
    assert (s.url, s.token) == ("http://127.0.0.1:9001", "kst_file")  # relative to the file
    s = load_admin_settings(config=str(conf), environ=environ)
    assert (s.url, s.token) == ("http://127.0.0.1:9002", "kst_env")
    s = load_admin_settings(
        url="http://127.0.0.1:9003", token_file=str(t_flag), config=str(conf), environ=environ
    )
    assert (s.url, s.token) == ("http://127.0.0.1:9003", "kst_flag")
    assert "kst_" not in repr(s)


def test_config_file_holding_a_token_must_be_private(tmp_path: Path) -> None:
    conf = tmp_path / "admin.toml"
    conf.write_text('token = "kst_in_file"\n')
    conf.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600") as info:
        load_admin_settings(config=str(conf), environ={})
    assert "kst_in_file" not in str(info.value)
    conf.chmod(0o600)
    assert load_admin_settings(config=str(conf), environ={}).token == "kst_in_file"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environ": {}}, "no admin token"),
        ({"token": "a", "token_file": "b", "environ": {}}, "both a token and a token file"),
        ({"token": "has space", "environ": {}}, "does not hold a token"),
        ({"token": "x", "url": "ftp://host", "environ": {}}, "http:// or https://"),
        ({"token": "x", "url": "http://u:p@host", "environ": {}}, "credentials"),
        ({"token": "x", "url": "http://host/?token=x", "environ": {}}, "query"),
        ({"token": "x", "config": "/nonexistent/admin.toml", "environ": {}}, "cannot read"),
    ],
)
def test_bad_settings_are_usage_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load_admin_settings(**kwargs)
    assert info.value.exit_code == ExitCode.USAGE


def test_unknown_config_key_and_device_settings(tmp_path: Path) -> None:
    conf = tmp_path / "admin.toml"
    conf.write_text('tokn = "x"\n')
    with pytest.raises(UsageError, match="unknown setting 'tokn'"):
        load_admin_settings(config=str(conf), environ={})
    dev_token = _secret(tmp_path / "ks.token", "kd_device_token_value")
    conf.write_text(
        f'device_url = "http://127.0.0.1:8702/v1/"\ndevice_token_file = "{dev_token}"\n'
    )
    s = load_device_settings(config=str(conf), environ={})
    assert (s.url, s.token) == ("http://127.0.0.1:8702", "kd_device_token_value")


def test_dot_device_ids_never_reach_another_route(run: Run) -> None:
    for bad in ("..", "."):
        code, _, err = run("show", bad)
        assert code == ExitCode.USAGE and "not a device ID" in err
