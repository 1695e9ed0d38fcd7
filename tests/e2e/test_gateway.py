"""The gateway's error bursts: what the 500/503 fault of the matrix relies on, on both backends."""

from __future__ import annotations

import contextlib

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from pullwake.testing import FaultGateway
from tests.fixtures.servers import ServerFactory

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

JSON = {"Content-Type": "application/json"}


async def test_a_burst_answers_every_new_request_and_spares_open_streams(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory(args=["--keepalive", "0.2"])
    async with (
        FaultGateway("127.0.0.1", server.port) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=5) as client,
        httpx.AsyncClient(base_url=server.url, timeout=5) as direct,
    ):
        assert (await client.put("/v1/stream/s", headers=JSON)).status_code == 201
        params = {"offset": "now", "live": "sse"}
        async with (
            aconnect_sse(client, "GET", "/v1/stream/s", params=params) as source,
            contextlib.aclosing(source.aiter_sse()) as events,
        ):
            assert (await events.__anext__()).event == "control"
            # The next request reuses the keep-alive connection of the PUT above.
            gateway.fail_requests((500, 503))
            statuses = [(await client.get("/v1/stream/s", params={"offset": "-1"})).status_code]
            statuses.append((await client.head("/v1/stream/s")).status_code)
            answer = await client.post("/v1/stream/s", headers=JSON, content=b"1")
            statuses.append(answer.status_code)
            assert statuses == [500, 503, 500]
            assert answer.json()["error"]["code"] == "INJECTED_FAULT"
            assert answer.headers["connection"] == "close"
            # Nothing reached the server; the stream opened before the burst still flows.
            await direct.post("/v1/stream/s", headers=JSON, content=b"2")
            with anyio.fail_after(5):
                data = await events.__anext__()
            assert (data.event, data.data) == ("data", "[2]")
            gateway.pass_requests()
            read = await client.get("/v1/stream/s", params={"offset": "-1"})
            assert (read.status_code, read.json()) == (200, [2])
            # End the event stream from the server side (deleting its stream ends it), so no
            # half-read response is left behind.
            assert (await direct.delete("/v1/stream/s")).status_code == 204
            with anyio.fail_after(5):
                async for _ in events:
                    pass
    assert gateway.errors_answered == 3


async def test_requests_with_bodies_are_framed_and_forwarded_whole(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory()
    async with (
        FaultGateway("127.0.0.1", server.port) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=5) as client,
    ):
        assert (await client.put("/v1/stream/b", headers=JSON)).status_code == 201
        bodies = [b"[" + b",".join(b"%d" % i for i in range(n)) + b"]" for n in (1, 500, 3000)]
        for body in bodies:
            assert (
                await client.post("/v1/stream/b", headers=JSON, content=body)
            ).status_code == 204
        read = await client.get("/v1/stream/b", params={"offset": "-1"})
        assert read.json() == [*range(1), *range(500), *range(3000)]
    assert gateway.errors_answered == 0
