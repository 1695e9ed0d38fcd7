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
``stream_reset`` (aborting a hung connect, or a stream that reads nothing from a dead server);
a success while the chart is ``reconnecting`` sends ``server_reachable`` so the backoff is cut
short. A 401/403 ends the activity with the ``rejected`` event. It never raises: any other
failure is recorded and counted, and the next beat comes after ``interval``.

The final heartbeat of a clean stop (status ``stopped``) is sent by the drain with
:meth:`Heartbeat.final`, so the server shows the runner ``offline``, not ``expired``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import anyio

from .actor import ActivityContext
from .claims import wall_time
from .client import Client, describe_failure
from .clock import Clock
from .diagnostics import Diagnostics
from .errors import NotFound, Rejected, RequestFailed

__all__ = ["Heartbeat", "HeartbeatHost"]

logger = logging.getLogger("pullwake.heartbeat")


class HeartbeatHost(Protocol):
    """What the heartbeat needs from the run it belongs to."""

    runner_id: str
    client: Client
    diagnostics: Diagnostics

    @property
    def registry(self) -> bool | None: ...

    @property
    def wake_stream(self) -> str | None: ...

    @property
    def state(self) -> str: ...

    async def ensure_registered(self) -> None: ...

    def forget_registration(self) -> None: ...

    async def persist_offset(self) -> str | None: ...

    def report(self) -> dict[str, Any]: ...

    def reject(self, error: Rejected) -> None: ...


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
    ) -> None:
        self._host = host
        self._clock = clock
        self.interval = interval
        self.timeout = timeout
        self.lease_ms = lease_ms
        self.failures_before_reset = failures_before_reset
        # Invariant: failures since the last successful beat.
        self.consecutive_failures = 0
        # Invariant: set by nudge() to end the current pause early; replaced after each pause.
        self._nudged: anyio.Event | None = None

    def nudge(self) -> None:
        """Beat now instead of at the end of the interval (the wake stream just connected).

        The server's view of the runner (its verdict, ``stream_connected``) then follows a
        reconnect at once rather than up to one interval later.
        """
        if self._nudged is not None:
            self._nudged.set()

    async def _pause(self) -> None:
        """Wait ``interval`` on the clock, or less if nudged."""
        self._nudged = nudged = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def end_on_nudge() -> None:
                await nudged.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(end_on_nudge)
            await self._clock.sleep(self.interval)
            tg.cancel_scope.cancel()

    async def beat(self, *, status: str | None = None) -> None:
        """Send one heartbeat (or probe); raise the mapped error when it fails.

        The whole beat, registration included, is bounded by ``timeout``: a beat that cannot
        finish in time raises ``TimeoutError`` and counts as a failure.
        """
        with anyio.fail_after(self.timeout):
            await self._beat(status)

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
                logger.warning("server forgot runner %r; registering again", host.runner_id)
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

    async def run(self, ctx: ActivityContext) -> str | None:
        """Beat until cancelled; return ``"rejected"`` on a 401/403 (the chart's activity)."""
        diagnostics = self._host.diagnostics
        while True:
            try:
                await self.beat()
            except Rejected as exc:
                self._failed(exc)
                self._host.reject(exc)
                return "rejected"
            except RequestFailed as exc:
                self._failed(exc)
            except (TimeoutError, OSError) as exc:
                # No answer within the bound (a hung server, or a registration in progress
                # that hangs), or the local offset store could not be written.
                self._failed(exc)
            else:
                self.consecutive_failures = 0
                diagnostics.last_heartbeat_ok = True
                diagnostics.last_heartbeat_at = wall_time()
                if self._host.state == "reconnecting":
                    ctx.send("server_reachable")
            if self.consecutive_failures >= self.failures_before_reset:
                ctx.send("stream_reset")
            await self._pause()

    def _failed(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        diagnostics = self._host.diagnostics
        diagnostics.heartbeat_failures += 1
        diagnostics.last_heartbeat_ok = False
        diagnostics.last_heartbeat_at = wall_time()
        diagnostics.record_error(f"heartbeat: {describe_failure(exc)}")
        logger.warning(
            "heartbeat failed (%d in a row): %s", self.consecutive_failures, describe_failure(exc)
        )

    async def final(self) -> bool:
        """Send the last heartbeat of a clean stop (status ``stopped``); True when it got through.

        The caller bounds it in time. Failures are logged, not raised: a stop must complete.
        """
        if self._host.registry is not True:
            return False
        try:
            await self.beat(status="stopped")
        except (RequestFailed, TimeoutError) as exc:
            logger.warning("final heartbeat failed: %s", describe_failure(exc))
            return False
        return True
