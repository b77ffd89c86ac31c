"""``keyseed bench`` (the system benchmark) on a tiny configuration: a real ``keyseed server``
process and a real TLS peer process, a few devices and short rounds. Checks the report's
shape and its arithmetic, never its speed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from keyseed.bench.core import split_available
from keyseed.bench.system import (
    Params,
    add_bench_system,
    cpu_seconds,
    durable_commit_us,
    format_table,
    rss_bytes,
    run_system_bench,
)
from keyseed.crypto.suites import SUITES
from pgtest import pg_fresh_database

SUITES_RUN = split_available(list(SUITES))[0]

TINY = Params(
    rounds=2, seconds=0.3, exchange_devices=2, rt_connections=3, idle_counts=(5, 8), raw_ops=5
)


def test_proc_readers_see_this_process() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # burn some CPU
    assert cpu_seconds(os.getpid()) > before
    assert rss_bytes(os.getpid()) > 1 << 20


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_system_bench(params=TINY)


def _rel(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.02, abs_tol=0.002)


def test_every_figure_is_present_and_positive(report: dict[str, Any]) -> None:
    suites, _ = split_available(list(SUITES))
    assert report["benchmark"] == "system"
    assert set(report["raw_limit_per_s"]) == set(suites)
    assert set(report["keyseed_exchange"]) == set(suites)
    figures = [*report["raw_limit_per_s"].values()]
    four = {
        "exchange_per_s",
        "exchange_server_cpu_us",
        "exchange_capacity_per_core_s",
        "exchange_latency_us",
    }
    for e in report["keyseed_exchange"].values():
        # SQLite: the group commit seen through /metrics.
        assert set(e) == four | {"commits_per_exchange", "writes_per_exchange"}
        # Three writes per exchange (203, 205, ACK_206), never more COMMITs than writes.
        assert 0 < e["commits_per_exchange"] <= e["writes_per_exchange"]
        assert e["writes_per_exchange"] >= 2.5
        figures += e.values()
    rt_keys = {"rt_per_s", "rt_server_cpu_us", "rt_capacity_per_core_s", "rt_latency_us"}
    assert set(report["keyseed_rt"]) == rt_keys
    assert set(report["tls"]) == rt_keys | {
        "handshake_per_s",
        "handshake_server_cpu_us",
        "handshake_capacity_per_core_s",
        "handshake_latency_us",
    }
    assert set(report["wss"]) == rt_keys | {"memory_per_connection_bytes", "idle_connections"}
    assert set(report["ws"]) == rt_keys
    assert report["durable_commit_cpu_us"] > 0
    for d in (report["keyseed_rt"], report["tls"], report["ws"]):
        figures += d.values()
    figures += [report["wss"][k] for k in rt_keys]
    assert all(f > 0 for f in figures), figures
    assert report["wss"]["idle_connections"] == 8
    assert set(report["keyseed_memory_per_device_bytes"]) == {"5", "8"}
    assert report["params"]["idle_counts"] == [5, 8]
    assert report["params"]["database"] == "sqlite (data folder)"
    assert report["params"]["loop"] == "uvloop"  # auto, with uvloop installed
    loaded = report["keyseed_exchange_among_connected"]
    assert set(loaded) == {"5", "8"}
    for e in loaded.values():
        assert set(e) == four
        assert all(v > 0 for v in e.values())
    assert report["fd_limit"] >= 16


def test_ratios_follow_from_the_figures(report: dict[str, Any]) -> None:
    q, tls, wss, rt = report["ratios"], report["tls"], report["wss"], report["keyseed_rt"]
    for s, e in report["keyseed_exchange"].items():
        cap = e["exchange_capacity_per_core_s"]
        assert _rel(cap, 1e6 / e["exchange_server_cpu_us"])
        assert _rel(q["exchange_vs_tls_handshake"][s], cap / tls["handshake_capacity_per_core_s"])
        assert _rel(q["exchange_vs_raw_limit"][s], cap / report["raw_limit_per_s"][s])
    assert _rel(q["rt_vs_tls"], rt["rt_per_s"] / tls["rt_per_s"])
    assert _rel(q["rt_vs_wss"], rt["rt_per_s"] / wss["rt_per_s"])
    assert _rel(
        q["rt_capacity_vs_tls"], rt["rt_capacity_per_core_s"] / tls["rt_capacity_per_core_s"]
    )
    assert _rel(
        q["rt_capacity_vs_wss"], rt["rt_capacity_per_core_s"] / wss["rt_capacity_per_core_s"]
    )
    loaded = report["keyseed_exchange_among_connected"]
    assert _rel(
        q["exchange_cost_most_vs_fewest_connected"],
        loaded["8"]["exchange_server_cpu_us"] / loaded["5"]["exchange_server_cpu_us"],
    )
    per_wss = wss["memory_per_connection_bytes"]
    for n, b in report["keyseed_memory_per_device_bytes"].items():
        if per_wss > 0:
            assert _rel(q["memory_vs_wss"][n], b / per_wss)
        else:
            assert q["memory_vs_wss"][n] is None


def test_floor_follows_from_the_figures(report: dict[str, Any]) -> None:
    f = report["floor"]
    suite = SUITES_RUN[0]
    e = report["keyseed_exchange"][suite]
    raw_us = 1e6 / report["raw_limit_per_s"][suite]
    assert f["suite"] == suite
    assert _rel(f["public_key_us"], raw_us)
    assert _rel(
        f["exchange_budget_us"],
        min(report["tls"]["handshake_server_cpu_us"] / 3, raw_us / 0.4),
    )
    assert _rel(f["messages_us"], 2.5 * report["ws"]["rt_server_cpu_us"])
    assert _rel(f["commits_us"], e["commits_per_exchange"] * report["durable_commit_cpu_us"])
    assert _rel(f["exchange_floor_us"], f["public_key_us"] + f["messages_us"] + f["commits_us"])
    assert _rel(f["exchange_floor_vs_budget"], f["exchange_floor_us"] / f["exchange_budget_us"])
    rt_budget = min(
        report["tls"]["rt_server_cpu_us"] / 0.8, report["wss"]["rt_server_cpu_us"] / 1.2
    )
    assert _rel(f["rt_budget_us"], rt_budget)
    assert _rel(f["rt_floor_us"], report["ws"]["rt_server_cpu_us"])
    assert _rel(f["rt_floor_vs_budget"], f["rt_floor_us"] / rt_budget)


def test_durable_commit_is_measured_and_cleaned_up(tmp_path: Path) -> None:
    us = durable_commit_us(tmp_path, commits=20, rounds=3)
    assert us > 0
    assert list(tmp_path.iterdir()) == []


def test_report_is_json_and_the_table_shows_every_suite(report: dict[str, Any]) -> None:
    assert json.loads(json.dumps(report)) == report
    table = format_table(report)
    for s in report["keyseed_exchange"]:
        assert s in table
    assert "TLS 1.3 full handshake" in table and "wss://" in table
    assert "what the targets leave" in table and "durable commits" in table
    assert "event loop (server, peer and clients): uvloop" in table


def test_cli_wiring_keeps_subcommands() -> None:
    """Plain ``bench`` runs this benchmark; a sibling subcommand keeps its own handler."""
    bench = argparse.ArgumentParser(prog="keyseed bench")
    benchmarks = bench.add_subparsers()
    core = benchmarks.add_parser("core")
    core.set_defaults(handler="core")
    add_bench_system(bench, benchmarks)
    plain = bench.parse_args(["--quick", "--json"])
    assert plain.quick and plain.json and plain.handler.__name__ == "run_bench_system"
    assert plain.loop == "auto" and bench.parse_args(["--loop", "asyncio"]).loop == "asyncio"
    with pytest.raises(SystemExit):
        bench.parse_args(["--loop", "libev"])
    assert bench.parse_args(["core"]).handler == "core"
    assert bench.parse_args(["system"]).handler.__name__ == "run_bench_system"
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "3"])


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the server (its URL), dropped afterwards."""
    with pg_fresh_database() as url:
        yield url


def test_the_server_runs_on_postgresql_with_database(pg_database: str) -> None:
    small = dataclasses.replace(TINY, rounds=1, idle_counts=(3,))
    report = run_system_bench(params=small, database=pg_database)
    assert report["params"]["database"].startswith("postgresql+asyncpg://")
    assert report["params"]["database"].endswith("/" + make_url(pg_database).database)
    for e in report["keyseed_exchange"].values():
        assert e["exchange_per_s"] > 0 and e["exchange_server_cpu_us"] > 0
        # PostgreSQL counts its own commits; the report does not guess them.
        assert "commits_per_exchange" not in e
    assert "durable_commit_cpu_us" not in report and report["floor"]["commits_us"] is None
    assert "durable commits" not in format_table(report)
    assert set(report["keyseed_exchange_among_connected"]) == {"3"}
    assert report["ratios"]["exchange_cost_most_vs_fewest_connected"] == 1.0
