"""The pull-wake lifecycle: one chart, its activity table and its ignore table.

Theory of operation
-------------------
A runner is ``stopped`` until ``start``. While ``running`` it holds one wake stream open and
heartbeats the server; ``running`` is compound:

- ``connecting``: one attempt to open the SSE wake stream. ``connected`` moves on to
  ``streaming``; ``connect_failed`` (or a ``stream_reset`` from the heartbeat, which is how a
  *hung* connect gets aborted) goes to ``reconnecting``.
- ``streaming``: the wake stream is open and read. It ends with ``stream_ended`` (EOF, silence
  past the read timeout, a read error) or ``stream_reset`` (heartbeats say the server is gone).
- ``reconnecting``: a backoff timer. ``backoff_elapsed`` tries again; ``server_reachable`` (a
  heartbeat got through) skips the rest of the wait.

``rejected`` (a permanent refusal such as 401/403) and ``stop`` leave ``running`` for
``stopping``, whose drain lets handlers finish, releases claims and sends the final heartbeat,
then reports ``drained`` and the chart rests in ``stopped``.

What owns what: ``running`` owns the heartbeat loop, so it survives reconnects but not a stop;
each child owns the one activity that defines it; ``stopping`` owns the drain. Leaving a state
cancels what it owns (the runtime enforces this), so no connect, read or backoff outlives the
state that started it.

What may never happen: an event that the tables below do not decide (the spec refuses to build);
work per wake passing through this chart (wakes and claims are data, handled by the runtime at
full speed; the chart sees only lifecycle events).
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
        reconnecting = State()

        connected = connecting.to(streaming)
        connect_failed = connecting.to(reconnecting)
        stream_reset = connecting.to(reconnecting) | streaming.to(reconnecting)
        stream_ended = streaming.to(reconnecting)
        backoff_elapsed = reconnecting.to(connecting)
        server_reachable = reconnecting.to(connecting)

    stopping = State()

    start = stopped.to(running)
    stop = running.to(stopping)
    rejected = running.to(stopping)
    drained = stopping.to(stopped)


#: Which state owns which activity, and which event each outcome sends.
ACTIVITIES: dict[str, tuple[Activity, ...]] = {
    "running": (Activity("heartbeat"),),
    "connecting": (Activity("connect", done="connected", error="connect_failed"),),
    "streaming": (Activity("read_stream", done="stream_ended", error="stream_ended"),),
    "reconnecting": (Activity("backoff", done="backoff_elapsed"),),
    "stopping": (Activity("drain", done="drained", error="drained"),),
}

#: Events each state deliberately ignores (a state's entry covers its descendants).
IGNORED: dict[str, frozenset[str]] = {
    # Stopped: only ``start`` means anything; late outcomes of a finished run are dropped.
    "stopped": frozenset(
        {
            "stop",
            "rejected",
            "drained",
            "connected",
            "connect_failed",
            "stream_reset",
            "stream_ended",
            "backoff_elapsed",
            "server_reachable",
        }
    ),
    # Running: already started; a drain belongs to stopping.
    "running": frozenset({"start", "drained"}),
    # Each child ignores the outcomes that belong to its siblings' activities.
    "connecting": frozenset({"stream_ended", "backoff_elapsed", "server_reachable"}),
    "streaming": frozenset({"connected", "connect_failed", "backoff_elapsed", "server_reachable"}),
    # A reset while already waiting to reconnect changes nothing: the backoff goes on.
    "reconnecting": frozenset({"connected", "connect_failed", "stream_reset", "stream_ended"}),
    # Stopping: a second stop or a refusal during the drain changes nothing; a start waits for
    # ``stopped`` (the runner's start() waits for the drain before starting again).
    "stopping": frozenset(
        {
            "start",
            "stop",
            "rejected",
            "connected",
            "connect_failed",
            "stream_reset",
            "stream_ended",
            "backoff_elapsed",
            "server_reachable",
        }
    ),
}

#: The lifecycle chart with its tables: what the runtime runs and the tests check.
LIFECYCLE = ChartSpec(Lifecycle, ACTIVITIES, IGNORED, name="lifecycle")
