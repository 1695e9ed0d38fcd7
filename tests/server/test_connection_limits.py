"""Stalled and idle connections cannot lock anyone out (issue 14, defect 1).

Real server processes on loopback, on uvicorn (asyncio) and hypercorn (trio), started with
the soft open-file limit at 1,024 (``prlimit``), as many systems start services. Sockets that
send nothing, trickle a request head, or stall a body are opened by the thousand; a normal
client must still be served within a second, the stalled sockets must be closed by their
deadlines, and past the connection cap a new connection is refused with a 503 it can read.
"""

from __future__ import annotations

import json
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import ServerProcess

STACKS = [pytest.param("asyncio", id="uvicorn"), pytest.param("trio", id="hypercorn")]
#: The soft open-file limit the server is started with.
SOFT_FDS = 1024


class LimitedServer(ServerProcess):
    """A server process whose soft open-file limit starts at :data:`SOFT_FDS`."""

    def command(self) -> list[str]:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ["prlimit", f"--nofile={SOFT_FDS}:{hard}", "--", *super().command()]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    started: list[ServerProcess] = []

    def start(backend: str, *args: str) -> ServerProcess:
        server = LimitedServer(
            f"sqlite:///{tmp_path / f'limits-{len(started)}.db'}",
            log_dir=tmp_path,
            backend=backend,
            args=list(args),
            name=f"limited-{len(started)}",
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture(autouse=True)
def _room_for_sockets() -> None:
    """Give this test process descriptors for its thousands of client sockets."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to start the server with a low fd limit")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4_500:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for 2,000 connections")
    if soft != resource.RLIM_INFINITY and soft < 4_500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8_192), hard))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _open_attackers(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` sockets: a third silent, a third mid-head, a third mid-body."""
    sockets = []
    for index in range(count):
        sock = _connect(port)
        if index % 3 == 1:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif index % 3 == 2:
            sock.sendall(
                b"POST /v1/stream/events/a HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[1,"
            )
        sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket, timeout: float) -> bytes | None:
    """Return what the server wrote before closing ``sock`` (None: still open)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize("backend", STACKS)
def test_two_thousand_stalled_connections_do_not_lock_out_a_client(
    start_server: object, backend: str
) -> None:
    server = start_server(  # type: ignore[operator]
        backend, "--idle-timeout", "6", "--head-timeout", "6", "--body-timeout", "6"
    )
    with httpx.Client(base_url=server.url, timeout=5) as setup:
        json_type = {"content-type": "application/json"}
        assert setup.put("/v1/stream/events/a", headers=json_type).status_code == 201
    attackers = _open_attackers(server.port, 2_000)
    try:
        time.sleep(1)  # the server has taken them all in (their deadlines are further off)
        began = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            appended = client.post("/v1/stream/events/a", headers=json_type, content="[7]")
            assert appended.status_code == 204
        served_in = time.monotonic() - began
        assert served_in < 1.0, f"a normal client waited {served_in:.2f} s"

        # Every stalled socket is closed by its deadline: silent ones without a word, a
        # trickled head or a stalled body with a 408.
        deadline_s = 6 + 6 + 6  # the longest bound plus scheduling slack for 2,000 sockets
        for index in (0, 1, 2, 1_998, 1_999):
            answer = _closed_by_server(attackers[index], deadline_s)
            assert answer is not None, f"socket {index} ({index % 3}) is still open"
            if index % 3 and answer:
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for sock in attackers:
            sock.close()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        values = client.get("/v1/stream/events/a", params={"offset": "-1"}).json()
        assert values == [7]  # no stalled body was stored
    server.terminate()
    assert "Traceback" not in server.stderr_text(), server.stderr_text()[-4000:]


@pytest.mark.parametrize("backend", STACKS)
def test_past_the_cap_a_connection_gets_a_503_with_retry_after(
    start_server: object, backend: str
) -> None:
    server = start_server(backend, "--max-connections", "20", "--idle-timeout", "30")  # type: ignore[operator]
    held = [_connect(server.port) for _ in range(20)]
    try:
        time.sleep(0.3)  # let the server admit them
        extra = _connect(server.port)
        answer = _closed_by_server(extra, 5)
        extra.close()
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 503"), answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"retry-after: 1" in head.lower(), head
        assert json.loads(body)["error"]["code"] == "TOO_MANY_CONNECTIONS"
    finally:
        for sock in held:
            sock.close()
    # Room again once they closed (the server sees each close within its next read).
    with httpx.Client(base_url=server.url, timeout=5) as client:
        began = time.monotonic()
        while (status := client.get("/healthz").status_code) == 503:
            assert time.monotonic() - began < 5, "closed connections still count"
            time.sleep(0.1)
        assert status == 200


@pytest.mark.parametrize("backend", STACKS)
def test_sse_and_long_poll_outlive_every_deadline(start_server: object, backend: str) -> None:
    server = start_server(  # type: ignore[operator]
        backend,
        *("--idle-timeout", "1", "--head-timeout", "1", "--body-timeout", "1"),
        *("--keepalive", "0.3", "--long-poll-timeout", "2.5"),
    )
    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.put("/v1/stream/events/a", headers=json_type).status_code == 201
        began = time.monotonic()
        poll = client.get("/v1/stream/events/a", params={"offset": "now", "live": "long-poll"})
        assert poll.status_code == 204
        assert time.monotonic() - began >= 2.0
        params = {"offset": "now", "live": "sse"}
        with client.stream("GET", "/v1/stream/events/a", params=params) as sse:
            assert sse.status_code == 200
            lines = sse.iter_lines()
            began = time.monotonic()
            while time.monotonic() - began < 2.5:  # past every deadline, keepalives only
                next(lines)
            with httpx.Client(base_url=server.url, timeout=5) as writer:
                writer.post("/v1/stream/events/a", headers=json_type, content="[42]")
            for line in lines:
                if line.startswith("data:[42"):
                    break
