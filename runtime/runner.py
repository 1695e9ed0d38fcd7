"""Run the pull-wake lifecycle for an application: the :class:`Runner` apps embed.

Theory of operation
-------------------
The runner *is* the lifecycle chart (:mod:`pullwake.machines.lifecycle`) run by an
:class:`~pullwake.runtime.actor.Actor`; it adds no lifecycle state of its own. This module is
its public face: ``async with``, :meth:`Runner.start`, :meth:`Runner.stop`, :meth:`Runner.run`,
:meth:`Runner.wait_state`, :meth:`Runner.health` and :meth:`Runner.statistics`.

Each ``start()`` makes a :class:`~.run.Run` (:mod:`.run`): the run's objects and the chart's
activities, given a frozen :class:`~.run.RunConfig`, the clock, the random source and the
counters, never the runner itself. The actor's activity table delegates to the current run.

Per-wake work never goes through the chart: wakes and claims flow from ``read_stream`` to the
:class:`~.claims.ClaimPipeline`, whose host task lives in the runner's own task group for the
length of one run (it must outlive reconnects, and handlers get their grace at stop).

The runner only *observes* the chart (its ``inspect`` hook): it logs each transition, copies
the leaf state into the diagnostics, wakes :meth:`Runner.wait_state`, and keeps the error that
travelled with a ``rejected`` event, to raise it. It never decides a reaction of the lifecycle
itself. The one thing it does for its caller: when a run stops for good (``rejected``), the
``drain`` activity of ``stopping``, once it has drained, cancels the caller's ``async with``
block, whose exit then raises the error, as a task group does when a child fails; otherwise a
program waiting in that block would wait forever.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from pullwake.machines.lifecycle import LIFECYCLE

from .actor import (
    ActivityContext,
    ActivityFn,
    Actor,
    ActorStatistics,
    Outcome,
    TransitionRecord,
    describe,
)
from .claims import ClaimStatistics
from .clock import Clock, SystemClock
from .diagnostics import Diagnostics
from .errors import (
    InvalidServerURL,
    Rejected,
    RunnerError,
    RunnerNotRunning,
    RuntimeFailure,
    StopTimeout,
)
from .metrics import RunnerMetrics
from .offsets import OffsetStore
from .run import Run, RunConfig, RunCounters
from .settings import RunnerSettings, SubscriptionSpec
from .work import Handler

__all__ = ["Runner", "RunnerStatistics"]

logger = logging.getLogger("pullwake.runner")


@attrs.frozen
class RunnerStatistics:
    """Counters of a runner since it was made (all runs), and of its actor."""

    starts: int
    state: str
    reconnects: int
    claims: ClaimStatistics
    actor: ActorStatistics


def _check_server_url(url: str) -> None:
    """Raise :class:`InvalidServerURL` unless ``url`` is an ``http(s)://host...`` URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidServerURL(
            f"server URL {url!r} has no scheme; write it as 'http://{url}' (or 'https://{url}')"
        )
    if scheme.lower() not in ("http", "https"):
        raise InvalidServerURL(
            f"server URL {url!r} uses {scheme!r}; a runner speaks http:// or https:// only, "
            f"such as 'http://{rest}'"
        )
    if not rest.split("/", 1)[0]:
        raise InvalidServerURL(
            f"server URL {url!r} names no host; write it as 'http://HOST:PORT', such as "
            "'http://127.0.0.1:4437'"
        )


