"""Bind a python-statemachine chart to the tables that make it executable and checkable.

A :class:`ChartSpec` is a chart class plus two tables declared beside it, as data:

- ``activities``: which state owns which long-running activity (an xstate ``invoke``). The
  runtime starts a state's activities when the state is entered and cancels them when it is
  left; diagrams and tests read the same table.
- ``ignored``: which events a state deliberately ignores. With it, every state × event pair is
  decided in the chart's own file: it is either a transition of the chart or listed here.
  A pair that is neither is a definition error, caught when the spec is built.

:meth:`ChartSpec.decide` answers, without side effects, what one event does in one
configuration; the runtime, the diagrams and :mod:`pullwake.machines.testing` all go through it,
so nothing hand-copies the transitions.

Caveat: transitions with guards are decided on a fresh chart with its default model, so a
guarded chart's decision may depend on data the matrix cannot see. The lifecycle has no guards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, cast

import attrs
from statemachine import State, StateChart
from statemachine.event import Event
from statemachine.exceptions import TransitionNotAllowed

from .errors import ChartDefinitionError, UnknownEventError, UnknownStateError

__all__ = [
    "Activity",
    "ChartSpec",
    "Decision",
    "StepRecorder",
]


@attrs.frozen
class Activity:
    """A long-running piece of work owned by a state.

    ``done`` is the event sent when the activity returns normally and ``error`` the event sent
    when it raises. ``None`` means the outcome is not an event: an activity whose ``done`` is
    ``None`` is expected to run until its state is left (returning early is reported to the
    inspection hook), and one whose ``error`` is ``None`` crashes the actor when it raises.
    The activity may also name its outcome event itself (the runtime lets it return one); that
    event must still be decided by the chart.
    """

    name: str
    done: str | None = None
    error: str | None = None


@attrs.frozen
class Decision:
    """What one event does in one configuration.

    ``kind`` is ``"transition"`` or ``"ignored"``. For a transition, ``exited`` and ``entered``
    list the states in the order the chart exits and enters them, ``stopped_activities`` and
    ``started_activities`` the activities cancelled and started as a result, and
    ``configuration`` the resulting configuration (outermost state first).
    """

    kind: Literal["transition", "ignored"]
    source: tuple[str, ...]
    event: str
    configuration: tuple[str, ...]
    exited: tuple[str, ...] = ()
    entered: tuple[str, ...] = ()
    stopped_activities: tuple[str, ...] = ()
    started_activities: tuple[str, ...] = ()


class StepRecorder:
    """A python-statemachine listener that records the exact exit and entry sequence.

    Comparing configurations before and after an event misses a state that is left and entered
    again in one step (a self-transition), so the sequence is taken from the chart's own
    callbacks instead.
    """

    def __init__(self) -> None:
        # Invariant: holds the ("exit"|"enter", state id) steps of the event being processed.
        self.steps: list[tuple[str, str]] = []

    def on_exit_state(self, state: State) -> None:
        self.steps.append(("exit", state.id))

    def on_enter_state(self, state: State) -> None:
        self.steps.append(("enter", state.id))

    def take(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Return (exited, entered) for the steps recorded so far and forget them."""
        exited = tuple(s for kind, s in self.steps if kind == "exit")
        entered = tuple(s for kind, s in self.steps if kind == "enter")
        self.steps.clear()
        return exited, entered


def configuration_of(machine: StateChart[Any]) -> tuple[str, ...]:
    """Return the active state ids of a running chart, outermost first, in document order."""
    active = {state.id for state in machine.configuration}
    return tuple(s for s in _document_order(type(machine)) if s in active)


def _document_order(chart: type[StateChart[Any]]) -> list[str]:
    return list(chart.states_map)


