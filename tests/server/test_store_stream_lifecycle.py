"""Stream lifecycle in the store, on SQLite and PostgreSQL, asyncio and trio: closure, TTL and
expiry, forks and soft deletion. Every scenario closes the store midway and reopens it on the
same database, so what it checks after the reopen was persisted, not held in memory.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from pullwake.server.errors import BadRequest, Conflict, Gone, NotFound, StoreError
from pullwake.server.store import Store, open_store
from pullwake.server.store.base import Fork, StreamOptions
from pullwake.server.store.offsets import ZERO_OFFSET
from pullwake.server.store.schema import SCHEMA_VERSION_DDL, migrations
from pullwake.server.store.sqlite import split_statements
from pullwake.server.store.transactional import TransactionalStore
from tests.server.stores import (
    T0,
    counting,
    make_subscription,
    store_url_fixture,  # noqa: F401
    wait_until_parked,
)

pytestmark = pytest.mark.anyio

TEXT = "text/plain"
JSON = "application/json"
BIG = 1_000_000


class Reopener:
    """The store under test, closed and opened again on the same database on demand."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: Store | None = None

    async def open(self) -> Store:
        if self.store is not None:
            await self.store.aclose()
        self.store = open_store(self.url)
        await self.store.open()
        return self.store


@pytest.fixture(name="stores")
async def stores_fixture(store_url: str) -> AsyncIterator[Reopener]:
    reopener = Reopener(store_url)
    yield reopener
    if reopener.store is not None:
        await reopener.store.aclose()


async def text(store: Store, path: str, offset: str = "-1", now_ms: int = T0) -> str:
    result = await store.read(path, offset, BIG, now_ms=now_ms)
    return b"".join(m.data for m in result.messages).decode()


def code_of(exc: pytest.ExceptionInfo[StoreError]) -> str:
    return exc.value.code


# -- closure ----------------------------------------------------------------------------------


async def test_closure_is_durable_and_refuses_appends(stores: Reopener) -> None:
    store = await stores.open()
    await store.create_stream("s", TEXT, T0, items=[b"a"])
    closed = await store.append("s", [b"b"], T0, content_type=TEXT, close=True)
    assert closed.closed
    store = await stores.open()

    meta = await store.stream("s", now_ms=T0)
    assert meta.closed
    assert meta.tail_offset == closed.next_offset
    with pytest.raises(Conflict) as exc:
        await store.append("s", [b"c"], T0, content_type=TEXT)
    assert code_of(exc) == "STREAM_CLOSED"
    assert exc.value.headers == {
        "stream-closed": "true",
        "stream-next-offset": closed.next_offset,
    }
    # Closed first: a wrong content type on a closed stream still says "closed".
    with pytest.raises(Conflict) as exc:
        await store.append("s", [b"c"], T0, content_type=JSON)
    assert code_of(exc) == "STREAM_CLOSED"
    with pytest.raises(Conflict) as exc:
        await store.append("s", [b"c"], T0, content_type=TEXT, close=True)
    assert code_of(exc) == "STREAM_CLOSED"
    again = await store.append("s", [], T0, close=True)  # close-only: idempotent
    assert (again.next_offset, again.closed) == (closed.next_offset, True)

    result = await store.read("s", "-1", BIG, now_ms=T0)
    assert b"".join(m.data for m in result.messages) == b"ab"
    assert result.up_to_date
    assert result.closed
    partial = await store.read("s", "-1", 1, now_ms=T0)
    assert not partial.up_to_date
    assert partial.closed


async def test_create_closed_and_idempotent_create_compares_closure(stores: Reopener) -> None:
    store = await stores.open()
    created, meta = await store.create_stream(
        "done", JSON, T0, items=[b"1", b"2"], options=StreamOptions(closed=True)
    )
    assert created
    assert meta.closed
    store = await stores.open()
    again, same = await store.create_stream("done", JSON, T0, options=StreamOptions(closed=True))
    assert not again
    assert same == meta
    with pytest.raises(Conflict):
        await store.create_stream("done", JSON, T0)  # open requested, closed stored
    await store.create_stream("open", JSON, T0)
    with pytest.raises(Conflict):
        await store.create_stream("open", JSON, T0, options=StreamOptions(closed=True))
    with pytest.raises(NotFound):
        await store.append("missing", [], T0, close=True)
    with pytest.raises(BadRequest):
        await store.append("open", [], T0)  # neither data nor a close


