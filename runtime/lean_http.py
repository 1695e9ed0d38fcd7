"""A lean keep-alive HTTP/1.1 client for the runner's hot exchanges, on anyio streams.

Why by hand: the runner spends most of its CPU per wake in its HTTP client. Measured side by
side on one machine (issue 12's profile), client CPU per POST exchange: httpx 627 µs (794 µs
with 9 pooled connections, as httpcore rescans every pooled connection on each request),
httpcore alone 373 µs, h11 on anyio streams 142 µs, httptools' C parser on anyio streams
**60 µs** (trio 57 µs); aiohttp (159 µs) runs on asyncio only. No library offers httptools'
parser as an anyio client, so this module does the little that is left: write one request,
parse its answer with httptools, keep the connection for the next exchange.
``bench/runner_cost.py`` measures the runner's CPU per wake: with it (``lean_http`` on) against
without, three interleaved rounds on a shared 2-core machine, medians 1,289 µs vs 2,712 µs on
asyncio (×0.48) and 1,102 µs vs 3,054 µs on trio (×0.36); what is left of httpx is the SSE wake
stream.

:class:`~pullwake.runtime.client.Client` uses it for its request/answer exchanges (claim, ack,
release, read, append, heartbeat, ...) when that is safe: a plain ``http://`` URL, no transport
of the caller's, no proxy in the environment. httpx keeps everything else (TLS, proxies, the
SSE wake stream).

Theory of operation
-------------------
- **Failures speak httpx's vocabulary.** Every failure is raised as the httpx exception
  httpx raises for it (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``,
  ``ReadError``, ``WriteError``, ``RemoteProtocolError``, ``LocalProtocolError``), so the one
  translation edge, :func:`pullwake.runtime.client.map_http_errors`, maps both paths into the
  same error class with the same message.
- **Timeouts are httpx's.** ``connect_timeout`` bounds the TCP handshake; ``timeout`` bounds
  the send and each receive of the answer (silence, like httpx's read timeout), so a
  blackholing proxy or a silent server fails as fast as on httpx.
- **The pool.** Idle connections are kept per origin (at most :data:`MAX_IDLE` each), newest
  first. One is reused only if it has been idle less than :data:`IDLE_LIMIT` (below common
  server keep-alive timeouts: uvicorn and Node 5 s, many proxies more) and a zero-wait poll of
  its socket shows nothing to read (a closed connection reads EOF, and any byte the server
  sent unasked means the connection is not in a state to reuse). Anything else is closed.
- **No request is sent twice unless it is safe.** A server may still close a reused
  connection between the peek and the request. If a reused connection then fails before any
  byte of the answer came, the request may or may not have been processed: only ``GET`` and
  ``HEAD`` (safe methods, no effect on the server) are sent again, once, on a new connection.
  Every other request (a claim, an ack, an append) raises ``ServerUnreachable``, as on httpx,
  and the runner's own retry rules decide. A timeout is never retried here.
- **Framing.** ``Content-Length`` and chunked answers (httptools parses both), answers read to
  EOF (neither header), ``HEAD`` answers and 204/304 without a body, 1xx answers skipped.
  A connection is kept only when the answer was complete, framed by length or chunks, the
  server did not say ``Connection: close``, and no byte followed the answer.
- **Cancellation and errors close the connection** (its state is unknown), shielded.

Nothing here imports asyncio: it runs on asyncio and trio through anyio.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import httptools
import httpx

__all__ = ["IDLE_LIMIT", "MAX_IDLE", "LeanPool", "LeanResponse", "Origin", "lean_origin"]

#: Seconds an idle connection may wait in the pool before it is closed instead of reused.
IDLE_LIMIT = 2.0
#: Idle connections kept per origin (httpx keeps 20 in all).
MAX_IDLE = 16
#: Methods that are sent again on a new connection when a reused one fails before answering.
_SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Methods that carry a body: sent with ``Content-Length: 0`` when they have none (as httpx).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_poll = getattr(select, "poll", None)  # not on Windows: select() there
_CLOSED_MESSAGE = "Cannot send a request, as the client has been closed."


@attrs.frozen
class Origin:
    """Where a base URL's requests go: the TCP address, the ``Host`` header, the path prefix."""

    host: str
    port: int
    authority: str
    prefix: str


