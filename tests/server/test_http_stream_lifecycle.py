"""The stream lifecycle headers over HTTP, in process, on SQLite and PostgreSQL, asyncio and
trio: ``Stream-TTL`` / ``Stream-Expires-At`` (validation, expiry, sliding renewal, ``HEAD``),
``Stream-Closed`` (create, close, append after close, EOF in every read mode) and forks
(``Stream-Forked-From`` / ``Stream-Fork-Offset`` / ``Stream-Fork-Sub-Offset``, soft deletion).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import pytest

from pullwake.server.config import ServerConfig
from pullwake.server.store import Store
from tests.fixtures.servers import FakeClock, app_client
from tests.server import expect
from tests.server.expect import JSON, STREAMS

pytestmark = pytest.mark.anyio

TEXT = {"content-type": "text/plain"}
ZERO = "0000000000000000_0000000000000000"  # the reference server's start offset


def rfc3339(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()


# -- TTL and expiry -----------------------------------------------------------------------------


async def test_ttl_and_expiry_headers_are_validated(opened_store: Store) -> None:
    clock = FakeClock()
    async with app_client(opened_store, clock=clock) as client:
        later = rfc3339(clock.now_ms + 3_600_000)
        bad = [
            {"stream-ttl": value}
            for value in ("abc", "-1", "00060", "+60", "60.5", "1e3", "", "9" * 30)
        ]
        bad += [
            {"stream-expires-at": value}
            for value in ("not-a-timestamp", "2030-01-01", "2030-01-01T00:00:00")
        ]
        bad.append({"stream-ttl": "60", "stream-expires-at": later})
        bad.append({"stream-fork-sub-offset": "0"})  # only with Stream-Forked-From
        for n, headers in enumerate(bad):
            expect.error(await client.put(f"{STREAMS}/bad{n}", headers={**TEXT, **headers}), 400)
            expect.error(await client.head(f"{STREAMS}/bad{n}"), 404)
        for n, value in enumerate(
            (later, later.replace("+00:00", "Z"), "2030-01-01T02:00:00+02:00")
        ):
            response = await client.put(
                f"{STREAMS}/ok{n}", headers={**TEXT, "stream-expires-at": value}
            )
            assert response.status_code == 201
        head = await client.head(f"{STREAMS}/ok2")
        assert head.headers["stream-expires-at"] == "2030-01-01T00:00:00.000Z"
        assert "stream-ttl" not in head.headers


async def test_ttl_is_reported_and_compared_on_a_repeated_put(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        put = await client.put(f"{STREAMS}/t", headers={**TEXT, "stream-ttl": "3600"})
        assert put.status_code == 201
        head = await client.head(f"{STREAMS}/t")
        assert head.headers["stream-ttl"] == "3600"
        assert "stream-expires-at" not in head.headers
        again = await client.put(f"{STREAMS}/t", headers={**TEXT, "stream-ttl": "3600"})
        assert again.status_code == 200
        for other in ({"stream-ttl": "7200"}, {}):
            expect.error(await client.put(f"{STREAMS}/t", headers={**TEXT, **other}), 409)
        plain = await client.head(f"{STREAMS}/plain-missing")
        assert plain.status_code == 404


async def test_reads_and_writes_extend_a_sliding_ttl_and_head_does_not(
    opened_store: Store,
) -> None:
    clock = FakeClock()
    async with app_client(opened_store, clock=clock) as client:
        for name in ("read", "now", "write", "close", "head"):
            put = await client.put(f"{STREAMS}/{name}", headers={**TEXT, "stream-ttl": "2"})
            assert put.status_code == 201
        clock.advance(1_500)
        assert (await client.get(f"{STREAMS}/read")).status_code == 200
        assert (await client.get(f"{STREAMS}/now", params={"offset": "now"})).status_code == 200
        write = await client.post(f"{STREAMS}/write", headers=TEXT, content="x")
        assert write.status_code == 204
        close = await client.post(f"{STREAMS}/close", headers={"stream-closed": "true"})
        assert close.status_code == 204
        assert (await client.head(f"{STREAMS}/head")).status_code == 200
        clock.advance(1_500)  # 3 s after creation, 1.5 s after the renewal
        for name in ("read", "now", "write", "close"):
            assert (await client.head(f"{STREAMS}/{name}")).status_code == 200, name
        for method in ("HEAD", "GET", "DELETE"):
            expect.error(await client.request(method, f"{STREAMS}/head"), 404)
        expect.error(await client.post(f"{STREAMS}/head", headers=TEXT, content="x"), 404)
        clock.advance(2_000)
        expect.error(await client.get(f"{STREAMS}/read"), 404)
        again = await client.put(f"{STREAMS}/read", headers=JSON, content='["new"]')
        assert again.status_code == 201
        assert await expect.read_json(client, "read") == ["new"]


async def test_expires_at_is_not_extended(opened_store: Store) -> None:
    clock = FakeClock()
    async with app_client(opened_store, clock=clock) as client:
        expires = rfc3339(clock.now_ms + 4_000)
        put = await client.put(f"{STREAMS}/e", headers={**TEXT, "stream-expires-at": expires})
        assert put.status_code == 201
        clock.advance(2_000)
        assert (await client.get(f"{STREAMS}/e")).status_code == 200
        assert (await client.post(f"{STREAMS}/e", headers=TEXT, content="x")).status_code == 204
        clock.advance(2_000)
        expect.error(await client.get(f"{STREAMS}/e"), 404)


# -- closure ------------------------------------------------------------------------------------


async def test_create_closed_and_close_by_append(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        put = await client.put(
            f"{STREAMS}/c", headers={**TEXT, "stream-closed": "TRUE"}, content="all"
        )
        assert put.status_code == 201
        assert put.headers["stream-closed"] == "true"
        read = await client.get(f"{STREAMS}/c")
        assert read.text == "all"
        assert read.headers["stream-closed"] == "true"

        ignored = await client.put(f"{STREAMS}/o", headers={**TEXT, "stream-closed": "yes"})
        assert "stream-closed" not in ignored.headers
        await client.post(f"{STREAMS}/o", headers=TEXT, content="first")
        # Close-only: an empty body closes, whatever Content-Type says.
        close = await client.post(f"{STREAMS}/o", headers={**JSON, "stream-closed": "true"})
        assert close.status_code == 204
        assert close.headers["stream-closed"] == "true"
        tail = close.headers["stream-next-offset"]
        again = await client.post(f"{STREAMS}/o", headers={"stream-closed": "true"})
        assert again.status_code == 204
        assert again.headers["stream-next-offset"] == tail
        for headers in (TEXT, {**TEXT, "stream-closed": "true"}):
            refused = await client.post(f"{STREAMS}/o", headers=headers, content="more")
            expect.error(refused, 409, "STREAM_CLOSED")
            assert refused.headers["stream-closed"] == "true"
            assert refused.headers["stream-next-offset"] == tail
        head = await client.head(f"{STREAMS}/o")
        assert head.headers["stream-closed"] == "true"
        expect.error(await client.post(f"{STREAMS}/o", headers=TEXT), 400)  # empty, no close
        expect.error(await client.post(f"{STREAMS}/gone", headers={"stream-closed": "true"}), 404)


async def test_readers_see_eof_only_at_the_end_of_a_closed_stream(opened_store: Store) -> None:
    config = ServerConfig(max_read_bytes=5, long_poll_timeout=60)
    async with app_client(opened_store, config) as client:
        await client.put(f"{STREAMS}/r", headers=TEXT, content="first")
        await client.post(f"{STREAMS}/r", headers=TEXT, content="second")
        open_head = await client.head(f"{STREAMS}/r")
        assert "stream-closed" not in open_head.headers
        close = await client.post(f"{STREAMS}/r", headers={"stream-closed": "true"})
        tail = close.headers["stream-next-offset"]
        partial = await client.get(f"{STREAMS}/r")
        assert partial.text == "first"
        assert "stream-closed" not in partial.headers
        rest = await client.get(
            f"{STREAMS}/r", params={"offset": partial.headers["stream-next-offset"]}
        )
        assert rest.text == "second"
        assert rest.headers["stream-closed"] == "true"
        for offset in (tail, "now"):
            eof = await client.get(f"{STREAMS}/r", params={"offset": offset})
            assert (eof.status_code, eof.text) == (200, "")
            assert eof.headers["stream-closed"] == "true"
            assert eof.headers["stream-up-to-date"] == "true"
        with anyio.fail_after(10):  # the long-poll timeout is 60 s: it must not wait
            poll = await client.get(f"{STREAMS}/r", params={"offset": tail, "live": "long-poll"})
            sse = await client.get(f"{STREAMS}/r", params={"offset": tail, "live": "sse"})
        assert poll.status_code == 204
        assert poll.headers["stream-closed"] == "true"
        assert poll.headers["stream-up-to-date"] == "true"
        assert "stream-cursor" not in poll.headers
        controls = [
            json.loads(line[len("data:") :])
            for line in sse.text.splitlines()
            if line.startswith("data:{")
        ]
        assert controls == [{"streamNextOffset": tail, "upToDate": True, "streamClosed": True}]


# -- forks --------------------------------------------------------------------------------------


async def test_fork_headers(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        first = await client.put(f"{STREAMS}/src", headers=TEXT, content="hello")
        await client.post(f"{STREAMS}/src", headers=TEXT, content=" world")
        fork = await client.put(
            f"{STREAMS}/f",
            headers={
                "stream-forked-from": f"{STREAMS}/src",
                "stream-fork-offset": first.headers["stream-next-offset"],
            },
            content="!",
        )
        assert fork.status_code == 201
        assert fork.headers["content-type"] == "text/plain"  # inherited
        assert not [name for name in fork.headers if name.startswith("stream-fork")]
        assert (await client.get(f"{STREAMS}/f")).text == "hello!"
        cut = await client.put(
            f"{STREAMS}/cut",
            headers={
                **TEXT,
                "stream-forked-from": f"{STREAMS}/src",
                "stream-fork-offset": ZERO,
                "stream-fork-sub-offset": "3",
            },
        )
        assert cut.status_code == 201
        assert (await client.get(f"{STREAMS}/cut")).text == "hel"
        tail = await client.get(
            f"{STREAMS}/cut", params={"offset": cut.headers["stream-next-offset"]}
        )
        assert (tail.text, tail.headers["stream-up-to-date"]) == ("", "true")

        source = {"stream-forked-from": f"{STREAMS}/src"}
        refused = [
            ({"stream-forked-from": f"{STREAMS}/none"}, 404),
            ({**source, "stream-fork-offset": "9999999999999999_9999999999999999"}, 400),
            ({**source, "stream-fork-offset": f"{10**19:020d}"}, 400),
            ({**source, "stream-fork-sub-offset": "1"}, 400),  # past the tail
            ({**source, "stream-fork-offset": ZERO, "stream-fork-sub-offset": "6"}, 400),
            ({**source, **JSON}, 409),
            ({"stream-forked-from": "/elsewhere/src"}, 400),
        ]
        refused += [
            ({**source, "stream-fork-offset": ZERO, "stream-fork-sub-offset": bad}, 400)
            for bad in ("-1", "abc", "1.5", "05", "+1")
        ]
        for headers, status in refused:
            expect.error(await client.put(f"{STREAMS}/refused", headers=headers), status)
        expect.error(await client.head(f"{STREAMS}/refused"), 404)
        # The same fork again is 200 (no offset: any; it means "the source's tail"); another
        # fork offset is 409.
        assert (await client.put(f"{STREAMS}/f", headers=source)).status_code == 200
        other = {**source, "stream-fork-offset": ZERO}
        expect.error(await client.put(f"{STREAMS}/f", headers=other), 409)
        again = await client.put(
            f"{STREAMS}/cut",
            headers={**source, "stream-fork-offset": ZERO, "stream-fork-sub-offset": "3"},
        )
        assert again.status_code == 200


async def test_deleting_a_forked_source_is_soft(opened_store: Store) -> None:
    async with app_client(opened_store) as client:
        await client.put(f"{STREAMS}/src", headers=TEXT, content="kept")
        await client.put(f"{STREAMS}/f", headers={"stream-forked-from": f"{STREAMS}/src"})
        assert (await client.delete(f"{STREAMS}/src")).status_code == 204
        for method in ("HEAD", "GET", "DELETE"):
            expect.error(await client.request(method, f"{STREAMS}/src"), 410)
        expect.error(await client.post(f"{STREAMS}/src", headers=TEXT, content="x"), 410)
        expect.error(await client.put(f"{STREAMS}/src", headers=TEXT), 409)
        refork = await client.put(f"{STREAMS}/g", headers={"stream-forked-from": f"{STREAMS}/src"})
        expect.error(refork, 409, "SOURCE_DELETED")
        with_body = await client.put(
            f"{STREAMS}/g", headers={"stream-forked-from": f"{STREAMS}/src"}, content="x"
        )
        expect.error(with_body, 409, "SOURCE_DELETED")
        assert (await client.get(f"{STREAMS}/f")).text == "kept"
        assert (await client.delete(f"{STREAMS}/f")).status_code == 204
        expect.error(await client.head(f"{STREAMS}/src"), 404)
        assert (await client.put(f"{STREAMS}/src", headers=TEXT)).status_code == 201
