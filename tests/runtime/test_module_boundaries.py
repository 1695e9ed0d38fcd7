"""No module of ``runtime/`` reaches into another module's private names (an AST walk).

Two shapes are refused in ``runtime/*.py``:

- importing a private name from a sibling (``from .claims import _Lane``);
- reading or writing ``obj._name`` on an object that is not ``self``/``cls`` when ``_name`` is
  not defined in the same module (so ``claim._ack`` from the pipeline, once ``Claim`` lives in
  ``work.py``, or ``runner._token`` from ``run.py``, are caught; a class using the private
  state of another instance of a class of its own module is not).

What it cannot see: a private name that two modules happen to both define; ``getattr`` with a
string; private attributes of modules imported with plain ``import`` (``os._exit`` is the
standard library's business, not ours).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_here(tree: ast.Module) -> set[str]:
    """Private names this module defines: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if _private(n)}


def _plain_imports(tree: ast.Module) -> set[str]:
    """Names bound by ``import x`` (modules: their private names are not ours)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound.add((alias.asname or alias.name).split(".")[0])
    return bound


def private_reaches(source: str) -> list[str]:
    """Return where ``source`` imports or touches another module's private names."""
    tree = ast.parse(source)
    own = _defined_here(tree)
    modules = _plain_imports(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    where = "." * node.level + (node.module or "")
                    found.append(f"line {node.lineno}: from {where} import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls", *modules}:
                continue
            if node.attr in own:
                continue
            found.append(f"line {node.lineno}: .{node.attr} of {ast.unparse(owner)}")
    return found


def test_the_check_catches_a_reach_into_another_module() -> None:
    planted = """
from .claims import _Lane

class Run:
    def __init__(self, runner):
        self._lock = None
        self.token = runner._token

    def other(self, peer: "Run"):
        return peer._lock
"""
    assert private_reaches(planted) == [
        "line 2: from .claims import _Lane",
        "line 7: ._token of runner",
    ]


@pytest.mark.parametrize("module", sorted(p.name for p in RUNTIME.glob("*.py")))
def test_no_runtime_module_reaches_into_another_modules_private_names(module: str) -> None:
    assert private_reaches((RUNTIME / module).read_text()) == []
