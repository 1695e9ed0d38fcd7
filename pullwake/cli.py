"""The ``pullwake`` command line: one entry point, one module per part.

Each part keeps its own sub-commands next to its code (``add_arguments(parser)`` and
``run(args) -> int``) and is imported only when its command runs, so ``pullwake diagram`` does
not load the server.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import sys

from pullwake import __version__

#: command -> (module or module:attribute, help). Each defines ``add_arguments`` and ``run``.
COMMANDS: dict[str, tuple[str, str]] = {
    "diagram": ("pullwake.diagrams", "print a chart as Mermaid, DOT or SVG"),
    "server": ("pullwake.server.cli", "run the wake server"),
    "run": ("pullwake.runtime.cli", "run a pull-wake runner with a handler"),
    "health": ("pullwake.runtime.cli_health", "print a runner's health as the server sees it"),
    "stream": ("pullwake.admin:stream", "create, append to, read and tail streams"),
    "subscription": ("pullwake.admin:subscription", "create, show and delete subscriptions"),
}


DESCRIPTION = "pullwake: the wake server, a runner for your handler, and their tools."

#: command -> the extra its module's imports need (``pip install 'pullwake[EXTRA]'``).
EXTRAS = {"server": "server"}


def missing_from_extra(extra: str) -> list[str]:
    """Return the distributions of ``extra`` that are not installed (pyproject lists them)."""
    try:
        requirements = importlib.metadata.requires("pullwake") or []
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return []
    missing = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        if name is None or not re.search(rf"""extra\s*==\s*["']{extra}["']""", requirement):
            continue
        try:
            importlib.metadata.distribution(name.group(0))
        except importlib.metadata.PackageNotFoundError:
            missing.append(name.group(0))
    return missing


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported and given its arguments."""
    parser = argparse.ArgumentParser(prog="pullwake", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"pullwake {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target_name, help_text) in COMMANDS.items():
        parser_for_command = sub.add_parser(name, help=help_text)
        if name != command:
            continue
        missing = missing_from_extra(EXTRAS[name]) if name in EXTRAS else []
        if missing:
            parser.exit(
                2,
                f"pullwake {name}: needs the {EXTRAS[name]!r} extra (missing: "
                f"{', '.join(missing)}): pip install 'pullwake[{EXTRAS[name]}]'\n",
            )
        module_name, _, attribute = target_name.partition(":")
        module = importlib.import_module(module_name)
        target = getattr(module, attribute) if attribute else module
        target.add_arguments(parser_for_command)
        parser_for_command.set_defaults(_run=target.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        status = int(args._run(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``pullwake health ... | head``): not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a reader that hung up
    return status


if __name__ == "__main__":
    sys.exit(main())
