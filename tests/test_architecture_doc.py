"""docs/architecture.md is the map, and the map cannot drift from the code.

- Every ``.py`` module under ``machines/``, ``runtime/``, ``server/`` and ``pullwake/`` has
  exactly one row in the doc's module tables (a table row whose first cell is the file's path
  in backticks).
- Every file path the doc names in backticks (``server/store/rules/wakes.py``) exists, and
  every ``file.py::name`` it names (``runtime/run.py::Run.connect``) is defined in that file:
  a top-level function, class or assignment, or ``Class.method``.

Files are parsed, not imported. Each check also runs on a small planted sample, so a check
that stopped seeing anything would fail.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
#: The folders of the distribution (pyproject's package-dir).
FOLDERS = ("machines", "runtime", "server", "pullwake")

#: A path in backticks, optionally followed by ``::name`` (``a/b.py``, ``a/b.py::C.f``).
NAMED = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.py)(?:::([\w.]+))?`")
#: The first cell of a table row, when it is a path in backticks.
ROW = re.compile(r"^\|\s*`((?:[\w.-]+/)+[\w.-]+\.py)`\s*\|")


def modules() -> list[str]:
    return sorted(
        path.relative_to(ROOT).as_posix()
        for folder in FOLDERS
        for path in (ROOT / folder).rglob("*.py")
    )


def table_rows(text: str) -> Counter[str]:
    """Count the table rows of ``text`` per module path in their first cell."""
    return Counter(m.group(1) for line in text.splitlines() if (m := ROW.match(line)))


def defined_names(source: str) -> set[str]:
    """Return the top-level names of a module, and ``Class.member`` for its classes' members."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(f"{node.name}.{member.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def broken_references(text: str, root: Path) -> list[str]:
    """Return each path (or ``path::name``) named in ``text`` that does not exist under root."""
    broken = []
    for match in NAMED.finditer(text):
        path, name = match.group(1), match.group(2)
        file = root / path
        if not file.is_file():
            broken.append(f"{path}: no such file")
        elif name is not None and name not in defined_names(file.read_text(encoding="utf-8")):
            broken.append(f"{path}::{name}: not defined there")
    return sorted(set(broken))


def missing_and_doubled(text: str, wanted: list[str]) -> tuple[list[str], list[str]]:
    rows = table_rows(text)
    return (
        [m for m in wanted if rows[m] == 0],
        sorted(m for m, n in rows.items() if n > 1),
    )


def test_every_module_has_one_row_in_the_module_tables() -> None:
    found = modules()
    assert len(found) > 50, "the walk found too few modules"
    missing, doubled = missing_and_doubled(DOC.read_text(encoding="utf-8"), found)
    assert missing == [], f"add a row to docs/architecture.md for: {missing}"
    assert doubled == [], f"docs/architecture.md has more than one row for: {doubled}"


def test_every_file_and_name_the_doc_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert len(NAMED.findall(text)) > 100, "the doc names too few files: is the regex right?"
    assert broken_references(text, ROOT) == []


def test_the_checks_catch_a_missing_row_a_double_row_and_a_stale_name() -> None:
    planted = (
        "| `runtime/actor.py` | the actor | x |\n"
        "| `runtime/actor.py` | again | x |\n"
        "Mentioned in prose, not a row: `runtime/run.py`.\n"
        "Stale: `server/store/logic.py`, `runtime/run.py::Run.no_such_activity`,\n"
        "`runtime/runner.py::_RunSession`; fine: `runtime/run.py::Run.connect`,\n"
        "`runtime/offsets.py::START_OFFSET`, `machines/lifecycle.py::LIFECYCLE`.\n"
    )
    missing, doubled = missing_and_doubled(planted, ["runtime/actor.py", "runtime/run.py"])
    assert missing == ["runtime/run.py"]
    assert doubled == ["runtime/actor.py"]
    assert broken_references(planted, ROOT) == [
        "runtime/run.py::Run.no_such_activity: not defined there",
        "runtime/runner.py::_RunSession: not defined there",
        "server/store/logic.py: no such file",
    ]
