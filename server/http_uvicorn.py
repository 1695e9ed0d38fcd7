"""Serve the app with uvicorn and httptools (asyncio only).

uvicorn's httptools protocol is the cheapest HTTP/1.1 server for an ASGI app on asyncio: about
40 % less CPU per request than hypercorn on the same app (docs/performance.md). Three things are
added here, each a few lines over uvicorn's own classes:

* **A bound on the request head.** llhttp (under httptools) buffers a request line and headers
  of any size before uvicorn sees them; a client could grow the server's memory without end.
  Past :data:`MAX_HEAD_BYTES` the connection gets a 431 and is closed (hypercorn, through h11,
  answers 431 past 16 KiB).
* **JSON error bodies** for requests the parser refuses (400) or that are too large (431), like
  every other error of this server; uvicorn answers those in plain text.
* **No signal handlers**: :func:`pullwake.server.serve.serve_app` watches SIGINT and SIGTERM
  itself, since the first one must end the SSE streams before the HTTP server stops.
"""

from __future__ import annotations

import contextlib
import http
import json
import math
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pullwake.server.config import ServerConfig

#: The largest request line plus headers accepted (431 beyond it).
MAX_HEAD_BYTES = 64 * 1024

#: How pullwake runs uvicorn (bench/server_cost.py serves its bare app with the same).
UVICORN_SETTINGS: dict[str, Any] = {
    "ws": "none",
    "lifespan": "off",
    # Logging is the application's: uvicorn's loggers propagate to its handlers.
    "log_config": None,
    "access_log": False,
    "server_header": False,
    "proxy_headers": False,
    "timeout_keep_alive": 5,
}


def error_answer(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Encode a complete ``Connection: close`` answer with this server's JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")]
    lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
    lines.append(b"content-type: application/json\r\n")
    lines.append(b"content-length: " + str(len(body)).encode("ascii") + b"\r\n")
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + body


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose head is too large."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head and JSON error answers.

    The head is measured twice: exactly, from the parser's callbacks (a head over the bound
    that arrived whole is refused before the app sees it), and by the bytes received while a
    head is incomplete (so a head that never ends cannot grow memory past the bound plus one
    read).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Invariant: True from the end of a request (or the connection's start) until the
        # parser has read the next request's whole head.
        self._in_head = True
        # Bytes received while _in_head (an upper bound of the head read so far).
        self._received_in_head = 0
        # Request line and header bytes of the current head, from the parser's callbacks.
        self._head_size = 0
        self._head_too_large = False

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._received_in_head += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._received_in_head > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._head_too_large = True
            self.send_400_response("")

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_size > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge  # httptools stops and raises; data_received answers
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._received_in_head = self._head_size = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            status, code = 431, "REQUEST_HEAD_TOO_LARGE"
            message = f"The request line and headers exceed {MAX_HEAD_BYTES} bytes."
        else:
            status, code = 400, "BAD_HTTP_REQUEST"
            message = "The request is not valid HTTP/1.1; the connection is closed."
        headers = list(self.server_state.default_headers)
        self.transport.write(error_answer(status, code, message, headers))
        self.transport.close()


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn's server, minus its signal handlers (the caller watches signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_uvicorn(
    app: ASGIApp,
    config: ServerConfig,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[object]],
) -> None:
    """Serve ``app`` on the bound, listening ``sock`` until ``shutdown_trigger`` returns, then
    give open connections at most ``config.shutdown_grace`` seconds (whole seconds, rounded
    up: uvicorn counts in seconds)."""
    uvicorn_config = uvicorn.Config(
        app,
        http=BoundedHttpToolsProtocol,
        timeout_graceful_shutdown=max(1, math.ceil(config.shutdown_grace)),
        **UVICORN_SETTINGS,
    )
    server = EmbeddedUvicorn(uvicorn_config)
    async with anyio.create_task_group() as tg:

        async def trigger() -> None:
            await shutdown_trigger()
            server.should_exit = True

        tg.start_soon(trigger)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
