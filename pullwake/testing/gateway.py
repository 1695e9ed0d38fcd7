"""A fault proxy that can also answer HTTP requests with 500/503 itself, like a sick gateway.

:class:`~pullwake.testing.proxy.FaultProxy` breaks TCP (blackhole, RST, FIN, refuse), but a TCP
proxy cannot make an HTTP error. :class:`FaultGateway` adds one HTTP-aware mode on top of it:
after :meth:`FaultGateway.fail_requests`, every request that *starts* from then on, on a new or
an already open keep-alive connection, is answered by the proxy with the next status of the
burst (500, 503, 500, ...), a JSON error body and ``Connection: close``, without reaching the
server; :meth:`FaultGateway.pass_requests` ends the burst. Requests already forwarded, such as
an open SSE stream, are left alone, exactly as a load balancer that starts failing would.

Why in the proxy rather than in the server: the server then needs no test-only switch, and the
fault is the one users meet in production (a gateway or load balancer answering 502/503 while
a backend restarts). Requests are framed on the client side only: HTTP/1.1 without pipelining
(httpx sends the next request on a connection only after reading the previous answer), bodies
by ``Content-Length``. A request with a chunked body switches its connection to plain
forwarding for good (our clients never send one).
"""

from __future__ import annotations

import json

import anyio
import anyio.abc

from .proxy import FaultProxy

_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_MAX_HEAD = 64 * 1024


def error_answer(status: int, method: str) -> bytes:
    """Return a complete HTTP/1.1 error answer that closes the connection."""
    body = json.dumps(
        {
            "error": {
                "code": "INJECTED_FAULT",
                "message": f"the test gateway answered {status} on purpose",
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


def _request_head(head: bytes) -> tuple[str, int | None]:
    """Return the method and the body length (``None``: chunked, cannot frame) of a head."""
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            return method, None
    return method, length


class FaultGateway(FaultProxy):
    """A :class:`FaultProxy` with an HTTP error-burst mode (see the module docstring)."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        super().__init__(target_host, target_port, port=port)
        # Invariant: empty while requests pass; else the statuses a burst cycles through.
        self._statuses: tuple[int, ...] = ()
        self._next = 0
        #: Requests answered with an injected error so far.
        self.errors_answered = 0
        # Invariant: the client-side streams of live connections (the request direction).
        self._clients: set[anyio.abc.SocketStream] = set()

    @property
    def failing(self) -> bool:
        return bool(self._statuses)

    def fail_requests(self, statuses: tuple[int, ...] = (500, 503)) -> None:
        """Answer every request that starts from now on with these statuses, in turn."""
        if not statuses:
            raise ValueError("give at least one status")
        self._statuses = statuses

    def pass_requests(self) -> None:
        """End the burst: requests reach the server again."""
        self._statuses = ()

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self._clients.add(client)
        try:
            await super()._handle(client)
        finally:
            self._clients.discard(client)

    async def _pump(
        self,
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
    ) -> None:
        if source not in self._clients:
            await super()._pump(source, sink, scope)
            return
        try:
            await self._pump_requests(source, sink, scope)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            scope.cancel()

    async def _forward(self, sink: anyio.abc.SocketStream, data: bytes) -> None:
        """Send ``data`` on, honouring blackhole and delay like the plain pump."""
        await self._wait_flowing()
        if self.delay:
            await anyio.sleep(self.delay)
            await self._wait_flowing()
        await sink.send(data)
        self._stats.bytes_forwarded += len(data)

    async def _pump_requests(
        self,
        client: anyio.abc.SocketStream,
        upstream: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
    ) -> None:
        """Forward requests one by one; answer the ones that start during a burst."""
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                if len(buffer) > _MAX_HEAD:
                    raise OSError("request head too large to frame")
                try:
                    chunk = await client.receive()
                except anyio.EndOfStream:
                    if buffer:
                        await self._forward(upstream, buffer)
                    await upstream.send_eof()
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            method, length = _request_head(head)
            if length is None:
                await self._forward(upstream, buffer)
                await super()._pump(client, upstream, scope)
                return
            while len(rest) < length:
                try:
                    rest += await client.receive()
                except anyio.EndOfStream:
                    break
            request, buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
            if self._statuses:
                status = self._statuses[self._next % len(self._statuses)]
                self._next += 1
                self.errors_answered += 1
                await client.send(error_answer(status, method))
                scope.cancel()
                return
            await self._forward(upstream, request)
