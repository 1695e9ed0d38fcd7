"""Small charts of "a user's own" that the machines tests share."""

from __future__ import annotations

from statemachine import State, StateChart

from pullwake.machines import Activity, ChartSpec

__all__ = ["KETTLE", "Kettle"]


class Kettle(StateChart):  # type: ignore[type-arg]
    """A user's chart: a kettle that heats, then keeps warm, until it is switched off."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    off = State(initial=True)

    class on(State.Compound):
        heating = State(initial=True)
        warm = State()

        boiled = heating.to(warm)
        cooled = warm.to(heating)

    switch_on = off.to(on)
    switch_off = on.to(off)


KETTLE = ChartSpec(
    Kettle,
    activities={
        "on": (Activity("display"),),
        "heating": (Activity("heat", done="boiled"),),
        "warm": (Activity("thermostat", done="cooled"),),
    },
    ignored={
        "off": frozenset({"boiled", "cooled", "switch_off"}),
        "on": frozenset({"switch_on"}),
        "heating": frozenset({"cooled"}),
        "warm": frozenset({"boiled"}),
    },
    name="kettle",
)
