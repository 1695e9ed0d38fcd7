"""An SSE reader whose store fails mid-stream (a database restart) gets a clean end of body.

The failure can come from the catch-up read or from inside the live wait's task group (where
anyio groups it); either way the loop must end the response so the reader reconnects at once,
never let the error escape as an unexpected (logged, counted) server error.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pullwake.server.errors import StoreUnavailable
from pullwake.server.shutdown import ShutdownSignal
from pullwake.server.sse import EventStream
from pullwake.server.store.base import START_OFFSET, Store

pytestmark = pytest.mark.anyio

JSON = "application/json"


class FailingReads:
    """A store whose reads fail once ``fail`` is set; everything else goes to the real one."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise StoreUnavailable("PostgreSQL failed (AdminShutdown); check the database")
        return await self._store.read(*args, **kwargs)


async def test_a_store_failure_mid_stream_ends_the_response_cleanly(opened_store: Store) -> None:
    await opened_store.create_stream("s", JSON, 0)
    await opened_store.append("s", [b"1"], 0)
    store = FailingReads(opened_store)
    chunks: list[bytes] = []
    written = anyio.Event()

    async def write(chunk: bytes) -> None:
        chunks.append(chunk)
        written.set()

    loop = EventStream(
        store,  # type: ignore[arg-type]
        ShutdownSignal(),
        "s",
        START_OFFSET,
        "json",
        keepalive=30.0,
        max_read_bytes=1 << 20,
        client_cursor=None,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.run, write)
            # The catch-up arrives; the loop then waits live for a change.
            await written.wait()
            store.fail = True
            await opened_store.append("s", [b"2"], 0)
    # run() returned by itself (the task group closed) with only the catch-up written.
    assert len(chunks) == 1
    assert b"event: data" in chunks[0]
