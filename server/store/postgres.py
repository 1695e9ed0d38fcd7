"""The PostgreSQL dialect: a psycopg 3 connection pool used from worker threads, row locks,
and ``LISTEN``/``NOTIFY`` so a wake appended through one server process reaches readers
connected to another.

Theory of operation
-------------------
Every rule runs in one ``READ COMMITTED`` transaction on a pooled connection (reads run
``REPEATABLE READ, READ ONLY`` so they see one snapshot). Rows a decision depends on are locked
with ``FOR NO KEY UPDATE`` (the rules append it), which never conflicts with the ``KEY SHARE``
locks foreign keys take; operations that change which streams a subscription links also take a
transaction-scoped advisory lock (``lock_catalog``). A deadlock or serialization failure is
retried a few times, since nothing was applied.

A transaction costs one round trip per statement of its rule and two more: the pooled
connections are in autocommit mode, so psycopg sends no ``BEGIN`` of its own; the store opens
the transaction with ``BEGIN ...; SELECT clock_timestamp()`` (one simple query: the database's
clock travels with the ``BEGIN``) and ends it with the NOTIFYs and the ``COMMIT`` in one simple
query (:meth:`PostgresTransaction.closing`). Measured (bench/throughput.py and a libpq trace,
see tests/server/test_store_postgres_roundtrips.py): a wake cycle with a read went from 43 round
trips to 36, and 8 subscriptions from 112 to 149 cycles/s (medians of 3 interleaved runs on a
busy 2-core machine). psycopg's pipeline mode, which would also spare the round trips of
statements whose rows the rule does not read (27 per cycle), was measured and not kept: it cost
about 40 % more client instructions per transaction (callgrind, 681k vs 488k for a claim-like
transaction), more than the round trips it saved.

Each stream change runs ``pg_notify('pullwake_changes', ...)`` inside the changing
transaction, just before its commit, so PostgreSQL delivers it exactly when (and only if) the
transaction commits; the payload names the store that made the change, the path and its new
tail, so a listener skips its own store's changes (they reached its waiters already) and a
waiter elsewhere can tell a change that concerns it without a query. A
dedicated listener thread holds one extra connection that ``LISTEN``\\ s, sleeps in a selector
on that connection's socket and a stop socket (never on a timer), and hands each notification to
the event loop through ``anyio.from_thread`` with the loop's token. If that connection breaks,
the thread reconnects with backoff and then wakes *every* local waiter, because notifications
sent while it was away are lost; waiters re-check and wait again.

The tables live in the schema ``pullwake`` (``search_path`` is set on every pooled
connection), so the store can share a database with an application.
"""

from __future__ import annotations

import functools
import inspect
import json
import random
import select
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import psycopg
import psycopg.errors
import psycopg_pool

from pullwake.server.errors import BadRequest, Conflict, StoreError, StoreUnavailable
from pullwake.server.store import rules
from pullwake.server.store.changes import ChangeBoard
from pullwake.server.store.schema import SCHEMA_VERSION_DDL, migrations
from pullwake.server.store.transactional import Outcome, TransactionalStore, run_body

SCHEMA = "pullwake"
CHANNEL = "pullwake_changes"
#: Advisory lock keys (arbitrary constants, unique to pullwake).
MIGRATION_LOCK_KEY = 0x70776D01
CATALOG_LOCK_KEY = 0x70776D02
#: Attempts for a transaction that hit a deadlock or serialization failure.
MAX_ATTEMPTS = 5
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)

#: libpq settings for every connection: give up on a dead server instead of hanging.
CONNECT_KWARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
    "application_name": "pullwake",
}