async def test_close_ends_a_wait_without_new_data(stores: Reopener) -> None:
    store = await stores.open()
    _, meta = await store.create_stream("s", TEXT, T0)
    changed: list[bool] = []

    async def wait() -> None:
        changed.append(await store.wait_for_change("s", meta.tail_offset, 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await wait_until_parked(store)
            await store.append("s", [], T0, close=True)
    assert changed == [True]
    # And a wait on a stream already closed returns at once.
    with anyio.fail_after(5):
        assert await store.wait_for_change("s", meta.tail_offset, 30)


# -- TTL and expiry -----------------------------------------------------------------------------


async def test_sliding_ttl_is_restarted_by_reads_and_writes_only(stores: Reopener) -> None:
    store = await stores.open()
    _, meta = await store.create_stream("s", TEXT, T0, options=StreamOptions(ttl_seconds=2))
    assert (meta.ttl_seconds, meta.expires_at_ms) == (2, None)
    store = await stores.open()
    # Looking (stream(), as HEAD does) does not restart it.
    assert (await store.stream("s", now_ms=T0 + 1_999)).ttl_seconds == 2
    with pytest.raises(NotFound):
        await store.stream("s", now_ms=T0 + 2_000)
    # A read that touches does; so does an append.
    await store.touch_stream("s", T0 + 1_500)
    await store.stream("s", now_ms=T0 + 3_400)
    await store.append("s", [b"x"], T0 + 3_000, content_type=TEXT)
    store = await stores.open()
    assert await text(store, "s", now_ms=T0 + 4_900) == "x"
    with pytest.raises(NotFound):
        await store.read("s", "-1", BIG, now_ms=T0 + 5_000)
    # An expired stream is gone for appends too, and its path is free again.
    with pytest.raises(NotFound):
        await store.append("s", [b"y"], T0 + 5_000, content_type=TEXT)
    created, fresh = await store.create_stream("s", JSON, T0 + 5_000)
    assert created
    assert fresh.ttl_seconds is None


async def test_absolute_expiry_never_moves(stores: Reopener) -> None:
    store = await stores.open()
    expires = T0 + 4_000
    await store.create_stream("s", TEXT, T0, options=StreamOptions(expires_at_ms=expires))
    await store.append("s", [b"x"], T0 + 3_000, content_type=TEXT)
    await store.touch_stream("s", T0 + 3_500)
    store = await stores.open()
    assert (await store.stream("s", now_ms=expires - 1)).expires_at_ms == expires
    with pytest.raises(NotFound):
        await store.stream("s", now_ms=expires)
    with pytest.raises(NotFound):
        await store.delete_stream("s", now_ms=expires)


async def test_expiry_configuration_is_validated_and_compared(stores: Reopener) -> None:
    store = await stores.open()
    with pytest.raises(BadRequest):
        await store.create_stream(
            "s", TEXT, T0, options=StreamOptions(ttl_seconds=1, expires_at_ms=T0 + 5)
        )
    await store.create_stream("s", TEXT, T0, options=StreamOptions(ttl_seconds=3600))
    store = await stores.open()
    again, _ = await store.create_stream("s", TEXT, T0, options=StreamOptions(ttl_seconds=3600))
    assert not again
    for other in (
        StreamOptions(ttl_seconds=7200),
        StreamOptions(),
        StreamOptions(expires_at_ms=T0),
    ):
        with pytest.raises(Conflict):
            await store.create_stream("s", TEXT, T0, options=other)


async def test_expired_stream_leaves_no_link_and_no_stuck_wake(stores: Reopener) -> None:
    store = await stores.open()
    await make_subscription(store, pattern="events/*")
    await store.create_stream("events/a", JSON, T0, options=StreamOptions(ttl_seconds=1))
    await store.create_stream("events/b", JSON, T0)
    appended = await store.append("events/a", [b"1"], T0, content_type=JSON)
    assert len(appended.wakes) == 1  # a wake is in flight for events/a
    store = await stores.open()
    assert await store.expire_streams(T0 + 999) == 0
    assert await store.expire_streams(T0 + 1_000) == 1
    assert await store.expire_streams(T0 + 1_000) == 0
    sub = await store.subscription("sub")
    assert [link.path for link in sub.streams] == ["events/b"]
    # The wake in flight finds no work and clears itself, as after a DELETE ...
    with pytest.raises(Conflict) as exc:
        await store.claim("sub", "w1", T0 + 1_001)
    assert code_of(exc) == "NO_PENDING_WORK"
    # ... so the next append wakes again.
    later = await store.append("events/b", [b"2"], T0 + 1_002, content_type=JSON)
    assert len(later.wakes) == 1


async def test_a_sweep_with_nothing_due_only_reads(stores: Reopener) -> None:
    store = await stores.open()
    await store.create_stream("s", TEXT, T0, options=StreamOptions(ttl_seconds=60))
    assert isinstance(store, TransactionalStore)
    calls = counting(store)
    assert await store.expire_streams(T0 + 59_999) == 0
    assert calls == ["streams_due"]  # no write transaction on an idle server
    assert await store.expire_streams(T0 + 60_000) == 1
    assert calls == ["streams_due", "streams_due", "expire_streams"]


async def test_a_write_meeting_an_expired_stream_removes_it(stores: Reopener) -> None:
    store = await stores.open()
    await make_subscription(store, pattern="events/*")
    await store.create_stream("events/a", JSON, T0, options=StreamOptions(ttl_seconds=1))
    with pytest.raises(NotFound):
        await store.append("events/a", [b"1"], T0 + 1_000, content_type=JSON)
    store = await stores.open()
    assert (await store.subscription("sub")).streams == ()
    assert await store.expire_streams(T0 + 10_000) == 0  # already removed by the append


# -- forks --------------------------------------------------------------------------------------


async def test_fork_reads_source_to_the_fork_point_then_its_own(stores: Reopener) -> None:
    store = await stores.open()
    _, first = await store.create_stream("src", TEXT, T0, items=[b"A"])
    await store.append("src", [b"B"], T0, content_type=TEXT)
    created, fork = await store.create_stream(
        "fork", None, T0, options=StreamOptions(fork=Fork("src", first.tail_offset))
    )
    assert created
    assert fork.content_type == TEXT
    assert fork.tail_offset == first.tail_offset  # the last inherited message
    await store.append("src", [b"D"], T0, content_type=TEXT)
    own = await store.append("fork", [b"C"], T0, content_type=TEXT)
    store = await stores.open()
    assert await text(store, "fork") == "AC"
    assert await text(store, "fork", first.tail_offset) == "C"
    assert await text(store, "src") == "ABD"
    tail = await store.read("fork", own.next_offset, BIG, now_ms=T0)
    assert tail.messages == ()
    assert tail.up_to_date
    # A fork of a fork composes; the default fork point is the source's tail.
    await store.create_stream("grand", TEXT, T0, options=StreamOptions(fork=Fork("fork")))
    await store.append("fork", [b"E"], T0, content_type=TEXT)
    await store.append("grand", [b"F"], T0, content_type=TEXT)
    assert await text(store, "grand") == "ACF"
    # Re-creating the same fork is idempotent; another offset or source is a conflict.
    again, _ = await store.create_stream(
        "fork", TEXT, T0, options=StreamOptions(fork=Fork("src", first.tail_offset))
    )
    assert not again
    for other in (Fork("src", ZERO_OFFSET), Fork("grand"), Fork("src", first.tail_offset, 1)):
        with pytest.raises(Conflict):
            await store.create_stream("fork", TEXT, T0, options=StreamOptions(fork=other))
    with pytest.raises(Conflict):
        await store.create_stream("fork", TEXT, T0)  # not a fork


async def test_fork_sub_offsets(stores: Reopener) -> None:
    store = await stores.open()
    _, anchor = await store.create_stream("bin", TEXT, T0, items=[b"first"])
    await store.append("bin", [b"second"], T0, content_type=TEXT)
    await store.create_stream(
        "bin-fork",
        None,
        T0,
        items=[b"XY"],
        options=StreamOptions(fork=Fork("bin", anchor.tail_offset, 3)),
    )
    await store.create_stream("json", JSON, T0, items=[b'{"a":1}', b'{"b":2}', b'{"c":3}'])
    await store.create_stream(
        "json-fork", None, T0, options=StreamOptions(fork=Fork("json", "-1", 2))
    )
    store = await stores.open()
    assert await text(store, "bin-fork") == "firstsecXY"
    messages = (await store.read("json-fork", "-1", BIG, now_ms=T0)).messages
    assert [json.loads(m.data) for m in messages] == [{"a": 1}, {"b": 2}]
    # A fork of a fork cuts the copied prefix again.
    await store.create_stream(
        "cut",
        None,
        T0,
        items=[],
        options=StreamOptions(fork=Fork("bin-fork", anchor.tail_offset, 2)),
    )
    assert await text(store, "cut") == "firstse"
    for bad in (Fork("bin", anchor.tail_offset, 7), Fork("json", "-1", 4), Fork("bin", None, 1)):
        with pytest.raises(BadRequest):
            await store.create_stream("bad", None, T0, options=StreamOptions(fork=bad))
    with pytest.raises(NotFound):
        await store.stream("bad", now_ms=T0)


async def test_fork_creation_errors(stores: Reopener) -> None:
    store = await stores.open()
    _, meta = await store.create_stream("src", TEXT, T0, items=[b"x"])
    with pytest.raises(NotFound):
        await store.create_stream("f", None, T0, options=StreamOptions(fork=Fork("nope")))
    past = f"{int(meta.tail_offset) + 1:020d}"
    with pytest.raises(BadRequest):
        await store.create_stream("f", None, T0, options=StreamOptions(fork=Fork("src", past)))
    with pytest.raises(Conflict) as exc:
        await store.create_stream("f", JSON, T0, options=StreamOptions(fork=Fork("src")))
    assert code_of(exc) == "CONTENT_TYPE_MISMATCH"
    # None of the refused forks holds the source: deleting it removes it for good.
    await store.delete_stream("src", now_ms=T0)
    created, _ = await store.create_stream("src", JSON, T0)
    assert created


async def test_soft_delete_keeps_data_for_forks_and_is_collected_with_the_last(
    stores: Reopener,
) -> None:
    store = await stores.open()
    await make_subscription(store, pattern="chain/*")
    await store.create_stream("chain/0", TEXT, T0, items=[b"A"])
    await store.create_stream("chain/1", TEXT, T0, options=StreamOptions(fork=Fork("chain/0")))
    await store.append("chain/1", [b"B"], T0, content_type=TEXT)
    await store.create_stream("chain/2", TEXT, T0, options=StreamOptions(fork=Fork("chain/1")))
    await store.delete_stream("chain/0", now_ms=T0)
    await store.delete_stream("chain/1", now_ms=T0)
    store = await stores.open()
    for path in ("chain/0", "chain/1"):
        with pytest.raises(Gone):
            await store.stream(path, now_ms=T0)
        with pytest.raises(Gone):
            await store.read(path, "-1", BIG, now_ms=T0)
        with pytest.raises(Gone):
            await store.append(path, [b"x"], T0, content_type=TEXT)
        with pytest.raises(Gone):
            await store.delete_stream(path, now_ms=T0)
        with pytest.raises(Conflict):
            await store.create_stream(path, TEXT, T0)
    with pytest.raises(Conflict) as exc:
        await store.create_stream("other", TEXT, T0, options=StreamOptions(fork=Fork("chain/1")))
    assert code_of(exc) == "SOURCE_DELETED"
    assert await text(store, "chain/2") == "AB"
    assert [link.path for link in (await store.subscription("sub")).streams] == ["chain/2"]
    await store.delete_stream("chain/2", now_ms=T0)
    store = await stores.open()
    for path in ("chain/0", "chain/1", "chain/2"):
        with pytest.raises(NotFound):
            await store.stream(path, now_ms=T0)
        created, _ = await store.create_stream(path, JSON, T0)
        assert created


async def test_fork_expiry_inherits_and_expiring_a_source_soft_deletes_it(
    stores: Reopener,
) -> None:
    store = await stores.open()
    await store.create_stream("src", TEXT, T0, items=[b"x"], options=StreamOptions(ttl_seconds=60))
    _, inherited = await store.create_stream(
        "inherits", TEXT, T0, options=StreamOptions(fork=Fork("src"))
    )
    assert inherited.ttl_seconds == 60
    _, own = await store.create_stream(
        "own", TEXT, T0, options=StreamOptions(fork=Fork("src"), expires_at_ms=T0 + 3_600_000)
    )
    assert (own.ttl_seconds, own.expires_at_ms) == (None, T0 + 3_600_000)
    await store.touch_stream("own", T0)
    store = await stores.open()
    assert await store.expire_streams(T0 + 60_000) == 2  # src (soft: forks read it), inherits
    with pytest.raises(Gone):
        await store.stream("src", now_ms=T0 + 60_000)
    assert await text(store, "own", now_ms=T0 + 60_000) == "x"
    await store.delete_stream("own", now_ms=T0 + 60_000)
    with pytest.raises(NotFound):
        await store.stream("src", now_ms=T0 + 60_000)


# -- migration ----------------------------------------------------------------------------------


async def test_a_database_from_before_0003_upgrades_with_its_streams(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = migrations("sqlite")[0]
    conn = sqlite3.connect(path)
    try:
        conn.execute(SCHEMA_VERSION_DDL)
        for statement in split_statements(first.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_version (version, name, applied_at_ms) VALUES (?, ?, ?)",
            (first.version, first.name, T0),
        )
        conn.execute(
            "INSERT INTO streams (path, content_type, created_at_ms, tail_seq) "
            "VALUES ('old', 'text/plain', ?, 1)",
            (T0,),
        )
        conn.execute("INSERT INTO messages (seq, stream_id, data) VALUES (1, 1, X'6869')")
        conn.execute("UPDATE counters SET value = 1")
        conn.commit()
    finally:
        conn.close()
    stores = Reopener(f"sqlite:///{path}")
    try:
        store = await stores.open()
        meta = await store.stream("old", now_ms=T0)
        assert (meta.closed, meta.ttl_seconds, meta.expires_at_ms) == (False, None, None)
        assert await text(store, "old") == "hi"
        await store.create_stream("fork", None, T0, options=StreamOptions(fork=Fork("old")))
        await store.append("old", [], T0, close=True)
        store = await stores.open()
        assert await text(store, "fork") == "hi"
        assert (await store.stream("old", now_ms=T0)).closed
    finally:
        if stores.store is not None:
            await stores.store.aclose()
