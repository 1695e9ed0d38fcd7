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
    "diagram": ("pullwake.machines.diagram", "print a chart as Mermaid, DOT or SVG"),
    "server": ("pullwake.server.cli", "run the wake server"),
    "run": ("pullwake.runtime.cli", "run a pull-wake runner with a handler"),
    "health": ("pullwake.runtime.cli_health", "print a runner's health as the server sees it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pullwake", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        print(f"pullwake: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    return int(run(args))


if __name__ == "__main__":
    sys.exit(main())
