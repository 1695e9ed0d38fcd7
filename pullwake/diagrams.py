"""The ``pullwake diagram`` command: draw a chart to a file or stdout, refresh a doc's diagrams.

The drawings themselves are pure text made by :mod:`pullwake.machines.diagram`; this module is
where they meet the outside world: it imports the chart a user names (``module:attribute``),
runs Graphviz's ``dot`` program for SVG, and reads and writes files (``--output``,
``--write-docs``), so ``pullwake.machines`` keeps its promise that nothing there does I/O.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from statemachine.contrib.diagram.graphviz import (
    GraphvizError,
    GraphvizNotFoundError,
    run_graphviz,
)

from pullwake.machines import ChartError, ChartSpec, DiagramError
from pullwake.machines.diagram import DOC_BLOCKS, doc_blocks, dot, mermaid, update_doc

__all__ = [
    "DEFAULT_CHART",
    "FORMATS",
    "REGENERATE",
    "add_arguments",
    "load_spec",
    "main",
    "render",
    "run",
    "svg",
    "write_docs",
]

#: The chart drawn when none is named.
DEFAULT_CHART = "pullwake.machines.lifecycle:LIFECYCLE"

FORMATS = ("mermaid", "dot", "svg")

INSTALL_GRAPHVIZ = (
    "SVG output needs the Graphviz 'dot' program on PATH. Install Graphviz "
    "(Debian/Ubuntu: 'apt-get install graphviz'; macOS: 'brew install graphviz'), "
    "or use --format mermaid or --format dot, which need nothing else."
)

#: The command that regenerates a doc's diagram blocks (``make diagram`` runs it).
REGENERATE = "python -m pullwake.diagrams --write-docs {path}"


def load_spec(reference: str) -> ChartSpec:
    """Import the :class:`ChartSpec` named by ``module:attribute``.

    Raises :class:`DiagramError` when the module or attribute is missing or is not a spec.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise DiagramError(
            f"chart reference {reference!r} is not 'module:attribute'; "
            f"for example {DEFAULT_CHART!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DiagramError(
            f"cannot import module {module_name!r} for chart {reference!r}: {exc}; "
            "check the name and that the module is on the Python path"
        ) from exc
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise DiagramError(
                f"module {module_name!r} has no attribute {attribute!r}; name a ChartSpec, "
                f"for example {DEFAULT_CHART!r}"
            ) from None
    if not isinstance(value, ChartSpec):
        raise DiagramError(
            f"{reference!r} is a {type(value).__name__}, not a ChartSpec; wrap the chart class "
            "as ChartSpec(Chart, activities, ignored) next to it and name that"
        )
    return value


def svg(spec: ChartSpec, active: str | None = None) -> bytes:
    """Return the chart as SVG drawn by Graphviz ``dot``.

    Raises :class:`DiagramError` saying how to install Graphviz when ``dot`` is not on PATH,
    and with Graphviz's own message when it fails.
    """
    try:
        return run_graphviz(dot(spec, active), "svg")
    except GraphvizNotFoundError as exc:
        raise DiagramError(INSTALL_GRAPHVIZ) from exc
    except GraphvizError as exc:
        raise DiagramError(f"Graphviz could not draw {spec.name}: {exc}") from exc


def render(spec: ChartSpec, fmt: str, active: str | None = None) -> bytes:
    """Return the chart in ``fmt`` (one of :data:`FORMATS`) as bytes ready to write."""
    if fmt == "svg":
        return svg(spec, active)
    if fmt == "mermaid":
        return mermaid(spec, active).encode()
    if fmt == "dot":
        return dot(spec, active).encode()
    raise DiagramError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_docs(path: Path, spec: ChartSpec) -> bool:
    """Regenerate the blocks of the Markdown file ``path``; return whether it changed."""
    text = path.read_text(encoding="utf-8")
    if not doc_blocks(text):
        raise DiagramError(
            f"{path} has no '<!-- pullwake-diagram:begin KIND -->' block to fill; "
            f"kinds: {', '.join(DOC_BLOCKS)}"
        )
    updated = update_doc(text, spec)
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pullwake diagram`` arguments to ``parser``."""
    parser.description = "Print a chart as Mermaid, DOT or SVG, or refresh a doc's diagrams."
    parser.add_argument(
        "chart",
        nargs="?",
        default=DEFAULT_CHART,
        metavar="CHART",
        help=f"a ChartSpec as module:attribute (default: {DEFAULT_CHART})",
    )
    parser.add_argument("--format", choices=FORMATS, default="mermaid", help="output format")
    parser.add_argument("--active", metavar="STATE", help="highlight this state")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument(
        "--write-docs",
        metavar="FILE",
        help="regenerate the pullwake-diagram blocks of this Markdown file and exit",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``pullwake diagram``; return the exit status (1 on any error, with a message)."""
    try:
        spec = _load_from_cwd(args.chart)
        if args.write_docs:
            path = Path(args.write_docs)
            changed = write_docs(path, spec)
            print(f"{path}: {'updated' if changed else 'already up to date'}")
            return 0
        output = render(spec, args.format, args.active)
    except (ChartError, OSError) as exc:
        print(f"pullwake diagram: error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        try:
            Path(args.output).write_bytes(output)
        except OSError as exc:
            print(f"pullwake diagram: error: cannot write {args.output}: {exc}", file=sys.stderr)
            return 1
    else:
        _write_stdout(output)
    return 0


def _load_from_cwd(reference: str) -> ChartSpec:
    # Like other tools that take module:attribute, the command line finds modules of the
    # current directory even when run as a console script (whose sys.path lacks it).
    cwd = str(Path.cwd())
    if cwd in sys.path:
        return load_spec(reference)
    sys.path.insert(0, cwd)
    try:
        return load_spec(reference)
    finally:
        sys.path.remove(cwd)


def _write_stdout(output: bytes) -> None:
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(output.decode())
    else:
        buffer.write(output)
        buffer.flush()


def main(argv: list[str] | None = None) -> int:
    """Run as ``python -m pullwake.diagrams``."""
    parser = argparse.ArgumentParser(prog="python -m pullwake.diagrams")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
