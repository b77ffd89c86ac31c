"""docs/security.md: every row of the catalogue of bad inputs names at least one test, and
every test it names exists (pytest collects it). A row whose test is renamed or removed fails
here, so the catalogue cannot drift from the suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "security.md"
NODE = re.compile(r"`(tests/[^`\s]+\.py::[^`\s]+)`")


def catalogue_rows() -> list[tuple[str, list[str]]]:
    """(row id, test ids) for each table row of section 3."""
    text = DOC.read_text()
    section = text.split("## 3. Catalogue of bad inputs", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4 or not re.fullmatch(r"[A-Z]-\d+", cells[0]):
            continue
        rows.append((cells[0], NODE.findall(cells[-1])))
    return rows


def test_every_row_names_a_test() -> None:
    rows = catalogue_rows()
    assert len(rows) >= 60, len(rows)
    assert len({r for r, _ in rows}) == len(rows), "row ids are unique"
    for row, tests in rows:
        assert tests, f"{row} names no test"
    # Every interface of the issue has its table.
    assert {r.split("-")[0] for r, _ in rows} == {"D", "A", "W", "L", "K", "C"}


def test_every_named_test_is_collected() -> None:
    wanted = sorted({t for _, tests in catalogue_rows() for t in tests})
    # The files the catalogue names, collected whole (addopts holds -q: one node id per line).
    files = sorted({t.split("::", 1)[0] for t in wanted})
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", *files]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    collected = {line.strip() for line in out.stdout.splitlines() if "::" in line}

    def found(test: str) -> bool:
        return test in collected or any(c.startswith((test + "[", test + "::")) for c in collected)

    missing = [t for t in wanted if not found(t)]
    assert not missing, f"not collected: {missing}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
