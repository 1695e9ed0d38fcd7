"""Turn wakes into claims and claims into handler calls: the claim pipeline.

Theory of operation
-------------------
Wakes arrive from the wake stream through :meth:`ClaimPipeline.submit`, which never blocks.
Each subscription has a **lane**: a FIFO of the wakes not yet attempted, and at most one worker
task. The worker takes the wakes one by one: it claims the subscription, calls the handler with
a :class:`Claim`, then acks ``done`` or releases. So there is one claim at a time per
subscription, and a wake for a busy subscription waits in its lane (never overwritten, never
polled for) and is claimed once the active one ends. Different subscriptions run concurrently,
at most ``concurrency`` claims and handlers at once. A lane's worker exits when its FIFO is
empty; a new wake starts a new one.

Each attempt ends in exactly one way, and settles the wake's :class:`~.offsets.Ticket` (the
wake stream's committed offset may pass it):

- **skipped**: 409 ALREADY_CLAIMED (another worker has it) or NO_PENDING_WORK (an earlier
  claim took the work);
- **claimed**: the server holds our lease; the handler runs. While it runs, the lease is
  extended (an ack without ``done``) every third of ``lease_ttl``. Success acks ``done`` with
  the snapshot's tails; a handler that raises (or outlives ``handler_timeout``, and is
  cancelled) has its claim released, and the lane pauses with a growing backoff; an ack
  answered FENCED (or a refused claim token) means the lease was lost: the handler is
  cancelled and counted in ``leases_lost``. From a server that confirmed the ``claim-next``
  extension the done-ack may bring the next claim of the subscription (work appended while
  this one was held): it is run at once, on the same lane and concurrency slot, as a claim
  of its own (no wake event was appended for it);
- **dead-lettered**: the handler failed its ``max_attempts``-th attempt on the same work.
  Attempts are counted per (subscription, stream, acked offset): per first pending offset of
  each claimed stream, so traffic on another stream of the subscription does not reset them.
  The claimed messages of each stream at the limit are appended to the dead-letter stream,
  with their stream, offsets, the error and the attempt count, and acked; the claim is acked
  ``done`` when that was all of it, else released (the other streams come back), so the rest
  of the subscription flows. If the append fails the claim is released as for any failure
  (nothing is lost; the next failure tries again). Attempts are counted in memory: a
  restarted runner starts counting afresh (delivery stays at-least-once);
- **failed**: a refusal that will not change (404: the subscription was deleted; other 4xx).

Transient failures (network, 5xx) of the claim are retried with backoff until they succeed or
the pipeline closes; they never drop the wake. A 401/403 on the claim is reported through
``on_rejected`` (the runner then stops).

A claim taken is always finished: acked, released, or known lost. If the pipeline closes
between the claim and the handler, or the handler is cancelled, the claim is released in a
shielded, bounded scope; a handler that ignores cancellation past the stop bound is named in
the result of :meth:`ClaimPipeline.close`, and its claim is released anyway.

What may never happen: two claims of one subscription in flight; a wake dropped while its
subscription is busy; a handler shown a partial view of its streams (a failed read raises in
the handler: fail closed); a claim left held after the pipeline closed.
"""

from __future__ import annotations

import base64
import functools
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from .backoff import Backoff
from .client import ClaimGrant, Client, StreamState
from .clock import Clock, SystemClock, wall_time
from .errors import (
    AlreadyClaimed,
    LeaseLost,
    NoPendingWork,
    ProtocolViolation,
    Refused,
    Rejected,
    RequestFailed,
    TransientError,
)
from .offsets import Ticket
from .work import Batch, Claim, Handler, Wake

if TYPE_CHECKING:
    from .metrics import RunnerMetrics

__all__ = ["ClaimPipeline", "ClaimSettings", "ClaimStatistics"]

logger = logging.getLogger("pullwake.claims")


