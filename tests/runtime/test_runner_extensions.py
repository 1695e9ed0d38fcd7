"""The runner over the pullwake extensions (docs/server.md "pullwake extensions"): against a
``pullwake server`` it reads claimed messages from the claim answer and takes the next claim
from the done-ack, so the same messages reach the handler with fewer requests; against the
reference server (plain Durable Streams) nothing is confirmed and it works as before."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx
import pytest

from pullwake.runtime import Claim, Runner
from pullwake.runtime.client import Client
from tests.fixtures.servers import ReferenceServer, ServerFactory, ServerProcess

from .realserver import FlakyTransport, Producer, fast_settings, wait_until
from .waiting import reach

pytestmark = [pytest.mark.anyio]

SERVER_ARGS = ["--keepalive", "0.3", "--lease-sweep-interval", "0.1", "--shutdown-grace", "0.5"]


class Spy:
    """Record every request the runner's client sends (through a real transport)."""

    def __init__(self) -> None:
        self.transport = FlakyTransport()
        self.requests: list[httpx.Request] = []
        self.transport.rules.append(self._record)

    def _record(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def claims(self) -> int:
        return sum(1 for r in self.requests if r.url.path.endswith("/claim"))

    def reads(self, prefix: str) -> int:
        return sum(
            1
            for r in self.requests
            if r.method == "GET" and r.url.path.startswith(f"/v1/stream/{prefix}")
        )

    def done_acks(self) -> list[dict[str, Any]]:
        bodies = [
            json.loads(r.content)
            for r in self.requests
            if r.method == "POST" and r.url.path.endswith("/ack")
        ]
        return [body for body in bodies if body.get("done")]


@pytest.mark.e2e
async def test_claimed_messages_come_inline_and_the_next_claim_with_the_done_ack(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server: ServerProcess = server_factory(args=SERVER_ARGS)
    spy = Spy()
    release_first = anyio.Event()
    seen: list[tuple[int, Any]] = []

    async def handler(claim: Claim) -> None:
        async for message in claim.messages("jobs/a"):
            seen.append((claim.generation, message))
        if len(seen) == 1:
            await release_first.wait()

    async with Producer(server.url) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
        runner = Runner(
            server.url,
            runner_id="r1",
            wake_stream="wake/r1",
            handler=handler,
            grace=1.0,
            settings=fast_settings(),
            transport=spy.transport,
        )
        async with runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await wait_until(lambda: len(seen) == 1)
            # Appended while the first claim is held: no wake; the done-ack claims it.
            await producer.append("jobs/a", "m2")
            release_first.set()
            await wait_until(lambda: len(seen) == 2)
            await wait_until(lambda: runner.health()["claims_succeeded"] == 2)
            await wait_until(lambda: runner.health()["handlers_active"] == 0)
            wakes = await producer.http.get("/v1/stream/wake/r1", params={"offset": "-1"})
    assert [message for _, message in seen] == ["m1", "m2"]
    assert seen[1][0] == seen[0][0] + 1
    # One claim request and no read of the job stream for two handled claims.
    assert spy.claims() == 1
    assert spy.reads("jobs") == 0
    done = spy.done_acks()
    assert len(done) == 2
    assert done[0]["claim_next"] == {"worker": "r1"}
    # The server appended the first wake only.
    assert len(wakes.json()) == 1


@pytest.mark.interop
async def test_the_reference_server_confirms_nothing_and_the_runner_falls_back(
    reference_server: ReferenceServer, anyio_backend: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    spy = Spy()
    async with Producer(reference_server.url) as producer:
        await producer.stream(f"wake-{tag}/w")
        await producer.stream(f"jobs-{tag}/a")
        await producer.subscribe(f"s-{tag}", wake_stream=f"wake-{tag}/w", streams=[f"jobs-{tag}/a"])
        await producer.append(f"jobs-{tag}/a", "m1", "m2")
        async with Client(reference_server.url, transport=spy.transport) as client:
            grant = await client.claim(f"s-{tag}", "w1")
            assert client.extensions == frozenset()
            assert dict(grant.inline) == {}
            claim = Claim(grant, None, client)
            assert [m async for m in claim.messages(f"jobs-{tag}/a")] == ["m1", "m2"]
            await producer.append(f"jobs-{tag}/a", "m3")
            answer = await claim.finish(claim.final_acks(), claim_next="w1")
    assert answer.next_claim is None
    assert answer.next_wake is True
    # Offered, never assumed: the header went out, no claim_next body did.
    assert all(r.headers.get("pullwake-extensions") for r in spy.requests if "/ack" in r.url.path)
    assert all("claim_next" not in body for body in spy.done_acks())
    assert spy.reads(f"jobs-{tag}") == 1
