"""The runner against a real ``pullwake server`` process: work, restarts, claims, leases, auth.

Each test starts its own server (SQLite in ``tmp_path``) with short keepalive and lease-sweep
intervals, and a runner with sub-second settings. Faults that need a server to die, freeze or
go silent are in ``test_runner_faults.py``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from pullwake.runtime import Claim, Runner, SubscriptionSpec
from pullwake.runtime.client import ClaimGrant, Client
from pullwake.runtime.errors import Rejected, StopTimeout
from tests.fixtures.servers import ServerFactory, ServerProcess

from .realserver import (
    Collector,
    FlakyTransport,
    Producer,
    Transitions,
    fast_settings,
    is_claim,
    is_extension,
    wait_until,
)
from .waiting import reach, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SERVER_ARGS = ["--keepalive", "0.3", "--lease-sweep-interval", "0.1", "--shutdown-grace", "0.5"]


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=SERVER_ARGS)


@asynccontextmanager
async def producer_for(server: ServerProcess, token: str | None = None) -> AsyncIterator[Producer]:
    async with Producer(server.url, token) as producer:
        yield producer


def runner_for(url: str, handler: Any, **kwargs: Any) -> Runner:
    options: dict[str, Any] = {
        "runner_id": "r1",
        "wake_stream": "wake/r1",
        "grace": 1.0,
        "settings": fast_settings(),
    }
    options.update(kwargs)
    return Runner(url, handler=handler, **options)


async def test_wakes_are_handled_end_to_end_and_a_clean_stop_shows_offline(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        for name in ("a", "b", "c"):
            await producer.stream(f"jobs/{name}")
        runner = runner_for(
            server.url,
            handler,
            subscriptions=[
                SubscriptionSpec("jobs", pattern="jobs/*", lease_ttl_ms=5000),
                SubscriptionSpec("b-only", streams=["jobs/b"]),
            ],
        )
        async with runner:
            await reach(runner, "streaming")
            for i in range(5):
                for name in ("a", "b", "c"):
                    await producer.append(f"jobs/{name}", {"stream": name, "i": i})
            await handler.wait_for(15 + 5)
            await wait_until(lambda: runner.health()["handlers_active"] == 0)
            await wait_until(lambda: runner.health()["wakes_queued"] == 0)
            views: list[dict[str, Any]] = []

            async def reported_streaming() -> bool:
                views.append(await producer.health("r1"))
                return bool(views[-1]["diagnostics"].get("stream_connected"))

            await wait_until_async(reported_streaming)
            online = views[-1]
            local = runner.health()
        offline = await producer.health("r1")
    jobs = sorted((m["stream"], m["i"]) for s, m in handler.handled if s == "jobs")
    b_only = [(m["stream"], m["i"]) for s, m in handler.handled if s == "b-only"]
    # Exactly once per subscription, nothing lost, nothing twice.
    assert jobs == sorted((name, i) for name in "abc" for i in range(5))
    assert b_only == [("b", i) for i in range(5)]
    assert online["status"] == "online"
    assert online["verdict"] == "healthy", online["reasons"]
    assert online["diagnostics"]["status"] == "streaming"
    assert local["claims_failed"] == 0
    # Failure mode 9: a clean stop is reported, so the server shows offline, not expired.
    assert offline["status"] == "offline"
    assert offline["diagnostics"]["status"] == "stopped"
    assert offline["claims"] == []


async def test_a_restarted_process_resumes_without_replaying_handled_wakes(
    server: ServerProcess, anyio_backend: str
) -> None:
    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
        first = Collector()
        async with runner_for(server.url, first) as runner:
            await reach(runner, "streaming")
            for i in range(3):
                await producer.append("jobs/a", i)
                await first.wait_for(i + 1)
            await wait_until(lambda: runner.health()["claims_succeeded"] == 3)
        saved = (await producer.health("r1"))["wake_stream_offset"]
        assert saved is not None
        # A new process: a new Runner with the same id.
        second = Collector()
        async with runner_for(server.url, second) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "after restart")
            await second.wait_for(1)
            await wait_until(lambda: runner.health()["claims_succeeded"] == 1)
            stats = runner.statistics().claims
    assert first.messages() == [0, 1, 2]
    assert second.messages() == ["after restart"]
    # Failure mode 6: no handled wake was replayed (a replay would show up as a skipped claim).
    assert (stats.claims_succeeded, stats.claims_skipped, stats.wakes_submitted) == (1, 0, 1)


async def test_wakes_queued_at_stop_are_replayed_by_the_next_process(
    server: ServerProcess, anyio_backend: str
) -> None:
    # Concurrency 1: while "slow" holds the only slot, the wake for "queued" waits in the
    # pipeline. Stopping then must not commit the offset past it (no mid-batch loss).
    started = anyio.Event()

    async def blocking(claim: Claim) -> None:
        started.set()
        await anyio.sleep_forever()

    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        for name in ("slow", "queued"):
            await producer.stream(f"jobs/{name}")
            await producer.subscribe(name, wake_stream="wake/r1", streams=[f"jobs/{name}"])
        async with runner_for(server.url, blocking, concurrency=1, grace=0.1) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/slow", "s1")
            with anyio.fail_after(10):
                await started.wait()
            await producer.append("jobs/queued", "q1")
            await wait_until(lambda: runner.health()["wakes_queued"] == 1)
        handler = Collector()
        async with runner_for(server.url, handler) as runner:
            await handler.wait_for(2)
    # Both were handled by the second process: the released slow claim was woken again, and
    # the queued wake was replayed from the committed offset.
    assert sorted(handler.handled) == [("queued", "q1"), ("slow", "s1")]


async def test_a_claim_that_gets_a_5xx_is_retried_until_it_succeeds(
    server: ServerProcess, anyio_backend: str
) -> None:
    transport = FlakyTransport()
    failures = iter([httpx.Response(503), httpx.Response(502), httpx.ConnectError("refused")])

    def flaky_claims(request: httpx.Request) -> httpx.Response | Exception | None:
        return next(failures, None) if is_claim(request) else None

    transport.rules.append(flaky_claims)
    handler = Collector()
    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
        async with runner_for(server.url, handler, transport=transport) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await handler.wait_for(1)
            await wait_until(lambda: runner.health()["claims_succeeded"] == 1)
            stats = runner.statistics().claims
    # Failure mode 5: the wake was not dropped; the claim was retried three times.
    assert handler.messages() == ["m1"]
    assert len(transport.intercepted) == 3
    assert stats.claim_retries == 3


async def test_a_lost_lease_cancels_the_handler_and_the_work_comes_back(
    server: ServerProcess, anyio_backend: str
) -> None:
    transport = FlakyTransport()
    dropping = True

    def drop_extensions(request: httpx.Request) -> Exception | None:
        if dropping and is_extension(request):
            return httpx.ConnectError("extension lost on the way")
        return None

    transport.rules.append(drop_extensions)
    cancelled = anyio.Event()
    calls = 0
    handled: list[Any] = []

    async def handler(claim: Claim) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
        handled.extend([m async for m in claim.messages("jobs/a")])

    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"], lease_ttl_ms=1000)
        async with runner_for(server.url, handler, transport=transport) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await wait_until(lambda: calls == 1)
            generation = (await producer.subscription("s"))["generation"]

            async def lease_gone() -> bool:
                view = await producer.subscription("s")
                return bool(view["holder"] is None or view["generation"] != generation)

            await wait_until_async(lease_gone)
            dropping = False
            with anyio.fail_after(10):
                await cancelled.wait()
            await wait_until(lambda: handled == ["m1"])
            await wait_until(lambda: runner.health()["claims_succeeded"] == 1)
            stats = runner.statistics().claims
    assert stats.leases_lost == 1
    assert calls == 2
    assert handled == ["m1"]


async def test_stop_is_bounded_and_names_a_handler_that_ignores_cancellation(
    server: ServerProcess, anyio_backend: str
) -> None:
    let_go = anyio.Event()

    async def stubborn(claim: Claim) -> None:
        with anyio.CancelScope(shield=True):
            await let_go.wait()

    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("stubborn", wake_stream="wake/r1", streams=["jobs/a"])
        runner = runner_for(server.url, stubborn, grace=0.2)
        async with runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await wait_until(lambda: runner.health()["handlers_active"] == 1)
            # Failure mode 8: stop returns (the bound is grace + 3 x stop_bound) and names it.
            with anyio.fail_after(5), pytest.raises(StopTimeout) as caught:
                await runner.stop()
            assert runner.state == "stopped"
            view = await producer.subscription("stubborn")
            health = await producer.health("r1")
            let_go.set()
    assert len(caught.value.stuck) == 1
    assert "'stubborn'" in caught.value.stuck[0]
    assert "stubborn" in str(caught.value)
    # Its claim was released anyway, and the runner still said goodbye.
    assert view["holder"] is None
    assert health["status"] == "offline"


async def test_claims_and_cursors_survive_a_server_restart(
    server: ServerProcess, anyio_backend: str
) -> None:
    proceed = anyio.Event()
    read_m2 = anyio.Event()
    handled: list[Any] = []

    async def handler(claim: Claim) -> None:
        messages = [m async for m in claim.messages("jobs/a")]
        if messages == ["m2"]:
            read_m2.set()
            await proceed.wait()
        handled.extend(messages)

    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
        async with runner_for(server.url, handler) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await wait_until(lambda: handled == ["m1"])
            await producer.append("jobs/a", "m2")
            with anyio.fail_after(10):
                await read_m2.wait()
            # Failure mode 12: the server restarts while the claim is held.
            await anyio.to_thread.run_sync(server.kill)
            await anyio.to_thread.run_sync(server.start)
            proceed.set()
            await wait_until(lambda: runner.health()["claims_succeeded"] == 2)
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m3")
            await wait_until(lambda: handled == ["m1", "m2", "m3"])
            stats = runner.statistics().claims
    # The held claim's token and generation were still valid: it acked, nothing ran twice.
    assert handled == ["m1", "m2", "m3"]
    assert (stats.leases_lost, stats.claims_failed) == (0, 0)


async def test_a_wrong_token_stops_the_runner_with_a_clear_error_and_no_retry_loop(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory(args=[*SERVER_ARGS, "--admin-token", "adm", "--runner-token", "r1=s1"])
    async with producer_for(server, "adm") as producer:
        await producer.stream("wake/r1")
    transitions = Transitions()
    runner = runner_for(server.url, Collector(), token="wrong", inspect=transitions.append)
    with pytest.raises(Rejected, match="credentials") as caught:
        async with runner:
            await reach(runner, "stopped")
    assert caught.value.status == 401
    assert isinstance(runner.error, Rejected)
    # Failure mode 3: one attempt, then a stop; never a reconnect loop.
    steps = transitions.steps()
    assert steps[0] == ("stopped", "start", "connecting")
    assert steps[-2:] == [
        ("connecting", "rejected", "stopping"),
        ("stopping", "drained", "stopped"),
    ]
    assert not transitions.find("after_answer", "backoff_elapsed")
    assert not transitions.find("server_gone", "backoff_elapsed")


async def test_tokens_keep_runners_out_of_each_others_wake_streams_and_claims(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    tokens = ["--admin-token", "adm", "--runner-token", "r1=s1", "--runner-token", "r2=s2"]
    server = server_factory(args=[*SERVER_ARGS, *tokens])
    handler = Collector()
    async with producer_for(server, "adm") as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
        # Runner r1 with its own token works.
        async with runner_for(server.url, handler, token="s1") as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await handler.wait_for(1)
        # Failure mode 13: r2 may not point itself at r1's wake stream ...
        intruder = runner_for(server.url, Collector(), runner_id="r2", token="s2")
        with pytest.raises(Rejected) as caught:
            async with intruder:
                await reach(intruder, "stopped")
        assert caught.value.status == 403
        # ... nor read it directly, nor ack a claim with a forged token.
        async with Client(server.url, token="s2") as client:
            with pytest.raises(Rejected):
                await client.open_wake_stream("wake/r1", "-1")
        await producer.append("jobs/a", "m2")
        async with Client(server.url, token="s1") as client:
            grant = await client.claim("s", "r1")
            forged = ClaimGrant("s", grant.wake_id, grant.generation, "forged", (), 1000)
            with pytest.raises(Rejected) as forged_error:
                await client.ack(forged, [], done=True)
            await client.release(grant)
    assert forged_error.value.status == 401
    assert handler.messages() == ["m1"]


async def test_a_hundred_stops_and_starts_leak_no_task_socket_fd_or_run(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def alive(kind: str) -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == kind)

    async with producer_for(server) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
        async with runner_for(server.url, handler) as runner:
            await reach(runner, "streaming")
            await runner.stop()
            gc.collect()
            baseline = (fds(), len(anyio.get_running_tasks()))
            objects_before = (alive("Run"), alive("AsyncClient"))
            for cycle in range(100):
                await runner.start()
                await reach(runner, "streaming")
                if cycle % 25 == 0:
                    await producer.append("jobs/a", cycle)
                    await handler.wait_for(cycle // 25 + 1)
                await runner.stop()
                assert runner.open_activities() == ()
            gc.collect()
            after = (fds(), len(anyio.get_running_tasks()))
            sessions = alive("Run")
            clients = alive("AsyncClient")
        gc.collect()
        outside = (fds(), len(anyio.get_running_tasks()))
        # Twenty whole runners, entered and left.
        for _ in range(20):
            async with runner_for(server.url, handler) as again:
                await reach(again, "streaming")
        gc.collect()
        final = (fds(), len(anyio.get_running_tasks()))
    assert after == baseline
    assert final == outside
    # Failure mode 11: only the last run's objects may remain; nothing piles up per restart.
    assert objects_before[0] == 1  # the last run, kept by the runner (its offset, its error)
    assert sessions <= objects_before[0]
    assert clients <= objects_before[1]
    assert handler.messages() == [0, 25, 50, 75]
