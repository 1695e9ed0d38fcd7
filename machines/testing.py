"""Property-test a chart: pin its whole decision table, then drive it with random events.

Everything here reads the same :class:`~pullwake.machines.ChartSpec` that the runtime runs, so
nothing is copied by hand. Three tools, for the lifecycle and for charts of your own:

- **The table.** :func:`outcomes` lists what every configuration × event pair does;
  :func:`assert_table` compares it with a whole table written out in a test and reports every
  difference at once, including pairs the test does not pin (so adding a state or an event
  fails until its pairs are decided in the test too). :func:`format_table` prints the current
  table in the same notation, as a starting point to read line by line, never to paste blindly.
- **Strategies.** :func:`events`, :func:`event_sequences` and :func:`configurations` generate
  inputs for ``@given`` tests; :func:`replay` runs a sequence on a live chart.
- **A stateful test.** :class:`ChartStateMachine` (or :func:`chart_state_machine`, which builds
  a subclass) is a Hypothesis ``RuleBasedStateMachine`` that sends random events to one live
  chart and checks, after every step, that exactly one leaf is active, that the activities
  opened and not yet cancelled are exactly those the configuration owns, that the live chart
  did what :meth:`ChartSpec.decide` predicted, and that the stop sequence leads from the
  current configuration to the rest state.

A configuration is named by its leaf state: a ``ChartSpec`` has compound states but no parallel
ones, so the leaf determines its ancestors. This module imports Hypothesis, which the
``testing`` extra installs (``pip install 'pullwake[testing]'``); import it from tests only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from .spec import ChartSpec, Decision, StepRecorder, configuration_of

__all__ = [
    "IGNORED",
    "ChartStateMachine",
    "Expected",
    "Outcome",
    "TableMismatch",
    "assert_table",
    "chart_state_machine",
    "configurations",
    "event_sequences",
    "events",
    "format_table",
    "outcome_of",
    "outcomes",
    "replay",
]

#: The outcome of a pair the chart deliberately ignores.
IGNORED: Final = "ignored"


@attrs.frozen
class Outcome:
    """What a handled event does: the leaf it leads to and the activities it cancels and starts.

    ``cancelled`` is in the order the states are exited (innermost first) and ``started`` in
    the order they are entered (outermost first), which is the order the runtime uses.
    """

    to: str
    cancelled: tuple[str, ...] = ()
    started: tuple[str, ...] = ()

    def __repr__(self) -> str:
        parts = [repr(self.to)]
        if self.cancelled:
            parts.append(f"cancelled={self.cancelled!r}")
        if self.started:
            parts.append(f"started={self.started!r}")
        return f"Outcome({', '.join(parts)})"


#: A whole expected table: (leaf state, event) -> an Outcome, or IGNORED.
Expected = Mapping[tuple[str, str], Outcome | Literal["ignored"]]


class TableMismatch(AssertionError):
    """The chart's decision table differs from the expected one; the message lists every pair."""


# -- the table -------------------------------------------------------------------------------


def outcome_of(decision: Decision) -> Outcome | Literal["ignored"]:
    """Return a decision in the notation of an expected table."""
    if decision.kind == "ignored":
        return IGNORED
    return Outcome(
        decision.configuration[-1], decision.stopped_activities, decision.started_activities
    )


def outcomes(spec: ChartSpec) -> dict[tuple[str, str], Outcome | Literal["ignored"]]:
    """Return what every (leaf, event) pair of the chart does, in the spec's table order."""
    return {
        (decision.source[-1], decision.event): outcome_of(decision) for decision in spec.table()
    }


def format_table(spec: ChartSpec) -> str:
    """Return the chart's current table as the body of a Python dict literal.

    Use it to start a table for a new chart, then check every line against what the chart
    should do: a table copied from the chart without reading it pins its bugs too.
    """
    return "".join(f"    {key!r}: {_show(value)},\n" for key, value in outcomes(spec).items())


def _show(value: object) -> str:
    return "IGNORED" if value == IGNORED else repr(value)


