"""Heartbeat the server while the runner runs: liveness, resume offset, diagnostics.

Theory of operation
-------------------
The heartbeat is the activity of the chart's ``running`` state: it starts with the run and
survives reconnects. Every ``interval`` (clock seconds) it makes one bounded exchange:

- with a runner registry: ``POST /v1/runners/{id}/heartbeat`` carrying the lease, the committed
  wake-stream offset and the diagnostics. 404 means the server forgot the runner (a wiped
  database, a new server): register again at once and repeat the beat;
- without one (404 on ``POST /v1/runners`` at registration, e.g. the reference server): ``HEAD``
  on the wake stream is the liveness probe, and the offset goes to the local offset store.

Its outcomes drive the chart, which is how the runner notices a dead server even while the wake
stream is idle or a connect hangs: after ``failures_before_reset`` consecutive failures it sends
``stream_reset`` (aborting a hung connect, or a stream that reads nothing from a dead server).
A 401/403 ends the activity with the ``rejected`` event, the refusal travelling with it. It
never raises: any other failure is recorded and counted, and the next beat comes after the
next pause. Its pace never changes: what the chart is doing is the chart's business.

:meth:`Heartbeat.probe` is a second activity, owned by the chart's ``server_gone`` state (the
runner waits to reconnect to a server that gave no answer). It makes the same exchange every
``probe_interval``, each pause drawn at random between half of it and all of it so that a
fleet that lost the same server does not probe it in lockstep, and returns on the first one
that gets through: its done event, ``server_reachable``, cuts the backoff short. So a reconnect
follows the server's return within about one ``probe_interval``, however far the backoff has
grown. After an *answer* (an HTTP error, a protocol violation, a clean end) the chart is in
``after_answer``, where no probe runs: the backoff paces the retries alone, so a server that
answers errors is not made to answer them faster.

:meth:`nudge` makes the loop beat now (the read activity calls it when a stream opens, so the
server's view follows a reconnect at once). The final heartbeat of a clean stop (status
``stopped``) is sent by the drain with :meth:`Heartbeat.final`, so the server shows the runner
``offline``, not ``expired``.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Protocol

import anyio

from .actor import ActivityContext, Outcome
from .client import Client, describe_failure
from .clock import Clock, wall_time
from .diagnostics import Diagnostics
from .errors import NotFound, Rejected, RequestFailed, TransientError

__all__ = ["Heartbeat", "HeartbeatHost"]

logger = logging.getLogger("pullwake.heartbeat")

#: The final heartbeat of a clean stop is tried this often on a transient failure (within the
#: stop's bound), pausing FINAL_RETRY_PAUSE, then twice that, between tries.
FINAL_ATTEMPTS = 3
FINAL_RETRY_PAUSE = 0.2

#: Fraction of ``probe_interval`` that is random: each probe pause is in ``[p/2, p]``.
PROBE_JITTER = 0.5


class HeartbeatHost(Protocol):
    """What the heartbeat needs from the run it belongs to."""

    runner_id: str
    client: Client
    diagnostics: Diagnostics

    @property
    def registry(self) -> bool | None: ...

    @property
    def wake_stream(self) -> str | None: ...

    async def ensure_registered(self) -> None: ...

    def forget_registration(self) -> None: ...

    async def persist_offset(self) -> str | None: ...

    def report(self) -> dict[str, Any]: ...


class Heartbeat:
    """The heartbeat loop and the final beat; see the module docstring."""

    def __init__(
        self,
        host: HeartbeatHost,
        *,
        clock: Clock,
        interval: float,
        timeout: float,
        lease_ms: int,
        failures_before_reset: int = 2,
        probe_interval: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._host = host
        self._clock = clock
        self.interval = interval
        self.timeout = timeout
        self.lease_ms = lease_ms
        self.failures_before_reset = failures_before_reset
        #: The pause (before jitter) between probes of a gone server; None: ``interval``.
        self.probe_interval = probe_interval
        self._rng = rng or random.Random()
        self._one_at_a_time = anyio.Lock()
        # Invariant: failures since the last successful beat.
        self.consecutive_failures = 0
        # Invariant: the clock time the running pause ends; None while no pause runs.
        self._due: float | None = None
        # Invariant: True once nudge() asked the running pause to end now; reset as a pause
        # starts (a nudge during a beat is spent by that beat).
        self._beat_now = False
        # Invariant: set by nudge() to make the running pause look again at _due and
        # _beat_now; replaced for each sleep.
        self._woken: anyio.Event | None = None

    def nudge(self) -> None:
        """Beat now instead of at the end of the pause (the wake stream just connected).

        The server's view of the runner (its verdict, ``stream_connected``) then follows a
        reconnect at once rather than up to one interval later.
        """
        self._beat_now = True
        self._wake()

    def _probe_pause(self) -> float:
        """Return a jittered pause in ``[p/2, p]`` before the next probe, at most ``interval``."""
        if self.probe_interval is None:
            return self.interval
        probe = self.probe_interval * (1.0 - PROBE_JITTER * self._rng.random())
        return min(self.interval, probe)

    def _wake(self) -> None:
        if self._woken is not None:
            self._woken.set()

    async def _pause(self) -> None:
        """Wait on the clock until the next beat is due; :meth:`nudge` ends the wait."""
        self._beat_now = False
        self._due = self._clock.now() + self.interval
        try:
            while not self._beat_now:
                remaining = self._due - self._clock.now()
                if remaining <= 0 or not await self._sleep_unless_woken(remaining):
                    return
        finally:
            self._due = None

    async def _sleep_unless_woken(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the clock; return True when :meth:`_wake` ended it early."""
        self._woken = woken = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def end_when_woken() -> None:
                await woken.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(end_when_woken)
            await self._clock.sleep(seconds)
            tg.cancel_scope.cancel()
        return woken.is_set()

    async def beat(self, *, status: str | None = None) -> None:
        """Send one heartbeat (or probe); raise the mapped error when it fails.

        The whole beat, registration and the wait for a beat under way included, is bounded by
        ``timeout``: a beat that cannot
        finish in time raises ``TimeoutError`` (saying so) and counts as a failure.
        """
        try:
            with anyio.fail_after(self.timeout):
                # The loop and the probe take turns: one exchange (and offset save) at a time.
                async with self._one_at_a_time:
                    await self._beat(status)
        except TimeoutError as exc:
            if str(exc):
                raise
            raise TimeoutError(f"no answer within {self.timeout:g} s") from exc

    async def _beat(self, status: str | None) -> None:
        host = self._host
        await host.ensure_registered()
        offset = await host.persist_offset()
        if host.registry:
            report = host.report()
            if status is not None:
                report["status"] = status
            try:
                await self._send(offset, report)
            except NotFound:
                logger.warning(
                    "server forgot runner %r; registering again",
                    host.runner_id,
                    extra={"runner_id": host.runner_id},
                )
                host.forget_registration()
                await host.ensure_registered()
                await self._send(offset, report)
        elif host.wake_stream is not None:
            await host.client.probe(host.wake_stream, timeout=self.timeout)

    async def _send(self, offset: str | None, report: dict[str, Any]) -> None:
        await self._host.client.heartbeat(
            self._host.runner_id,
            lease_ms=self.lease_ms,
            wake_stream_offset=offset,
            diagnostics=report,
            timeout=self.timeout,
        )

    async def run(self, ctx: ActivityContext) -> Outcome | None:
        """Beat until cancelled; end with ``rejected`` on a 401/403 (the chart's activity)."""
        while True:
            try:
                await self.beat()
            except Rejected as exc:
                self._failed(exc, quiet=False)
                return Outcome("rejected", exc)
            except (RequestFailed, TimeoutError, OSError) as exc:
                # An error answer; no answer within the bound (a hung server, or a
                # registration in progress that hangs); or the local offset store failed.
                self._failed(exc, quiet=False)
            else:
                self._succeeded()
            if self.consecutive_failures >= self.failures_before_reset:
                ctx.send("stream_reset")
            await self._pause()

    async def probe(self, ctx: ActivityContext) -> Outcome | None:
        """Beat every jittered ``probe_interval`` until one gets through (the chart's probe).

        Returning is the done event (``server_reachable``); a 401/403 ends it with
        ``rejected``. Its failures count like the loop's, but past the first few they are
        logged at debug level: a server known to be gone fails several probes a second.
        """
        while True:
            await self._clock.sleep(self._probe_pause())
            try:
                await self.beat()
            except Rejected as exc:
                self._failed(exc, quiet=False)
                return Outcome("rejected", exc)
            except (RequestFailed, TimeoutError, OSError) as exc:
                self._failed(exc, quiet=self.consecutive_failures >= self.failures_before_reset)
            else:
                self._succeeded()
                return None

    def _succeeded(self) -> None:
        self.consecutive_failures = 0
        diagnostics = self._host.diagnostics
        diagnostics.last_heartbeat_ok = True
        diagnostics.last_heartbeat_at = wall_time()

    def _failed(self, exc: BaseException, *, quiet: bool) -> None:
        self.consecutive_failures += 1
        diagnostics = self._host.diagnostics
        diagnostics.heartbeat_failures += 1
        diagnostics.last_heartbeat_ok = False
        diagnostics.last_heartbeat_at = wall_time()
        diagnostics.record_error(f"heartbeat: {describe_failure(exc)}")
        # Probes of a server already known to be gone fail several times a second: the first
        # failures are news, the rest go to the debug log (the diagnostics count them all).
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "heartbeat failed (%d in a row): %s",
            self.consecutive_failures,
            describe_failure(exc),
            extra={"runner_id": self._host.runner_id},
        )

    async def final(self) -> bool:
        """Send the last heartbeat of a clean stop (status ``stopped``); True when it got through.

        The caller bounds it in time. Failures are logged, not raised: a stop must complete.
        """
        if self._host.registry is not True:
            return False
        for attempt in range(FINAL_ATTEMPTS):
            try:
                await self.beat(status="stopped")
            except TransientError as exc:
                # A server that is itself recovering (its database restarting) answers 503 for
                # a moment: try again briefly, or the runner would show expired, not offline.
                if attempt + 1 < FINAL_ATTEMPTS:
                    await self._clock.sleep(FINAL_RETRY_PAUSE * (attempt + 1))
                    continue
                failure: Exception = exc
            except (RequestFailed, TimeoutError) as exc:
                failure = exc
            else:
                return True
            logger.warning(
                "final heartbeat failed: %s",
                describe_failure(failure),
                extra={"runner_id": self._host.runner_id},
            )
            return False
        return False
