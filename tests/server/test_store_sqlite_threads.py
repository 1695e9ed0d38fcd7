"""The SQLite store's threads: group commit in the writer thread, its failure modes, closing.

The writer thread is held inside a COMMIT (a seam: ``_commit_group``) while more writes queue
behind it; releasing it lets the queued writes run as one group. Statements are counted with
sqlite3's trace callback on the writer's connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from pullwake.server.errors import BadRequest, Conflict, NotFound, StoreUnavailable
from pullwake.server.store import rules, sqlite
from pullwake.server.store.sqlite import SqliteStore
from tests.server.stores import T0

pytestmark = pytest.mark.anyio

WRITER = "pullwake-sqlite-writer"


class HeldStore(SqliteStore):
    """A SQLite store whose writer can be held inside a COMMIT, or made to fail one."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        #: Every statement the writer thread ran, in order.
        self.writer_sql: list[str] = []
        #: When set, the next COMMIT waits for ``release`` (and sets ``held`` on arrival).
        self.hold_next = False
        self.held = threading.Event()
        self.release = threading.Event()
        #: The group COMMITs tried so far; the one numbered ``fail_at`` raises ``failure``.
        self.commit_calls = 0
        self.fail_at: int | None = None
        self.failure = sqlite3.OperationalError("disk I/O error")

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()

        def trace(sql: str) -> None:
            if threading.current_thread().name.startswith(WRITER):
                self.writer_sql.append(sql)

        conn.set_trace_callback(trace)
        return conn

    def _commit_group(self, conn: sqlite3.Connection) -> None:
        self.commit_calls += 1
        if self.hold_next:
            self.hold_next = False
            self.held.set()
            self.release.wait(30)
        if self.commit_calls == self.fail_at:
            raise self.failure
        super()._commit_group(conn)

    def commits(self) -> int:
        return self.writer_sql.count("COMMIT")


@pytest.fixture(name="held")
async def held_fixture(tmp_path: Path) -> AsyncIterator[HeldStore]:
    store = HeldStore(tmp_path / "store.db")
    await store.open()
    await store.create_stream("s", "application/json", T0)
    try:
        yield store
    finally:
        store.release.set()
        await store.aclose()


async def hold_writer(store: HeldStore, tg: anyio.abc.TaskGroup) -> None:
    """Park the writer thread inside the COMMIT of one append, so later writes queue up."""
    store.hold_next = True
    tg.start_soon(store.append, "s", [b"first"], T0)
    await anyio.to_thread.run_sync(store.held.wait, 30)


async def let_go(store: HeldStore) -> None:
    """Once every task has queued its job, release the writer."""
    await anyio.wait_all_tasks_blocked()
    store.release.set()


async def messages(store: SqliteStore, path: str = "s") -> list[bytes]:
    return [m.data for m in (await store.read(path, "-1", 1_000_000)).messages]


def put_setting(key: str, then: Callable[[], Exception] | None = None) -> Callable[..., Any]:
    """A transaction body that writes a settings row, then raises what ``then`` makes."""

    def body(tx: rules.Transaction) -> str:
        tx.execute("INSERT INTO settings (key, value) VALUES (?, 'v')", (key,))
        if then is not None:
            raise then()
        return key

    return body


def has_setting(tx: rules.Transaction, key: str) -> bool:
    return tx.fetchone("SELECT 1 FROM settings WHERE key = ?", (key,)) is not None


async def test_writes_queued_behind_a_commit_commit_together_in_one_group(
    held: HeldStore,
) -> None:
    results: dict[int, str] = {}

    async def append(index: int) -> None:
        results[index] = (await held.append("s", [str(index).encode()], T0)).next_offset

    async with anyio.create_task_group() as tg:
        await hold_writer(held, tg)
        mark = len(held.writer_sql)
        for index in range(8):
            tg.start_soon(append, index)
        await let_go(held)
    # The held COMMIT, then the eight queued appends in ONE transaction: one BEGIN IMMEDIATE,
    # eight savepoints, one COMMIT.
    after = held.writer_sql[mark:]
    assert after[0] == "COMMIT"
    assert after.count("BEGIN IMMEDIATE") == 1
    assert after.count("SAVEPOINT job") == 8
    assert after.count("COMMIT") == 2
    assert len(set(results.values())) == 8
    assert sorted(await messages(held)) == sorted([b"first", *(str(i).encode() for i in range(8))])


