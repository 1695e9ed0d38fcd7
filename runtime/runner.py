"""Run the pull-wake lifecycle for an application: the :class:`Runner` apps embed.

Theory of operation
-------------------
The runner *is* the lifecycle chart (:mod:`pullwake.machines.lifecycle`) run by an
:class:`~pullwake.runtime.actor.Actor`; it adds no lifecycle state of its own. What it adds are
the chart's five activities and the per-run objects they share:

- ``heartbeat`` (owned by ``running``): :mod:`.heartbeat`; registers the runner first and
  beats every ``heartbeat_interval``; failing beats send ``stream_reset``.
- ``connect`` (``connecting``): registers if needed, creates the declared subscriptions, loads
  the resume offset, opens the SSE wake stream and leaves the accepted response in the run's
  **slot**. Its outcome names the failure: ``rejected`` (with the error) on a 401/403 or a
  configuration the server will never accept, ``server_lost`` when no answer came, and
  ``connect_failed`` (it raises) on an answer that was an error. A ``stream_reset`` from the
  heartbeat cancels a connect that hangs.
- ``read_stream`` (``streaming``): takes the response from the slot, beats the heartbeat now,
  reads ``data`` and ``control`` events, hands each wake to the claim pipeline with a ticket of
  the :class:`~.offsets.WakeCursor`, and checkpoints the cursor at each control event. A read
  timeout (silence) or a broken connection end it with ``server_lost``; EOF or an error answer
  with ``stream_ended``.
- ``backoff`` (``reconnecting``): waits a jittered exponential delay (small first step, capped,
  reset once a new stream delivered its first control event) and moves to the next server URL.
- ``probe`` (``server_gone``, a child of ``reconnecting``): :meth:`.Heartbeat.probe`, a fast
  probe whose first success (``server_reachable``) cuts the backoff short. After an answer
  (``after_answer``) no probe runs, so a server that keeps refusing the wake stream is never
  asked again any sooner than the backoff says.
- ``drain`` (``stopping``): closes the claim pipeline (handlers get ``grace`` seconds, then are
  cancelled; every unfinished claim is released), saves the committed offset, sends the final
  heartbeat with status ``stopped`` and closes the HTTP client; then the chart rests in
  ``stopped``.

Every activity starts by closing a response left in the slot, so a connection opened by a
connect whose ``connected`` event lost a race with ``stream_reset`` never leaks.

Per-wake work never goes through the chart: wakes and claims flow from ``read_stream`` to the
:class:`~.claims.ClaimPipeline`, whose host task lives in the runner's own task group for the
length of one run (it must outlive reconnects, and handlers get their grace at stop).

One run is everything from ``start()`` to the ``drained`` event: a fresh HTTP client, pipeline,
cursor and slot, all closed by the drain. Nothing is global, so stopping and starting again,
in one process, stacks nothing.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
from anyio.abc import TaskGroup

from pullwake.machines.lifecycle import LIFECYCLE

from .actor import ActivityContext, Actor, ActorStatistics, Outcome, TransitionRecord, describe
from .backoff import Backoff
from .claims import ClaimPipeline, ClaimSettings, ClaimStatistics, Handler, Wake, wall_time
from .client import (
    START_OFFSET,
    Client,
    ControlEvent,
    DataEvent,
    Timeouts,
    WakeStreamConnection,
    describe_failure,
)
from .clock import Clock, SystemClock
from .diagnostics import Diagnostics
from .errors import (
    Conflict,
    NotFound,
    Rejected,
    RequestFailed,
    RunnerError,
    RunnerNotRunning,
    RuntimeFailure,
    ServerUnreachable,
    StopTimeout,
)
from .heartbeat import Heartbeat
from .offsets import (
    FileOffsetStore,
    OffsetStore,
    RegistryOffsetStore,
    WakeCursor,
    default_offset_path,
)

__all__ = ["Runner", "RunnerSettings", "RunnerStatistics", "SubscriptionSpec"]

logger = logging.getLogger("pullwake.runner")


@attrs.frozen
class SubscriptionSpec:
    """A pull-wake subscription the runner creates (or re-confirms) when it connects.

    ``wake_stream`` defaults to the runner's. Give ``pattern`` (a glob: ``*`` one segment,
    ``**`` any) or ``streams`` (explicit paths), or both.
    """

    id: str
    pattern: str | None = None
    streams: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    lease_ttl_ms: int | None = None
    description: str | None = None
    wake_stream: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.id:
            raise ValueError("a subscription needs an id")
        if self.pattern is None and not self.streams:
            raise ValueError(f"subscription {self.id!r} needs a pattern or streams")

    def body(self, wake_stream: str) -> dict[str, Any]:
        """Return the PUT body for this subscription."""
        body: dict[str, Any] = {"wake_stream": self.wake_stream or wake_stream}
        if self.pattern is not None:
            body["pattern"] = self.pattern
        if self.streams:
            body["streams"] = list(self.streams)
        if self.lease_ttl_ms is not None:
            body["lease_ttl_ms"] = self.lease_ttl_ms
        if self.description is not None:
            body["description"] = self.description
        return body


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value!r}")


def _positive_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: float | None
) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0 or None, got {value!r}")


@attrs.frozen
class RunnerSettings:
    """Every tunable of a runner, with production defaults; tests shrink them.

    Delays (heartbeat and probe intervals, backoffs) are in clock seconds; timeouts and stop
    bounds are in real seconds.
    """

    #: Seconds between heartbeats; also how often liveness is probed.
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    #: Bound on one heartbeat; ``None`` means the interval.
    heartbeat_timeout: float | None = None
    #: The lease the heartbeat asks for; ``None`` means three intervals (at least 1 s).
    lease_ms: int | None = None
    #: Consecutive heartbeat failures that reset the wake stream (abort a hung connect).
    failures_before_reset: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    #: Connect, read (silence on the wake stream) and request timeouts.
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    #: Reconnect backoff of the wake stream.
    backoff: Backoff = attrs.field(factory=lambda: Backoff(initial=0.1, maximum=30.0))
    #: In ``server_gone`` (reconnecting to a server that gave no answer), probe this often
    #: (each pause drawn between half of it and all of it), so the first probe that gets
    #: through ends the backoff within about this long of the server's return, however far the
    #: backoff has grown. ``None`` probes every ``heartbeat_interval``.
    reconnect_probe_interval: float | None = attrs.field(default=0.5, validator=_positive_or_none)
    #: The claim pipeline's tunables (concurrency is overridden by ``Runner(concurrency=)``).
    claims: ClaimSettings = attrs.field(factory=ClaimSettings)
    #: After ``grace``: real seconds for cancelled handlers to end, and again for the final
    #: releases and heartbeat. ``stop()`` returns within ``grace + 3 * stop_bound``.
    stop_bound: float = attrs.field(default=1.0, validator=_positive)
    #: How long the actor waits for an activity that ignores cancellation.
    exit_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Where a runner with no saved offset starts reading its wake stream.
    initial_offset: str = START_OFFSET

    def heartbeat_bound(self) -> float:
        return self.heartbeat_timeout or self.heartbeat_interval

    def heartbeat_lease_ms(self) -> int:
        """Return the lease to ask for: three intervals, at least the 1 s servers accept."""
        return self.lease_ms or max(1000, int(self.heartbeat_interval * 3000))


@attrs.frozen
class RunnerStatistics:
    """Counters of a runner since it was made (all runs), and of its actor."""

    starts: int
    state: str
    reconnects: int
    claims: ClaimStatistics
    actor: ActorStatistics


class _StreamSlot:
    """Where ``connect`` leaves the open wake stream for ``read_stream``; owned by the run."""

    def __init__(self) -> None:
        # Invariant: an accepted, not yet taken response, or None.
        self._connection: WakeStreamConnection | None = None

    def put(self, connection: WakeStreamConnection) -> None:
        assert self._connection is None, "discard the slot before putting a new connection"
        self._connection = connection

    def take(self) -> WakeStreamConnection | None:
        connection, self._connection = self._connection, None
        return connection

    async def discard(self) -> None:
        """Close a response nobody took (the chart went elsewhere before reading it)."""
        connection = self.take()
        if connection is not None:
            await connection.aclose()


class _RunSession:
    """The objects of one run, from ``start()`` to ``drained``; the heartbeat's host."""

    def __init__(self, runner: Runner, transport: httpx.AsyncBaseTransport | None) -> None:
        settings = runner.settings
        self.runner = runner
        self.runner_id = runner.runner_id
        self.diagnostics = runner.diagnostics
        self.client = Client(
            runner.urls,
            token=runner._token,
            timeouts=settings.timeouts,
            transport=transport,
            ssl_context=runner._ssl_context(),
        )
        self.pipeline = ClaimPipeline(
            self.client,
            runner.handler,
            worker=runner.runner_id,
            settings=attrs.evolve(settings.claims, concurrency=runner.concurrency),
            clock=runner.clock,
            statistics=runner._claim_stats,
            on_rejected=runner._rejected_by_pipeline,
            rng=runner._rng,
        )
        self.heartbeat = Heartbeat(
            self,
            clock=runner.clock,
            interval=settings.heartbeat_interval,
            timeout=settings.heartbeat_bound(),
            lease_ms=settings.heartbeat_lease_ms(),
            failures_before_reset=settings.failures_before_reset,
            probe_interval=settings.reconnect_probe_interval,
            rng=runner._rng,
        )
        self.slot = _StreamSlot()
        # Invariant: None until the first connect loaded the resume offset of this run.
        self.cursor: WakeCursor | None = None
        self._wake_stream = runner.wake_stream
        # Invariant: None until registration was tried; then whether the server has a registry.
        self._registry: bool | None = None
        self._registered = False
        self._subscriptions_ready = False
        self._registry_store = RegistryOffsetStore()
        # Invariant: set once the registry question is answered (or given by the app).
        self.store: OffsetStore | None = runner._offset_store
        self._lock = anyio.Lock()
        # Connect attempts since the last good stream: the backoff exponent.
        self.connect_failures = 0
        # Handlers that ignored cancellation at stop (filled by the drain).
        self.stuck: tuple[str, ...] = ()
        self.closed = False

    # -- HeartbeatHost ---------------------------------------------------------------------

    @property
    def registry(self) -> bool | None:
        return self._registry

    @property
    def wake_stream(self) -> str | None:
        return self._wake_stream

    async def ensure_registered(self) -> None:
        """Register with the server once per run (again after forget_registration())."""
        if self._registered:
            return
        async with self._lock:
            if self._registered:
                return
            runner = self.runner
            try:
                record = await self.client.register(
                    self.runner_id, label=runner.label, wake_stream=self._wake_stream
                )
            except NotFound:
                self._registry = False
                if self.store is None:
                    self.store = FileOffsetStore(default_offset_path(self.runner_id))
                logger.info(
                    "server %s has no runner registry; probing liveness with HEAD and keeping "
                    "the offset in %r",
                    self.client.base_url,
                    self.store,
                )
            else:
                self._registry = True
                if self._wake_stream is None:
                    self._wake_stream = record.wake_stream
                if self.cursor is None:
                    self._registry_store.seed(record.wake_stream_offset)
                if self.store is None:
                    self.store = self._registry_store
            self.diagnostics.registry = self._registry
            self._registered = True

    def forget_registration(self) -> None:
        self._registered = False

    async def persist_offset(self) -> str | None:
        if self.cursor is None:
            return None
        offset = self.cursor.committed
        if self.store is not None:
            await self.store.save(offset)
        return offset

    def report(self) -> dict[str, Any]:
        return self.runner.health()

    # -- connect ---------------------------------------------------------------------------

    async def ensure_ready(self) -> WakeCursor:
        """Register, create the declared subscriptions and load the resume offset (once)."""
        await self.ensure_registered()
        if self._wake_stream is None:
            raise RunnerError(
                f"runner {self.runner_id!r} has no wake stream: pass wake_stream=... (the "
                "server's registry knows none for this runner)"
            )
        if not self._subscriptions_ready:
            for spec in self.runner.subscription_specs:
                created = await self.client.put_subscription(spec.id, spec.body(self._wake_stream))
                logger.info("subscription %r %s", spec.id, "created" if created else "confirmed")
            self._subscriptions_ready = True
        if self.cursor is None:
            assert self.store is not None
            saved = await self.store.load()
            offset = saved or self.runner.settings.initial_offset
            self.cursor = WakeCursor(offset)
            logger.info("reading wake stream %r from offset %s", self._wake_stream, offset)
        return self.cursor

    async def close(self) -> None:
        """Close what the run holds (idempotent): the slot's response and the HTTP client."""
        if self.closed:
            return
        self.closed = True
        await self.slot.discard()
        await self.client.aclose()


