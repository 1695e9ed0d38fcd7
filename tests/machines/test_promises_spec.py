"""ChartSpec lookups that ``make mutate`` found untested, read from LIFECYCLE's own tables."""

from __future__ import annotations

import pytest

from pullwake.machines import LIFECYCLE, ChartDefinitionError, ChartSpec, UnknownEventError
from pullwake.machines.lifecycle import ACTIVITIES, IGNORED, Lifecycle


def test_a_spec_without_a_name_is_named_after_its_chart() -> None:
    assert ChartSpec(Lifecycle, ACTIVITIES, IGNORED).name == "Lifecycle"
    assert LIFECYCLE.name == "lifecycle"


def test_every_activity_names_its_owner_and_unknown_ones_raise() -> None:
    for state, owned in LIFECYCLE.activities.items():
        for activity in owned:
            assert LIFECYCLE.owner(activity.name) == state
            assert LIFECYCLE.activity(activity.name) == activity
    for lookup in (LIFECYCLE.owner, LIFECYCLE.activity):
        with pytest.raises(KeyError, match="'no_such_activity'"):
            lookup("no_such_activity")


def test_an_unknown_event_lists_every_declared_event() -> None:
    with pytest.raises(UnknownEventError) as caught:
        LIFECYCLE.check_event("explode")
    assert str(caught.value).endswith("declared events: " + ", ".join(LIFECYCLE.events()))


def test_a_state_missing_from_the_ignore_table_ignores_nothing() -> None:
    # Drop the ignore entry of a leaf whose every ignored event its ancestors handle or ignore
    # too: the spec must then call those pairs undecided, not crash on the missing entry.
    for state, ignored in IGNORED.items():
        if not LIFECYCLE.is_leaf(state) or not ignored:
            continue
        table = {s: events for s, events in IGNORED.items() if s != state}
        with pytest.raises(ChartDefinitionError, match="neither a transition nor listed"):
            ChartSpec(Lifecycle, ACTIVITIES, table)
