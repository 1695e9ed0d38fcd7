"""ChartSpec refuses tables that leave a pair undecided or contradict the chart."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from statemachine import State, StateChart

from pullwake.machines import (
    Activity,
    ChartDefinitionError,
    ChartSpec,
    UnknownEventError,
    UnknownStateError,
)


class Dimmer(StateChart):  # type: ignore[type-arg]
    """A small chart with a compound state: off, or on at a low or high level."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    off = State(initial=True)

    class on(State.Compound):
        low = State(initial=True)
        high = State()

        up = low.to(high)
        down = high.to(low)

    switch_on = off.to(on)
    switch_off = on.to(off)


ACTIVITIES = {
    "on": (Activity("power"),),
    "high": (Activity("fan", error="down"),),
}

IGNORED = {
    "off": frozenset({"up", "down", "switch_off"}),
    "on": frozenset({"switch_on"}),
    "low": frozenset({"down"}),
    "high": frozenset({"up"}),
}


def build(
    activities: Mapping[str, tuple[Activity, ...]] = ACTIVITIES,
    ignored: Mapping[str, frozenset[str]] = IGNORED,
    chart: type[StateChart] = Dimmer,  # type: ignore[type-arg]
) -> ChartSpec:
    return ChartSpec(chart, activities, ignored, name="dimmer")


def test_a_complete_spec_builds_and_decides_every_pair() -> None:
    spec = build()
    assert spec.configurations() == (("off",), ("on", "low"), ("on", "high"))
    assert spec.events() == ("down", "switch_off", "switch_on", "up")
    assert len(list(spec.table())) == 12


def test_an_undecided_pair_is_refused() -> None:
    ignored = {**IGNORED, "low": frozenset()}
    with pytest.raises(ChartDefinitionError, match=r"'down' in configuration \['on', 'low'\]"):
        build(ignored=ignored)


def test_a_state_that_handles_and_ignores_an_event_is_refused() -> None:
    ignored = {**IGNORED, "off": IGNORED["off"] | {"switch_on"}}
    with pytest.raises(
        ChartDefinitionError, match=r"'off' both handles and ignores \['switch_on'\]"
    ):
        build(ignored=ignored)


def test_a_child_ignoring_what_its_ancestor_handles_is_refused() -> None:
    # "on" handles switch_off; an ignore entry on "low" would never apply.
    ignored = {**IGNORED, "low": IGNORED["low"] | {"switch_off"}}
    with pytest.raises(ChartDefinitionError, match=r"'switch_off'.*\['low'\] also list it"):
        build(ignored=ignored)


def test_an_ancestor_ignoring_what_a_child_handles_is_refused() -> None:
    ignored = {**IGNORED, "on": IGNORED["on"] | {"up"}}
    with pytest.raises(ChartDefinitionError, match=r"'up'.*\['on'\] also list it"):
        build(ignored=ignored)


def test_an_activity_sending_an_undeclared_event_is_refused() -> None:
    activities = {**ACTIVITIES, "low": (Activity("warmup", done="warmed_up"),)}
    with pytest.raises(ChartDefinitionError, match=r"'warmup' sends 'warmed_up'"):
        build(activities=activities)


def test_an_unknown_state_in_the_activity_table_is_refused() -> None:
    activities = {**ACTIVITIES, "dimmed": (Activity("glow"),)}
    with pytest.raises(ChartDefinitionError, match=r"activities name no state 'dimmed'"):
        build(activities=activities)


def test_an_unknown_state_in_the_ignore_table_is_refused() -> None:
    ignored = {**IGNORED, "dimmed": frozenset({"up"})}
    with pytest.raises(ChartDefinitionError, match=r"ignored names no state 'dimmed'"):
        build(ignored=ignored)


def test_an_undeclared_event_in_the_ignore_table_is_refused() -> None:
    ignored = {**IGNORED, "off": IGNORED["off"] | {"blink"}}
    with pytest.raises(ChartDefinitionError, match=r"ignores undeclared events \['blink'\]"):
        build(ignored=ignored)


def test_an_activity_owned_twice_is_refused() -> None:
    activities = {**ACTIVITIES, "low": (Activity("power"),)}
    with pytest.raises(ChartDefinitionError, match=r"'power' is owned twice"):
        build(activities=activities)


def test_a_chart_that_drops_undecided_events_silently_is_refused() -> None:
    class Lenient(Dimmer):
        allow_event_without_transition = True

    with pytest.raises(ChartDefinitionError, match="allow_event_without_transition = False"):
        build(chart=Lenient)


def test_a_parallel_state_is_refused() -> None:
    class Split(StateChart):  # type: ignore[type-arg]
        allow_event_without_transition = False

        class both(State.Parallel):
            class left(State.Compound):
                a = State(initial=True)

            class right(State.Compound):
                b = State(initial=True)

    with pytest.raises(ChartDefinitionError, match="'both' is parallel"):
        ChartSpec(Split)


def test_unknown_names_raise_lookup_errors_that_list_the_declared_ones() -> None:
    spec = build()
    with pytest.raises(UnknownEventError, match="no event 'blink'; declared events: down"):
        spec.decide(("off",), "blink")
    with pytest.raises(UnknownStateError, match="no state 'dimmed'; declared states: off, on"):
        spec.check_state("dimmed")
    assert isinstance(UnknownStateError("x"), LookupError)


def test_entering_a_compound_state_rests_in_its_initial_leaf() -> None:
    spec = build()
    assert spec.initial_leaf("on") == "low"
    assert spec.entry_configuration("on") == ("on", "low")
    assert spec.entry_configuration("high") == ("on", "high")
    assert spec.entry_configuration("off") == ("off",)
