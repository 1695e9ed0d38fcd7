"""The change board's marks and announced tails (server/store/changes.py), and how
``wait_for_change(since=...)`` uses a mark to skip its look at the store, safely."""

from __future__ import annotations

import anyio
import pytest

from pullwake.server.store import Store
from pullwake.server.store.changes import REMEMBERED, ChangeBoard
from pullwake.server.store.offsets import parse_offset
from pullwake.server.store.transactional import TransactionalStore
from tests.server.stores import (  # noqa: F401
    T0,
    counting,
    store_factory_fixture,
    store_fixture,
    store_url_fixture,
    wait_until_parked,
)

pytestmark = pytest.mark.anyio


async def test_a_mark_moves_only_when_its_path_is_announced() -> None:
    board = ChangeBoard()
    a, b = board.mark("a"), board.mark("b")
    board.notify({"b": 7})
    assert board.mark("a") == a
    assert board.mark("b") != b
    b = board.mark("b")
    board.notify(["a"])
    assert board.mark("a") != a
    assert board.mark("b") == b


async def test_notify_all_moves_every_mark() -> None:
    board = ChangeBoard()
    board.notify({"a": 1})
    marks = {path: board.mark(path) for path in ("a", "never-announced")}
    board.notify_all()
    assert all(board.mark(path) != mark for path, mark in marks.items())


async def test_a_forgotten_path_never_gets_an_old_mark_back() -> None:
    board = ChangeBoard()
    board.notify({"first": 1})
    before = board.mark("first")
    # Announce "first" again, then enough other paths that it is forgotten.
    board.notify({"first": 2})
    for i in range(REMEMBERED + 1):
        board.notify({f"other/{i}": 1})
    assert board.mark("first") != before
    # And a path that was never announced keeps a mark that moves once it is.
    quiet = board.mark("quiet")
    board.notify({"quiet": 1})
    assert board.mark("quiet") != quiet


async def test_watches_hear_the_highest_announced_tail() -> None:
    board = ChangeBoard()
    with board.watch("s") as watch:
        board.notify({"s": 5})
        board.notify({"s": 3})
        assert watch.event.is_set()
        assert (watch.tail, watch.unknown) == (5, False)
        watch.rearm()
        assert not watch.event.is_set()
        board.notify(["s"])
        assert watch.unknown


async def test_an_unchanged_mark_lets_the_wait_skip_its_look(store: Store) -> None:
    assert isinstance(store, TransactionalStore)
    await store.create_stream("s", "application/json", T0)
    mark = store.change_mark("s")
    tail = (await store.read("s", "-1", 10_000)).next_offset
    calls = counting(store)
    results: list[bool] = []

    async def wait() -> None:
        results.append(await store.wait_for_change("s", tail, 30, since=mark))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await wait_until_parked(store)
            await store.append("s", [b"1"], T0)
    assert results == [True]
    assert calls == ["append"]


async def test_a_change_after_the_mark_is_not_missed(store: Store) -> None:
    """An append between the caller's mark and its wait (the race the look exists for): the
    mark has moved, so the wait looks at the store and answers at once."""
    assert isinstance(store, TransactionalStore)
    await store.create_stream("s", "application/json", T0)
    mark = store.change_mark("s")
    tail = (await store.read("s", "-1", 10_000)).next_offset
    await store.append("s", [b"1"], T0)
    calls = counting(store)
    with anyio.fail_after(10):
        assert await store.wait_for_change("s", tail, 30, since=mark) is True
    assert calls == ["stream_tail"]


async def test_wait_for_change_trusts_an_announced_tail(store: Store) -> None:
    """A local append announces its tail: the waiter returns without asking the store again,
    and an announcement of a tail it has already seen does not wake it."""
    assert isinstance(store, TransactionalStore)
    await store.create_stream("s", "application/json", T0)
    first = await store.append("s", [b"1"], T0)
    calls = counting(store)
    results: list[bool] = []

    async def wait() -> None:
        results.append(await store.wait_for_change("s", first.next_offset, 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await wait_until_parked(store)
            # An older change (the tail the waiter already stands on): it keeps waiting.
            store._changes.notify({"s": parse_offset(first.next_offset)})
            await anyio.sleep(0.05)
            assert results == []
            await store.append("s", [b"2"], T0)
    assert results == [True]
    # One look when the wait began, then the append; no second look after the announcement.
    assert calls == ["stream_tail", "append"]


async def test_wait_for_change_looks_again_after_an_unannounced_change(store: Store) -> None:
    """A notification without a tail (a delete, another server process, a listener that
    reconnected) makes the waiter look at the store; nothing new there, it waits on."""
    assert isinstance(store, TransactionalStore)
    _, meta = await store.create_stream("s", "application/json", T0)
    results: list[bool] = []

    async def wait() -> None:
        results.append(await store.wait_for_change("s", meta.tail_offset, 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await wait_until_parked(store)
            store._changes.notify(["s"])
            await anyio.sleep(0.05)
            await wait_until_parked(store)
            assert results == []
            await store.append("s", [b"1"], T0)
    assert results == [True]
