"""The lean HTTP path: framing, connection reuse, no blind replays, and the same errors as httpx.

Most tests talk to a tiny scripted HTTP server in the test (an anyio TCP listener), because the
odd cases (chunked bodies, a server that closes an idle connection, half an answer, silence)
are what a healthy server never does on cue. The end-to-end cases run the real server.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pullwake.runtime import Runner, RunnerSettings, SubscriptionSpec, errors
from pullwake.runtime.client import Client, Timeouts
from pullwake.runtime.lean_http import IDLE_LIMIT, LeanPool, lean_origin
from tests.fixtures.servers import ServerFactory

from .realserver import Collector, Producer, fast_settings

pytestmark = pytest.mark.anyio

WAIT = 10.0
JSON_READ = {"Content-Type": "application/json", "Stream-Next-Offset": "7"}


# -- a scripted server ----------------------------------------------------------------------


@attrs.define
class Request:
    connection: int
    method: str
    target: str
    body: bytes


@attrs.define
class Peer:
    """One accepted connection, as the script sees it."""

    index: int
    stream: anyio.abc.SocketStream
    reader: BufferedByteReceiveStream
    log: list[Request]

    async def request(self) -> Request:
        """Read one whole request (head and Content-Length body)."""
        head = await self.reader.receive_until(b"\r\n\r\n", 65536)
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        length = 0
        for field in fields:
            name, _, value = field.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self.reader.receive_exactly(length) if length else b""
        request = Request(self.index, method, target, body)
        self.log.append(request)
        return request

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)


def answer(
    status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None, *, length=True
) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@attrs.define
class Scripted:
    url: str
    log: list[Request] = attrs.Factory(list)
    #: Connections accepted so far.
    connections: int = 0
    #: Connections whose script ended (the server closed its side).
    closed: int = 0
    _changed: anyio.Event = attrs.Factory(anyio.Event)

    def close_one(self) -> None:
        self.closed += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_closed(self, count: int) -> None:
        while self.closed < count:
            await self._changed.wait()

    def targets(self) -> list[str]:
        return [r.target for r in self.log]


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Scripted]:
    """Serve ``script(peer)`` on every connection to a fresh 127.0.0.1 port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server = Scripted(f"http://127.0.0.1:{port}")

    async def serve(stream: anyio.abc.SocketStream) -> None:
        index = server.connections
        server.connections += 1
        peer = Peer(index, stream, BufferedByteReceiveStream(stream), server.log)
        try:
            async with stream:
                await script(peer)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead):
            pass
        finally:
            server.close_one()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve, tg)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def keep_alive(reply: bytes) -> Script:
    """Answer every request on the connection with ``reply``."""

    async def script(peer: Peer) -> None:
        while True:
            await peer.request()
            await peer.send(reply)

    return script


def pool_request(pool: LeanPool, url: str, method: str = "POST", target: str = "/p") -> Any:
    origin = lean_origin(url)
    assert origin is not None
    body = b"[1]" if method == "POST" else None
    return pool.request(origin, method, target, [], body, connect_timeout=1.0, timeout=2.0)


# -- framing and reuse ----------------------------------------------------------------------


async def test_one_keep_alive_connection_carries_every_exchange(anyio_backend: str) -> None:
    reply = answer(200, b"[1,2]", JSON_READ)
    with anyio.fail_after(WAIT):
        async with scripted(keep_alive(reply)) as server, Client(server.url, token="t") as client:
            assert client.lean_http
            for _ in range(3):
                await client.append("jobs/a", [{"n": 1}])
            chunk = await client.read("jobs/a", "-1")
    assert chunk.messages == (1, 2)
    assert chunk.next_offset == "7"
    assert server.connections == 1
    assert server.targets() == ["/v1/stream/jobs/a"] * 3 + ["/v1/stream/jobs/a?offset=-1"]
    assert [r.body for r in server.log[:3]] == [b'[{"n":1}]'] * 3


