"""``chart_state_machine`` on a chart whose *initial* state owns an activity (found by ``make
mutate``: the lifecycle's and the kettle's initial states own none, so nothing showed that the
helper opens the initial configuration's activities before the first event)."""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test
from statemachine import State, StateChart

from pullwake.machines import Activity, ChartSpec
from pullwake.machines.diagram import ignored_table
from pullwake.machines.testing import chart_state_machine


class Lamp(StateChart):  # type: ignore[type-arg]
    """On until switched off; while on it glows."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    on = State(initial=True)
    off = State()

    flip = on.to(off) | off.to(on)


LAMP = ChartSpec(
    Lamp,
    activities={"on": (Activity("glow"),)},
    ignored={"on": frozenset(), "off": frozenset()},
    name="lamp",
)

LampMachine = chart_state_machine(LAMP)


def test_the_initial_configurations_activities_are_open_before_any_event() -> None:
    machine = LampMachine()
    assert machine.open_activities == Counter({"glow": 1})


def test_the_random_walk_keeps_the_open_activities_those_of_the_configuration() -> None:
    run_state_machine_as_test(
        LampMachine, settings=settings(max_examples=5, stateful_step_count=6, deadline=None)
    )


def test_the_ignore_table_of_a_chart_that_omits_a_state_is_drawn() -> None:
    # A state with nothing to ignore may be left out of the ignore table; the diagram's table
    # then lists only the states that ignore something.
    spec = ChartSpec(
        Lamp,
        activities={"on": (Activity("glow"),)},
        ignored={"off": frozenset()},
        name="lamp",
    )
    assert ignored_table(spec) == "| state | ignores (and so do its children) |\n| --- | --- |\n"
