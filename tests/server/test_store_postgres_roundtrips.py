"""PostgreSQL round trips per transaction: the clock rides on BEGIN, the NOTIFYs on COMMIT.

What crosses the wire is read from libpq's own protocol trace (``PQtrace``) of the store's one
pooled connection: every message the client sent (``F``) and received (``B``). A round trip is
the client sending, then reading the server's answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio
import psycopg
import pytest

from pullwake.server.errors import NotFound
from pullwake.server.store.base import AckItem, SubscriptionConfig
from pullwake.server.store.postgres import PostgresStore, check_idle
from tests.server.stores import T0, wait_until_parked

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class Trace:
    """libpq's trace of every connection handed to it, read message by message."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: TextIO = path.open("w")
        self._conns: list[psycopg.Connection[Any]] = []
        self._offset = 0

    def attach(self, conn: psycopg.Connection[Any]) -> None:
        conn.pgconn.trace(self._file.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        self._conns.append(conn)

    def take(self) -> list[tuple[str, str, str]]:
        """Return (direction, message type, detail) of every message since the last take."""
        for conn in self._conns:  # libpq buffers its trace; untrace flushes it
            if not conn.closed:
                conn.pgconn.untrace()
                conn.pgconn.trace(self._file.fileno())
                conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        with self._path.open() as file:
            file.seek(self._offset)
            text = file.read()
            self._offset = file.tell()
        messages = []
        for line in text.splitlines():
            fields = line.split("\t")  # direction, length, type, detail
            if len(fields) >= 3 and fields[0] in ("F", "B"):
                messages.append((fields[0], fields[2], "\t".join(fields[3:]).strip()))
        return messages

    def close(self) -> None:
        self._file.close()


def round_trips(messages: list[tuple[str, str, str]]) -> int:
    count, last = 0, None
    for direction, _, _ in messages:
        if direction == "B" and last == "F":
            count += 1
        last = direction
    return count


def sent(messages: list[tuple[str, str, str]], kind: str) -> list[str]:
    return [detail for direction, k, detail in messages if direction == "F" and k == kind]


@pytest.fixture(name="trace")
def trace_fixture(tmp_path: Path) -> Iterator[Trace]:
    trace = Trace(tmp_path / "libpq.trace")
    yield trace
    trace.close()


async def open_traced(dsn: str, trace: Trace) -> PostgresStore:
    store = PostgresStore(dsn, connections=1, database_clock=True, on_connect=trace.attach)
    await store.open()
    return store


async def test_begin_carries_the_clock_and_commit_carries_the_notifies(
    postgres_dsn: str, trace: Trace
) -> None:
    store = await open_traced(postgres_dsn, trace)
    try:
        await store.create_stream("events/a", "application/json", T0)
        config = SubscriptionConfig(wake_stream="wake/pool", pattern="events/*")
        await store.put_subscription("sub", config, T0)
        trace.take()

        # An append that wakes a subscription changes two paths: the stream and the wake stream.
        await store.append("events/a", [b"1"], T0)
        messages = trace.take()
        queries = sent(messages, "Query")
        assert len(queries) == 2, queries
        begin, commit = queries
        assert begin.startswith('"BEGIN READ WRITE; SELECT')
        assert "clock_timestamp()" in begin
        assert commit.count("pg_notify(") == 2
        assert commit.endswith('COMMIT"')
        # Everything else is the rule's own statements, one round trip each: the clock and the
        # NOTIFYs cost none of their own.
        assert round_trips(messages) == len(sent(messages, "Execute")) + 2
        assert not [d for d in sent(messages, "Parse") if "pg_notify" in d or "clock_" in d]

        # A read: REPEATABLE READ, the clock on BEGIN, no NOTIFY.
        await store.read("events/a", "-1", 65536)
        messages = trace.take()
        queries = sent(messages, "Query")
        assert len(queries) == 2, queries
        assert queries[0].startswith('"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT')
        assert "clock_timestamp()" in queries[0]
        assert queries[1] == '"COMMIT"'
        assert round_trips(messages) == len(sent(messages, "Execute")) + 2

        # A claim and its ack: the same shape.
        claim = await store.claim("sub", "w1", T0)
        acks = [AckItem(link.path, link.tail_offset) for link in claim.streams]
        await store.ack("sub", claim.token, claim.wake_id, claim.generation, acks, True, T0)
        messages = trace.take()
        assert len(sent(messages, "Query")) == 4
        assert round_trips(messages) == len(sent(messages, "Execute")) + 4
    finally:
        await store.aclose()


async def test_a_rule_that_fails_rolls_back_without_a_commit(
    postgres_dsn: str, trace: Trace
) -> None:
    store = await open_traced(postgres_dsn, trace)
    try:
        await store.create_stream("events/a", "application/json", T0)
        trace.take()
        with pytest.raises(NotFound):
            await store.append("events/missing", [b"1"], T0)
        queries = sent(trace.take(), "Query")
        assert queries[-1] == '"ROLLBACK"'
        assert not [q for q in queries if "COMMIT" in q]
    finally:
        await store.aclose()


@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_a_notify_payload_with_quotes_and_accents_reaches_another_store(
    postgres_dsn: str, conforming: str
) -> None:
    """The NOTIFY payload travels as a literal: quotes, JSON's backslashes and non-ASCII
    survive it, whatever ``standard_conforming_strings`` says (libpq quotes for the
    connection's own setting)."""
    dsn = psycopg.conninfo.make_conninfo(
        postgres_dsn, options=f"-c standard_conforming_strings={conforming}"
    )
    path = 'events/it\'s "quoted" é'
    async with PostgresStore(dsn) as writer, PostgresStore(dsn) as reader:
        await writer.create_stream(path, "application/json", T0)
        woken: list[bool] = []

        async def wait() -> None:
            woken.append(await reader.wait_for_change(path, "now", 10))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await wait_until_parked(reader)
                result = await writer.append(path, [b"1"], T0)
        assert woken == [True]
        assert (await reader.stream(path)).tail_offset == result.next_offset


def test_an_idle_connection_the_server_closed_is_refused_at_checkout(postgres_dsn: str) -> None:
    """The pool's check costs no round trip: it looks at the socket, once, without waiting."""
    with psycopg.connect(postgres_dsn, autocommit=True) as idle:
        check_idle(idle)  # healthy and idle: nothing to read, accepted
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (idle.info.backend_pid,))
        time.sleep(0.2)  # the FATAL message reaches the idle socket (a sync test: no loop)
        with pytest.raises(psycopg.OperationalError):
            check_idle(idle)
        assert idle.closed