@contextmanager
def map_store_errors() -> Iterator[None]:
    """Translate psycopg errors into store errors (the one edge where that happens)."""
    try:
        yield
    except StoreError:
        raise
    except psycopg_pool.PoolClosed:
        raise StoreUnavailable(
            "the PostgreSQL store is closed (the server is shutting down); retry against a "
            "running server",
            code="STORE_CLOSED",
        ) from None
    except psycopg_pool.PoolTimeout as exc:
        raise StoreUnavailable(
            f"no PostgreSQL connection became available in time ({exc}); check that the "
            "database is up and reachable, then retry"
        ) from None
    except psycopg.IntegrityError as exc:
        raise Conflict(
            f"PostgreSQL refused a write that conflicts with existing data "
            f"({type(exc).__name__}); retry, or re-read the resource",
            code="CONFLICT",
        ) from None
    except psycopg.DataError as exc:
        # Bad input, not an outage (a value PostgreSQL cannot hold, such as a NUL in text):
        # the request is at fault, and retrying it would fail the same way.
        raise BadRequest(
            f"PostgreSQL cannot store a value of this request ({type(exc).__name__}: "
            f"{str(exc).strip()[:200]}); remove NUL characters and invalid text, then retry",
            code="INVALID_DATA",
        ) from None
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"PostgreSQL failed ({type(exc).__name__}: {str(exc).strip()[:200]}); check that "
            "the database is up and reachable, then retry"
        ) from None


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresTransaction(rules.Transaction):
    """Row locks, an advisory catalog lock, a sequence for positions, NOTIFY on change."""

    row_lock = " FOR NO KEY UPDATE"
    skip_locked = " SKIP LOCKED"
    stale_joins_after_lock = True

    def __init__(self, cursor: Any) -> None:
        super().__init__(cursor)
        # Invariant: True once this transaction holds the catalog advisory lock.
        self._catalog_locked = False

    def sql(self, text: str) -> str:
        return _to_pyformat(text)

    def lock_catalog(self) -> None:
        if not self._catalog_locked:
            self.execute("SELECT pg_advisory_xact_lock(?)", (CATALOG_LOCK_KEY,))
            self._catalog_locked = True

    def next_positions(self, count: int) -> list[int]:
        rows = self.fetchall("SELECT nextval('offset_seq') FROM generate_series(1, ?)", (count,))
        return sorted(int(row[0]) for row in rows)

    def insert_messages(self, stream_id: int, items: Sequence[bytes]) -> int:
        if len(items) != 1:
            return super().insert_messages(stream_id, items)
        # One message (the usual append, and every wake event) in one statement, one round
        # trip instead of three: the position drawn, the row inserted, the tail moved.
        row = self.fetchone(
            "WITH added AS (INSERT INTO messages (seq, stream_id, data) "
            "VALUES (nextval('offset_seq'), ?, ?) RETURNING seq) "
            "UPDATE streams SET tail_seq = (SELECT seq FROM added) WHERE id = ? "
            "RETURNING tail_seq",
            (stream_id, bytes(items[0]), stream_id),
        )
        assert row is not None
        return int(row[0])

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        # psycopg runs executemany in a pipeline of its own (enter, Sync, exit) even for one
        # row; one row is one plain statement (an append of one message, the usual case).
        if len(rows) == 1:
            self.execute(sql, rows[0])
        else:
            super().executemany(sql, rows)

    def closing(self, origin: str) -> bytes:
        """The text that ends this transaction: one ``NOTIFY`` per changed path (sent just
        before commit, so each carries the path's final tail; PostgreSQL delivers them if and
        only if the commit succeeds), then ``COMMIT``, all in one simple query, one round trip.
        A simple query takes no parameters, so each payload is quoted by libpq
        (``PQescapeLiteral``, which follows the connection's ``standard_conforming_strings``).
        """
        escaping = psycopg.pq.Escaping(self._cursor.connection.pgconn)
        notes = [
            b"SELECT pg_notify('"
            + CHANNEL.encode()
            + b"', "
            + escaping.escape_literal(encode_note(origin, path, tail).encode())
            + b"); "
            for path, tail in self.changed.items()
        ]
        return b"".join(notes) + b"COMMIT"


def encode_note(origin: str, path: str, tail: int | None) -> str:
    """The payload of a change notification: who made it, which path, its new tail."""
    return json.dumps([origin, path, tail], separators=(",", ":"))


def decode_note(payload: str) -> tuple[str | None, str, int | None]:
    """Read a payload of :func:`encode_note`; anything else is taken as a bare path."""
    try:
        origin, path, tail = json.loads(payload)
    except (ValueError, TypeError):
        return None, payload, None
    if not isinstance(origin, str) or not isinstance(path, str):
        return None, payload, None
    return origin, path, tail if isinstance(tail, int) else None


def check_idle(conn: psycopg.Connection[Any]) -> None:
    """Refuse a pooled connection the server has closed, without a round trip.

    psycopg_pool's own ``check_connection`` sends an empty query on every checkout: a whole
    round trip to PostgreSQL before each transaction (a third of a wake's store time in
    docs/performance.md). An idle connection has nothing to read, so a readable socket means
    the server hung up or sent a fatal error (a restart, ``pg_terminate_backend``); that is what
    this looks for, with one non-blocking poll. A server that vanished without a word is caught
    by the query itself (``tcp_user_timeout``), as it would be by the round trip.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if _readable_now(conn.fileno()):
        # Closed, the pool drops it and opens another (an open one would be put back).
        conn.close()
        raise psycopg.OperationalError("the server closed or failed this idle connection")


def _readable_now(fd: int) -> bool:
    """One non-blocking look at ``fd``: a ``poll`` object where the platform has one (one
    system call, 0.5 µs here, against 5.8 µs for a ``selectors.DefaultSelector``, which
    creates and closes an epoll instance on every checkout)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(0))


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET search_path TO {SCHEMA}")


