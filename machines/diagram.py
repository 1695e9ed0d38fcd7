"""Draw a chart as Mermaid, DOT or SVG, and keep the generated parts of its docs current.

The drawing is python-statemachine's own: :func:`statemachine.contrib.diagram.extract.extract`
reads the chart into a diagram model, its Mermaid and DOT renderers write it, and Graphviz
(``run_graphviz``) turns DOT into SVG. This module only adjusts the model in between:

- labels are the ids the code uses (``stream_reset``, ``connecting``), not humanised names;
- each state lists the activities it owns as UML ``do /`` lines, read from the spec's table,
  after the chart's own entry and exit actions;
- ``active`` highlights a state and tints its ancestors' boxes (a compound state asked for
  is tinted alone: "somewhere in it"); without ``active`` nothing is highlighted;
- in Mermaid, a compound state's activities go in its title (Mermaid draws no description
  lines for composite states), and highlights use ``class X name``, which current Mermaid
  applies inside composite states too (the renderer's ``X:::name`` lines do not take effect).

The chart is drawn from a fresh instance with no listeners, so no runtime callback shows up as
an action. The ignored events are not drawn (they would crowd out the transitions); the Markdown
tables below (:func:`ignored_table`, :func:`matrix_table`) carry them into the docs instead.

Output is deterministic: the DOT renderer names some helper nodes after ``id()`` of Python
objects, and those names are renumbered in order of appearance.

``pullwake diagram`` is the command line; ``--write-docs FILE`` rewrites the blocks of FILE that
sit between ``<!-- pullwake-diagram:begin KIND -->`` and ``<!-- pullwake-diagram:end KIND -->``
markers (KIND is one of :data:`DOC_BLOCKS`).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydot
from statemachine import StateChart
from statemachine.contrib.diagram.extract import extract
from statemachine.contrib.diagram.graphviz import (
    GraphvizError,
    GraphvizNotFoundError,
    run_graphviz,
)
from statemachine.contrib.diagram.model import (
    ActionType,
    DiagramAction,
    DiagramGraph,
    DiagramState,
)
from statemachine.contrib.diagram.renderers.dot import DotRenderer
from statemachine.contrib.diagram.renderers.mermaid import MermaidRenderer

from .errors import ChartError, DiagramError
from .spec import ChartSpec

__all__ = [
    "DEFAULT_CHART",
    "DOC_BLOCKS",
    "FORMATS",
    "activity_table",
    "add_arguments",
    "doc_blocks",
    "dot",
    "ignored_table",
    "load_spec",
    "main",
    "matrix_table",
    "mermaid",
    "render",
    "run",
    "svg",
    "update_doc",
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

REGENERATE = "python -m pullwake.machines.diagram --write-docs {path}"


# -- loading ---------------------------------------------------------------------------------


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


# -- the diagram model -----------------------------------------------------------------------


def _graph(spec: ChartSpec, active: str | None, *, fold_compound_actions: bool) -> DiagramGraph:
    """Extract the chart's diagram model, relabelled, annotated and highlighted."""
    machine = _fresh_machine(spec, active)
    graph = extract(machine)
    _label_events_with_ids(spec, graph)
    highlighted = _highlighted(spec, active)
    for state in _walk(graph.states):
        state.name = state.id
        state.is_active = state.id in highlighted
        state.actions = [
            *state.actions,
            *(
                DiagramAction(ActionType.INTERNAL, f"do / {activity.name}")
                for activity in spec.activities.get(state.id, ())
            ),
        ]
        if fold_compound_actions and state.children and state.actions:
            # Mermaid draws no description lines for composite states; the title carries them.
            state.name = f"{state.id} ({'; '.join(_action_text(a) for a in state.actions)})"
            state.actions = []
    return graph


def _action_text(action: DiagramAction) -> str:
    if action.type is ActionType.INTERNAL:
        return action.body
    return f"{action.type.value} / {action.body}"


def _fresh_machine(spec: ChartSpec, active: str | None) -> StateChart[Any]:
    # A leaf starts the chart right there (start_value); a compound state starts it in the
    # compound's initial leaf. No listeners: nothing but the chart's own callbacks is drawn.
    if active is None:
        return spec.new()
    return spec.new(spec.entry_configuration(spec.check_state(active)))