async def test_the_request_carries_host_length_auth_and_content_type(anyio_backend: str) -> None:
    heads: list[bytes] = []

    async def script(peer: Peer) -> None:
        heads.append(await peer.reader.receive_until(b"\r\n\r\n", 65536))
        await peer.reader.receive_exactly(len(b'{"worker":"w"}'))
        await peer.send(answer(409, b'{"error":{"code":"NO_PENDING_WORK"}}'))

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url, token="t") as client:
            with pytest.raises(errors.NoPendingWork):
                await client.claim("s 1", "w")
    port = server.url.rsplit(":", 1)[1]
    lines = heads[0].decode().split("\r\n")
    assert lines[0] == "POST /v1/stream/__ds/subscriptions/s%201/claim HTTP/1.1"
    assert set(lines[1:]) == {
        f"Host: 127.0.0.1:{port}",
        "Pullwake-Authorization: Bearer t",
        "Authorization: Bearer t",
        "Content-Type: application/json",
        "Content-Length: 14",
        # The claim offers pullwake's negotiated extensions (docs/server.md).
        "Pullwake-Extensions: inline-messages, claim-next",
    }


async def test_a_chunked_answer_is_assembled_and_the_connection_kept(anyio_backend: str) -> None:
    async def script(peer: Peer) -> None:
        while True:
            await peer.request()
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            await peer.send(
                (head + "Stream-Next-Offset: 9\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
            )
            for part in (b"[1,", b'"two",', b"3]"):
                await peer.send(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            await peer.send(b"0\r\n\r\n")

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url) as client:
            first = await client.read("s", "-1")
            second = await client.read("s", "9")
    assert first.messages == second.messages == (1, "two", 3)
    assert server.connections == 1


async def test_an_answer_without_length_is_read_to_eof_and_not_reused(anyio_backend: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(200, b"[5]", JSON_READ, length=False))

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url) as client:
            assert (await client.read("s", "-1")).messages == (5,)
            assert (await client.read("s", "-1")).messages == (5,)
    assert server.connections == 2


async def test_connection_close_is_obeyed(anyio_backend: str) -> None:
    reply = answer(200, b"[]", {**JSON_READ, "Connection": "close"})
    with anyio.fail_after(WAIT):
        async with scripted(keep_alive(reply)) as server, Client(server.url) as client:
            await client.read("s", "-1")
            await client.read("s", "-1")
    assert server.connections == 2
    assert len(server.log) == 2


async def test_head_and_204_answers_have_no_body_and_keep_the_connection(
    anyio_backend: str,
) -> None:
    async def script(peer: Peer) -> None:
        while True:
            request = await peer.request()
            if request.method == "HEAD":
                # The length a GET would have, and no body: HEAD answers never carry one.
                await peer.send(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Stream-Next-Offset: 3\r\nContent-Length: 100\r\n\r\n"
                )
            else:
                await peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url) as client:
            probe = await client.probe("s")
            await client.append("s", [1])
            probe_again = await client.probe("s")
    assert probe.next_offset == probe_again.next_offset == "3"
    assert [r.method for r in server.log] == ["HEAD", "POST", "HEAD"]
    assert server.connections == 1


async def test_a_1xx_answer_is_skipped_for_the_final_one(anyio_backend: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(200, b"[4]", JSON_READ))

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url) as client:
            assert (await client.read("s", "-1")).messages == (4,)
    assert server.connections == 1


async def test_bytes_after_a_complete_answer_keep_the_connection_from_reuse(
    anyio_backend: str,
) -> None:
    """An answer followed by bytes nobody asked for (here, a second answer in the same write):
    the connection is out of step with its requests, so it is closed, not reused."""

    async def script(peer: Peer) -> None:
        while True:
            await peer.request()
            await peer.send(answer(200, b"[1]", JSON_READ) + answer(200, b"[2]", JSON_READ))

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url) as client:
            assert (await client.read("s", "-1")).messages == (1,)
            assert (await client.read("s", "-1")).messages == (1,)
    assert server.connections == 2


def test_the_idle_limit_is_below_the_servers_keep_alive() -> None:
    """A pooled connection is dropped before the server would close it for idleness."""
    from pullwake.server.http_uvicorn import UVICORN_SETTINGS

    assert UVICORN_SETTINGS["timeout_keep_alive"] > IDLE_LIMIT


