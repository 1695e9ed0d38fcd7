"""The pullwake extensions over HTTP (docs/server.md "pullwake extensions"): negotiation by
``Pullwake-Extensions``, messages inline in the claim answer, a done-ack that answers the next
claim; and a request without the header gets exactly the plain answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pullwake.server.config import ServerConfig
from pullwake.server.store import Store
from tests.fixtures.servers import app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS, SUBS

pytestmark = pytest.mark.anyio

BOTH = {"pullwake-extensions": "inline-messages, claim-next"}


async def _setup(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> None:
    for path in ("wake/w", "events/a"):
        response = await client.put(f"{STREAMS}/{path}", headers={**JSON, **(headers or {})})
        assert response.status_code == 201, response.text
    sub = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/w"}
    assert (await client.put(f"{SUBS}/s", json=sub, headers=headers)).status_code == 201


async def _wakes(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> list[Any]:
    response = await client.get(f"{STREAMS}/wake/w", params={"offset": "-1"}, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json())


def _done_body(won: dict[str, Any], worker: str | None = "w1") -> dict[str, Any]:
    body: dict[str, Any] = {
        "wake_id": won["wake_id"],
        "generation": won["generation"],
        "acks": [{"stream": s["path"], "offset": s["tail_offset"]} for s in won["streams"]],
        "done": True,
    }
    if worker is not None:
        body["claim_next"] = {"worker": worker}
    return body


async def test_a_negotiated_claim_carries_the_messages_and_confirms(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await _setup(client)
        tail = await expect.append_json(client, "events/a", {"n": 1}, [2, 3], "x")
        claimed = await client.post(f"{SUBS}/s/claim", json={"worker": "w1"}, headers=BOTH)
        assert claimed.status_code == 200, claimed.text
        assert claimed.headers["pullwake-extensions"] == "inline-messages, claim-next"
        won = claimed.json()
        assert won["messages"] == {
            "events/a": {"items": [{"n": 1}, [2, 3], "x"], "next_offset": tail, "up_to_date": True}
        }
        assert won["streams"][0]["tail_offset"] == tail


async def test_the_inline_budget_can_be_asked_lower_and_is_capped(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await _setup(client)
        await expect.append_json(client, "events/a", "aaaa", "bbbb")  # 6 bytes each
        asked = {**BOTH, "pullwake-inline-max-bytes": "8"}
        won = (await client.post(f"{SUBS}/s/claim", json={"worker": "w1"}, headers=asked)).json()
        read = won["messages"]["events/a"]
        assert read["items"] == ["aaaa"]
        assert read["up_to_date"] is False
        # The reader continues from next_offset with a plain GET.
        assert await expect.read_json(client, "events/a", read["next_offset"]) == ["bbbb"]
        for bad in ("-1", "lots", "1e3", "9" * 20):
            response = await client.post(
                f"{SUBS}/s/claim",
                json={"worker": "w1"},
                headers={**BOTH, "pullwake-inline-max-bytes": bad},
            )
            expect.error(response, 400, "INVALID_REQUEST")


async def test_only_inline_messages_offered_means_no_claim_next(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await _setup(client)
        await expect.append_json(client, "events/a", 1)
        only = {"pullwake-extensions": "inline-messages, something-else"}
        claimed = await client.post(f"{SUBS}/s/claim", json={"worker": "w1"}, headers=only)
        assert claimed.headers["pullwake-extensions"] == "inline-messages"
        won = claimed.json()
        await expect.append_json(client, "events/a", 2)
        acked = await client.post(
            f"{SUBS}/s/ack",
            json=_done_body(won),
            headers={**only, "authorization": f"Bearer {won['token']}"},
        )
        assert acked.json() == {"ok": True, "next_wake": True}
        assert len(await _wakes(client)) == 2


async def test_a_plain_request_gets_the_plain_answers(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await _setup(client)
        await expect.append_json(client, "events/a", 1)
        claimed = await client.post(f"{SUBS}/s/claim", json={"worker": "w1"})
        assert "pullwake-extensions" not in claimed.headers
        won = claimed.json()
        assert set(won) == {"wake_id", "generation", "token", "streams", "lease_ttl_ms"}
        await expect.append_json(client, "events/a", 2)
        # claim_next in the body is ignored when the header did not offer claim-next.
        acked = await client.post(
            f"{SUBS}/s/ack", json=_done_body(won), headers=expect.bearer(won["token"])
        )
        assert "pullwake-extensions" not in acked.headers
        assert acked.json() == {"ok": True, "next_wake": True}
        assert [w["generation"] for w in await _wakes(client)] == [1, 2]


async def test_done_with_claim_next_answers_the_next_claim_and_no_wake(
    opened_store: Store,
) -> None:
    async with app_client(opened_store) as client:
        await _setup(client)
        await expect.append_json(client, "events/a", 1)
        won = (await client.post(f"{SUBS}/s/claim", json={"worker": "w1"}, headers=BOTH)).json()
        tail = await expect.append_json(client, "events/a", 2)
        acked = await client.post(
            f"{SUBS}/s/ack",
            json=_done_body(won),
            headers={**BOTH, **expect.bearer(won["token"])},
        )
        assert acked.status_code == 200, acked.text
        assert acked.headers["pullwake-extensions"] == "inline-messages, claim-next"
        answer = acked.json()
        assert (answer["ok"], answer["next_wake"]) == (True, False)
        nxt = answer["next_claim"]
        assert nxt["generation"] == won["generation"] + 1
        assert nxt["token"] != won["token"]
        assert nxt["messages"] == {
            "events/a": {"items": [2], "next_offset": tail, "up_to_date": True}
        }
        assert [w["generation"] for w in await _wakes(client)] == [1]
        view = (await client.get(f"{SUBS}/s")).json()
        assert (view["holder"], view["generation"]) == ("w1", nxt["generation"])

        # The old claim is fenced.
        stale = await client.post(
            f"{SUBS}/s/ack",
            json={"wake_id": won["wake_id"], "generation": won["generation"]},
            headers=expect.bearer(won["token"]),
        )
        expect.error(stale, 409, "FENCED")
        # Nothing pending after the next claim's done: no claim, no wake.
        last = await client.post(
            f"{SUBS}/s/ack", json=_done_body(nxt), headers={**BOTH, **expect.bearer(nxt["token"])}
        )
        assert last.json() == {"ok": True, "next_wake": False}
        assert len(await _wakes(client)) == 1
        metrics = (await client.get("/metrics")).text
        assert 'pullwake_claims_total{outcome="ok"} 2.0' in metrics


async def test_claim_next_must_be_an_object_with_a_worker(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await _setup(client)
        await expect.append_json(client, "events/a", 1)
        won = (await client.post(f"{SUBS}/s/claim", json={"worker": "w1"}, headers=BOTH)).json()
        for bad in ("w1", {"worker": 3}, {}, {"worker": "a/b"}, {"worker": ""}):
            body = {**_done_body(won, None), "claim_next": bad}
            response = await client.post(
                f"{SUBS}/s/ack", json=body, headers={**BOTH, **expect.bearer(won["token"])}
            )
            expect.error(response, 400)
        # Nothing was applied: the claim still holds.
        assert (await client.get(f"{SUBS}/s")).json()["holder"] == "w1"


ADMIN = "admin-secret"
R1 = "r1-secret"
AUTH = ServerConfig(admin_token=ADMIN, runner_tokens={"r1": R1})


async def test_a_runner_token_may_claim_next_only_as_itself(opened_store: Store) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with app_client(opened_store, AUTH) as client:
        await _setup(client, admin)
        registered = await client.post(
            "/v1/runners",
            json={"id": "r1", "wake_stream": "wake/w"},
            headers=admin,
        )
        assert registered.status_code == 201, registered.text
        await client.post(f"{STREAMS}/events/a", headers={**JSON, **admin}, content="[1]")
        runner = {"authorization": f"Bearer {R1}"}
        won = (
            await client.post(f"{SUBS}/s/claim", json={"worker": "r1"}, headers={**BOTH, **runner})
        ).json()
        await client.post(f"{STREAMS}/events/a", headers={**JSON, **admin}, content="[2]")
        headers = {
            **BOTH,
            **expect.bearer(won["token"]),
            "pullwake-authorization": f"Bearer {R1}",
        }
        refused = await client.post(
            f"{SUBS}/s/ack", json=_done_body(won, "someone-else"), headers=headers
        )
        expect.error(refused, 403)
        assert (await client.get(f"{SUBS}/s", headers=admin)).json()["holder"] == "r1"
        acked = await client.post(f"{SUBS}/s/ack", json=_done_body(won, "r1"), headers=headers)
        assert acked.json()["next_claim"]["generation"] == won["generation"] + 1
