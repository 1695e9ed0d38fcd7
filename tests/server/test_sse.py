"""``live=sse`` against a real server process (``httpx.ASGITransport`` would buffer forever).

The server runs on the same anyio backend as the test, on SQLite and on PostgreSQL. Every wait
is bounded by ``anyio.fail_after``; the bounds are hang guards, not timing assertions.

Each test reads its SSE responses to EOF (by deleting the stream, or stopping the server):
httpx's streaming iterators nest async generators that cannot be closed early without trio
reporting them as abandoned, and that is also the clean end a real reader sees.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from tests.fixtures.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
#: Long enough that a test passing on "new data arrived" cannot be passing on a timer.
QUIET_KEEPALIVE = "30"


@pytest.fixture
def sse_server(
    server_factory: ServerFactory, database_url: str, anyio_backend: str
) -> ServerProcess:
    return server_factory(
        database_url, backend=anyio_backend, args=["--keepalive", QUIET_KEEPALIVE]
    )


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, offset: str = "-1"
) -> AsyncIterator[tuple[EventSource, AsyncIterator[ServerSentEvent]]]:
    async with aconnect_sse(client, "GET", url, params={"offset": offset, "live": "sse"}) as src:
        src.response.raise_for_status()
        async with aclosing(src.aiter_sse()) as events:
            yield src, events


async def next_event(
    events: AsyncIterator[ServerSentEvent], seconds: float = 10
) -> ServerSentEvent:
    with anyio.fail_after(seconds):
        return await events.__anext__()


async def delete_and_drain(
    client: httpx.AsyncClient, url: str, events: AsyncIterator[ServerSentEvent]
) -> list[ServerSentEvent]:
    """Delete the stream; the server then ends the response: read what is left, up to EOF."""
    assert (await client.delete(url)).status_code == 204
    rest = []
    with anyio.fail_after(10):
        async for event in events:
            rest.append(event)
    return rest


def control(event: ServerSentEvent) -> dict[str, Any]:
    assert event.event == "control", (event.event, event.data)
    payload = json.loads(event.data)
    assert set(payload) == {"streamNextOffset", "streamCursor", "upToDate"}
    assert payload["streamNextOffset"] not in ("-1", "now")
    assert payload["streamCursor"].isdigit()
    return dict(payload)


async def test_catch_up_then_live(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.put(f"{base}/events/a", headers=JSON)).status_code == 201
        first = await client.post(f"{base}/events/a", headers=JSON, content='[{"n":1},{"n":2}]')
        async with sse(client, f"{base}/events/a") as (source, events):
            assert source.response.headers["content-type"].startswith("text/event-stream")
            data = await next_event(events)
            assert data.event == "data"
            assert json.loads(data.data) == [{"n": 1}, {"n": 2}]
            caught_up = control(await next_event(events))
            assert caught_up["upToDate"] is True
            assert caught_up["streamNextOffset"] == first.headers["stream-next-offset"]

            later = await client.post(f"{base}/events/a", headers=JSON, content='{"n":3}')
            live = await next_event(events)
            assert live.event == "data"
            assert json.loads(live.data) == [{"n": 3}]
            after = control(await next_event(events))
            assert after["streamNextOffset"] == later.headers["stream-next-offset"]
            assert after["upToDate"] is True
            assert await delete_and_drain(client, f"{base}/events/a", events) == []


async def test_offset_now_starts_at_the_tail(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(f"{base}/n", headers=JSON)
        tail = (await client.post(f"{base}/n", headers=JSON, content='"old"')).headers[
            "stream-next-offset"
        ]
        async with sse(client, f"{base}/n", offset="now") as (_, events):
            first = control(await next_event(events))
            assert first == {**first, "streamNextOffset": tail, "upToDate": True}
            await client.post(f"{base}/n", headers=JSON, content='"new"')
            data = await next_event(events)
            assert json.loads(data.data) == ["new"]
            await delete_and_drain(client, f"{base}/n", events)


async def test_text_lines_and_binary_base64(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        text = {"content-type": "text/plain"}
        await client.put(f"{base}/t", headers=text)
        await client.post(f"{base}/t", headers=text, content=" two\r\nlines\rand\nmore ")
        async with sse(client, f"{base}/t") as (source, events):
            assert "stream-sse-data-encoding" not in source.response.headers
            data = await next_event(events)
            assert data.data == " two\nlines\nand\nmore "
            await delete_and_drain(client, f"{base}/t", events)

        binary = {"content-type": "application/octet-stream"}
        payload = bytes(range(256))
        await client.put(f"{base}/b", headers=binary)
        await client.post(f"{base}/b", headers=binary, content=payload)
        async with sse(client, f"{base}/b") as (source, events):
            assert source.response.headers["stream-sse-data-encoding"] == "base64"
            data = await next_event(events)
            assert base64.b64decode(data.data) == payload
            control(await next_event(events))
            await delete_and_drain(client, f"{base}/b", events)


async def test_bad_offsets_answer_before_the_stream_starts(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(f"{base}/x", headers=JSON)
        bad = await client.get(f"{base}/x", params={"offset": "bogus", "live": "sse"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"]
        missing = await client.get(f"{base}/none", params={"offset": "-1", "live": "sse"})
        assert missing.status_code == 404


async def test_offset_past_the_tail_starts_at_the_tail(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(f"{base}/p", headers=JSON)
        tail = (await client.post(f"{base}/p", headers=JSON, content="1")).headers[
            "stream-next-offset"
        ]
        async with sse(client, f"{base}/p", offset="9" * len(tail)) as (_, events):
            first = control(await next_event(events))
            assert first["streamNextOffset"] == tail
            assert first["upToDate"] is True
            await client.post(f"{base}/p", headers=JSON, content="2")
            assert json.loads((await next_event(events)).data) == [2]
            await delete_and_drain(client, f"{base}/p", events)


async def test_deleting_the_stream_ends_the_response(sse_server: ServerProcess) -> None:
    base = f"{sse_server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(f"{base}/gone", headers=JSON)
        async with sse(client, f"{base}/gone") as (_, events):
            control(await next_event(events))
            assert await delete_and_drain(client, f"{base}/gone", events) == []


async def test_keepalive_on_an_idle_stream(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory(backend=anyio_backend, args=["--keepalive", "0.1"])
    url = f"{server.url}/v1/stream/idle"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(url, headers=JSON)
        comments = 0
        async with client.stream("GET", url, params={"offset": "now", "live": "sse"}) as response:
            with anyio.fail_after(10):
                async with aclosing(response.aiter_lines()) as lines:
                    async for line in lines:
                        if line.startswith(":"):
                            comments += 1
                            if comments == 3:
                                assert (await client.delete(url)).status_code == 204
        assert comments >= 3


@pytest.mark.parametrize("http", ["auto", "hypercorn"])
async def test_sigterm_ends_streams_with_a_control_event_then_eof(
    server_factory: ServerFactory, database_url: str, anyio_backend: str, http: str
) -> None:
    if anyio_backend == "trio" and http == "hypercorn":
        pytest.skip("auto is hypercorn on trio: the same case as http=auto")
    server = server_factory(
        database_url, backend=anyio_backend, args=["--keepalive", "30", "--http", http]
    )
    base = f"{server.url}/v1/stream"
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(f"{base}/s", headers=JSON)
        await client.post(f"{base}/s", headers=JSON, content="1")
        readers: list[list[ServerSentEvent]] = [[], []]

        async def read(into: list[ServerSentEvent], ready: anyio.Event) -> None:
            async with sse(client, f"{base}/s") as (_, events):
                async for event in events:
                    into.append(event)
                    if event.event == "control":
                        ready.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for events_seen in readers:
                    ready = anyio.Event()
                    tg.start_soon(read, events_seen, ready)
                    await ready.wait()
                server.proc.send_signal(15)  # type: ignore[union-attr]
        status = await anyio.to_thread.run_sync(server.wait)
    assert status == 0
    for events_seen in readers:
        assert [e.event for e in events_seen] == ["data", "control", "control"]
        final = control(events_seen[-1])
        assert final["streamNextOffset"] == control(events_seen[1])["streamNextOffset"]
    assert "pullwake server stopped" in server.stderr_text()
