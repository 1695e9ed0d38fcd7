"""The protocol client maps every answer and network failure to one typed error, at one edge."""

from __future__ import annotations

import json

import httpx
import pytest

from pullwake.runtime import errors
from pullwake.runtime.client import (
    ClaimGrant,
    Client,
    ControlEvent,
    DataEvent,
    Timeouts,
    describe_failure,
    raise_for_answer,
)
from pullwake.runtime.offsets import offset_after

pytestmark = pytest.mark.anyio


def answering(status: int, body: object = None, headers: dict[str, str] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "UNAUTHORIZED", errors.Rejected),
        (403, "FORBIDDEN", errors.Rejected),
        (404, "NOT_FOUND", errors.NotFound),
        (409, "ALREADY_CLAIMED", errors.AlreadyClaimed),
        (409, "NO_PENDING_WORK", errors.NoPendingWork),
        (409, "FENCED", errors.Fenced),
        (409, "INVALID_OFFSET", errors.Conflict),
        (400, "BAD_REQUEST", errors.ClientError),
        (413, "PAYLOAD_TOO_LARGE", errors.ClientError),
        (500, "INTERNAL", errors.ServerFailure),
        (503, "STORE_UNAVAILABLE", errors.ServerFailure),
    ],
)
def test_answers_map_to_one_error_each(status: int, code: str, kind: type[Exception]) -> None:
    content = json.dumps({"error": {"code": code, "message": "said the server"}}).encode()
    with pytest.raises(kind) as caught:
        raise_for_answer("POST", "http://x/claim", status, content)
    error = caught.value
    assert isinstance(error, errors.RequestFailed)
    assert (error.status, error.code, error.method, error.url) == (
        status,
        code,
        "POST",
        "http://x/claim",
    )
    assert "said the server" in str(error)
    # The classes the runner decides on: retry (transient) or not (refused).
    assert isinstance(error, errors.TransientError) == (status >= 500)
    assert isinstance(error, errors.Refused) == (400 <= status < 500)


def test_a_2xx_answer_raises_nothing_and_odd_bodies_still_map() -> None:
    raise_for_answer("GET", "u", 204, b"")
    with pytest.raises(errors.ServerFailure, match="bad gateway"):
        raise_for_answer("GET", "u", 502, b"bad gateway")
    with pytest.raises(errors.ClientError):
        raise_for_answer("GET", "u", 418, b"\xff not json")


def test_an_html_page_is_named_by_its_content_type_never_pasted() -> None:
    page = b"<!DOCTYPE html><html><head><title>Not Found</title></head><body>" + b"x" * 500
    with pytest.raises(errors.NotFound) as caught:
        raise_for_answer("GET", "http://x/v1/stream/w", 404, page, "text/html; charset=utf-8")
    text = str(caught.value)
    assert "text/html" in text
    assert "http://x/v1/stream/w" in text
    assert "<" not in text
    assert "\n" not in text


def test_every_runtime_error_is_a_pullwake_error() -> None:
    from pullwake.errors import PullwakeError

    for name in errors.__dict__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, PullwakeError), name


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ReadError("connection reset"),
    ],
)
async def test_network_failures_become_server_unreachable(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    async with Client("http://127.0.0.1:1", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(errors.ServerUnreachable) as caught:
            await client.claim("s", "w")
    assert isinstance(caught.value, errors.TransientError)
    assert caught.value.__cause__ is failure


async def test_claim_parses_the_grant_and_sends_the_worker() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "wake_id": "w1",
                "generation": 3,
                "token": "t",
                "streams": [
                    {
                        "path": "a",
                        "link_type": "glob",
                        "acked_offset": "1",
                        "tail_offset": "5",
                        "has_pending": True,
                    }
                ],
                "lease_ttl_ms": 2000,
            },
        )

    async with Client(
        "http://h/", token="secret", transport=httpx.MockTransport(handler)
    ) as client:
        grant = await client.claim("sub/1", "runner-a")
    assert grant.subscription_id == "sub/1"
    assert (grant.wake_id, grant.generation, grant.token, grant.lease_ttl_ms) == (
        "w1",
        3,
        "t",
        2000,
    )
    assert [(s.path, s.acked_offset, s.tail_offset, s.has_pending) for s in grant.streams] == [
        ("a", "1", "5", True)
    ]
    (request,) = seen
    assert request.url.raw_path == b"/v1/stream/__ds/subscriptions/sub%2F1/claim"
    assert json.loads(request.content) == {"worker": "runner-a"}
    assert request.headers["authorization"] == "Bearer secret"