def lean_origin(base_url: str) -> Origin | None:
    """Return the origin of a plain ``http://`` base URL, or None when the lean path cannot
    serve it (https, credentials in the URL, a query or fragment, no host)."""
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme != "http" or not host or parts.username is not None:
        return None
    if parts.query or parts.fragment:
        return None
    authority = parts.netloc
    if port == 80:
        authority = authority.rsplit(":", 1)[0]
    return Origin(host, port or 80, authority, parts.path.rstrip("/"))


class LeanResponse:
    """One whole answer: status, headers (httpx's case-insensitive ``Headers``), body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: httpx.Headers, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def __repr__(self) -> str:
        return f"<LeanResponse [{self.status_code}]>"


class _Connection:
    """One TCP connection and what the pool knows of it."""

    __slots__ = ("idle_since", "reused", "sock", "stream")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        # Invariant: True once this connection carried a complete exchange.
        self.reused = False
        self.idle_since = 0.0

    def looks_open(self) -> bool:
        """Poll the socket without waiting: nothing to read means open and quiet.

        Readable means EOF (the server closed it) or bytes nobody asked for: either way the
        connection is not reused. (asyncio's socket wrapper allows no ``recv``: poll it.)
        """
        try:
            fd = self.sock.fileno()
            if fd < 0:
                return False
            if _poll is None:
                readable, _, _ = select.select([fd], [], [], 0)
                return not readable
            poller = _poll()
            poller.register(fd, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False


class _Answer:
    """httptools' callbacks for one answer (a new parser and answer per exchange)."""

    __slots__ = (
        "body",
        "complete",
        "extra",
        "framed",
        "head_only",
        "headers",
        "headers_done",
        "keep_alive",
        "parser",
        "status",
    )

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        # Dropped when the exchange ends (the parser holds this object: a reference cycle).
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0
        self.headers_done = False
        # Invariant: True once a final (non-1xx) answer is complete.
        self.complete = False
        # Invariant: True when the answer is framed by Content-Length or chunks (not EOF).
        self.framed = False
        # Invariant: True when bytes followed the complete answer (the connection is not reused).
        self.extra = False
        # What the parser said of keep-alive when the head ended (it resets after the body).
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
            return
        self.headers = []
        self.body = []
        self.headers_done = False
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self.framed = True
        if self.head_only and self.status >= 200:
            # httptools cannot be told that a HEAD answer has no body: it ends here.
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if 100 <= self.status < 200:
            return  # an interim answer (100 Continue): the final one follows
        self.framed = self.framed or self.status in (204, 304)
        self.complete = True


class LeanPool:
    """Keep-alive connections per origin and the exchanges over them; see the module docstring.

    Not thread-safe; it belongs to one event loop (the pool is only changed between awaits).
    """

    def __init__(self, *, idle_limit: float = IDLE_LIMIT, max_idle: int = MAX_IDLE) -> None:
        self._idle_limit = idle_limit
        self._max_idle = max_idle
        # Invariant: per origin, idle connections oldest first (each with idle_since set).
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def idle_count(self, origin: Origin) -> int:
        """How many idle connections the pool keeps for ``origin``."""
        return len(self._idle.get(origin, ()))

    async def aclose(self) -> None:
        """Close every idle connection; exchanges in flight close theirs when they end."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await _close(connection)

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> LeanResponse:
        """Send one request and return its whole answer; raise httpx's transport errors.

        ``target`` is the path and query, already quoted; ``origin.prefix`` goes before it.
        """
        if self._closed:
            raise RuntimeError(_CLOSED_MESSAGE)
        data = _request_bytes(origin, method, target, headers, body)
        connection = await self._take_idle(origin)
        if connection is not None:
            try:
                return await self._exchange(origin, connection, method, data, timeout)
            except _Unanswered as failure:
                if method not in _SAFE_METHODS:
                    raise failure.error from failure.error.__cause__
                # A safe request on a connection the server had closed: once more, fresh.
        connection = await _connect(origin, connect_timeout)
        try:
            return await self._exchange(origin, connection, method, data, timeout)
        except _Unanswered as failure:
            raise failure.error from failure.error.__cause__

    async def _take_idle(self, origin: Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        if not connections:
            return None
        stale: list[_Connection] = []
        found: _Connection | None = None
        oldest_allowed = anyio.current_time() - self._idle_limit
        while connections:
            connection = connections.pop()
            if connection.idle_since < oldest_allowed:
                # This one and every older one (earlier in the list) waited too long.
                stale.append(connection)
                stale.extend(connections)
                connections.clear()
                break
            if connection.looks_open():
                found = connection
                break
            stale.append(connection)
        for connection in stale:
            await _close(connection)
        return found

    async def _exchange(
        self, origin: Origin, connection: _Connection, method: str, data: bytes, timeout: float
    ) -> LeanResponse:
        answer = _Answer(method == "HEAD")
        parser = answer.parser
        assert parser is not None
        stream = connection.stream
        received = False
        reading = False
        done = False
        error: httpx.TransportError
        try:
            # One cancel scope whose deadline moves before each operation: httpx's per-read and
            # per-write timeouts, for the price of one scope per exchange.
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + timeout
                try:
                    await stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    error = httpx.WriteError(_describe(exc))
                    error.__cause__ = exc
                    if connection.reused:
                        raise _Unanswered(error) from exc
                    raise error from exc
                reading = True
                while not answer.complete:
                    scope.deadline = anyio.current_time() + timeout
                    try:
                        chunk = await stream.receive()
                    except anyio.EndOfStream:
                        if answer.headers_done and not answer.framed:
                            answer.complete = True  # a body that ends with the connection
                            break
                        if not received:
                            error = httpx.RemoteProtocolError(
                                "Server disconnected without sending a response."
                            )
                            if connection.reused:
                                raise _Unanswered(error) from None
                            raise error from None
                        raise httpx.RemoteProtocolError(
                            "peer closed connection without sending complete message body"
                        ) from None
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                        error = httpx.ReadError(_describe(exc))
                        error.__cause__ = exc
                        if connection.reused and not received:
                            raise _Unanswered(error) from exc
                        raise error from exc
                    received = True
                    try:
                        parser.feed_data(chunk)
                    except httptools.HttpParserUpgrade as exc:
                        raise httpx.RemoteProtocolError(
                            "the server switched protocols on a plain request"
                        ) from exc
                    except httptools.HttpParserError as exc:
                        if not answer.complete:
                            raise httpx.RemoteProtocolError(
                                f"malformed answer: {_describe(exc)}"
                            ) from exc
                        answer.extra = True  # bytes after a complete answer
            if scope.cancelled_caught:
                if reading:
                    raise httpx.ReadTimeout("timed out")
                raise httpx.WriteTimeout("timed out")
            response = LeanResponse(
                answer.status, httpx.Headers(answer.headers), b"".join(answer.body)
            )
            keep = (
                answer.framed
                and not answer.extra
                and not self._closed
                # False for Connection: close, for HTTP/1.0 without keep-alive, and for a body
                # that ends with the connection (llhttp's verdict at the end of the head).
                and answer.keep_alive
            )
            if keep:
                idle = self._idle.setdefault(origin, [])
                if len(idle) < self._max_idle:
                    connection.reused = True
                    connection.idle_since = anyio.current_time()
                    idle.append(connection)
                    done = True
            return response
        finally:
            answer.parser = None
            if not done:
                await _close(connection)


class _Unanswered(Exception):
    """A reused connection failed before any byte of the answer; ``error`` is what to raise."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or (str(cause) if cause is not None else "")
    return text or type(exc).__name__


def _request_bytes(
    origin: Origin,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
) -> bytes:
    lines = [f"{method} {origin.prefix}{target} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif method in _BODY_METHODS:
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # A CR or LF inside a value or the target would split the request (h11 refuses it too).
    breaks = len(lines) + 1  # the first item holds the request line and Host
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise httpx.LocalProtocolError("Illegal header value or request target")
    try:
        data = head.encode("ascii")
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError(f"non-ASCII header value or target: {exc}") from exc
    return data + body if body else data


async def _connect(origin: Origin, timeout: float) -> _Connection:
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(origin.host, origin.port)
    except TimeoutError as exc:
        raise httpx.ConnectTimeout("timed out") from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
    return _Connection(stream)


async def _close(connection: _Connection) -> None:
    with anyio.CancelScope(shield=True):
        await connection.stream.aclose()
