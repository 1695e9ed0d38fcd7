"""Property-test a chart of your own with ``pullwake.machines.testing``.

    pip install 'pullwake[testing]'               # Hypothesis
    python examples/chart_properties.py           # or: pytest examples/chart_properties.py

The chart is a door with a lock: ``closed`` and ``locked`` are both inside ``shut``, which owns
a draught-sensor activity; ``open`` owns a "door open" alarm timer. The test pins the whole
decision table in one literal (written from what the door is for, not copied from the chart),
then lets Hypothesis send random events to a live chart and check the generated invariants
after every step, plus one of our own.
"""

from __future__ import annotations

import unittest

from hypothesis import given, settings
from hypothesis.stateful import invariant
from statemachine import State, StateChart

from pullwake.machines import Activity, ChartSpec
from pullwake.machines.testing import (
    IGNORED,
    Outcome,
    assert_table,
    chart_state_machine,
    event_sequences,
    replay,
)


class Door(StateChart):  # type: ignore[type-arg]
    """A door that opens only when unlocked."""

    # An event with no transition must raise, so the spec can catch an undecided pair.
    allow_event_without_transition = False
    catch_errors_as_events = False

    class shut(State.Compound):  # a compound state: its id is lower_snake like the others
        closed = State(initial=True)
        locked = State()

        lock = closed.to(locked)
        unlock = locked.to(closed)

    open = State()

    push = shut.closed.to(open)
    close = open.to(shut)
    # The alarm timer ran out: the door closes itself (a sprung door).
    alarm_elapsed = open.to(shut)


DOOR = ChartSpec(
    Door,
    activities={
        "shut": (Activity("draught_sensor"),),
        "open": (Activity("alarm_timer", done="alarm_elapsed"),),
    },
    ignored={
        "closed": frozenset({"unlock", "close", "alarm_elapsed"}),
        "locked": frozenset({"lock", "push", "close", "alarm_elapsed"}),
        "open": frozenset({"lock", "unlock", "push"}),
    },
    name="door",
)

EXPECTED = {
    ("closed", "lock"): Outcome("locked"),
    ("closed", "unlock"): IGNORED,
    ("closed", "push"): Outcome("open", cancelled=("draught_sensor",), started=("alarm_timer",)),
    ("closed", "close"): IGNORED,
    ("closed", "alarm_elapsed"): IGNORED,
    ("locked", "lock"): IGNORED,
    ("locked", "unlock"): Outcome("closed"),
    ("locked", "push"): IGNORED,
    ("locked", "close"): IGNORED,
    ("locked", "alarm_elapsed"): IGNORED,
    ("open", "lock"): IGNORED,
    ("open", "unlock"): IGNORED,
    ("open", "push"): IGNORED,
    ("open", "close"): Outcome("closed", cancelled=("alarm_timer",), started=("draught_sensor",)),
    ("open", "alarm_elapsed"): Outcome(
        "closed", cancelled=("alarm_timer",), started=("draught_sensor",)
    ),
}


def test_the_whole_table() -> None:
    assert_table(DOOR, EXPECTED)


class DoorMachine(chart_state_machine(DOOR, stop_events=("close", "lock"), rest_state="locked")):
    """The generated invariants, and one of the door's own."""

    @invariant()
    def the_alarm_runs_exactly_while_open(self) -> None:
        is_open = "open" in self.machine.configuration_values
        assert (self.open_activities["alarm_timer"] == 1) == is_open


TestDoor = DoorMachine.TestCase
TestDoor.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


@settings(max_examples=50, deadline=None)
@given(event_sequences(DOOR, max_size=20))
def test_a_locked_door_never_opens_without_an_unlock_first(sequence: list[str]) -> None:
    locked = False
    for decision in replay(DOOR, sequence):
        if decision.kind == "transition":
            if decision.event == "lock":
                locked = True
            elif decision.event == "unlock":
                locked = False
            elif decision.event == "push":
                assert not locked


if __name__ == "__main__":
    test_the_whole_table()
    test_a_locked_door_never_opens_without_an_unlock_first()
    print("table and sequences: ok", flush=True)
    unittest.main(defaultTest="TestDoor", verbosity=1)