def _highlighted(spec: ChartSpec, active: str | None) -> set[str]:
    """The states to highlight: ``active`` and its ancestors (none of its descendants)."""
    if active is None:
        return set()
    return set(spec.ancestors(spec.check_state(active)))


def _walk(states: Sequence[DiagramState]) -> Iterator[DiagramState]:
    for state in states:
        yield state
        yield from _walk(state.children)


def _label_events_with_ids(spec: ChartSpec, graph: DiagramGraph) -> None:
    """Replace the humanised event names on transitions with the event ids."""
    labels: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for state in spec.chart.states_map.values():
        for transition in state.transitions:
            key = (str(transition.source.id), tuple(str(t.id) for t in transition.targets))
            ids = [str(e.id) for e in transition.events]
            # The chart registers "done.x" beside "done_x"; show the Python spelling only.
            shown = [i for i in ids if not ("." in i and i.replace(".", "_") in ids)]
            labels.setdefault(key, []).append(" ".join(dict.fromkeys(shown)))
    position: dict[tuple[str, tuple[str, ...]], int] = {}
    for diagram_transition in graph.transitions:
        key = (diagram_transition.source, tuple(diagram_transition.targets))
        index = position.get(key, 0)
        position[key] = index + 1
        candidates = labels.get(key, [])
        if index < len(candidates):
            diagram_transition.event = candidates[index]


# -- renderings ------------------------------------------------------------------------------


#: Fill of a highlighted compound state's box (a pale tint of the leaf highlight).
COMPOUND_ACTIVE_FILL = "#dff7f4"
#: Fill of a highlighted leaf state (python-statemachine's own highlight colour).
LEAF_ACTIVE_FILL = "#40E0D0"


class _MermaidRenderer(MermaidRenderer):
    """The library's Mermaid renderer, declaring every atomic state that has actions.

    Mermaid shows a lone ``id : text`` line *instead of* the state's name; declared first
    (``state "id" as id``), the state shows its name above a compartment of its actions.
    """

    def _render_atomic_state(self, state: DiagramState, lines: list[str], indent: int) -> None:
        if state.actions and state.name == state.id:
            lines.append(f'{"    " * indent}state "{state.id}" as {state.id}')
        super()._render_atomic_state(state, lines, indent)


def mermaid(spec: ChartSpec, active: str | None = None) -> str:
    """Return the chart as Mermaid ``stateDiagram-v2`` source, ``active`` highlighted."""
    graph = _graph(spec, active, fold_compound_actions=True)
    # The renderer's "X:::active" lines do not take effect in current Mermaid; "class X name"
    # does, inside composite states too. Compound states get a pale tint so their children
    # stay readable.
    highlighted = [s for s in _walk(graph.states) if s.is_active]
    for state in highlighted:
        state.is_active = False
    text = _MermaidRenderer().render(graph)
    if not highlighted:
        return text
    lines = [
        "",
        f"    classDef active fill:{LEAF_ACTIVE_FILL},stroke:#333",
        f"    classDef activeCompound fill:{COMPOUND_ACTIVE_FILL},stroke:#333",
    ]
    for state in highlighted:
        lines.append(f"    class {state.id} {'activeCompound' if state.children else 'active'}")
    return text + "\n".join(lines) + "\n"


_OBJECT_ID_NAMES = re.compile(r"(?<=__initial_)\d+|(?<=cluster___atomic_)\d+")


def dot(spec: ChartSpec, active: str | None = None) -> str:
    """Return the chart as Graphviz DOT source, ``active`` highlighted."""
    renderer = DotRenderer()
    graph = _graph(spec, active, fold_compound_actions=False)
    drawing = renderer.render(graph)
    # The DOT renderer fills active leaves only; tint the box of an active compound state too.
    active_compounds = {s.id for s in _walk(graph.states) if s.children and s.is_active}
    for cluster in _clusters(drawing):
        if (cluster.get_name() or "").removeprefix("cluster_") in active_compounds:
            cluster.set("style", "rounded, filled")
            cluster.set("fillcolor", COMPOUND_ACTIVE_FILL)
            cluster.set("penwidth", str(renderer.config.state_active_penwidth + 1))
    source: str = drawing.to_string()
    ordinals: dict[str, str] = {}

    def renumber(match: re.Match[str]) -> str:
        return ordinals.setdefault(match.group(0), str(len(ordinals)))

    return _OBJECT_ID_NAMES.sub(renumber, source)


