"""A second Ctrl-C forces ``pullwake server`` to stop; the first says how long it waits."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.fixtures.servers import ServerFactory

pytestmark = pytest.mark.e2e

WAIT = 15.0


def wait_for(predicate: object, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_answer(sock: socket.socket) -> bytes:
    """Read one HTTP answer with a Content-Length body (bounded by the socket's timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("backend", "http"),
    [("asyncio", "uvicorn"), ("asyncio", "hypercorn"), ("trio", "hypercorn")],
)
def test_a_second_signal_cuts_a_request_the_graceful_stop_waits_for(
    server_factory: ServerFactory, backend: str, http: str
) -> None:
    server = server_factory(
        backend=backend,
        args=["--shutdown-grace", "120", "--body-timeout", "120", "--http", http],
    )
    assert server.proc is not None
    # A request whose body never finishes arriving: the graceful stop waits for it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        # One whole exchange first, so the server has surely accepted (and counted) it.
        sock.sendall(b"GET /v1/stream/absent HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 404"), answer
        sock.sendall(
            b"POST /v1/stream/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n[1"
        )
        # No event says the server has read that head; give it a second (a request not yet
        # read is an idle connection, which a graceful stop closes at once).
        time.sleep(1.0)
        server.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "press Ctrl-C again to force" in server.stderr_text(), "the stop line")
        first = [line for line in server.stderr_text().splitlines() if "Ctrl-C again" in line]
        assert len(first) == 1, first
        # asyncio's hypercorn has no connection count (server/limits.py counts the others).
        shown = (
            "open connections"
            if http == "hypercorn" and backend == "asyncio"
            else "1 open connection(s)"
        )
        assert f"{shown} get up to 120 s to finish" in first[0]
        time.sleep(0.5)
        assert server.running, server.stderr_text()
        forced_at = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        status = server.wait(timeout=WAIT)
        took = time.monotonic() - forced_at
    text = server.stderr_text()
    assert status == 130, text
    assert f"forcing the stop: cutting {shown}" in text
    assert "pullwake server stopped (forced)" in text
    assert took < 60, text
    assert "Traceback" not in text, text
