"""``keyseed admin allow-pair A B``, ``deny-pair A B`` and ``pairs`` against a real
``keyseed server`` process (the fixtures of test_admin_cli.py), in table and --json mode."""

from __future__ import annotations

from test_admin_cli import Run, env, run, run_json, server

__all__ = ["env", "run", "server"]  # fixtures used by name


def test_allow_list_deny_pairs(run: Run) -> None:
    code, out, _ = run("pairs")
    assert code == 0 and "no pairs" in out

    code, out, _ = run("allow-pair", "oven-2", "oven-1")
    assert code == 0 and "allowed oven-1 <-> oven-2" in out
    view = run_json(run, "allow-pair", "oven-1", "oven-3")
    assert view["a"] == "oven-1" and view["b"] == "oven-3" and view["allowed"] is True
    assert view["status"] == "none" and view["epoch"] == 0

    rows = run_json(run, "pairs")
    assert [(r["a"], r["b"], r["allowed"]) for r in rows] == [
        ("oven-1", "oven-2", True),
        ("oven-1", "oven-3", True),
    ]
    code, out, _ = run("pairs")
    assert code == 0 and "oven-1 <-> oven-2" in out and "oven-1 <-> oven-3" in out

    code, out, _ = run("deny-pair", "oven-1", "oven-2")
    assert code == 0 and "denied oven-1 <-> oven-2" in out and "no live pair key" in out
    rows = run_json(run, "pairs")
    assert {(r["a"], r["b"]): r["allowed"] for r in rows} == {
        ("oven-1", "oven-2"): False,
        ("oven-1", "oven-3"): True,
    }

    audit = run_json(run, "audit", "--device", "oven-2")
    assert [r["kind"] for r in audit][:2] == ["pair_denied", "pair_allowed"]


def test_a_device_does_not_pair_with_itself(run: Run) -> None:
    code, _, err = run("allow-pair", "oven-1", "oven-1")
    assert code != 0 and "itself" in err
    code, _, err = run("allow-pair", "oven 1", "oven-2")
    assert code != 0
