"""The ``pullwake`` command line: one entry point, one module per part.

Each part keeps its own sub-commands next to its code (``add_arguments(parser)`` and
``run(args) -> int``) and is imported only when its command runs, so ``pullwake diagram`` does
not load the server.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command -> (module, help). Each module defines ``add_arguments`` and ``run``.
COMMANDS: dict[str, tuple[str, str]] = {
    "diagram": ("pullwake.diagrams", "print a chart as Mermaid, DOT or SVG"),
    "server": ("pullwake.server.cli", "run the wake server"),
    "run": ("pullwake.runtime.cli", "run a pull-wake runner with a handler"),
    "health": ("pullwake.runtime.cli_health", "print a runner's health as the server sees it"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported and given its arguments."""
    parser = argparse.ArgumentParser(prog="pullwake", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        parser_for_command = sub.add_parser(name, help=help_text)
        if name != command:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(parser_for_command)
        parser_for_command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
