"""Draw a chart as Mermaid or DOT text, and regenerate the generated parts of its docs' text.

Pure: every function here returns a string; nothing reads or writes a file or starts a
process. The command line, the writing of docs and SVG (which runs the Graphviz program) live
in :mod:`pullwake.diagrams`.

The drawing is python-statemachine's own: :func:`statemachine.contrib.diagram.extract.extract`
reads the chart into a diagram model and its Mermaid and DOT renderers write it. This module
only adjusts the model in between:

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

:func:`update_doc` regenerates the blocks of a Markdown text that sit between
``<!-- pullwake-diagram:begin KIND -->`` and ``<!-- pullwake-diagram:end KIND -->`` markers
(KIND is one of :data:`DOC_BLOCKS`); ``pullwake diagram --write-docs FILE`` applies it to a
file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pydot
from statemachine import StateChart
from statemachine.contrib.diagram.extract import extract
from statemachine.contrib.diagram.model import (
    ActionType,
    DiagramAction,
    DiagramGraph,
    DiagramState,
)
from statemachine.contrib.diagram.renderers.dot import DotRenderer
from statemachine.contrib.diagram.renderers.mermaid import MermaidRenderer

from .errors import DiagramError
from .spec import ChartSpec

__all__ = [
    "DOC_BLOCKS",
    "activity_table",
    "doc_blocks",
    "dot",
    "ignored_table",
    "matrix_table",
    "mermaid",
    "update_doc",
]


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
