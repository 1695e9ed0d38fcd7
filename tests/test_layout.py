"""The house is easy to walk: tools that start things live in ``pullwake.testing`` alone.

- Nothing outside ``tests/`` imports from ``tests`` (benchmarks, the demo and the library
  stand on their own; ``grep -rn "from tests" bench pullwake`` finds nothing).
- ``pullwake.testing`` is library code: no pytest (fixtures stay in ``tests/fixtures``), no
  asyncio.
- Only ``pullwake.testing`` launches a ``pullwake server``, PostgreSQL (``initdb``, ``pg_ctl``)
  or Node (the reference server, ``npm``): every other ``subprocess`` call in the tests, the
  benchmarks and the library is checked. A call that runs ``pullwake server --help`` or bad
  arguments to completion (``subprocess.run``) is a CLI test, not a launch, and is allowed.

Files are parsed, not imported. Each check is also run on a small sample of the patterns it
must catch, so a check that stopped seeing anything would fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The folders of the distribution (pyproject's package-dir) and the benchmarks.
OUTSIDE_TESTS = ("pullwake", "machines", "runtime", "server", "bench")
TESTING = ROOT / "pullwake" / "testing"
#: Programs only ``pullwake.testing`` may run, whatever the subprocess call.
LAUNCHED_PROGRAMS = frozenset({"initdb", "pg_ctl", "npm", "node"})
SUBPROCESS_CALLS = frozenset({"Popen", "run", "call", "check_call", "check_output"})


def python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def imports(source: str) -> Iterator[tuple[int, str]]:
    """Yield (line, module) for every absolute import in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def imports_of(source: str, package: str) -> list[int]:
    """Return the lines of ``source`` that import ``package`` or one of its modules."""
    return [line for line, name in imports(source) if name.split(".")[0] == package]


def _strings(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _subprocess_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in SUBPROCESS_CALLS
            and isinstance(func.value, ast.Name)
            and func.value.id == "subprocess"
        ) or (isinstance(func, ast.Name) and func.id == "Popen"):
            yield node


def launches(source: str) -> list[str]:
    """Describe every launch of a server, PostgreSQL or Node in ``source``.

    A launch is a subprocess call whose arguments name one of :data:`LAUNCHED_PROGRAMS` (as a
    string or as a variable, like ``npm = shutil.which("npm")``; ``--version`` aside) or a
    ``.mjs`` script, or a ``Popen`` of ``pullwake server``. Since a command line is often built
    apart from the ``Popen`` call (a ``command()`` method), a module that calls ``Popen`` at
    all is also flagged when any list or tuple in it holds both ``"pullwake"`` and
    ``"server"``; and a path to a program built apart (``bindir / "initdb"``) is flagged
    wherever it is.
    """
    tree = ast.parse(source)
    found = []
    popen_lines = []
    for call in _subprocess_calls(tree):
        words = _strings(call)
        named = {w.rsplit("/", 1)[-1] for w in words} | _names(call)
        programs = named & LAUNCHED_PROGRAMS
        if "--version" in words:
            programs = set()  # asking a program its version launches nothing
        if programs or any(w.endswith(".mjs") for w in words):
            found.append(f"line {call.lineno}: runs {sorted(programs) or 'a .mjs script'}")
        is_popen = isinstance(call.func, ast.Name) or (
            isinstance(call.func, ast.Attribute) and call.func.attr == "Popen"
        )
        if is_popen:
            popen_lines.append(call.lineno)
            if {"pullwake", "server"} <= words:
                found.append(f"line {call.lineno}: Popen of pullwake server")
    for node in ast.walk(tree):
        # A program's path built apart from the call: ``bindir / "initdb"``.
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Div)
            and isinstance(node.right, ast.Constant)
            and node.right.value in LAUNCHED_PROGRAMS
        ):
            found.append(f"line {node.lineno}: builds the path of {node.right.value}")
    if popen_lines:
        for node in ast.walk(tree):
            if isinstance(node, ast.List | ast.Tuple):
                words = {
                    e.value
                    for e in node.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                }
                if {"pullwake", "server"} <= words:
                    found.append(
                        f"line {node.lineno}: a pullwake server command line next to "
                        f"Popen (line {popen_lines[0]})"
                    )
    return found


# -- the checks can see what they look for ----------------------------------------------------

LAUNCH_SAMPLES = {
    "popen of the server": (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-m', 'pullwake', 'server', '--port', '0'])\n"
    ),
    "command built apart": (
        "import subprocess, sys\n"
        "def command():\n"
        "    return [sys.executable, '-m', 'pullwake', 'server']\n"
        "subprocess.Popen(command(), stdout=subprocess.PIPE)\n"
    ),
    "initdb": "import subprocess\nsubprocess.run(['/usr/lib/postgresql/15/bin/initdb', '-D'])\n",
    "node": "from subprocess import Popen\nPopen(['node', 'reference_server.mjs', 'entry.js'])\n",
    "initdb built apart": "def init(bindir):\n    return [str(bindir / 'initdb'), '-D']\n",
    "npm": "import subprocess\nsubprocess.run([npm, 'install', '--prefix', 'x', 'pkg'])\n",
}


@pytest.mark.parametrize("source", LAUNCH_SAMPLES.values(), ids=list(LAUNCH_SAMPLES))
def test_the_launch_check_sees_a_launch(source: str) -> None:
    assert launches(source)


def test_the_launch_check_allows_a_cli_run_to_completion() -> None:
    source = (
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'pullwake', 'server', '--help'])\n"
        "subprocess.run([node, '--version'])\n"
    )
    assert launches(source) == []


def test_the_import_check_sees_an_import_from_tests() -> None:
    source = "import os\nfrom tests.fixtures.servers import ServerProcess\nimport tests.e2e\n"
    assert imports_of(source, "tests") == [2, 3]


# -- the house --------------------------------------------------------------------------------


def test_nothing_outside_the_tests_imports_from_them() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files(*OUTSIDE_TESTS)
        for line in imports_of(path.read_text(), "tests")
    ]
    assert found == [], "move what these need into pullwake.testing"


@pytest.mark.parametrize("package", ["pytest", "asyncio"])
def test_pullwake_testing_is_library_code(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files("pullwake/testing")
        for line in imports_of(path.read_text(), package)
    ]
    assert found == []


def test_only_pullwake_testing_launches_servers_postgres_and_node() -> None:
    found = [
        f"{path.relative_to(ROOT)} {launch}"
        for path in python_files("tests", *OUTSIDE_TESTS)
        if not path.is_relative_to(TESTING)
        for launch in launches(path.read_text())
    ]
    assert found == [], "use the launchers of pullwake.testing"
