"""The runner when its server dies, freezes, goes silent, hangs, or comes back as a stranger.

Each test makes only one detector able to notice the fault in time (the others are set to
30 s, beyond the test's bounded waits), then asserts *which* transition noticed it, and that
work goes on once the server is back. No test asserts a duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from pullwake.runtime import Runner
from pullwake.runtime.client import Timeouts
from pullwake.runtime.errors import ServerUnreachable
from pullwake.runtime.offsets import MemoryOffsetStore
from pullwake.testing import FaultProxy
from tests.fixtures.servers import ServerFactory, ServerProcess

from .realserver import Collector, Producer, Transitions, fast_settings, wait_until
from .waiting import reach, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SERVER_ARGS = ["--keepalive", "0.3", "--shutdown-grace", "0.5"]
NEVER = 30.0


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=SERVER_ARGS)


def runner_for(url: str, handler: Any, transitions: Transitions, **settings: Any) -> Runner:
    return Runner(
        url,
        runner_id="r1",
        handler=handler,
        wake_stream="wake/r1",
        grace=1.0,
        settings=fast_settings(**settings),
        inspect=transitions.append,
    )


async def prepare(producer: Producer) -> None:
    await producer.stream("wake/r1")
    await producer.stream("jobs/a")
    await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])


async def test_a_killed_server_is_noticed_at_once_and_nothing_is_lost(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    transitions = Transitions()
    # Neither silence nor heartbeats could notice within the test's waits: only the broken
    # connection can.
    quiet = {"heartbeat_interval": NEVER, "timeouts": Timeouts(connect=1.0, read=NEVER)}
    async with Producer(server.url) as producer:
        await prepare(producer)
        async with runner_for(server.url, handler, transitions, **quiet) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "before")
            await handler.wait_for(1)
            await anyio.to_thread.run_sync(server.kill)
            await transitions.wait("streaming", "server_lost")
            (lost,) = transitions.find("streaming", "server_lost")
            assert isinstance(lost.error, ServerUnreachable)
            assert lost.target == ("running", "reconnecting", "server_gone")
            await anyio.to_thread.run_sync(server.start)
            # Appended while the runner may still be backing off: its wake waits in the
            # (durable) wake stream and is read on reconnect.
            await producer.append("jobs/a", "after")
            await handler.wait_for(2)
    assert handler.messages() == ["before", "after"]
    assert transitions.find("server_gone", "backoff_elapsed")


async def test_a_gracefully_stopped_server_ends_the_stream_cleanly(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    transitions = Transitions()
    quiet = {"heartbeat_interval": NEVER, "timeouts": Timeouts(connect=1.0, read=NEVER)}
    async with Producer(server.url) as producer:
        await prepare(producer)
        async with runner_for(server.url, handler, transitions, **quiet) as runner:
            await reach(runner, "streaming")
            await anyio.to_thread.run_sync(server.terminate)
            await transitions.wait("streaming", "stream_ended")
            # The first end; a reconnect in the moment before the server stopped listening
            # may have been ended the same way since.
            ended = transitions.find("streaming", "stream_ended")[0]
            # The server said goodbye (final control event, EOF): an end, not an error.
            assert ended.error is None
            await anyio.to_thread.run_sync(server.start)
            await producer.append("jobs/a", "after restart")
            await handler.wait_for(1)
    assert handler.messages() == ["after restart"]


async def test_a_silent_server_is_noticed_by_the_read_timeout(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    transitions = Transitions()
    # The server sends a keepalive every 0.3 s; one second of silence means it is gone.
    silent_after = {"heartbeat_interval": NEVER, "timeouts": Timeouts(connect=1.0, read=1.0)}
    async with Producer(server.url) as producer, FaultProxy("127.0.0.1", server.port) as proxy:
        await prepare(producer)
        async with runner_for(proxy.url, handler, transitions, **silent_after) as runner:
            await reach(runner, "streaming")
            await producer.append("jobs/a", "m1")
            await handler.wait_for(1)
            # The stream stays open: no FIN, no RST, just nothing (a dead peer, a NAT drop).
            proxy.blackhole()
            await transitions.wait("streaming", "server_lost")
            (lost,) = transitions.find("streaming", "server_lost")
            assert isinstance(lost.error, ServerUnreachable)
            assert isinstance(lost.error.__cause__, httpx.ReadTimeout)
            assert lost.target == ("running", "reconnecting", "server_gone")
            proxy.forward()
            await producer.append("jobs/a", "m2")
            await handler.wait_for(2)
    assert handler.messages() == ["m1", "m2"]


async def test_a_frozen_server_is_noticed_by_failing_heartbeats(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    transitions = Transitions()
    # The stream would wait 30 s for a byte; the heartbeats (every 0.3 s, 0.3 s each) notice.
    heartbeats_only = {"timeouts": Timeouts(connect=1.0, read=NEVER, request=1.0)}
    async with Producer(server.url) as producer:
        await prepare(producer)
        async with runner_for(server.url, handler, transitions, **heartbeats_only) as runner:
            await reach(runner, "streaming")
            server.pause()
            try:
                await transitions.wait("streaming", "stream_reset")
            finally:
                server.resume()
            assert not transitions.find("streaming", "stream_ended")
            assert not transitions.find("streaming", "server_lost")
            await producer.append("jobs/a", "after thaw")
            await handler.wait_for(1)
            await wait_until(lambda: runner.state == "streaming")
    assert handler.messages() == ["after thaw"]


class HungStreamServer:
    """An HTTP/1.1 server that never answers ``live=sse`` and fails everything else fast.

    ``POST /v1/runners`` answers 404 (no registry, so the runner probes with ``HEAD``), and
    every other request 503, so heartbeats fail while the connect hangs.
    """

    def __init__(self) -> None:
        self.port = 0
        self.sse_requests = 0
        self.requests: list[tuple[str, str]] = []

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._connection)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        buffer = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
                    length = int({k.lower(): v for k, v in fields.items()}.get("content-length", 0))
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    buffer = buffer[length:]
                    self.requests.append((method, target))
                    if "live=sse" in target:
                        self.sse_requests += 1
                        await anyio.sleep_forever()
                    status = "404 Not Found" if target == "/v1/runners" else "503 Unavailable"
                    body = b'{"error": {"code": "TEST", "message": "test server"}}'
                    head_out = (
                        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                        f"content-length: {len(body)}\r\n\r\n"
                    ).encode()
                    await stream.send(head_out if method == "HEAD" else head_out + body)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass


async def test_failing_heartbeats_abort_a_connect_that_hangs(anyio_backend: str) -> None:
    transitions = Transitions()
    hung = HungStreamServer()
    async with anyio.create_task_group() as tg:
        await tg.start(hung.serve)
        runner = Runner(
            f"http://127.0.0.1:{hung.port}",
            runner_id="r1",
            handler=Collector(),
            wake_stream="wake/r1",
            offset_store=MemoryOffsetStore(),
            settings=fast_settings(
                heartbeat_interval=0.2,
                heartbeat_timeout=0.2,
                # Without the heartbeat, the connect would wait 30 s for response headers.
                timeouts=Timeouts(connect=1.0, read=NEVER, request=1.0),
            ),
            inspect=transitions.append,
        )
        async with runner:
            await transitions.wait("connecting", "stream_reset")
            health = runner.health()
        tg.cancel_scope.cancel()
    (reset, *_) = transitions.find("connecting", "stream_reset")
    # Failure mode 2: the hung connect was cancelled by the heartbeat's verdict.
    assert reset.cancelled == ("connect",)
    assert reset.origin == "heartbeat"
    assert hung.sse_requests >= 1
    assert ("HEAD", "/v1/stream/wake/r1") in hung.requests
    assert health["registry"] is False
    assert health["heartbeat_failures"] >= 2


async def test_a_server_that_forgot_the_runner_gets_it_registered_again(
    server: ServerProcess, anyio_backend: str, tmp_path: Path
) -> None:
    handler = Collector()
    transitions = Transitions()
    replacement = ServerProcess(
        f"sqlite:///{tmp_path / 'fresh.db'}", log_dir=tmp_path, args=SERVER_ARGS, name="fresh"
    )
    try:
        async with Producer(server.url) as producer:
            await prepare(producer)
            async with runner_for(server.url, handler, transitions) as runner:
                await reach(runner, "streaming")
                await producer.append("jobs/a", "old server")
                await handler.wait_for(1)
                # The server comes back on the same port with an empty database.
                await anyio.to_thread.run_sync(server.kill)
                replacement.port = server.port
                await anyio.to_thread.run_sync(replacement.start)
                await prepare(producer)
                await wait_until(lambda: len(transitions.find("connecting", "connected")) >= 2)

                async def known_and_online() -> bool:
                    response = await producer.http.get("/v1/runners/r1/health")
                    return response.status_code == 200 and response.json()["status"] == "online"

                await wait_until_async(known_and_online)
                await producer.append("jobs/a", "new server")
                await handler.wait_for(2)
    finally:
        replacement.close()
    assert handler.messages() == ["old server", "new server"]
