"""uvicorn's protocol under the app (server/http_uvicorn.py) sends an answer's head and body
in one socket write, and never holds a head back: a streaming answer's head leaves by the end
of the loop tick, a HEAD answer's at once. A body already buffered is read without a deadline
scope, one still on its way keeps its deadline. Driven with a recording transport on asyncio
(uvicorn runs on asyncio only)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from pullwake.server.http_uvicorn import UVICORN_SETTINGS, BoundedHttpToolsProtocol


class RecordingTransport:
    """What uvicorn's protocol asks of an asyncio transport; records writes and the close."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after the close"
        if data:
            self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


def connect(app: Any) -> tuple[BoundedHttpToolsProtocol, RecordingTransport]:
    config = uvicorn.Config(app, **UVICORN_SETTINGS)
    config.load()
    protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def json_app(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"ok": True})(scope, receive, send)


async def ticks(n: int = 5) -> None:
    for _ in range(n):
        await anyio.lowlevel.checkpoint()


def test_a_json_answer_is_one_write() -> None:
    async def main() -> None:
        protocol, transport = connect(json_app)
        protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        await ticks()
        assert len(transport.writes) == 1
        head, _, body = transport.writes[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 11" in head
        assert body == b'{"ok":true}'
        assert not transport.closed
        # The next request on the connection is answered the same way.
        protocol.data_received(b"GET /y HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await ticks()
        assert len(transport.writes) == 2
        assert transport.writes[1].endswith(b'{"ok":true}')
        assert transport.closed

    anyio.run(main, backend="asyncio")


def test_a_streaming_answer_sends_its_head_before_its_body() -> None:
    async def main() -> None:
        go_on = anyio.Event()

        async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await go_on.wait()
            await send({"type": "http.response.body", "body": b"late", "more_body": False})

        protocol, transport = connect(streaming)
        protocol.data_received(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        await ticks()
        # The app is waiting: its head is out already, alone.
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.writes[0].endswith(b"\r\n\r\n")
        go_on.set()
        await ticks()
        assert transport.writes[1:] == [b"4\r\nlate\r\n0\r\n\r\n"]

    anyio.run(main, backend="asyncio")


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_head_answer_leaves_at_once(keep_alive: bool) -> None:
    async def main() -> None:
        protocol, transport = connect(json_app)
        connection = b"" if keep_alive else b"Connection: close\r\n"
        protocol.data_received(b"HEAD /x HTTP/1.1\r\nHost: t\r\n" + connection + b"\r\n")
        for _ in range(20):
            if transport.writes:
                break
            await anyio.lowlevel.checkpoint()
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.writes[0].endswith(b"\r\n\r\n")
        assert transport.closed is not keep_alive

    anyio.run(main, backend="asyncio")


def test_a_failing_app_after_its_start_still_sends_the_head_then_closes() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    async def main() -> None:
        protocol, transport = connect(failing)
        protocol.data_received(b"GET /f HTTP/1.1\r\nHost: t\r\n\r\n")
        await ticks()
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.closed

    anyio.run(main, backend="asyncio")


def enveloped_reader(seen: list[Any], done: anyio.Event) -> Any:
    """The app's envelope (body deadline 0.3 s) around an app that reads the whole body."""
    from pullwake.server.app import Envelope
    from pullwake.server.limits import BODY_LATE
    from pullwake.server.metrics import Metrics

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        seen.append((message["type"], body, bool(scope.get(BODY_LATE))))
        await JSONResponse({"ok": True})(scope, receive, send)
        done.set()

    return Envelope(reader, Metrics(), body_timeout=0.3)


def test_a_body_in_pieces_is_read_whole_and_a_stalled_one_meets_its_deadline() -> None:
    async def main() -> None:
        seen: list[Any] = []
        done = anyio.Event()
        protocol, transport = connect(enveloped_reader(seen, done))
        head = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n"
        protocol.data_received(head + b"abc")
        await anyio.sleep(0.05)
        protocol.data_received(b"def")
        with anyio.fail_after(5):
            await done.wait()
        assert seen == [("http.request", b"abcdef", False)]
        assert transport.writes[0].endswith(b'{"ok":true}')

        seen.clear()
        done = anyio.Event()
        protocol, transport = connect(enveloped_reader(seen, done))
        protocol.data_received(head + b"abc")  # and nothing more
        with anyio.fail_after(5):
            await done.wait()
        assert seen == [("http.disconnect", b"abc", True)]

    anyio.run(main, backend="asyncio")
