"""The runner recovers what no wake points to, a missing wake stream and poison messages.

Against a real ``pullwake server`` process: work whose wake never reached the runner is
claimed when the wake stream connects (wakes are hints); a wake stream that does not exist is
created, or the runner stops with an error that says how to create it; a handler that always
fails ends in the dead-letter stream after the configured attempts, and the rest flows.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from pullwake.runtime import Claim, Runner, RunnerError, SubscriptionSpec
from tests.fixtures.servers import ServerFactory, ServerProcess

from .realserver import Collector, Producer, fast_settings, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SERVER_ARGS = ["--keepalive", "0.3", "--lease-sweep-interval", "0.1", "--shutdown-grace", "0.5"]


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=SERVER_ARGS)


def runner_for(url: str, handler: Any, **kwargs: Any) -> Runner:
    options: dict[str, Any] = {
        "runner_id": "r1",
        "wake_stream": "wake/r1",
        "grace": 1.0,
        "settings": fast_settings(),
    }
    options.update(kwargs)
    return Runner(url, handler=handler, **options)


async def test_work_whose_wake_never_reached_the_runner_is_claimed_when_it_connects(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    async with Producer(server.url) as producer:
        # The subscription wakes another stream, which nobody reads: no wake ever reaches r1.
        await producer.stream("wake/r1")
        await producer.stream("wake/elsewhere")
        await producer.stream("jobs/a")
        await producer.subscribe("jobs", wake_stream="wake/elsewhere", pattern="jobs/*")
        await producer.append("jobs/a", {"i": 0}, {"i": 1}, {"i": 2})
        with anyio.fail_after(20):
            async with runner_for(server.url, handler, subscriptions=["jobs"]) as runner:
                await handler.wait_for(3)
                await wait_until(lambda: runner.health()["claims_succeeded"] == 1)
                health = runner.health()
    assert handler.messages() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert health["wakes_received"] == 0
    assert health["claims_failed"] == 0


async def read_all(producer: Producer, path: str) -> list[Any]:
    response = await producer.http.get(f"/v1/stream/{path}", params={"offset": "-1"})
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()
    return data


class Picky(Collector):
    """Handle messages like a Collector, but raise on any claim that holds a poisoned one."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def __call__(self, claim: Claim) -> None:
        self.calls += 1
        seen = []
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                seen.append(message)
        if any(isinstance(m, dict) and m.get("poison") for m in seen):
            self.failures += 1
            raise ValueError(f"cannot handle {seen!r}")
        self.handled.extend((claim.subscription_id, m) for m in seen)


