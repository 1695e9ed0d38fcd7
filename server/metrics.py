"""Prometheus metrics, one registry per app (two apps in one process never share counters)."""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from pullwake import __version__


class Metrics:
    """The server's counters and the registry that exposes them at ``/metrics``."""

    def __init__(self) -> None:
        # No ``_created`` series: they double the exposition and no dashboard reads them
        # (prometheus_client's switch is process-wide; this server wants it either way).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pullwake_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "pullwake_http_request_duration_seconds",
            "Time to answer a non-streaming HTTP request.",
            ["route", "method"],
            registry=self.registry,
        )
        self.sse_open = Gauge(
            "pullwake_sse_streams_open",
            "SSE responses currently open.",
            registry=self.registry,
        )
        self.messages_appended = Counter(
            "pullwake_messages_appended",
            "Messages appended to streams through this server.",
            registry=self.registry,
        )
        self.wakes = Counter(
            "pullwake_wakes",
            "Wake events appended to wake streams by appends through this server.",
            registry=self.registry,
        )
        self.claims = Counter(
            "pullwake_claims",
            "Claim attempts, by outcome (the error code, or ok).",
            ["outcome"],
            registry=self.registry,
        )
        self.acks = Counter(
            "pullwake_acks",
            "Acks, by kind (extend: a lease extension; done: the work finished) and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.releases = Counter(
            "pullwake_releases",
            "Claims given back without done, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.info = Info(
            "pullwake_server",
            "This server's version and Python.",
            registry=self.registry,
        )
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux /proc only).
        ProcessCollector(registry=self.registry)
        self.info.info({"version": __version__, "python": platform.python_version()})
        self.leases_expired = Counter(
            "pullwake_leases_expired",
            "Claim leases the sweeper cleared.",
            registry=self.registry,
        )
        self.unexpected_errors = Counter(
            "pullwake_unexpected_errors",
            "Requests that ended in a 500 (each one is a bug).",
            registry=self.registry,
        )
        # The labelled children of the per-request metrics, by label values: ``labels()``
        # validates its arguments and takes the metric's lock on every call: the two calls of
        # a request cost 8.0 µs that way, 3.3 µs through this cache (timeit, on the loaded
        # 2-core machine). Bounded: route templates, methods and statuses are finite sets.
        self._request_counters: dict[tuple[str, str, int], Any] = {}
        self._request_timers: dict[tuple[str, str], Any] = {}

    def count_request(self, route: str, method: str, status: int) -> None:
        """Count one answered request (``pullwake_http_requests``)."""
        key = (route, method, status)
        child = self._request_counters.get(key)
        if child is None:
            child = self._request_counters[key] = self.requests.labels(route, method, str(status))
        child.inc()

    def time_request(self, route: str, method: str, seconds: float) -> None:
        """Observe one non-streaming request's duration (``pullwake_http_request_duration``)."""
        key = (route, method)
        child = self._request_timers.get(key)
        if child is None:
            child = self._request_timers[key] = self.request_seconds.labels(route, method)
        child.observe(seconds)

    def exposition(self) -> bytes:
        """Return the text exposition of every metric."""
        return generate_latest(self.registry)
