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
TO_STOPPING_AFTER_ANSWER = Outcome(
    "stopping", cancelled=("backoff", "heartbeat"), started=("drain",)
)
TO_STOPPING_SERVER_GONE = Outcome(
    "stopping", cancelled=("probe", "backoff", "heartbeat"), started=("drain",)
)
# Waiting after an answer: the backoff alone.
WAIT_AFTER_CONNECT = Outcome("after_answer", cancelled=("connect",), started=("backoff",))
WAIT_AFTER_STREAM = Outcome("after_answer", cancelled=("read_stream",), started=("backoff",))
# The server gave no answer: the backoff and the probe that may cut it short.
GONE_FROM_CONNECTING = Outcome("server_gone", cancelled=("connect",), started=("backoff", "probe"))
GONE_FROM_STREAMING = Outcome(
    "server_gone", cancelled=("read_stream",), started=("backoff", "probe")
)

EXPECTED: Expected = {
    # stopped: only start does anything; it enters running and its initial child.
    ("stopped", "start"): Outcome("connecting", started=("heartbeat", "connect")),
    ("stopped", "stop"): IGNORED,
    ("stopped", "rejected"): IGNORED,
    ("stopped", "drained"): IGNORED,
    ("stopped", "connected"): IGNORED,
    ("stopped", "connect_failed"): IGNORED,
    ("stopped", "server_lost"): IGNORED,
    ("stopped", "stream_reset"): IGNORED,
    ("stopped", "stream_ended"): IGNORED,
    ("stopped", "backoff_elapsed"): IGNORED,
    ("stopped", "server_reachable"): IGNORED,
    # connecting: the connect's outcomes and a reset from the heartbeat move on; why it failed
    # picks the child of reconnecting.
    ("connecting", "start"): IGNORED,
    ("connecting", "stop"): TO_STOPPING_FROM_CONNECTING,
    ("connecting", "rejected"): TO_STOPPING_FROM_CONNECTING,
    ("connecting", "drained"): IGNORED,
    ("connecting", "connected"): Outcome(
        "streaming", cancelled=("connect",), started=("read_stream",)
    ),
    ("connecting", "connect_failed"): WAIT_AFTER_CONNECT,
    ("connecting", "server_lost"): GONE_FROM_CONNECTING,
    ("connecting", "stream_reset"): GONE_FROM_CONNECTING,
    ("connecting", "stream_ended"): IGNORED,
    ("connecting", "backoff_elapsed"): IGNORED,
    ("connecting", "server_reachable"): IGNORED,
    # streaming: the stream ends (an answer) or is lost (no answer, or the heartbeats failed);
    # the heartbeat keeps running throughout.
    ("streaming", "start"): IGNORED,
    ("streaming", "stop"): TO_STOPPING_FROM_STREAMING,
    ("streaming", "rejected"): TO_STOPPING_FROM_STREAMING,
    ("streaming", "drained"): IGNORED,
    ("streaming", "connected"): IGNORED,
    ("streaming", "connect_failed"): IGNORED,
    ("streaming", "server_lost"): GONE_FROM_STREAMING,
    ("streaming", "stream_reset"): GONE_FROM_STREAMING,
    ("streaming", "stream_ended"): WAIT_AFTER_STREAM,
    ("streaming", "backoff_elapsed"): IGNORED,
    ("streaming", "server_reachable"): IGNORED,
    # after_answer: only the backoff ends the wait; failing heartbeats start the probe while the
    # backoff goes on (nothing of reconnecting is left).
    ("after_answer", "start"): IGNORED,
    ("after_answer", "stop"): TO_STOPPING_AFTER_ANSWER,
    ("after_answer", "rejected"): TO_STOPPING_AFTER_ANSWER,
    ("after_answer", "drained"): IGNORED,
    ("after_answer", "connected"): IGNORED,
    ("after_answer", "connect_failed"): IGNORED,
    ("after_answer", "server_lost"): IGNORED,
    ("after_answer", "stream_reset"): Outcome("server_gone", started=("probe",)),
    ("after_answer", "stream_ended"): IGNORED,
    ("after_answer", "backoff_elapsed"): Outcome(
        "connecting", cancelled=("backoff",), started=("connect",)
    ),
    ("after_answer", "server_reachable"): IGNORED,
    # server_gone: the backoff elapses, or the probe got through and cuts it short.
    ("server_gone", "start"): IGNORED,
    ("server_gone", "stop"): TO_STOPPING_SERVER_GONE,
    ("server_gone", "rejected"): TO_STOPPING_SERVER_GONE,
    ("server_gone", "drained"): IGNORED,
    ("server_gone", "connected"): IGNORED,
    ("server_gone", "connect_failed"): IGNORED,
    ("server_gone", "server_lost"): IGNORED,
    ("server_gone", "stream_reset"): IGNORED,
    ("server_gone", "stream_ended"): IGNORED,
    ("server_gone", "backoff_elapsed"): Outcome(
        "connecting", cancelled=("probe", "backoff"), started=("connect",)
    ),
    ("server_gone", "server_reachable"): Outcome(
        "connecting", cancelled=("probe", "backoff"), started=("connect",)
    ),
    # stopping: only the drain's end does anything.
    ("stopping", "start"): IGNORED,
    ("stopping", "stop"): IGNORED,
    ("stopping", "rejected"): IGNORED,
    ("stopping", "drained"): Outcome("stopped", cancelled=("drain",)),
    ("stopping", "connected"): IGNORED,
    ("stopping", "connect_failed"): IGNORED,
    ("stopping", "server_lost"): IGNORED,
    ("stopping", "stream_reset"): IGNORED,
    ("stopping", "stream_ended"): IGNORED,
    ("stopping", "backoff_elapsed"): IGNORED,
    ("stopping", "server_reachable"): IGNORED,
}


def test_the_lifecycle_has_six_configurations_and_eleven_events() -> None:
    assert LIFECYCLE.configurations() == (
        ("stopped",),
        ("running", "connecting"),
        ("running", "streaming"),
        ("running", "reconnecting", "after_answer"),
        ("running", "reconnecting", "server_gone"),
        ("stopping",),
    )
    assert LIFECYCLE.events() == (
        "backoff_elapsed",
        "connect_failed",
        "connected",
        "drained",
        "rejected",
        "server_lost",
        "server_reachable",
        "start",
        "stop",
        "stream_ended",
        "stream_reset",
    )
    assert len(EXPECTED) == 66


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

    @invariant()
    def the_probe_runs_exactly_while_the_server_is_gone(self) -> None:
        gone = "server_gone" in self.machine.configuration_values
        assert self.open_activities["probe"] == (1 if gone else 0)
        if gone:
            # The probe only ever shortens a backoff under way, never replaces it.
            assert self.open_activities["backoff"] == 1


TestLifecycleRandomEvents = LifecycleMachine.TestCase
TestLifecycleRandomEvents.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