async def test_a_handler_that_always_raises_ends_in_the_dead_letter_stream_and_the_rest_flows(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Picky()
    spec = SubscriptionSpec("jobs", pattern="jobs/*", max_attempts=3)
    registry = CollectorRegistry()
    async with Producer(server.url) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        with anyio.fail_after(30):
            runner = runner_for(
                server.url, handler, subscriptions=[spec], metrics_registry=registry
            )
            async with runner:
                await runner.wait_state("streaming")
                await producer.append("jobs/a", {"poison": True, "n": 1})
                await wait_until(lambda: runner.health()["dead_lettered"] == 1)
                await producer.append("jobs/a", {"i": 0}, {"i": 1})
                await handler.wait_for(2)
                await wait_until(lambda: runner.health()["handlers_active"] == 0)
                health = runner.health()
            letters = await read_all(producer, "wake/r1/dead-letter")
            # Nothing is left pending: the poisoned message was acked with its dead letter.
            claim = await producer.http.post(
                "/v1/stream/__ds/subscriptions/jobs/claim", json={"worker": "check"}
            )
    assert handler.failures == 3
    assert handler.messages() == [{"i": 0}, {"i": 1}]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["messages"] == [{"poison": True, "n": 1}]
    assert letter["subscription_id"] == "jobs"
    assert letter["stream"] == "jobs/a"
    assert letter["attempts"] == 3
    assert "ValueError: cannot handle" in letter["error"]
    assert letter["after_offset"] != letter["offset"]
    assert health["dead_lettered"] == 1
    assert health["handler_failures"] == 3
    dead = {"runner": "r1", "subscription": "jobs"}
    assert registry.get_sample_value("pullwake_runner_dead_lettered_total", dead) == 1
    assert any("dead-letter" in problem for problem in health["problems"])
    assert claim.status_code == 409, claim.text
    assert claim.json()["error"]["code"] == "NO_PENDING_WORK"


async def test_a_handler_past_its_timeout_is_cancelled_and_counts_as_a_failed_attempt(
    server: ServerProcess, anyio_backend: str
) -> None:
    calls = []

    async def stuck(claim: Claim) -> None:
        calls.append(claim.wake_id)
        await anyio.sleep_forever()

    settings = fast_settings(handler_timeout=0.2, max_attempts=2, dead_letter_stream="dlq/jobs")
    spec = SubscriptionSpec("jobs", pattern="jobs/*")
    async with Producer(server.url) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        with anyio.fail_after(30):
            runner = runner_for(server.url, stuck, subscriptions=[spec], settings=settings)
            async with runner:
                await runner.wait_state("streaming")
                await producer.append("jobs/a", {"slow": 1})
                await wait_until(lambda: runner.health()["dead_lettered"] == 1)
                health = runner.health()
            letters = await read_all(producer, "dlq/jobs")
    assert len(calls) == 2
    assert health["handler_timeouts"] == 2
    assert [letter["messages"] for letter in letters] == [[{"slow": 1}]]
    assert "TimeoutError" in letters[0]["error"]
    assert any("handler_timeout" in problem for problem in health["problems"])


async def test_a_missing_wake_stream_is_created_as_a_json_stream(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    async with Producer(server.url) as producer:
        await producer.stream("jobs/a")
        await producer.subscribe("jobs", wake_stream="wake/r1", pattern="jobs/*")
        with anyio.fail_after(20):
            async with runner_for(server.url, handler, wake_stream="wake/fresh") as runner:
                await runner.wait_state("streaming")
                head = await producer.http.head("/v1/stream/wake/fresh")
                health = runner.health()
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("application/json")
    assert health["reconnect_count"] == 0


async def test_a_missing_wake_stream_it_may_not_create_stops_the_runner_saying_how_to(
    server: ServerProcess, anyio_backend: str
) -> None:
    settings = fast_settings(create_wake_stream=False)
    runner = runner_for(server.url, Collector(), wake_stream="wake/absent", settings=settings)
    with anyio.fail_after(20):
        with pytest.raises(RunnerError) as caught:
            async with runner:
                await anyio.sleep_forever()
    text = str(caught.value)
    assert "'wake/absent' does not exist" in text
    assert "pullwake stream create wake/absent --content-type application/json" in text
    assert runner.statistics().reconnects == 0


async def test_only_the_stream_that_kept_failing_is_dead_lettered_and_the_others_flow(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Picky()
    spec = SubscriptionSpec("jobs", pattern="jobs/*", max_attempts=3)
    async with Producer(server.url) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.stream("jobs/b")
        with anyio.fail_after(30):
            async with runner_for(server.url, handler, subscriptions=[spec]) as runner:
                await runner.wait_state("streaming")
                await producer.append("jobs/a", {"poison": True})
                await wait_until(lambda: handler.failures >= 1)
                # jobs/b becomes pending later: its attempts start later, so it is not
                # dead-lettered with jobs/a, and nothing resets the count of jobs/a.
                await producer.append("jobs/b", {"good": 1})
                await handler.wait_for(1)
                await wait_until(lambda: runner.health()["handlers_active"] == 0)
                health = runner.health()
            letters = await read_all(producer, "wake/r1/dead-letter")
    assert [(letter["stream"], letter["messages"]) for letter in letters] == [
        ("jobs/a", [{"poison": True}])
    ]
    assert handler.messages() == [{"good": 1}]
    assert handler.failures == 3
    assert health["dead_lettered"] == 1
