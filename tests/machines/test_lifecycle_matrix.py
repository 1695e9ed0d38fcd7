"""Pin every state × event pair of the lifecycle, then drive it with random events.

``EXPECTED`` is written out by hand from what the lifecycle is for (docs/lifecycle.md), not
derived from the chart: ``assert_table`` enumerates the pairs from the chart and fails on any
difference, including a pair this table does not pin.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis.stateful import invariant

from pullwake.machines import LIFECYCLE
from pullwake.machines.testing import (
    IGNORED,
    Expected,
    Outcome,
    assert_table,
    chart_state_machine,
    replay,
)

# Shorthands for the outcomes that repeat.
TO_STOPPING_FROM_CONNECTING = Outcome(
    "stopping", cancelled=("connect", "heartbeat"), started=("drain",)
)
TO_STOPPING_FROM_STREAMING = Outcome(
    "stopping", cancelled=("read_stream", "heartbeat"), started=("drain",)
)
TO_STOPPING_FROM_RECONNECTING = Outcome(
    "stopping", cancelled=("backoff", "heartbeat"), started=("drain",)
)
CONNECT_AGAIN = Outcome("connecting", cancelled=("backoff",), started=("connect",))

EXPECTED: Expected = {
    # stopped: only start does anything; it enters running and its initial child.
    ("stopped", "start"): Outcome("connecting", started=("heartbeat", "connect")),
    ("stopped", "stop"): IGNORED,
    ("stopped", "rejected"): IGNORED,
    ("stopped", "drained"): IGNORED,
    ("stopped", "connected"): IGNORED,
    ("stopped", "connect_failed"): IGNORED,
    ("stopped", "stream_reset"): IGNORED,
    ("stopped", "stream_ended"): IGNORED,
    ("stopped", "backoff_elapsed"): IGNORED,
    ("stopped", "server_reachable"): IGNORED,
    # connecting: the connect's outcomes and a reset from the heartbeat move on.
    ("connecting", "start"): IGNORED,
    ("connecting", "stop"): TO_STOPPING_FROM_CONNECTING,
    ("connecting", "rejected"): TO_STOPPING_FROM_CONNECTING,
    ("connecting", "drained"): IGNORED,
    ("connecting", "connected"): Outcome(
        "streaming", cancelled=("connect",), started=("read_stream",)
    ),
    ("connecting", "connect_failed"): Outcome(
        "reconnecting", cancelled=("connect",), started=("backoff",)
    ),
    ("connecting", "stream_reset"): Outcome(
        "reconnecting", cancelled=("connect",), started=("backoff",)
    ),
    ("connecting", "stream_ended"): IGNORED,
    ("connecting", "backoff_elapsed"): IGNORED,
    ("connecting", "server_reachable"): IGNORED,
    # streaming: the stream ends or is reset; the heartbeat keeps running throughout.
    ("streaming", "start"): IGNORED,
    ("streaming", "stop"): TO_STOPPING_FROM_STREAMING,
    ("streaming", "rejected"): TO_STOPPING_FROM_STREAMING,
    ("streaming", "drained"): IGNORED,
    ("streaming", "connected"): IGNORED,
    ("streaming", "connect_failed"): IGNORED,
    ("streaming", "stream_reset"): Outcome(
        "reconnecting", cancelled=("read_stream",), started=("backoff",)
    ),
    ("streaming", "stream_ended"): Outcome(
        "reconnecting", cancelled=("read_stream",), started=("backoff",)
    ),
    ("streaming", "backoff_elapsed"): IGNORED,
    ("streaming", "server_reachable"): IGNORED,
    # reconnecting: the backoff elapses, or a heartbeat that got through cuts it short.
    ("reconnecting", "start"): IGNORED,
    ("reconnecting", "stop"): TO_STOPPING_FROM_RECONNECTING,
    ("reconnecting", "rejected"): TO_STOPPING_FROM_RECONNECTING,
    ("reconnecting", "drained"): IGNORED,
    ("reconnecting", "connected"): IGNORED,
    ("reconnecting", "connect_failed"): IGNORED,
    ("reconnecting", "stream_reset"): IGNORED,
    ("reconnecting", "stream_ended"): IGNORED,
    ("reconnecting", "backoff_elapsed"): CONNECT_AGAIN,
    ("reconnecting", "server_reachable"): CONNECT_AGAIN,
    # stopping: only the drain's end does anything.
    ("stopping", "start"): IGNORED,
    ("stopping", "stop"): IGNORED,
    ("stopping", "rejected"): IGNORED,
    ("stopping", "drained"): Outcome("stopped", cancelled=("drain",)),
    ("stopping", "connected"): IGNORED,
    ("stopping", "connect_failed"): IGNORED,
    ("stopping", "stream_reset"): IGNORED,
    ("stopping", "stream_ended"): IGNORED,
    ("stopping", "backoff_elapsed"): IGNORED,
    ("stopping", "server_reachable"): IGNORED,
}


def test_the_lifecycle_has_five_configurations_and_ten_events() -> None:
    assert [c[-1] for c in LIFECYCLE.configurations()] == [
        "stopped",
        "connecting",
        "streaming",
        "reconnecting",
        "stopping",
    ]
    assert LIFECYCLE.events() == (
        "backoff_elapsed",
        "connect_failed",
        "connected",
        "drained",
        "rejected",
        "server_reachable",
        "start",
        "stop",
        "stream_ended",
        "stream_reset",
    )
    assert len(EXPECTED) == 50


def test_every_pair_of_the_lifecycle_is_pinned() -> None:
    assert_table(LIFECYCLE, EXPECTED)


def test_stop_then_drained_rests_in_stopped_from_every_configuration() -> None:
    for configuration in LIFECYCLE.configurations():
        decisions = replay(LIFECYCLE, ["stop", "drained"], configuration)
        assert decisions[-1].configuration == ("stopped",), configuration
        opened = [a for d in decisions for a in d.started_activities]
        closed = [a for d in decisions for a in d.stopped_activities]
        # Everything open before the stop, and the drain itself, is cancelled by the end.
        assert sorted(closed) == sorted([*LIFECYCLE.activities_of(configuration), *opened])


class LifecycleMachine(
    chart_state_machine(LIFECYCLE, stop_events=("stop", "drained"), rest_state="stopped")
):
    """The generic invariants plus the lifecycle's own promises about its activities."""

    @invariant()
    def heartbeat_runs_exactly_while_running(self) -> None:
        running = "running" in self.machine.configuration_values
        assert self.open_activities["heartbeat"] == (1 if running else 0)

    @invariant()
    def one_connection_activity_while_running(self) -> None:
        connection = sum(self.open_activities[a] for a in ("connect", "read_stream", "backoff"))
        running = "running" in self.machine.configuration_values
        assert connection == (1 if running else 0)


TestLifecycleRandomEvents = LifecycleMachine.TestCase
TestLifecycleRandomEvents.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