@attrs.frozen
class ClaimSettings:
    """Tunables of the claim pipeline (delays in clock seconds, bounds in real seconds)."""

    #: Claims and handlers running at once, across subscriptions.
    concurrency: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    #: Retries of a claim that failed transiently (network, 5xx).
    retry: Backoff = attrs.field(factory=lambda: Backoff(initial=0.2, maximum=10.0))
    #: The pause of a lane after its handler failed (grows with consecutive failures).
    failure_backoff: Backoff = attrs.field(factory=lambda: Backoff(initial=1.0, maximum=60.0))
    #: Fraction of ``lease_ttl`` between two lease extensions.
    extend_fraction: float = attrs.field(default=1 / 3, validator=attrs.validators.gt(0))
    #: Bound, in real seconds, on one release or final ack attempt.
    request_timeout: float = 5.0
    #: Real seconds a handler may run before it is cancelled (a failed attempt); None: no bound.
    handler_timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )


@attrs.define
class ClaimStatistics:
    """Counters of the claim pipeline since it was made, and the latest outcomes."""

    wakes_submitted: int = 0
    claims_succeeded: int = 0
    claims_skipped: int = 0
    claims_failed: int = 0
    claim_retries: int = 0
    handler_failures: int = 0
    leases_lost: int = 0
    #: Handlers cancelled for running past ``handler_timeout`` (each a failed attempt).
    handler_timeouts: int = 0
    #: Claims whose messages went to the dead-letter stream after their last attempt.
    dead_lettered: int = 0
    last_dead_letter_at: str | None = None
    releases: int = 0
    released_on_stop: int = 0
    handlers_active: int = 0
    #: Wakes read but not claimed yet: queued behind a busy subscription, or waiting for a
    #: concurrency slot, a backoff or the claim's answer.
    wakes_queued: int = 0
    last_claim_at: str | None = None
    last_claim_result: str | None = None
    last_dispatch_at: str | None = None


# -- the pipeline ---------------------------------------------------------------------------

Phase = Literal["waiting", "claiming", "handling", "finishing"]


class _Lane:
    """One subscription's FIFO of wakes and its (at most one) worker."""

    def __init__(self, sub_id: str) -> None:
        self.sub_id = sub_id
        # Invariant: wakes not yet attempted, in arrival order; never deduplicated.
        self.queue: deque[tuple[Wake, Ticket]] = deque()
        # Invariant: True exactly while a worker task runs for this lane.
        self.active = False
        # What the worker is doing now (drives how close() treats it).
        self.phase: Phase = "waiting"
        # Cancels the worker's waits and claim requests (never a running handler).
        self.wait_scope: anyio.CancelScope | None = None
        # Cancels the running handler (lease lost, or the stop grace expired).
        self.handler_scope: anyio.CancelScope | None = None
        # Invariant: the claim whose handler runs or is being finished, else None.
        self.claim: Claim | None = None
        # Consecutive handler failures; the lane pauses failure_backoff(failures - 1).
        self.failures = 0
        # Clock time before which the lane claims nothing (after a handler failure).
        self.not_before = 0.0


