"""The HTTP servers under the app: uvicorn (asyncio's default) and hypercorn (trio's, and
asyncio's on request). Both refuse broken HTTP with a 4xx and go on serving; uvicorn's
protocol (server/http_uvicorn.py) bounds the request head and answers in JSON like the app."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pullwake.server.http_uvicorn import MAX_HEAD_BYTES
from tests.fixtures.servers import ServerFactory, ServerProcess


def exchange(server: ServerProcess, payload: bytes, *, finish: bool = True) -> bytes:
    """Send raw bytes; return everything the server sends until it closes (bounded)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(payload)
            if finish:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before it read everything
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def status_and_body(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), headers, body


def still_serving(server: ServerProcess) -> bool:
    answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    return status_and_body(answer)[0] == 200


@pytest.mark.parametrize("http", ["uvicorn", "hypercorn"])
def test_broken_http_is_refused_and_the_server_goes_on(
    server_factory: ServerFactory, http: str
) -> None:
    server = server_factory(args=["--http", http])
    assert f"serving HTTP with {http}" in server.stderr_text()
    for payload in (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
    ):
        status, headers, body = status_and_body(exchange(server, payload))
        assert status == 400
        assert headers["connection"] == "close"
        if http == "uvicorn":
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["error"]["code"] == "BAD_HTTP_REQUEST"
    assert still_serving(server)


@pytest.mark.parametrize("http", ["uvicorn", "hypercorn"])
def test_an_oversized_request_head_is_431(server_factory: ServerFactory, http: str) -> None:
    server = server_factory(args=["--http", http])
    big = b"x" * (MAX_HEAD_BYTES + 1024)
    whole = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + big + b"\r\n\r\n"
    status, _, body = status_and_body(exchange(server, whole))
    assert status == 431
    if http == "uvicorn":
        assert json.loads(body)["error"]["code"] == "REQUEST_HEAD_TOO_LARGE"
        # A head that never ends is cut off too, without waiting for its end.
        endless = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + big * 4
        status, _, body = status_and_body(exchange(server, endless, finish=False))
        assert status == 431
        assert json.loads(body)["error"]["code"] == "REQUEST_HEAD_TOO_LARGE"
    assert still_serving(server)


def test_a_head_just_under_the_bound_is_served(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--http", "uvicorn"])
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: "
    pad = b"p" * (MAX_HEAD_BYTES - len(request) - 64)
    status, _, body = status_and_body(exchange(server, request + pad + b"\r\n\r\n"))
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


def test_uvicorn_on_trio_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pullwake", "server", "--port", "0", "--backend", "trio"),
            *("--http", "uvicorn", "--database", f"sqlite:///{tmp_path}/db.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "uvicorn runs on asyncio only" in result.stderr
