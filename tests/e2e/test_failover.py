"""Scale-out: several server processes on one PostgreSQL, no load balancer, a runner that fails
over between them, and nothing lost.

The runner process is given every server's URL (``pullwake run --url A --url B --url C``). It
uses one at a time and moves to the next one each time it reconnects. These tests check what
that deployment promises (docs/server.md, "Several server processes"):

- a wake appended through any process reaches the runner, whichever process it reads from
  (PostgreSQL ``LISTEN``/``NOTIFY`` carries the change between processes);
- killing the process the runner is attached to loses nothing: the runner skips a dead
  process and resumes on a live one, without waiting for the dead ones to come back.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pullwake.testing import PostgresServer
from pullwake.testing.e2e.cluster import Cluster, RunnerSpec, SubscriptionSpec, Topology, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.postgres]

STREAMS = ("jobs/0", "jobs/1")
#: The lease the harness gave subscriptions by default before they were runtime specs.
LEASE_MS = 15_000


def three_replicas(backend: str) -> Topology:
    return Topology(
        database="postgres",
        backend=backend,
        servers=3,
        runners=(RunnerSpec("r1", "wake/r1"),),
        subscriptions=(
            SubscriptionSpec(
                "a", wake_stream="wake/r1", streams=STREAMS[:1], lease_ttl_ms=LEASE_MS
            ),
            SubscriptionSpec("b", wake_stream="wake/r1", pattern="jobs/1", lease_ttl_ms=LEASE_MS),
        ),
        streams=STREAMS,
    )


@pytest.mark.timeout(120)
async def test_the_runner_survives_the_death_of_its_server_and_of_the_next_one(
    postgres_dsn: str, postgres_server: PostgresServer, tmp_path: Path, anyio_backend: str
) -> None:
    topology = three_replicas(anyio_backend)
    async with Cluster(topology, tmp_path, postgres_dsn, postgres=postgres_server) as cluster:
        producer = cluster.producer
        assert producer is not None
        assert await cluster.wait_streaming(30), cluster.logs_tail()

        # A wake appended through any process reaches the runner wherever it reads.
        for server in cluster.servers:
            for stream in STREAMS:
                await producer.append(stream, via=server.url)
        assert await cluster.wait_handled(producer.produced, 30), cluster.logs_tail()

        async def known_attachment() -> bool:
            return await cluster.attached_server("r1") is not None

        assert await wait_for(known_attachment, timeout=15)
        attached = await cluster.attached_server("r1")
        assert attached is not None
        following = (attached + 1) % 3
        survivor = (attached + 2) % 3
        runner = cluster.runners["r1"]
        steps_before = len(runner.transitions())

        # The next server in the runner's rotation dies first, quietly; then the runner's own.
        await anyio.to_thread.run_sync(cluster.servers[following].kill)
        await anyio.to_thread.run_sync(cluster.servers[attached].kill)
        for index in range(6):
            await producer.append(STREAMS[index % 2], via=cluster.servers[survivor].url)

        async def on_the_survivor() -> bool:
            return await cluster.attached_server("r1") == survivor

        assert await wait_for(on_the_survivor, timeout=30), cluster.logs_tail()
        assert await cluster.wait_handled(producer.produced, 30), cluster.logs_tail()
        assert not cluster.servers[attached].running
        assert not cluster.servers[following].running

        steps = [(s.source[-1], s.event) for s in runner.transitions()[steps_before:]]
        # The stream to the killed server was lost (no answer); the reconnect tried the dead
        # next server and got no answer either; the one after that connected.
        assert ("streaming", "server_lost") in steps
        assert ("connecting", "server_lost") in steps
        assert steps[-1] == ("connecting", "connected")

        verdict = await cluster.verdict(settle=60)
        assert not verdict.problems(), "\n".join(verdict.problems()) + cluster.logs_tail()
        assert verdict.accounting.duplicates == 0
        assert verdict.accounting.produced == 12


@pytest.mark.timeout(120)
async def test_a_runner_restarted_while_its_first_server_is_down_starts_on_another(
    postgres_dsn: str, postgres_server: PostgresServer, tmp_path: Path, anyio_backend: str
) -> None:
    topology = three_replicas(anyio_backend)
    async with Cluster(topology, tmp_path, postgres_dsn, postgres=postgres_server) as cluster:
        producer = cluster.producer
        assert producer is not None
        assert await cluster.wait_streaming(30), cluster.logs_tail()
        runner = cluster.runners["r1"]
        await anyio.to_thread.run_sync(runner.kill)
        # The first URL the runner is given is down when it starts: it must not wait for it.
        await anyio.to_thread.run_sync(cluster.servers[0].kill)
        for index in range(4):
            await producer.append(STREAMS[index % 2], via=cluster.servers[1 + index % 2].url)
        runner.start()
        assert await cluster.wait_handled(producer.produced, 30), cluster.logs_tail()
        assert not cluster.servers[0].running
        verdict = await cluster.verdict(settle=60)
        assert not verdict.problems(), "\n".join(verdict.problems()) + cluster.logs_tail()
        assert verdict.accounting.produced == 4
