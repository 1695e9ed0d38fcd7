"""Run a chart on anyio, with states that own cancellable task scopes.

Theory of operation
-------------------
An :class:`Actor` runs one python-statemachine chart (through its
:class:`~pullwake.machines.ChartSpec`) and nothing else:

- **One mailbox.** Events come from the application (:meth:`Actor.send_nowait`,
  :meth:`Actor.send`) and from activities (:meth:`ActivityContext.send`, or an activity's
  outcome). A single task takes them one at a time and processes each to completion before the
  next: the chart's transition, then cancelling what the exited states owned (waiting until
  those tasks have really ended), then starting what the entered states own.
- **States own task scopes.** Entering a state starts each of its activities in its own
  :class:`anyio.CancelScope`; leaving the state cancels those scopes with a recorded reason
  ("left connecting on stream_reset"). So a ``stream_reset`` aborts a connect that hangs, and a
  ``stop`` ends everything ``running`` started.
- **Late results are dropped.** Every activity run has a token. An event posted with a token
  is delivered only if that run's state is still active when the event is *processed*; an
  outcome that races with the cancellation of its scope is dropped and counted, never delivered.
- **Activities cannot crash the actor.** An activity that raises sends its ``error`` event
  (the exception travels in the :class:`TransitionRecord`); with no ``error`` event declared,
  the failure is recorded and counted and the actor carries on. Cancellation is never caught
  except to let the scope absorb its own cancellation.
- **Inspection.** Every processed event produces a :class:`TransitionRecord` (from, event, to,
  scopes started and cancelled, why) handed to the ``inspect`` hook, for logs and diagnostics.

It deliberately uses none of python-statemachine's async engine, ``invoke`` or delayed events:
those are bound to asyncio or threads. The chart here is synchronous and passive; all
concurrency is anyio's, so the actor runs unchanged on asyncio and trio.

What may never happen: a task of a state still running after the actor has processed the event
that left the state (unless it ignored cancellation past ``exit_timeout``, which is recorded as
a leak); an event from a cancelled run changing the configuration; an undeclared event accepted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Literal

import anyio
import attrs
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pullwake.machines import ChartSpec, StepRecorder, UnknownEventError

from .clock import Clock, SystemClock
from .errors import ActorError

__all__ = [
    "ActivityContext",
    "ActivityFn",
    "Actor",
    "ActorStatistics",
    "Outcome",
    "TransitionRecord",
]

logger = logging.getLogger("pullwake.actor")


@attrs.frozen
class Outcome:
    """An activity's result that names its event and the failure behind it.

    The error travels with the event into its :class:`TransitionRecord`, so whoever reads the
    records learns *why* (the ``rejected`` event carries the refusal) without a side channel.
    """

    event: str
    error: BaseException | None = None


#: An activity: runs while its state is active; returns the event to send (``None`` means the
#: activity's declared ``done`` event; an :class:`Outcome` names an event with its error) or
#: raises (its declared ``error`` event).
ActivityFn = Callable[["ActivityContext"], Awaitable[str | Outcome | None]]

Kind = Literal["transition", "ignored", "dropped", "failed", "finished"]


@attrs.frozen
class TransitionRecord:
    """What the actor did with one event (or one activity outcome).

    ``kind``: ``"transition"`` (the configuration changed, or a self-transition ran),
    ``"ignored"`` (the chart ignores the event here), ``"dropped"`` (a late event from a
    cancelled run), ``"failed"`` (an activity raised and declares no error event),
    ``"finished"`` (an activity returned and declares no done event).
    """

    kind: Kind
    event: str | None
    source: tuple[str, ...]
    target: tuple[str, ...]
    started: tuple[str, ...] = ()
    #: Activities whose scopes this event cancelled (those still running when their state was
    #: left; one that had already returned is simply forgotten).
    cancelled: tuple[str, ...] = ()
    #: Why the scopes in ``cancelled`` were cancelled, or why the event was dropped.
    reason: str = ""
    #: ``"external"`` or the name of the activity that sent the event.
    origin: str = "external"
    error: BaseException | None = None
    #: Activities that ignored cancellation for longer than ``exit_timeout``.
    leaked: tuple[str, ...] = ()
    at: float = 0.0


@attrs.define
class ActorStatistics:
    """Counters since the actor was created."""

    events: int = 0
    transitions: int = 0
    ignored: int = 0
    dropped: int = 0
    activity_failures: int = 0
    activities_started: int = 0
    activities_cancelled: int = 0
    leaked: int = 0


@attrs.define(eq=False)
class _Envelope:
    event: str
    origin: str
    token: int | None
    error: BaseException | None = None
    # Set once the envelope has been processed, for ``Actor.send``.
    processed: anyio.Event | None = None
    result: list[TransitionRecord] | None = None


class _Run:
    """One running activity: its scope, its task's end, its token."""

    def __init__(self, token: int, name: str, state: str) -> None:
        self.token = token
        self.name = name
        self.state = state
        self.scope = anyio.CancelScope()
        self.finished = anyio.Event()
        # Invariant: set when the scope was cancelled by the actor, with the reason.
        self.cancel_reason: str | None = None


