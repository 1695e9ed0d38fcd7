"""Mutation testing with mutmut 3 (``make mutate``): break the code on purpose, count the catches.

mutmut derives a module's name from its path, but pullwake's packages live in folders that
setuptools maps (``machines/`` is ``pullwake.machines``), so the two would never match. This
script therefore lays out a staging copy in ``.mutate/`` with the installed names
(``pullwake/machines/...``), writes mutmut's settings there, runs ``mutmut run`` in it, and
prints the score and every surviving mutant, with its diff.

Targets are ``path`` (a file or folder of the repository) or ``path:func,func`` (only those
functions of the file), as given on the command line (the Makefile's ``MUTATE_TARGETS``).
Each run starts from a fresh copy of the working tree; nothing outside ``.mutate/`` changes.

Run ``python -m tests.mutation TARGET...``; docs/testing.md says how to read the output.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".mutate"

#: Where each folder of the repository lives in the installed package.
PACKAGE_DIRS = {
    "pullwake": "pullwake",
    "machines": "pullwake/machines",
    "runtime": "pullwake/runtime",
    "server": "pullwake/server",
}

#: The tests mutmut may run for each target (the longest matching prefix wins); per mutant it
#: runs only those of them that executed the mutated function. Fast unit and contract tests,
#: SQLite only, never the e2e suite.
TESTS_FOR = {
    "machines": ["tests/machines", "tests/runtime/test_actor.py"],
    "runtime/actor.py": [
        "tests/runtime/test_actor.py",
        "tests/runtime/test_promises_actor.py",
        "tests/runtime/test_promises_actor_entry.py",
        # The biased walk repeats what the every-pair walk checks, ten times slower.
        "-k",
        "not biased",
    ],
    "runtime/claims.py": ["tests/runtime/test_claims.py", "tests/runtime/test_promises_claims.py"],
    "runtime/heartbeat.py": [
        # The heartbeat against a fake host (fast), and its effect on the real runner's chart.
        # Not the real-server test of that file (slow), nor test_runner.py: its runner tests
        # run the heartbeat in every test, so every mutant would run them all (about 50 min).
        "tests/runtime/test_promises_heartbeat.py",
        "tests/runtime/test_promises_runner.py",
        "-m",
        "not e2e",
    ],
    # The pure wake/lease decision table: its own database-free tests pin every phase x event.
    # Not the import check: it reads the module's source, to which mutmut adds an import.
    "server/store/rules/wake_table.py": [
        "tests/server/test_wake_table.py",
        "--deselect",
        "tests/server/test_wake_table.py::test_the_table_imports_nothing_from_the_database_layer",
    ],
    "server/store": [
        "tests/server/test_store_contract.py",
        "tests/server/test_promises_tokens.py",
        "-m",
        "not postgres",
    ],
}

#: Always left out: it checks the repository's folder layout, which the staging copy lacks.
EXCLUDED = ["--ignore=tests/machines/test_layers.py"]

#: mutmut's exit-code verdicts, as its ``results`` command names them.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def staged(path: str) -> str:
    """Return where a repository path lives in the staging tree (``machines/x.py`` ->
    ``pullwake/machines/x.py``)."""
    head, _, rest = path.strip("/").partition("/")
    base = PACKAGE_DIRS.get(head)
    if base is None:
        raise SystemExit(f"{path!r} is not under {', '.join(PACKAGE_DIRS)}: cannot mutate it")
    return f"{base}/{rest}" if rest else base


def module_of(path: str) -> str:
    return staged(path).removesuffix(".py").replace("/", ".")


def tests_for(path: str) -> list[str]:
    path = path.strip("/")
    matches = [p for p in TESTS_FOR if path == p or path.startswith(p.rstrip("/") + "/")]
    if not matches:
        raise SystemExit(f"no test subset for {path!r}: add one to TESTS_FOR in {__file__}")
    return TESTS_FOR[max(matches, key=len)]


def lay_out(stage: Path) -> None:
    """Copy the working tree into ``stage`` under the installed package names."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder, target in PACKAGE_DIRS.items():
        shutil.copytree(ROOT / folder, stage / target, ignore=ignore, dirs_exist_ok=True)
    for extra in ("tests", "docs", "bench"):
        shutil.copytree(ROOT / extra, stage / extra, ignore=ignore)
    for extra in ("README.md", "pyproject.toml", "Makefile"):
        shutil.copy2(ROOT / extra, stage / extra)