def assert_table(spec: ChartSpec, expected: Expected) -> None:
    """Check the chart's whole decision table against ``expected``; report every difference.

    The pairs are enumerated from the chart itself, so a pair missing from ``expected`` fails
    (pin it), as does a pair in ``expected`` that the chart does not have (a state or event
    that was renamed or removed). Raises :class:`TableMismatch` listing all of them.
    """
    actual = outcomes(spec)
    problems: list[str] = []
    for key, got in actual.items():
        if key not in expected:
            problems.append(f"not pinned:   {key!r}: {_show(got)}")
            continue
        want = expected[key]
        if want != IGNORED and not isinstance(want, Outcome):
            problems.append(f"bad entry:    {key!r}: {want!r} is neither an Outcome nor IGNORED")
        elif want != got:
            problems.append(
                f"differs:      {key!r}: expected {_show(want)}, chart does {_show(got)}"
            )
    leaves = {c[-1] for c in spec.configurations()}
    for key in sorted(set(expected) - set(actual), key=repr):
        leaf, event = key
        why = []
        if leaf not in leaves:
            why.append(f"no configuration has the leaf {leaf!r}")
        if event not in spec.events():
            why.append(f"no event {event!r}")
        problems.append(f"not in chart: {key!r} ({'; '.join(why) or 'unknown pair'})")
    if problems:
        raise TableMismatch(
            f"{spec.name}: {len(problems)} problem(s) between the chart's {len(actual)} pairs "
            "and the expected table (keys are (leaf state, event)):\n  " + "\n  ".join(problems)
        )


# -- strategies ------------------------------------------------------------------------------


def events(spec: ChartSpec) -> st.SearchStrategy[str]:
    """Generate the chart's declared events."""
    return st.sampled_from(spec.events())


def event_sequences(
    spec: ChartSpec, *, min_size: int = 0, max_size: int = 40
) -> st.SearchStrategy[list[str]]:
    """Generate lists of the chart's events, from ``min_size`` to ``max_size`` long."""
    return st.lists(events(spec), min_size=min_size, max_size=max_size)


def configurations(spec: ChartSpec) -> st.SearchStrategy[tuple[str, ...]]:
    """Generate the chart's stable configurations (outermost state first)."""
    return st.sampled_from(spec.configurations())


def replay(
    spec: ChartSpec, sequence: Sequence[str], start: tuple[str, ...] | None = None
) -> list[Decision]:
    """Send ``sequence`` to a fresh live chart (started in ``start``); return each decision."""
    recorder = StepRecorder()
    machine = spec.new(start, listeners=[recorder])
    recorder.take()
    return [spec.step(machine, recorder, event) for event in sequence]


# -- the stateful test -----------------------------------------------------------------------


def _fail(message: str) -> None:
    raise AssertionError(message)


