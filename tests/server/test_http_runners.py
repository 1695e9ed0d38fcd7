"""The runner registry over HTTP, in process, on SQLite and PostgreSQL, asyncio and trio."""

from __future__ import annotations

from typing import Any

import pytest

from pullwake.server.store import Store
from tests.fixtures.servers import FakeClock, app_client
from tests.server import expect

pytestmark = pytest.mark.anyio

ROW_KEYS = {
    "id",
    "label",
    "wake_stream",
    "wake_stream_offset",
    "registered_at_ms",
    "last_heartbeat_at_ms",
    "lease_ms",
    "diagnostics",
}


async def test_register_heartbeat_and_resume_offset(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        body = {"id": "r1", "label": "box 1", "wake_stream": "wake/r1"}
        first = await client.post("/v1/runners", json=body)
        assert first.status_code == 201
        row = first.json()
        assert set(row) == ROW_KEYS
        assert row["wake_stream_offset"] is None

        beat = await client.post(
            "/v1/runners/r1/heartbeat",
            json={
                "lease_ms": 10_000,
                "wake_stream_offset": "00000000000000000042",
                "diagnostics": {"state": "streaming"},
            },
        )
        assert beat.status_code == 200
        assert beat.json()["wake_stream_offset"] == "00000000000000000042"

        again = await client.post("/v1/runners", json=body)
        assert again.status_code == 200
        assert again.json()["wake_stream_offset"] == "00000000000000000042"
        shown = await client.get("/v1/runners/r1")
        assert shown.json()["diagnostics"] == {"state": "streaming"}


async def test_heartbeat_for_an_unknown_runner_is_404(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        response = await client.post("/v1/runners/ghost/heartbeat", json={"lease_ms": 5000})
        expect.error(response, 404)
        expect.error(await client.get("/v1/runners/ghost/health"), 404)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/runners", {}),
        ("/v1/runners", {"id": ""}),
        ("/v1/runners", {"id": "a/b"}),
        ("/v1/runners", {"id": "r", "wake_stream": "../x"}),
        ("/v1/runners", {"id": "r", "label": 5}),
        ("/v1/runners/r/heartbeat", {}),
        ("/v1/runners/r/heartbeat", {"lease_ms": 10}),
        ("/v1/runners/r/heartbeat", {"lease_ms": 5000, "diagnostics": []}),
        ("/v1/runners/r/heartbeat", {"lease_ms": 5000, "wake_stream_offset": "a b"}),
    ],
)
async def test_registry_validates_bodies(
    opened_store: Store, path: str, body: dict[str, Any]
) -> None:
    async with app_client(opened_store) as client:
        await client.post("/v1/runners", json={"id": "r"})
        expect.error(await client.post(path, json=body), 400)


async def test_health_verdicts(opened_store: Store) -> None:
    clock = FakeClock()
    async with app_client(opened_store, clock=clock) as client:
        await client.post("/v1/runners", json={"id": "r1", "wake_stream": "wake/r1"})
        never = (await client.get("/v1/runners/r1/health")).json()
        assert never["status"] == "expired"
        assert never["verdict"] == "unhealthy"
        assert never["reasons"]

        beat = {"lease_ms": 9000, "wake_stream_offset": None, "diagnostics": {}}
        await client.post("/v1/runners/r1/heartbeat", json=beat)
        healthy = (await client.get("/v1/runners/r1/health")).json()
        assert healthy["status"] == "online"
        assert healthy["verdict"] == "healthy"
        assert healthy["reasons"] == []
        assert healthy["lease_remaining_ms"] == 9000
        assert healthy["claims"] == []

        clock.advance(7000)
        late = (await client.get("/v1/runners/r1/health")).json()
        assert late["status"] == "online"
        assert late["verdict"] == "degraded"

        clock.advance(3000)
        expired = (await client.get("/v1/runners/r1/health")).json()
        assert expired["status"] == "expired"
        assert expired["lease_remaining_ms"] == 0
        assert expired["verdict"] == "unhealthy"

        troubled = {**beat, "diagnostics": {"problems": ["wake stream reconnecting"]}}
        await client.post("/v1/runners/r1/heartbeat", json=troubled)
        degraded = (await client.get("/v1/runners/r1/health")).json()
        assert degraded["verdict"] == "degraded"
        assert "wake stream reconnecting" in degraded["reasons"]

        stopped = {**beat, "diagnostics": {"status": "stopped"}}
        await client.post("/v1/runners/r1/heartbeat", json=stopped)
        offline = (await client.get("/v1/runners/r1/health")).json()
        assert offline["status"] == "offline"
        assert offline["verdict"] == "unhealthy"
        clock.advance(60_000)
        assert (await client.get("/v1/runners/r1/health")).json()["status"] == "offline"


async def test_health_lists_active_claims(opened_store: Store) -> None:
    clock = FakeClock()
    async with app_client(opened_store, clock=clock) as client:
        await client.post("/v1/runners", json={"id": "r1", "wake_stream": "wake/r1"})
        await client.post("/v1/runners/r1/heartbeat", json={"lease_ms": 60_000})
        await expect.json_stream(client, "events/a")
        await expect.subscribe(
            client, "s1", wake_stream="wake/r1", pattern="events/*", lease_ttl_ms=5000
        )
        await expect.append_json(client, "events/a", 1)
        won = await expect.claim(client, "s1", "r1")
        health = (await client.get("/v1/runners/r1/health")).json()
        assert health["verdict"] == "healthy"
        assert health["claims"] == [
            {
                "subscription_id": "s1",
                "generation": won["generation"],
                "wake_id": won["wake_id"],
                "lease_expires_at_ms": clock.now_ms + 5000,
                "lease_remaining_ms": 5000,
                "pending_streams": ["events/a"],
            }
        ]
