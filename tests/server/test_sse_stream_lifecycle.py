"""``live=sse`` and the stream lifecycle, against a real server process on SQLite and
PostgreSQL, asyncio and trio: a live reader sees the data appended with a close and then the
closing control event and EOF; a stream soft-deleted under a reader ends its response cleanly.
"""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from tests.fixtures.servers import ServerFactory, ServerProcess
from tests.server.test_sse import QUIET_KEEPALIVE, next_event, sse

pytestmark = pytest.mark.anyio

TEXT = {"content-type": "text/plain"}


@pytest.fixture
def sse_server(
    server_factory: ServerFactory, database_url: str, anyio_backend: str
) -> ServerProcess:
    return server_factory(
        database_url, backend=anyio_backend, args=["--keepalive", QUIET_KEEPALIVE]
    )


async def unexpected_errors(client: httpx.AsyncClient, url: str) -> float:
    metrics = (await client.get(f"{url}/metrics")).text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("pullwake_unexpected_errors_total")
    )


async def test_a_live_reader_gets_the_final_append_then_eof(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        put = await client.put(f"{base}/c", headers=TEXT, content="initial")
        tail = put.headers["stream-next-offset"]
        async with sse(client, f"{base}/c", tail) as (_, events):
            first = json.loads((await next_event(events)).data)
            assert first["upToDate"] is True
            close = await client.post(
                f"{base}/c", headers={**TEXT, "stream-closed": "true"}, content="last"
            )
            assert close.status_code == 204
            data = await next_event(events)
            assert (data.event, data.data) == ("data", "last")
            final = await next_event(events)
            assert final.event == "control"
            assert json.loads(final.data) == {
                "streamNextOffset": close.headers["stream-next-offset"],
                "upToDate": True,
                "streamClosed": True,
            }
            rest = []
            with anyio.fail_after(10):
                async for event in events:  # the server ends the response: EOF
                    rest.append(event)
            assert rest == []


async def test_soft_deleting_a_source_ends_its_readers_cleanly(
    sse_server: ServerProcess,
) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(f"{base}/src", headers=TEXT, content="x")
        fork = await client.put(f"{base}/fork", headers={"stream-forked-from": "/v1/stream/src"})
        assert fork.status_code == 201
        async with sse(client, f"{base}/src") as (_, events):
            assert (await next_event(events)).event == "data"
            assert (await next_event(events)).event == "control"
            assert (await client.delete(f"{base}/src")).status_code == 204
            rest = []
            with anyio.fail_after(10):
                async for event in events:
                    rest.append(event)
            assert rest == []
        assert (await client.head(f"{base}/src")).status_code == 410
        assert await unexpected_errors(client, sse_server.url) == 0
