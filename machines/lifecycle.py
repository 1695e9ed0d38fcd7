"""The pull-wake lifecycle: one chart, its activity table and its ignore table.

Theory of operation
-------------------
A runner is ``stopped`` until ``start``. While ``running`` it holds one wake stream open and
heartbeats the server; ``running`` is compound:

- ``connecting``: one attempt to open the SSE wake stream. ``connected`` moves on to
  ``streaming``. A failure goes to ``reconnecting``, into the child that says why: the server
  *answered* with an error (``connect_failed``: an HTTP error, a protocol violation) or gave
  *no answer* (``server_lost``: refused, reset, timed out; or ``stream_reset`` from the
  heartbeat, which is how a *hung* connect gets aborted).
- ``streaming``: the wake stream is open and read. ``stream_ended`` (a clean end, an HTTP or
  protocol error) means the server answered; ``server_lost`` (silence past the read timeout, a
  broken connection) and ``stream_reset`` (heartbeats say the server is gone) mean it did not.
- ``reconnecting``: a backoff timer (``backoff_elapsed`` tries again), itself compound:

  - ``after_answer`` (its initial child): the server is up and answered with an error, so the
    backoff alone paces the retries; nothing ends the wait early. A later ``stream_reset``
    (the heartbeats lost the server meanwhile) moves to ``server_gone``, the backoff going on.
  - ``server_gone``: the server gave no answer. A fast probe runs; the first exchange that
    gets through sends ``server_reachable``, which cuts the backoff short.

``rejected`` (a permanent refusal such as 401/403, or a configuration the server will never
accept; the error travels with the event) and ``stop`` leave ``running`` for ``stopping``,
whose drain lets handlers finish, releases claims and sends the final heartbeat, then reports
``drained`` and the chart rests in ``stopped``.

What owns what: ``running`` owns the heartbeat loop (one interval, always), so it survives
reconnects but not a stop; ``connecting`` and ``streaming`` own the one activity that defines
them; ``reconnecting`` owns the backoff, so moving from ``after_answer`` to ``server_gone``
keeps the wait under way; ``server_gone`` owns the probe; ``stopping`` owns the drain. Leaving a
state cancels what it owns (the runtime enforces this), so no connect, read, backoff or probe
outlives the state that started it.

What may never happen: an event that the tables below do not decide (the spec refuses to build);
the runtime keeping its own note of *why* it reconnects (this chart's configuration is that
note); work per wake passing through this chart (wakes and claims are data, handled by the
runtime at full speed; the chart sees only lifecycle events).
"""

from __future__ import annotations

from statemachine import State, StateChart

from .spec import Activity, ChartSpec

__all__ = ["LIFECYCLE", "Lifecycle"]


class Lifecycle(StateChart):  # type: ignore[type-arg]
    """The lifecycle chart of a pull-wake runner; see the module docstring."""

    # Nothing fails silently: an event with no transition raises (the actor then consults the
    # ignore table), and an exception in a callback propagates instead of becoming an event.
    allow_event_without_transition = False
    catch_errors_as_events = False

    stopped = State(initial=True)

    class running(State.Compound):  # state ids are lower_snake, even for a class
        connecting = State(initial=True)
        streaming = State()

        class reconnecting(State.Compound):
            after_answer = State(initial=True)
            server_gone = State()

        connected = connecting.to(streaming)
        connect_failed = connecting.to(reconnecting.after_answer)
        server_lost = connecting.to(reconnecting.server_gone) | streaming.to(
            reconnecting.server_gone
        )
        stream_reset = (
            connecting.to(reconnecting.server_gone)
            | streaming.to(reconnecting.server_gone)
            | reconnecting.after_answer.to(reconnecting.server_gone)
        )
        stream_ended = streaming.to(reconnecting.after_answer)
        backoff_elapsed = reconnecting.to(connecting)
        server_reachable = reconnecting.server_gone.to(connecting)

    stopping = State()

    start = stopped.to(running)
    stop = running.to(stopping)
    rejected = running.to(stopping)
    drained = stopping.to(stopped)


#: Which state owns which activity, and which event each outcome sends. An activity may name
#: another outcome itself (``connect`` returns ``server_lost`` or ``rejected`` by the failure).
ACTIVITIES: dict[str, tuple[Activity, ...]] = {
    "running": (Activity("heartbeat"),),
    "connecting": (Activity("connect", done="connected", error="connect_failed"),),
    "streaming": (Activity("read_stream", done="stream_ended", error="stream_ended"),),
    "reconnecting": (Activity("backoff", done="backoff_elapsed"),),
    "server_gone": (Activity("probe", done="server_reachable"),),
    "stopping": (Activity("drain", done="drained", error="drained"),),
}

#: The outcomes that only some activity sends: late ones arriving after their state was left.
_RUN_OUTCOMES = frozenset(
    {
        "connected",
        "connect_failed",
        "server_lost",
        "stream_reset",
        "stream_ended",
        "backoff_elapsed",
        "server_reachable",
    }
)

#: Events each state deliberately ignores (a state's entry covers its descendants).
IGNORED: dict[str, frozenset[str]] = {
    # Stopped: only ``start`` means anything; late outcomes of a finished run are dropped.
    "stopped": frozenset({"stop", "rejected", "drained"}) | _RUN_OUTCOMES,
    # Running: already started; a drain belongs to stopping.
    "running": frozenset({"start", "drained"}),
    # Each child ignores the outcomes that belong to its siblings' activities.
    "connecting": frozenset({"stream_ended", "backoff_elapsed", "server_reachable"}),
    "streaming": frozenset({"connected", "connect_failed", "backoff_elapsed", "server_reachable"}),
    # Waiting to reconnect: late outcomes of the connect or the read change nothing.
    "reconnecting": frozenset({"connected", "connect_failed", "server_lost", "stream_ended"}),
    # After an answer nothing cuts the wait: a probe result belongs to server_gone.
    "after_answer": frozenset({"server_reachable"}),
    # The server is already known to be gone: another reset changes nothing.
    "server_gone": frozenset({"stream_reset"}),
    # Stopping: a second stop or a refusal during the drain changes nothing; a start waits for
    # ``stopped`` (the runner's start() waits for the drain before starting again).
    "stopping": frozenset({"start", "stop", "rejected"}) | _RUN_OUTCOMES,
}

#: The lifecycle chart with its tables: what the runtime runs and the tests check.
LIFECYCLE = ChartSpec(Lifecycle, ACTIVITIES, IGNORED, name="lifecycle")