class Runner:
    """Keep a handler awake to new work on a Durable Streams server; see the module docstring.

    ``url`` is one server URL or several equivalent ones (servers sharing a database).
    ``handler`` is ``async def handler(claim)``; it runs once per claim, concurrently across
    subscriptions (at most ``concurrency``), one at a time per subscription. ``subscriptions``
    limits which subscriptions this runner handles: ids (existing subscriptions) or
    :class:`SubscriptionSpec` values (created or re-confirmed on connect); ``None`` handles
    every wake on the wake stream. ``grace`` is how long, in seconds, running handlers may take
    to finish when the runner stops. ``offset_store`` defaults to the server's registry, or to
    a local file when the server has none.

    Use ``async with Runner(...) as runner:`` (starts on entry, stops on exit), and within it
    ``await runner.stop()`` / ``await runner.start()`` as often as needed.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        runner_id: str,
        handler: Handler,
        token: str | None = None,
        wake_stream: str | None = None,
        subscriptions: Iterable[str | SubscriptionSpec] | None = None,
        concurrency: int = 8,
        grace: float = 10.0,
        offset_store: OffsetStore | None = None,
        clock: Clock | None = None,
        settings: RunnerSettings | None = None,
        label: str | None = None,
        inspect: Callable[[TransitionRecord], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("give at least one server URL, such as http://127.0.0.1:4437")
        if not runner_id or "/" in runner_id:
            raise ValueError(f"runner_id must be a non-empty name without '/', got {runner_id!r}")
        if not callable(handler):
            raise TypeError("handler must be an async function taking a Claim")
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, got {concurrency}")
        if grace < 0:
            raise ValueError(f"grace must be 0 or more seconds, got {grace}")
        self.urls = tuple(urls)
        self.runner_id = runner_id
        self.handler = handler
        self._token = token
        self.wake_stream = wake_stream
        specs: list[SubscriptionSpec] = []
        ids: set[str] = set()
        for item in subscriptions or ():
            if isinstance(item, SubscriptionSpec):
                specs.append(item)
                ids.add(item.id)
            else:
                ids.add(str(item))
        self.subscription_specs = tuple(specs)
        #: The subscriptions this runner handles (``None``: every wake on its wake stream).
        self.subscription_ids = frozenset(ids) if subscriptions is not None else None
        self.concurrency = concurrency
        self.grace = grace
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or RunnerSettings()
        self.label = label
        self._offset_store = offset_store
        self._inspect_hook = inspect
        self._transport = transport
        self._rng = rng or random.Random()
        self.diagnostics = Diagnostics()
        self._claim_stats = ClaimStatistics()
        self._starts = 0
        self._reconnects = 0
        # Invariant: the run in progress or the last one (closed after its drain); None before
        # the first start.
        self._session: _RunSession | None = None
        # Invariant: the reason the last run stopped by itself (a refusal), until the next start.
        self._error: RuntimeFailure | None = None
        # Invariant: True once stop() raised the current run's problems (not raised again).
        self._reported = False
        self._actor: Actor | None = None
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        # Set by __aexit__ to let the host task (actor and runs) end.
        self._release_host: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        self._changed: anyio.Event | None = None
        # The TLS settings every run's client shares (immutable once made).
        self._ssl: ssl.SSLContext | None = None

    # -- public view -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The chart's leaf state (``streaming``, ``after_answer``, ``server_gone``, ...).

        ``after_answer`` and ``server_gone`` are the children of ``reconnecting``; test for that
        phase with ``"reconnecting" in runner.configuration``.
        """
        return self._actor.state if self._actor is not None else "stopped"

    @property
    def configuration(self) -> tuple[str, ...]:
        return self._actor.configuration if self._actor is not None else ("stopped",)

    @property
    def error(self) -> RuntimeFailure | None:
        """Why the last run stopped by itself (e.g. :class:`Rejected`), or ``None``."""
        return self._error

    @property
    def offset(self) -> str | None:
        """The committed wake-stream offset of the current (or last) run."""
        session = self._session
        return session.cursor.committed if session is not None and session.cursor else None

    def health(self) -> dict[str, Any]:
        """Return the runner's local diagnostics (what the heartbeat reports)."""
        report = self.diagnostics.report(self._claim_stats, self.offset)
        report["status"] = self.state
        if self._error is not None:
            report["error"] = str(self._error)
        return report

    def statistics(self) -> RunnerStatistics:
        """Return a snapshot of the counters."""
        actor = self._actor.statistics() if self._actor is not None else ActorStatistics()
        return RunnerStatistics(
            starts=self._starts,
            state=self.state,
            reconnects=self._reconnects,
            claims=attrs.evolve(self._claim_stats),
            actor=actor,
        )

    def open_activities(self) -> tuple[str, ...]:
        return self._actor.open_activities() if self._actor is not None else ()

    async def wait_state(self, state: str) -> None:
        """Wait until ``state`` is active; raise :attr:`error` if the runner stopped instead."""
        if state not in LIFECYCLE.states():
            raise ValueError(f"the lifecycle has no state {state!r}; see pullwake diagram")
        actor = self._require_actor()
        while state not in actor.configuration:
            if self._error is not None and actor.state == "stopped":
                raise self._error
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
            if self._actor is not actor:
                raise RunnerNotRunning(
                    f"the runner was closed while waiting for {state!r} (its 'async with' "
                    "block ended)"
                )

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> Runner:
        if self._stack is not None:
            raise RunnerError("this Runner is already entered; use one 'async with' at a time")
        stack = contextlib.AsyncExitStack()
        release = anyio.Event()
        try:
            outer = await stack.enter_async_context(anyio.create_task_group())
            self._release_host = release
            self._tg, self._actor = await outer.start(self._host, release, name="pullwake-runner")
            self._lock = anyio.Lock()
            self._stack = stack
            await self.start()
        except BaseException:
            self._stack = None
            release.set()
            if self._tg is not None:
                self._tg.cancel_scope.cancel(reason="runner failed to start")
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._reset_handles()
            raise
        return self

    async def _host(
        self,
        release: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[tuple[TaskGroup, Actor]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the actor and the runs' tasks, shielded from the caller's cancellation.

        Cancelling the code around ``async with Runner(...)`` must not cut the runner's own
        tasks before ``__aexit__`` has drained them (final heartbeat, releases), so they live
        here, under a shield that covers this task only, never the caller's block. They end
        when ``__aexit__`` sets ``release`` after its bounded stop.
        """
        actor = Actor(
            LIFECYCLE,
            {
                "heartbeat": self._heartbeat,
                "connect": self._connect,
                "read_stream": self._read_stream,
                "backoff": self._backoff,
                "probe": self._probe,
                "drain": self._drain,
            },
            clock=self.clock,
            inspect=self._inspect,
            exit_timeout=self.settings.exit_timeout,
            name=f"runner:{self.runner_id}",
        )
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg, actor:
                task_status.started((tg, actor))
                await release.wait()
                tg.cancel_scope.cancel(reason="runner closed")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        assert self._tg is not None
        assert self._release_host is not None
        problem: BaseException | None = None
        settings = self.settings
        bound = self.grace + 3 * settings.stop_bound + settings.exit_timeout
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(bound):
                try:
                    await self.stop()
                except RuntimeFailure as error:
                    problem = error
            session = self._session
            if session is not None and not session.closed:
                # The drain did not finish (it was cut): cancel the run's tasks and close.
                self._tg.cancel_scope.cancel(reason="runner closed before its drain finished")
                await session.close()
            self._release_host.set()
        try:
            # The body's exception is not handed to the task group: the run is over, so there
            # is nothing for it to cancel, and the caller gets its own exception back as is
            # (not wrapped in an exception group).
            await self._stack.__aexit__(None, None, None)
        finally:
            self._reset_handles()
        if problem is not None and exc_type is None:
            raise problem
        if problem is not None:
            logger.error("while leaving the runner after an error: %s", problem)
        return None

    def _reset_handles(self) -> None:
        if self._changed is not None:
            # Wake every wait_state(): they see the runner closed and raise.
            self._changed.set()
        self._stack = None
        self._tg = None
        self._actor = None
        self._lock = None
        self._changed = None
        self._release_host = None

    async def start(self) -> None:
        """Start a run (no-op while running); wait for a stop in progress to finish first.

        Returns once the chart is ``running`` and every object of the run exists; it does not
        wait for the wake stream (``await runner.wait_state("streaming")`` does).
        """
        actor = self._require_actor()
        assert self._lock is not None
        assert self._tg is not None
        async with self._lock:
            if actor.state == "stopping":
                await actor.wait_state("stopped")
            if actor.state != "stopped":
                return
            session = _RunSession(self, self._transport)
            try:
                await self._tg.start(session.pipeline.run, name="pullwake-claims")
            except BaseException:
                await session.close()
                raise
            self._session = session
            self._error = None
            self._reported = False
            self._starts += 1
            self.diagnostics.started_at = wall_time()
            self.diagnostics.reconnect_count = 0
            self.diagnostics.events_received = 0
            self.diagnostics.wakes_received = 0
            self.diagnostics.server = session.client.base_url
            await actor.send("start")

    async def stop(self) -> None:
        """Stop the run and wait for its drain: bounded by ``grace + 3 * stop_bound``.

        Raises :class:`StopTimeout` naming the handlers that ignored cancellation, or the error
        that made the run stop by itself (:attr:`error`), once per run.
        """
        actor = self._require_actor()
        assert self._lock is not None
        async with self._lock:
            if "running" in actor.configuration:
                await actor.send("stop")
            await actor.wait_state("stopped")
            session = self._session
            if self._reported or session is None:
                return
            self._reported = True
            if session.stuck:
                raise StopTimeout(
                    f"stop() returned after the grace period ({self.grace} s) although "
                    f"{len(session.stuck)} handler(s) ignored cancellation: "
                    f"{'; '.join(session.stuck)}. Their claims were released; fix the handlers "
                    "so they let cancellation through",
                    session.stuck,
                )
            if self._error is not None:
                raise self._error

    async def run(self) -> None:
        """Run until cancelled, or until the runner stops by itself (then raise why)."""
        async with self:
            await self.wait_state("stopped")
            if self._error is not None and not self._reported:
                self._reported = True
                raise self._error

    # -- internals -------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        """Return the runner's verifying SSL context, made once (each run reuses it)."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _require_actor(self) -> Actor:
        if self._actor is None:
            raise RunnerNotRunning(
                "the runner is not entered: use 'async with Runner(...) as runner:' and call "
                "start()/stop()/wait_state() inside it"
            )
        return self._actor

    def _session_now(self) -> _RunSession:
        assert self._session is not None, "an activity ran outside a run"
        return self._session

    def _inspect(self, record: TransitionRecord) -> None:
        """Observe one processed event: logs, diagnostics, why a run stopped, wait_state()."""
        if record.kind == "transition":
            self.diagnostics.status = record.target[-1]
            logger.info("%s: %s", self.runner_id, describe(record))
            if record.event == "rejected" and isinstance(record.error, RuntimeFailure):
                # The refusal that ends this run travelled with the event: keep it to raise.
                self._error = record.error
                self.diagnostics.record_error(str(record.error))
                logger.error("%s: stopping: %s", self.runner_id, record.error)
        elif record.kind == "failed":
            logger.error("%s: %s", self.runner_id, describe(record))
        else:
            logger.debug("%s: %s", self.runner_id, describe(record))
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._inspect_hook is not None:
            self._inspect_hook(record)

    def _rejected_by_pipeline(self, error: Rejected) -> None:
        if self._actor is not None:
            self._actor.send_nowait("rejected", error=error)

    # -- activities ------------------------------------------------------------------------

    async def _heartbeat(self, ctx: ActivityContext) -> Outcome | None:
        return await self._session_now().heartbeat.run(ctx)

    async def _connect(self, ctx: ActivityContext) -> Outcome | None:
        session = self._session_now()
        await session.slot.discard()
        self.diagnostics.server = session.client.base_url
        try:
            cursor = await session.ensure_ready()
            assert session.wake_stream is not None
            connection = await session.client.open_wake_stream(session.wake_stream, cursor.read)
        except (Rejected, RunnerError, Conflict) as exc:
            # Refused credentials, or a configuration the server will never accept as is:
            # stop with a clear error.
            return Outcome("rejected", exc)
        except ServerUnreachable as exc:
            self.diagnostics.record_error(f"connect: {describe_failure(exc)}")
            return Outcome("server_lost", exc)
        except (RequestFailed, OSError) as exc:
            # An answer that was an error (or the local offset store failed): connect_failed.
            self.diagnostics.record_error(f"connect: {describe_failure(exc)}")
            raise
        session.slot.put(connection)
        return None

    async def _read_stream(self, ctx: ActivityContext) -> Outcome | None:
        session = self._session_now()
        connection = session.slot.take()
        if connection is None:
            self.diagnostics.record_error("read_stream: no open wake stream to read")
            return None
        cursor = session.cursor
        assert cursor is not None
        allowed = self.subscription_ids
        diagnostics = self.diagnostics
        diagnostics.stream_up()
        # The server's view of the runner (its verdict, stream_connected) follows at once.
        session.heartbeat.nudge()
        try:
            async for event in connection.events():
                diagnostics.events_received += 1
                if isinstance(event, DataEvent):
                    for message in event.messages:
                        wake = Wake.parse(message)
                        if wake is None:
                            continue
                        diagnostics.wakes_received += 1
                        if allowed is not None and wake.subscription_id not in allowed:
                            continue
                        session.pipeline.submit(wake, cursor.ticket())
                elif isinstance(event, ControlEvent):
                    cursor.checkpoint(event.next_offset)
                    # The server speaks the protocol: the next loss starts a fresh backoff.
                    session.connect_failures = 0
            diagnostics.record_error("wake stream ended (EOF); reconnecting")
            return None
        except ServerUnreachable as exc:
            # Silence past the read timeout or a broken connection: no answer.
            diagnostics.record_error(f"wake stream: {describe_failure(exc)}")
            return Outcome("server_lost", exc)
        except RequestFailed as exc:
            diagnostics.record_error(f"wake stream: {describe_failure(exc)}")
            raise
        finally:
            diagnostics.stream_down()
            await connection.aclose()

    async def _backoff(self, ctx: ActivityContext) -> str | None:
        session = self._session_now()
        await session.slot.discard()
        delay = self.settings.backoff.delay(session.connect_failures, self._rng)
        session.connect_failures += 1
        self._reconnects += 1
        self.diagnostics.reconnect_count += 1
        if len(self.urls) > 1:
            session.client.rotate()
        logger.info("%s: reconnecting in %.3f s", self.runner_id, delay)
        await self.clock.sleep(delay)
        return None

    async def _probe(self, ctx: ActivityContext) -> Outcome | None:
        return await self._session_now().heartbeat.probe(ctx)

    async def _drain(self, ctx: ActivityContext) -> str | None:
        session = self._session_now()
        bound = self.settings.stop_bound
        try:
            await session.slot.discard()
            session.stuck = await session.pipeline.close(grace=self.grace, bound=bound)
            with anyio.move_on_after(bound):
                try:
                    await session.persist_offset()
                except OSError as exc:
                    logger.error("%s: could not save the wake offset: %s", self.runner_id, exc)
                sent = await session.heartbeat.final()
                if sent:
                    logger.info("%s: final heartbeat sent (status stopped)", self.runner_id)
        finally:
            await session.close()
        return None

    def __repr__(self) -> str:
        return f"<Runner {self.runner_id!r} {self.state} {list(self.urls)}>"
