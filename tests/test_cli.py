"""The ``keyseed`` command: help, usage errors and ``bench core``, run in-process.

Workloads are tiny and nothing here asserts a speed: figures belong to the benchmark's own
output, not to tests. What is checked is that every figure is there, is consistent with the
others, and that a bench whose exchanges fail says so with exit code 1.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

import cryptography
import pytest

import keyseed
import keyseed.bench.core as bench_core
import keyseed.crypto.suites as suites
from keyseed.cli import main
from keyseed.loopback import Loopback
from keyseed.protocol.device import DeviceProtocol

TINY = ["--rounds", "1", "--exchanges", "3"]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["bench", "core", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report: dict[str, Any] = json.loads(out)
    return report


# -- bench core --json --------------------------------------------------------------------


def test_bench_core_json_has_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, *TINY, "--suite", "hpke-x25519")
    assert report["benchmark"] == "core"
    assert list(report["suites"]) == ["hpke-x25519"]
    fig = report["suites"]["hpke-x25519"]
    for name in (
        "exchanges_per_s",
        "floor_per_s",
        "ratio",
        "cpu_ratio",
        "wall_us_per_exchange",
        "cpu_us_per_exchange",
        "floor_wall_us",
        "floor_cpu_us",
    ):
        assert isinstance(fig[name], float), name
        assert fig[name] > 0, name
    assert fig["rounds"] == 1
    assert fig["exchanges_per_round"] == 3
    assert fig["ratio"] == pytest.approx(fig["exchanges_per_s"] / fig["floor_per_s"])
    assert fig["cpu_ratio"] == pytest.approx(fig["floor_cpu_us"] / fig["cpu_us_per_exchange"])
    assert fig["wall_us_per_exchange"] == pytest.approx(1e6 / fig["exchanges_per_s"])
    assert fig["floor_ops"] == ["generate", "encrypt", "decrypt"]


def test_bench_core_json_environment(capsys: pytest.CaptureFixture[str]) -> None:
    env = run_json(capsys, *TINY, "--suite", "hpke-x25519")["environment"]
    assert env["python"] == platform.python_version()
    assert env["cryptography"] == cryptography.__version__
    assert env["cpu_count"] == os.cpu_count()
    assert env["keyseed"] == keyseed.__version__


def test_bench_core_medians_over_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    fig = run_json(capsys, "--rounds", "3", "--exchanges", "2", "--suite", "hpke-x25519")["suites"][
        "hpke-x25519"
    ]
    per_round = fig["per_round"]
    assert fig["rounds"] == 3
    assert len(per_round["exchanges_per_s"]) == len(per_round["floor_per_s"]) == 3
    assert fig["exchanges_per_s"] == statistics.median(per_round["exchanges_per_s"])
    assert fig["floor_per_s"] == statistics.median(per_round["floor_per_s"])


def test_bench_core_suite_is_repeatable(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(
        capsys,
        *TINY,
        "--suite",
        "hpke-mlkem768-x25519",
        "--suite",
        "hpke-x25519",
        "--suite",
        "hpke-mlkem768-x25519",
    )
    # In the order given, each once.
    assert list(report["suites"]) == ["hpke-mlkem768-x25519", "hpke-x25519"]
    assert report["unavailable"] == []


def test_bench_core_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "core", *TINY, "--suite", "hpke-x25519"]) == 0
    out = capsys.readouterr().out
    assert "exchanges/s" in out and "floor/s" in out and "ratio" in out
    rows = [line for line in out.splitlines() if line.startswith("hpke-x25519 ")]
    assert len(rows) == 1
    # suite, exchanges per round, exchanges/s, floor/s, ratio, ...
    cells = rows[0].split()
    assert cells[1] == "3"
    assert float(cells[4]) == pytest.approx(float(cells[2]) / float(cells[3]), abs=0.02)


def test_bench_core_default_runs_every_available_suite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if this backend lacked two suites: they are listed, not measured, not fatal.
    monkeypatch.setitem(suites._available, "hpke-mlkem768-x25519", False)
    monkeypatch.setitem(suites._available, "rsa-oaep", False)
    report = run_json(capsys, *TINY)
    assert list(report["suites"]) == ["hpke-x25519"]
    assert report["unavailable"] == ["hpke-mlkem768-x25519", "rsa-oaep"]


def test_bench_core_unavailable_suite_asked_for_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(suites._available, "rsa-oaep", False)
    assert main(["bench", "core", *TINY, "--suite", "rsa-oaep"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "rsa-oaep is not available" in captured.err


# -- a bench whose exchanges fail ----------------------------------------------------------


def _ignore_rekey(device: DeviceProtocol, now: float) -> None:
    """A device that never starts the exchange it is asked for."""


def _store_refuses_after_enrolment(real: Any) -> Any:
    def enrolled(suite: str) -> Loopback:
        lb: Loopback = real(suite)
        lb.store.cas = lambda event: False  # type: ignore[method-assign]
        return lb

    return enrolled


@pytest.mark.parametrize("breakage", ["no_rekey", "store_refuses"])
def test_bench_core_failed_exchange_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    if breakage == "no_rekey":
        monkeypatch.setattr(bench_core, "_request_rekey", _ignore_rekey)
    else:
        monkeypatch.setattr(
            bench_core, "_enrolled_pair", _store_refuses_after_enrolment(bench_core._enrolled_pair)
        )
    code = main(["bench", "core", *TINY, "--suite", "hpke-x25519", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""  # no figures for a run that did not exchange keys
    assert "FAILED" in captured.err


# -- help and usage errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["--version", "bench"]),
        (["bench"], ["core"]),
        (["bench", "core"], ["--suite", "--rounds", "--exchanges", "--json", "hpke-x25519"]),
    ],
)
def test_help_exits_0_and_lists_options(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: list[str]
) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_unknown_suite_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "core", "--suite", "rot13"]) == 2
    err = capsys.readouterr().err
    assert "--suite" in err and "'rot13'" in err
    assert "hpke-x25519" in err  # says what would have been accepted


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "core", "--rounds", "0"],
        ["bench", "core", "--exchanges", "many"],
        ["bench", "core", "--no-such-option"],
        ["no-such-command"],
    ],
)
def test_bad_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "usage"), [([], "usage: keyseed [-h]"), (["admin"], "usage: keyseed admin [-h]")]
)
def test_group_without_command_shows_its_help(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(usage)


def test_python_m_keyseed_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "keyseed", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"keyseed {keyseed.__version__}"
