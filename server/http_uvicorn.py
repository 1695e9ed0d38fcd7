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
* **Connection limits** (``limits.py``): a connection silent for ``idle_timeout`` before its
  first request is closed; a head not complete ``head_timeout`` after its first byte gets a
  408; past ``max_connections`` a new connection gets a 503 with ``Retry-After``. uvicorn has
  none of these for a fresh connection (its keep-alive timeout starts after a first answer).
* **One socket write per answer**: uvicorn writes a response's head and its body with two
  ``transport.write`` calls, two ``send`` syscalls (and two TCP segments). Each cycle's
  transport here is a :class:`CoalescingTransport` that holds the head back until the body's
  first write, or until the end of the loop tick when the app yields in between (an SSE
  stream), so an ordinary answer leaves in one write.
* **No signal handlers**: :func:`pullwake.server.serve.serve_app` watches SIGINT and SIGTERM
  itself, since the first one must end the SSE streams before the HTTP server stops.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import anyio
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pullwake.server import limits
from pullwake.server.config import ServerConfig
from pullwake.server.limits import BODY_READY, error_answer

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


class Cancellable(Protocol):
    """What the protocol uses of the event loop's timer handles."""

    def cancel(self) -> None: ...


class CoalescingTransport:
    """The cycles' view of a connection's transport: a head write can be held back and
    joined with the next write.

    Why by hand: uvicorn has no switch for it, and asyncio's transport writes at once. It
    saves one ``sendto`` per answer with a body (claim, ack, reads; appends answer 204 with
    no body, one write already): ``strace -c`` showed 8-11 µs per ``sendto`` here, and
    PERFORMANCE.md counted 6.9 writes per wake cycle with both writes.

    Invariant: at most one chunk is held (``_held``), and while one is, a flush is scheduled
    for the end of the current loop tick (``_flush_handle``), so a held head is never later
    than one tick. Every other use of the transport (close, the protocol's own writes)
    flushes first, so bytes leave in the order they were written.
    """

    __slots__ = ("_flush_handle", "_held", "_hold_next", "_loop", "transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._hold_next = False
        self._flush_handle: Cancellable | None = None

    def hold_next_write(self) -> None:
        """Hold the next write (a response head) until a later write or the tick's end."""
        self._hold_next = True

    def write(self, data: bytes) -> None:
        if self._hold_next:
            self._hold_next = False
            self.flush()
            self._held = data
            self._flush_handle = self._loop.call_soon(self.flush)
            return
        if self._held is not None:
            data = self._held + data
            self._held = None
            assert self._flush_handle is not None
            self._flush_handle.cancel()
            self._flush_handle = None
        self.transport.write(data)

    def end_hold(self) -> None:
        """Stop waiting for a head to hold (its start message wrote nothing, or failed)."""
        self._hold_next = False

    def flush(self) -> None:
        """Write the held chunk now, if any."""
        self._hold_next = False
        if self._held is not None:
            held, self._held = self._held, None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return bool(self.transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        # Anything else uvicorn's cycle may ask of a transport (get_extra_info, ...).
        return getattr(self.transport, name)


#: Statuses whose answers never have a body (nothing to join the head with).
_NO_BODY = frozenset({204, 304})


def _coalescing_send(
    send: Callable[[Any], Awaitable[None]], out: CoalescingTransport, flow: Any, is_head: bool
) -> Callable[[Any], Awaitable[None]]:
    """Wrap a cycle's ``send``: a response start's head write is held for its body (unless
    the answer can have none: a HEAD request, a 204 such as an append's, a 304)."""

    async def coalesced(message: Any) -> None:
        kind = message["type"]
        if (
            kind == "http.response.start"
            and not is_head
            and message["status"] not in _NO_BODY
            and not flow.write_paused
        ):
            out.hold_next_write()
        try:
            await send(message)
        finally:
            if kind == "http.response.start":
                out.end_hold()
            elif kind == "http.response.body" and not message.get("more_body", False):
                # A HEAD answer writes no body: its head must not wait for the tick's end.
                out.flush()

    return coalesced


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

    #: Set per server by :func:`limited_protocol`: the deadlines and the connection gate.
    idle_timeout: float = math.inf
    head_timeout: float = math.inf
    gate: limits.ConnectionGate | None = None
    # Invariant: True once this connection was counted by the gate (it leaves on close).
    _admitted = False
    # Invariant: the one pending idle or head deadline (None while a request is served).
    # (An asyncio TimerHandle; typed by what is used, since server/ never imports asyncio.)
    _deadline: Cancellable | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._out = CoalescingTransport(transport, self.loop)
        if self.gate is not None:
            if not self.gate.try_enter():
                transport.write(limits.busy_answer(self.gate.cap))
                transport.close()
                return
            self._admitted = True
        self._arm(self.idle_timeout, self._idle_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted and self.gate is not None:
            self._admitted = False
            self.gate.leave()
        super().connection_lost(exc)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        if math.isfinite(delay):
            self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # Between requests uvicorn's own keep-alive timer bounds the silence; the head deadline
    # starts again with the next request's first byte (data_received).
    def _idle_overdue(self) -> None:
        self._deadline = None
        if self._in_head and self._received_in_head == 0 and not self.transport.is_closing():
            self.transport.close()

    def _head_overdue(self) -> None:
        self._deadline = None
        if self._in_head and not self.transport.is_closing():
            self._out.flush()
            self.transport.write(limits.head_timeout_answer(self.head_timeout))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._received_in_head == 0 and data:
                self._arm(self.head_timeout, self._head_overdue)
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
        self._disarm()
        if self._head_size > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge  # httptools stops and raises; data_received answers
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:
            # Its task has not run yet: it sends through these from its first message.
            cycle.transport = self._out  # type: ignore[assignment]
            cycle.send = _coalescing_send(  # type: ignore[method-assign,assignment]
                cycle.send, self._out, cycle.flow, self.scope["method"] == "HEAD"
            )
            # Whether the cycle's receive would return at once (its event is set: body bytes,
            # the body's end, or a disconnect are in): the app skips the body deadline then.
            self.scope[BODY_READY] = cycle.message_event.is_set  # type: ignore[literal-required]

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
        self._out.flush()
        self.transport.write(error_answer(status, code, message, headers))
        self.transport.close()


def limited_protocol(
    config: ServerConfig, gate: limits.ConnectionGate
) -> type[BoundedHttpToolsProtocol]:
    """Return the protocol class for one server: its deadlines and its connection gate."""
    return type(
        "LimitedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"idle_timeout": config.idle_timeout, "head_timeout": config.head_timeout, "gate": gate},
    )


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
    gate: limits.ConnectionGate | None = None,
    force_trigger: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Serve ``app`` on the bound, listening ``sock`` until ``shutdown_trigger`` returns, then
    give open connections at most ``config.shutdown_grace`` seconds (whole seconds, rounded
    up: uvicorn counts in seconds).

    Once ``force_trigger`` returns, the wait ends and every open connection is closed: its
    request then sees a disconnect and ends, rather than being cancelled (which uvicorn would
    log as a traceback).
    """
    uvicorn_config = uvicorn.Config(
        app,
        http=BoundedHttpToolsProtocol if gate is None else limited_protocol(config, gate),
        timeout_graceful_shutdown=max(1, math.ceil(config.shutdown_grace)),
        **UVICORN_SETTINGS,
    )
    server = EmbeddedUvicorn(uvicorn_config)
    async with anyio.create_task_group() as tg:

        async def trigger() -> None:
            await shutdown_trigger()
            server.should_exit = True

        async def force() -> None:
            assert force_trigger is not None
            await force_trigger()
            server.should_exit = True
            server.force_exit = True
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()

        tg.start_soon(trigger)
        if force_trigger is not None:
            tg.start_soon(force)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