class ChartStateMachine(RuleBasedStateMachine):
    """Send random events to one live chart and check the chart's invariants after each.

    Subclass it and set ``spec`` (and, to check stopping, ``stop_events`` and ``rest_state``),
    or let :func:`chart_state_machine` do that. Add rules and invariants of your own in the
    subclass; ``self.machine`` is the live chart, ``self.open_activities`` the activities
    started and not yet cancelled, and ``self.decisions`` everything sent so far.
    """

    spec: ClassVar[ChartSpec]
    #: Events that, sent in order from any configuration, bring the chart to ``rest_state``.
    stop_events: ClassVar[tuple[str, ...]] = ()
    #: The state the stop sequence must reach (None: the stop check is skipped).
    rest_state: ClassVar[str | None] = None
    # Invariant: per subclass, spec.decide() answers by (configuration, event).
    _decided: ClassVar[dict[tuple[tuple[str, ...], str], Decision]]

    def __init__(self) -> None:
        super().__init__()
        # Invariant: holds only the exit/entry steps of the event being sent.
        self.recorder = StepRecorder()
        self.machine = self.spec.new(listeners=[self.recorder])
        self.recorder.take()
        # Invariant: the activities started and not yet cancelled, by the decisions so far
        # (the initial entry opens those of the initial configuration).
        self.open_activities: Counter[str] = Counter(
            self.spec.activities_of(configuration_of(self.machine))
        )
        # Invariant: every decision made by the live chart, oldest first.
        self.decisions: list[Decision] = []

    def send(self, event: str) -> Decision:
        """Send ``event`` to the live chart, check it against the spec, track its activities."""
        source = configuration_of(self.machine)
        predicted = self._decide(source, event)
        decision = self.spec.step(self.machine, self.recorder, event)
        if decision != predicted:
            _fail(
                f"{self.spec.name}: the live chart and spec.decide() disagree on {event!r} in "
                f"{list(source)}:\n  live:    {decision}\n  decided: {predicted}"
            )
        for name in decision.stopped_activities:
            if self.open_activities[name] < 1:
                _fail(f"{event!r} in {list(source)} cancels {name!r}, which is not open")
            self.open_activities[name] -= 1
        for name in decision.started_activities:
            if self.open_activities[name] > 0:
                _fail(f"{event!r} in {list(source)} starts {name!r}, which is already open")
            self.open_activities[name] += 1
        self.decisions.append(decision)
        return decision

    @classmethod
    def _decide(cls, configuration: tuple[str, ...], event: str) -> Decision:
        # spec.decide() builds a fresh chart per call; its answer depends only on the pair, so
        # each class keeps the answers it has seen (a random walk asks the same pairs often).
        cache: dict[tuple[tuple[str, ...], str], Decision] | None = cls.__dict__.get("_decided")
        if cache is None:
            cache = {}
            cls._decided = cache
        key = (configuration, event)
        if key not in cache:
            cache[key] = cls.spec.decide(configuration, event)
        return cache[key]

    @rule(event=st.runner().flatmap(lambda runner: events(runner.spec)))
    def send_event(self, event: str) -> None:
        self.send(event)

    @invariant()
    def exactly_one_leaf_is_active(self) -> None:
        configuration = configuration_of(self.machine)
        leaves = [s for s in configuration if self.spec.is_leaf(s)]
        if len(leaves) != 1:
            _fail(f"{self.spec.name}: {len(leaves)} leaves active in {list(configuration)}")
        if configuration != self.spec.ancestors(leaves[0]):
            _fail(
                f"{self.spec.name}: configuration {list(configuration)} is not the leaf "
                f"{leaves[0]!r} with its ancestors {list(self.spec.ancestors(leaves[0]))}"
            )

    @invariant()
    def open_activities_are_those_of_the_configuration(self) -> None:
        configuration = configuration_of(self.machine)
        owned = Counter(self.spec.activities_of(configuration))
        still_open = +self.open_activities  # drop zero counts
        if still_open != owned:
            _fail(
                f"{self.spec.name}: in {list(configuration)} the open activities are "
                f"{sorted(still_open.elements())} but the configuration owns "
                f"{sorted(owned.elements())}"
            )

    @invariant()
    def stop_sequence_reaches_rest_state(self) -> None:
        if self.rest_state is None:
            return
        configuration = configuration_of(self.machine)
        decisions: list[Decision] = []
        for event in self.stop_events:
            current = decisions[-1].configuration if decisions else configuration
            decisions.append(self._decide(current, event))
        final = decisions[-1].configuration if decisions else configuration
        if self.rest_state not in final:
            path = " -> ".join(f"{d.event}: {d.configuration[-1]}" for d in decisions)
            _fail(
                f"{self.spec.name}: the stop sequence {list(self.stop_events)} from "
                f"{list(configuration)} ends in {list(final)}, not in {self.rest_state!r} "
                f"({path})"
            )


def chart_state_machine(
    spec: ChartSpec,
    *,
    stop_events: Sequence[str] = (),
    rest_state: str | None = None,
    name: str | None = None,
) -> type[ChartStateMachine]:
    """Build a :class:`ChartStateMachine` subclass for ``spec``.

    Give ``stop_events`` and ``rest_state`` together to check that the events, sent in order
    from every configuration the random walk reaches, end in ``rest_state``. Use the result as
    ``TestMyChart = chart_state_machine(...).TestCase``, or subclass it to add rules.
    """
    if bool(stop_events) != (rest_state is not None):
        raise ValueError("give stop_events and rest_state together, or neither")
    for event in stop_events:
        spec.check_event(event)
    if rest_state is not None:
        spec.check_state(rest_state)
    namespace: dict[str, Any] = {
        "spec": spec,
        "stop_events": tuple(stop_events),
        "rest_state": rest_state,
        "__doc__": f"Random events against the {spec.name} chart.",
    }
    class_name = name or f"{spec.chart.__name__}StateMachine"
    return type(class_name, (ChartStateMachine,), namespace)
