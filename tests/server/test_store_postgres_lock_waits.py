"""PostgreSQL: a rule that waited for a subscription's row lock reads what the holder wrote.

Under READ COMMITTED a statement that waits for a row lock returns the locked row's newest
version but reads every other table as it was when the statement began. A claim that waits
for an append from another server (or another transaction of this one) must still see the
message that append added, or it answers "no pending work" and the wake is spent while the
work stays unclaimed. The lock holder here is a plain connection doing what an append does:
lock the subscription, add a message, move the stream's tail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import psycopg
import pytest

from pullwake.server.store.postgres import SCHEMA, PostgresStore
from tests.server.stores import T0, make_subscription

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture(name="pg_store")
async def pg_store_fixture(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(postgres_dsn)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def _lock_and_append(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """In an open transaction: hold the subscription's row, append one message to events/a."""
    conn.execute(f"SET search_path TO {SCHEMA}")
    conn.execute("SELECT 1 FROM subscriptions WHERE id = 'sub' FOR NO KEY UPDATE")
    row = conn.execute(
        "INSERT INTO messages (seq, stream_id, data) "
        "SELECT nextval('offset_seq'), id, %s FROM streams WHERE path = 'events/a' "
        "RETURNING seq",
        (b'{"n":1}',),
    ).fetchone()
    assert row is not None
    conn.execute("UPDATE streams SET tail_seq = %s WHERE path = 'events/a'", (row[0],))


async def _waiting_for_a_lock(dsn: str) -> bool:
    def look() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            return row is not None and int(row[0]) > 0

    return await anyio.to_thread.run_sync(look)


async def test_a_claim_that_waited_for_an_append_sees_its_message(
    pg_store: PostgresStore, postgres_dsn: str
) -> None:
    await pg_store.create_stream("events/a", "application/json", T0)
    await make_subscription(pg_store, pattern="events/*", wake_stream="wake/pool")
    holder = await anyio.to_thread.run_sync(psycopg.connect, postgres_dsn)
    try:
        await anyio.to_thread.run_sync(_lock_and_append, holder)
        claims = []

        async def claim() -> None:
            claims.append(await pg_store.claim("sub", "worker-1", T0 + 1, inline_bytes=65536))

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim)
            with anyio.fail_after(10):
                # The wait happens inside PostgreSQL: polled, as nothing here can signal it.
                while not await _waiting_for_a_lock(postgres_dsn):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            await anyio.to_thread.run_sync(holder.commit)
    finally:
        await anyio.to_thread.run_sync(holder.close)
    [won] = claims
    assert [(link.path, link.has_pending) for link in won.streams] == [("events/a", True)]
    assert [read.messages for read in won.messages] == [(b'{"n":1}',)]
