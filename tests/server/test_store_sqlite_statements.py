"""SQL statements per step of a wake cycle on SQLite: the store's CPU goes mostly to them.

Each statement through ``sqlite3`` costs the server's writer thread time under the GIL, so a
wake cycle's count is pinned here, step by step, as read from SQLite's own trace callback:
a change that adds a statement to the hot path fails this test and has to say why. (The
PostgreSQL counterpart, in round trips, is ``test_store_postgres_roundtrips.py``.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullwake.server.errors import Conflict
from pullwake.server.store.base import AckItem
from pullwake.server.store.sqlite import SqliteStore
from tests.server.stores import T0, make_subscription

pytestmark = pytest.mark.anyio


class TracedStore(SqliteStore):
    """A SQLite store that records every statement its connections run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.statements: list[str] = []

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.set_trace_callback(lambda sql: self.statements.append(" ".join(sql.split())))
        return conn

    def take(self) -> list[str]:
        taken, self.statements[:] = list(self.statements), []
        return taken


@pytest.fixture(name="traced")
async def traced_fixture(tmp_path: Path) -> AsyncIterator[TracedStore]:
    store = TracedStore(tmp_path / "store.db")
    await store.open()
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, pattern="events/*", wake_stream="wake/pool")
    store.take()
    yield store
    await store.aclose()


def _verbs(statements: list[str]) -> list[str]:
    return [" ".join(sql.split()[:2]) for sql in statements]


async def test_a_wake_cycle_runs_its_known_statements(traced: TracedStore) -> None:
    # The append that wakes the subscription: its stream, its position, the message, the
    # tail, the linked subscription, its links, the wake stream (read once, and whether
    # anything links to it), the new generation and the wake event (position, message,
    # tail). One transaction, no savepoint: it is alone in its group.
    result = await traced.append("events/a", [b'{"n":1}'], T0 + 1)
    assert len(result.wakes) == 1
    append = traced.take()
    assert _verbs(append) == [
        "BEGIN IMMEDIATE",
        "SELECT id,",
        "UPDATE counters",
        "INSERT INTO",
        "UPDATE streams",
        "SELECT sub_id",
        "SELECT id,",
        "SELECT l.stream_id,",
        "SELECT id,",
        "UPDATE subscriptions",
        "UPDATE counters",
        "INSERT INTO",
        "UPDATE streams",
        "COMMIT",
    ], append
    assert not any("wake_tail_seq" in sql for sql in append)

    # The claim with its messages inline: the subscription, its links, the lease, the stream
    # and its messages.
    claim = await traced.claim("sub", "worker-1", T0 + 2, inline_bytes=65536)
    assert [read.messages for read in claim.messages] == [(b'{"n":1}',)]
    claimed = traced.take()
    assert _verbs(claimed) == [
        "BEGIN IMMEDIATE",
        "SELECT id,",
        "SELECT l.stream_id,",
        "UPDATE subscriptions",
        "SELECT id,",
        "SELECT seq,",
        "COMMIT",
    ], claimed

    # The done-ack: the subscription, its links, the acked position, the lease ended.
    [read] = claim.messages
    await traced.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        [AckItem("events/a", read.next_offset)],
        True,
        T0 + 3,
    )
    acked = traced.take()
    assert _verbs(acked) == [
        "BEGIN IMMEDIATE",
        "SELECT id,",
        "SELECT l.stream_id,",
        "UPDATE links",
        "UPDATE subscriptions",
        "COMMIT",
    ], acked


async def test_a_failing_write_alone_in_its_group_leaves_nothing(traced: TracedStore) -> None:
    # Without a savepoint, a refused write alone in its group rolls back the whole
    # transaction: nothing of it stays, and the next write starts clean.
    with pytest.raises(Conflict, match="no pending work"):
        await traced.claim("sub", "worker-1", T0 + 1)
    refused = traced.take()
    assert "SAVEPOINT job" not in refused
    assert refused[-1] == "ROLLBACK"
    await traced.append("events/a", [b'{"n":2}'], T0 + 2)
    claim = await traced.claim("sub", "worker-1", T0 + 3, inline_bytes=65536)
    assert [m.messages for m in claim.messages] == [(b'{"n":2}',)]
