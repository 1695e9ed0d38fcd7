"""Server-Sent Events for ``live=sse`` reads: framing, the response, and the read loop.

Theory of operation
-------------------
One SSE response follows one stream from a start offset:

1. **Catch-up**: read batches from the store; each batch becomes one ``event: data`` (a JSON
   array for JSON streams, text for ``text/*``, base64 for anything else) followed by one
   ``event: control`` carrying ``streamNextOffset``, ``streamCursor`` and ``upToDate``. A read
   that finds nothing (an empty stream, or ``offset=now``) still sends one control event, so
   the reader learns the tail at once.
2. **Live**: once up to date, wait on ``store.wait_for_change`` (no polling interval: new data
   reaches the reader as soon as the append commits). Each time ``keepalive`` seconds pass with
   nothing to send, write an SSE comment line, so a reader can treat silence as a dead server.
3. **End**: on server shutdown, write a final control event and end the body (EOF) at once,
   so readers reconnect immediately instead of waiting for a timeout. The same when the
   reader's permission ended (a runner token whose lease ended, or whose wake stream was
   bound elsewhere): it is asked after every read but the first, before the data is written,
   so such a reader receives nothing appended after its permission ended (an idle reader is
   ended at the stream's next change). A stream deleted under the reader ends the body too,
   and so does a closed stream once read to its end: its last control event carries
   ``streamClosed: true`` and no cursor. A client that disconnects cancels the loop.

The framing is written by hand (a dozen lines): the client side parses with httpx-sse, but the
writing side needs exact control over when bytes hit the socket (keepalives, the final control
event before EOF), which the small SSE helper libraries do not give. Payload lines are split
on every SSE line terminator (CRLF, CR, LF) so data can never inject a fake event. A line is
written right after ``data:`` (``data:line1``, as the conformance suite expects), except one
that itself starts with a space: it gets one extra space, which parsers strip (WHATWG SSE: "if
value starts with a space, remove it"), so its own leading space survives. (The reference
server writes no extra space there, so such a line loses its first space.)
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable

import anyio
from starlette.types import Message, Receive, Scope, Send

from pullwake.server.content_types import Encoding
from pullwake.server.cursors import next_cursor
from pullwake.server.errors import Gone, NotFound, StoreUnavailable
from pullwake.server.shutdown import ShutdownSignal, Wakeup
from pullwake.server.store.base import Message as StoredMessage
from pullwake.server.store.base import Store

log = logging.getLogger("pullwake.server.sse")

#: The comment written on an idle stream; SSE parsers ignore it, sockets see bytes.
KEEPALIVE = b": keepalive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

Write = Callable[[bytes], Awaitable[None]]


def encode_event(event: str, data: str) -> bytes:
    """Frame one SSE event; every line of ``data`` gets its own ``data:`` field."""
    lines = "".join(
        f"data: {line}\n" if line.startswith(" ") else f"data:{line}\n"
        for line in _LINE_BREAK.split(data)
    )
    return f"event: {event}\n{lines}\n".encode()


def control_event(next_offset: str, cursor: str, up_to_date: bool) -> bytes:
    """Frame the control event that follows every data event."""
    payload = {"streamNextOffset": next_offset, "streamCursor": cursor, "upToDate": up_to_date}
    return encode_event("control", json.dumps(payload, separators=(",", ":")))


def closed_event(next_offset: str) -> bytes:
    """Frame the last control event of a closed stream read to its end (no cursor: a reader
    must not reconnect)."""
    payload = {"streamNextOffset": next_offset, "upToDate": True, "streamClosed": True}
    return encode_event("control", json.dumps(payload, separators=(",", ":")))


def data_event(messages: tuple[StoredMessage, ...], encoding: Encoding) -> bytes:
    """Frame one batch of messages as a single ``event: data``."""
    if encoding == "json":
        payload = "[" + ",".join(m.data.decode("utf-8") for m in messages) + "]"
    elif encoding == "text":
        payload = b"".join(m.data for m in messages).decode("utf-8", errors="replace")
    else:
        payload = base64.b64encode(b"".join(m.data for m in messages)).decode("ascii")
    return encode_event("data", payload)


class SSEResponse:
    """An ASGI response whose body is written by ``produce(write)`` until it returns.

    A second task watches ``receive`` for ``http.disconnect`` and cancels the producer, so a
    reader that goes away never leaves a loop behind.
    """

    def __init__(
        self,
        produce: Callable[[Write], Awaitable[None]],
        headers: dict[str, str],
        on_open: Callable[[], None] = lambda: None,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.produce = produce
        self.headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache, no-store",
            "x-accel-buffering": "no",
            # An event stream ends only on shutdown, deletion or disconnect: close the
            # connection with it rather than keep an idle one that shutdown must wait for.
            "connection": "close",
            **headers,
        }
        self.on_open = on_open
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()],
            }
        )

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        self.on_open()
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while True:
                        message: Message = await receive()
                        if message["type"] == "http.disconnect":
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch_disconnect)
                await self.produce(write)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            self.on_close()


class EventStream:
    """The read loop of one SSE response (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        shutdown: ShutdownSignal,
        path: str,
        start_offset: str,
        encoding: Encoding,
        *,
        keepalive: float,
        max_read_bytes: int,
        client_cursor: str | None,
        still_allowed: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.shutdown = shutdown
        self.path = path
        # Invariant: the offset after the last message written (never a sentinel once known).
        self.offset = start_offset
        self.encoding = encoding
        self.keepalive = keepalive
        self.max_read_bytes = max_read_bytes
        self.client_cursor = client_cursor
        # Asked after every read but the first, before its data is written: a reader whose
        # permission ended (a runner's lease, its wake-stream binding) gets a final control
        # event instead (None: the reader's permission cannot end, e.g. the admin's).
        self.still_allowed = still_allowed
        # Invariant: when the keepalive task writes next; infinite outside live waits.
        self._keepalive_due = math.inf

    def _control(self, up_to_date: bool) -> bytes:
        return control_event(self.offset, next_cursor(self.client_cursor), up_to_date)

    async def run(self, write: Write) -> None:
        """Write catch-up, then live data, keepalives, and a final control event on shutdown."""
        # ``except*``: the failure may come from inside the keepalive task group, grouped.
        try:
            # One keepalive task for the stream's whole life, not one per live wait: a task
            # group and a task per wait cost ~4 % of the server's CPU in the throughput bench
            # (PERFORMANCE.md, "SSE loop"), paid on every wake.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keepalives, write)
                await self._run(write)
                tg.cancel_scope.cancel()
        except* (NotFound, Gone):  # deleted, expired, or soft-deleted (forks still read it)
            log.info("stream %r went away under an SSE reader; ending the response", self.path)
        except* StoreUnavailable as group:
            # The database went away mid-stream (a restart): end the body cleanly so the reader
            # reconnects at once and is answered 503 until the store is back.
            log.warning(
                "the store failed under an SSE reader of %r (%s); ending the response",
                self.path,
                group.exceptions[0],
            )

    async def _run(self, write: Write) -> None:
        first = True
        while True:
            if self.shutdown.started:
                await write(self._control(up_to_date=False))
                return
            mark = self.store.change_mark(self.path)
            result = await self.store.read(self.path, self.offset, self.max_read_bytes)
            # Checked after the read: whatever it found was appended while it was allowed.
            if not first and self.still_allowed is not None and not await self.still_allowed():
                log.info("an SSE reader of %r may no longer read it; ending", self.path)
                await write(self._control(up_to_date=False))
                return
            # A closed stream read to its end: the last event says so, and the body ends.
            end = result.closed and result.up_to_date
            if result.messages or first or end:
                self.offset = result.next_offset
                # The data and its control event in one write (one send, one segment).
                data = data_event(result.messages, self.encoding) if result.messages else b""
                control = closed_event(self.offset) if end else self._control(result.up_to_date)
                await write(data + control)
            if end:
                return
            first = False
            if not result.up_to_date:
                continue
            if not await self._wait_live(write, mark):
                await write(self._control(up_to_date=True))
                return

    async def _keepalives(self, write: Write) -> None:
        """Write a keepalive each ``keepalive`` seconds of a live wait (``_keepalive_due``).

        Outside live waits the due time is infinite and the task only looks again once per
        ``keepalive``, so a wait that begins is never missed and costs nothing per wake.
        """
        while True:
            due = self._keepalive_due
            now = anyio.current_time()
            if now >= due:
                self._keepalive_due = due + self.keepalive
                await write(KEEPALIVE)
                continue
            await anyio.sleep(min(due - now, self.keepalive))

    async def _wait_live(self, write: Write, mark: int) -> bool:
        """Wait for new data while the keepalive task writes keepalives; return False when
        the server shuts down.

        One store wait stays open across keepalive ticks, and the keepalive task beside it
        writes the keepalives: ending the wait at every tick would cost a store query per
        reader per keepalive (measured in docs/performance.md: 76 % of a core at 5,000 idle
        readers, 11 % this way).
        """
        self._keepalive_due = anyio.current_time() + self.keepalive
        try:
            # The mark was taken before the read that found the tail: unless the path changed
            # since, the wait trusts that read instead of looking at the tail again.
            wakeup = await self.shutdown.wait_for_change(
                self.store, self.path, self.offset, math.inf, since=mark
            )
        finally:
            self._keepalive_due = math.inf
        # With no timeout, anything but CHANGED means the server or its store is closing.
        return wakeup is Wakeup.CHANGED
