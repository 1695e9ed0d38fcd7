"""A handler that runs longer than its lease keeps the lease through an outage shorter than it.

While a handler runs, the runner extends the claim's lease every third of its TTL. An outage
that swallows one or two of those extensions but ends well before the lease does must not cost
the lease: otherwise the server wakes the subscription again and the finished work is done a
second time. Here the lease is 6 s, the handler takes 9 s, and the path from the runner to the
servers is cut (connections refused) from about 1.5 s to 4.5 s into the claim, across the
extensions due at 2 s and 4 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from pullwake.testing import PostgresServer
from pullwake.testing.e2e.cluster import Cluster, RunnerSpec, SubscriptionSpec, Topology, wait_for
from pullwake.testing.e2e.faults import Case, Refused
from pullwake.testing.e2e.ledger import in_flight

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

LEASE_MS = 6_000
HOLD = 9.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("database", "anyio_backend"),
    [
        pytest.param("sqlite", "asyncio", id="sqlite-asyncio"),
        pytest.param("postgres", "trio", id="postgres-trio", marks=pytest.mark.postgres),
    ],
)
async def test_an_outage_shorter_than_the_lease_does_not_cost_a_long_handler_its_lease(
    database: str, anyio_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    postgres: PostgresServer | None = None
    if database == "postgres":
        database_url = request.getfixturevalue("postgres_dsn")
        postgres = request.getfixturevalue("postgres_server")
    else:
        database_url = f"sqlite:///{tmp_path / 'pullwake.db'}"
    topology = Topology(
        database=database,
        backend=anyio_backend,
        servers=1,
        runners=(RunnerSpec("r1", "wake/r1"),),
        subscriptions=(
            SubscriptionSpec(
                "a", wake_stream="wake/r1", streams=("jobs/a",), lease_ttl_ms=LEASE_MS
            ),
        ),
        streams=("jobs/a",),
        hold=HOLD,
    )
    async with Cluster(topology, tmp_path, database_url, postgres=postgres) as cluster:
        producer = cluster.producer
        assert producer is not None
        assert await cluster.wait_streaming(30), cluster.logs_tail()
        await producer.append("jobs/a")
        runner = cluster.runners["r1"]

        async def holding() -> bool:
            return in_flight(await cluster.claims(), runner.pid) is not None

        assert await wait_for(holding, timeout=30, interval=0.05), cluster.logs_tail()
        claimed = in_flight(await cluster.claims(), runner.pid)
        assert claimed is not None
        await anyio.sleep(max(0.0, claimed.recorded_at + 1.5 - time.time()))
        fault = Refused()
        case = Case(cluster)
        await fault.inject(case)
        await anyio.sleep(3.0)
        await fault.clear(case)
        verdict = await cluster.verdict(settle=60)
        claims = await cluster.claims()
    assert not verdict.problems(), "\n".join(verdict.problems()) + "\n" + cluster.logs_tail()
    # One claim, handled once, acked done: the lease survived the outage.
    assert [(c.subscription, c.messages, c.returned) for c in claims] == [
        ("a", (("jobs/a", 1),), True)
    ]
    assert verdict.accounting.duplicates == 0
