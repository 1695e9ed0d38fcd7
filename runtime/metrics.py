"""Prometheus metrics of a runner: what a user scrapes or hands to their app's registry.

Theory of operation
-------------------
A runner already counts everything an operator asks about, in plain integers with one writer
each (:class:`~.claims.ClaimStatistics`, the reconnect counter, the chart's state). So most
metrics cost nothing per wake: a :class:`RunnerMetrics` registers a *collector* that reads those
counters when the registry is scraped. Only what no counter holds is recorded as it happens,
and only while metrics are on (``Runner(metrics_registry=...)``):

- ``pullwake_runner_handler_duration_seconds`` (histogram, by subscription): one observation
  per handler call, in clock seconds (a manual clock makes it exact in tests);
- ``pullwake_runner_pending_streams`` (gauge, by subscription): the lag the last claim answer
  told: how many of the subscription's streams had messages past their acked offset (offsets
  are opaque in the protocol, so "how far behind" is counted in streams, not messages);
- ``pullwake_runner_dead_lettered_total`` (counter, by subscription): messages moved to a
  dead-letter stream. **Whoever dead-letters a message increments**
  ``metrics.dead_lettered.labels(subscription_id).inc()`` (only when the runner has metrics:
  ``if metrics is not None``).

Read at scrape time: ``pullwake_runner_wakes_total``, ``pullwake_runner_claims_total`` (by
``outcome``: succeeded, skipped, failed), ``pullwake_runner_claim_retries_total``,
``pullwake_runner_handler_failures_total``, ``pullwake_runner_releases_total``,
``pullwake_runner_leases_lost_total``, ``pullwake_runner_reconnects_total``,
``pullwake_runner_handlers_active``, ``pullwake_runner_wakes_queued`` and
``pullwake_runner_state`` (1 for the chart's current leaf state, 0 for every other one). Every
series carries a ``runner`` label with the runner id, so one registry may hold several runners.

:func:`serve_metrics` exposes a registry over HTTP on the runner's own event loop (``pullwake
run --metrics-port``): prometheus_client's ``start_http_server`` would serve from a thread,
which would read the runner's counters while the loop changes them, and its ASGI app needs an
ASGI server the runner does not depend on. A scrape is one small ``GET``; the answer is made
in the loop in well under a millisecond for a runner's few series.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from pullwake.machines.lifecycle import LIFECYCLE

if TYPE_CHECKING:
    from .client import ClaimGrant
    from .runner import Runner

__all__ = ["RunnerMetrics", "serve_metrics"]

logger = logging.getLogger("pullwake.metrics")


class RunnerMetrics:
    """The metrics of one runner, registered in ``registry`` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, runner_id: str) -> None:
        self.registry = registry
        self.runner_id = runner_id
        shared = _shared_series(registry)
        self.handler_seconds = shared.handler_seconds
        self.pending_streams = _LabelledGauge(runner_id)
        #: Messages moved to a dead-letter stream; increment with ``.labels(sub).inc()``.
        self.dead_lettered = _RunnerCounter(shared.dead_lettered, runner_id)
        self._collector: _RunnerCollector | None = None

    def bind(self, runner: Runner) -> None:
        """Expose ``runner``'s counters through the registry (once per runner)."""
        assert self._collector is None, "a RunnerMetrics serves one runner"
        self._collector = _RunnerCollector(runner, self.pending_streams)
        self.registry.register(self._collector)

    def observe_handler(self, subscription_id: str, seconds: float) -> None:
        """Record one handler call of ``subscription_id`` that took ``seconds``."""
        self.handler_seconds.labels(self.runner_id, subscription_id).observe(seconds)

    def observe_claim(self, grant: ClaimGrant) -> None:
        """Record the lag a claim answer told: its streams with pending messages."""
        pending = 0
        for stream in grant.streams:
            if stream.has_pending:
                pending += 1
        self.pending_streams.values[grant.subscription_id] = pending