class Runner:
    """Keep a handler awake to new work on a Durable Streams server; see the module docstring.

    ``url`` is one server URL or several equivalent ones (servers sharing a database).
    ``handler`` is ``async def handler(claim)``; it runs once per claim, concurrently across
    subscriptions (at most ``concurrency``), one at a time per subscription. ``subscriptions``
    limits which subscriptions this runner handles: ids (existing subscriptions) or
    :class:`SubscriptionSpec` values (created or re-confirmed on connect); ``None`` handles
    every wake on the wake stream. ``grace`` is how long, in seconds, running handlers may take
    to finish when the runner stops. ``offset_store`` defaults to the server's registry, or to
    a local file when the server has none. ``metrics_registry``: register the runner's
    Prometheus metrics there (:mod:`pullwake.runtime.metrics`); without it none are kept.

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
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("give at least one server URL, such as http://127.0.0.1:4437")
        for each in urls:
            _check_server_url(each)
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
        self._inspect_hook = inspect
        self._rng = rng or random.Random()
        self.diagnostics = Diagnostics()
        self._counters = RunCounters()
        # Written by start() only.
        self._starts = 0
        # The fields of every log line of this runner (JSON logs carry them).
        self._log_fields = {"runner_id": runner_id}
        #: The runner's Prometheus metrics (:mod:`.metrics`), or None when none were asked for.
        self.metrics: RunnerMetrics | None = None
        if metrics_registry is not None:
            self.metrics = RunnerMetrics(metrics_registry, runner_id)
            self.metrics.bind(self)
        # What every run is given (the TLS context is made once and shared by all runs).
        self._config = RunConfig(
            self.urls,
            runner_id,
            handler,
            self.settings,
            concurrency,
            grace,
            token=token,
            wake_stream=wake_stream,
            label=label,
            subscription_specs=self.subscription_specs,
            subscription_ids=self.subscription_ids,
            offset_store=offset_store,
            transport=transport,
            ssl_context=httpx.create_ssl_context(),
            metrics=self.metrics,
        )
        # Invariant: the run in progress or the last one (closed after its drain); None before
        # the first start.
        self._run: Run | None = None
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
        # The cancel scope of the caller's 'async with' block, while it runs.
        self._body: anyio.CancelScope | None = None

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
        run = self._run
        return run.cursor.committed if run is not None and run.cursor else None

    def health(self) -> dict[str, Any]:
        """Return the runner's local diagnostics (what the heartbeat reports)."""
        report = self.diagnostics.report(self._counters.claims, self.offset)
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
            reconnects=self._counters.reconnects,
            claims=attrs.evolve(self._counters.claims),
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
            # Close the task group where it was opened (not inside a new cancel scope, which
            # anyio refuses to unwind across): the original exception then propagates as is.
            try:
                await stack.aclose()
            finally:
                self._reset_handles()
            raise
        # The caller's block runs in this scope: a runner that stops for good cancels it, and
        # __aexit__ raises the error, as a task group does with a failing child.
        self._body = anyio.CancelScope()
        self._body.__enter__()
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
                activity.name: self._delegate(activity.name)
                for owned in LIFECYCLE.activities.values()
                for activity in owned
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
        assert self._body is not None
        body, self._body = self._body, None
        # Leave the block's scope first (it was entered last); it absorbs the cancellation it
        # caused when the runner stopped for good, and only that one.
        if body.__exit__(exc_type, exc, tb):
            exc_type, exc, tb = None, None, None
        problem: BaseException | None = None
        settings = self.settings
        bound = self.grace + 3 * settings.stop_bound + settings.exit_timeout
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(bound):
                try:
                    await self.stop()
                except RuntimeFailure as error:
                    problem = error
            run = self._run
            if run is not None and not run.closed:
                # The drain did not finish (it was cut): cancel the run's tasks and close.
                self._tg.cancel_scope.cancel(reason="runner closed before its drain finished")
                await run.close()
            self._release_host.set()
        try:
            # The body's exception is not handed to the task group: the run is over, so there
            # is nothing for it to cancel, and the caller gets its own exception back as is
            # (not wrapped in an exception group).
            await self._stack.__aexit__(None, None, None)
        finally:
            self._reset_handles()
        if problem is None and body.cancelled_caught and self._error is not None:
            # The block was cancelled for the error, which was already reported (by stop()
            # or run() inside the block): raise it again rather than end silently.
            problem = self._error
        if problem is not None and exc_type is None:
            raise problem
        if problem is not None:
            logger.error("while leaving the runner after an error: %s", problem)
        return True if body.cancelled_caught else None

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
            run = Run(
                self._config,
                clock=self.clock,
                rng=self._rng,
                counters=self._counters,
                diagnostics=self.diagnostics,
                report=self.health,
                on_rejected=self._rejected_by_pipeline,
            )
            try:
                await self._tg.start(run.pipeline.run, name="pullwake-claims")
            except BaseException:
                await run.close()
                raise
            self._run = run
            self._error = None
            self._reported = False
            self._starts += 1
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
            run = self._run
            if self._reported or run is None:
                return
            self._reported = True
            if run.stuck:
                raise StopTimeout(
                    f"stop() returned after the grace period ({self.grace} s) although "
                    f"{len(run.stuck)} handler(s) ignored cancellation: "
                    f"{'; '.join(run.stuck)}. Their claims were released; fix the handlers "
                    "so they let cancellation through",
                    run.stuck,
                )
            if self._error is not None:
                raise self._error

    def end_grace(self) -> None:
        """Cut the grace period of the stop in progress (or of the next stop) now.

        Running handlers are cancelled at once instead of getting ``grace`` seconds; their
        claims are released best-effort, each within ``settings.stop_bound`` seconds (a
        release the server does not answer in time leaves the claim to its lease expiry).
        :meth:`stop` then returns within ``3 * stop_bound``. A no-op outside a run.
        """
        run = self._run
        if run is not None and not run.closed:
            run.pipeline.end_grace()

    async def run(self) -> None:
        """Run until cancelled, or until the runner stops by itself (then raise why)."""
        async with self:
            await self.wait_state("stopped")
            if self._error is not None and not self._reported:
                self._reported = True
                raise self._error

    # -- internals -------------------------------------------------------------------------

    def _require_actor(self) -> Actor:
        if self._actor is None:
            raise RunnerNotRunning(
                "the runner is not entered: use 'async with Runner(...) as runner:' and call "
                "start()/stop()/wait_state() inside it"
            )
        return self._actor

    def _delegate(self, name: str) -> ActivityFn:
        """Return the activity ``name`` of whichever run is current when it starts."""

        async def activity(ctx: ActivityContext) -> str | Outcome | None:
            run = self._run
            assert run is not None, "an activity ran outside a run"
            outcome = await run.activities()[name](ctx)
            if name == "drain" and self._error is not None and self._body is not None:
                # A run that stopped for good (``rejected``, its error kept by _inspect) has
                # drained: end the caller's block, whose exit raises the error.
                self._body.cancel(reason=f"the runner stopped: {self._error}")
            return outcome

        activity.__name__ = name
        return activity

    def _inspect(self, record: TransitionRecord) -> None:
        """Observe one processed event: logs, diagnostics, why a run stopped, wait_state()."""
        if record.kind == "transition":
            self.diagnostics.status = record.target[-1]
            logger.info("%s: %s", self.runner_id, describe(record), extra=self._log_fields)
            if record.event == "rejected" and isinstance(record.error, RuntimeFailure):
                # The refusal that ends this run travelled with the event: keep it to raise
                # (the drain activity then ends the caller's block).
                self._error = record.error
                self.diagnostics.record_error(str(record.error))
                logger.error(
                    "%s: stopping: %s", self.runner_id, record.error, extra=self._log_fields
                )
        elif record.kind == "failed":
            logger.error("%s: %s", self.runner_id, describe(record), extra=self._log_fields)
        else:
            logger.debug("%s: %s", self.runner_id, describe(record), extra=self._log_fields)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._inspect_hook is not None:
            self._inspect_hook(record)

    def _rejected_by_pipeline(self, error: Rejected) -> None:
        if self._actor is not None:
            self._actor.send_nowait("rejected", error=error)

    def __repr__(self) -> str:
        return f"<Runner {self.runner_id!r} {self.state} {list(self.urls)}>"