class _Listener:
    """A thread that LISTENs on one connection and passes notifications to a change board."""

    def __init__(
        self, dsn: str, board: ChangeBoard, token: anyio.lowlevel.EventLoopToken, origin: str
    ) -> None:
        self._dsn = dsn
        self._board = board
        self._token = token
        # Changes this store made itself reached the board from the transaction already.
        self._origin = origin
        # A socket pair rather than a pipe: selectable on every platform.
        self._stop_read, self._stop_write = socket.socketpair()
        # Invariant: the LISTENing connection while the thread has one, else None.
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pullwake-pg-listener", daemon=True)

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._dsn, autocommit=True, **CONNECT_KWARGS)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def start(self) -> None:
        """Connect and LISTEN (blocking; raises when PostgreSQL is unreachable), then run."""
        with map_store_errors():
            self._conn = self._connect()
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (blocking)."""
        self._stop_write.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._drop()
        self._stop_read.close()
        self._stop_write.close()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _stop_requested(self, timeout: float | None) -> bool:
        with selectors.DefaultSelector() as selector:
            selector.register(self._stop_read, selectors.EVENT_READ)
            return bool(selector.select(timeout))

    def _deliver(self, changes: Mapping[str, int | None] | None) -> bool:
        """Hand ``changes`` (None: everything) to the event loop; False once the loop is gone."""
        try:
            if changes is None:
                anyio.from_thread.run_sync(self._board.notify_all, token=self._token)
            else:
                anyio.from_thread.run_sync(self._board.notify, dict(changes), token=self._token)
        except Exception:
            return False
        return True

    def _pump(self, conn: psycopg.Connection[Any]) -> bool:
        """Wait for notifications or a stop request; return True to stop."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._stop_read, selectors.EVENT_READ, "stop")
            selector.register(conn.fileno(), selectors.EVENT_READ, "conn")
            ready = {key.data for key, _ in selector.select()}
        if "stop" in ready:
            return True
        conn.pgconn.consume_input()
        changes: dict[str, int | None] = {}
        while (note := conn.pgconn.notifies()) is not None:
            origin, path, tail = decode_note(note.extra.decode("utf-8", "replace"))
            if origin == self._origin:
                continue
            known = changes.get(path, tail)
            changes[path] = None if known is None or tail is None else max(known, tail)
        return bool(changes) and not self._deliver(changes)

    def _run(self) -> None:
        delay = 0.05
        while True:
            if self._conn is None:
                if self._stop_requested(delay) or not self._deliver({}):
                    return  # asked to stop, or the event loop is gone
                try:
                    self._conn = self._connect()
                except psycopg.Error:
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.05
                if not self._deliver(None):
                    return
            try:
                if self._pump(self._conn):
                    return
            except (psycopg.Error, OSError, ValueError):
                self._drop()


#: How each transaction opens, as psycopg would open it with ``read_only`` and
#: ``isolation_level`` (reads see one snapshot); the store sends it itself (the connections are
#: in autocommit mode), so the clock can travel with it.
BEGIN_WRITE = b"BEGIN READ WRITE"
BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

#: The database's clock in epoch milliseconds: ``clock_timestamp()``, not ``now()``, so a
#: transaction that waited for a row lock judges by the time it got it.
DATABASE_NOW_MS = b"SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"


@functools.lru_cache(maxsize=256)
def _now_ms_position(body: Callable[..., Any]) -> int | None:
    """Where ``now_ms`` sits among a rule's arguments (after ``tx``), or None."""
    names = list(inspect.signature(body).parameters)
    return names.index("now_ms") - 1 if "now_ms" in names else None