class _SharedSeries:
    """The recorded series of one registry, shared by its runners (a name registers once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handler_seconds = Histogram(
            "pullwake_runner_handler_duration_seconds",
            "Time a handler took, from its call to its return or exception.",
            ["runner", "subscription"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "pullwake_runner_dead_lettered",
            "Messages moved to a dead-letter stream after their retry limit.",
            ["runner", "subscription"],
            registry=registry,
        )


# Registry -> its recorded series; entries go with their registry.
_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, _SharedSeries] = weakref.WeakKeyDictionary()


def _shared_series(registry: CollectorRegistry) -> _SharedSeries:
    series = _SHARED.get(registry)
    if series is None:
        series = _SHARED[registry] = _SharedSeries(registry)
    return series


class _RunnerCounter:
    """A counter whose ``runner`` label is fixed: ``.labels(subscription)`` names the rest."""

    def __init__(self, counter: Counter, runner_id: str) -> None:
        self._counter = counter
        self._runner_id = runner_id

    def labels(self, subscription_id: str) -> Counter:
        return self._counter.labels(self._runner_id, subscription_id)


class _LabelledGauge:
    """Values by subscription, read at scrape time (written by the claim pipeline only)."""

    def __init__(self, runner_id: str) -> None:
        self.runner_id = runner_id
        self.values: dict[str, int] = {}


class _RunnerCollector(Collector):
    """Read a runner's counters at scrape time (nothing is recorded per wake)."""

    def __init__(self, runner: Runner, pending: _LabelledGauge) -> None:
        self._runner = runner
        self._pending = pending

    def collect(self) -> Iterator[Metric]:
        runner = self._runner
        rid = runner.runner_id
        stats = runner.statistics()
        claims = stats.claims

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["runner"])
            family.add_metric([rid], value)
            return family

        def gauge(name: str, doc: str, value: int) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["runner"])
            family.add_metric([rid], value)
            return family

        yield counter(
            "pullwake_runner_wakes",
            "Wakes read for this runner's subscriptions.",
            claims.wakes_submitted,
        )
        outcomes = CounterMetricFamily(
            "pullwake_runner_claims", "Claim attempts, by outcome.", labels=["runner", "outcome"]
        )
        outcomes.add_metric([rid, "succeeded"], claims.claims_succeeded)
        outcomes.add_metric([rid, "skipped"], claims.claims_skipped)
        outcomes.add_metric([rid, "failed"], claims.claims_failed)
        yield outcomes
        yield counter(
            "pullwake_runner_claim_retries",
            "Claims retried after a transient failure (network, 5xx).",
            claims.claim_retries,
        )
        yield counter(
            "pullwake_runner_handler_failures",
            "Handler calls that raised (their claim was released, to be retried).",
            claims.handler_failures,
        )
        yield counter("pullwake_runner_releases", "Claims released.", claims.releases)
        yield counter(
            "pullwake_runner_leases_lost", "Claims whose lease was lost.", claims.leases_lost
        )
        yield counter(
            "pullwake_runner_reconnects", "Reconnects of the wake stream begun.", stats.reconnects
        )
        yield gauge(
            "pullwake_runner_handlers_active", "Handlers running now.", claims.handlers_active
        )
        yield gauge(
            "pullwake_runner_wakes_queued",
            "Wakes read but not claimed yet (behind a busy subscription or a backoff).",
            claims.wakes_queued,
        )
        pending = GaugeMetricFamily(
            "pullwake_runner_pending_streams",
            "Streams with pending messages in the subscription's last claim answer.",
            labels=["runner", "subscription"],
        )
        for sub, value in sorted(self._pending.values.items()):
            pending.add_metric([rid, sub], value)
        yield pending
        state = GaugeMetricFamily(
            "pullwake_runner_state",
            "The lifecycle chart's leaf state: 1 for the current one.",
            labels=["runner", "state"],
        )
        current = stats.state
        for name in LEAF_STATES:
            state.add_metric([rid, name], 1 if name == current else 0)
        yield state


#: The chart's leaf states, one ``pullwake_runner_state`` series each.
LEAF_STATES = tuple(name for name in LIFECYCLE.states() if LIFECYCLE.is_leaf(name))


# -- serving --------------------------------------------------------------------------------

_MAX_REQUEST = 16 * 1024


async def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` (and ``GET /``) with ``registry``'s exposition until cancelled.

    Start it with ``port = await task_group.start(serve_metrics, registry, port)``: the bound
    port is returned (useful with 0). Each connection gets one answer and is closed.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.info("serving metrics on http://%s:%d/metrics", host, bound)
        task_status.started(bound)
        await listener.serve(_answer(lambda: generate_latest(registry)))


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"


def _respond(request_line: bytes, exposition: Callable[[], bytes]) -> tuple[bytes, bytes, bytes]:
    """Return the status, content type and body that answer ``request_line``."""
    parts = request_line.split()
    if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
        body = _error("METHOD_NOT_ALLOWED", "Only GET /metrics is served here.")
        return b"405 Method Not Allowed", b"application/json", body
    if parts[1].split(b"?")[0] not in (b"/", b"/metrics"):
        return b"404 Not Found", b"application/json", _error("NOT_FOUND", "Scrape GET /metrics.")
    try:
        return b"200 OK", CONTENT_TYPE_LATEST.encode(), exposition()
    except Exception:
        logger.exception("could not collect the runner's metrics")
        body = _error("INTERNAL", "Collecting the metrics failed (logged); this is a bug.")
        return b"500 Internal Server Error", b"application/json", body


def _answer(
    exposition: Callable[[], bytes],
) -> Callable[[anyio.abc.SocketStream], Any]:
    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(10):
                head = b""
                try:
                    while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST:
                        head += await stream.receive()
                    request_line = head.split(b"\r\n", 1)[0]
                    status, ctype, body = _respond(request_line, exposition)
                    header = (
                        b"HTTP/1.1 "
                        + status
                        + b"\r\ncontent-type: "
                        + ctype
                        + b"\r\ncontent-length: "
                        + str(len(body)).encode()
                        + b"\r\nconnection: close\r\n\r\n"
                    )
                    head_only = request_line.startswith(b"HEAD ")
                    await stream.send(header + (b"" if head_only else body))
                except (
                    anyio.EndOfStream,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                    OSError,
                ):
                    # The scraper went away: nothing to answer.
                    return

    return handle