async def test_a_failing_job_in_a_group_leaves_the_others_committed(held: HeldStore) -> None:
    outcomes: dict[str, object] = {}

    async def run(name: str, body: Callable[..., Any]) -> None:
        try:
            outcomes[name] = await held._call(body)
        except Exception as exc:
            outcomes[name] = exc

    async def append_missing() -> None:
        try:
            await held.append("missing", [b"x"], T0)
        except NotFound as exc:
            outcomes["missing"] = exc

    async with anyio.create_task_group() as tg:
        await hold_writer(held, tg)
        before = held.commits()
        tg.start_soon(run, "kept-1", put_setting("kept-1"))
        tg.start_soon(run, "undone", put_setting("undone", lambda: BadRequest("no")))
        tg.start_soon(append_missing)
        tg.start_soon(
            run, "deferred", put_setting("deferred", lambda: rules.CommitThenRaise(Conflict("c")))
        )
        tg.start_soon(run, "kept-2", put_setting("kept-2"))
        tg.start_soon(held.append, "s", [b"after"], T0)
        await let_go(held)
    assert held.commits() - before == 2  # the held one, then all six jobs in one group
    assert outcomes["kept-1"] == "kept-1"
    assert outcomes["kept-2"] == "kept-2"
    assert isinstance(outcomes["undone"], BadRequest)
    assert isinstance(outcomes["missing"], NotFound)
    # CommitThenRaise: the job's error is raised, and its changes were committed anyway.
    assert isinstance(outcomes["deferred"], Conflict)
    seen = {
        key: await held._call(has_setting, key, write=False)
        for key in ("kept-1", "kept-2", "deferred", "undone")
    }
    assert seen == {"kept-1": True, "kept-2": True, "deferred": True, "undone": False}
    assert await messages(held) == [b"first", b"after"]


async def test_a_cancelled_caller_still_commits_and_notifies(held: HeldStore) -> None:
    await held.create_stream("t", "application/json", T0)
    tail = (await held.stream("t")).tail_offset
    woke: list[bool] = []

    async def watch() -> None:
        woke.append(await held.wait_for_change("t", tail, 5.0))

    cancelled: list[bool] = []

    async def append_then_cancelled(scope: anyio.CancelScope) -> None:
        with scope:
            await held.append("t", [b"cancelled"], T0)
        cancelled.append(scope.cancelled_caught)

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await hold_writer(held, tg)
        tg.start_soon(append_then_cancelled, scope)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await let_go(held)
    # The caller saw its cancellation, after the append committed and the waiter was told.
    assert cancelled == [True]
    assert woke == [True]
    assert await messages(held, "t") == [b"cancelled"]


async def test_closing_waits_for_queued_writes_then_refuses_more(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "store.db")
    await store.open()
    await store.create_stream("s", "application/json", T0)
    done: list[str] = []

    async def append(index: int) -> None:
        done.append((await store.append("s", [str(index).encode()], T0)).next_offset)

    try:
        async with anyio.create_task_group() as tg:
            await hold_writer(store, tg)
            for index in range(5):
                tg.start_soon(append, index)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(store.aclose)
            await let_go(store)
    finally:
        store.release.set()
        await store.aclose()
    assert len(done) == 5
    with pytest.raises(StoreUnavailable) as exc:
        await store.append("s", [b"late"], T0)
    assert exc.value.code == "STORE_CLOSED"
    again = SqliteStore(tmp_path / "store.db")
    async with again:
        assert len(await messages(again)) == 6


async def test_closing_fails_queued_writes_once_its_wait_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "CLOSE_WAIT_S", 0.0)
    store = HeldStore(tmp_path / "store.db")
    await store.open()
    await store.create_stream("s", "application/json", T0)
    errors: list[str] = []

    async def append(index: int) -> None:
        try:
            await store.append("s", [str(index).encode()], T0)
        except StoreUnavailable as exc:
            errors.append(exc.code)

    try:
        async with anyio.create_task_group() as tg:
            await hold_writer(store, tg)
            for index in range(3):
                tg.start_soon(append, index)
            await anyio.wait_all_tasks_blocked()
            await store.aclose()  # returns although the writer is still held
            store.release.set()
    finally:
        store.release.set()
        await store.aclose()
    assert errors == ["STORE_CLOSED"] * 3
    again = SqliteStore(tmp_path / "store.db")
    async with again:
        assert await messages(again) == [b"first"]  # the group in progress still committed


async def test_a_failed_group_commit_fails_every_job_of_the_group(held: HeldStore) -> None:
    errors: list[StoreUnavailable] = []

    async def append(index: int) -> None:
        try:
            await held.append("s", [str(index).encode()], T0)
        except StoreUnavailable as exc:
            errors.append(exc)

    held.fail_at = held.commit_calls + 2  # the held COMMIT passes, the next group's fails
    async with anyio.create_task_group() as tg:
        await hold_writer(held, tg)
        for index in range(4):
            tg.start_soon(append, index)
        await let_go(held)
    assert held.commit_calls == held.fail_at
    assert [exc.code for exc in errors] == ["STORE_UNAVAILABLE"] * 4
    assert await messages(held) == [b"first"]  # none of the four was saved
    await held.append("s", [b"later"], T0)  # the writer goes on with the next group
    assert await messages(held) == [b"first", b"later"]
