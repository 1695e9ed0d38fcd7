"""Helpers for runner tests against real server processes (``server_factory``, reference).

- :class:`Producer`: the application side, over plain HTTP: streams, subscriptions, appends.
- :class:`Collector`: a handler that records what it handled, exactly as claimed.
- :class:`FlakyTransport`: a real HTTP transport that answers or fails chosen requests itself
  (a claim 503, a lost lease extension), because a healthy server will not do that on cue.
- :func:`fast_settings`: runner settings scaled down so fault tests finish in seconds.
- :class:`Transitions`: the actor's records, with waits on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from pullwake.runtime import RunnerSettings, SubscriptionSpec
from pullwake.runtime.actor import TransitionRecord
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.claims import ClaimSettings
from pullwake.runtime.client import Timeouts
from pullwake.runtime.work import Claim
from pullwake.testing import subscription_body

from .waiting import wait_until

__all__ = [
    "Collector",
    "FlakyTransport",
    "Producer",
    "Transitions",
    "fast_settings",
    "is_claim",
    "is_extension",
    "wait_until",
]

WAIT = 15.0


def fast_settings(**overrides: Any) -> RunnerSettings:
    """Runner settings for tests: sub-second heartbeats, timeouts and backoffs."""
    options: dict[str, Any] = {
        "heartbeat_interval": 0.3,
        "heartbeat_timeout": 0.3,
        "timeouts": Timeouts(connect=1.0, read=2.0, request=2.0),
        "backoff": Backoff(initial=0.05, maximum=0.5),
        "claims": ClaimSettings(
            retry=Backoff(initial=0.05, maximum=0.3),
            failure_backoff=Backoff(initial=0.1, maximum=0.5),
            request_timeout=2.0,
        ),
        "stop_bound": 0.5,
        "exit_timeout": 3.0,
    }
    options.update(overrides)
    return RunnerSettings(**options)


class Producer:
    """The application side of a test: creates streams and subscriptions, appends messages."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=5.0)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def stream(self, path: str) -> None:
        response = await self.http.put(
            f"/v1/stream/{path}", headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (200, 201), response.text

    async def subscribe(
        self,
        sub_id: str,
        *,
        wake_stream: str,
        pattern: str | None = None,
        streams: list[str] | None = None,
        lease_ttl_ms: int | None = None,
    ) -> None:
        spec = SubscriptionSpec(
            sub_id, pattern=pattern, streams=streams or (), lease_ttl_ms=lease_ttl_ms
        )
        body = subscription_body(spec, wake_stream)
        response = await self.http.put(f"/v1/stream/__ds/subscriptions/{sub_id}", json=body)
        assert response.status_code in (200, 201), response.text

    async def append(self, path: str, *values: Any) -> None:
        response = await self.http.post(
            f"/v1/stream/{path}",
            content=json.dumps(list(values)),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code in (200, 204), response.text

    async def subscription(self, sub_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/stream/__ds/subscriptions/{sub_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def health(self, runner_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/runners/{runner_id}/health")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


class Collector:
    """A handler that records every message it handled, per subscription, in order."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, Any]] = []
        self.calls = 0

    async def __call__(self, claim: Claim) -> None:
        self.calls += 1
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                self.handled.append((claim.subscription_id, message))

    def messages(self) -> list[Any]:
        return [message for _, message in self.handled]

    async def wait_for(self, count: int, timeout: float = WAIT) -> None:
        await wait_until(lambda: len(self.handled) >= count, timeout=timeout)


Rule = Callable[[httpx.Request], httpx.Response | Exception | None]


class FlakyTransport(httpx.AsyncBaseTransport):
    """A real transport, except for requests a rule answers (a response) or fails (an error)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.rules: list[Rule] = []
        self.intercepted: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for rule in self.rules:
            outcome = rule(request)
            if outcome is None:
                continue
            self.intercepted.append(request)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def is_claim(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/claim")


def is_extension(request: httpx.Request) -> bool:
    """Return True for an ack without ``done`` (a lease extension)."""
    if request.method != "POST" or not request.url.path.endswith("/ack"):
        return False
    return not json.loads(request.content).get("done", False)


class Transitions:
    """Collect the actor's records (pass ``.append`` as ``inspect=``); wait on them."""

    def __init__(self) -> None:
        self.records: list[TransitionRecord] = []

    def append(self, record: TransitionRecord) -> None:
        self.records.append(record)

    def steps(self) -> list[tuple[str, str, str]]:
        return [
            (r.source[-1], r.event or "", r.target[-1])
            for r in self.records
            if r.kind == "transition"
        ]

    def find(self, source: str, event: str) -> list[TransitionRecord]:
        return [
            r
            for r in self.records
            if r.kind == "transition" and r.source[-1] == source and r.event == event
        ]

    async def wait(self, source: str, event: str, count: int = 1, timeout: float = WAIT) -> None:
        await wait_until(lambda: len(self.find(source, event)) >= count, timeout=timeout)