async def test_a_claim_answer_without_a_token_is_a_protocol_violation() -> None:
    transport = answering(200, {"wake_id": "w", "generation": 1, "streams": []})
    async with Client("http://h", transport=transport) as client:
        with pytest.raises(errors.ProtocolViolation, match="token"):
            await client.claim("s", "w")


async def test_ack_carries_the_claim_token_and_the_runner_token_separately() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/release"):
            return httpx.Response(204)
        return httpx.Response(200, json={"ok": True, "next_wake": True})

    grant = ClaimGrant("s", "w1", 2, "claim-token", (), 1000)
    async with Client("http://h", token="runner", transport=httpx.MockTransport(handler)) as c:
        assert await c.ack(grant, [("a", "7")], done=True) is True
        await c.release(grant)
    ack, release = seen
    for request in (ack, release):
        assert request.headers["authorization"] == "Bearer claim-token"
        assert request.headers["pullwake-authorization"] == "Bearer runner"
    assert json.loads(ack.content) == {
        "wake_id": "w1",
        "generation": 2,
        "acks": [{"stream": "a", "offset": "7"}],
        "done": True,
    }
    assert json.loads(release.content) == {"wake_id": "w1", "generation": 2}


async def test_read_decodes_json_and_keeps_other_bodies_as_bytes() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/j"):
            return httpx.Response(
                200,
                json=[{"a": 1}, 2],
                headers={"Stream-Next-Offset": "9", "Stream-Up-To-Date": "true"},
            )
        return httpx.Response(
            200,
            content=b"raw",
            headers={"Stream-Next-Offset": "4", "Content-Type": "application/octet-stream"},
        )

    async with Client("http://h", transport=httpx.MockTransport(handler)) as client:
        json_chunk = await client.read("j", "-1")
        raw_chunk = await client.read("b", "-1")
    assert (json_chunk.messages, json_chunk.next_offset, json_chunk.up_to_date) == (
        ({"a": 1}, 2),
        "9",
        True,
    )
    assert (raw_chunk.messages, raw_chunk.next_offset, raw_chunk.up_to_date) == (
        (b"raw",),
        "4",
        False,
    )


async def test_a_read_without_next_offset_fails_closed() -> None:
    async with Client("http://h", transport=answering(200, [1])) as client:
        with pytest.raises(errors.ProtocolViolation, match="Stream-Next-Offset"):
            await client.read("s", "-1")


async def test_register_reads_the_saved_offset_and_404_means_no_registry() -> None:
    row = {"id": "r", "wake_stream": "wake/r", "wake_stream_offset": "0042"}
    async with Client("http://h", transport=answering(200, row)) as client:
        record = await client.register("r", wake_stream="wake/r")
    assert (record.id, record.wake_stream, record.wake_stream_offset) == ("r", "wake/r", "0042")
    async with Client("http://h", transport=answering(404)) as client:
        with pytest.raises(errors.NotFound):
            await client.register("r")


async def test_the_wake_stream_yields_data_and_control_and_skips_keepalives() -> None:
    body = (
        b": keepalive\n\n"
        b'event: data\ndata:[{"type":"wake",\ndata:"subscription_id":"s"}]\n\n'
        b'event: control\ndata:{"streamNextOffset":"7","streamCursor":"c","upToDate":true}\n\n'
        b": keepalive\n\n"
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})

    async with Client("http://h", token="t", transport=httpx.MockTransport(handler)) as client:
        connection = await client.open_wake_stream("wake/r", "0005")
        events = [event async for event in connection.events()]
        await connection.aclose()
        await connection.aclose()
    assert events == [
        DataEvent(({"type": "wake", "subscription_id": "s"},)),
        ControlEvent("7", "c", True),
    ]
    (request,) = seen
    assert dict(request.url.params) == {"offset": "0005", "live": "sse"}
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["authorization"] == "Bearer t"
    assert connection.closed


