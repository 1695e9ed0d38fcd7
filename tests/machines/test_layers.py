"""Imports point one way: machines/ is pure, runtime/ and server/ do not import each other.

Every module of the three layers is parsed (not imported) and each of its imports, including
those inside functions and ``if TYPE_CHECKING:`` blocks, is resolved to an absolute name.

``machines/`` also promises that nothing in it does I/O: it imports no process, file-system or
operating-system module (``subprocess``, ``os``, ``pathlib``, ``shutil``, ``tempfile``, nor
python-statemachine's Graphviz runner), and calls no ``open()`` and no ``read_*``/``write_*``
file method. What this cannot see: I/O done by a third-party library it calls (pydot is used
only as a graph model here; :mod:`pullwake.diagrams` does the rendering that runs Graphviz).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

#: Folder -> the package it is installed as (pyproject's package-dir mapping).
LAYERS = {
    "machines": "pullwake.machines",
    "runtime": "pullwake.runtime",
    "server": "pullwake.server",
}

#: Layer -> imported names (and their submodules) it must not use.
FORBIDDEN = {
    "machines": (
        "anyio",
        "asyncio",
        "httpx",
        "httpx_sse",
        "hypercorn",
        "psycopg",
        "psycopg_pool",
        "sqlite3",
        "starlette",
        "trio",
        "pullwake.runtime",
        "pullwake.server",
        # Nothing here does I/O: no processes, no files, no operating system.
        "subprocess",
        "os",
        "pathlib",
        "shutil",
        "tempfile",
        "statemachine.contrib.diagram.graphviz",
    ),
    # Library code is anyio-only, so it runs on asyncio and trio alike.
    "runtime": ("asyncio", "pullwake.server"),
    "server": ("asyncio", "pullwake.runtime"),
}


#: The one module allowed to name a backend: a store thread's completion has to be scheduled
#: on the running loop without waiting ("call soon, thread-safe"), which only the backends
#: offer (docs/architecture.md). The import must stay inside a function, so importing the
#: module never loads asyncio (checked below).
BACKEND_EDGES = {"pullwake.server.store.handoff": ("asyncio",)}


def module_name(layer: str, path: Path) -> str:
    parts = list(path.relative_to(ROOT / layer).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([LAYERS[layer], *parts])


def imported_names(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Yield (line, absolute module name) for every import in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            yield node.lineno, target
            # "from pullwake import server" imports the pullwake.server module.
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def violations(layer: str, source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for line, name in imported_names(source, module, is_package):
        for banned in FORBIDDEN[layer]:
            if banned in BACKEND_EDGES.get(module, ()):
                continue
            if name == banned or name.startswith(banned + "."):
                found.append(f"{module}:{line} imports {name}")
    return sorted(set(found))


def layer_modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_point_one_way(layer: str) -> None:
    modules = layer_modules(layer)
    assert modules, f"no modules found under {layer}/"
    found = []
    for path in modules:
        found += violations(
            layer,
            path.read_text(encoding="utf-8"),
            module_name(layer, path),
            is_package=path.name == "__init__.py",
        )
    assert not found, f"{layer}/ must not import {', '.join(FORBIDDEN[layer])}:\n" + "\n".join(
        found
    )


#: File methods (``Path.write_text`` and friends) that machines/ must not call.
FILE_METHODS = frozenset({"read_text", "read_bytes", "write_text", "write_bytes", "open"})


def io_calls(source: str) -> list[str]:
    """Return the ``open()`` calls and file-method calls in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"line {node.lineno}: open()")
        elif isinstance(func, ast.Attribute) and func.attr in FILE_METHODS:
            found.append(f"line {node.lineno}: .{func.attr}()")
    return found


def test_machines_calls_no_file_io() -> None:
    found = {
        str(path.relative_to(ROOT)): io_calls(path.read_text(encoding="utf-8"))
        for path in layer_modules("machines")
    }
    assert {path: calls for path, calls in found.items() if calls} == {}


def test_the_io_walker_catches_open_and_file_methods() -> None:
    source = "open('x')\nPath('y').write_text('z')\nf = p.read_bytes()\nprint('ok')\n"
    assert io_calls(source) == ["line 1: open()", "line 2: .write_text()", "line 3: .read_bytes()"]


@pytest.mark.parametrize(
    ("layer", "source", "module", "expected"),
    [
        ("machines", "import anyio", "pullwake.machines.spec", ["anyio"]),
        ("machines", "def f():\n    import sqlite3", "pullwake.machines.spec", ["sqlite3"]),
        ("machines", "from httpx_sse import aconnect_sse", "pullwake.machines.x", ["httpx_sse"]),
        ("machines", "from ..runtime import actor", "pullwake.machines.x", ["pullwake.runtime"]),
        ("machines", "from pullwake import server", "pullwake.machines.x", ["pullwake.server"]),
        ("machines", "import psycopg.rows", "pullwake.machines.x", ["psycopg.rows"]),
        ("machines", "import subprocess", "pullwake.machines.diagram", ["subprocess"]),
        ("machines", "from pathlib import Path", "pullwake.machines.diagram", ["pathlib"]),
        (
            "machines",
            "from statemachine.contrib.diagram.graphviz import run_graphviz",
            "pullwake.machines.diagram",
            ["statemachine.contrib.diagram.graphviz"],
        ),
        ("runtime", "import asyncio", "pullwake.runtime.actor", ["asyncio"]),
        ("runtime", "from ..server.app import x", "pullwake.runtime.y", ["pullwake.server.app"]),
        ("server", "from asyncio import sleep", "pullwake.server.sse", ["asyncio"]),
        ("server", "from ...runtime import a", "pullwake.server.store.x", ["pullwake.runtime"]),
        ("server", "import pullwake.runtime.client", "pullwake.server.x", ["pullwake.runtime"]),
    ],
)
def test_the_walker_catches_each_kind_of_bad_import(
    layer: str, source: str, module: str, expected: list[str]
) -> None:
    found = violations(layer, source, module)
    assert found
    assert all(any(name in v for name in expected) for v in found), found


@pytest.mark.parametrize(
    ("layer", "source", "module"),
    [
        ("machines", "from .spec import ChartSpec", "pullwake.machines.lifecycle"),
        ("machines", "from pullwake.errors import PullwakeError", "pullwake.machines.errors"),
        ("machines", "import statemachine", "pullwake.machines.spec"),
        ("runtime", "import anyio\nfrom pullwake.machines import LIFECYCLE", "pullwake.runtime.a"),
        ("server", "from ..errors import StoreError", "pullwake.server.store.base"),
        ("server", "import asyncpg_like_name", "pullwake.server.x"),
    ],
)
def test_the_walker_allows_imports_that_point_the_right_way(
    layer: str, source: str, module: str
) -> None:
    assert violations(layer, source, module) == []


def test_the_backend_edge_imports_its_backend_only_inside_a_function() -> None:
    for module, names in BACKEND_EDGES.items():
        layer = module.split(".")[1]
        path = ROOT / layer / Path(*module.split(".")[2:]).with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = [
            alias.name
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ] + [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
        for name in names:
            assert name not in top_level, f"{module} imports {name} at module level"
            assert any(
                isinstance(node, ast.Import) and any(a.name == name for a in node.names)
                for node in ast.walk(tree)
            ), f"{module} no longer needs its exemption for {name}: remove it from BACKEND_EDGES"
