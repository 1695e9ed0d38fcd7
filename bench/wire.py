"""Speak just enough HTTP/1.1 over anyio sockets for the benchmarks' producers and readers.

The benchmarks need an HTTP client far cheaper than the runner's (httpx), for two reasons: the
producer that appends work shares the benchmark process (and its CPU) with the runner under
test, and the connection-scale benchmark holds thousands of SSE readers in one process. This
client writes requests by hand on one keep-alive connection and parses only what the servers
under test answer: a status line, headers, and a body framed by ``Content-Length`` or by
chunked transfer coding (or, for ``Connection: close`` answers without either, up to EOF).
It is a benchmark instrument, not a general HTTP client: no redirects, no TLS, no pipelining.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.abc

__all__ = ["Answer", "Connection", "SseReader", "connect", "open_sse"]

_HEAD_END = b"\r\n\r\n"


class Answer:
    """One HTTP answer: status, lower-cased headers and the body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:80]!r}>"


class Connection:
    """One keep-alive HTTP/1.1 connection at a time; one request at a time.

    Servers end keep-alive connections on their own terms (hypercorn after 1,000 requests or
    5 idle seconds, Node after 5 idle seconds): the client opens a new connection after an
    answer that says ``Connection: close``, and when a reused connection turns out to be
    closed before any byte of the answer arrived, it sends the request again on a new one.
    """

    def __init__(self, stream: anyio.abc.SocketStream, host: str, port: int) -> None:
        self._stream: anyio.abc.SocketStream | None = stream
        self._host = host
        self._port = port
        # Invariant: bytes received after the last answer parsed (the start of the next one).
        self._buffer = b""
        # Invariant: True once the current connection carried a complete exchange.
        self._reused = False

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request and read its whole answer."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        try:
            answer = await self._exchange(method, data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            if not self._reused or self._buffer:
                raise
            await self._reconnect()
            answer = await self._exchange(method, data)
        if answer.headers.get("connection", "").lower() == "close":
            await self.aclose()
        return answer

    async def _reconnect(self) -> None:
        await self.aclose()
        self._stream = await anyio.connect_tcp(self._host, self._port)
        self._buffer = b""
        self._reused = False

    async def _exchange(self, method: str, data: bytes) -> Answer:
        if self._stream is None:
            await self._reconnect()
        assert self._stream is not None
        await self._stream.send(data)
        status, headers = await self._read_head()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            answer = Answer(status, headers, b"")
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            answer = Answer(status, headers, await self._read_chunked())
        elif (length := headers.get("content-length")) is not None:
            answer = Answer(status, headers, await self._read_exactly(int(length)))
        else:
            answer = Answer(status, headers, await self._read_to_eof())
            await self.aclose()
        self._reused = True
        return answer

    async def post_json(self, path: str, value: Any) -> Answer:
        return await self.request(
            "POST",
            path,
            json.dumps(value, separators=(",", ":")).encode(),
            {"Content-Type": "application/json"},
        )

    async def put_json(self, path: str, value: Any = None) -> Answer:
        body = b"" if value is None else json.dumps(value).encode()
        return await self.request("PUT", path, body, {"Content-Type": "application/json"})

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive()
        self._buffer += chunk

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        while _HEAD_END not in self._buffer:
            await self._fill()
        head, self._buffer = self._buffer.split(_HEAD_END, 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        body, self._buffer = self._buffer[:size], self._buffer[size:]
        return body

    async def _read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            await self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self._read_line()).split(b";", 1)[0], 16)
            if size == 0:
                while await self._read_line():
                    pass  # trailers, up to the empty line
                return b"".join(parts)
            parts.append(await self._read_exactly(size))
            await self._read_exactly(2)

    async def _read_to_eof(self) -> bytes:
        try:
            while True:
                await self._fill()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        body, self._buffer = self._buffer, b""
        return body


def _split(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host, int(port)


async def connect(url: str) -> Connection:
    """Open a keep-alive connection to the server at ``url`` (``http://host:port``)."""
    host, port = _split(url)
    stream = await anyio.connect_tcp(host, port)
    return Connection(stream, host, port)


class SseReader:
    """An SSE response being read as raw bytes; counts what arrives without parsing events."""

    def __init__(self, stream: anyio.abc.SocketStream, status: int, first: bytes) -> None:
        self._stream = stream
        self.status = status
        # Invariant: everything received after the answer's head, in order.
        self.received = first

    async def receive(self) -> bytes:
        """Wait for the next bytes; raise ``anyio.EndOfStream`` at EOF."""
        chunk = await self._stream.receive()
        self.received += chunk
        return chunk

    async def wait_for(self, marker: bytes) -> None:
        """Wait until ``marker`` has arrived (anywhere in what was received so far)."""
        while marker not in self.received:
            await self.receive()

    def forget(self) -> None:
        """Drop what was received so far (a reader holding thousands of streams stays small)."""
        self.received = b""

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_sse(url: str, path: str) -> SseReader:
    """Send ``GET path`` (an SSE read) on a new connection; return once the head arrived."""
    host, port = _split(url)
    stream = await anyio.connect_tcp(host, port)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        await stream.send(head.encode())
        buffer = b""
        while _HEAD_END not in buffer:
            buffer += await stream.receive()
        head, rest = buffer.split(_HEAD_END, 1)
        status = int(head.split(b" ", 2)[1])
    except BaseException:
        await stream.aclose()
        raise
    return SseReader(stream, status, rest)