@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (401, {}, errors.Rejected),
        (404, {}, errors.NotFound),
        (400, {}, errors.ClientError),
        (503, {}, errors.ServerFailure),
        (200, {"Content-Type": "application/json"}, errors.ProtocolViolation),
        (
            200,
            {"Content-Type": "text/event-stream", "stream-sse-data-encoding": "base64"},
            errors.ProtocolViolation,
        ),
    ],
)
async def test_opening_the_wake_stream_refuses_anything_but_an_event_stream(
    status: int, headers: dict[str, str], kind: type[Exception]
) -> None:
    answered: list[httpx.Response] = []

    async def body():
        yield b'{"error": {"code": "X", "message": "no"}}'

    def handler(request: httpx.Request) -> httpx.Response:
        answered.append(httpx.Response(status, headers=headers, content=body()))
        return answered[-1]

    async with Client("http://h", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(kind):
            await client.open_wake_stream("wake/r", "-1")
        (response,) = answered
        # The refused response was closed, not leaked.
        assert response.is_closed


async def test_a_broken_wake_stream_raises_server_unreachable() -> None:
    async def body():
        yield b'event: control\ndata:{"streamNextOffset":"1","upToDate":true}\n\n'
        raise httpx.ReadError("connection reset by peer")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body())

    async with Client("http://h", transport=httpx.MockTransport(handler)) as client:
        connection = await client.open_wake_stream("w", "-1")
        seen: list[object] = []

        async def read_all() -> None:
            async for event in connection.events():
                seen.append(event)

        with pytest.raises(errors.ServerUnreachable):
            await read_all()
        await connection.aclose()
    assert seen == [ControlEvent("1", None, True)]


def test_client_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Client([])
    with pytest.raises(ValueError, match="http"):
        Client("127.0.0.1:4437")


async def test_rotate_cycles_through_the_urls_and_read_timeout_is_the_sse_bound() -> None:
    client = Client(["http://a/", "http://b"], timeouts=Timeouts(read=1.5))
    try:
        assert client.base_url == "http://a"
        assert client.rotate() == "http://b"
        assert client.rotate() == "http://a"
        assert client._sse_timeout.read == 1.5
    finally:
        await client.aclose()
    assert client.closed


def test_a_failure_without_a_message_is_still_described() -> None:
    # anyio.fail_after raises a bare TimeoutError: the log must not end in "TimeoutError: ".
    assert describe_failure(TimeoutError()) == "TimeoutError (no answer in time)"
    assert describe_failure(TimeoutError("  ")) == "TimeoutError (no answer in time)"
    assert describe_failure(OSError()) == "OSError (no details given)"
    assert describe_failure(TimeoutError("no answer within 5 s")) == (
        "TimeoutError: no answer within 5 s"
    )
    assert describe_failure(ValueError("bad offset")) == "ValueError: bad offset"
    unreachable = errors.ServerUnreachable(
        "GET http://h/x timed out", method="GET", url="http://h/x"
    )
    assert describe_failure(unreachable) == "GET http://h/x timed out"


def test_the_default_read_timeout_is_three_server_keepalives() -> None:
    from pullwake.server.config import ServerConfig

    # Silence on the wake stream is noticed within three of the server's default keepalives.
    assert Timeouts().read == 3 * ServerConfig().keepalive == 9.0


def test_offsets_compare_with_the_start_sentinel_first() -> None:
    assert offset_after("0001", "-1")
    assert not offset_after("-1", "0001")
    assert offset_after("0010", "0009")
    assert not offset_after("0009", "0009")