def configure(stage: Path, targets: list[str], selection: list[str]) -> list[str]:
    """Append mutmut's settings to the staged pyproject; return the mutant name patterns."""
    files = sorted({staged(t.partition(":")[0]) for t in targets})
    patterns: list[str] = []
    for target in targets:
        path, _, functions = target.partition(":")
        module = module_of(path)
        if not functions:
            patterns.append(f"{module}.*")
            continue
        for name in functions.split(","):
            # mutmut names a function's mutants ``module.x_name__mutmut_N`` and a method's
            # ``module.xǁClassǁname__mutmut_N``.
            patterns.append(f"{module}.x_{name}__mutmut_*")
            patterns.append(f"{module}.xǁ*ǁ{name}__mutmut_*")
    settings = [
        "",
        "[tool.mutmut]",
        f"source_paths = {json.dumps(files)}",
        f"also_copy = {json.dumps(['pullwake', 'docs', 'bench', 'README.md', 'Makefile'])}",
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:randomly', '-q', '-x'])}",
        f"pytest_add_cli_args_test_selection = {json.dumps([*selection, *EXCLUDED])}",
        "use_git_change_detection = false",
        "",
    ]
    with (stage / "pyproject.toml").open("a", encoding="utf-8") as f:
        f.write("\n".join(settings))
    return patterns


def mutmut(stage: Path, *args: str, capture: bool = False) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    result = subprocess.run(
        [str(exe), *args], cwd=stage, check=False, text=True, capture_output=capture
    )
    if result.returncode != 0 and not capture:
        raise SystemExit(f"mutmut {' '.join(args)} exited {result.returncode}")
    return result.stdout if capture else ""


def verdicts(stage: Path) -> dict[str, str]:
    """Return mutant name -> verdict for every mutant mutmut tried."""
    out = mutmut(stage, "results", "--all", "true", capture=True)
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, verdict = line.strip().rpartition(": ")
        if sep and name:
            found[name] = verdict.strip()
    return found


#: Prints every named mutant's diff as one JSON object, in one process: ``mutmut show`` per
#: mutant starts mutmut again each time (seconds apiece, minutes for a few hundred survivors).
#: It uses mutmut 3's diff functions (the ``mutate`` extra pins mutmut below 4).
_DIFFS = """
import json, sys
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.utils.file_utils import walk_mutatable_files
wanted = set(sys.argv[1:])
found = {}
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name in wanted.intersection(data.exit_code_by_key):
        found[name] = get_diff_for_mutant(name, path=path)
print(json.dumps(found))
"""


def diffs(stage: Path, names: list[str]) -> dict[str, str]:
    """Return each mutant's diff; falls back to ``mutmut show`` per mutant if that fails."""
    if not names:
        return {}
    result = subprocess.run(
        [sys.executable, "-c", _DIFFS, *names],
        cwd=stage,
        check=False,
        text=True,
        capture_output=True,
    )
    if result.returncode == 0:
        found: dict[str, str] = json.loads(result.stdout)
        if set(found) == set(names):
            return found
    return {name: mutmut(stage, "show", name, capture=True).rstrip() for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="path or path:func,func")
    parser.add_argument("--max-children", default="2", help="parallel mutants (cores)")
    args = parser.parse_args()
    started = time.monotonic()
    # One mutmut run per test subset, each in its own staging tree.
    groups: dict[tuple[str, ...], list[str]] = {}
    for target in args.targets:
        groups.setdefault(tuple(tests_for(target.partition(":")[0])), []).append(target)
    results: dict[str, str] = {}
    shown: dict[str, str] = {}
    for number, (selection, targets) in enumerate(groups.items()):
        stage = STAGE / f"{number}-{targets[0].partition(':')[0].replace('/', '-')}"
        print(f"== {' '.join(targets)}: tests {' '.join(selection)}", flush=True)
        lay_out(stage)
        patterns = configure(stage, targets, list(selection))
        mutmut(stage, "run", "--max-children", args.max_children, *patterns)
        surviving = []
        for name, verdict in verdicts(stage).items():
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                results[name] = verdict
                if verdict not in KILLED:
                    surviving.append(name)
        shown.update(diffs(stage, surviving))
    survivors = sorted(shown)
    killed = len(results) - len(survivors)
    minutes = (time.monotonic() - started) / 60
    print()
    print("=" * 78)
    for name in survivors:
        print(f"--- survived ({results[name]}): {name}")
        print(shown[name])
    print("=" * 78)
    score = 100.0 * killed / len(results) if results else 0.0
    print(
        f"mutation score: {killed} of {len(results)} mutants killed ({score:.1f} %), "
        f"{len(survivors)} survived; {minutes:.1f} min"
    )


if __name__ == "__main__":
    main()
