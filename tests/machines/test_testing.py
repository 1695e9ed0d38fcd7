"""The testing helpers on a chart of a user's own, including how each check fails."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test
from statemachine import State, StateChart

from pullwake.machines import ChartSpec, UnknownEventError, UnknownStateError
from pullwake.machines.spec import configuration_of
from pullwake.machines.testing import (
    IGNORED,
    Expected,
    Outcome,
    TableMismatch,
    assert_table,
    chart_state_machine,
    configurations,
    event_sequences,
    events,
    format_table,
    outcomes,
    replay,
)

from .charts import KETTLE, Kettle

FAST = settings(max_examples=30, stateful_step_count=20, deadline=None, database=None)


KETTLE_TABLE: Expected = {
    ("off", "switch_on"): Outcome("heating", started=("display", "heat")),
    ("off", "switch_off"): IGNORED,
    ("off", "boiled"): IGNORED,
    ("off", "cooled"): IGNORED,
    ("heating", "switch_on"): IGNORED,
    ("heating", "switch_off"): Outcome("off", cancelled=("heat", "display")),
    ("heating", "boiled"): Outcome("warm", cancelled=("heat",), started=("thermostat",)),
    ("heating", "cooled"): IGNORED,
    ("warm", "switch_on"): IGNORED,
    ("warm", "switch_off"): Outcome("off", cancelled=("thermostat", "display")),
    ("warm", "boiled"): IGNORED,
    ("warm", "cooled"): Outcome("heating", cancelled=("thermostat",), started=("heat",)),
}


# -- the table -------------------------------------------------------------------------------


def test_a_correct_table_passes() -> None:
    assert_table(KETTLE, KETTLE_TABLE)


def test_every_kind_of_difference_is_reported_at_once() -> None:
    expected: dict[Any, Any] = dict(KETTLE_TABLE)
    expected[("warm", "cooled")] = Outcome("heating", started=("heat",))  # forgot a cancel
    expected[("off", "boiled")] = Outcome("warm")  # wrong: it is ignored
    del expected[("heating", "cooled")]  # not pinned
    expected[("descaling", "cooled")] = IGNORED  # no such state
    expected[("off", "descale")] = IGNORED  # no such event
    expected[("off", "cooled")] = "ignore"  # a typo of IGNORED

    with pytest.raises(TableMismatch) as caught:
        assert_table(KETTLE, expected)

    message = str(caught.value)
    assert "kettle: 6 problem(s) between the chart's 12 pairs" in message
    lines = {line.strip() for line in message.splitlines()[1:]}
    assert lines == {
        "differs:      ('warm', 'cooled'): expected Outcome('heating', started=('heat',)), "
        "chart does Outcome('heating', cancelled=('thermostat',), started=('heat',))",
        "differs:      ('off', 'boiled'): expected Outcome('warm'), chart does IGNORED",
        "not pinned:   ('heating', 'cooled'): IGNORED",
        "not in chart: ('descaling', 'cooled') (no configuration has the leaf 'descaling')",
        "not in chart: ('off', 'descale') (no event 'descale')",
        "bad entry:    ('off', 'cooled'): 'ignore' is neither an Outcome nor IGNORED",
    }


def test_a_new_event_fails_until_its_pairs_are_pinned() -> None:
    class KettleWithDescale(Kettle):
        descale = Kettle.off.to(Kettle.off)

    spec = ChartSpec(
        KettleWithDescale,
        KETTLE.activities,
        {**KETTLE.ignored, "on": KETTLE.ignored["on"] | {"descale"}},
        name="kettle",
    )
    with pytest.raises(TableMismatch) as caught:
        assert_table(spec, KETTLE_TABLE)
    assert str(caught.value).count("not pinned:") == 3
    assert "('off', 'descale'): Outcome('off')" in str(caught.value)


def test_format_table_is_a_dict_literal_of_the_current_table() -> None:
    text = "{\n" + format_table(KETTLE) + "}"
    parsed = eval(text, {"Outcome": Outcome, "IGNORED": IGNORED})
    assert parsed == outcomes(KETTLE) == KETTLE_TABLE
    assert list(parsed) == list(outcomes(KETTLE))


# -- strategies ------------------------------------------------------------------------------


@FAST
@given(event=events(KETTLE), configuration=configurations(KETTLE))
def test_strategies_draw_declared_events_and_configurations(
    event: str, configuration: tuple[str, ...]
) -> None:
    assert event in KETTLE.events()
    assert configuration in KETTLE.configurations()


@FAST
@given(sequence=event_sequences(KETTLE, min_size=1, max_size=15), data=st.data())
def test_replay_chains_decisions_from_any_start(sequence: list[str], data: st.DataObject) -> None:
    start = data.draw(configurations(KETTLE))
    decisions = replay(KETTLE, sequence, start)
    assert [d.event for d in decisions] == sequence
    current = start
    for decision in decisions:
        assert decision.source == current
        assert decision == KETTLE.decide(current, decision.event)
        current = decision.configuration


# -- the stateful test -----------------------------------------------------------------------


def test_the_stateful_test_passes_on_a_sound_chart() -> None:
    machine = chart_state_machine(KETTLE, stop_events=("switch_off",), rest_state="off")
    assert machine.__name__ == "KettleStateMachine"
    run_state_machine_as_test(machine, settings=FAST)


def test_a_stop_sequence_that_does_not_reach_the_rest_state_fails() -> None:
    # "cooled" only stops heating from warm; from anywhere else it does not reach "heating".
    machine = chart_state_machine(KETTLE, stop_events=("cooled",), rest_state="heating")
    with pytest.raises(AssertionError, match=r"the stop sequence \['cooled'\] from \['off'\]"):
        run_state_machine_as_test(machine, settings=FAST)


def test_open_activities_that_differ_from_the_configuration_fail() -> None:
    machine = chart_state_machine(KETTLE)()
    machine.send("switch_on")
    machine.open_activities_are_those_of_the_configuration()
    machine.open_activities["heat"] -= 1  # as if a cancel had been recorded twice
    with pytest.raises(AssertionError, match=r"open activities are \['display'\] but"):
        machine.open_activities_are_those_of_the_configuration()


def test_cancelling_an_activity_that_is_not_open_fails() -> None:
    machine = chart_state_machine(KETTLE)()
    machine.send("switch_on")
    machine.open_activities["heat"] = 0
    with pytest.raises(AssertionError, match=r"cancels 'heat', which is not open"):
        machine.send("boiled")


class Launcher(StateChart):  # type: ignore[type-arg]
    """A chart whose guard reads data: the case where spec.decide() can be wrong."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    armed = True

    ready = State(initial=True)
    launched = State()
    scrubbed = State()

    go = ready.to(launched, cond="is_armed") | ready.to(scrubbed)
    reset = launched.to(ready) | scrubbed.to(ready)

    def is_armed(self) -> bool:
        return self.armed