def _clusters(graph: pydot.Graph) -> Iterator[pydot.Subgraph]:
    for subgraph in graph.get_subgraph_list():
        yield subgraph
        yield from _clusters(subgraph)


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


# -- Markdown tables -------------------------------------------------------------------------


def _code(name: str) -> str:
    return f"`{name}`"


def activity_table(spec: ChartSpec) -> str:
    """Return the activity table as Markdown: owner, activity, and the events it sends."""
    lines = [
        "| state | activity | when it returns | when it raises |",
        "| --- | --- | --- | --- |",
    ]
    for state in spec.states():
        for activity in spec.activities.get(state, ()):
            done = _code(activity.done) if activity.done else "runs until the state is left"
            error = _code(activity.error) if activity.error else "the error stops the runner"
            lines.append(f"| {_code(state)} | {_code(activity.name)} | {done} | {error} |")
    return "\n".join(lines) + "\n"


def ignored_table(spec: ChartSpec) -> str:
    """Return the ignore table as Markdown: each state and the events it drops."""
    lines = ["| state | ignores (and so do its children) |", "| --- | --- |"]
    for state in spec.states():
        ignored = sorted(spec.ignored.get(state, ()))
        if ignored:
            lines.append(f"| {_code(state)} | {', '.join(_code(e) for e in ignored)} |")
    return "\n".join(lines) + "\n"


def matrix_table(spec: ChartSpec) -> str:
    """Return every event × configuration as Markdown: the leaf it leads to, or ``·``."""
    configurations = spec.configurations()
    header = "| event | " + " | ".join(_code(c[-1]) for c in configurations) + " |"
    lines = [header, "| --- |" + " --- |" * len(configurations)]
    for event in spec.events():
        cells = []
        for configuration in configurations:
            decision = spec.decide(configuration, event)
            cells.append("·" if decision.kind == "ignored" else decision.configuration[-1])
        lines.append(f"| {_code(event)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mermaid_block(spec: ChartSpec) -> str:
    return "```mermaid\n" + mermaid(spec) + "```\n"


#: Block kinds that ``--write-docs`` fills, and what fills them.
DOC_BLOCKS: dict[str, Callable[[ChartSpec], str]] = {
    "mermaid": _mermaid_block,
    "activities": activity_table,
    "ignored": ignored_table,
    "matrix": matrix_table,
}

_BLOCK = re.compile(
    r"(?P<begin><!-- pullwake-diagram:begin (?P<kind>[a-z]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- pullwake-diagram:end (?P=kind) -->)",
    re.DOTALL,
)


def doc_blocks(text: str) -> list[str]:
    """Return the kinds of the generated blocks in ``text``, in order."""
    return [match.group("kind") for match in _BLOCK.finditer(text)]


def update_doc(text: str, spec: ChartSpec) -> str:
    """Return ``text`` with every generated block regenerated from ``spec``.

    Raises :class:`DiagramError` for a block of unknown kind or a marker without its pair.
    """

    def regenerate(match: re.Match[str]) -> str:
        kind = match.group("kind")
        if kind not in DOC_BLOCKS:
            raise DiagramError(
                f"unknown generated block {kind!r}; known kinds: {', '.join(DOC_BLOCKS)}"
            )
        return match.group("begin") + DOC_BLOCKS[kind](spec) + match.group("end")

    updated = _BLOCK.sub(regenerate, text)
    leftover = re.findall(r"<!-- pullwake-diagram:(?:begin|end) [a-z]+ -->", _BLOCK.sub("", text))
    if leftover:
        raise DiagramError(
            f"unpaired generated-block markers {leftover}; each begin KIND needs an end KIND "
            "after it"
        )
    return updated


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


# -- command line ----------------------------------------------------------------------------


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
    """Run as ``python -m pullwake.machines.diagram``."""
    parser = argparse.ArgumentParser(prog="python -m pullwake.machines.diagram")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