async def test_a_connection_the_server_closed_while_idle_is_never_used(
    anyio_backend: str,
) -> None:
    """The server ends keep-alive after one answer (as at its keep-alive timeout). The next
    POST must go on a new connection: sent on the dead one it would fail, and a POST is never
    sent twice."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(200, b"{}"))

    with anyio.fail_after(WAIT):
        async with scripted(script) as server, Client(server.url) as client:
            await client.append("s", [1])
            await server.wait_closed(1)
            await anyio.sleep(0.05)  # the FIN reaches the client's socket
            await client.append("s", [2])
    assert [r.body for r in server.log] == [b"[1]", b"[2]"]
    assert server.connections == 2


async def test_a_connection_idle_past_the_limit_is_closed_not_reused(anyio_backend: str) -> None:
    with anyio.fail_after(WAIT):
        async with scripted(keep_alive(answer(200, b"{}"))) as server:
            pool = LeanPool(idle_limit=0.05)
            origin = lean_origin(server.url)
            assert origin is not None
            try:
                await pool_request(pool, server.url)
                await pool_request(pool, server.url)
                assert server.connections == 1  # fresh enough: reused
                await anyio.sleep(0.15)
                await pool_request(pool, server.url)
                assert server.connections == 2
                assert pool.idle_count(origin) == 1
                await server.wait_closed(1)  # the stale one was closed, not left open
            finally:
                await pool.aclose()
            assert pool.idle_count(origin) == 0


@pytest.mark.parametrize(("method", "replayed"), [("POST", False), ("GET", True)])
async def test_a_reused_connection_failing_before_any_answer_byte_replays_only_safe_requests(
    anyio_backend: str, method: str, replayed: bool
) -> None:
    """The server reads the second request on a kept connection and closes it unanswered:
    it may have acted on it, so a POST (claim, ack, append) is not sent again; a GET is, once,
    on a new connection."""

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer(200, b"[]", JSON_READ))
        if peer.index == 0:
            await peer.request()  # read, then hang up without a byte of answer
            return
        while True:
            await peer.request()
            await peer.send(answer(200, b"[]", JSON_READ))

    with anyio.fail_after(WAIT):
        async with scripted(script) as server:
            pool = LeanPool()
            try:
                await pool_request(pool, server.url, method)
                if replayed:
                    response = await pool_request(pool, server.url, method)
                    assert response.status_code == 200
                else:
                    with pytest.raises(httpx.RemoteProtocolError):
                        await pool_request(pool, server.url, method)
            finally:
                await pool.aclose()
    assert len(server.log) == (3 if replayed else 2)
    assert server.connections == (2 if replayed else 1)


async def test_a_cancelled_exchange_closes_its_connection(anyio_backend: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.reader.receive()  # never answers; ends at the client's EOF

    with anyio.fail_after(WAIT):
        async with scripted(script) as server:
            pool = LeanPool()
            origin = lean_origin(server.url)
            assert origin is not None
            with anyio.move_on_after(0.1) as scope:
                await pool_request(pool, server.url)
            assert scope.cancelled_caught
            assert pool.idle_count(origin) == 0
            await server.wait_closed(1)  # the server saw the connection close
            await pool.aclose()


async def test_a_closed_client_refuses_requests_on_both_paths(anyio_backend: str) -> None:
    for lean in (True, False):
        client = Client("http://127.0.0.1:1", lean_http=lean)
        await client.aclose()
        assert client.closed
        with pytest.raises(RuntimeError, match="closed"):
            await client.append("s", [1])


# -- the same failure, the same error on both paths -----------------------------------------


def _silent() -> Script:
    async def script(peer: Peer) -> None:
        await peer.request()
        await anyio.sleep_forever()

    return script


def _send_then_close(data: bytes) -> Script:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(data)

    return script


#: name -> (script, the error class, the httpx exception behind it).
FAILURES: dict[str, tuple[Script, type[Exception], type[Exception]]] = {
    "silent server": (_silent(), errors.ServerUnreachable, httpx.ReadTimeout),
    "closed without an answer": (
        _send_then_close(b""),
        errors.ServerUnreachable,
        httpx.RemoteProtocolError,
    ),
    "half an answer, then close": (
        _send_then_close(b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"par'),
        errors.ServerUnreachable,
        httpx.RemoteProtocolError,
    ),
    "half a chunked answer, then close": (
        _send_then_close(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":'),
        errors.ServerUnreachable,
        httpx.RemoteProtocolError,
    ),
    "half a head, then close": (
        _send_then_close(b"HTTP/1.1 200 OK\r\nContent-Le"),
        errors.ServerUnreachable,
        httpx.RemoteProtocolError,
    ),
    "not HTTP": (
        _send_then_close(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        errors.ServerUnreachable,
        httpx.RemoteProtocolError,
    ),
    "a 503": (_send_then_close(answer(503, b"busy")), errors.ServerFailure, type(None)),
    "a 409 ALREADY_CLAIMED": (
        _send_then_close(answer(409, b'{"error":{"code":"ALREADY_CLAIMED","message":"m"}}')),
        errors.AlreadyClaimed,
        type(None),
    ),
    "a 200 that is not JSON": (
        _send_then_close(answer(200, b"<html>")),
        errors.ProtocolViolation,
        type(None),
    ),
}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_the_same_failure_maps_to_the_same_error_on_both_paths(
    anyio_backend: str, failure: str, lean: bool
) -> None:
    script, kind, cause = FAILURES[failure]
    timeouts = Timeouts(connect=1.0, read=1.0, request=0.3)
    with anyio.fail_after(WAIT):
        async with (
            scripted(script) as server,
            Client(server.url, timeouts=timeouts, lean_http=lean) as client,
        ):
            assert client.lean_http is lean
            with pytest.raises(errors.RequestFailed) as caught:
                await client.claim("s", "w")
    assert type(caught.value) is kind
    assert type(caught.value.__cause__) is cause
    assert caught.value.method == "POST"
    assert caught.value.url == server.url + "/v1/stream/__ds/subscriptions/s/claim"


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
async def test_a_refused_connect_is_the_same_error_on_both_paths(
    anyio_backend: str, lean: bool
) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # bound, not listening: connects are refused
        async with Client(f"http://127.0.0.1:{port}", lean_http=lean) as client:
            with pytest.raises(errors.ServerUnreachable) as caught:
                await client.heartbeat("r", lease_ms=1000, wake_stream_offset=None, diagnostics={})
    assert type(caught.value.__cause__) is httpx.ConnectError
    assert "ConnectError" in str(caught.value)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
async def test_a_connect_that_hangs_times_out_alike_on_both_paths(
    anyio_backend: str, lean: bool
) -> None:
    """A listener whose accept queue is full drops new SYNs: the connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                fillers.append(filler)
            await anyio.sleep(0.1)
            timeouts = Timeouts(connect=0.2, read=1.0, request=5.0)
            with anyio.fail_after(WAIT):
                async with Client(
                    f"http://127.0.0.1:{port}", timeouts=timeouts, lean_http=lean
                ) as client:
                    with pytest.raises(errors.ServerUnreachable) as caught:
                        await client.append("s", [1])
        finally:
            for filler in fillers:
                filler.close()
    assert type(caught.value.__cause__) is httpx.ConnectTimeout
    assert "timed out (ConnectTimeout)" in str(caught.value)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
