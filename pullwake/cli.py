"""The ``pullwake`` command line: one entry point, one module per part.

Each part keeps its own sub-commands next to its code (``add_arguments(parser)`` and
``run(args) -> int``) and is imported only when its command runs, so ``pullwake diagram`` does
not load the server.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pullwake import __version__

#: command -> (module or module:attribute, help). Each defines ``add_arguments`` and ``run``.
COMMANDS: dict[str, tuple[str, str]] = {
    "diagram": ("pullwake.machines.diagram", "print a chart as Mermaid, DOT or SVG"),
    "server": ("pullwake.server.cli", "run the wake server"),
    "run": ("pullwake.runtime.cli", "run a pull-wake runner with a handler"),
    "health": ("pullwake.runtime.cli_health", "print a runner's health as the server sees it"),
    "stream": ("pullwake.admin:stream", "create, append to, read and tail streams"),
    "subscription": ("pullwake.admin:subscription", "create, show and delete subscriptions"),
}


DESCRIPTION = "pullwake: the wake server, a runner for your handler, and their tools."

#: command -> the extra its module's imports need (``pip install 'pullwake[EXTRA]'``).
EXTRAS = {"server": "server"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported and given its arguments."""
    parser = argparse.ArgumentParser(prog="pullwake", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"pullwake {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target_name, help_text) in COMMANDS.items():
        parser_for_command = sub.add_parser(name, help=help_text)
        if name != command:
            continue
        module_name, _, attribute = target_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if name not in EXTRAS or (exc.name or "").startswith("pullwake"):
                raise
            parser.exit(
                2,
                f"pullwake {name}: needs {exc.name!r}, which comes with the {EXTRAS[name]!r} "
                f"extra: pip install 'pullwake[{EXTRAS[name]}]'\n",
            )
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