@attrs.frozen
class ChartSpec:
    """A chart class with its activity and ignore tables; validated when built.

    Build it once, next to the chart, and hand it to the runtime, the diagrams and the tests.
    Construction raises :class:`ChartDefinitionError` when a table names a state, event or
    activity the chart does not have, when a state both handles and ignores an event, or when
    some configuration × event pair is neither a transition nor ignored.
    """

    chart: type[StateChart[Any]]
    activities: Mapping[str, tuple[Activity, ...]] = attrs.field(factory=dict)
    ignored: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.chart.__name__)
        self._check_tables()
        for configuration in self.configurations():
            for event in self.events():
                decision = self.decide(configuration, event)
                self._check_decided_once(decision)

    # -- structure ---------------------------------------------------------------------------

    def states(self) -> tuple[str, ...]:
        """Every state id, compound ones included, in document order."""
        return tuple(_document_order(self.chart))

    def events(self) -> tuple[str, ...]:
        """Every event the chart declares, sorted by name (deterministic)."""
        # The chart's metaclass exposes ``events`` on the class as a list; typeshed-style stubs
        # only know the instance method, hence the cast.
        declared = cast("Iterable[Event]", self.chart.events)
        return tuple(sorted({e.id for e in declared if not e.id.startswith("__")}))

    def parent(self, state_id: str) -> str | None:
        parent = self.chart.states_map[state_id].parent
        return None if parent is None else str(parent.id)

    def ancestors(self, state_id: str) -> tuple[str, ...]:
        """The state and its ancestors, outermost first."""
        chain = [state_id]
        while (parent := self.parent(chain[-1])) is not None:
            chain.append(parent)
        return tuple(reversed(chain))

    def is_leaf(self, state_id: str) -> bool:
        return not self.chart.states_map[state_id].states

    def check_state(self, state_id: str) -> str:
        """Return ``state_id`` if the chart declares it, else raise :class:`UnknownStateError`."""
        if state_id not in self.chart.states_map:
            raise UnknownStateError(
                f"{self.name} declares no state {state_id!r}; declared states: "
                f"{', '.join(self.states())}"
            )
        return state_id

    def check_event(self, event: str) -> str:
        """Return ``event`` if the chart declares it, else raise :class:`UnknownEventError`."""
        if event not in self.events():
            raise UnknownEventError(
                f"{self.name} declares no event {event!r}; declared events: "
                f"{', '.join(self.events())}"
            )
        return event

    def initial_leaf(self, state_id: str) -> str:
        """The leaf a chart rests in after entering ``state_id`` (itself when it is a leaf)."""
        state = self.chart.states_map[self.check_state(state_id)]
        while state.states:
            state = next((s for s in state.states if s.initial), state.states[0])
        return str(state.id)

    def entry_configuration(self, state_id: str) -> tuple[str, ...]:
        """The stable configuration entered by entering ``state_id``, outermost first."""
        return self.ancestors(self.initial_leaf(state_id))

    def configurations(self) -> tuple[tuple[str, ...], ...]:
        """Every stable configuration: a leaf state with its ancestors, outermost first.

        The lifecycle has no parallel regions, so a configuration is exactly one leaf and its
        ancestors; charts with parallel regions are rejected by :meth:`_check_tables`.
        """
        return tuple(self.ancestors(s) for s in self.states() if self.is_leaf(s))

    def initial_configuration(self) -> tuple[str, ...]:
        return configuration_of(self.chart())

    def activities_of(self, configuration: tuple[str, ...]) -> tuple[str, ...]:
        """The activities that are open in a configuration, outermost state first."""
        return tuple(a.name for s in configuration for a in self.activities.get(s, ()))

    def activity(self, name: str) -> Activity:
        for owned in self.activities.values():
            for activity in owned:
                if activity.name == name:
                    return activity
        raise KeyError(name)

    def owner(self, activity_name: str) -> str:
        for state, owned in self.activities.items():
            if any(a.name == activity_name for a in owned):
                return state
        raise KeyError(activity_name)

    # -- decisions ---------------------------------------------------------------------------

    def new(self, configuration: tuple[str, ...] | None = None, **kwargs: Any) -> StateChart[Any]:
        """Make a chart instance, optionally started in ``configuration`` (its leaf)."""
        start = None if configuration is None else configuration[-1]
        return self.chart(start_value=start, **kwargs)

    def decide(self, configuration: tuple[str, ...], event: str) -> Decision:
        """Return what ``event`` does in ``configuration``, without touching any live chart."""
        recorder = StepRecorder()
        machine = self.new(configuration, listeners=[recorder])
        recorder.take()  # drop the initial entry
        return self.step(machine, recorder, event)

    def step(self, machine: StateChart[Any], recorder: StepRecorder, event: str) -> Decision:
        """Send ``event`` to a live ``machine`` (built with ``recorder``) and report it.

        An event the configuration deliberately ignores changes nothing and is reported as
        ``"ignored"``; an undecided pair raises :class:`ChartDefinitionError`.
        """
        self.check_event(event)
        source = configuration_of(machine)
        try:
            # The library's send, not ``machine.send``: a chart may declare an event named
            # ``send``, which shadows the method and would fire itself for any event asked.
            StateChart.send(machine, event)
        except TransitionNotAllowed:
            recorder.take()
            if any(event in self.ignored.get(s, ()) for s in source):
                return Decision("ignored", source, event, source)
            raise ChartDefinitionError(
                f"{self.name}: event {event!r} in configuration {list(source)} is neither a "
                f"transition nor listed as ignored; decide it in the chart's file"
            ) from None
        exited, entered = recorder.take()
        return Decision(
            "transition",
            source,
            event,
            configuration_of(machine),
            exited,
            entered,
            tuple(a.name for s in exited for a in self.activities.get(s, ())),
            tuple(a.name for s in entered for a in self.activities.get(s, ())),
        )

    def table(self) -> Iterator[Decision]:
        """Every configuration × event decision, in a deterministic order."""
        for configuration in self.configurations():
            for event in self.events():
                yield self.decide(configuration, event)

    # -- validation --------------------------------------------------------------------------

    def _check_decided_once(self, decision: Decision) -> None:
        # A pair that the chart handles must not also be ignored by any state of the source
        # configuration: an ancestor's handling would make a child's ignore entry dead, and a
        # child's handling would silently override an ancestor's ignore entry.
        if decision.kind != "transition":
            return
        ignoring = [s for s in decision.source if decision.event in self.ignored.get(s, ())]
        if ignoring:
            raise ChartDefinitionError(
                f"{self.name}: event {decision.event!r} in configuration "
                f"{list(decision.source)} is a transition but {ignoring} also list it as "
                "ignored; remove it from the ignore table or from the chart"
            )

    def _check_tables(self) -> None:
        states = set(self.states())
        events = set(self.events())
        if getattr(self.chart, "allow_event_without_transition", True):
            raise ChartDefinitionError(
                f"{self.name}: set 'allow_event_without_transition = False' on the chart class; "
                "otherwise an event with no transition is dropped silently and the spec cannot "
                "tell an undecided pair from a transition"
            )
        for state in self.chart.states_map.values():
            if state.parallel:
                raise ChartDefinitionError(
                    f"{self.name}: state {state.id!r} is parallel; ChartSpec supports compound "
                    "states only"
                )
        seen: set[str] = set()
        for state_id, owned in self.activities.items():
            if state_id not in states:
                raise ChartDefinitionError(f"{self.name}: activities name no state {state_id!r}")
            for activity in owned:
                if activity.name in seen:
                    raise ChartDefinitionError(
                        f"{self.name}: activity {activity.name!r} is owned twice; names are unique"
                    )
                seen.add(activity.name)
                for outcome in (activity.done, activity.error):
                    if outcome is not None and outcome not in events:
                        raise ChartDefinitionError(
                            f"{self.name}: activity {activity.name!r} sends {outcome!r}, "
                            "which the chart does not declare"
                        )
        for state_id, ignored in self.ignored.items():
            if state_id not in states:
                raise ChartDefinitionError(f"{self.name}: ignored names no state {state_id!r}")
            unknown = set(ignored) - events
            if unknown:
                raise ChartDefinitionError(
                    f"{self.name}: state {state_id!r} ignores undeclared events {sorted(unknown)}"
                )
            handled = {t.event for t in self.chart.states_map[state_id].transitions}
            both = {e for e in ignored if any(e in str(h).split() for h in handled)}
            if both:
                raise ChartDefinitionError(
                    f"{self.name}: state {state_id!r} both handles and ignores {sorted(both)}"
                )
