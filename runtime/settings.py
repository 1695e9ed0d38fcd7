"""What a runner is told: :class:`RunnerSettings` (every tunable) and :class:`SubscriptionSpec`.

Both are frozen values, validated when made, so a bad setting fails where it is written rather
than deep inside a run. Delays are clock seconds (tests shrink them with a manual clock);
timeouts and stop bounds are real seconds.
"""

from __future__ import annotations

from typing import Any

import attrs

from .backoff import Backoff
from .claims import ClaimSettings
from .client import Timeouts
from .offsets import START_OFFSET

__all__ = [
    "RunnerSettings",
    "SubscriptionSpec",
    "one_or_more_or_none",
    "positive",
    "positive_or_none",
]


def one_or_more_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: int | None
) -> None:
    """Validate that a count is at least 1, or ``None`` (an attrs validator)."""
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be 1 or more, or None, got {value!r}")


@attrs.frozen
class SubscriptionSpec:
    """A pull-wake subscription the runner creates (or re-confirms) when it connects.

    ``wake_stream`` defaults to the runner's. Give ``pattern`` (a glob: ``*`` one segment,
    ``**`` any) or ``streams`` (explicit paths), or both. ``max_attempts`` overrides
    :attr:`RunnerSettings.max_attempts` for this subscription (it is the runner's, never sent
    to the server).
    """

    id: str
    pattern: str | None = None
    streams: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    lease_ttl_ms: int | None = None
    description: str | None = None
    wake_stream: str | None = None
    max_attempts: int | None = attrs.field(default=None, validator=one_or_more_or_none)

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


def positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    """Validate that a setting is greater than 0 (an attrs validator)."""
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value!r}")


def positive_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: float | None
) -> None:
    """Validate that a setting is greater than 0, or ``None`` (an attrs validator)."""
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0 or None, got {value!r}")


@attrs.frozen
class RunnerSettings:
    """Every tunable of a runner, with production defaults; tests shrink them.

    Delays (heartbeat and probe intervals, backoffs) are in clock seconds; timeouts and stop
    bounds are in real seconds.
    """

    #: Seconds between heartbeats; also how often liveness is probed.
    heartbeat_interval: float = attrs.field(default=5.0, validator=positive)
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
    reconnect_probe_interval: float | None = attrs.field(default=0.5, validator=positive_or_none)
    #: The claim pipeline's tunables (concurrency is overridden by ``Runner(concurrency=)``).
    claims: ClaimSettings = attrs.field(factory=ClaimSettings)
    #: After ``grace``: real seconds for cancelled handlers to end, and again for the final
    #: releases and heartbeat. ``stop()`` returns within ``grace + 3 * stop_bound``.
    stop_bound: float = attrs.field(default=1.0, validator=positive)
    #: How long the actor waits for an activity that ignores cancellation.
    exit_timeout: float = attrs.field(default=5.0, validator=positive)
    #: Where a runner with no saved offset starts reading its wake stream.
    initial_offset: str = START_OFFSET
    #: Create the wake stream (an idempotent PUT of a JSON stream) when it does not exist;
    #: ``False``, or a server that refuses the PUT, stops the runner with an error that says
    #: how to create it. A missing wake stream is never retried in a loop.
    create_wake_stream: bool = True
    #: Failed handler attempts on the same work (a subscription at the same acked offsets)
    #: before its messages go to the dead-letter stream and the claim is acked; ``None``
    #: retries forever. Counted in memory: a restart counts afresh. A subscription's
    #: ``SubscriptionSpec.max_attempts`` overrides it.
    max_attempts: int | None = attrs.field(default=5, validator=one_or_more_or_none)
    #: The JSON stream poisoned messages are appended to; ``None`` means
    #: ``<wake stream>/dead-letter``. Created (an idempotent PUT) at the first dead letter.
    dead_letter_stream: str | None = None
    #: Real seconds a handler may run before it is cancelled (a failed attempt); ``None``: no
    #: bound. Overrides ``claims.handler_timeout`` when set.
    handler_timeout: float | None = attrs.field(default=None, validator=positive_or_none)
    #: Send the request/answer exchanges (claim, ack, read, heartbeat, ...) to plain
    #: ``http://`` servers over the lean HTTP client (:mod:`.lean_http`, a fraction of httpx's
    #: CPU) where it is safe; ``False`` keeps httpx for everything. See docs/runner.md.
    lean_http: bool = True

    def heartbeat_bound(self) -> float:
        return self.heartbeat_timeout or self.heartbeat_interval

    def heartbeat_lease_ms(self) -> int:
        """Return the lease to ask for: three intervals, at least the 1 s servers accept."""
        return self.lease_ms or max(1000, int(self.heartbeat_interval * 3000))