class ClaimPipeline:
    """Claim and handle wakes, one lane per subscription; see the module docstring.

    Run it with ``await task_group.start(pipeline.run)``; feed it with :meth:`submit`; end it
    with :meth:`close`, which returns the names of handlers that ignored cancellation.
    """

    def __init__(
        self,
        client: Client,
        handler: Handler,
        *,
        worker: str,
        settings: ClaimSettings | None = None,
        clock: Clock | None = None,
        statistics: ClaimStatistics | None = None,
        on_rejected: Callable[[Rejected], None] | None = None,
        rng: random.Random | None = None,
        max_attempts: Callable[[str], int | None] | None = None,
        dead_letter_stream: Callable[[], str | None] | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._handler = handler
        self._worker = worker
        self.settings = settings or ClaimSettings()
        self._clock = clock or SystemClock()
        self.stats = statistics if statistics is not None else ClaimStatistics()
        self._on_rejected = on_rejected
        self._rng = rng or random.Random()
        self._limiter = anyio.CapacityLimiter(self.settings.concurrency)
        # Per subscription, the attempts allowed before dead-lettering (None: no limit).
        self._max_attempts = max_attempts or (lambda _sub: None)
        self._dead_letter_stream = dead_letter_stream or (lambda: None)
        # Invariant: failed attempts per (subscription, stream, acked offset); an entry goes
        # once its subscription's claim succeeded or the stream's messages were dead-lettered.
        self._attempts: dict[tuple[str, str, str], int] = {}
        # Invariant: True once the dead-letter stream was created (or confirmed) this run.
        self._dead_letter_ready = False
        # Invariant: a lane exists for every subscription that got a wake in this pipeline.
        self._lanes: dict[str, _Lane] = {}
        self._tg: TaskGroup | None = None
        # Invariant: False once close() began; submit() then refuses, workers stop after the
        # claim they hold.
        self._accepting = True
        # Invariant: the number of lanes whose worker runs; ``_idle`` is set when it is 0.
        self._workers = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._closed = anyio.Event()
        # Invariant: True once close()'s grace expired: every wait and request is cut.
        self._hard_stop = False
        # Real seconds one release may take (close() lowers it to its stop bound).
        self._release_bound = self.settings.request_timeout
        # Invariant: True once end_grace() was called: close() then waits for no handler.
        self._grace_cut = False
        # The scope of close()'s grace wait while it runs (end_grace() cancels it).
        self._grace_scope: anyio.CancelScope | None = None

    # -- lifetime ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the workers until :meth:`close` has finished with them."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await self._closed.wait()
        self._tg = None

    @property
    def accepting(self) -> bool:
        return self._accepting and self._tg is not None

    def submit(self, wake: Wake, ticket: Ticket | None = None) -> bool:
        """Queue ``wake`` on its subscription's lane; return False if the pipeline is closing."""
        if not self.accepting:
            return False
        assert self._tg is not None
        ticket = ticket if ticket is not None else Ticket()
        lane = self._lanes.get(wake.subscription_id)
        if lane is None:
            lane = self._lanes[wake.subscription_id] = _Lane(wake.subscription_id)
        lane.queue.append((wake, ticket))
        self.stats.wakes_submitted += 1
        self.stats.wakes_queued += 1
        if not lane.active:
            lane.active = True
            self._workers += 1
            if self._idle.is_set():
                self._idle = anyio.Event()
            self._tg.start_soon(self._drain_lane, lane, name=f"pullwake-lane:{lane.sub_id}")
        return True

    def active_claims(self) -> tuple[Claim, ...]:
        """Return the claims whose handlers run (or are being finished) now."""
        return tuple(lane.claim for lane in self._lanes.values() if lane.claim is not None)

    async def wait_idle(self) -> None:
        """Wait until no lane has work queued or running."""
        await self._idle.wait()

    async def close(self, *, grace: float, bound: float) -> tuple[str, ...]:
        """Stop taking wakes, let handlers finish for ``grace`` seconds, then cancel them.

        Workers that wait (for a concurrency slot, a backoff, their turn) are cancelled at once:
        their wakes stay unaccepted, so a restart replays them. Claims in flight and running
        handlers get ``grace`` real seconds to finish (a claim granted now is released, not
        dispatched); then everything is cancelled and gets ``bound`` more seconds to end and
        release its claim. Return the names of the handlers still running after that; their
        claims are released here, in parallel, each within ``bound``.
        """
        self._accepting = False
        for lane in self._lanes.values():
            self.stats.wakes_queued -= len(lane.queue)
            lane.queue.clear()
            if lane.phase == "waiting" and lane.wait_scope is not None:
                lane.wait_scope.cancel(reason="runner stopping")
        with anyio.move_on_after(0 if self._grace_cut else grace) as self._grace_scope:
            await self._idle.wait()
        self._grace_scope = None
        self._hard_stop = True
        self._release_bound = min(self._release_bound, bound)
        for lane in self._lanes.values():
            if lane.wait_scope is not None:
                lane.wait_scope.cancel(reason="runner stopping: grace expired")
            if lane.handler_scope is not None:
                lane.handler_scope.cancel(reason="runner stopping: grace expired")
        with anyio.move_on_after(bound):
            await self._idle.wait()
        stuck = [lane for lane in self._lanes.values() if lane.active]
        names = []
        async with anyio.create_task_group() as releases:
            for lane in stuck:
                claim = lane.claim
                names.append(claim.describe() if claim else f"worker of {lane.sub_id!r}")
                if claim is not None:
                    lane.claim = None
                    releases.start_soon(
                        functools.partial(
                            self._release, claim, why="its handler ignored cancellation at stop"
                        )
                    )
        if not stuck:
            self._closed.set()
        else:
            logger.error("handlers ignored cancellation at stop: %s", "; ".join(names))
            # The host task stays until the stuck handlers return (anyio cannot abandon a
            # task); the claims are released already.
            self._release_host_when_idle()
        return tuple(names)

    def end_grace(self) -> None:
        """Cut the stop's grace period now, or that of a :meth:`close` still to come.

        Running handlers are then cancelled at once and their claims released, each release
        within close()'s ``bound`` (a claim whose release gets no answer in time is left to
        its lease expiry). This is what a second Ctrl-C of ``pullwake run`` does.
        """
        self._grace_cut = True
        if self._grace_scope is not None:
            self._grace_scope.cancel(reason="forced stop: the grace period was cut")

    def _release_host_when_idle(self) -> None:
        if self._tg is not None:
            self._tg.start_soon(self._close_when_idle, name="pullwake-lanes-straggler")

    async def _close_when_idle(self) -> None:
        await self._idle.wait()
        self._closed.set()

    # -- a lane's worker -----------------------------------------------------------------

    async def _drain_lane(self, lane: _Lane) -> None:
        try:
            while lane.queue and self._accepting:
                wake, ticket = lane.queue.popleft()
                await self._attempt(lane, wake, ticket)
        finally:
            lane.active = False
            lane.phase = "waiting"
            self._workers -= 1
            if self._workers == 0:
                self._idle.set()

    def _cancellable(self, lane: _Lane, phase: Phase) -> anyio.CancelScope:
        """Return a scope for one wait or request of ``lane``, which close() may cancel."""
        lane.phase = phase
        scope = lane.wait_scope = anyio.CancelScope()
        if self._hard_stop or (phase == "waiting" and not self._accepting):
            scope.cancel(reason="runner stopping")
        return scope

    async def _attempt(self, lane: _Lane, wake: Wake, ticket: Ticket) -> None:
        """Claim for one wake (retrying transient failures) and run the claim if granted.

        Returning with the ticket open means the pipeline is closing: the wake was not
        accepted, so the committed offset stays before it and a restart replays it.
        """
        try:
            grant = await self._claim_for(lane, ticket)
        finally:
            self.stats.wakes_queued -= 1
        if grant is None:
            return
        try:
            while grant is not None:
                # A done-ack may answer the next claim (the claim-next extension): it runs
                # here, on this lane and concurrency slot, through the same path as any claim.
                grant = await self._run_claim(lane, grant, wake)
                if grant is not None:
                    if self._metrics is not None:
                        self._metrics.observe_claim(grant)
                    wake = Wake(lane.sub_id, generation=grant.generation)
        finally:
            self._limiter.release()

    async def _claim_for(self, lane: _Lane, ticket: Ticket) -> ClaimGrant | None:
        """Return a grant, with a concurrency slot held for it, or None (skip, refusal, stop)."""
        retries = 0
        while True:
            with self._cancellable(lane, "waiting") as scope:
                pause = lane.not_before - self._clock.now()
                if pause > 0:
                    await self._clock.sleep(pause)
                await self._limiter.acquire()
            if scope.cancelled_caught:
                return None
            grant: ClaimGrant | None = None
            try:
                with self._cancellable(lane, "claiming") as scope:
                    try:
                        grant = await self._client.claim(lane.sub_id, self._worker)
                    except (AlreadyClaimed, NoPendingWork) as exc:
                        self._count("skipped", exc.code or "skipped")
                        ticket.settle()
                        return None
                    except Rejected as exc:
                        self._count("failed", "rejected")
                        ticket.settle()
                        if self._on_rejected is not None:
                            self._on_rejected(exc)
                        return None
                    except (Refused, ProtocolViolation) as exc:
                        logger.warning(
                            "claim of %r refused: %s",
                            lane.sub_id,
                            exc,
                            extra=self._lane_fields(lane),
                        )
                        self._count("failed", f"refused: {exc.status or 'protocol'}")
                        ticket.settle()
                        return None
                    except TransientError as exc:
                        logger.info(
                            "claim of %r failed, will retry: %s",
                            lane.sub_id,
                            exc,
                            extra=self._lane_fields(lane),
                        )
                        self.stats.claim_retries += 1
                        self.stats.last_claim_result = f"retrying: {exc.status or 'network'}"
                if grant is not None:
                    # Accepted: the server holds our lease, so the wake event is no longer
                    # needed to recover this work (an expired lease is woken again).
                    ticket.settle()
                    if self._metrics is not None:
                        self._metrics.observe_claim(grant)
                    return grant
                if scope.cancelled_caught:
                    return None
            finally:
                if grant is None:
                    self._limiter.release()
            with self._cancellable(lane, "waiting") as scope:
                await self._clock.sleep(self.settings.retry.delay(retries, self._rng))
            if scope.cancelled_caught:
                return None
            retries += 1

    async def _run_claim(self, lane: _Lane, grant: ClaimGrant, wake: Wake) -> ClaimGrant | None:
        """Run the handler on a granted claim, then ack ``done`` or release; always finish.

        Return the next claim when the done-ack brought one (the claim-next extension): the
        caller runs it next, holding the same concurrency slot.
        """
        claim = Claim(grant, wake, self._client)
        lane.claim = claim
        finished = False
        next_grant: ClaimGrant | None = None
        try:
            if not self._accepting:
                await self._release(claim, why="the runner is stopping")
                self.stats.released_on_stop += 1
                finished = True
                return None
            lane.phase = "handling"
            lane.handler_scope = handler_scope = anyio.CancelScope()
            claim.on_lease_lost(lambda _lost: handler_scope.cancel(reason="lease lost"))
            self.stats.handlers_active += 1
            self.stats.last_dispatch_at = wall_time()
            outcome: Exception | None = None
            timeout = self.settings.handler_timeout
            timeout_scope = anyio.move_on_after(timeout)
            started = self._clock.now() if self._metrics is not None else 0.0
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._extend_lease, claim, name="pullwake-lease")
                    with handler_scope:
                        try:
                            with timeout_scope:
                                await self._handler(claim)
                        except LeaseLost:
                            pass
                        except Exception as exc:
                            outcome = exc
                    tg.cancel_scope.cancel(reason="handler ended")
            finally:
                self.stats.handlers_active -= 1
                lane.handler_scope = None
                if self._metrics is not None:
                    self._metrics.observe_handler(lane.sub_id, self._clock.now() - started)
            if timeout_scope.cancel_called and claim.lost is None and outcome is None:
                self.stats.handler_timeouts += 1
                outcome = TimeoutError(
                    f"the handler ran past handler_timeout ({timeout} s) and was cancelled"
                )
            if claim.lost is not None:
                self.stats.leases_lost += 1
                self._count("failed", "lease lost")
                finished = True
            elif handler_scope.cancelled_caught:
                await self._release(claim, why="the stop grace period expired")
                self.stats.released_on_stop += 1
                finished = True
            elif outcome is not None:
                logger.warning(
                    "%s failed: %r; releasing the claim",
                    claim.describe(),
                    outcome,
                    exc_info=outcome,
                    extra=self._fields(claim),
                )
                self.stats.handler_failures += 1
                self._count("failed", f"handler raised {type(outcome).__name__}")
                counts = self._count_attempt(claim)
                limit = self._max_attempts(lane.sub_id)
                poisoned = [
                    state
                    for state in claim.pending_streams
                    if limit is not None and counts[state.path] >= limit
                ]
                if poisoned:
                    finished = await self._dead_letter(lane, claim, outcome, poisoned, counts)
                if finished:
                    lane.failures = 0
                    lane.not_before = 0.0
                else:
                    lane.failures += 1
                    lane.not_before = self._clock.now() + self.settings.failure_backoff.delay(
                        lane.failures - 1, self._rng
                    )
                    await self._release(claim, why="its handler raised")
                    finished = True
            else:
                with self._cancellable(lane, "finishing"):
                    finished, next_grant = await self._complete(claim)
                if finished:
                    self._forget_attempts(lane.sub_id)
                    lane.failures = 0
                    lane.not_before = 0.0
        finally:
            if not finished and lane.claim is claim and claim.lost is None:
                await self._release(claim, why="it was never finished")
            if lane.claim is claim:
                lane.claim = None
        return next_grant

    def _count_attempt(self, claim: Claim) -> dict[str, int]:
        """Count a failed attempt on each pending stream of ``claim``; return the counts."""
        counts = {}
        for state in claim.pending_streams:
            key = (claim.subscription_id, state.path, state.acked_offset)
            counts[state.path] = self._attempts[key] = self._attempts.get(key, 0) + 1
        return counts

    def _forget_attempts(self, sub_id: str, paths: frozenset[str] | None = None) -> None:
        """Drop the counts of ``sub_id`` (of its ``paths`` only, if given): that work is over."""
        for key in [k for k in self._attempts if k[0] == sub_id]:
            if paths is None or key[1] in paths:
                del self._attempts[key]

    async def _dead_letter(
        self,
        lane: _Lane,
        claim: Claim,
        error: Exception,
        poisoned: list[StreamState],
        counts: Mapping[str, int],
    ) -> bool:
        """Move the ``poisoned`` streams' messages to the dead-letter stream; True if finished.

        Their messages go to the dead-letter stream and are acked; when they were all the
        claim's pending streams the claim is acked ``done`` (True). False means the claim
        still needs a release: other streams remain, no dead-letter stream is known, the
        append or the ack failed, or the pipeline is closing. The messages are read again
        from the claim's acked offsets, so they are what the failed attempts saw (plus any
        appended after the snapshot that the same read returned).
        """
        path = self._dead_letter_stream()
        if path is None:
            logger.error(
                "%s failed %d times but no dead-letter stream is known; retrying it",
                claim.describe(),
                max(counts.values()),
            )
            return False
        text = f"{type(error).__name__}: {error}"
        paths = frozenset(state.path for state in poisoned)
        whole = paths == frozenset(state.path for state in claim.pending_streams)
        with self._cancellable(lane, "finishing") as scope:
            try:
                if not self._dead_letter_ready:
                    await self._client.create_stream(path)
                    self._dead_letter_ready = True
                records = []
                for state in poisoned:
                    start = claim.acked(state.path)
                    attempts = counts[state.path]
                    async for batch in claim.batches(state.path):
                        records.append(_dead_letter_record(claim, batch, start, text, attempts))
                        start = batch.offset
                if records:
                    await self._client.append(path, records)
                acks = [
                    (stream, offset) for stream, offset in claim.final_acks() if stream in paths
                ]
                await claim.acknowledge(acks, done=whole, timeout=self.settings.request_timeout)
            except LeaseLost:
                self.stats.leases_lost += 1
                self._count("failed", "lease lost while dead-lettering")
                return True
            except RequestFailed as exc:
                logger.error(
                    "%s: could not move its messages to the dead-letter stream %r (%s); "
                    "releasing the claim, the next failure tries again",
                    claim.describe(),
                    path,
                    exc,
                )
                return False
        if scope.cancelled_caught:
            return False
        self._forget_attempts(claim.subscription_id, paths)
        self.stats.dead_lettered += 1
        if self._metrics is not None:
            self._metrics.dead_lettered.labels(claim.subscription_id).inc()
        self.stats.last_dead_letter_at = wall_time()
        # The failure is counted in claims_failed already; this says how it ended.
        self.stats.last_claim_result = f"dead-lettered after {max(counts.values())} attempts"
        logger.error(
            "%s failed %d times (%s); the messages of %s were moved to the dead-letter stream "
            "%r and acked",
            claim.describe(),
            max(counts.values()),
            text,
            ", ".join(sorted(paths)),
            path,
        )
        return whole

    def _retry_gap(self, claim: Claim) -> float:
        """Return the longest wait between two attempts to ack or extend a held claim.

        A third of the extension interval: after an outage, the next attempt comes soon
        enough to land well before the lease runs out, however far the backoff has grown.
        """
        return claim.lease_ttl_ms / 1000 * self.settings.extend_fraction / 3

    async def _complete(self, claim: Claim) -> tuple[bool, ClaimGrant | None]:
        """Ack ``done``, retrying transient failures until the lease runs out; True when finished.

        The first attempt asks for the next claim (claim-next; only sent to a server that
        confirmed it) unless the pipeline is stopping or another lane waits for a concurrency
        slot (a busy subscription must not keep its slot from the others). A retry does not
        ask: if the lost answer had taken a claim, its lease expires and the server wakes the
        work again. The second value is the next claim, when the answer brought one.

        The handler's work is done: giving the claim back now would have it done again. So the
        ack is retried for as long as the lease may hold, with the claim backoff but at least
        every :meth:`_retry_gap` (a server back within the lease then takes it), the last
        wait ending at the lease's end. False means the claim still needs a release (the lease
        ran out, the runner is stopping, or the ack was refused for another reason).
        """
        deadline = self._clock.now() + claim.lease_ttl_ms / 1000
        attempt = 0
        while True:
            ask = attempt == 0 and self._accepting and self._limiter.statistics().tasks_waiting == 0
            try:
                answer = await claim.finish(
                    claim.final_acks(),
                    claim_next=self._worker if ask else None,
                    timeout=self.settings.request_timeout,
                )
            except LeaseLost:
                self.stats.leases_lost += 1
                self._count("failed", "lease lost at done")
                return True, None
            except TransientError as exc:
                remaining = deadline - self._clock.now()
                if remaining <= 0 or not self._accepting:
                    logger.warning(
                        "%s: done ack failed (%s); releasing the claim",
                        claim.describe(),
                        exc,
                        extra=self._fields(claim),
                    )
                    self._count("failed", "done ack failed")
                    return False, None
                delay = self.settings.retry.delay(attempt, self._rng)
                attempt += 1
                await self._clock.sleep(min(delay, self._retry_gap(claim), remaining))
                continue
            except RequestFailed as exc:
                logger.warning(
                    "%s: done ack refused: %s", claim.describe(), exc, extra=self._fields(claim)
                )
                self._count("failed", f"done ack refused: {exc.status}")
                return False, None
            self._count("succeeded", "done")
            return True, answer.next_claim

    async def _extend_lease(self, claim: Claim) -> None:
        """Ack without ``done`` every ``extend_fraction`` of the lease while the handler runs.

        A failed extension is retried with the claim backoff, but at least every
        :meth:`_retry_gap` (three times per interval), rather than at the next tick: waiting a
        whole interval let an outage of barely a third of the lease (two missed ticks) cost
        the lease, and the finished work was then done again. So the lease survives an outage
        of about half its TTL. A lost lease shows as FENCED.
        """
        interval = claim.lease_ttl_ms / 1000 * self.settings.extend_fraction
        failures = 0
        while True:
            wait = interval
            if failures:
                wait = min(
                    self.settings.retry.delay(failures - 1, self._rng), self._retry_gap(claim)
                )
            await self._clock.sleep(wait)
            try:
                await claim.acknowledge([], done=False, timeout=self.settings.request_timeout)
            except LeaseLost:
                return
            except RequestFailed as exc:
                failures += 1
                logger.info(
                    "%s: lease extension failed: %s",
                    claim.describe(),
                    exc,
                    extra=self._fields(claim),
                )
                continue
            failures = 0

    async def _release(self, claim: Claim, *, why: str) -> None:
        """Release ``claim``; failures are logged, never raised.

        Each attempt is shielded and bounded. A transient failure (the server is restarting)
        is retried with backoff while the lease would still hold, so the work goes back as
        soon as the server can take it rather than when the lease expires; not while the
        pipeline closes, where the stop bound wins (the lease then expires on its own).
        """
        deadline = self._clock.now() + claim.lease_ttl_ms / 1000
        attempt = 0
        while True:
            bound = self._release_bound
            failure: RequestFailed | None = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(bound):
                try:
                    await self._client.release(claim.grant, timeout=bound)
                except TransientError as exc:
                    failure = exc
                except RequestFailed as exc:
                    logger.warning(
                        "could not release %s (%s): %s",
                        claim.describe(),
                        why,
                        exc,
                        extra=self._fields(claim),
                    )
                    return
                else:
                    self.stats.releases += 1
                    logger.info("released %s: %s", claim.describe(), why, extra=self._fields(claim))
                    return
            delay = self.settings.retry.delay(attempt, self._rng)
            if not self._accepting or self._clock.now() + delay >= deadline:
                logger.warning(
                    "could not release %s (%s): %s; its lease will expire and the server will "
                    "wake the subscription again",
                    claim.describe(),
                    why,
                    failure or "no answer in time",
                    extra=self._fields(claim),
                )
                return
            attempt += 1
            await self._clock.sleep(delay)

    def _fields(self, claim: Claim) -> dict[str, object]:
        """Return the ``extra=`` fields of a log line about ``claim``."""
        return {**claim.log_fields(), "runner_id": self._worker}

    def _lane_fields(self, lane: _Lane) -> dict[str, object]:
        return {"subscription": lane.sub_id, "runner_id": self._worker}

    def _count(self, result: Literal["succeeded", "skipped", "failed"], detail: str) -> None:
        if result == "succeeded":
            self.stats.claims_succeeded += 1
        elif result == "skipped":
            self.stats.claims_skipped += 1
        else:
            self.stats.claims_failed += 1
        self.stats.last_claim_at = wall_time()
        self.stats.last_claim_result = f"{result}: {detail}"

    def attempts(self) -> Mapping[tuple[str, str, str], int]:
        """Return the failed attempts per (subscription, stream, acked offset) still counted."""
        return dict(self._attempts)

    def lanes(self) -> Mapping[str, int]:
        """Return, per subscription, how many wakes wait in its lane (for diagnostics)."""
        return {sub: len(lane.queue) for sub, lane in self._lanes.items() if lane.queue}


def _dead_letter_record(
    claim: Claim, batch: Batch, start: str, error: str, attempts: int
) -> dict[str, Any]:
    """Return the dead-letter stream's record of one batch of a poisoned claim."""
    record: dict[str, Any] = {
        "type": "dead-letter",
        "subscription_id": claim.subscription_id,
        "stream": batch.stream,
        "after_offset": start,
        "offset": batch.offset,
        "error": error,
        "attempts": attempts,
        "wake_id": claim.wake_id,
        "generation": claim.generation,
        "at": wall_time(),
    }
    if any(isinstance(m, bytes) for m in batch.messages):
        record["encoding"] = "base64"
        record["messages"] = [
            base64.b64encode(m).decode("ascii") if isinstance(m, bytes) else m
            for m in batch.messages
        ]
    else:
        record["messages"] = list(batch.messages)
    return record
