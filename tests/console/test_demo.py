"""``keyseed demo``: ``--once`` as a separate process runs every flow against real processes
and exits 0, naming each flow with its message numbers; a flow that fails makes it exit 1
with a line naming that flow, and leaves no process behind."""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from keyseed import cli, demo

#: Generous bound: the run takes seconds; only a hang reaches it.
TIMEOUT = 180


def _demo_argv() -> list[str]:
    """``python -m keyseed demo`` once ``demo`` is wired into the CLI, else the module."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return ["keyseed", "demo"] if "demo" in commands.choices else ["keyseed.demo"]


def _descendants(pid: int) -> set[int]:
    """Processes whose parent chain leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
    env["COLUMNS"] = "200"
    env["TMPDIR"] = str(tmp_path)
    return env


def test_demo_once_runs_every_flow(clean_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", *_demo_argv(), "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=clean_env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = out.decode()
    assert proc.returncode == 0, text
    for title, numbers in (
        ("Registration", "201/202"),
        ("First enrolment", "203-206"),
        ("Arrival confirmation", "207-209"),
        ("Rekey at the device", "301/302"),
        ("Rekey by proxy", "401-404"),
        ("Automatic rekey by policy", "S03"),
        ("Recipe fetched", "APP"),
        ("Cooking status under the current key", "APP"),
    ):
        assert f"{title} ({numbers})" in text, title
        assert re.search(rf"│ {re.escape(title)} +│ {numbers} +│ ok ", text), title
    # Each message number appears as a narrated step.
    for number in ("201", "202", "203", "204", "205", "206", "207", "208", "209", "301", "302"):
        assert re.search(rf"^ +{number} ", text, re.M), number
    for number in ("401", "402", "403", "404"):
        assert re.search(rf"^ +{number} ", text, re.M), number
    assert "recipe" in text.lower() and "cooking" in text
    assert "every flow succeeded (9 of 9)" in text
    # The temporary folder is gone, and so is every process the demo started.
    assert not list(tmp_path.glob("keyseed-demo-*"))
    assert not _descendants(proc.pid)


def test_a_failed_flow_is_named_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A flow whose check fails: the run stops there, names it, and stops every process."""
    for name in list(os.environ):
        if name.startswith("KEYSEED_"):
            monkeypatch.delenv(name)

    def no_answer(self: demo.Demo) -> str:
        raise demo.FlowFailed("oven-1 did not answer 207: offline")

    monkeypatch.setattr(demo.Demo, "flow_confirmation", no_answer)
    buf = io.StringIO()
    code = demo.run_demo(once=True, console=Console(file=buf, width=200), folder=tmp_path / "run")
    text = buf.getvalue()
    assert code == demo.EXIT_FAILED, text
    assert "keyseed demo: FAILED: confirmation (207-209): oven-1 did not answer 207" in text
    assert re.search(r"│ First enrolment +│ 203-206 +│ ok ", text)
    assert re.search(r"│ Rekey at the device +│ 301/302 +│ not run ", text)
    assert not _descendants(os.getpid())


def test_a_server_that_cannot_start_fails_the_run(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        buf = io.StringIO()
        code = demo.run_demo(
            once=True,
            console=Console(file=buf, width=200),
            folder=tmp_path / "run",
            admin_port=busy.getsockname()[1],
        )
    text = buf.getvalue()
    assert code == demo.EXIT_FAILED
    assert "keyseed demo: FAILED: server: server exited with code" in text
    assert not _descendants(os.getpid())
