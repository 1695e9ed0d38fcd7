"""Leases are judged by the database's clock on PostgreSQL (issue 14, the clock design risk).

Two stores on one database stand for two server processes; the second one's process clock
runs 70 s fast (every ``now_ms`` it is handed is skewed). With the database clock, which the
server turns on, the fast one neither expires nor steals a lease the other just granted.
Without it, it does: the second test pins the risk, so the first cannot pass by accident.
"""

from __future__ import annotations

import time

import pytest

from pullwake.server.errors import Conflict
from pullwake.server.store.base import SubscriptionConfig
from pullwake.server.store.postgres import PostgresStore

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SKEW_MS = 70_000
TTL_MS = 30_000


def wall_ms() -> int:
    return int(time.time() * 1000)


async def grant(store: PostgresStore) -> None:
    """Create a subscription with pending work and claim it as w1, at the store's clock."""
    now = wall_ms()
    config = SubscriptionConfig(wake_stream="wake/pool", pattern="events/*", lease_ttl_ms=TTL_MS)
    await store.put_subscription("s", config, now)
    await store.create_stream("events/a", "application/json", now)
    await store.append("events/a", [b"1"], now)
    await store.claim("s", "w1", now)


async def test_a_fast_replica_does_not_expire_or_steal_a_lease(postgres_dsn: str) -> None:
    async with (
        PostgresStore(postgres_dsn, database_clock=True) as granting,
        PostgresStore(postgres_dsn, database_clock=True) as fast,
    ):
        await grant(granting)
        assert await fast.expire_leases(wall_ms() + SKEW_MS) == ()
        with pytest.raises(Conflict) as refused:
            await fast.claim("s", "w2", wall_ms() + SKEW_MS)
        assert refused.value.code == "ALREADY_CLAIMED"
        await fast.append("events/a", [b"2"], wall_ms() + SKEW_MS)  # judges leases too
        sub = await fast.subscription("s")
        assert sub.holder == "w1"
        # The lease runs from the database's time of the grant (the same host's clock here).
        assert sub.lease_expires_at_ms is not None
        assert abs(sub.lease_expires_at_ms - (wall_ms() + TTL_MS)) < 5_000


async def test_without_the_database_clock_a_fast_replica_expires_it(postgres_dsn: str) -> None:
    async with PostgresStore(postgres_dsn) as granting, PostgresStore(postgres_dsn) as fast:
        await grant(granting)
        [lapsed] = await fast.expire_leases(wall_ms() + SKEW_MS)
        assert (lapsed.subscription_id, lapsed.worker) == ("s", "w1")