async def test_the_per_call_timeout_bounds_the_wait_on_both_paths(
    anyio_backend: str, lean: bool
) -> None:
    """``timeout=`` (a heartbeat's bound) wins over the 30 s request timeout."""
    timeouts = Timeouts(connect=1.0, read=1.0, request=30.0)
    with anyio.fail_after(WAIT):
        async with (
            scripted(_silent()) as server,
            Client(server.url, timeouts=timeouts, lean_http=lean) as client,
        ):
            with pytest.raises(errors.ServerUnreachable) as caught:
                await client.heartbeat(
                    "r", lease_ms=1000, wake_stream_offset=None, diagnostics={}, timeout=0.2
                )
    assert type(caught.value.__cause__) is httpx.ReadTimeout
    assert "timed out (ReadTimeout)" in str(caught.value)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
async def test_a_line_break_in_a_header_value_is_refused_on_both_paths(
    anyio_backend: str, lean: bool
) -> None:
    with anyio.fail_after(WAIT):
        async with (
            scripted(keep_alive(answer(200, b"{}"))) as server,
            Client(server.url, token="a\r\nX-Evil: 1", lean_http=lean) as client,
        ):
            with pytest.raises(errors.ServerUnreachable) as caught:
                await client.append("s", [1])
    assert type(caught.value.__cause__) is httpx.LocalProtocolError
    assert server.log == []


