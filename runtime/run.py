"""One run of a runner, from ``start()`` to ``drained``: its objects and the chart's activities.

Theory of operation
-------------------
A :class:`Run` is made by the :class:`~pullwake.runtime.runner.Runner` at each start and
given everything it may use: a frozen :class:`RunConfig`, the clock, the random source, the
runner's :class:`RunCounters` and :class:`~.diagnostics.Diagnostics`, and two callbacks (the
health report the heartbeat sends, and where the claim pipeline reports a refusal). It never
sees the runner itself. It holds a fresh HTTP client, claim pipeline, offset cursor and slot,
all closed by the drain, so stopping and starting again stacks nothing.

Its methods are the lifecycle chart's activities (:data:`~pullwake.machines.lifecycle.ACTIVITIES`);
each *chooses its outcome event from the failure*, which is all the chart needs to decide the
runner's reaction:

- ``heartbeat`` (owned by ``running``) and ``probe`` (``server_gone``): :mod:`.heartbeat`.
- ``connect`` (``connecting``): registers if needed, creates the declared subscriptions, loads
  the resume offset, opens the SSE wake stream and leaves the accepted response in the
  **slot**. It returns ``rejected`` (with the error) on a 401/403 or a configuration the server
  will never accept, ``server_lost`` when no answer came, and raises (``connect_failed``) on
  an error answer.
- ``read_stream`` (``streaming``): takes the response from the slot, asks the heartbeat for a
  beat now, reads ``data`` and ``control`` events, hands each wake to the claim pipeline with a
  ticket of the :class:`~.offsets.WakeCursor`, and checkpoints the cursor at each control
  event. Silence past the read timeout or a broken connection return ``server_lost``; EOF or
  an error answer end it with ``stream_ended``.
- ``backoff`` (``reconnecting``): waits a jittered exponential delay (small first step,
  capped, reset once a new stream delivered its first control event) and moves to the next
  server URL.
- ``drain`` (``stopping``): closes the claim pipeline (handlers get ``grace`` seconds, then are
  cancelled; every unfinished claim is released), saves the committed offset, sends the final
  heartbeat with status ``stopped`` and closes the HTTP client.

Every activity that can meet a response left in the slot closes it first, so a connection
opened by a connect whose ``connected`` event lost a race with ``stream_reset`` never leaks.

What may never happen: a run keeping its own note of the lifecycle (the chart's configuration
is the only one); a counter written by two owners (each counter names its writer).
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import httpx

from .actor import ActivityContext, ActivityFn, Outcome
from .claims import ClaimPipeline, ClaimStatistics
from .client import Client, ControlEvent, DataEvent, WakeStreamConnection, describe_failure
from .clock import Clock, wall_time
from .diagnostics import Diagnostics
from .errors import (
    Conflict,
    NotFound,
    ProtocolViolation,
    Refused,
    Rejected,
    RequestFailed,
    RunnerError,
    ServerUnreachable,
)
from .heartbeat import Heartbeat
from .metrics import RunnerMetrics
from .offsets import (
    FileOffsetStore,
    OffsetStore,
    RegistryOffsetStore,
    WakeCursor,
    default_offset_path,
)
from .settings import RunnerSettings, SubscriptionSpec
from .work import Handler, Wake

__all__ = ["Run", "RunConfig", "RunCounters", "StreamSlot"]

logger = logging.getLogger("pullwake.runner")


@attrs.frozen(eq=False)
class RunConfig:
    """What a run is told by its runner; the same for every run of that runner."""

    urls: tuple[str, ...]
    runner_id: str
    handler: Handler
    settings: RunnerSettings
    concurrency: int
    grace: float
    token: str | None = None
    wake_stream: str | None = None
    label: str | None = None
    subscription_specs: tuple[SubscriptionSpec, ...] = ()
    #: The subscriptions handled (``None``: every wake on the wake stream).
    subscription_ids: frozenset[str] | None = None
    offset_store: OffsetStore | None = None
    transport: httpx.AsyncBaseTransport | None = None
    ssl_context: ssl.SSLContext | None = None
    metrics: RunnerMetrics | None = None


@attrs.define
class RunCounters:
    """The counters a runner keeps over all its runs; each has exactly one writer."""

    #: Reconnects begun, all runs (written by :meth:`Run.backoff` only).
    reconnects: int = 0
    #: The claim pipeline's counters, all runs (written by the pipeline only).
    claims: ClaimStatistics = attrs.Factory(ClaimStatistics)


class StreamSlot:
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


class Run:
    """The objects of one run and the chart's activities; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        *,
        clock: Clock,
        rng: random.Random,
        counters: RunCounters,
        diagnostics: Diagnostics,
        report: Callable[[], dict[str, Any]],
        on_rejected: Callable[[Rejected], None],
    ) -> None:
        settings = config.settings
        self.config = config
        self.runner_id = config.runner_id
        #: The ``extra=`` fields of this run's log lines (JSON logs carry them).
        self.log_fields: dict[str, object] = {"runner_id": config.runner_id}
        self.diagnostics = diagnostics
        self._clock = clock
        self._rng = rng
        self._counters = counters
        self._report = report
        self.client = Client(
            config.urls,
            token=config.token,
            timeouts=settings.timeouts,
            transport=config.transport,
            ssl_context=config.ssl_context,
            lean_http=settings.lean_http,
        )
        claim_settings = attrs.evolve(settings.claims, concurrency=config.concurrency)
        if settings.handler_timeout is not None:
            claim_settings = attrs.evolve(claim_settings, handler_timeout=settings.handler_timeout)
        limits = {
            spec.id: spec.max_attempts
            for spec in config.subscription_specs
            if spec.max_attempts is not None
        }
        self.pipeline = ClaimPipeline(
            self.client,
            config.handler,
            worker=config.runner_id,
            settings=claim_settings,
            clock=clock,
            statistics=counters.claims,
            on_rejected=on_rejected,
            rng=rng,
            max_attempts=lambda sub_id: limits.get(sub_id, settings.max_attempts),
            dead_letter_stream=self.dead_letter_stream,
            metrics=config.metrics,
        )
        self.heartbeat = Heartbeat(
            self,
            clock=clock,
            interval=settings.heartbeat_interval,
            timeout=settings.heartbeat_bound(),
            lease_ms=settings.heartbeat_lease_ms(),
            failures_before_reset=settings.failures_before_reset,
            probe_interval=settings.reconnect_probe_interval,
            rng=rng,
        )
        self.slot = StreamSlot()
        # Invariant: None until the first connect loaded the resume offset of this run.
        self.cursor: WakeCursor | None = None
        self._wake_stream = config.wake_stream
        # Invariant: None until registration was tried; then whether the server has a registry.
        self._registry: bool | None = None
        self._registered = False
        self._subscriptions_ready = False
        self._registry_store = RegistryOffsetStore()
        # Invariant: set once the registry question is answered (or given by the app).
        self.store: OffsetStore | None = config.offset_store
        self._lock = anyio.Lock()
        # Connect attempts since the last good stream: the backoff exponent.
        self.connect_failures = 0
        # Invariant: (method, url, status) -> web-page answers to a connect in this run; the
        # first is logged in full, the rest are counted (see page_answer()).
        self.page_answers: dict[tuple[str, str, int | None], int] = {}
        # Handlers that ignored cancellation at stop (filled by the drain).
        self.stuck: tuple[str, ...] = ()
        self.closed = False
        # The run's own diagnostics start afresh (this run writes them).
        diagnostics.started_at = wall_time()
        diagnostics.reconnect_count = 0
        diagnostics.events_received = 0
        diagnostics.wakes_received = 0
        diagnostics.server = self.client.base_url

    def activities(self) -> dict[str, ActivityFn]:
        """Return the chart's activities, by name, bound to this run."""
        return {
            "heartbeat": self.heartbeat.run,
            "connect": self.connect,
            "read_stream": self.read_stream,
            "backoff": self.backoff,
            "probe": self.heartbeat.probe,
            "drain": self.drain,
        }

    # -- HeartbeatHost ---------------------------------------------------------------------

    @property
    def registry(self) -> bool | None:
        return self._registry

    @property
    def wake_stream(self) -> str | None:
        return self._wake_stream

    def dead_letter_stream(self) -> str | None:
        """Return the stream poisoned messages go to (None while no wake stream is known)."""
        configured = self.config.settings.dead_letter_stream
        if configured is not None:
            return configured
        if self._wake_stream is None:
            return None
        return self._wake_stream.rstrip("/") + "/dead-letter"

    async def ensure_registered(self) -> None:
        """Register with the server once per run (again after forget_registration())."""
        if self._registered:
            return
        async with self._lock:
            if self._registered:
                return
            try:
                record = await self.client.register(
                    self.runner_id, label=self.config.label, wake_stream=self._wake_stream
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
                    extra=self.log_fields,
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
        return self._report()

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
            for spec in self.config.subscription_specs:
                created = await self.client.put_subscription(spec.id, spec.body(self._wake_stream))
                logger.info(
                    "subscription %r %s",
                    spec.id,
                    "created" if created else "confirmed",
                    extra={**self.log_fields, "subscription": spec.id},
                )
            self._subscriptions_ready = True
        if self.cursor is None:
            assert self.store is not None
            saved = await self.store.load()
            offset = saved or self.config.settings.initial_offset
            self.cursor = WakeCursor(offset)
            logger.info(
                "reading wake stream %r from offset %s",
                self._wake_stream,
                offset,
                extra=self.log_fields,
            )
        return self.cursor

    async def open_wake_stream(self, cursor: WakeCursor) -> WakeStreamConnection:
        """Open the wake stream; create it first if it does not exist and the server lets us.

        A missing wake stream never turns into a retry loop: it is created (an idempotent PUT
        of a JSON stream), or the run stops with an error that says how to create it.
        """
        path = self._wake_stream
        assert path is not None
        try:
            return await self.client.open_wake_stream(path, cursor.read)
        except NotFound as missing:
            where = self.client.base_url
            how = (
                f"create it (pullwake stream create {path} --content-type application/json "
                f"--url {where}) or pass the wake_stream=... of an existing one"
            )
            if not self.config.settings.create_wake_stream:
                raise RunnerError(
                    f"the wake stream {path!r} does not exist on {where}: {how}"
                ) from missing
            try:
                await self.client.create_stream(path)
            except (Refused, ProtocolViolation) as refused:
                raise RunnerError(
                    f"the wake stream {path!r} does not exist on {where}, and creating it was "
                    f"refused ({describe_failure(refused)}): {how}"
                ) from missing
            logger.info("%s: created the wake stream %r on %s", self.runner_id, path, where)
        return await self.client.open_wake_stream(path, cursor.read)

    async def close(self) -> None:
        """Close what the run holds (idempotent): the slot's response and the HTTP client."""
        if self.closed:
            return
        self.closed = True
        await self.slot.discard()
        await self.client.aclose()

    # -- activities ------------------------------------------------------------------------

    async def connect(self, ctx: ActivityContext) -> Outcome | None:
        """Open the wake stream into the slot; the outcome names the failure (module doc)."""
        await self.slot.discard()
        self.diagnostics.server = self.client.base_url
        try:
            cursor = await self.ensure_ready()
            connection = await self.open_wake_stream(cursor)
        except (Rejected, RunnerError, Conflict) as exc:
            # Refused credentials, or a configuration the server will never accept as is:
            # stop with a clear error.
            return Outcome("rejected", exc)
        except ServerUnreachable as exc:
            self.diagnostics.record_error(f"connect: {describe_failure(exc)}")
            return Outcome("server_lost", exc)
        except RequestFailed as exc:
            # An answer that was an error: connect_failed.
            failure = self.page_answer(exc) if exc.page else exc
            self.diagnostics.record_error(f"connect: {describe_failure(failure)}")
            if failure is exc:
                raise
            raise failure from exc
        except OSError as exc:
            # The local offset store failed: connect_failed.
            self.diagnostics.record_error(f"connect: {describe_failure(exc)}")
            raise
        self.slot.put(connection)
        return None

    def page_answer(self, exc: RequestFailed) -> RequestFailed:
        """Say once per run that a web page answered; return the error to retry on.

        A proxy or a wrong URL answers every reconnect with the same page: the first time is
        logged as a warning naming the URL and the status; every later identical answer is
        counted (in the error the chart logs and in the diagnostics' last error) and logged at
        DEBUG, so the log does not fill with the same story.
        """
        key = (exc.method, exc.url, exc.status)
        seen = self.page_answers[key] = self.page_answers.get(key, 0) + 1
        if seen == 1:
            logger.warning(
                "%s: %s %s answered %s: this is an HTML page, not a Durable Streams server (a "
                "proxy, or a wrong URL?); retrying with backoff; identical answers are counted, "
                "not logged again",
                self.runner_id,
                exc.method,
                exc.url,
                exc.status,
                extra={**self.log_fields, "url": exc.url, "status": exc.status},
            )
            return exc
        logger.debug("%s: %s (%d times)", self.runner_id, exc.message, seen, extra=self.log_fields)
        return type(exc)(
            f"{exc.method} {exc.url} answered {exc.status} with the same HTML page again "
            f"({seen} times this run)",
            method=exc.method,
            url=exc.url,
            status=exc.status,
            code=exc.code,
            body=exc.body,
            page=True,
        )

    async def read_stream(self, ctx: ActivityContext) -> Outcome | None:
        """Read wakes into the claim pipeline until the stream ends (module doc)."""
        connection = self.slot.take()
        if connection is None:
            self.diagnostics.record_error("read_stream: no open wake stream to read")
            return None
        cursor = self.cursor
        assert cursor is not None
        allowed = self.config.subscription_ids
        diagnostics = self.diagnostics
        diagnostics.stream_up()
        # The server's view of the runner (its verdict, stream_connected) follows at once.
        self.heartbeat.nudge()
        self.ask_for_pending_work()
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
                        self.pipeline.submit(wake, cursor.ticket())
                elif isinstance(event, ControlEvent):
                    cursor.checkpoint(event.next_offset)
                    # The server speaks the protocol: the next loss starts a fresh backoff.
                    self.connect_failures = 0
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

    def ask_for_pending_work(self) -> None:
        """Try one claim per known subscription, as if each had been woken (wakes are hints).

        Called each time the wake stream is (re)connected: work whose wake was missed (read
        before a crash, sent while no runner listened, or never sent by a server that lacks
        our registry) is claimed now rather than stranded. The claims go through the same
        pipeline and fencing as woken ones; a 409 NO_PENDING_WORK or ALREADY_CLAIMED is the
        usual, quiet answer. The subscriptions asked are those the runner declares or was told
        to handle; a runner that handles every wake of its stream knows no names to ask for.
        """
        names = set(self.config.subscription_ids or ())
        names.update(spec.id for spec in self.config.subscription_specs)
        for name in sorted(names):
            self.pipeline.submit(Wake(name))

    async def backoff(self, ctx: ActivityContext) -> str | None:
        """Wait the next backoff step, then move to the next server URL (module doc)."""
        await self.slot.discard()
        delay = self.config.settings.backoff.delay(self.connect_failures, self._rng)
        self.connect_failures += 1
        self._counters.reconnects += 1
        self.diagnostics.reconnect_count += 1
        if len(self.config.urls) > 1:
            self.client.rotate()
        logger.info("%s: reconnecting in %.3f s", self.runner_id, delay, extra=self.log_fields)
        await self._clock.sleep(delay)
        return None

    async def drain(self, ctx: ActivityContext) -> str | None:
        """Let handlers finish, release claims, save the offset, beat once more (module doc)."""
        bound = self.config.settings.stop_bound
        try:
            await self.slot.discard()
            self.stuck = await self.pipeline.close(grace=self.config.grace, bound=bound)
            with anyio.move_on_after(bound):
                try:
                    await self.persist_offset()
                except OSError as exc:
                    logger.error(
                        "%s: could not save the wake offset: %s",
                        self.runner_id,
                        exc,
                        extra=self.log_fields,
                    )
                sent = await self.heartbeat.final()
                if sent:
                    logger.info(
                        "%s: final heartbeat sent (status stopped)",
                        self.runner_id,
                        extra=self.log_fields,
                    )
        finally:
            await self.close()
        return None