LAUNCHER = ChartSpec(
    Launcher,
    ignored={
        "ready": frozenset({"reset"}),
        "launched": frozenset({"go"}),
        "scrubbed": frozenset({"go"}),
    },
)


def test_a_live_chart_that_disagrees_with_decide_fails() -> None:
    class DisarmingMachine(chart_state_machine(LAUNCHER)):  # type: ignore[misc]
        @rule()
        def disarm(self) -> None:
            self.machine.armed = False

    with pytest.raises(AssertionError, match=r"live chart and spec.decide\(\) disagree on 'go'"):
        run_state_machine_as_test(DisarmingMachine, settings=FAST)


def test_the_live_chart_is_the_machine_under_test() -> None:
    machine = chart_state_machine(KETTLE)()
    assert configuration_of(machine.machine) == ("off",)
    machine.send("switch_on")
    machine.send("boiled")
    assert configuration_of(machine.machine) == ("on", "warm")
    assert [d.event for d in machine.decisions] == ["switch_on", "boiled"]


def test_chart_state_machine_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="together"):
        chart_state_machine(KETTLE, stop_events=("switch_off",))
    with pytest.raises(UnknownEventError, match="'unplug'"):
        chart_state_machine(KETTLE, stop_events=("unplug",), rest_state="off")
    with pytest.raises(UnknownStateError, match="'cold'"):
        chart_state_machine(KETTLE, stop_events=("switch_off",), rest_state="cold")
