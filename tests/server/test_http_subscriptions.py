"""Pull-wake subscriptions over HTTP, in process, on SQLite and PostgreSQL, asyncio and trio."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pullwake.server.store import Store
from tests.fixtures.servers import FakeClock, app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS, SUBS, bearer

pytestmark = pytest.mark.anyio

VIEW_KEYS = {
    "id",
    "subscription_id",
    "type",
    "pattern",
    "streams",
    "wake_stream",
    "lease_ttl_ms",
    "created_at",
    "status",
}


async def test_put_get_delete(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "wake/w1")
        await expect.json_stream(client, "events/a")
        body = {
            "type": "pull-wake",
            "pattern": "events/*",
            "wake_stream": "wake/w1",
            "description": "demo",
        }
        created = await client.put(f"{SUBS}/s1", json=body)
        assert created.status_code == 201
        view = created.json()
        assert set(view) >= VIEW_KEYS
        assert view["id"] == view["subscription_id"] == "s1"
        assert view["status"] == "active"
        assert view["lease_ttl_ms"] == 30_000
        assert view["description"] == "demo"
        assert view["created_at"].endswith("Z")
        assert view["streams"] == [
            {
                "path": "events/a",
                "link_type": "glob",
                "acked_offset": view["streams"][0]["acked_offset"],
            }
        ]

        assert (await client.put(f"{SUBS}/s1", json=body)).status_code == 200
        different = await client.put(f"{SUBS}/s1", json={**body, "lease_ttl_ms": 5000})
        expect.error(different, 409)

        got = await client.get(f"{SUBS}/s1")
        assert got.status_code == 200
        assert got.json()["id"] == "s1"

        assert (await client.delete(f"{SUBS}/s1")).status_code == 204
        expect.error(await client.get(f"{SUBS}/s1"), 404)
        assert (await client.delete(f"{SUBS}/s1")).status_code == 204


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": "pull-wake", "pattern": "e/*"}, 400),
        ({"type": "pull-wake", "wake_stream": "w"}, 400),
        ({"type": "pull-wake", "wake_stream": "w", "pattern": "e", "lease_ttl_ms": 999}, 400),
        ({"type": "pull-wake", "wake_stream": "w", "pattern": "e", "lease_ttl_ms": 600_001}, 400),
        ({"type": "pull-wake", "wake_stream": "w", "pattern": "e", "lease_ttl_ms": True}, 400),
        ({"type": "pull-wake", "wake_stream": "w", "streams": "e"}, 400),
        ({"type": "pull-wake", "wake_stream": "w", "streams": [1]}, 400),
        ({"type": "pull-wake", "wake_stream": "__ds/w", "pattern": "e"}, 400),
        ({"type": "pull-wake", "wake_stream": "w", "pattern": "a/**b"}, 400),
        ({"type": "queue", "wake_stream": "w", "pattern": "e"}, 400),
        ({"type": "webhook", "pattern": "e"}, 400),
        ({"type": "webhook", "webhook": "http://127.0.0.1:1/", "pattern": "e"}, 400),
        ({"type": "webhook", "webhook": {"url": "ftp://127.0.0.1:1/"}, "pattern": "e"}, 400),
        ({"type": "webhook", "webhook": {"url": "http://10.0.0.1/"}, "pattern": "e"}, 400),
        ({"type": "webhook", "webhook": {"url": "http://127.0.0.1:1/"}}, 400),
        ([], 400),
    ],
)
async def test_put_validates_the_body(opened_store: Store, body: Any, status: int) -> None:
    async with app_client(opened_store) as client:
        expect.error(await client.put(f"{SUBS}/bad", json=body), status)
        expect.error(await client.put(f"{SUBS}/bad", content=b"{oops", headers=JSON), 400)


async def test_paths_in_bodies_lose_outer_slashes(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        view = await expect.subscribe(
            client, "s", wake_stream="/wake/w/", pattern="/events/*/", streams=["/solo/"]
        )
        assert view["wake_stream"] == "wake/w"
        assert view["pattern"] == "events/*"


async def test_wake_claim_ack_release_cycle(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "wake/w1")
        start = await expect.json_stream(client, "events/a")
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        expect.error(
            await client.post(f"{SUBS}/s1/claim", json={"worker": "w1"}), 409, "NO_PENDING_WORK"
        )

        tail = await expect.append_json(client, "events/a", {"n": 1}, {"n": 2})
        wakes = await expect.read_json(client, "wake/w1")
        assert len(wakes) == 1
        assert set(wakes[0]) == {"type", "subscription_id", "stream", "generation", "ts"}
        assert wakes[0]["type"] == "wake"
        assert wakes[0]["subscription_id"] == "s1"
        assert wakes[0]["stream"] == "events/a"

        won = await expect.claim(client, "s1", "w1")
        assert set(won) == {"wake_id", "generation", "token", "streams", "lease_ttl_ms"}
        assert won["generation"] == wakes[0]["generation"]
        assert won["streams"] == [
            {
                "path": "events/a",
                "link_type": "glob",
                "acked_offset": start,
                "tail_offset": tail,
                "has_pending": True,
            }
        ]
        busy = expect.error(
            await client.post(f"{SUBS}/s1/claim", json={"worker": "w2"}), 409, "ALREADY_CLAIMED"
        )
        assert busy["current_holder"] == "w1"
        assert busy["generation"] == won["generation"]

        fence = {"wake_id": won["wake_id"], "generation": won["generation"]}
        expect.error(await client.post(f"{SUBS}/s1/ack", json=fence), 401)
        expect.error(await client.post(f"{SUBS}/s1/ack", json=fence, headers=bearer("x.y.z")), 401)
        stale = {**fence, "generation": won["generation"] + 7}
        expect.error(
            await client.post(f"{SUBS}/s1/ack", json=stale, headers=bearer(won["token"])),
            409,
            "FENCED",
        )
        beyond = {**fence, "acks": [{"stream": "events/a", "offset": "9" * 20}]}
        expect.error(
            await client.post(f"{SUBS}/s1/ack", json=beyond, headers=bearer(won["token"])), 409
        )
        unknown = {**fence, "acks": [{"stream": "events/zzz", "offset": tail}]}
        expect.error(
            await client.post(f"{SUBS}/s1/ack", json=unknown, headers=bearer(won["token"])), 409
        )

        heartbeat = await client.post(f"{SUBS}/s1/ack", json=fence, headers=bearer(won["token"]))
        assert heartbeat.json() == {"ok": True, "next_wake": False}
        done = {**fence, "acks": [{"stream": "events/a", "offset": tail}], "done": True}
        finished = await client.post(f"{SUBS}/s1/ack", json=done, headers=bearer(won["token"]))
        assert finished.status_code == 200
        assert finished.json() == {"ok": True, "next_wake": False}
        view = (await client.get(f"{SUBS}/s1")).json()
        assert view["streams"][0]["acked_offset"] == tail
        assert view["holder"] is None
        expect.error(
            await client.post(f"{SUBS}/s1/ack", json=done, headers=bearer(won["token"])), 409
        )

        await expect.append_json(client, "events/a", {"n": 3})
        again = await expect.claim(client, "s1", "w2")
        assert again["generation"] > won["generation"]
        refence = {"wake_id": again["wake_id"], "generation": again["generation"]}
        released = await client.post(
            f"{SUBS}/s1/release", json=refence, headers=bearer(again["token"])
        )
        assert released.status_code == 204
        wakes = await expect.read_json(client, "wake/w1")
        assert wakes[-1]["generation"] > again["generation"], "release re-wakes pending work"


async def test_ack_done_with_work_left_wakes_again(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "events/a")
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        first = await expect.append_json(client, "events/a", 1)
        won = await expect.claim(client, "s1", "w1")
        await expect.append_json(client, "events/a", 2)
        done = {
            "wake_id": won["wake_id"],
            "generation": won["generation"],
            "acks": [{"stream": "events/a", "offset": first}],
            "done": True,
        }
        answer = await client.post(f"{SUBS}/s1/ack", json=done, headers=bearer(won["token"]))
        assert answer.json() == {"ok": True, "next_wake": True}


async def test_explicit_membership(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "solo/x")
        await expect.subscribe(client, "s1", wake_stream="wake/w1", streams=["other"])
        response = await client.post(f"{SUBS}/s1/streams", json={"streams": ["solo/x"]})
        assert response.status_code == 204
        assert (
            await client.post(f"{SUBS}/s1/streams", json={"streams": ["solo/x"]})
        ).status_code == 204
        paths = {s["path"] for s in (await client.get(f"{SUBS}/s1")).json()["streams"]}
        assert "solo/x" in paths
        expect.error(await client.post(f"{SUBS}/s1/streams", json={"streams": []}), 400)
        expect.error(await client.post(f"{SUBS}/nope/streams", json={"streams": ["a"]}), 404)

        removed = await client.delete(f"{SUBS}/s1/streams/solo%2Fx")
        assert removed.status_code == 204
        assert (await client.delete(f"{SUBS}/s1/streams/solo/x")).status_code == 204
        paths = {s["path"] for s in (await client.get(f"{SUBS}/s1")).json()["streams"]}
        assert "solo/x" not in paths


async def test_lease_expiry_lets_another_worker_claim(opened_store: Store) -> None:
    clock = FakeClock()
    async with app_client(opened_store, clock=clock) as client:
        await expect.json_stream(client, "events/a")
        await expect.subscribe(
            client, "s1", wake_stream="wake/w1", pattern="events/*", lease_ttl_ms=1000
        )
        await expect.append_json(client, "events/a", 1)
        old = await expect.claim(client, "s1", "w1")
        clock.advance(1500)
        new = await expect.claim(client, "s1", "w2")
        assert new["generation"] > old["generation"]
        fence = {"wake_id": old["wake_id"], "generation": old["generation"]}
        late = await client.post(f"{SUBS}/s1/ack", json=fence, headers=bearer(old["token"]))
        assert late.status_code in (401, 409)
        expect.error(late, late.status_code)


async def test_deleted_subscription_refuses_claims_and_acks(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "events/a")
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        await expect.append_json(client, "events/a", 1)
        won = await expect.claim(client, "s1", "w1")
        assert (await client.delete(f"{SUBS}/s1")).status_code == 204
        fence = {"wake_id": won["wake_id"], "generation": won["generation"], "done": True}
        expect.error(
            await client.post(f"{SUBS}/s1/ack", json=fence, headers=bearer(won["token"])), 404
        )
        expect.error(await client.post(f"{SUBS}/s1/claim", json={"worker": "w"}), 404)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"worker": ""},
        {"worker": 7},
        {"worker": "a/b"},
    ],
)
async def test_claim_validates_the_worker(opened_store: Store, body: dict[str, Any]) -> None:
    async with app_client(opened_store) as client:
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        expect.error(await client.post(f"{SUBS}/s1/claim", json=body), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"generation": 1},
        {"wake_id": "x"},
        {"wake_id": "x", "generation": "1"},
        {"wake_id": "x", "generation": 1, "acks": {}},
        {"wake_id": "x", "generation": 1, "acks": [1]},
        {"wake_id": "x", "generation": 1, "acks": [{"stream": "a"}]},
        {"wake_id": "x", "generation": 1, "done": "yes"},
    ],
)
async def test_ack_validates_the_body(opened_store: Store, body: dict[str, Any]) -> None:
    async with app_client(opened_store) as client:
        await expect.subscribe(client, "s1", wake_stream="wake/w1", pattern="events/*")
        response = await client.post(
            f"{SUBS}/s1/ack", content=json.dumps(body), headers={**JSON, **bearer("pw1.a.b")}
        )
        expect.error(response, 400)


async def test_reserved_prefix_routes(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        expect.error(await client.get("/v1/stream/__ds"), 404)
        expect.error(await client.put("/v1/stream/__ds/anything/else", headers=JSON), 404)
        # The callback route is the ack route: no claim token, no ack.
        expect.error(await client.post(f"{SUBS}/s1/callback", json={}), 401, "INVALID_TOKEN")
        expect.error(await client.post("/v1/stream/__ds/jwks.json"), 405)
        expect.error(await client.patch(f"{SUBS}/s1"), 405)
        expect.error(await client.put(f"{STREAMS}/__ds/subscriptions", headers=JSON), 404)
