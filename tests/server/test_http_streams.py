"""Durable Streams over HTTP (spec §5-§7), in process, on SQLite and PostgreSQL, asyncio and trio.

SSE is tested against a real server in ``test_sse.py``; everything else runs through
``httpx.ASGITransport`` here.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from pullwake.server.config import ServerConfig
from pullwake.server.store import Store
from pullwake.server.store.transactional import TransactionalStore
from tests.fixtures.servers import app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS

pytestmark = pytest.mark.anyio


async def test_put_creates_then_confirms_then_conflicts(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        first = await client.put(f"{STREAMS}/events/a", headers=JSON)
        assert first.status_code == 201
        assert first.headers["location"] == "http://testserver/v1/stream/events/a"
        assert first.headers["content-type"] == "application/json"
        tail = first.headers["stream-next-offset"]
        assert tail not in ("-1", "now")

        again = await client.put(
            f"{STREAMS}/events/a", headers={"content-type": "Application/JSON; charset=utf-8"}
        )
        assert again.status_code == 200
        assert again.headers["stream-next-offset"] == tail
        assert "location" not in again.headers

        expect.error(
            await client.put(f"{STREAMS}/events/a", headers={"content-type": "text/plain"}), 409
        )


async def test_non_latin_paths_get_an_ascii_location(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        response = await client.put(f"{STREAMS}/caf\u00e9/\U000464d1", headers=JSON)
        assert response.status_code == 201
        assert response.headers["location"] == (
            "http://testserver/v1/stream/caf%C3%A9/%F1%86%93%91"
        )
        assert (await client.get(f"{STREAMS}/caf%C3%A9/%F1%86%93%91")).json() == []


async def test_put_without_content_type_is_octet_stream(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        response = await client.put(f"{STREAMS}/blob")
        assert response.status_code == 201
        head = await client.head(f"{STREAMS}/blob")
        assert head.headers["content-type"] == "application/octet-stream"


async def test_put_with_initial_json_body(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        response = await client.put(f"{STREAMS}/seeded", headers=JSON, content='[{"a":1},2]')
        assert response.status_code == 201
        assert await expect.read_json(client, "seeded") == [{"a": 1}, 2]
        empty = await client.put(f"{STREAMS}/empty", headers=JSON, content="[]")
        assert empty.status_code == 201
        assert await expect.read_json(client, "empty") == []


async def test_json_append_flattens_one_level(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "j")
        for body in ['{"event":"created"}', '[{"event":"a"},{"event":"b"}]', "[[1,2],[3,4]]"]:
            response = await client.post(f"{STREAMS}/j", headers=JSON, content=body)
            assert response.status_code == 204
        response = await client.post(f"{STREAMS}/j", headers=JSON, content="[[[1,2,3]]]")
        assert response.status_code == 204
        assert await expect.read_json(client, "j") == [
            {"event": "created"},
            {"event": "a"},
            {"event": "b"},
            [1, 2],
            [3, 4],
            [[1, 2, 3]],
        ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("[]", "EMPTY_ARRAY"),
        ("{not json", "INVALID_JSON"),
        ('{"x": NaN}', "INVALID_JSON"),
        (b"\xff\xfe", "INVALID_JSON"),
        ("", "EMPTY_BODY"),
    ],
)
async def test_json_append_rejects_bad_bodies(
    opened_store: Store, body: str | bytes, code: str
) -> None:
    async with app_client(opened_store) as client:
        tail = await expect.json_stream(client, "j")
        response = await client.post(f"{STREAMS}/j", headers=JSON, content=body)
        expect.error(response, 400, code)
        assert (await client.head(f"{STREAMS}/j")).headers["stream-next-offset"] == tail


async def test_append_errors(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "j")
        expect.error(
            await client.post(f"{STREAMS}/j", headers={"content-type": "text/plain"}, content="x"),
            409,
            "CONTENT_TYPE_MISMATCH",
        )
        expect.error(
            await client.post(f"{STREAMS}/j", content=b"x", headers={"content-type": ""}),
            409,
        )
        no_type = await client.post(f"{STREAMS}/j", content=b"{}")
        assert "content-type" not in no_type.request.headers
        expect.error(no_type, 400, "MISSING_CONTENT_TYPE")
        expect.error(await client.post(f"{STREAMS}/nope", headers=JSON, content="1"), 404)


async def test_catch_up_reads(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        start = await expect.json_stream(client, "r")
        empty = await client.get(f"{STREAMS}/r", params={"offset": "-1"})
        assert empty.status_code == 200
        assert empty.json() == []
        assert empty.headers["stream-up-to-date"] == "true"
        assert empty.headers["stream-next-offset"] == start

        middle = await expect.append_json(client, "r", 1, 2)
        tail = await expect.append_json(client, "r", 3)
        assert start < middle < tail

        everything = await client.get(f"{STREAMS}/r")
        assert everything.json() == [1, 2, 3]
        assert everything.headers["stream-next-offset"] == tail
        assert everything.headers["cache-control"] == "no-store"
        assert everything.headers["etag"]

        rest = await client.get(f"{STREAMS}/r", params={"offset": middle})
        assert rest.json() == [3]

        at_tail = await client.get(f"{STREAMS}/r", params={"offset": tail})
        assert at_tail.status_code == 200
        assert at_tail.json() == []
        assert at_tail.headers["stream-up-to-date"] == "true"
        assert at_tail.headers["stream-next-offset"] == tail

        now = await client.get(f"{STREAMS}/r", params={"offset": "now"})
        assert now.status_code == 200
        assert now.json() == []
        assert now.headers["stream-next-offset"] == tail
        assert now.headers["stream-up-to-date"] == "true"
        assert now.headers["cache-control"] == "no-store"

        cached = await client.get(
            f"{STREAMS}/r",
            params={"offset": middle},
            headers={"if-none-match": rest.headers["etag"]},
        )
        assert cached.status_code == 304


async def test_read_in_chunks_when_over_the_read_limit(opened_store: Store) -> None:
    config = ServerConfig(max_read_bytes=10)
    async with app_client(opened_store, config) as client:
        await expect.json_stream(client, "big")
        await expect.append_json(client, "big", "aaaaaaaa", "bbbbbbbb", "cccccccc")
        seen: list[str] = []
        offset = "-1"
        for _ in range(10):
            response = await client.get(f"{STREAMS}/big", params={"offset": offset})
            seen.extend(response.json())
            offset = response.headers["stream-next-offset"]
            if response.headers.get("stream-up-to-date") == "true":
                break
            assert response.json(), "a partial read returns at least one message"
        assert seen == ["aaaaaaaa", "bbbbbbbb", "cccccccc"]


async def test_text_and_binary_streams_keep_bytes(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        assert (
            await client.put(f"{STREAMS}/t", headers={"content-type": "text/plain"})
        ).status_code == 201
        for chunk in ("hello ", "world\n"):
            response = await client.post(
                f"{STREAMS}/t", headers={"content-type": "text/plain"}, content=chunk
            )
            assert response.status_code == 204
        read = await client.get(f"{STREAMS}/t")
        assert read.text == "hello world\n"
        assert read.headers["content-type"].startswith("text/plain")

        binary = {"content-type": "application/octet-stream"}
        assert (await client.put(f"{STREAMS}/b", headers=binary)).status_code == 201
        payload = bytes(range(256))
        assert (
            await client.post(f"{STREAMS}/b", headers=binary, content=payload)
        ).status_code == 204
        assert (await client.get(f"{STREAMS}/b")).content == payload


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"offset": "garbage"}, 400),
        ({"offset": ""}, 400),
        ({"offset": "../../etc"}, 400),
        ({"offset": "-1", "live": "carrier-pigeon"}, 400),
        ({"live": "long-poll"}, 400),
        ({"live": "sse"}, 400),
    ],
)
async def test_bad_read_parameters(opened_store: Store, query: dict[str, str], status: int) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "q")
        expect.error(await client.get(f"{STREAMS}/q", params=query), status)


async def test_offset_past_the_tail_reads_from_the_tail(opened_store: Store) -> None:
    config = ServerConfig(long_poll_timeout=0.1)
    async with app_client(opened_store, config) as client:
        await expect.json_stream(client, "p")
        tail = await expect.append_json(client, "p", 1)
        beyond = "9" * len(tail)
        read = await client.get(f"{STREAMS}/p", params={"offset": beyond})
        assert read.status_code == 200
        assert read.json() == []
        assert read.headers["stream-next-offset"] == tail
        assert read.headers["stream-up-to-date"] == "true"
        poll = await client.get(f"{STREAMS}/p", params={"offset": beyond, "live": "long-poll"})
        assert poll.status_code == 204
        assert poll.headers["stream-next-offset"] == tail


async def test_repeated_offset_is_rejected(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "q")
        expect.error(await client.get(f"{STREAMS}/q?offset=-1&offset=now"), 400)


async def test_long_poll_answers_data_or_204(opened_store: Store) -> None:
    config = ServerConfig(long_poll_timeout=0.2)
    async with app_client(opened_store, config) as client:
        start = await expect.json_stream(client, "lp")
        tail = await expect.append_json(client, "lp", "x")
        ready = await client.get(f"{STREAMS}/lp", params={"offset": start, "live": "long-poll"})
        assert ready.status_code == 200
        assert ready.json() == ["x"]
        assert ready.headers["stream-cursor"].isdigit()

        idle = await client.get(f"{STREAMS}/lp", params={"offset": tail, "live": "long-poll"})
        assert idle.status_code == 204
        assert idle.headers["stream-next-offset"] == tail
        assert idle.headers["stream-up-to-date"] == "true"
        assert idle.headers["stream-cursor"].isdigit()

        echoed = await client.get(
            f"{STREAMS}/lp",
            params={"offset": tail, "live": "long-poll", "cursor": idle.headers["stream-cursor"]},
        )
        assert int(echoed.headers["stream-cursor"]) > int(idle.headers["stream-cursor"])


async def test_long_poll_at_now_waits_for_the_next_append(opened_store: Store) -> None:
    config = ServerConfig(long_poll_timeout=30)
    async with app_client(opened_store, config) as client:
        await expect.json_stream(client, "lp")
        await expect.append_json(client, "lp", "old")
        answers: list[httpx.Response] = []

        async def poll() -> None:
            answers.append(
                await client.get(f"{STREAMS}/lp", params={"offset": "now", "live": "long-poll"})
            )

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                # Append only once the poll waits in the store: "now" is the tail when the
                # server takes the request, so an earlier append would be before it.
                assert isinstance(opened_store, TransactionalStore)
                while opened_store.statistics()["waiters"] < 1:  # noqa: ASYNC110  (bounded)
                    await anyio.sleep(0.005)
                await expect.append_json(client, "lp", "new")
        assert answers[0].status_code == 200
        assert answers[0].json() == ["new"]


async def test_head_and_delete(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await expect.json_stream(client, "h")
        tail = await expect.append_json(client, "h", 1)
        head = await client.head(f"{STREAMS}/h")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["stream-next-offset"] == tail
        assert head.headers["cache-control"] == "no-store"

        assert (await client.delete(f"{STREAMS}/h")).status_code == 204
        expect.error(await client.head(f"{STREAMS}/h"), 404)
        expect.error(await client.get(f"{STREAMS}/h"), 404)
        expect.error(await client.delete(f"{STREAMS}/h"), 404)


@pytest.mark.parametrize(
    "path",
    [
        "a//b",
        "a/%2E%2E/b",
        "a/%2e/b",
        "%2E%2E",
        "a/",
        "/a",
        "__ds",
        "a/%00/b",
        "a%0Ab",
        "x" * 1100,
    ],
)
async def test_bad_paths_are_400_or_404(opened_store: Store, path: str) -> None:
    async with app_client(opened_store) as client:
        for method in ("PUT", "POST", "GET", "HEAD", "DELETE"):
            response = await client.request(method, f"{STREAMS}/{path}", headers=JSON, content="1")
            assert response.status_code in (400, 404), (method, path, response.text)
            expect.error(response, response.status_code)


async def test_body_limit_is_413(opened_store: Store) -> None:
    async with app_client(opened_store, ServerConfig(max_body_bytes=100)) as client:
        await expect.json_stream(client, "small")
        big = json.dumps("x" * 200)
        expect.error(await client.post(f"{STREAMS}/small", headers=JSON, content=big), 413)


@pytest.mark.parametrize("header", ["Stream-Seq", "Producer-Id", "Producer-Epoch"])
async def test_writer_headers_on_a_create_are_400(opened_store: Store, header: str) -> None:
    async with app_client(opened_store) as client:
        response = await client.put(f"{STREAMS}/f", headers={**JSON, header: "1"})
        expect.error(response, 400, "UNSUPPORTED_ON_CREATE")
        expect.error(await client.get(f"{STREAMS}/f"), 404)


async def test_unknown_routes_and_methods_are_json(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        expect.error(await client.get("/nowhere"), 404, "NOT_FOUND")
        patch = await client.patch(f"{STREAMS}/x")
        expect.error(patch, 405, "METHOD_NOT_ALLOWED")
        assert "GET" in patch.headers["allow"]
        assert (await client.get("/healthz")).json() == {"status": "ok"}


class ExplodingStore:
    """A store whose every call fails the way a bug would (not a ``StoreError``)."""

    def __getattr__(self, name: str) -> Any:
        async def explode(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"boom in {name}")

        return explode


async def test_unexpected_errors_are_logged_json_500s(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with app_client(ExplodingStore()) as client:  # type: ignore[arg-type]
        response = await client.get(f"{STREAMS}/x")
        expect.error(response, 500, "INTERNAL")
        metrics = (await client.get("/metrics")).text
    assert "pullwake_unexpected_errors_total 1.0" in metrics
    assert any("boom in stream" in record.exc_text for record in caplog.records if record.exc_text)
