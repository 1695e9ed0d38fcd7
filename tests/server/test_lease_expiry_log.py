"""The lease sweeper logs every lease it clears, with the claim's ids, on both stores."""

from __future__ import annotations

import json
import logging

import anyio
import httpx
import pytest

from pullwake.logs import JsonFormatter
from pullwake.server.app import create_app
from pullwake.server.config import ServerConfig
from pullwake.server.serve import sweep_leases
from pullwake.server.store import Store
from pullwake.server.store.base import SubscriptionConfig
from pullwake.testing.waiting import wait_until
from tests.fixtures.servers import FakeClock

pytestmark = pytest.mark.anyio


async def test_the_sweep_logs_each_expired_lease_with_its_ids(
    opened_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pullwake.server.events")
    clock = FakeClock()
    now = clock()
    await opened_store.create_stream("events/a", "application/json", now)
    for sub_id in ("s1", "s2"):
        config = SubscriptionConfig(
            wake_stream=f"wake/{sub_id}", pattern="events/*", lease_ttl_ms=1_000
        )
        await opened_store.put_subscription(sub_id, config, now)
    await opened_store.append("events/a", [b"1"], now)
    first = await opened_store.claim("s1", "w1", now)
    second = await opened_store.claim("s2", "w2", now)
    clock.advance(1_000)
    app = create_app(opened_store, ServerConfig(), clock=clock)

    def expiries() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "pullwake.server.events" and r.getMessage().startswith("lease expired")
        ]

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep_leases, app, 0.01)
            await wait_until(lambda: len(expiries()) >= 2, message="two expiry lines")
            tg.cancel_scope.cancel()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            metrics = (await client.get("/metrics")).text

    fields = []
    for record in expiries():
        entry = json.loads(JsonFormatter().format(record))
        fields.append({k: entry[k] for k in ("subscription", "worker", "wake_id", "generation")})
    assert fields == [
        {"subscription": "s1", "worker": "w1", "wake_id": first.wake_id, "generation": 1},
        {"subscription": "s2", "worker": "w2", "wake_id": second.wake_id, "generation": 1},
    ]
    assert [r.getMessage() for r in expiries()] == [
        f"lease expired s1 held by w1 (wake {first.wake_id}, generation 1); waking it again",
        f"lease expired s2 held by w2 (wake {second.wake_id}, generation 1); waking it again",
    ]
    assert "pullwake_leases_expired_total 2.0" in metrics
