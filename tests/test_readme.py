"""The README's generated diagram and its embedding example stay true to the code."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from pullwake.machines import LIFECYCLE
from pullwake.machines.diagram import update_doc

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_diagram_matches_the_chart() -> None:
    text = README.read_text(encoding="utf-8")
    assert "<!-- pullwake-diagram:begin mermaid -->" in text
    assert update_doc(text, LIFECYCLE) == text, (
        "README.md's lifecycle diagram is out of date; regenerate it with `make diagram`"
    )


def test_readme_example_compiles_and_imports_real_names() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    tree = ast.parse(blocks[0])
    assert len(blocks[0].splitlines()) <= 16  # the README promises a short example
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def test_readme_gives_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text
    assert "make test" in text
