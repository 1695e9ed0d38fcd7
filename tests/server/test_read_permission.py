"""Long-lived reads end when the permission that allowed them ends (issue 14, defect 7).

A runner token may read a data stream only while it holds a lease on a subscription linked to
it, and its own wake stream only while that is bound to its row. An SSE read or a long-poll
opened while that held must not deliver what was appended after it stopped holding: the SSE
response ends with a control event, then EOF; the long-poll answers 204. Real server
processes (SSE cannot run over httpx's ASGI transport), SQLite and PostgreSQL, asyncio and
trio.
"""

from __future__ import annotations

import json
from contextlib import aclosing

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.fixtures.servers import ServerFactory, ServerProcess
from tests.server.expect import JSON, STREAMS, SUBS

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-secret"}
RUNNER = {"pullwake-authorization": "Bearer r1-secret"}


@pytest.fixture
def server(server_factory: ServerFactory, database_url: str, anyio_backend: str) -> ServerProcess:
    return server_factory(
        database_url,
        backend=anyio_backend,
        args=["--keepalive", "30", "--long-poll-timeout", "20"],
        env={"PULLWAKE_ADMIN_TOKEN": "admin-secret", "PULLWAKE_RUNNER_TOKENS": "r1=r1-secret"},
    )


async def setup_claim(client: httpx.AsyncClient) -> dict[str, object]:
    """events/a holds [1]; runner r1 holds the lease of s1, which links it."""
    assert (await client.put(f"{STREAMS}/events/a", headers={**JSON, **ADMIN})).status_code == 201
    sub = {"type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/r1"}
    assert (await client.put(f"{SUBS}/s1", json=sub, headers=ADMIN)).status_code == 201
    row = {"id": "r1", "wake_stream": "wake/r1"}
    assert (await client.post("/v1/runners", json=row, headers=ADMIN)).status_code == 201
    await append(client, "events/a", 1)
    won = await client.post(f"{SUBS}/s1/claim", json={"worker": "r1"}, headers=RUNNER)
    assert won.status_code == 200, won.text
    return dict(won.json())


async def append(client: httpx.AsyncClient, path: str, value: object) -> None:
    response = await client.post(
        f"{STREAMS}/{path}", headers={**JSON, **ADMIN}, content=json.dumps([value])
    )
    assert response.status_code == 204, response.text


async def release(client: httpx.AsyncClient, won: dict[str, object]) -> None:
    body = {"wake_id": won["wake_id"], "generation": won["generation"]}
    headers = {**RUNNER, "authorization": f"Bearer {won['token']}"}
    response = await client.post(f"{SUBS}/s1/release", json=body, headers=headers)
    assert response.status_code == 204, response.text


async def read_to_eof(
    client: httpx.AsyncClient, path: str, after_first: object
) -> list[tuple[str, object]]:
    """Open SSE as r1, run ``after_first`` once the first control event came, read to EOF."""
    seen: list[tuple[str, object]] = []
    params = {"offset": "-1", "live": "sse"}
    async with aconnect_sse(
        client, "GET", f"{STREAMS}/{path}", params=params, headers=RUNNER
    ) as src:
        assert src.response.status_code == 200
        async with aclosing(src.aiter_sse()) as events:
            async for event in events:
                seen.append((event.event, json.loads(event.data)))
                if event.event == "control" and len(seen) == 2:
                    await after_first()  # type: ignore[operator]
    return seen


async def test_an_sse_reader_whose_lease_ends_gets_nothing_after_it(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        won = await setup_claim(client)

        async def lease_ends_then_data() -> None:
            await release(client, won)
            await append(client, "events/a", 2)

        with anyio.fail_after(20):
            seen = await read_to_eof(client, "events/a", lease_ends_then_data)
        data = [payload for kind, payload in seen if kind == "data"]
        assert data == [[1]], seen  # never the 2 appended after the lease ended
        assert seen[-1][0] == "control", seen  # a final control event, then EOF
        # A new read is refused outright.
        refused = await client.get(f"{STREAMS}/events/a", params={"offset": "-1"}, headers=RUNNER)
        assert refused.status_code == 403


async def test_a_long_poll_whose_lease_ends_gets_nothing_after_it(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        won = await setup_claim(client)
        tail = (await client.head(f"{STREAMS}/events/a", headers=ADMIN)).headers[
            "stream-next-offset"
        ]
        answers: list[httpx.Response] = []

        async def poll() -> None:
            params = {"offset": tail, "live": "long-poll"}
            answers.append(await client.get(f"{STREAMS}/events/a", params=params, headers=RUNNER))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.5)  # parked (a 204 from a timer would take 20 s)
                await release(client, won)
                await append(client, "events/a", 2)
        assert answers[0].status_code == 204, answers[0].text
        assert answers[0].content == b""


async def test_an_sse_reader_of_a_rebound_wake_stream_gets_nothing_after_it(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        await setup_claim(client)  # wake/r1 now holds one wake event

        async def rebind_then_wake() -> None:
            row = {"id": "r1", "wake_stream": "wake/elsewhere"}
            assert (await client.post("/v1/runners", json=row, headers=ADMIN)).status_code == 200
            await append(client, "wake/r1", {"not": "for r1 any more"})

        with anyio.fail_after(20):
            seen = await read_to_eof(client, "wake/r1", rebind_then_wake)
        data = [payload for kind, payload in seen if kind == "data"]
        assert len(data) == 1, seen
        assert all("not" not in json.dumps(batch) for batch in data), seen
        assert seen[-1][0] == "control", seen
