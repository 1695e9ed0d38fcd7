"""A runner's Prometheus metrics: the values after known wakes, claims and handler calls.

The fake server and a manual clock make every value exact: the handler sleeps 2.5 clock
seconds, so the histogram's sum is 2.5 per call, not "about" anything.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from pullwake.runtime import Claim, Runner, RunnerSettings
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.metrics import serve_metrics

from .fakeserver import FakeServer
from .waiting import wait_until

pytestmark = pytest.mark.anyio


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"runner": "r1", **labels})


async def idle(claim: Claim) -> None:
    """A handler with nothing to do."""


def make_runner(
    fake: FakeServer, handler: Any, clock: ManualClock, registry: CollectorRegistry | None
) -> Runner:
    return Runner(
        "http://fake",
        runner_id="r1",
        handler=handler,
        wake_stream="wake/r1",
        grace=0.5,
        clock=clock,
        settings=RunnerSettings(
            heartbeat_interval=100.0, backoff=Backoff(initial=1.0, maximum=8.0), stop_bound=0.5
        ),
        transport=fake.transport(),
        rng=random.Random(3),
        metrics_registry=registry,
    )


async def test_counts_wakes_claims_state_and_handler_durations(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    clock = ManualClock()
    registry = CollectorRegistry()
    handled: list[object] = []

    async def handler(claim: Claim) -> None:
        await clock.sleep(2.5)
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                handled.append(message)

    with anyio.fail_after(10):
        runner = make_runner(fake, handler, clock, registry)
        async with runner:
            await runner.wait_state("streaming")
            assert value(registry, "pullwake_runner_state", state="streaming") == 1
            assert value(registry, "pullwake_runner_state", state="connecting") == 0
            for n in range(3):
                fake.append("jobs/a", f"j{n}")
                await wait_until(lambda: runner.statistics().claims.handlers_active == 1, timeout=5)
                assert value(registry, "pullwake_runner_handlers_active") == 1
                # The claim answer showed jobs/a pending: one stream behind.
                assert value(registry, "pullwake_runner_pending_streams", subscription="s") == 1
                await anyio.wait_all_tasks_blocked()
                clock.advance(2.5)
                await wait_until(lambda n=n: len(handled) == n + 1, timeout=5)
                await wait_until(
                    lambda n=n: runner.statistics().claims.claims_succeeded == n + 1, timeout=5
                )
            assert value(registry, "pullwake_runner_wakes_total") == 3
            assert value(registry, "pullwake_runner_claims_total", outcome="succeeded") == 3
            assert value(registry, "pullwake_runner_claims_total", outcome="failed") == 0
            assert value(registry, "pullwake_runner_handlers_active") == 0
            assert value(registry, "pullwake_runner_reconnects_total") == 0
            name = "pullwake_runner_handler_duration_seconds"
            assert value(registry, f"{name}_count", subscription="s") == 3
            assert value(registry, f"{name}_sum", subscription="s") == 7.5
            assert value(registry, f"{name}_bucket", subscription="s", le="2.5") == 3
            assert value(registry, f"{name}_bucket", subscription="s", le="1.0") == 0
            assert value(registry, "pullwake_runner_dead_lettered_total", subscription="s") is None
            assert runner.metrics is not None
            runner.metrics.dead_lettered.labels("s").inc()
            assert value(registry, "pullwake_runner_dead_lettered_total", subscription="s") == 1
        assert value(registry, "pullwake_runner_state", state="stopped") == 1


async def test_handler_failures_and_reconnects_are_counted(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    clock = ManualClock()
    registry = CollectorRegistry()

    async def handler(claim: Claim) -> None:
        raise RuntimeError("poison")

    with anyio.fail_after(10):
        runner = make_runner(fake, handler, clock, registry)
        async with runner:
            await runner.wait_state("streaming")
            fake.append("jobs/a", "bad")
            await wait_until(lambda: runner.statistics().claims.releases == 1, timeout=5)
            assert value(registry, "pullwake_runner_handler_failures_total") == 1
            assert value(registry, "pullwake_runner_releases_total") == 1
            assert value(registry, "pullwake_runner_claims_total", outcome="failed") == 1
            assert (
                value(registry, "pullwake_runner_handler_duration_seconds_count", subscription="s")
                == 1
            )
        assert value(registry, "pullwake_runner_state", state="stopped") == 1


async def test_reconnects_are_counted(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    fake.fail("sse", 400, 400)
    clock = ManualClock()
    registry = CollectorRegistry()
    with anyio.fail_after(10):
        runner = make_runner(fake, idle, clock, registry)
        async with runner:
            for _ in range(2):
                await clock.wait_sleepers(2)
                await anyio.wait_all_tasks_blocked()
                deadline = clock.next_deadline()
                assert deadline is not None
                clock.advance(deadline - clock.now())
            await runner.wait_state("streaming")
            assert value(registry, "pullwake_runner_reconnects_total") == 2
            assert value(registry, "pullwake_runner_state", state="streaming") == 1


async def test_a_runner_without_a_registry_keeps_no_metrics(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    runner = make_runner(fake, idle, ManualClock(), None)
    assert runner.metrics is None


async def test_serve_metrics_answers_a_scrape(anyio_backend: str) -> None:
    fake = FakeServer()
    registry = CollectorRegistry()
    make_runner(fake, idle, ManualClock(), registry)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_metrics, registry, 0)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                answer = await client.get("/metrics")
                missing = await client.get("/nothing")
                posted = await client.post("/metrics")
            tg.cancel_scope.cancel()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert 'pullwake_runner_state{runner="r1",state="stopped"} 1.0' in answer.text
    assert "pullwake_runner_wakes_total" in answer.text
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert posted.status_code == 405
    assert posted.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_two_runners_share_one_registry(anyio_backend: str) -> None:
    registry = CollectorRegistry()
    first = make_runner(FakeServer(), idle, ManualClock(), registry)
    second = Runner(
        "http://fake",
        runner_id="r2",
        handler=idle,
        wake_stream="wake/r2",
        transport=FakeServer().transport(),
        metrics_registry=registry,
    )
    assert first.metrics is not None
    assert second.metrics is not None
    second.metrics.observe_handler("s", 0.5)
    second.metrics.dead_lettered.labels("s").inc()
    assert value(registry, "pullwake_runner_state", state="stopped") == 1
    assert (
        registry.get_sample_value("pullwake_runner_state", {"runner": "r2", "state": "stopped"})
        == 1
    )
    labels = {"runner": "r2", "subscription": "s"}
    assert registry.get_sample_value("pullwake_runner_handler_duration_seconds_sum", labels) == 0.5
    assert registry.get_sample_value("pullwake_runner_dead_lettered_total", labels) == 1
    assert value(registry, "pullwake_runner_dead_lettered_total", subscription="s") is None