# -- when the lean path is used -------------------------------------------------------------


def test_the_lean_path_is_used_only_where_it_changes_nothing_but_the_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert Client("http://h:1").lean_http
    assert Client("http://h").lean_http
    assert not Client("http://h:1", lean_http=False).lean_http
    assert not Client("https://h:1").lean_http
    assert not Client("http://user:pw@h:1").lean_http
    mocked = httpx.MockTransport(lambda request: httpx.Response(200))
    assert not Client("http://h:1", transport=mocked).lean_http
    mixed = Client(["http://a:1", "https://b:1"])
    assert mixed.lean_http
    mixed.rotate()
    assert not mixed.lean_http
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not Client("http://h:1").lean_http
    assert RunnerSettings().lean_http


def test_an_origin_keeps_the_host_header_and_the_path_prefix() -> None:
    origin = lean_origin("http://[::1]:8080/base/")
    assert origin is not None
    assert (origin.host, origin.port, origin.authority, origin.prefix) == (
        "::1",
        8080,
        "[::1]:8080",
        "/base",
    )
    plain = lean_origin("http://example.test:80")
    assert plain is not None
    assert (plain.port, plain.authority, plain.prefix) == (80, "example.test", "")
    assert lean_origin("http://example.test:99999") is None


# -- against the real server ----------------------------------------------------------------


async def test_claim_read_and_ack_over_the_lean_path_against_the_server(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory()
    with anyio.fail_after(30):
        async with Client(server.url) as client:
            assert client.lean_http
            await client.create_stream("wake/lean")
            await client.create_stream("jobs/lean")
            await client.put_subscription(
                "lean", {"streams": ["jobs/lean"], "wake_stream": "wake/lean"}
            )
            await client.append("jobs/lean", [{"n": 1}, {"n": 2}])
            grant = await client.claim("lean", "w")
            (state,) = grant.streams
            chunk = await client.read("jobs/lean", state.acked_offset)
            assert chunk.messages == ({"n": 1}, {"n": 2})
            assert await client.ack(grant, [("jobs/lean", chunk.next_offset)], done=True) is False
            with pytest.raises(errors.NoPendingWork):
                await client.claim("lean", "w")
            with pytest.raises(errors.Fenced):
                await client.ack(grant, [("jobs/lean", chunk.next_offset)], done=True)
            probe = await client.probe("jobs/lean")
            assert probe.next_offset == chunk.next_offset
            assert (await client.read("jobs/lean", chunk.next_offset)).messages == ()


@pytest.mark.e2e
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
async def test_the_runner_setting_chooses_the_path(
    server_factory: ServerFactory, anyio_backend: str, lean: bool
) -> None:
    server = server_factory()
    handler = Collector()
    async with Producer(server.url) as producer:
        await producer.stream("wake/r1")
        await producer.stream("jobs/a")
        runner = Runner(
            server.url,
            runner_id="r1",
            handler=handler,
            wake_stream="wake/r1",
            subscriptions=[SubscriptionSpec("jobs", streams=["jobs/a"])],
            grace=1.0,
            settings=fast_settings(lean_http=lean),
        )
        with anyio.fail_after(30):
            async with runner:
                await runner.wait_state("streaming")
                assert runner._run is not None
                assert runner._run.client.lean_http is lean
                await producer.append("jobs/a", {"n": 1})
                await handler.wait_for(1)
    assert handler.messages() == [{"n": 1}]