class ActivityContext:
    """What an activity gets: its identity, the clock, and a way to send events.

    Events sent here are delivered only while the activity's state is still active; after the
    state is left they are dropped (and counted), so a slow activity can never act on a
    configuration it no longer belongs to.
    """

    def __init__(self, actor: Actor, run: _Run) -> None:
        self._actor = actor
        self._run = run

    @property
    def name(self) -> str:
        return self._run.name

    @property
    def state(self) -> str:
        return self._run.state

    @property
    def clock(self) -> Clock:
        return self._actor.clock

    @property
    def cancel_scope(self) -> anyio.CancelScope:
        return self._run.scope

    def send(self, event: str, *, error: BaseException | None = None) -> None:
        """Post ``event`` on behalf of this activity (dropped if its state was left)."""
        self._actor._post(event, origin=self._run.name, token=self._run.token, error=error)

    def __repr__(self) -> str:
        return f"ActivityContext({self._run.name!r} of {self._run.state!r})"


class Actor:
    """Run a chart: one mailbox, states owning activities, late results dropped.

    ``activities`` maps every activity name of ``spec`` to its function; a missing or extra
    name is refused at construction. ``exit_timeout`` bounds how long the actor waits, in real
    time, for a cancelled activity to end before recording it as leaked and moving on.

    Use as ``async with Actor(...) as actor:``; leaving the block cancels every activity and
    waits for them (bounded by ``exit_timeout``).
    """

    def __init__(
        self,
        spec: ChartSpec,
        activities: Mapping[str, ActivityFn],
        *,
        clock: Clock | None = None,
        inspect: Callable[[TransitionRecord], None] | None = None,
        exit_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        declared = {a.name for owned in spec.activities.values() for a in owned}
        missing = declared - set(activities)
        extra = set(activities) - declared
        if missing or extra:
            raise ActorError(
                f"the activity table for chart {spec.name!r} must name exactly its activities; "
                f"missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        self.spec = spec
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.name = name or spec.name
        self._activities = dict(activities)
        self._inspect = inspect
        self._exit_timeout = exit_timeout
        self._recorder = StepRecorder()
        self._machine = spec.new(listeners=[self._recorder])
        self._recorder.take()
        # Invariant: the configuration as of the last *fully processed* event (the chart's own
        # configuration moves earlier, while exited activities are still being awaited).
        self._configuration = spec.initial_configuration()
        self._events = frozenset(spec.events())
        self._tokens = itertools.count(1)
        # Invariant: holds exactly the runs of the active states' activities (a run whose task
        # has returned stays here until its state is left, so its outcome can be delivered).
        self._runs: dict[int, _Run] = {}
        self._stats = ActorStatistics()
        self._changed: anyio.Event | None = None
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._send_stream: MemoryObjectSendStream[_Envelope] | None = None
        self._closed = False
        # Invariant: the envelopes whose sender waits in send() and that are not processed yet.
        self._awaited: set[_Envelope] = set()

    # -- public view -----------------------------------------------------------------------

    @property
    def configuration(self) -> tuple[str, ...]:
        """The active states, outermost first (``("running", "streaming")``).

        It changes only once an event is fully processed: the exited states' activities have
        ended and the entered states' activities have started.
        """
        return self._configuration

    @property
    def state(self) -> str:
        """The active leaf state."""
        return self.configuration[-1]

    def open_activities(self) -> tuple[str, ...]:
        """Names of activity tasks that are still running (their task has not ended)."""
        return tuple(r.name for r in self._runs.values() if not r.finished.is_set())

    def owned_activities(self) -> tuple[str, ...]:
        """Names of the activities the active states own (running or already returned)."""
        return tuple(r.name for r in self._runs.values())

    def statistics(self) -> ActorStatistics:
        """Return a copy of the counters."""
        return attrs.evolve(self._stats)

    # -- sending ---------------------------------------------------------------------------

    def send_nowait(self, event: str, *, error: BaseException | None = None) -> None:
        """Queue ``event`` (with the failure behind it, if any); never blocks.

        Raises for undeclared events.
        """
        self._post(event, origin="external", token=None, error=error)

    async def send(self, event: str) -> TransitionRecord:
        """Queue ``event`` and wait until it has been processed; return what it did."""
        self._check_event(event)
        envelope = _Envelope(event, "external", None, processed=anyio.Event(), result=[])
        self._enqueue(envelope)
        assert envelope.processed is not None
        assert envelope.result is not None
        self._awaited.add(envelope)
        try:
            await envelope.processed.wait()
        finally:
            self._awaited.discard(envelope)
        if not envelope.result:
            raise ActorError(f"the actor {self.name!r} closed before it processed {event!r}")
        return envelope.result[0]

    async def wait_state(self, state: str) -> None:
        """Wait until ``state`` (a leaf or compound state id) is active."""
        if state not in self.spec.states():
            raise ValueError(f"chart {self.spec.name!r} has no state {state!r}")
        while state not in self.configuration:
            if self._closed:
                raise ActorError(f"the actor {self.name!r} closed before reaching {state!r}")
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> Actor:
        if self._stack is not None or self._closed:
            raise ActorError(f"the actor {self.name!r} can be entered only once")
        send, receive = anyio.create_memory_object_stream[_Envelope](math.inf)
        self._send_stream = send
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        self._tg.start_soon(self._loop, receive, name=f"{self.name}-mailbox")
        initial = self.configuration
        for name in self.spec.activities_of(initial):
            self._start(name, self.spec.owner(name))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        assert self._tg is not None
        assert self._send_stream is not None
        try:
            with anyio.CancelScope(shield=True):
                self._closed = True
                self._send_stream.close()
                leaked = await self._cancel(tuple(self._runs.values()), "actor closed")
                if leaked:
                    logger.warning("%s: activities ignored cancellation: %s", self.name, leaked)
            self._tg.cancel_scope.cancel(reason="actor closed")
        finally:
            self._notify()
            result = await self._stack.__aexit__(exc_type, exc, tb)
            for envelope in tuple(self._awaited):
                assert envelope.processed is not None
                envelope.processed.set()
        return result

    # -- internals -------------------------------------------------------------------------

    def _check_event(self, event: str) -> None:
        if event not in self._events:
            raise UnknownEventError(
                f"chart {self.spec.name!r} declares no event {event!r}; declared: "
                f"{', '.join(sorted(self._events))}"
            )

    def _post(
        self, event: str, *, origin: str, token: int | None, error: BaseException | None = None
    ) -> None:
        self._check_event(event)
        self._enqueue(_Envelope(event, origin, token, error))

    def _enqueue(self, envelope: _Envelope) -> None:
        if self._send_stream is None:
            raise ActorError(f"the actor {self.name!r} is not running; use 'async with'")
        try:
            self._send_stream.send_nowait(envelope)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            if envelope.token is None:
                raise ActorError(f"the actor {self.name!r} has closed") from None
            # An activity finishing while the actor closes: nothing is left to deliver to.

    async def _loop(self, receive: MemoryObjectReceiveStream[_Envelope]) -> None:
        async with receive:
            async for envelope in receive:
                record = await self._process(envelope)
                if envelope.result is not None:
                    envelope.result.append(record)
                if envelope.processed is not None:
                    envelope.processed.set()

    async def _process(self, envelope: _Envelope) -> TransitionRecord:
        self._stats.events += 1
        source = self.configuration
        if envelope.token is not None and envelope.token not in self._runs:
            self._stats.dropped += 1
            return self._emit(
                TransitionRecord(
                    "dropped",
                    envelope.event,
                    source,
                    source,
                    reason="late event from a cancelled activity",
                    origin=envelope.origin,
                    error=envelope.error,
                    at=self.clock.now(),
                )
            )
        decision = self.spec.step(self._machine, self._recorder, envelope.event)
        if decision.kind == "ignored":
            self._stats.ignored += 1
            return self._emit(
                TransitionRecord(
                    "ignored",
                    envelope.event,
                    source,
                    source,
                    origin=envelope.origin,
                    error=envelope.error,
                    at=self.clock.now(),
                )
            )
        self._stats.transitions += 1
        reason = f"left {'/'.join(decision.exited)} on {envelope.event}"
        exited = set(decision.exited)
        leaving = tuple(r for r in self._runs.values() if r.state in exited)
        cancelled = tuple(r.name for r in leaving if not r.finished.is_set())
        leaked = await self._cancel(leaving, reason)
        started = tuple(
            self._start(a.name, state).name
            for state in decision.entered
            for a in self.spec.activities.get(state, ())
        )
        record = TransitionRecord(
            "transition",
            envelope.event,
            source,
            decision.configuration,
            started=started,
            cancelled=cancelled,
            reason=reason,
            origin=envelope.origin,
            error=envelope.error,
            leaked=leaked,
            at=self.clock.now(),
        )
        self._configuration = decision.configuration
        self._notify()
        return self._emit(record)

    def _emit(self, record: TransitionRecord) -> TransitionRecord:
        if self._inspect is not None:
            self._inspect(record)
        return record

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _start(self, name: str, state: str) -> _Run:
        assert self._tg is not None
        run = _Run(next(self._tokens), name, state)
        self._runs[run.token] = run
        self._stats.activities_started += 1
        self._tg.start_soon(self._run_activity, run, name=f"{self.name}:{name}")
        return run

    async def _cancel(self, runs: tuple[_Run, ...], reason: str) -> tuple[str, ...]:
        """Cancel ``runs``, wait (bounded) until their tasks end, forget them; return leaks."""
        for run in runs:
            self._runs.pop(run.token, None)
            if not run.finished.is_set():
                run.cancel_reason = reason
                run.scope.cancel(reason=reason)
                self._stats.activities_cancelled += 1
        leaked: list[str] = []
        with anyio.move_on_after(self._exit_timeout):
            for run in runs:
                await run.finished.wait()
        for run in runs:
            if not run.finished.is_set():
                leaked.append(run.name)
        self._stats.leaked += len(leaked)
        return tuple(leaked)

    async def _run_activity(self, run: _Run) -> None:
        activity = self.spec.activity(run.name)
        fn = self._activities[run.name]
        try:
            with run.scope:
                try:
                    outcome = await fn(ActivityContext(self, run))
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:
                    self._activity_failed(run, activity.error, exc)
                    return
                error: BaseException | None = None
                if isinstance(outcome, Outcome):
                    event: str | None = outcome.event
                    error = outcome.error
                else:
                    event = outcome if outcome is not None else activity.done
                if event is not None:
                    self._post(event, origin=run.name, token=run.token, error=error)
                else:
                    self._emit(
                        TransitionRecord(
                            "finished",
                            None,
                            self.configuration,
                            self.configuration,
                            reason=f"activity {run.name!r} returned and declares no done event",
                            origin=run.name,
                            at=self.clock.now(),
                        )
                    )
        finally:
            run.finished.set()

    def _activity_failed(self, run: _Run, error_event: str | None, exc: Exception) -> None:
        if error_event is not None:
            self._post(error_event, origin=run.name, token=run.token, error=exc)
            return
        self._stats.activity_failures += 1
        logger.error("%s: activity %r failed: %r", self.name, run.name, exc)
        self._emit(
            TransitionRecord(
                "failed",
                None,
                self.configuration,
                self.configuration,
                reason=f"activity {run.name!r} raised and declares no error event",
                origin=run.name,
                error=exc,
                at=self.clock.now(),
            )
        )

    def __repr__(self) -> str:
        return f"<Actor {self.name!r} {list(self.configuration)}>"


def describe(record: TransitionRecord) -> str:
    """Return a one-line human description of a record, for logs and the demo."""
    if record.kind == "transition":
        parts = [f"{'/'.join(record.source)} --{record.event}--> {'/'.join(record.target)}"]
        if record.cancelled:
            parts.append(f"cancelled {list(record.cancelled)}")
        if record.started:
            parts.append(f"started {list(record.started)}")
        if record.error is not None:
            parts.append(f"because {record.error!r}")
        return "; ".join(parts)
    return f"{record.kind} {record.event or ''} in {'/'.join(record.source)} ({record.reason})"
