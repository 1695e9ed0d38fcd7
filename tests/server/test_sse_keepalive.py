"""SSE keepalives (server/sse.py): a comment every ``--keepalive`` seconds of each live wait,
before and after data arrives, and none while the stream has data to send."""

from __future__ import annotations

from contextlib import aclosing

import anyio
import httpx
import pytest

from tests.fixtures.servers import ServerFactory

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


async def test_keepalives_go_on_after_data_arrives(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory(backend=anyio_backend, args=["--keepalive", "0.1"])
    url = f"{server.url}/v1/stream/ka"
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=10) as client:
        await client.put(url, headers=JSON)
        async with client.stream("GET", url, params={"offset": "now", "live": "sse"}) as response:
            with anyio.fail_after(10):
                async with aclosing(response.aiter_lines()) as lines:
                    async for line in lines:
                        if line.startswith(":"):
                            seen.append("keepalive")
                        elif line.startswith("event:"):
                            seen.append(line.split(":", 1)[1].strip())
                        if not line.startswith(":"):
                            continue
                        if seen.count("keepalive") == 2:
                            append = await client.post(url, headers=JSON, content='{"n":1}')
                            assert append.status_code == 204
                        elif seen.count("keepalive") == 4:
                            assert (await client.delete(url)).status_code == 204
    first_data = seen.index("data")
    # One control event when the reader joined, keepalives, the data and its control event,
    # then keepalives again in the next wait.
    assert seen[:3] == ["control", "keepalive", "keepalive"]
    assert seen[first_data : first_data + 2] == ["data", "control"]
    assert seen[first_data + 2 :].count("keepalive") >= 2