def begin(
    cursor: Any, write: bool, body: Callable[..., Any], args: Sequence[Any], database_clock: bool
) -> Sequence[Any]:
    """Open the transaction; return ``args``, with the caller's ``now_ms`` replaced by the
    database's clock when ``database_clock`` and the rule takes one.

    Leases are judged by ``now_ms`` (granted until ``now_ms + ttl``, lapsed once ``now_ms``
    passed that). With several server processes on one database, each process's wall clock
    would be its own judge, and one running fast would expire leases another just granted.
    Reading the time inside the rule's own transaction gives every replica the same clock. It
    is read by the statement that begins the transaction (``BEGIN ...; SELECT ...``, one simple
    query, one round trip), so it costs no round trip of its own.
    """
    opening = BEGIN_WRITE if write else BEGIN_READ
    position = _now_ms_position(body) if database_clock else None
    if position is None or position >= len(args):
        cursor.execute(opening, prepare=False)
        return args
    cursor.execute(opening + b"; " + DATABASE_NOW_MS, prepare=False)
    cursor.nextset()
    row = cursor.fetchone()
    assert row is not None
    return [*args[:position], int(row[0]), *args[position + 1 :]]


class PostgresStore(TransactionalStore):
    """A store in a PostgreSQL database (tables in the schema ``pullwake``)."""

    dialect_name = "PostgreSQL"

    def __init__(
        self,
        dsn: str,
        *,
        connections: int = 8,
        timeout: float = 10.0,
        database_clock: bool = False,
        on_connect: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:
        super().__init__(connections=connections)
        #: Called with every new pooled connection once it is set up (tests trace the
        #: protocol with it: what a transaction sends, in how many round trips).
        self.on_connect = on_connect
        self.dsn = dsn
        #: True: every rule that takes ``now_ms`` gets the database's clock, read in its own
        #: transaction, instead of the caller's (see :func:`begin`).
        self.database_clock = database_clock
        self._connections = connections
        self._timeout = timeout
        # Invariant: an open pool while the store is open, else None.
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        # Invariant: a running listener between _started() and _stopping(), else None.
        self._listener: _Listener | None = None
        # Names this store in its change notifications, so its listener skips its own.
        self._origin = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"PostgresStore({psycopg.conninfo.make_conninfo(self.dsn, password='***')!r})"

    def _open_sync(self) -> None:
        with map_store_errors():
            pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self._connections,
                open=False,
                timeout=self._timeout,
                kwargs={**CONNECT_KWARGS, "autocommit": True},
                configure=self._configure,
                check=check_idle,
                name="pullwake",
            )
            self._pool = pool
            pool.open(wait=True, timeout=self._timeout)
            with pool.connection() as conn:
                self._migrate(conn)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        _configure(conn)
        if self.on_connect is not None:
            self.on_connect(conn)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
            conn.execute(SCHEMA_VERSION_DDL)
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
            for migration in migrations("postgres"):
                if migration.version in applied:
                    continue
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at_ms) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, int(time.time() * 1000)),
                )

    def _close_sync(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=5.0)

    async def _started(self) -> None:
        self._listener = _Listener(
            self.dsn, self._changes, anyio.lowlevel.current_token(), self._origin
        )
        await anyio.to_thread.run_sync(self._listener.start)

    async def _stopping(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await anyio.to_thread.run_sync(listener.stop)

    def _transact_sync(self, body: Callable[..., Any], args: Sequence[Any], write: bool) -> Outcome:
        with map_store_errors():
            pool = self._pool
            if pool is None:
                raise psycopg_pool.PoolClosed("the pool is closed")
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    return self._attempt(pool, body, args, write)
                except _RETRYABLE:
                    if attempt == MAX_ATTEMPTS:
                        raise
                    # A worker thread (this runs under anyio.to_thread), not the event loop.
                    time.sleep(random.uniform(0.001, 0.01) * attempt)
            raise AssertionError("unreachable")

    def _attempt(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        body: Callable[..., Any],
        args: Sequence[Any],
        write: bool,
    ) -> Outcome:
        # The connections are in autocommit mode: psycopg sends no BEGIN of its own (a round
        # trip by itself); the transaction opens with the clock and closes with its NOTIFYs.
        # An exception leaving ``pool.connection()`` rolls back whatever is still open
        # (psycopg's connection context), so a failed COMMIT never leaves a transaction behind.
        with pool.connection() as conn, conn.cursor() as cursor:
            args = begin(cursor, write, body, args, self.database_clock)
            tx = PostgresTransaction(cursor)

            def commit() -> None:
                cursor.execute(tx.closing(self._origin), prepare=False)

            def rollback() -> None:
                try:
                    cursor.execute(b"ROLLBACK", prepare=False)
                except psycopg.Error:
                    pass  # the connection context tries again, or the pool drops it

            return run_body(tx, body, args, commit=commit, rollback=rollback)
