"""docs/runner.md names real tests: every ``file.py::test`` it cites exists (a bare file name is
in tests/runtime; ``tests/<dir>/file.py`` names another folder)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

RUNTIME_TESTS = Path(__file__).resolve().parent
DOC = RUNTIME_TESTS.parents[1] / "docs" / "runner.md"


def test_every_test_named_in_the_failure_mode_table_exists() -> None:
    text = DOC.read_text()
    table = text[text.index("## The thirteen failure modes") :]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, 14))
    for row in rows:
        cited = re.findall(r"`((?:tests/\w+/)?test_\w+\.py)::(test_\w+)`", row)
        assert cited, f"no test named in: {row[:80]}"
        for filename, name in cited:
            folder = RUNTIME_TESTS.parents[1] if filename.startswith("tests/") else RUNTIME_TESTS
            tree = ast.parse((folder / filename).read_text())
            defined = {
                node.name
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            assert name in defined, f"{filename}::{name} is cited in docs/runner.md but missing"
