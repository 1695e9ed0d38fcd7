"""Connection limits and deadlines: no client can hold the server's sockets or fds for free.

Theory of operation
-------------------
A connection costs a file descriptor from the moment it is accepted. Without limits, sockets
that send nothing, trickle a request head, or never finish a body stay open for ever, and at
the process's fd limit the server can accept nobody (issue 14). Four bounds apply, each
configurable (``ServerConfig``, CLI flags in ``cli.py``, documented in docs/server.md):

* **idle timeout**: a connection that sends no byte of a request within ``idle_timeout``
  seconds of opening (or of its previous answer) is closed without an answer;
* **head deadline**: once the first byte arrived, the whole request line and headers must
  arrive within ``head_timeout`` seconds, else 408 and close;
* **body deadline**: a request body must be complete within ``body_timeout`` seconds of its
  head, else 408 and close (``app.Envelope`` bounds ``receive`` with :func:`receive_before`,
  the same on every HTTP server);
* **connection cap**: past ``max_connections`` open connections, a new one gets a 503 with
  ``Retry-After`` written directly on the socket, and is closed.

Answers are not bounded: an SSE stream or a long-poll sends nothing after its head and may
stay open as long as it likes (the server writes keepalives to it). At start-up
:func:`raise_fd_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit, and the cap is
clipped so it always leaves descriptors for the database and the listening socket.

The transport-level bounds live with each HTTP server (``http_uvicorn.py`` for uvicorn,
:func:`install_hypercorn_cap` and the hypercorn settings in ``serve.py``); on hypercorn the
head and idle bounds are one timer (its keep-alive timeout, ``idle_timeout + head_timeout``
from the connection's start) since hypercorn starts a request only once its head is whole.
"""

from __future__ import annotations

import http
import json
import logging
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope

log = logging.getLogger("pullwake.server.limits")

#: Descriptors kept free beyond the connection cap (database connections, the listening
#: socket, log files, the SQLite WAL).
FD_RESERVE = 64
#: Seconds a refused client is told to wait before it connects again.
RETRY_AFTER_S = 1
#: The scope key set when a request body missed its deadline (see :func:`receive_before`).
BODY_LATE = "pullwake.body_late"
#: Scope key an HTTP server may set to a callable saying whether ``receive`` would return at
#: once (the body is buffered): such a receive needs no deadline (http_uvicorn.py sets it).
BODY_READY = "pullwake.body_ready"


def error_answer(
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """Encode a complete ``Connection: close`` answer with this server's JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}, allow_nan=False).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")]
    lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
    lines.append(b"content-type: application/json\r\n")
    lines.append(b"content-length: " + str(len(body)).encode("ascii") + b"\r\n")
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + body


def busy_answer(max_connections: int) -> bytes:
    """The 503 a connection past the cap gets before it is closed."""
    return error_answer(
        503,
        "TOO_MANY_CONNECTIONS",
        f"The server holds its limit of {max_connections} open connections "
        f"(--max-connections); retry in {RETRY_AFTER_S} s, and close idle connections.",
        [(b"retry-after", str(RETRY_AFTER_S).encode("ascii"))],
    )


def head_timeout_answer(timeout: float) -> bytes:
    """The 408 a connection gets when its request head did not arrive in time."""
    return error_answer(
        408,
        "REQUEST_TIMEOUT",
        f"The request line and headers did not arrive within {timeout:g} s "
        "(--head-timeout); the connection is closed.",
    )


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(soft, hard)`` after.

    Every connection costs a descriptor, and many systems start processes with a soft limit
    of 1,024 while allowing far more. Where the limit cannot be read or raised (no
    ``resource`` module, or the system refuses), the limits are left as they are.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover  (not on POSIX)
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        target = max(soft, 1_048_576) if soft != resource.RLIM_INFINITY else soft
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def effective_cap(max_connections: int, fd_soft_limit: int) -> int:
    """Return the connection cap that still leaves :data:`FD_RESERVE` descriptors free."""
    if fd_soft_limit < 0:
        return max_connections
    room = max(1, fd_soft_limit - FD_RESERVE)
    if room < max_connections:
        log.warning(
            "the open-file limit (%d) allows only %d connections; --max-connections %d is "
            "lowered to that",
            fd_soft_limit,
            room,
            max_connections,
        )
    return min(max_connections, room)


class ConnectionGate:
    """Count open connections against a cap (event-loop only: no lock needed)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        # Invariant: 0 <= open <= cap; one enter per admitted connection, one leave each.
        self.open = 0
        self.refused = 0

    def try_enter(self) -> bool:
        """Admit one connection, or count a refusal and return False when at the cap."""
        if self.open >= self.cap:
            self.refused += 1
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1

    def statistics(self) -> dict[str, int]:
        return {"open": self.open, "cap": self.cap, "refused": self.refused}


async def receive_before(receive: Receive, deadline: float, scope: Scope) -> Message:
    """Receive the next request message, or pretend the client left once ``deadline`` passed.

    A late body looks like a disconnect to the app (so every reader of the body stops), and
    ``scope[BODY_LATE]`` says why, so the answer can be 408 rather than 400.
    """
    with anyio.move_on_at(deadline):
        return await receive()
    scope[BODY_LATE] = True
    return {"type": "http.disconnect"}


def install_hypercorn_cap() -> None:
    """Make hypercorn's trio server refuse connections past a cap set on its config.

    hypercorn builds one ``TCPServer`` per accepted connection and has no cap of its own; the
    class is swapped (once, idempotently) for one that asks the ``ConnectionGate`` found on
    the config as ``pullwake_gate`` (none there: no cap, hypercorn's own behaviour).
    """
    import hypercorn.trio.run as trio_run

    base: Any = getattr(trio_run, "TCPServer")  # noqa: B009  (not re-exported, for mypy)
    if getattr(base, "pullwake_capped", False):
        return

    class CappedTCPServer(base):  # type: ignore[misc]
        pullwake_capped = True

        async def run(self) -> None:
            gate: ConnectionGate | None = getattr(self.config, "pullwake_gate", None)
            if gate is None:
                await super().run()
                return
            if not gate.try_enter():
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    try:
                        await self.stream.send_all(busy_answer(gate.cap))
                    except Exception:
                        log.debug("could not tell a refused connection why")
                    await self.stream.aclose()
                return
            self._pullwake_gate: ConnectionGate | None = gate
            try:
                await super().run()
            finally:
                self._leave_gate()

        async def _read_data(self) -> None:
            # Reading ends when the socket is closed, by either side; run() itself may last
            # longer (hypercorn's idle timer outlives the socket), so the gate is left here.
            try:
                await super()._read_data()
            finally:
                self._leave_gate()

        def _leave_gate(self) -> None:
            gate = getattr(self, "_pullwake_gate", None)
            if gate is not None:
                self._pullwake_gate = None
                gate.leave()

    setattr(trio_run, "TCPServer", CappedTCPServer)  # noqa: B010  (as above)


def hypercorn_keep_alive(idle_timeout: float, head_timeout: float) -> float:
    """hypercorn's idle timer covers the silence before a request and its head together."""
    return idle_timeout + head_timeout
